"""Judges in the admin: a lead adds one (with its identity) to a project they lead, starts runs, follows and cancels
them; another project's judges and runs stay out of sight."""

import pytest
from django.urls import reverse

from annotate import judges
from annotate.admin import project_leads_group
from annotate.models import Judge, JudgeRun, Project
from models_registry.models import ModelVersion

LLM = {"kind": "llm", "endpoint": "http://127.0.0.1:8000/v1", "model_name": "tiny-chat"}


@pytest.fixture
def staff_lead(lead):
    lead.groups.add(project_leads_group())
    return lead


@pytest.fixture
def others(db):
    """A judge with a run in a project the lead does not lead."""
    project = Project.objects.create(name="Harmlessness", slug="harmlessness")
    judge = Judge.create(project, "theirs", **LLM)
    return judge, judges.start(judge)


def add_form(project, **fields):
    form = {"project": project.pk, "name": "llm", "concurrency": 8, "requests_per_minute": 0, "max_retries": 2}
    form.update({"kind": "", "model_version": "", "endpoint": "", "model_name": "", "api_key_env": "", "rubric": ""})
    form.update({"runs-TOTAL_FORMS": 0, "runs-INITIAL_FORMS": 0, "runs-MIN_NUM_FORMS": 0, "runs-MAX_NUM_FORMS": 0})
    return {**form, **fields}


def test_a_lead_adds_a_judge_that_answers_as_its_own_identity(client, staff_lead, project):
    client.force_login(staff_lead)

    page = client.post(reverse("admin:annotate_judge_add"), add_form(project, **LLM, rubric="Be strict."))

    assert page.status_code == 302, page.context["adminform"].form.errors if page.context else page
    judge = Judge.objects.get(project=project, name="llm")
    assert (judge.model_name, judge.rubric, judge.created_by) == ("tiny-chat", "Be strict.", staff_lead)
    assert judge.user.username == f"judge.{project.pk}.llm" and not judge.user.is_active


def test_a_judge_the_model_refuses_is_refused_by_the_form(client, staff_lead, project):
    client.force_login(staff_lead)
    policy = ModelVersion.register(project=project, kind="policy", base_model="tiny/policy")

    no_model = client.post(reverse("admin:annotate_judge_add"), add_form(project, kind="llm", endpoint=LLM["endpoint"]))
    a_policy = client.post(
        reverse("admin:annotate_judge_add"), add_form(project, kind="reward_model", model_version=policy.pk)
    )

    assert "An LLM judge needs it." in no_model.content.decode()
    assert "is a policy" in a_policy.content.decode()
    assert not Judge.objects.exists()


def test_a_judges_configuration_stays_as_it_was_made(client, staff_lead, project):
    judge = Judge.create(project, "llm", **LLM)
    client.force_login(staff_lead)

    client.post(
        reverse("admin:annotate_judge_change", args=[judge.pk]),
        {"concurrency": 2, "requests_per_minute": 30, "runs-TOTAL_FORMS": 0, "runs-INITIAL_FORMS": 0},
    )

    judge.refresh_from_db()
    assert (judge.concurrency, judge.requests_per_minute, judge.model_name) == (2, 30, "tiny-chat")
    page = client.get(reverse("admin:annotate_judge_change", args=[judge.pk])).content.decode()
    assert 'name="model_name"' not in page and 'name="endpoint"' not in page


def test_a_lead_starts_runs_and_cancels_them(client, staff_lead, project, django_capture_on_commit_callbacks):
    judge = Judge.create(project, "llm", **LLM)
    client.force_login(staff_lead)

    with django_capture_on_commit_callbacks() as queued:
        client.post(
            reverse("admin:annotate_judge_changelist"),
            {"action": "run_over_open_tasks", "_selected_action": [judge.pk]},
        )

    run = JudgeRun.objects.get()
    assert (run.judge, run.scope, run.status, run.created_by) == (judge, "open", "pending", staff_lead)
    assert len(queued) == 1  # the worker's message, sent once the run is committed
    run.claim()
    run.beat(total=10, answered=3, skipped=1)
    listing = client.get(reverse("admin:annotate_judgerun_changelist")).content.decode()
    assert "4 of 10" in listing

    client.post(reverse("admin:annotate_judgerun_changelist"), {"action": "cancel", "_selected_action": [run.pk]})
    assert run.cancel_is_requested()
    assert client.get(reverse("admin:annotate_judgerun_add")).status_code == 403  # runs are started, not written


def test_a_lead_sees_no_other_projects_judges_or_runs(client, staff_lead, project, others):
    theirs, their_run = others
    client.force_login(staff_lead)

    assert theirs not in client.get(reverse("admin:annotate_judge_changelist")).context["cl"].queryset
    assert their_run not in client.get(reverse("admin:annotate_judgerun_changelist")).context["cl"].queryset
    assert client.get(reverse("admin:annotate_judge_change", args=[theirs.pk])).status_code == 302
    client.post(reverse("admin:annotate_judgerun_changelist"), {"action": "cancel", "_selected_action": [their_run.pk]})
    assert not their_run.cancel_is_requested()


def test_the_judges_list_shows_each_judges_latest_run_in_a_fixed_number_of_queries(
    client, staff_lead, project, django_assert_max_num_queries
):
    client.force_login(staff_lead)
    for name in ("first", "second"):
        judge = Judge.create(project, name, **LLM)
        judges.start(judge)
        JudgeRun.objects.filter(pk=judges.start(judge).pk).update(status=JudgeRun.Status.SUCCEEDED, total=4, answered=3)
    url = reverse("admin:annotate_judge_changelist")
    client.get(url)  # warm: the session and the lead's permissions are read once

    with django_assert_max_num_queries(12) as two:
        page = client.get(url).content.decode()
    for name in ("third", "fourth", "fifth"):
        judges.start(Judge.create(project, name, **LLM))
    with django_assert_max_num_queries(len(two.captured_queries)):  # three judges more, no query more
        client.get(url)

    assert page.count("Succeeded, 3 of 4") == 2  # the latest of each judge's two runs
