"""The judges' API (leads): add a reward-model or LLM judge, start a run, follow its progress, cancel it."""

import pytest

from annotate import judges
from annotate.models import Judge, JudgeRun
from models_registry.models import ModelVersion

J = "/api/v1/projects/helpfulness/judges/"
LLM = {"name": "llm", "endpoint": "http://127.0.0.1:8000/v1", "model_name": "tiny-chat"}


@pytest.fixture
def api(client_for, lead):
    return client_for(lead)


@pytest.fixture
def llm_judge(project):
    return Judge.create(project, "llm", kind="llm", endpoint="http://127.0.0.1:8000/v1", model_name="tiny-chat")


def test_a_lead_adds_a_reward_model_judge_by_its_version_name(api, project, lead):
    version = ModelVersion.register(project=project, kind="reward", base_model="tiny/reward")

    response = api.post(J, {"name": "rm", "reward_model": "reward-v1"}, format="json")

    assert response.status_code == 201, response.data
    judge = Judge.objects.get(name="rm")
    assert (judge.kind, judge.model_version, judge.created_by) == ("reward_model", version, lead)
    assert response.data["reward_model"] == "reward-v1" and response.data["username"] == judge.user.username
    assert response["Location"] == f"{J}rm/runs/"
    assert [row["name"] for row in api.get(J).data["results"]] == ["rm"]


def test_a_lead_adds_an_llm_judge(api):
    body = {**LLM, "rubric": "Correct first, then short.", "api_key_env": "JUDGE_KEY", "requests_per_minute": 60}

    response = api.post(J, body, format="json")

    assert response.status_code == 201, response.data
    judge = Judge.objects.get(name="llm")
    assert (judge.kind, judge.model_name, judge.rubric, judge.api_key_env, judge.requests_per_minute) == (
        "llm", "tiny-chat", "Correct first, then short.", "JUDGE_KEY", 60
    )  # fmt: skip
    assert judge.concurrency == 8 and not judge.user.is_active


@pytest.mark.parametrize(
    "body, field",
    [
        ({"name": "x"}, "reward_model"),  # neither
        ({**LLM, "reward_model": "reward-v1"}, "reward_model"),  # both
        ({"name": "x", "reward_model": "reward-v7"}, "reward_model"),
        ({"name": "x", "reward_model": "policy-v1"}, "reward_model"),
        ({**LLM, "model_name": ""}, "model_name"),
        ({**LLM, "endpoint": "not a url"}, "endpoint"),
        ({**LLM, "name": "two words"}, "name"),
        ({**LLM, "concurrency": 0}, "concurrency"),
    ],
)
def test_a_judge_that_cannot_be_is_refused_naming_the_field(api, project, body, field):
    ModelVersion.register(project=project, kind="policy", base_model="tiny/policy")

    response = api.post(J, body, format="json")

    assert response.status_code == 400 and field in response.data, response.data
    assert not Judge.objects.exists()


def test_a_name_the_project_has_is_refused(api, llm_judge):
    response = api.post(J, LLM, format="json")
    assert response.status_code == 400 and "already exists" in str(response.data), response.data


def test_starting_a_run_queues_it_and_its_progress_can_be_followed(api, llm_judge, lead):
    response = api.post(f"{J}llm/runs/", {"scope": "sample", "limit": 5}, format="json")

    assert response.status_code == 202, response.data
    job = JudgeRun.objects.get()
    assert (job.judge, job.scope, job.limit, job.status, job.created_by) == (llm_judge, "sample", 5, "pending", lead)
    assert response["Location"] == f"{J}llm/runs/{job.pk}/"
    # What the worker records as it goes (judges.run): the API shows it.
    job.claim()
    job.beat(total=4, answered=2, failed=1, skipped=0, failures=[{"task": 9, "error": "no answer", "last_answer": ""}])
    run = api.get(response["Location"]).data
    assert (run["status"], run["answered"], run["failed"], run["progress"]) == ("running", 2, 1, 0.75)
    assert run["failures"][0]["task"] == 9
    assert [row["id"] for row in api.get(f"{J}llm/runs/").data["results"]] == [job.pk]


@pytest.mark.parametrize(
    "body, field",
    [
        ({"scope": "sample"}, "limit"),
        ({"scope": "round"}, "round_number"),
        ({"scope": "everything"}, "scope"),
        ({"limit": 0}, "limit"),
        ({"limit": 2**31}, "limit"),  # over what the column holds: PostgreSQL would fail the request
    ],
)
def test_a_run_that_cannot_be_is_refused_naming_the_field(api, llm_judge, body, field):
    response = api.post(f"{J}llm/runs/", body, format="json")
    assert response.status_code == 400 and field in response.data, response.data
    assert not JudgeRun.objects.exists()


def test_cancel_ends_a_pending_run_at_once_and_asks_a_running_one_to_stop(api, llm_judge):
    pending, running = judges.start(llm_judge), judges.start(llm_judge)
    running.claim()

    assert api.post(f"{J}llm/runs/{pending.pk}/cancel/").data["status"] == "cancelled"
    response = api.post(f"{J}llm/runs/{running.pk}/cancel/")
    assert response.status_code == 202 and (response.data["status"], response.data["cancel_requested"]) == (
        "running", True
    )  # fmt: skip
    assert running.cancel_is_requested()

    again = api.post(f"{J}llm/runs/{pending.pk}/cancel/")
    assert again.status_code == 409 and "already cancelled" in again.data["detail"]


def test_a_run_is_found_only_under_its_own_judge(api, project, llm_judge):
    other = Judge.create(project, "other", kind="llm", endpoint="http://127.0.0.1:8000/v1", model_name="m")
    job = judges.start(other)

    assert api.get(f"{J}llm/runs/{job.pk}/").status_code == 404
    assert api.post(f"{J}llm/runs/{job.pk}/cancel/").status_code == 404
    assert api.get(f"{J}nobody/runs/").status_code == 404
