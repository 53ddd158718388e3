"""The judge's suggestion to annotators: offered only when the project shows suggestions and its judge answered the
task, kept from a random control group, shown in the lease's own letters on the page and in the API, and how far it
sways people against that control group (annotate/suggestions.py) on the Quality page and in its API."""

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from annotate.judges import Verdict, record
from annotate.models import Annotation, ApiToken, Assignment, Judge, Membership, Project, Task
from annotate.quality import share
from annotate.simulation import simulate_judge
from annotate.suggestions import difference_interval, following
from models_registry.measures import wilson_interval
from tests.annotate.test_simulate_judge import make_tasks

Z_999 = 3.29


@pytest.fixture
def judge(project):
    judge = Judge.create(project, "sim", kind=Judge.Kind.LLM, endpoint="http://judge.invalid/v1", model_name="sim")
    Project.objects.filter(pk=project.pk).update(judge=judge, show_judge_suggestions=True, gold_rate=0)
    project.refresh_from_db()
    judge.project = project
    return judge


def judged(judge, task, *, choice="a", strength=2, confidence=0.83):
    record(
        judge,
        Verdict(
            task.pk,
            {"choice": choice, "strength": strength, "both_bad": False},
            confidence=confidence,
            consistent=True,
            detail={"attempts": ['{"choice": "A", "reason": "JUDGE-RATIONALE"}']},
        ),
    )


def set_project(project, **fields):
    Project.objects.filter(pk=project.pk).update(**fields)
    project.refresh_from_db()


def lease_all(project, user):
    """A lease on every task the user can be given, skipping each to get the next."""
    leases = []
    while (lease := project.next_assignment(user)) is not None:
        leases.append(lease)
        lease.skip(user=user)
    return leases


class TestOffer:
    def test_off_by_default_and_without_a_judges_answer_nothing_is_offered(self, project, judge, annotator):
        answered, unanswered = make_tasks(project, 2)
        judged(judge, answered)
        set_project(project, show_judge_suggestions=False)
        first = project.next_assignment(annotator)
        set_project(project, show_judge_suggestions=True, suggestion_control_share=0)
        first.skip(user=annotator)
        second = project.next_assignment(annotator)

        assert (first.task_id, first.suggestion_shown, first.suggestion()) == (answered.pk, None, None)
        assert (second.task_id, second.suggestion_shown, second.suggestion()) == (unanswered.pk, None, None)

    def test_the_control_group_is_a_random_share_of_the_leases_offered_one(self, project, judge, make_user):
        set_project(project, suggestion_control_share=0.3)
        tasks = make_tasks(project, 300)
        simulate_judge(judge, tasks, accuracy=0.8, seed=1, rule="word:cat")
        user = make_user("many")
        Membership.objects.create(project=project, user=user)

        leases = lease_all(project, user)

        assert len(leases) == 300
        control = sum(lease.suggestion_shown is False for lease in leases)
        low, high = wilson_interval(control / 300, 300, z=Z_999)
        assert low <= 0.3 <= high
        assert all(lease.suggestion_shown is not None for lease in leases)
        assert all(lease.suggestion() is None for lease in leases if not lease.suggestion_shown)

    def test_a_gold_task_is_never_offered_one(self, project, judge, annotator):
        task = make_tasks(project, 1)[0]
        judged(judge, task)
        set_project(project, suggestion_control_share=0)
        assert not project.gold_tasks_for(annotator).exists()
        Task.objects.filter(pk=task.pk).update(status=Task.Status.GOLD)
        task.refresh_from_db()
        assert project._shows_suggestion(task) is None


class TestShown:
    @pytest.fixture
    def lease(self, project, judge, annotator, make_user):
        task = make_tasks(project, 1)[0]
        judged(judge, task, choice="a", strength=2, confidence=0.83)
        # Another person's answer with a comment: a suggestion never shows what people wrote.
        Annotation.objects.create(
            task=task, annotator=make_user("other"), choice="b", strength=1, comment="PERSON-COMMENT"
        )
        set_project(project, suggestion_control_share=0)
        return project.next_assignment(annotator)

    def test_the_page_shows_the_judges_answer_in_the_leases_letters_with_its_confidence(self, client, annotator, lease):
        client.force_login(annotator)
        page = client.get(f"/p/{lease.task.project.slug}/annotate/").content.decode()

        letter = "B" if lease.shows_swapped() else "A"
        assert lease.suggestion() == {"answer": f"{letter} much better", "confidence": 0.83}
        assert (
            f'<p id="suggestion" class="suggestion" role="note">The judge suggests: <strong>{letter} much better'
            '</strong> <span class="meta">(confidence 83 %)</span>' in page
        )
        assert f"the judge suggests {letter} much better" in page  # what screen readers are told of the new task
        assert "PERSON-COMMENT" not in page and "JUDGE-RATIONALE" not in page

    def test_the_control_group_sees_nothing(self, client, annotator, lease):
        Assignment.objects.filter(pk=lease.pk).update(suggestion_shown=False)
        client.force_login(annotator)
        page = client.get(f"/p/{lease.task.project.slug}/annotate/").content.decode()
        assert "The judge suggests" not in page and 'id="suggestion"' not in page

    def test_the_api_lease_carries_it_and_null_for_the_control_group(self, annotator, lease):
        api = APIClient()
        api.credentials(HTTP_AUTHORIZATION=f"Bearer {ApiToken.issue(annotator, 'bot')[1]}")
        url = f"/api/v1/projects/{lease.task.project.slug}/next/"

        body = api.post(url, {}, format="json").json()
        assert body["id"] == lease.pk and body["suggestion"]["confidence"] == 0.83
        assert body["suggestion"]["answer"].endswith("much better")
        Assignment.objects.filter(pk=lease.pk).update(suggestion_shown=False)
        assert api.post(url, {}, format="json").json()["suggestion"] is None


class TestFollowing:
    def answer(self, task, user, shown, choice):
        lease = Assignment.objects.create(
            task=task,
            annotator=user,
            leased_at=timezone.now(),
            expires_at=timezone.now() + task.project.lease_length,
            shown_order=task.response_ids(),
            suggestion_shown=shown,
        )
        strength = None if choice == "tie" else 1
        return lease.submit({"choice": choice, "strength": strength, "both_bad": False}, user=user)

    def test_the_share_that_follows_the_judge_shown_and_not_with_the_difference(self, project, judge, make_user):
        *tasks, offered_nothing = make_tasks(project, 21)
        for task in tasks:
            judged(judge, task, choice="a")
        shown, control = make_user("shown"), make_user("control")
        # Shown: 9 of 10 answers are the judge's (strength aside); control: 3 of 10.
        for i, task in enumerate(tasks[:10]):
            self.answer(task, shown, True, "a" if i < 9 else "b")
        for i, task in enumerate(tasks[10:]):
            self.answer(task, control, False, "a" if i < 3 else "tie")
        self.answer(offered_nothing, control, None, "a")  # not counted

        figures = following(project)

        assert (figures["shown_answers"], figures["shown_same"], figures["shown_share"]) == (10, 9, 0.9)
        assert (figures["control_answers"], figures["control_same"], figures["control_share"]) == (10, 3, 0.3)
        assert figures["difference"] == pytest.approx(0.6)
        assert figures["difference_low"] == pytest.approx(0.1705, abs=1e-4)
        assert figures["difference_high"] == pytest.approx(0.8090, abs=1e-4)
        assert figures["judge"] == "sim"

    def test_newcombes_interval_matches_his_worked_example(self):
        # Newcombe (1998), Statistics in Medicine 17:873, table II example (a): 56/70 − 48/80, method 10.
        low, high = difference_interval(share(56, 70), share(48, 80))
        assert (round(low, 4), round(high, 4)) == (0.0524, 0.3339)

    def test_none_without_a_judge_and_empty_groups_give_no_difference(self, project, judge):
        assert following(project)["difference"] is None
        set_project(project, judge=None, show_judge_suggestions=False)
        assert following(project) is None

    def test_on_the_quality_page_and_in_its_api(self, client, project, judge, lead, make_user):
        tasks = make_tasks(project, 2)
        for task in tasks:
            judged(judge, task, choice="b")
        self.answer(tasks[0], make_user("one"), True, "b")
        self.answer(tasks[1], make_user("two"), False, "a")
        client.force_login(lead)

        page = client.get(f"/p/{project.slug}/quality/").content.decode()
        api = APIClient()
        api.credentials(HTTP_AUTHORIZATION=f"Bearer {ApiToken.issue(lead, 'lead')[1]}")
        body = api.get(f"/api/v1/projects/{project.slug}/quality/").json()

        assert 'id="suggestions"' in page and "Shown the suggestion" in page
        assert "+100 points" in page
        assert body["suggestions"]["shown_share"] == 1.0 and body["suggestions"]["control_share"] == 0.0
