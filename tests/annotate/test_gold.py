"""Gold tasks: imported or frozen from a majority, mixed into the queue like any task, and never data."""

import json
import random
import re

import pytest
from django.contrib.messages import get_messages
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from rest_framework.test import APIClient

from annotate.exports import create_snapshot, run_snapshot
from annotate.importing import ImportFailed, import_file
from annotate.models import (
    Annotation,
    ApiToken,
    Assignment,
    GoldRefused,
    Membership,
    Prompt,
    Response,
    Task,
    TaskResponse,
)
from annotate.quality import gold_accuracy, read_answers
from models_registry.measures import cross_version_votes
from tests.annotate.test_exports import build_data
from tests.annotate.test_queue import answer_for, expire, make_task

pytestmark = pytest.mark.django_db


def jsonl(*rows) -> bytes:
    return "".join(json.dumps(row) + "\n" for row in rows).encode()


def write(tmp_path, name, content: bytes):
    path = tmp_path / name
    path.write_bytes(content)
    return path


def counters(project) -> tuple[int, int]:
    project.refresh_from_db()
    return project.task_count, project.complete_task_count


def gold_task(project, kind="pairwise", **answer):
    """A gold task over fresh responses, its gold answer `answer` (pairwise: A better by default)."""
    task = make_task(project, kind, status=Task.Status.GOLD, required=1)
    Annotation.objects.create(task=task, source="gold", **(answer or answer_for(task)))
    Task.objects.filter(pk=task.pk).update(annotation_count=1)
    return task


@pytest.fixture
def members(project, make_user):
    users = [make_user(name) for name in ("ann", "ben", "cat", "dan")]
    for user in users:
        Membership.objects.create(project=project, user=user)
    return users


# Import ---------------------------------------------------------------------------------------------------------


class TestImport:
    def test_a_gold_preference_row_makes_a_gold_pairwise_task_whose_answer_is_chosen(self, project, tmp_path):
        rows = [
            {"id": f"q{i}", "prompt": f"Capital of country {i}?", "chosen": f"City {i}", "rejected": f"No idea {i}"}
            for i in range(6)
        ]
        result = import_file(project, write(tmp_path, "gold.jsonl", jsonl(*[{**row, "gold": True} for row in rows])))

        assert (result.tasks_created, result.gold_tasks_created, result.annotations_created) == (6, 6, 6)
        assert "6 tasks (6 gold)" in str(result)
        tasks = Task.objects.filter(project=project)
        assert set(tasks.values_list("status", "kind", "annotation_count")) == {("gold", "pairwise", 1)}
        for task in tasks:
            gold = task.annotations.get()
            assert (gold.source, gold.annotator, gold.strength, gold.both_bad) == ("gold", None, 1, False)
            chosen = Response.objects.get(prompt=task.prompt, content__startswith="City")
            assert task.response_ids()["ab".index(gold.choice)] == chosen.pk
        # Chosen is A for some tasks and B for others (positions by content hash), as for imported pairs.
        assert set(Annotation.objects.values_list("choice", flat=True)) == {"a", "b"}
        assert counters(project) == (0, 0)  # gold tasks are no part of the progress

    def test_a_gold_score_makes_a_gold_rating_task_from_jsonl_and_csv(self, project, tmp_path):
        import_file(
            project,
            write(tmp_path, "g.jsonl", jsonl({"id": "r1", "prompt": "Hi", "response": "Hello", "gold_score": 4})),
        )
        csv = b"id,prompt,response,gold_score\nr2,Bye,See you,2\n"
        result = import_file(project, write(tmp_path, "g.csv", csv))

        assert result.gold_tasks_created == 1
        gold = Annotation.objects.filter(source="gold").order_by("task__prompt__external_id")
        assert [(a.task.kind, a.task.status, a.score, a.labels) for a in gold] == [
            ("rating", "gold", 4, []),
            ("rating", "gold", 2, []),
        ]
        assert counters(project) == (0, 0)

    def test_gold_false_is_an_ordinary_imported_preference(self, project, tmp_path):
        csv = b"prompt,chosen,rejected,gold\nHi?,Hello,Go away,false\n"
        result = import_file(project, write(tmp_path, "p.csv", csv))
        assert result.gold_tasks_created == 0
        task = Task.objects.get()
        assert (task.status, task.annotations.get().source) == ("complete", "imported")
        assert counters(project) == (1, 1)

    def test_importing_the_same_gold_file_again_changes_nothing(self, project, tmp_path):
        pairs = write(
            tmp_path, "p.jsonl", jsonl({"id": "q", "prompt": "2+2?", "chosen": "4", "rejected": "5", "gold": True})
        )
        scores = write(tmp_path, "s.jsonl", jsonl({"id": "r", "prompt": "Hi", "response": "Hello", "gold_score": 5}))
        first = [import_file(project, pairs), import_file(project, scores)]
        again = [import_file(project, pairs), import_file(project, scores)]
        assert [result.gold_tasks_created for result in first] == [1, 1]
        assert [(result.tasks_created, result.annotations_created) for result in again] == [(0, 0), (0, 0)]
        assert (Task.objects.count(), Annotation.objects.count()) == (2, 2)

    @pytest.mark.parametrize(
        ("rows", "line", "field", "message"),
        [
            (
                [{"prompt": "Hi", "response": "Hello"}, {"prompt": "Yo", "response": "Hey", "gold_score": 9}],
                2,
                "gold_score",
                "9 is outside the scale 1–5",
            ),
            ([{"prompt": "Yo", "response": "Hey", "gold_score": "good"}], 1, "gold_score", "whole number"),
            ([{"prompt": "Yo", "responses": ["Hey", "Hi"], "gold_score": 3}], 1, "gold_score", "exactly one, not 2"),
            ([{"prompt": "Yo", "chosen": "Hey", "rejected": "No", "gold": "maybe"}], 1, "gold", "true or false"),
            ([{"prompt": "Yo", "response": "Hey", "gold": True}], 1, "gold", "this row has no chosen and rejected"),
            ([{"prompt": "Yo", "chosen": "A", "rejected": "B", "gold_score": 3}], 1, "gold_score", "a preferences row"),
            ([{"prompt": "Yo", "gold_score": 3}], 1, "gold_score", "this is a prompts row"),
        ],
    )
    def test_a_bad_gold_answer_names_line_and_field_and_imports_nothing(
        self, project, tmp_path, rows, line, field, message
    ):
        with pytest.raises(ImportFailed) as failed:
            import_file(project, write(tmp_path, "bad.jsonl", jsonl(*rows)))
        assert (failed.value.line, failed.value.field) == (line, field)
        assert message in str(failed.value)
        assert not Task.objects.exists() and not Prompt.objects.exists()

    def test_gold_of_a_kind_the_project_does_not_serve_is_refused(self, project, tmp_path):
        project.task_kinds = ["pairwise"]
        project.save()
        with pytest.raises(ImportFailed, match="only served where rating tasks are enabled") as failed:
            import_file(
                project, write(tmp_path, "g.jsonl", jsonl({"prompt": "Hi", "response": "Hey", "gold_score": 3}))
            )
        assert (failed.value.line, failed.value.field) == (1, "gold_score")

    def test_a_gold_row_over_a_task_that_is_not_gold_is_refused(self, project, tmp_path):
        row = {"id": "q", "prompt": "2+2?", "chosen": "4", "rejected": "5"}
        import_file(project, write(tmp_path, "plain.jsonl", jsonl(row)))
        with pytest.raises(ImportFailed, match="already exists and is not gold") as failed:
            import_file(project, write(tmp_path, "gold.jsonl", jsonl({**row, "gold": True})))
        assert (failed.value.line, failed.value.field) == (1, "gold")
        assert Task.objects.get().status == "complete"


def test_gold_tasks_are_no_part_of_the_progress_counters(project):
    make_task(project)
    gold = gold_task(project)
    assert counters(project) == (1, 0)
    assert project.recount_tasks() is None  # and the hourly recount agrees
    gold.delete()
    assert counters(project) == (1, 0)


# Making gold from a majority ------------------------------------------------------------------------------------


def answered(project, kind, answers, responses=None):
    """A complete task (required = the answers) answered by (user, fields) pairs."""
    task = make_task(project, kind, required=len(answers))
    for user, fields in answers:
        Annotation.objects.create(task=task, annotator=user, **fields)
    task.refresh_progress()
    return task


class TestMakeGold:
    def test_a_pairwise_majority_becomes_the_gold_answer_and_the_task_leaves_the_progress(self, project, members):
        ann, ben, cat, _ = members
        task = answered(
            project, "pairwise", [(ann, {"choice": "b", "strength": 2}), (ben, {"choice": "b"}), (cat, {"choice": "a"})]
        )
        make_task(project)  # an open task besides
        assert counters(project) == (2, 1)

        gold = task.make_gold()

        task.refresh_from_db()
        assert (task.status, task.annotation_count) == ("gold", 4)
        assert (gold.source, gold.annotator, gold.choice, gold.strength, gold.both_bad) == ("gold", None, "b", 1, False)
        assert counters(project) == (1, 0)
        assert project.recount_tasks() is None  # the counters were exact

    def test_a_rating_takes_the_median_score(self, project, members):
        ann, ben, cat, _ = members
        task = answered(project, "rating", [(ann, {"score": 2}), (ben, {"score": 5}), (cat, {"score": 4})])
        assert task.make_gold().score == 4

    @pytest.mark.parametrize(
        ("kind", "answers", "reason"),
        [
            ("pairwise", [{"choice": "a"}, {"choice": "b"}], "its votes make a tie"),
            (
                "pairwise",
                [{"choice": "a", "both_bad": True}, {"choice": "a", "both_bad": True}],
                "both responses are bad",
            ),
            ("rating", [{"score": 2}, {"score": 4}], "split evenly between 2 and 4"),
            ("ranking", [{"ranking": None}], "is a ranking"),
        ],
    )
    def test_no_majority_no_gold_and_the_refusal_names_the_task(self, project, members, kind, answers, reason):
        task = make_task(project, kind, required=len(answers))
        for user, fields in zip(members, answers, strict=False):
            if kind == "ranking":
                fields = {"ranking": task.response_ids()}
            Annotation.objects.create(task=task, annotator=user, **fields)
        task.refresh_progress()
        before = counters(project)

        with pytest.raises(GoldRefused, match=rf"Task {task.pk}\b.*{re.escape(reason)}"):
            task.make_gold()

        task.refresh_from_db()
        assert (task.status, counters(project), task.annotations.filter(source="gold").exists()) == (
            "complete",
            before,
            False,
        )

    def test_only_answers_after_the_gold_answer_measure_gold_accuracy(self, project, members):
        ann, ben, cat, dan = members
        task = answered(project, "pairwise", [(ann, {"choice": "a"}), (ben, {"choice": "a"}), (cat, {"choice": "b"})])
        task.make_gold()
        Annotation.objects.create(task=task, annotator=dan, choice="b")  # served the gold task later, and wrong

        accuracy = gold_accuracy(project)

        # The voters who made the majority are not scored on it (ann and ben would be right by construction).
        assert set(accuracy.annotators) == {"dan"}
        assert (accuracy.annotators["dan"].hits, accuracy.annotators["dan"].n) == (0, 1)

    def test_an_open_task_cannot_become_gold(self, project):
        task = make_task(project)
        with pytest.raises(GoldRefused, match=f"Task {task.pk} is open"):
            task.make_gold()

    def test_excluded_members_votes_do_not_make_the_majority(self, project, members):
        ann, ben, cat, _ = members
        task = answered(project, "pairwise", [(ann, {"choice": "a"}), (ben, {"choice": "a"}), (cat, {"choice": "b"})])
        Membership.objects.filter(user__in=[ann]).update(votes_excluded=True)
        with pytest.raises(GoldRefused, match="tie"):
            task.make_gold()
        Membership.objects.filter(user=ben).update(votes_excluded=True)
        assert task.make_gold().choice == "b"

    def test_deleting_the_gold_answer_returns_the_task_to_the_data(self, project, members):
        ann, ben, _, _ = members
        task = answered(project, "pairwise", [(ann, {"choice": "a"}), (ben, {"choice": "a"})])
        gold = task.make_gold()
        assert counters(project) == (0, 0)

        gold.delete()
        task.refresh_progress()

        task.refresh_from_db()
        assert (task.status, task.annotation_count, counters(project)) == ("complete", 2, (1, 1))

    def test_the_admin_action_makes_gold_and_says_which_it_refused(self, client, project, lead, members):
        ann, ben, _, _ = members
        good = answered(project, "pairwise", [(ann, {"choice": "a"}), (ben, {"choice": "a"})])
        tie = answered(project, "pairwise", [(ann, {"choice": "a"}), (ben, {"choice": "b"})])
        client.force_login(lead)
        from annotate.admin import project_leads_group

        lead.groups.add(project_leads_group())

        response = client.post(
            reverse("admin:annotate_task_changelist"),
            {"action": "make_gold", "_selected_action": [good.pk, tie.pk]},
            follow=True,
        )

        shown = [str(message) for message in get_messages(response.wsgi_request)]
        assert shown[0].startswith("1 task made gold")
        assert shown[1] == f"Not made gold: Task {tie.pk}: its votes make a tie."
        assert list(Task.objects.filter(status="gold")) == [good]


# The queue ------------------------------------------------------------------------------------------------------


class TestQueue:
    def test_at_rate_one_every_lease_is_a_gold_task_the_user_never_had_while_real_work_remains(
        self, project, annotator
    ):
        project.gold_rate = 1
        golds = [gold_task(project), gold_task(project, "rating", score=3)]
        work = [make_task(project), make_task(project)]

        given = []
        for _ in range(4):
            lease = project.next_assignment(annotator)
            lease.submit(answer_for(lease.task), user=annotator)
            given.append(lease.task)

        assert given == [*golds, *work]  # each gold task once, then only real work
        assert project.next_assignment(annotator) is None

    def test_no_gold_task_once_the_real_work_is_done(self, project, annotator):
        project.gold_rate = 1
        gold_task(project)
        assert project.next_assignment(annotator) is None
        assert project.remaining_for(annotator) == 0  # what remains counts real tasks only
        make_task(project)
        assert project.remaining_for(annotator) == 1
        assert project.next_assignment(annotator).task.status == "gold"

    def test_rate_zero_serves_no_gold(self, project, annotator):
        project.gold_rate = 0
        gold_task(project)
        make_task(project)
        assert project.next_assignment(annotator).task.status == "open"

    def test_a_gold_task_of_a_kind_the_project_disables_is_not_served(self, project, annotator):
        project.gold_rate, project.task_kinds = 1, ["pairwise"]
        gold_task(project, "rating", score=3)
        make_task(project, "pairwise")
        make_task(project, "pairwise")
        assert project.next_assignment(annotator).task.status == "open"
        gold = gold_task(project, "pairwise")
        assert project.next_assignment(annotator, reuse_lease=False).task == gold

    def test_one_lease_in_gold_rate_is_gold_at_random(self, project, annotator):
        project.gold_rate, project.overlap, project.max_open_leases = 4, 1, 1000
        for _ in range(120):
            make_task(project)
            gold_task(project, "rating", score=2)
        random.seed(12)
        statuses = [project.next_assignment(annotator, reuse_lease=False).task.status for _ in range(100)]
        # Binomial(100, 1/4): 25 ± 4.3; both ways of being wrong (never gold, or always) are far outside.
        assert 12 <= statuses.count("gold") <= 38
        # At random, not every fourth: a fixed spacing would be learnt.
        assert [i % 4 for i, status in enumerate(statuses) if status == "gold"] != [3] * statuses.count("gold")

    def test_gold_tasks_are_not_held_to_overlap_and_never_complete(self, project, members):
        project.gold_rate, project.overlap = 1, 1
        gold = gold_task(project)
        make_task(project, required=4)
        for user in members:
            lease = project.next_assignment(user)
            assert lease.task == gold
            lease.submit({"choice": "b"}, user=user)
        gold.refresh_from_db()
        assert (gold.status, gold.annotation_count) == ("gold", 5)
        assert counters(project) == (1, 0)

    def test_an_answer_after_the_lease_ran_out_still_counts_on_a_gold_task(self, project, members):
        project.gold_rate = 1
        gold = gold_task(project)
        make_task(project)
        late = project.next_assignment(members[0])
        expire(late)
        assert project.next_assignment(members[1]).task == gold  # others are given it meanwhile

        late.submit({"choice": "a"}, user=members[0])
        assert gold.annotations.filter(annotator=members[0]).exists()

    def test_a_gold_lease_looks_like_any_other_to_the_annotator(self, project, annotator):
        project.gold_rate = 1
        project.save()
        gold_task(project)
        make_task(project, "pairwise")
        _, token = ApiToken.issue(annotator, "script")
        api = APIClient()
        api.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
        url = reverse("api:next_task", args=[project.slug])

        payloads = []
        for _ in range(2):
            payload = api.post(url, {"reuse_lease": False}, format="json").json()
            payloads.append(payload)
        statuses = [Assignment.objects.get(pk=p["id"]).task.status for p in payloads]

        assert statuses == ["gold", "open"]
        assert payloads[0].keys() == payloads[1].keys()
        assert "gold" not in json.dumps(payloads[0]).lower()
        page = self.task_page(project, annotator)
        assert "gold" not in page.lower()

    @staticmethod
    def task_page(project, user):
        from django.test import Client

        client = Client()
        client.force_login(user)
        return client.get(reverse("task_page", args=[project.slug])).content.decode()

    def test_the_gold_lease_takes_as_many_queries_for_1000_gold_tasks_as_for_10(self, project, annotator, members):
        project.gold_rate = 1

        def queries():
            with CaptureQueriesContext(connection) as captured:
                assert project.next_assignment(annotator, reuse_lease=False).task.status == "gold"
            return len(captured)

        make_task(project)
        for _ in range(10):
            gold_task(project, "rating", score=2)
        few = queries()
        prompt = Prompt.objects.create(project=project, external_id="bulk", messages=[])
        response = Response.objects.create(prompt=prompt, content="x")
        tasks = Task.objects.bulk_create(
            Task(project=project, prompt=prompt, kind="rating", status="gold", annotation_count=1) for _ in range(990)
        )
        TaskResponse.objects.bulk_create(TaskResponse(task=task, response=response, position=0) for task in tasks)
        assert queries() == few


# Gold never counts -----------------------------------------------------------------------------------------------


class TestNeverData:
    @pytest.fixture
    def data(self, project, django_user_model, tmp_path, settings):
        settings.SECRET_KEY = "fixed"
        return build_data(project, django_user_model, tmp_path)

    def add_gold(self, project, data):
        """Gold tasks of every kind that exports read, answered by people, and one made from a majority."""
        pairwise = gold_task(project, "pairwise", choice="a")
        rating = gold_task(project, "rating", score=5)
        for task in (pairwise, rating):
            for user in (data.alice, data.bob):
                Annotation.objects.create(task=task, annotator=user, **answer_for(task))
            task.refresh_progress()
        data.t1.refresh_progress()  # build_data writes annotations past the queue
        data.t1.make_gold()  # 2 votes to 1 for A
        return pairwise, rating

    EXPORTS = [
        ("pairs", {}),
        ("pairs", {"include_ties": True, "include_both_bad": True, "ratings_as_pairs": True}),
        ("unpaired", {}),
        ("votes", {}),
        ("sft", {"ratings_as_pairs": True}),
    ]

    @staticmethod
    def rows(project, kind, filters):
        snapshot = run_snapshot(create_snapshot(project, kind=kind, filters=filters))
        return [json.loads(line) for line in snapshot.file.open("rb").read().splitlines()]

    def test_no_export_holds_a_gold_task_or_an_answer_to_one(self, project, data):
        before = {kind + str(filters): self.rows(project, kind, filters) for kind, filters in self.EXPORTS}
        golds = self.add_gold(project, data)
        gold_responses = {response for task in golds for response in task.response_ids()}

        for kind, filters in self.EXPORTS:
            rows = self.rows(project, kind, filters)
            for row in rows:
                assert row.get("task_id") not in {data.t1.pk, *(task.pk for task in golds)}, (kind, row)
                ids = {row.get(name) for name in ("chosen_id", "rejected_id", "response_id")}
                assert not ids & gold_responses and not set(row.get("response_ids", [])) & gold_responses
            if kind in ("pairs", "votes", "unpaired"):
                # All else as it was: only the rows of t1, now gold, are gone.
                assert rows == [row for row in before[kind + str(filters)] if row.get("task_id") != data.t1.pk]

    def test_agreement_win_rates_and_lead_stats_leave_gold_out(self, project, data):
        for task in Task.objects.filter(project=project):
            task.refresh_progress()  # build_data writes annotations past the queue
        before = (project.agreement(), len(cross_version_votes(project)), read_answers(project))
        stats_before = project.lead_stats()
        self.add_gold(project, data)
        data.t1.refresh_from_db()

        after = project.agreement()
        assert after["tasks"] == before[0]["tasks"] - 1  # t1 became gold
        assert {row.kind: row.values for row in after["by_kind"]}["rating"] == {
            row.kind: row.values for row in before[0]["by_kind"]
        }["rating"]
        assert len(cross_version_votes(project)) == before[1] - 3  # t1's three votes compared v1 with reference data
        # The quality measures read how people answered gold tasks (served like any other): alice's and bob's answers
        # to the two new gold tasks, not the known answers (three of them, t1's included).
        answers = read_answers(project)
        assert len(answers.annotator) == len(before[2].annotator) + 4
        stats = project.lead_stats()
        per = {u: n for u, n, _ in stats["per_annotator"]}
        per_before = {u: n for u, n, _ in stats_before["per_annotator"]}
        # t1's votes are gone (carol cast only that one), and the answers to gold tasks are not counted.
        assert per == {"alice": per_before["alice"] - 1, "bob": per_before["bob"] - 1}
        assert per_before["carol"] == 1
        assert stats["tasks_by_status"][("gold", "pairwise")] == 2
