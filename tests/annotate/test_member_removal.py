"""A member removed from a project gives back their live leases at once, so they stop holding places in the overlap."""

import pytest
from django.urls import reverse

from annotate.admin import project_leads_group
from annotate.models import Assignment, Membership, Project, Prompt, Response, Task, TaskResponse

pytestmark = pytest.mark.django_db


def make_task(project, name, required=1):
    prompt = Prompt.objects.create(project=project, external_id=name, messages=[{"role": "user", "content": name}])
    task = Task.objects.create(project=project, prompt=prompt, kind="rating", required_annotations=required)
    TaskResponse.objects.create(task=task, response=Response.objects.create(prompt=prompt, content="Hi."), position=0)
    return task


@pytest.fixture
def second(project, make_user):
    user = make_user("second")
    Membership.objects.create(project=project, user=user)
    return user


def test_deleting_a_membership_ends_the_members_live_leases_and_frees_the_task(project, annotator, second):
    task = make_task(project, "only", required=1)
    lease = project.next_assignment(annotator)
    assert project.next_assignment(second) is None  # the task is full while the lease is live

    Membership.objects.get(project=project, user=annotator).delete()

    lease.refresh_from_db()
    assert lease.status == Assignment.Status.EXPIRED
    assert project.next_assignment(second).task == task


def test_only_live_leases_in_that_project_end(project, annotator, make_user):
    other = Project.objects.create(name="Other", slug="other")
    Membership.objects.create(project=other, user=annotator)
    make_task(project, "here-1")
    make_task(project, "here-2")
    elsewhere_task = make_task(other, "elsewhere")
    submitted = project.next_assignment(annotator)
    submitted.submit({"score": 3}, user=annotator)
    live = project.next_assignment(annotator)
    elsewhere = other.next_assignment(annotator)
    assert elsewhere.task == elsewhere_task

    Membership.objects.get(project=project, user=annotator).delete()

    statuses = dict(Assignment.objects.values_list("pk", "status"))
    assert statuses == {
        submitted.pk: Assignment.Status.SUBMITTED,
        live.pk: Assignment.Status.EXPIRED,
        elsewhere.pk: Assignment.Status.ACTIVE,
    }


def test_removing_members_with_the_admins_bulk_delete_ends_their_leases(client, project, lead, annotator):
    lead.groups.add(project_leads_group())
    client.force_login(lead)
    make_task(project, "only")
    lease = project.next_assignment(annotator)
    membership = Membership.objects.get(project=project, user=annotator)

    response = client.post(
        reverse("admin:annotate_membership_changelist"),
        {"action": "delete_selected", "_selected_action": [membership.pk], "post": "yes"},
    )

    assert response.status_code == 302
    assert not Membership.objects.filter(pk=membership.pk).exists()
    lease.refresh_from_db()
    assert lease.status == Assignment.Status.EXPIRED
