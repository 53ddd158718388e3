"""The admin: leads see and edit only the projects they lead, superusers see all, and the import upload."""

import json

import pytest
from django.contrib import admin
from django.contrib.messages import get_messages
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from annotate.admin import LEAD_PERMISSIONS, project_leads_group
from annotate.models import (
    Annotation,
    Assignment,
    DatasetSnapshot,
    ImportJob,
    JudgeRun,
    Membership,
    Project,
    Prompt,
    Response,
    Task,
    TaskResponse,
)
from models_registry.models import ModelVersion
from training.models import Worker


def make_rows(project, tag, annotator):
    """One row of every annotate model (and a model version, and an import job) in `project`; returns them by model."""
    prompt = Prompt.objects.create(project=project, external_id=f"{tag}-p", messages=[{"role": "user", "content": tag}])
    version = ModelVersion.objects.create(project=project, version=1, base_model="tiny")
    first = Response.objects.create(prompt=prompt, content=f"{tag} first")
    second = Response.objects.create(prompt=prompt, content=f"{tag} second", source="model", model_version=version)
    task = Task.objects.create(project=project, prompt=prompt, kind="pairwise", annotation_count=1)
    task_response = TaskResponse.objects.create(task=task, response=first, position=0)
    TaskResponse.objects.create(task=task, response=second, position=1)
    Task.objects.create(project=project, prompt=prompt, kind="rating", status=Task.Status.COMPLETE)
    assignment = Assignment.objects.create(
        task=task, annotator=annotator, leased_at="2026-01-01T00:00Z", expires_at="2026-01-01T00:30Z"
    )
    annotation = Annotation.objects.create(
        task=task, annotator=annotator, assignment=assignment, choice="a", strength=2, both_bad=True
    )
    import_job = ImportJob.objects.create(project=project, file_name=f"{tag}.jsonl", status="failed", error="line 2")
    return {
        Project: project,
        Membership: project.memberships.get(user=annotator),
        Prompt: prompt,
        Response: first,
        Task: task,
        TaskResponse: task_response,
        Assignment: assignment,
        Annotation: annotation,
        ModelVersion: version,
        ImportJob: import_job,
    }


@pytest.fixture
def other_project(db):
    return Project.objects.create(name="Harmlessness", slug="harmlessness")


@pytest.fixture
def staff_lead(lead):
    lead.groups.add(project_leads_group())
    return lead


@pytest.fixture
def rows(project, other_project, annotator, make_user):
    """Rows in the lead's project ("own") and in a project they do not lead ("other")."""
    stranger = make_user("stranger")
    Membership.objects.create(project=other_project, user=stranger)
    return {"own": make_rows(project, "own", annotator), "other": make_rows(other_project, "other", stranger)}


@pytest.fixture
def superuser(django_user_model):
    return django_user_model.objects.create_superuser("root", password="x")


def admin_url(model, view, *args):
    return reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_{view}", args=args)


def jsonl_upload(*rows, name="rows.jsonl"):
    return SimpleUploadedFile(name, "".join(json.dumps(row) + "\n" for row in rows).encode())


def test_leads_group_grants_exactly_the_lead_permissions(db):
    group = project_leads_group()

    codenames = set(group.permissions.values_list("codename", flat=True))

    assert codenames == {f"{action}_{model}" for model, actions in LEAD_PERMISSIONS.items() for action in actions}
    assert "add_project" in codenames and "delete_project" not in codenames  # a lead makes projects, deletes none
    assert project_leads_group() == group  # a second call finds the group instead of making another


def test_lead_sees_only_rows_of_projects_they_lead(client, staff_lead, rows):
    client.force_login(staff_lead)

    for model in [Project, Membership, Prompt, Response, Task, TaskResponse, Assignment, Annotation, ImportJob]:
        response = client.get(admin_url(model, "changelist"))
        assert response.status_code == 200, model
        listed = set(response.context["cl"].queryset)
        assert rows["own"][model] in listed, model
        assert rows["other"][model] not in listed, model


def test_lead_cannot_open_rows_of_projects_they_do_not_lead(client, staff_lead, rows):
    client.force_login(staff_lead)

    for model, row in rows["other"].items():
        if model is ModelVersion:
            continue  # leads have no permissions on the registry at all
        response = client.get(admin_url(model, "change", row.pk))
        # The admin answers a row outside the queryset with a redirect to its index and "doesn't exist".
        assert response.status_code == 302, model
        assert response.url == reverse("admin:index"), model
        assert client.get(admin_url(model, "change", rows["own"][model].pk)).status_code == 200, model


def test_lead_filters_list_only_their_projects(client, staff_lead, rows):
    client.force_login(staff_lead)

    page = client.get(admin_url(Task, "changelist")).content.decode()

    assert "Helpfulness" in page
    assert "Harmlessness" not in page


def test_lead_cannot_create_rows_in_a_project_they_do_not_lead(client, staff_lead, rows, outsider):
    client.force_login(staff_lead)
    form = client.get(admin_url(Membership, "add")).context["adminform"].form
    assert list(form.fields["project"].queryset) == [rows["own"][Project]]

    response = client.post(
        admin_url(Membership, "add"), {"project": rows["other"][Project].pk, "user": outsider.pk, "role": "lead"}
    )

    assert response.status_code == 200
    assert "project" in response.context["adminform"].form.errors
    assert not Membership.objects.filter(user=outsider).exists()


def test_lead_foreign_key_choices_stop_at_their_projects(client, staff_lead, rows):
    client.force_login(staff_lead)

    task_form = client.get(admin_url(Task, "add")).context["adminform"].form
    annotation_form = client.get(admin_url(Annotation, "add")).context["adminform"].form

    assert set(task_form.fields["prompt"].queryset) == {rows["own"][Prompt]}
    assert set(annotation_form.fields["task"].queryset) == set(Task.objects.filter(project=rows["own"][Project]))
    assert {u.username for u in annotation_form.fields["annotator"].queryset} == {"lead", "annotator"}


def test_lead_autocomplete_offers_only_their_prompts(client, staff_lead, rows):
    client.force_login(staff_lead)

    response = client.get(
        reverse("admin:autocomplete"),
        {"app_label": "annotate", "model_name": "task", "field_name": "prompt", "term": ""},
    )

    assert [result["text"] for result in response.json()["results"]] == ["own-p"]


def project_form(project):
    """The project change form's fields as they stand (its memberships left to the test)."""
    return {
        "name": project.name,
        "slug": project.slug,
        "guidelines": project.guidelines,
        "task_kinds": json.dumps(project.task_kinds),
        "overlap": project.overlap,
        "fill": project.fill,
        "text_format": project.text_format,
        "lease_length": "00:30:00",
        "max_open_leases": project.max_open_leases,
        "gold_rate": project.gold_rate,
        "edit_window_minutes": project.edit_window_minutes,
        "samples_per_prompt": project.samples_per_prompt,
        "sample_prompts": project.sample_prompts,
        "pair_selection": project.pair_selection,
        "rating_min": project.rating_min,
        "rating_max": project.rating_max,
        "rating_descriptions": json.dumps(project.rating_descriptions),
        "labels": json.dumps(project.labels),
    }


def test_lead_adds_a_member_of_their_other_project_from_the_project_page(client, staff_lead, project, outsider):
    # The picker offers a lead the members of the projects they lead (others come in by invitation).
    Membership.objects.create(
        project=Project.objects.create(name="Other", slug="other-led"), user=staff_lead, role="lead"
    )
    Membership.objects.create(project=Project.objects.get(slug="other-led"), user=outsider)
    client.force_login(staff_lead)
    lead_membership = project.memberships.get(user=staff_lead)
    data = {
        **project_form(project),
        "memberships-TOTAL_FORMS": "2",
        "memberships-INITIAL_FORMS": "1",
        "memberships-0-id": lead_membership.pk,
        "memberships-0-project": project.pk,
        "memberships-0-user": staff_lead.pk,
        "memberships-0-role": "lead",
        "memberships-1-project": project.pk,
        "memberships-1-user": outsider.pk,
        "memberships-1-role": "annotator",
    }

    response = client.post(admin_url(Project, "change", project.pk), data)

    assert response.status_code == 302, response.context["adminform"].form.errors
    assert project.memberships.get(user=outsider).role == "annotator"


def test_lead_chooses_plain_text_for_their_project(client, staff_lead, project):
    client.force_login(staff_lead)
    lead_membership = project.memberships.get(user=staff_lead)
    page = client.get(admin_url(Project, "change", project.pk)).content.decode()
    assert '<option value="markdown" selected>Markdown</option>' in page
    assert '<option value="plain">Plain text</option>' in page
    data = {
        **project_form(project),
        "text_format": "plain",
        "memberships-TOTAL_FORMS": "1",
        "memberships-INITIAL_FORMS": "1",
        "memberships-0-id": lead_membership.pk,
        "memberships-0-project": project.pk,
        "memberships-0-user": staff_lead.pk,
        "memberships-0-role": "lead",
    }

    response = client.post(admin_url(Project, "change", project.pk), data)

    assert response.status_code == 302, response.context["adminform"].form.errors
    project.refresh_from_db()
    assert project.text_format == "plain"


def test_superuser_sees_every_projects_rows(client, superuser, rows):
    client.force_login(superuser)

    for model in [Project, Membership, Prompt, Response, Task, TaskResponse, Assignment, Annotation, ModelVersion]:
        listed = set(client.get(admin_url(model, "changelist")).context["cl"].queryset)
        assert {rows["own"][model], rows["other"][model]} <= listed, model


def test_every_admin_page_renders_for_a_superuser(client, superuser, rows):
    client.force_login(superuser)

    for model in admin.site._registry:
        assert client.get(admin_url(model, "changelist")).status_code == 200, model
        # Snapshots are made by exporting, import jobs by big uploads and model versions by training, never by hand;
        # "add" a training round is its launch form; django-axes' login records are made by logins, workers by reports,
        # judge runs by starting them.
        made_elsewhere = model in (DatasetSnapshot, ImportJob, JudgeRun, ModelVersion, Worker)
        made_elsewhere = made_elsewhere or model._meta.app_label == "axes"
        expected_add = 403 if made_elsewhere else 200
        assert client.get(admin_url(model, "add"), follow=True).status_code == expected_add, model
        if row := rows["own"].get(model):
            assert client.get(admin_url(model, "change", row.pk)).status_code == 200, model


def test_project_changelist_shows_counts_without_a_query_per_project(client, superuser, rows):
    client.force_login(superuser)

    def queries_for_changelist():
        with CaptureQueriesContext(connection) as queries:
            response = client.get(admin_url(Project, "changelist"))
        return response, len(queries)

    response, few = queries_for_changelist()
    for n in range(5):
        Project.objects.create(name=f"Extra {n}", slug=f"extra-{n}")
    _, many = queries_for_changelist()

    shown = {p.slug: (p.prompt_count, p.open_tasks, p.complete_tasks) for p in response.context["cl"].result_list}
    assert shown == {"helpfulness": (1, 1, 1), "harmlessness": (1, 1, 1)}
    assert many == few


def test_annotation_changelist_summarises_answers(client, superuser, rows):
    client.force_login(superuser)

    page = client.get(admin_url(Annotation, "changelist")).content.decode()

    assert "A much better, both bad" in page


def test_task_changelist_shows_annotations_out_of_required(client, superuser, rows):
    client.force_login(superuser)

    page = client.get(admin_url(Task, "changelist")).content.decode()

    assert "1/1" in page and "0/1" in page


def test_project_change_form_has_an_import_button(client, staff_lead, project):
    client.force_login(staff_lead)

    page = client.get(admin_url(Project, "change", project.pk)).content.decode()

    assert reverse("admin:annotate_project_import", args=[project.pk]) in page


def test_lead_imports_a_jsonl_file(client, staff_lead, project):
    client.force_login(staff_lead)
    upload = jsonl_upload(
        {"id": "q1", "prompt": "Name a prime.", "responses": ["7", "8"]},
        {"id": "q2", "prompt": "Name a colour.", "responses": ["red", "blue", "loud"], "split": "eval"},
    )

    response = client.post(
        reverse("admin:annotate_project_import", args=[project.pk]), {"file": upload, "format": "responses"}
    )

    assert response.status_code == 302
    assert response.url == admin_url(Project, "change", project.pk)
    assert set(project.prompts.values_list("external_id", flat=True)) == {"q1", "q2"}
    assert sorted(project.tasks.exclude(kind="rating").values_list("kind", flat=True)) == ["pairwise", "ranking"]
    [message] = [str(m) for m in get_messages(response.wsgi_request)]
    assert message.startswith("Imported into Helpfulness: 2 responses rows (jsonl): 2 prompts created")


def test_import_detects_the_format_when_none_is_chosen(client, staff_lead, project):
    client.force_login(staff_lead)

    client.post(
        reverse("admin:annotate_project_import", args=[project.pk]),
        {"file": jsonl_upload({"prompt": "Hi", "chosen": "Hello!", "rejected": "Go away."}), "format": ""},
    )

    assert Annotation.objects.filter(task__project=project, source="imported").count() == 1


def test_bad_import_names_the_line_and_imports_nothing(client, staff_lead, project):
    client.force_login(staff_lead)
    upload = jsonl_upload({"id": "q1", "prompt": "Fine."}, {"id": "q2", "split": "train"})

    response = client.post(reverse("admin:annotate_project_import", args=[project.pk]), {"file": upload})

    assert response.status_code == 200
    assert "Nothing was imported: line 2, field &#x27;prompt&#x27;: missing" in response.content.decode()
    assert not Prompt.objects.exists()


def test_deeply_nested_import_is_a_form_error_naming_the_line(client, staff_lead, project):
    client.force_login(staff_lead)
    deep = '{"prompt": "Hi?", "metadata": {"a": ' + "[" * 5000 + "]" * 5000 + "}}\n"
    upload = SimpleUploadedFile("deep.jsonl", deep.encode())

    response = client.post(reverse("admin:annotate_project_import", args=[project.pk]), {"file": upload})

    assert response.status_code == 200
    assert "Nothing was imported: line 1, field &#x27;metadata&#x27;: nested more than" in response.content.decode()
    assert not Prompt.objects.exists()


def test_import_page_renders_its_form(client, staff_lead, project):
    client.force_login(staff_lead)

    response = client.get(reverse("admin:annotate_project_import", args=[project.pk]))

    assert response.status_code == 200
    assert 'enctype="multipart/form-data"' in response.content.decode()


def test_lead_cannot_import_into_a_project_they_do_not_lead(client, staff_lead, other_project):
    client.force_login(staff_lead)
    url = reverse("admin:annotate_project_import", args=[other_project.pk])

    assert client.get(url).status_code == 404
    assert client.post(url, {"file": jsonl_upload({"id": "q1", "prompt": "Hi"})}).status_code == 404
    assert not Prompt.objects.exists()


def test_annotator_of_a_project_cannot_import_into_it(client, annotator, project):
    annotator.is_staff = True
    annotator.save()
    client.force_login(annotator)

    assert client.get(reverse("admin:annotate_project_import", args=[project.pk])).status_code == 404


def test_superuser_imports_into_any_project(client, superuser, other_project):
    client.force_login(superuser)

    client.post(
        reverse("admin:annotate_project_import", args=[other_project.pk]),
        {"file": jsonl_upload({"id": "q1", "prompt": "Hi"})},
    )

    assert other_project.prompts.count() == 1


@pytest.mark.parametrize(("action", "doing"), [("export_dataset", "export"), ("launch_training_round", "train on")])
def test_project_actions_want_exactly_one_project(client, superuser, project, other_project, action, doing):
    client.force_login(superuser)
    changelist = admin_url(Project, "changelist")
    both = client.post(changelist, {"action": action, "_selected_action": [project.pk, other_project.pk]})
    assert f"Select one project to {doing}." in [m.message for m in get_messages(both.wsgi_request)]
    one = client.post(changelist, {"action": action, "_selected_action": [project.pk]})
    assert one.status_code == 302 and str(project.pk) in one["Location"]
