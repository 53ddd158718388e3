"""A lead's decisions on a member's work: pause and resume (the queue gives a paused member nothing, their leases go
back), exclude and include their votes; each recorded as a MembershipEvent with who, when and why."""

import pytest
from django.core.exceptions import ValidationError
from rest_framework.test import APIClient

from annotate.models import ApiToken, Assignment, MemberPaused, Membership, MembershipEvent, Prompt, Response, Task
from annotate.models import TaskResponse as Link


@pytest.fixture
def tasks(project):
    made = []
    for n in range(4):
        prompt = Prompt.objects.create(
            project=project, external_id=f"p{n}", messages=[{"role": "user", "content": "?"}]
        )
        task = Task.objects.create(project=project, prompt=prompt, kind="pairwise", required_annotations=2)
        for position, text in enumerate(("One.", "Two.")):
            Link.objects.create(
                task=task, response=Response.objects.create(prompt=prompt, content=text), position=position
            )
        made.append(task)
    return made


@pytest.fixture
def membership(project, annotator):
    return Membership.objects.get(project=project, user=annotator)


def api_client(user):
    _, token = ApiToken.issue(user, "bot")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    return client


class TestPause:
    def test_a_paused_member_gets_no_lease_and_gives_back_the_ones_held(
        self, project, annotator, lead, membership, tasks
    ):
        held = [project.next_assignment(annotator, reuse_lease=False) for _ in range(2)]

        event = membership.decide(MembershipEvent.Kind.PAUSED, by=lead, reason="Answers in under a second.")

        assert (event.kind, event.reason, event.by, event.user, event.project) == (
            "paused", "Answers in under a second.", lead, annotator, project
        )  # fmt: skip
        membership.refresh_from_db()
        assert membership.paused and not membership.votes_excluded
        assert not Assignment.objects.live().filter(annotator=annotator).exists()
        assert {lease.status for lease in Assignment.objects.filter(pk__in=[a.pk for a in held])} == {"expired"}
        with pytest.raises(MemberPaused, match="paused"):
            project.next_assignment(annotator)
        # What they held goes to others at once.
        assert project.available_tasks(lead, held[0].leased_at).filter(pk=held[0].task_id).exists()

    def test_a_paused_member_cannot_submit_what_they_held_and_resuming_restores_the_queue(
        self, project, annotator, lead, membership, tasks
    ):
        lease = project.next_assignment(annotator)
        membership.decide(MembershipEvent.Kind.PAUSED, by=lead, reason="Checking their work.")

        with pytest.raises(MemberPaused):
            lease.submit({"choice": "a", "strength": 1}, user=annotator)
        assert not lease.task.annotations.exists()

        event = membership.decide(MembershipEvent.Kind.RESUMED, by=lead)

        assert event.kind == "resumed" and event.reason == ""
        assert project.next_assignment(annotator) is not None

    def test_an_answer_already_stored_stands_and_repeating_it_still_succeeds(
        self, project, annotator, lead, membership, tasks
    ):
        lease = project.next_assignment(annotator)
        first = lease.submit({"choice": "a", "strength": 1}, user=annotator)
        membership.decide(MembershipEvent.Kind.PAUSED, by=lead, reason="Checking their work.")

        assert lease.submit({"choice": "a", "strength": 1}, user=annotator) == first  # a retry of a stored answer

    def test_the_task_page_says_so(self, client, project, annotator, lead, membership, tasks):
        membership.decide(MembershipEvent.Kind.PAUSED, by=lead, reason="Checking their work.")
        client.force_login(annotator)

        page = client.get(f"/p/{project.slug}/annotate/")

        assert page.status_code == 200
        text = page.content.decode()
        assert "Paused" in text and "A lead of Helpfulness paused your work here" in text
        assert "All done" not in text
        assert "paused" in client.get(f"/p/{project.slug}/").content.decode()

    def test_the_api_answers_409_with_the_reason_it_gives_no_task(self, project, annotator, lead, membership, tasks):
        client = api_client(annotator)
        lease = client.post(f"/api/v1/projects/{project.slug}/next/").json()
        membership.decide(MembershipEvent.Kind.PAUSED, by=lead, reason="Checking their work.")

        refused = client.post(f"/api/v1/projects/{project.slug}/next/")
        submitted = client.post(lease["submit_url"], {"preference": "a1"}, format="json")

        assert refused.status_code == 409 and "paused your work" in refused.json()["detail"]
        assert submitted.status_code == 409 and "paused your work" in submitted.json()["detail"]

    def test_htmx_submit_after_a_pause_swaps_in_the_explanation(
        self, client, project, annotator, lead, membership, tasks
    ):
        client.force_login(annotator)
        lease = project.next_assignment(annotator)
        membership.decide(MembershipEvent.Kind.PAUSED, by=lead, reason="Checking their work.")

        page = client.post(
            f"/p/{project.slug}/assignments/{lease.pk}/submit/", {"preference": "a1"}, headers={"HX-Request": "true"}
        )

        assert page.status_code == 409
        assert "paused your work here" in page.content.decode()


class TestDecisions:
    @pytest.mark.parametrize("kind", [MembershipEvent.Kind.PAUSED, MembershipEvent.Kind.EXCLUDED])
    def test_pausing_or_excluding_needs_a_reason(self, lead, membership, kind):
        with pytest.raises(ValidationError) as refused:
            membership.decide(kind, by=lead, reason="   ")

        assert "reason" in refused.value.message_dict
        assert not MembershipEvent.objects.exists()
        membership.refresh_from_db()
        assert not membership.paused and not membership.votes_excluded

    def test_excluding_and_including_votes_is_recorded_and_reversible(self, project, annotator, lead, membership):
        membership.decide(MembershipEvent.Kind.EXCLUDED, by=lead, reason="Spams: gold accuracy 38 %.")
        membership.refresh_from_db()
        assert membership.votes_excluded and not membership.paused

        membership.decide(MembershipEvent.Kind.INCLUDED, by=lead, reason="Their gold tasks were wrong.")
        membership.refresh_from_db()

        assert not membership.votes_excluded
        history = list(MembershipEvent.objects.filter(project=project, user=annotator).values_list("kind", "reason"))
        assert history == [("included", "Their gold tasks were wrong."), ("excluded", "Spams: gold accuracy 38 %.")]

    def test_a_decision_already_in_force_changes_nothing_and_records_nothing(self, lead, membership):
        membership.decide(MembershipEvent.Kind.PAUSED, by=lead, reason="Too fast.")

        assert membership.decide(MembershipEvent.Kind.PAUSED, by=lead, reason="Again.") is None
        assert membership.decide(MembershipEvent.Kind.INCLUDED, by=lead) is None  # never excluded
        assert MembershipEvent.objects.count() == 1
