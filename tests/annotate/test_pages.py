"""The annotator workbench: the task page for each kind, submit and skip with and without htmx, guidelines, stats."""

import re
from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from annotate.models import Annotation, Assignment, Membership, Project, Prompt, Response, Task, TaskResponse

TRANSCRIPT = [
    {"role": "system", "content": "You answer in one line."},
    {"role": "user", "content": "Name a prime."},
    {"role": "assistant", "content": "Small or large?"},
    {"role": "user", "content": "Small."},
]
HTMX = {"HTTP_HX_REQUEST": "true"}


def make_task(project, kind, texts, *, external_id="p1"):
    prompt, _ = Prompt.objects.get_or_create(
        project=project, external_id=external_id, defaults={"messages": TRANSCRIPT}
    )
    task = Task.objects.create(project=project, prompt=prompt, kind=kind)
    for position, text in enumerate(texts):
        response = Response.objects.create(prompt=prompt, content=text)
        TaskResponse.objects.create(task=task, response=response, position=position)
    return task


def task_url(project):
    return reverse("task_page", args=[project.slug])


def submit_url(assignment):
    return reverse("submit_assignment", args=[assignment.task.project.slug, assignment.pk])


def skip_url(assignment):
    return reverse("skip_assignment", args=[assignment.task.project.slug, assignment.pk])


def assignment_in(page):
    """The lease whose form a page or region shows (htmx partials carry no test context to read it from)."""
    match = re.search(r'<form id="answer" method="post" action="[^"]*/assignments/(\d+)/submit/"', page)
    return Assignment.objects.get(pk=match.group(1)) if match else None


def open_task(client, project):
    """GET the task page as the logged-in user; return the page and the lease it showed."""
    page = client.get(task_url(project))
    assert page.status_code == 200
    return page.content.decode(), page.context["assignment"]


class TestTaskPage:
    def test_rating_task_shows_the_transcript_with_roles_the_response_the_scale_and_labels(
        self, client, annotator, project
    ):
        task = make_task(project, "rating", ["Two."])
        client.force_login(annotator)

        page, assignment = open_task(client, project)

        assert assignment.task == task
        assert re.findall(r'<div class="speaker">(\w+)</div>', page) == ["system", "user", "assistant", "user"]
        assert "You answer in one line." in page and "Small or large?" in page
        assert f'data-response-id="{task.response_ids()[0]}"' in page and "Two." in page
        for point in range(1, 6):
            assert f'<input type="radio" name="score" value="{point}">' in page
        assert "Useless" in page and "Ideal" in page
        for label in ["factual error", "unsafe", "off-topic"]:
            assert f'<input type="checkbox" name="labels" value="{label}">' in page
        assert '<form id="answer" method="post" action="' + submit_url(assignment) + '"' in page
        assert f'hx-post="{submit_url(assignment)}"' in page
        assert f'action="{skip_url(assignment)}"' in page
        for hook in ['id="task"', 'id="progress-session"', 'id="progress-project"', '<dialog id="guidelines"']:
            assert hook in page
        assert 'data-key="1-5"' in page and 'data-key="Shift+1-3"' in page and 'data-key="Enter"' in page

    def test_pairwise_task_shows_a_and_b_in_the_order_the_lease_recorded_with_five_choices(
        self, client, annotator, project
    ):
        make_task(project, "pairwise", ["Two.", "Seven."])
        client.force_login(annotator)

        page, assignment = open_task(client, project)

        (letter_a, first), (letter_b, second) = assignment.shown_responses()
        assert (letter_a, letter_b) == ("A", "B")
        assert page.index(f'data-response-id="{first.pk}"') < page.index(f'data-response-id="{second.pk}"')
        assert page.index("Response A") < page.index(first.content) < page.index("Response B")
        for value in ["a2", "a1", "tie", "b1", "b2"]:
            assert f'<input type="radio" name="preference" value="{value}">' in page
        assert '<input type="checkbox" name="both_bad">' in page
        assert 'data-key="ArrowLeft"' in page and 'data-key="Shift+ArrowRight"' in page and 'data-key="t"' in page

    def test_ranking_task_has_a_rank_select_from_1_to_n_per_response(self, client, annotator, project):
        task = make_task(project, "ranking", ["Two.", "Three.", "Five."])
        client.force_login(annotator)

        page, _ = open_task(client, project)

        for response_id in task.response_ids():
            select = re.search(rf'<select name="rank-{response_id}">(.*?)</select>', page, re.S).group(1)
            assert re.findall(r'<option value="(\d*)"', select) == ["", "1", "2", "3"]
        assert page.count('class="response"') == 3

    def test_nothing_left_shows_all_done(self, client, annotator, project):
        client.force_login(annotator)

        page, assignment = open_task(client, project)

        assert assignment is None
        assert "All done" in page and '<form id="answer"' not in page

    def test_reloading_shows_the_same_lease(self, client, annotator, project):
        make_task(project, "rating", ["Two."])
        make_task(project, "rating", ["Three."])
        client.force_login(annotator)

        _, first = open_task(client, project)
        _, again = open_task(client, project)

        assert again == first

    def test_outsider_and_anonymous_do_not_get_the_task_page(self, client, outsider, project):
        make_task(project, "rating", ["Two."])
        assert client.get(task_url(project)).status_code == 302

        client.force_login(outsider)

        assert client.get(task_url(project)).status_code == 404
        assert not Assignment.objects.exists()


class TestSubmit:
    def test_plain_post_creates_the_annotation_and_redirects_to_the_task_page(self, client, annotator, project):
        make_task(project, "rating", ["Two."])
        client.force_login(annotator)
        _, assignment = open_task(client, project)

        response = client.post(submit_url(assignment), {"score": "4", "labels": ["unsafe"], "comment": "Terse."})

        assert response.status_code == 302
        assert response.url == task_url(project)
        annotation = Annotation.objects.get()
        assert (annotation.annotator, annotation.score, annotation.labels, annotation.comment) == (
            annotator,
            4,
            ["unsafe"],
            "Terse.",
        )

    def test_htmx_post_returns_the_next_task_region_without_the_page_around_it(self, client, annotator, project):
        make_task(project, "rating", ["Two."])
        make_task(project, "rating", ["Three."], external_id="p2")
        client.force_login(annotator)
        _, assignment = open_task(client, project)

        response = client.post(submit_url(assignment), {"score": "5"}, **HTMX)

        page = response.content.decode()
        assert response.status_code == 200
        assert page.lstrip().startswith('<section id="task"')
        assert "<html" not in page and "<body" not in page
        assert assignment_in(page).task.pk != assignment.task.pk and "Three." in page
        assert re.search(r'id="progress-session" max="2" value="1"', page)
        assert Annotation.objects.filter(task=assignment.task, annotator=annotator).count() == 1

    def test_session_progress_counts_a_submission_once_even_if_posted_twice(self, client, annotator, project):
        make_task(project, "rating", ["Two."])
        client.force_login(annotator)
        _, assignment = open_task(client, project)

        client.post(submit_url(assignment), {"score": "5"})
        again = client.post(submit_url(assignment), {"score": "5"}, **HTMX)

        assert again.status_code == 200 and "This session: <strong>1</strong> done" in again.content.decode()
        assert Annotation.objects.count() == 1

    def test_a_bad_answer_returns_400_with_the_field_error_and_writes_nothing(self, client, annotator, project):
        make_task(project, "rating", ["Two."])
        client.force_login(annotator)
        _, assignment = open_task(client, project)

        response = client.post(submit_url(assignment), {"labels": ["unsafe"], "comment": "Kept."}, **HTMX)

        page = response.content.decode()
        assert response.status_code == 400
        assert "Choose a score from 1 to 5." in page
        assert assignment_in(page) == assignment
        # The refused answer comes back as it was typed.
        assert '<input type="checkbox" name="labels" value="unsafe" checked>' in page and ">Kept.</textarea>" in page
        assert not Annotation.objects.exists()
        assignment.refresh_from_db()
        assert assignment.status == Assignment.Status.ACTIVE

    def test_a_score_outside_the_scale_is_refused_without_htmx_too(self, client, annotator, project):
        make_task(project, "rating", ["Two."])
        client.force_login(annotator)
        _, assignment = open_task(client, project)

        response = client.post(submit_url(assignment), {"score": "9"})

        assert response.status_code == 400
        assert "<html" in response.content.decode() and "outside the scale" in response.content.decode()
        assert not Annotation.objects.exists()

    def test_pairwise_without_a_choice_is_refused(self, client, annotator, project):
        make_task(project, "pairwise", ["Two.", "Seven."])
        client.force_login(annotator)
        _, assignment = open_task(client, project)

        response = client.post(submit_url(assignment), {"preference": "a3", "both_bad": "on"})

        assert response.status_code == 400
        assert "Choose which response is better" in response.content.decode()
        assert not Annotation.objects.exists()

    def test_ranking_with_an_unranked_response_is_refused(self, client, annotator, project):
        task = make_task(project, "ranking", ["Two.", "Three.", "Five."])
        first, second, _unranked = task.response_ids()
        client.force_login(annotator)
        _, assignment = open_task(client, project)

        response = client.post(submit_url(assignment), {f"rank-{first}": "1", f"rank-{second}": "2"})

        assert response.status_code == 400
        assert not Annotation.objects.exists()

    def test_ranking_with_equal_ranks_stores_a_tie(self, client, annotator, project):
        task = make_task(project, "ranking", ["Two.", "Three.", "Five."])
        first, second, third = task.response_ids()
        client.force_login(annotator)
        _, assignment = open_task(client, project)

        response = client.post(
            submit_url(assignment), {f"rank-{first}": "3", f"rank-{second}": "1", f"rank-{third}": "1"}
        )

        assert response.status_code == 302
        assert Annotation.objects.get().ranking == [sorted([second, third]), [first]]

    @pytest.mark.parametrize("shown", ["task order", "reversed"])
    @pytest.mark.parametrize(("preference", "shown_side", "strength"), [("a1", 0, 1), ("b2", 1, 2)])
    def test_pairwise_choice_is_stored_for_the_response_shown_on_that_side(
        self, client, annotator, project, shown, preference, shown_side, strength
    ):
        task = make_task(project, "pairwise", ["Two.", "Seven."])
        client.force_login(annotator)
        _, assignment = open_task(client, project)
        # The queue shuffles per lease; pin both orders so each is checked every run.
        order = task.response_ids() if shown == "task order" else task.response_ids()[::-1]
        Assignment.objects.filter(pk=assignment.pk).update(shown_order=order)

        client.post(submit_url(assignment), {"preference": preference})

        annotation = Annotation.objects.get()
        preferred = order[shown_side]
        assert annotation.choice == ("a" if preferred == task.response_ids()[0] else "b")
        assert annotation.strength == strength

    def test_someone_elses_assignment_is_a_404_and_writes_nothing(self, client, annotator, lead, project):
        make_task(project, "rating", ["Two."])
        client.force_login(annotator)
        _, assignment = open_task(client, project)

        client.force_login(lead)
        submitted = client.post(submit_url(assignment), {"score": "5"}, **HTMX)
        skipped = client.post(skip_url(assignment), **HTMX)

        assert (submitted.status_code, skipped.status_code) == (404, 404)
        assert not Annotation.objects.exists()
        assignment.refresh_from_db()
        assert assignment.status == Assignment.Status.ACTIVE

    def test_an_outsider_cannot_submit_into_a_project(self, client, annotator, outsider, project):
        make_task(project, "rating", ["Two."])
        client.force_login(annotator)
        _, assignment = open_task(client, project)

        client.force_login(outsider)

        assert client.post(submit_url(assignment), {"score": "5"}).status_code == 404
        assert not Annotation.objects.exists()

    def test_an_expired_lease_whose_task_went_to_someone_else_is_a_409_with_a_message(
        self, client, annotator, lead, project
    ):
        task = make_task(project, "rating", ["Two."])
        make_task(project, "rating", ["Three."], external_id="p2")
        client.force_login(annotator)
        _, lost = open_task(client, project)
        assert lost.task == task
        Assignment.objects.filter(pk=lost.pk).update(expires_at=timezone.now() - timedelta(minutes=1))
        taken = project.next_assignment(lead)
        assert taken.task == task
        taken.submit({"score": 3}, user=lead)

        response = client.post(submit_url(lost), {"score": "5"}, **HTMX)

        page = response.content.decode()
        assert response.status_code == 409
        assert "went to someone else" in page
        assert assignment_in(page).task != task and "Three." in page
        assert not Annotation.objects.filter(annotator=annotator).exists()

    def test_get_is_not_allowed_on_submit(self, client, annotator, project):
        make_task(project, "rating", ["Two."])
        client.force_login(annotator)
        _, assignment = open_task(client, project)

        assert client.get(submit_url(assignment)).status_code == 405


class TestSkip:
    def test_skip_without_htmx_redirects_and_the_next_task_is_another(self, client, annotator, project):
        first = make_task(project, "rating", ["Two."])
        second = make_task(project, "rating", ["Three."], external_id="p2")
        client.force_login(annotator)
        _, assignment = open_task(client, project)
        assert assignment.task == first

        response = client.post(skip_url(assignment))

        assert response.status_code == 302 and response.url == task_url(project)
        assignment.refresh_from_db()
        assert assignment.status == Assignment.Status.SKIPPED
        assert open_task(client, project)[1].task == second
        assert not Annotation.objects.exists()

    def test_skip_with_htmx_returns_the_next_task_region(self, client, annotator, project):
        make_task(project, "rating", ["Two."])
        make_task(project, "pairwise", ["Three.", "Five."], external_id="p2")
        client.force_login(annotator)
        _, assignment = open_task(client, project)

        response = client.post(skip_url(assignment), **HTMX)

        page = response.content.decode()
        assert response.status_code == 200 and "<html" not in page
        assert assignment_in(page).task.kind == "pairwise"
        assert 'id="progress-session" max="1" value="0"' in page

    def test_skipping_a_submitted_task_is_a_409_with_a_message(self, client, annotator, project):
        make_task(project, "rating", ["Two."])
        client.force_login(annotator)
        _, assignment = open_task(client, project)
        client.post(submit_url(assignment), {"score": "5"})

        response = client.post(skip_url(assignment), **HTMX)

        assert response.status_code == 409
        assert "You already submitted this task." in response.content.decode()


class TestGuidelines:
    def test_guidelines_page_renders_the_markdown(self, client, annotator, project):
        client.force_login(annotator)

        response = client.get(reverse("guidelines", args=[project.slug]))

        assert response.status_code == 200
        assert "Prefer the <strong>helpful</strong> answer." in response.content.decode()

    def test_task_page_has_the_guidelines_in_a_dialog_and_a_link_to_the_page(self, client, annotator, project):
        make_task(project, "rating", ["Two."])
        client.force_login(annotator)

        page, _ = open_task(client, project)

        dialog = re.search(r'<dialog id="guidelines".*?</dialog>', page, re.S).group(0)
        assert "Prefer the <strong>helpful</strong> answer." in dialog
        assert f'href="{reverse("guidelines", args=[project.slug])}"' in page

    def test_outsider_gets_404_on_guidelines(self, client, outsider, project):
        client.force_login(outsider)

        assert client.get(reverse("guidelines", args=[project.slug])).status_code == 404


class TestStats:
    def stats_url(self, project):
        return reverse("project_stats", args=[project.slug])

    def test_annotators_and_outsiders_get_404(self, client, annotator, outsider, project):
        for user in [annotator, outsider]:
            client.force_login(user)
            assert client.get(self.stats_url(project)).status_code == 404

    def test_lead_of_another_project_gets_404(self, client, project, make_user):
        other = Project.objects.create(name="Other", slug="other")
        user = make_user("other-lead")
        Membership.objects.create(project=other, user=user, role=Membership.Role.LEAD)
        client.force_login(user)

        assert client.get(self.stats_url(project)).status_code == 404

    def test_lead_sees_tasks_annotators_hours_and_live_leases(self, client, annotator, lead, project):
        make_task(project, "rating", ["Two."])
        make_task(project, "rating", ["Three."], external_id="p2")
        make_task(project, "pairwise", ["Five.", "Seven."], external_id="p3")
        done = project.next_assignment(annotator)
        done.submit({"score": 4}, user=annotator)
        held = project.next_assignment(annotator)
        client.force_login(lead)

        response = client.get(self.stats_url(project))

        page = response.content.decode()
        assert response.status_code == 200
        rows = {row["kind"]: (row["open"], row["complete"], row["total"]) for row in response.context["task_rows"]}
        assert rows["Single-sided rating"] == (1, 1, 2)
        assert rows["Side-by-side pairwise"] == (1, 0, 1)
        assert rows["All"] == (2, 1, 3)
        assert [(name, n) for name, n, _last in response.context["per_annotator"]] == [("annotator", 1)]
        assert [n for _hour, n in response.context["per_hour"]] == [1]
        assert '<meter class="bar" min="0" max="1" value="1">' in page
        assert re.search(r"<td>annotator</td>\s*<td class=\"num\">1</td>", page)
        assert f"<td>{held.task}</td>" in page

    def test_superuser_may_see_stats(self, client, project, django_user_model):
        client.force_login(django_user_model.objects.create_superuser("root", password="x"))

        assert client.get(self.stats_url(project)).status_code == 200

    def test_project_page_links_stats_for_leads_only(self, client, annotator, lead, project):
        url = self.stats_url(project)
        client.force_login(annotator)
        assert url not in client.get(reverse("project_detail", args=[project.slug])).content.decode()

        client.force_login(lead)
        assert url in client.get(reverse("project_detail", args=[project.slug])).content.decode()


class TestHome:
    def test_home_shows_my_done_count_what_remains_and_a_start_link(self, client, annotator, project):
        make_task(project, "rating", ["Two."])
        make_task(project, "rating", ["Three."], external_id="p2")
        make_task(project, "rating", ["Five."], external_id="p3")
        project.next_assignment(annotator).submit({"score": 2}, user=annotator)
        client.force_login(annotator)

        page = client.get(reverse("home")).content.decode()

        assert '<td class="num my-done" data-label="Done by you">1</td>' in page
        assert '<td class="num my-remaining" data-label="Left for you">2</td>' in page
        assert f'href="{task_url(project)}">Start annotating</a>' in page
