"""Who sees what on the site pages: members see their projects, outsiders get 404s, annotators never the admin."""

import pytest
from django.urls import reverse

from annotate.models import Membership, Project, Prompt, Task


@pytest.fixture
def other_project(db):
    return Project.objects.create(name="Harmlessness", slug="harmlessness")


def test_anonymous_is_redirected_to_login(client, project):
    for url in [reverse("home"), reverse("project_detail", args=[project.slug])]:
        response = client.get(url)
        assert response.status_code == 302
        assert response.url == f"{reverse('login')}?next={url}"


def test_login_page_logs_a_member_in(client, annotator):
    page = client.get(reverse("login"))
    assert page.status_code == 200

    response = client.post(reverse("login"), {"username": "annotator", "password": "correct-horse-battery"})

    assert response.status_code == 302
    assert response.url == reverse("home")
    assert client.get(reverse("home")).context["user"] == annotator


def test_logout_is_a_post_form(client, annotator):
    client.force_login(annotator)
    page = client.get(reverse("home")).content.decode()
    assert f'<form method="post" action="{reverse("logout")}">' in page

    client.post(reverse("logout"))

    assert client.get(reverse("home")).status_code == 302


def test_annotator_sees_only_their_projects_on_home(client, annotator, project, other_project):
    client.force_login(annotator)

    response = client.get(reverse("home"))

    assert [(p.slug, role) for p, role, _ in response.context["rows"]] == [("helpfulness", "annotator")]
    assert "Harmlessness" not in response.content.decode()


def test_home_shows_role_and_complete_and_total_task_counts(client, annotator, project):
    prompt = Prompt.objects.create(project=project, external_id="p1", messages=[{"role": "user", "content": "Hi"}])
    Task.objects.create(project=project, prompt=prompt, kind="rating")
    Task.objects.create(project=project, prompt=prompt, kind="rating", status=Task.Status.COMPLETE)
    client.force_login(annotator)

    response = client.get(reverse("home"))

    [(shown, role, progress)] = response.context["rows"]
    assert (shown, role, progress["complete_tasks"], progress["total_tasks"]) == (project, "annotator", 1, 2)
    assert '<td class="num" data-label="Complete tasks">1</td>' in response.content.decode()
    assert '<td class="num" data-label="All tasks">2</td>' in response.content.decode()


def test_superuser_sees_all_projects(client, project, other_project, django_user_model):
    client.force_login(django_user_model.objects.create_superuser("root", password="x"))

    response = client.get(reverse("home"))

    assert {(p.slug, role) for p, role, _ in response.context["rows"]} == {
        ("helpfulness", "lead"),
        ("harmlessness", "lead"),
    }


def test_outsider_gets_404_not_403_on_a_project_page(client, outsider, project):
    client.force_login(outsider)

    assert client.get(reverse("project_detail", args=[project.slug])).status_code == 404


def test_member_of_another_project_gets_404(client, annotator, other_project):
    client.force_login(annotator)

    assert client.get(reverse("project_detail", args=[other_project.slug])).status_code == 404


def test_project_page_renders_guidelines_as_markdown_with_html_inert(client, annotator, project):
    project.guidelines = "Prefer **helpful**.\n<script>alert('x')</script>"
    project.save()
    client.force_login(annotator)

    page = client.get(reverse("project_detail", args=[project.slug])).content.decode()

    assert "<strong>helpful</strong>" in page
    assert "<script>alert" not in page


def test_lead_sees_admin_links_on_the_project_page_and_annotator_does_not(client, lead, annotator, project):
    admin_url = reverse("admin:annotate_project_change", args=[project.pk])

    client.force_login(annotator)
    assert admin_url not in client.get(reverse("project_detail", args=[project.slug])).content.decode()

    client.force_login(lead)
    page = client.get(reverse("project_detail", args=[project.slug])).content.decode()
    assert admin_url in page
    assert reverse("admin:annotate_project_import", args=[project.pk]) in page


def test_non_staff_lead_gets_no_admin_link(client, project, make_user):
    user = make_user("lead-without-staff")
    Membership.objects.create(project=project, user=user, role=Membership.Role.LEAD)
    client.force_login(user)

    page = client.get(reverse("project_detail", args=[project.slug])).content.decode()

    assert reverse("admin:annotate_project_change", args=[project.pk]) not in page


def test_annotator_is_sent_to_the_admin_login_when_opening_the_admin(client, annotator):
    client.force_login(annotator)

    for url in [reverse("admin:index"), reverse("admin:annotate_project_changelist")]:
        response = client.get(url)
        assert response.status_code == 302
        assert response.url.startswith(f"{reverse('admin:login')}?next=")
