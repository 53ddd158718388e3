"""`manage.py seed_demo`: demo users, a project with tasks, safe to run twice, and never by accident in production."""

from io import StringIO
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command
from django.urls import reverse

from annotate.admin import LEADS_GROUP
from annotate.management.commands.seed_demo import DEFAULT_PASSWORD
from annotate.models import Membership, Project, Prompt, Response, Task, TaskResponse
from models_registry.models import ModelVersion


def seed(*args, model: bool = False) -> str:
    """Run seed_demo; without the demo policy (a minute of training) unless `model`."""
    out = StringIO()
    call_command("seed_demo", *args, *([] if model else ["--no-model"]), stdout=out)
    return out.getvalue()


def row_counts() -> dict[str, int]:
    models = (get_user_model(), Project, Membership, Prompt, Response, Task, TaskResponse)
    return {model.__name__: model.objects.count() for model in models}


@pytest.fixture
def debug(settings):
    settings.DEBUG = True


def test_creates_users_project_and_tasks(db, debug):
    out = seed()

    project = Project.objects.get(slug="demo")
    roles = dict(project.memberships.values_list("user__username", "role"))
    assert roles == {"lead": "lead", "annotator1": "annotator", "annotator2": "annotator"}
    lead = get_user_model().objects.get(username="lead")
    assert lead.is_staff and not lead.is_superuser
    assert list(lead.groups.values_list("name", flat=True)) == [LEADS_GROUP]
    assert project.overlap == 2
    assert set(project.rating_descriptions) == {"1", "2", "3", "4", "5"}
    assert project.labels and project.guidelines.startswith("# ")
    assert project.prompts.count() == 20
    assert project.prompts.filter(split="eval").count() >= 2
    assert {"rating", "pairwise", "ranking"} <= set(project.tasks.values_list("kind", flat=True))
    assert not project.tasks.exclude(required_annotations=2).exists()
    for login in ["lead", "annotator1", "annotator2", DEFAULT_PASSWORD, "http://127.0.0.1:8000/"]:
        assert login in out


def test_the_urls_it_prints_use_the_port_given(db, debug):
    out = seed("--port", "8001")
    assert "http://127.0.0.1:8001/admin/" in out and ":8000" not in out


def test_second_run_creates_nothing_new(db, debug):
    seed()
    first = row_counts()

    seed()

    assert row_counts() == first


def log_in(client, username, password):
    """Through the login page, as a person does (django-axes wants the request that client.login does not pass)."""
    return client.post(reverse("login"), {"username": username, "password": password}).status_code == 302


def test_demo_lead_can_log_in_and_open_the_admin_project_page(client, db, debug):
    seed()
    project = Project.objects.get(slug="demo")

    assert log_in(client, "lead", DEFAULT_PASSWORD)

    assert client.get(reverse("admin:annotate_project_change", args=[project.pk])).status_code == 200
    assert client.get(reverse("admin:annotate_task_changelist")).status_code == 200
    assert client.get(reverse("project_detail", args=["demo"])).status_code == 200


def test_demo_annotator_can_log_in_and_see_the_project(client, db, debug):
    seed()

    assert log_in(client, "annotator1", DEFAULT_PASSWORD)

    assert [p.slug for p, _, _ in client.get(reverse("home")).context["rows"]] == ["demo"]


def test_password_comes_from_the_environment(client, db, debug, monkeypatch):
    monkeypatch.setenv("DEMO_PASSWORD", "another-secret-phrase")

    out = seed()

    assert "another-secret-phrase" in out
    assert log_in(client, "annotator2", "another-secret-phrase")


def test_refuses_to_run_with_debug_off_unless_forced(db, settings):
    settings.DEBUG = False

    with pytest.raises(CommandError, match="--force"):
        seed()
    assert not Project.objects.exists()

    seed("--force")
    assert Project.objects.filter(slug="demo").exists()


def test_the_demo_policy_is_registered_active_and_its_samples_are_queued(db, debug):
    out = seed(model=True)
    project = Project.objects.get(slug="demo")
    policy = ModelVersion.objects.get(project=project)
    assert (policy.kind, policy.version, policy.status) == ("policy", 1, "active")
    assert (Path(policy.base_model) / "config.json").is_file() and f"Registered {policy}" in out
    # The minute it trains is not silent: a line every 50 steps, then one per batch of answers sampled.
    assert "fine-tuning: step 50 of 300, loss" in out and "fine-tuning: step 300 of 300" in out
    assert "sampled" in out and " of " in out.split("sampled")[-1]

    samples = Response.objects.filter(model_version=policy)
    assert samples.count() >= 40 and len(set(samples.values_list("content", flat=True))) > samples.count() // 2
    assert all(len(text.split()) >= 3 for text in samples.values_list("content", flat=True)[:20])  # words, not soup
    tasks = Task.objects.filter(responses__model_version=policy).distinct()
    assert tasks.filter(kind="pairwise").count() >= 30
    project.refresh_from_db()
    assert project.task_count == Task.objects.filter(project=project).count()

    first = row_counts()
    seed(model=True)  # a second run neither trains nor samples again
    assert row_counts() == first and ModelVersion.objects.count() == 1
