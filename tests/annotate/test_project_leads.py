"""Leads without a superuser: the "Project leads" group exists after migrate, a lead makes projects and leads them,
and the member picker offers a lead only the people of their own projects."""

import pytest
from django.contrib.auth.models import Group
from django.urls import reverse

from annotate.leads import LEAD_PERMISSIONS, LEADS_GROUP, project_leads_group
from annotate.models import Membership, Project
from tests.annotate.test_admin import admin_url, project_form


@pytest.fixture
def staff_lead(lead):
    lead.groups.add(project_leads_group())
    return lead


def test_the_leads_group_and_its_permissions_exist_after_migrate(db):
    # Nothing here made the group: the test database was migrated, as a fresh production one is.
    group = Group.objects.get(name=LEADS_GROUP)

    codenames = set(group.permissions.values_list("codename", flat=True))

    assert codenames == {f"{action}_{model}" for model, actions in LEAD_PERMISSIONS.items() for action in actions}


def test_a_lead_makes_a_project_and_leads_it(client, staff_lead):
    client.force_login(staff_lead)

    response = client.post(reverse("new_project"), {"name": "Code review", "slug": "code-review"})

    project = Project.objects.get(slug="code-review")
    assert response.status_code == 302 and response.url == reverse("invitations", args=[project.slug])
    assert project.memberships.get(user=staff_lead).role == "lead"
    assert client.get(reverse("invitations", args=[project.slug])).status_code == 200


def test_a_taken_slug_is_a_form_error(client, staff_lead, project):
    client.force_login(staff_lead)

    response = client.post(reverse("new_project"), {"name": "Again", "slug": project.slug})

    assert response.status_code == 400 and "slug" in response.context["form"].errors
    assert Project.objects.count() == 1


@pytest.mark.parametrize("who", ["annotator", "lead"])  # a lead by membership only, outside the group
def test_no_project_page_without_the_permission(client, request, who):
    client.force_login(request.getfixturevalue(who))

    assert client.get(reverse("new_project")).status_code == 404
    assert client.post(reverse("new_project"), {"name": "X", "slug": "x"}).status_code == 404
    assert not Project.objects.filter(slug="x").exists()


def test_home_offers_a_new_project_to_those_who_may(client, staff_lead, annotator):
    client.force_login(staff_lead)
    assert reverse("new_project") in client.get(reverse("home")).content.decode()

    client.force_login(annotator)
    assert reverse("new_project") not in client.get(reverse("home")).content.decode()


def test_a_lead_who_adds_a_project_in_the_admin_leads_it(client, staff_lead, project):
    client.force_login(staff_lead)
    data = {
        **project_form(project),
        "name": "Made in the admin",
        "slug": "admin-made",
        "memberships-TOTAL_FORMS": "0",
        "memberships-INITIAL_FORMS": "0",
    }

    response = client.post(admin_url(Project, "add"), data)

    assert response.status_code == 302, response.context["adminform"].form.errors
    made = Project.objects.get(slug="admin-made")
    assert made.memberships.get(user=staff_lead).role == "lead"
    assert client.get(admin_url(Project, "change", made.pk)).status_code == 200


def test_the_member_picker_offers_only_the_people_of_the_leads_projects(client, staff_lead, project, make_user):
    other = Project.objects.create(name="Other", slug="other")
    Membership.objects.create(project=other, user=staff_lead, role="lead")
    colleague = make_user("colleague")
    Membership.objects.create(project=other, user=colleague)
    stranger = make_user("stranger")  # an account on the server, in none of the lead's projects
    Membership.objects.create(project=Project.objects.create(name="Elsewhere", slug="elsewhere"), user=stranger)
    client.force_login(staff_lead)

    inline = client.get(admin_url(Project, "change", project.pk)).context["inline_admin_formsets"][0]
    membership_form = client.get(admin_url(Membership, "add")).context["adminform"].form

    assert {u.username for u in inline.formset.form.base_fields["user"].queryset} == {"lead", "colleague"}
    assert {u.username for u in membership_form.fields["user"].queryset} == {"lead", "colleague"}
    response = client.post(admin_url(Membership, "add"), {"project": project.pk, "user": stranger.pk, "role": "lead"})
    assert "user" in response.context["adminform"].form.errors
    assert not project.memberships.filter(user=stranger).exists()
