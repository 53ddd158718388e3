"""Changing an answer from "my work": the Annotation row holds the answer as it stands, which exports, agreement and
quality read; the answers it replaced are kept; the task must be open, or the project's window not yet over."""

import json
import threading
from datetime import timedelta

import pytest
from django.core.exceptions import ValidationError
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from annotate import quality_reports
from annotate.exports import create_snapshot, run_snapshot
from annotate.models import (
    Annotation,
    AnnotationRevision,
    AnswerLocked,
    Assignment,
    LeaseError,
    MemberPaused,
    Membership,
    Prompt,
    QualityReport,
    Response,
    Task,
    TaskResponse,
)
from annotate.quality import gold_accuracy

HTMX = {"HTTP_HX_REQUEST": "true"}


def make_task(project, kind="pairwise", texts=("Hello!", "Go away."), *, required=2, external_id="p1"):
    prompt, _ = Prompt.objects.get_or_create(
        project=project, external_id=external_id, defaults={"messages": [{"role": "user", "content": "Greet me."}]}
    )
    task = Task.objects.create(project=project, prompt=prompt, kind=kind, required_annotations=required)
    for position, text in enumerate(texts):
        response = Response.objects.create(prompt=prompt, content=text)
        TaskResponse.objects.create(task=task, response=response, position=position)
    return task


def lease(project, user, *, swapped=False):
    """The user's next lease, shown in the task's order, or the other way round (B of the task shown as A)."""
    assignment = project.next_assignment(user)
    order = assignment.task.response_ids()
    assignment.shown_order = order[::-1] if swapped else order
    Assignment.objects.filter(pk=assignment.pk).update(shown_order=assignment.shown_order)
    return assignment


def answered(project, user, answer=None, **lease_options):
    assignment = lease(project, user, **lease_options)
    return assignment.submit(answer or {"choice": "a", "strength": 1}, user=user)


@pytest.fixture
def second(project, make_user):
    user = make_user("second")
    Membership.objects.create(project=project, user=user)
    return user


class TestChange:
    def test_a_change_replaces_the_answer_and_keeps_the_one_it_replaced(self, project, annotator):
        make_task(project)
        annotation = answered(project, annotator, {"choice": "a", "strength": 1, "comment": "clearer"})

        assert annotation.change({"choice": "b", "strength": 2, "comment": "on second thought"}, user=annotator)

        annotation.refresh_from_db()
        assert (annotation.choice, annotation.strength, annotation.comment) == ("b", 2, "on second thought")
        revision = annotation.revisions.get()
        assert revision.answer == {"choice": "a", "strength": 1, "both_bad": False, "comment": "clearer"}
        assert revision.by == annotator
        assert Annotation.objects.count() == 1  # one row per task and annotator, still

    def test_the_same_change_twice_is_one_revision(self, project, annotator):
        make_task(project)
        annotation = answered(project, annotator)

        first = annotation.change({"choice": "tie"}, user=annotator)
        again = Annotation.objects.get(pk=annotation.pk).change({"choice": "tie", "strength": ""}, user=annotator)

        assert (first, again) == (True, False)
        assert AnnotationRevision.objects.count() == 1

    def test_a_change_is_checked_as_a_submit_is(self, project, annotator):
        make_task(project, "rating", ["Two."])
        annotation = answered(project, annotator, {"score": 3})

        with pytest.raises(ValidationError) as refused:
            annotation.change({"score": 9}, user=annotator)

        assert "outside the scale" in str(refused.value)
        annotation.refresh_from_db()
        assert annotation.score == 3 and not annotation.revisions.exists()

    def test_someone_elses_answer_cannot_be_changed(self, project, annotator, second):
        make_task(project)
        annotation = answered(project, annotator)

        with pytest.raises(AnswerLocked):
            annotation.change({"choice": "b"}, user=second)

    def test_a_paused_member_cannot_change_an_answer(self, project, annotator, lead):
        make_task(project)
        annotation = answered(project, annotator)
        Membership.objects.get(user=annotator).decide("paused", by=lead, reason="Checking their work.")

        with pytest.raises(MemberPaused):
            annotation.change({"choice": "b"}, user=annotator)


class TestWindow:
    def test_once_the_task_is_complete_the_answer_is_locked_without_a_window(self, project, annotator, second):
        make_task(project)
        annotation = answered(project, annotator)
        answered(project, second)  # completes the task (two wanted)

        annotation.refresh_from_db()
        assert annotation.locked_because() == (
            "Its task is complete: an answer can be changed only while its task is open."
        )
        with pytest.raises(AnswerLocked, match="only while its task is open"):
            annotation.change({"choice": "b"}, user=annotator)

    def test_a_complete_tasks_answer_can_change_within_the_window_and_not_after(self, project, annotator, second):
        project.edit_window_minutes = 30
        project.save(update_fields=["edit_window_minutes"])
        make_task(project)
        annotation = answered(project, annotator)
        answered(project, second)
        annotation = Annotation.objects.select_related("task__project").get(pk=annotation.pk)

        assert annotation.locked_because() == ""
        assert annotation.change({"choice": "b"}, user=annotator)
        Annotation.objects.filter(pk=annotation.pk).update(created_at=timezone.now() - timedelta(minutes=31))

        annotation = Annotation.objects.select_related("task__project").get(pk=annotation.pk)
        with pytest.raises(AnswerLocked, match="the 30 minutes to change an answer ended at"):
            annotation.change({"choice": "tie"}, user=annotator)
        assert Annotation.objects.get(pk=annotation.pk).choice == "b"


class TestReaders:
    def test_a_resubmit_through_the_queue_stays_idempotent_after_a_change(self, project, annotator):
        make_task(project)
        assignment = lease(project, annotator)
        annotation = assignment.submit({"choice": "a"}, user=annotator)
        annotation.change({"choice": "b"}, user=annotator)

        assert assignment.submit({"choice": "b"}, user=annotator).pk == annotation.pk
        with pytest.raises(LeaseError, match="already answered this task differently"):
            assignment.submit({"choice": "a"}, user=annotator)
        assert Annotation.objects.get().choice == "b"

    def test_the_export_shows_the_new_answer(self, project, annotator, second):
        project.edit_window_minutes = 10
        project.save(update_fields=["edit_window_minutes"])
        make_task(project)
        annotation = answered(project, annotator, {"choice": "a", "strength": 2})
        answered(project, second, {"choice": "a", "strength": 1})

        Annotation.objects.get(pk=annotation.pk).change({"choice": "b", "strength": 2}, user=annotator)

        snapshot = run_snapshot(create_snapshot(project, kind="pairs", filters={"include_ties": True}))
        (row,) = [json.loads(line) for line in snapshot.file.open("rb").read().decode().splitlines()]
        # a +1 and b +2: B wins, on the new answer; the old one would have made A win by 3.
        assert row["chosen"] == [{"role": "assistant", "content": "Go away."}]
        assert (row["votes_chosen"], row["votes_rejected"]) == (1, 1)

    def test_agreement_uses_the_latest_answer(self, project, annotator, second):
        make_task(project, required=3)
        annotation = answered(project, annotator, {"choice": "a"})
        answered(project, second, {"choice": "b"})
        assert project.agreement()["by_kind"][1].percent == 0

        annotation.change({"choice": "b"}, user=annotator)

        assert project.agreement()["by_kind"][1].percent == 1

    def test_beat_refreshes_the_quality_figures_after_a_change(self, project, annotator):
        make_task(project)
        annotation = answered(project, annotator)
        assert quality_reports.refresh_quality_reports() == 1  # the new answer
        QualityReport.objects.update(status=QualityReport.Status.READY)
        assert quality_reports.refresh_quality_reports() == 0  # nothing new

        annotation.change({"choice": "b"}, user=annotator)

        assert quality_reports.refresh_quality_reports() == 1
        assert QualityReport.objects.get().status == QualityReport.Status.PENDING


class TestGold:
    def test_a_gold_answer_is_locked_as_a_complete_tasks_is_and_scored_as_it_stands(
        self, project, annotator, second, make_user
    ):
        project.edit_window_minutes = 10
        project.save(update_fields=["edit_window_minutes"])
        task = make_task(project, required=1)
        answered(project, second, {"choice": "a"})
        task.refresh_from_db()
        task.make_gold()
        make_task(project, external_id="p2")  # gold is only given among real work
        project.gold_rate = 1
        project.save(update_fields=["gold_rate"])
        annotation = answered(project, annotator, {"choice": "b"})
        assert annotation.task_id == task.pk
        assert gold_accuracy(project).annotators["annotator"].hits == 0

        annotation.change({"choice": "a"}, user=annotator)

        assert gold_accuracy(project).annotators["annotator"].hits == 1
        Annotation.objects.filter(pk=annotation.pk).update(created_at=timezone.now() - timedelta(minutes=11))
        locked = Annotation.objects.select_related("task__project").get(pk=annotation.pk).locked_because()
        assert locked.startswith("Its task is complete and the 10 minutes")  # as any complete task: nothing says gold


class TestShownTerms:
    @pytest.mark.parametrize("swapped", [False, True])
    def test_the_answer_in_words_and_the_form_are_in_the_terms_it_was_shown(self, project, annotator, swapped):
        make_task(project)
        assignment = lease(project, annotator, swapped=swapped)
        # The annotator pressed "A much better": the response shown first.
        annotation = assignment.submit(assignment.answer_from_shown({"preference": "a2"}), user=annotator)

        assert annotation.choice == ("b" if swapped else "a")
        assert annotation.shown_summary() == "A much better"
        assert assignment.form_from_answer(annotation.answer())["preference"] == "a2"

    def test_a_ranking_in_words_uses_the_shown_letters(self, project, annotator):
        make_task(project, "ranking", ["One.", "Two.", "Three."])
        assignment = lease(project, annotator, swapped=True)  # shown C, B, A of the task's order
        first, second_, third = assignment.task.response_ids()
        annotation = assignment.submit({"ranking": [third, [first, second_]]}, user=annotator)

        assert annotation.shown_summary() == "A > B = C"
        form = assignment.form_from_answer(annotation.answer())
        answer = assignment.task.clean_answer(assignment.answer_from_shown(form))
        assert answer["ranking"] == [[third], [first, second_]]


class TestPages:
    def test_my_work_lists_answers_in_the_terms_shown_and_says_which_can_change(
        self, client, project, annotator, second
    ):
        make_task(project, required=1)
        locked = answered(project, annotator, {"choice": "b", "strength": 2}, swapped=True)
        make_task(project, external_id="p2")
        open_ = answered(project, annotator, {"choice": "tie"})
        client.force_login(annotator)

        page = client.get(reverse("my_work", args=[project.slug]))

        html = page.content.decode()
        assert page.status_code == 200
        assert [row["words"] for row in page.context["rows"]] == ["Tie", "A much better"]
        assert reverse("change_answer", args=[project.slug, open_.pk]) in html
        assert reverse("change_answer", args=[project.slug, locked.pk]) not in html
        assert "only while its task is open" in html

    def test_the_change_page_shows_the_task_as_it_was_shown_filled_with_the_answer(self, client, project, annotator):
        make_task(project)
        annotation = answered(project, annotator, {"choice": "b", "strength": 2}, swapped=True)
        client.force_login(annotator)

        page = client.get(reverse("change_answer", args=[project.slug, annotation.pk]))

        html = page.content.decode()
        assert page.status_code == 200
        assert html.index("Go away.") < html.index("Hello!")  # the task's B, shown as A
        assert '<input type="radio" name="preference" value="a2" checked>' in html
        assert "Save the change" in html and 'id="skip"' not in html

    def test_saving_a_change_in_shown_terms_stores_it_in_task_terms(self, client, project, annotator):
        make_task(project)
        annotation = answered(project, annotator, {"choice": "b", "strength": 2}, swapped=True)
        client.force_login(annotator)
        url = reverse("change_answer", args=[project.slug, annotation.pk])

        saved = client.post(url, {"preference": "b1", "comment": "A was longer"}, **HTMX)

        assert saved.status_code == 200 and saved["HX-Redirect"] == reverse("my_work", args=[project.slug])
        annotation.refresh_from_db()
        assert (annotation.choice, annotation.strength) == ("a", 1)  # shown B is the task's A
        assert annotation.revisions.count() == 1
        listed = client.get(reverse("my_work", args=[project.slug]))
        assert "your answer is now B better" in listed.content.decode()

    def test_a_change_after_the_window_is_refused_with_the_reason(self, client, project, annotator, second):
        make_task(project)
        annotation = answered(project, annotator)
        answered(project, second)
        client.force_login(annotator)
        url = reverse("change_answer", args=[project.slug, annotation.pk])

        refused = client.post(url, {"preference": "b1"})

        assert refused.status_code == 409
        assert "only while its task is open" in refused.content.decode()
        assert Annotation.objects.get(pk=annotation.pk).choice == "a"
        shown = client.get(url, follow=True)
        assert "only while its task is open" in shown.content.decode()

    def test_an_incomplete_change_is_400_and_stores_nothing(self, client, project, annotator):
        make_task(project)
        annotation = answered(project, annotator)
        client.force_login(annotator)

        refused = client.post(reverse("change_answer", args=[project.slug, annotation.pk]), {"comment": "hm"})

        assert refused.status_code == 400
        assert not annotation.revisions.exists()

    def test_someone_elses_answer_and_outsiders_get_404(self, client, project, annotator, second, outsider):
        make_task(project)
        annotation = answered(project, annotator)
        url = reverse("change_answer", args=[project.slug, annotation.pk])

        client.force_login(second)
        assert client.get(url).status_code == 404
        assert client.post(url, {"preference": "b1"}).status_code == 404
        client.force_login(outsider)
        assert client.get(reverse("my_work", args=[project.slug])).status_code == 404

    def test_my_work_is_paginated_newest_first(self, client, project, annotator):
        for n in range(27):
            make_task(project, external_id=f"p{n}")
            answered(project, annotator)
        client.force_login(annotator)

        first = client.get(reverse("my_work", args=[project.slug]))
        last = client.get(reverse("my_work", args=[project.slug]), {"page": 2})

        assert len(first.context["rows"]) == 25 and len(last.context["rows"]) == 2
        assert first.context["rows"][0]["annotation"].pk > last.context["rows"][0]["annotation"].pk
        assert "Page 1 of 2" in first.content.decode()

    def test_my_work_reads_a_page_in_a_fixed_number_of_queries(self, client, project, annotator):
        def queries_for_a_page() -> int:
            with CaptureQueriesContext(connection) as queries:
                assert client.get(reverse("my_work", args=[project.slug])).status_code == 200
            return len(queries)

        client.force_login(annotator)
        for n, kind in enumerate(["pairwise", "ranking"]):
            make_task(project, kind, ["One.", "Two.", "Three."][: 2 if kind == "pairwise" else 3], external_id=f"a{n}")
        answered(project, annotator).change({"choice": "b"}, user=annotator)
        lease(project, annotator).submit({"ranking": [[r] for r in Task.objects.last().response_ids()]}, user=annotator)
        two = queries_for_a_page()
        for n in range(3):
            make_task(project, external_id=f"b{n}")
            answered(project, annotator).change({"choice": "tie"}, user=annotator)

        assert queries_for_a_page() == two

    def test_the_project_page_links_my_work(self, client, project, annotator):
        client.force_login(annotator)

        page = client.get(reverse("project_detail", args=[project.slug]))

        assert reverse("my_work", args=[project.slug]) in page.content.decode()


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_the_same_change_sent_at_once_keeps_one_revision_and_all_succeed(project, annotator):
    rounds, racers = 5, 4
    annotations = []
    for n in range(rounds):
        make_task(project, external_id=f"race-{n}")
        annotations.append(answered(project, annotator, {"choice": "a"}))

    failures: list[BaseException] = []
    for annotation in annotations:
        start = threading.Barrier(racers)

        def change(annotation_id: int = annotation.pk, start: threading.Barrier = start) -> None:
            try:
                mine = Annotation.objects.get(pk=annotation_id)  # each request loads the answer itself
                start.wait()
                mine.change({"choice": "b", "strength": 2}, user=annotator)
            except Exception as error:  # reported below, in the test's thread
                failures.append(error)
            finally:
                connection.close()

        threads = [threading.Thread(target=change) for _ in range(racers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert failures == []

    for annotation in annotations:
        assert annotation.revisions.count() == 1
        assert Annotation.objects.get(pk=annotation.pk).choice == "b"
