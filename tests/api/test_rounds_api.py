"""Training rounds and the model registry over the API: launch (or be refused by field), watch, cancel, relaunch,
and list, inspect and promote registered versions. Rounds stay queued here: no worker runs them."""

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from annotate.importing import import_file
from annotate.models import DatasetSnapshot, Project
from models_registry.models import ModelVersion
from tests.conftest import write_model_files
from training import tasks
from training.models import RoundMetric, TrainingRound, Worker
from training.rounds import launch_round

P = "/api/v1/projects/helpfulness"


@pytest.fixture
def enqueued(monkeypatch):
    """The round ids handed to the Celery task (no worker in these tests)."""
    ids = []

    def delay(round_id):
        ids.append(round_id)
        return SimpleNamespace(id=f"task-{round_id}")

    monkeypatch.setattr(tasks.run_training_round, "delay", delay)
    return ids


@pytest.fixture
def queued_round(project, lead, base):
    return launch_round(project, method="dpo", user=lead, base=base, settings_={"max_steps": "5"})


def launch(client, django_capture_on_commit_callbacks, **body):
    with django_capture_on_commit_callbacks(execute=True):
        return client.post(f"{P}/rounds/", body)


def register(project, kind="policy", **fields):
    return ModelVersion.register(project=project, kind=kind, base_model="tiny/base", **fields)


class TestLaunch:
    def test_a_lead_launches_a_queued_round_sent_to_a_worker_after_commit(
        self, lead_client, base, enqueued, django_capture_on_commit_callbacks
    ):
        response = launch(
            lead_client,
            django_capture_on_commit_callbacks,
            method="ppo",
            base=base,
            settings={"max_steps": 10, "ppo.kl_coef": "0.2", "use_lora": True},
            filters={"split": "train"},
        )

        assert response.status_code == 201, response.json()
        body = response.json()
        assert (body["number"], body["method"], body["status"], body["created_by"]) == (1, "ppo", "queued", "lead")
        assert body["base_model"] == base and body["base_version"] is None
        assert list(body["config"]) == ["reward", "ppo", "sample"]
        assert body["config"]["reward"]["max_steps"] == body["config"]["ppo"]["max_steps"] == 10
        assert body["config"]["ppo"]["kl_coef"] == 0.2
        assert body["filters"]["split"] == "train"
        assert body["snapshot"]["status"] == "pending" and body["snapshot"]["sha256"] == ""
        assert response.headers["Location"] == body["url"] == f"{P}/rounds/1/"
        training_round = TrainingRound.objects.get()
        assert enqueued == [training_round.pk] and training_round.celery_task_id == f"task-{training_round.pk}"
        assert training_round.created_by.username == "lead"

    def test_a_registered_policy_can_be_the_base(
        self, lead_client, project, enqueued, django_capture_on_commit_callbacks
    ):
        policy = register(project, adapter_path="/artifacts/policy-1")

        body = launch(lead_client, django_capture_on_commit_callbacks, method="dpo", base="policy-v1").json()

        assert body["base_version"] == {
            "id": policy.pk,
            "name": "policy-v1",
            "status": "candidate",
            "url": f"{P}/models/{policy.pk}/",
        }
        assert body["config"]["dpo"]["model_name_or_path"] == "/artifacts/policy-1"

    def test_a_kto_round_trains_on_the_projects_ratings(
        self, lead_client, project, annotator, base, tmp_path, enqueued, django_capture_on_commit_callbacks
    ):
        (tmp_path / "responses.jsonl").write_text(json.dumps({"prompt": "Hi?", "responses": ["Hello."]}) + "\n")
        import_file(project, tmp_path / "responses.jsonl", format="responses")
        project.next_assignment(annotator).submit({"score": 5}, user=annotator)

        response = launch(lead_client, django_capture_on_commit_callbacks, method="kto", base=base,
                          settings={"beta": 0.2})  # fmt: skip

        assert response.status_code == 201, response.json()
        assert list(response.json()["config"]) == ["kto", "sample"] and response.json()["config"]["kto"]["beta"] == 0.2
        assert TrainingRound.objects.get().snapshot.kind == DatasetSnapshot.Kind.UNPAIRED

    @pytest.mark.parametrize(
        ("body", "field"),
        [
            ({"method": "bogus"}, "method"),
            ({"method": "dpo", "base": "/no/such/model"}, "base"),
            ({"method": "dpo", "reward_model": "reward-v1"}, "reward_model"),  # PPO only
            ({"method": "ppo", "reward_model": "reward-v9"}, "reward_model"),
            ({"method": "dpo", "settings": {"learnin_rate": 1}}, "learnin_rate"),
            ({"method": "dpo", "settings": {"beta": -1}}, "dpo.beta"),
            ({"method": "dpo", "settings": {"learning_rate": "fast"}}, "dpo.learning_rate"),
            ({"method": "dpo", "settings": {"ppo.kl_coef": 0.1}}, "ppo.kl_coef"),
            ({"method": "dpo", "settings": {"beta": [0.1]}}, "settings"),
            ({"method": "dpo", "settings": {"lora_target_modules": "q_proj\x00"}}, "settings"),
            ({"method": "dpo", "filters": {"split": "nope"}}, "filters"),
            ({"method": "dpo", "filters": {"annotator": "nobody"}}, "annotator"),
            ({"method": "sft", "filters": {"include_ties": True}}, "include_ties"),  # pairs only
            ({"method": "kto"}, "method"),  # the project has no rated answers
        ],
    )
    def test_a_bad_request_is_400_naming_the_field_and_queues_nothing(
        self, lead_client, base, enqueued, django_capture_on_commit_callbacks, body, field
    ):
        response = launch(lead_client, django_capture_on_commit_callbacks, **{"base": base, **body})

        assert response.status_code == 400
        assert field in response.json(), response.json()
        assert not TrainingRound.objects.exists() and not DatasetSnapshot.objects.exists() and enqueued == []

    def test_without_a_base_or_an_active_policy_or_a_default_the_base_is_refused(
        self, lead_client, settings, enqueued, django_capture_on_commit_callbacks
    ):
        settings.ARBITER_DEFAULT_BASE_MODEL = ""

        response = launch(lead_client, django_capture_on_commit_callbacks, method="sft")

        assert response.status_code == 400 and "active policy" in response.json()["base"][0]
        assert not TrainingRound.objects.exists()


class TestBaseThatIsNotAModel:
    def test_a_folder_without_a_model_is_refused_naming_what_it_lacks_and_nothing_is_queued(
        self, lead_client, base, enqueued, django_capture_on_commit_callbacks
    ):
        tiny = Path(base).parent / "tiny"  # as make_tiny_model writes it: policy/ and reward/, no model at the top
        write_model_files(tiny / "policy")
        write_model_files(tiny / "reward")

        response = launch(lead_client, django_capture_on_commit_callbacks, method="dpo", base=str(tiny))

        assert response.status_code == 400
        answer = response.json()["base"][0]
        assert answer.startswith(f"{tiny} is not a model a round can load: it has no config.json; no weights")
        assert answer.endswith(f"It holds models in policy/ and reward/: give {tiny}/policy, for instance.")
        assert not TrainingRound.objects.exists() and not DatasetSnapshot.objects.exists() and enqueued == []


class TestBaseFromAnotherProjectOrTheServer:
    def test_a_lead_cannot_train_on_another_projects_adapter_nor_learn_which_files_exist(
        self, lead_client, settings, enqueued, django_capture_on_commit_callbacks
    ):
        alpha = Project.objects.create(name="Alpha", slug="alpha")
        adapter = settings.ARBITER_ARTIFACTS_ROOT / "alpha" / "round-1" / "dpo"
        adapter.mkdir(parents=True)
        register(alpha, adapter_path=str(adapter))

        answers = [
            launch(lead_client, django_capture_on_commit_callbacks, method="dpo", base=base)
            for base in (str(adapter), "/etc/passwd", "/nonexistent/x")
        ]

        assert [answer.status_code for answer in answers] == [400, 400, 400]
        assert answers[0].json() == answers[1].json() == answers[2].json()
        assert "/etc" not in answers[0].json()["base"][0]
        assert not TrainingRound.objects.exists() and enqueued == []

    def test_relaunching_a_round_whose_base_is_now_refused_is_refused_alike(
        self, lead_client, project, settings, enqueued, django_capture_on_commit_callbacks, tmp_path
    ):
        outside = write_model_files(tmp_path / "outside")
        old = launch_round(project, method="dpo", base=outside, trusted=True)  # e.g. from the operator's shell
        old.request_cancel()

        with django_capture_on_commit_callbacks(execute=True):
            response = lead_client.post(f"{P}/rounds/1/relaunch/")

        assert response.status_code == 400
        assert (
            response.json() == launch(lead_client, django_capture_on_commit_callbacks, method="dpo", base="/x").json()
        )
        assert TrainingRound.objects.count() == 1 and enqueued == []


class TestRead:
    def test_the_list_is_newest_first_and_paginated(self, lead_client, project, lead, base, queued_round):
        launch_round(project, method="sft", user=lead, base=base)

        page = lead_client.get(f"{P}/rounds/", {"page_size": 1}).json()

        assert [r["number"] for r in page["results"]] == [2]
        assert page["results"][0]["snapshot"]["id"] == TrainingRound.objects.get(number=2).snapshot_id
        assert "metrics" not in page["results"][0] and "log_tail" not in page["results"][0]
        assert [r["number"] for r in lead_client.get(page["next"]).json()["results"]] == [1]

    def test_the_detail_has_progress_snapshot_config_metrics_log_and_registered_versions(
        self, lead_client, project, queued_round
    ):
        DatasetSnapshot.objects.filter(pk=queued_round.snapshot_id).update(
            status="ready", row_count=16, sha256="a" * 64
        )
        TrainingRound.objects.filter(pk=queued_round.pk).update(
            status="running", stage="dpo", step=2, total_steps=5, progress=0.4, log_tail="dpo step 2/5"
        )
        for step, loss in [(1, 0.69), (2, 0.5)]:
            RoundMetric.objects.create(training_round=queued_round, stage="dpo", step=step, values={"loss": loss})
        version = register(project, training_round=queued_round, snapshot_sha256="a" * 64, eval_report={"kl": 0.1})

        body = lead_client.get(f"{P}/rounds/1/").json()

        assert (body["status"], body["stage"], body["step"], body["total_steps"]) == ("running", "dpo", 2, 5)
        assert body["progress"] == 0.4 and body["log_tail"] == "dpo step 2/5" and body["error"] == ""
        assert body["snapshot"] == {
            "id": queued_round.snapshot_id,
            "status": "ready",
            "row_count": 16,
            "sha256": "a" * 64,
            "judge_weights": None,
        }
        assert body["config"]["dpo"]["max_steps"] == 5
        assert body["metrics"] == {"dpo/loss": [{"step": 1, "value": 0.69}, {"step": 2, "value": 0.5}]}
        [registered] = body["model_versions"]
        assert (registered["id"], registered["name"], registered["training_round"]) == (version.pk, "policy-v1", 1)
        assert registered["eval_report"] == {"kl": 0.1}
        assert body["created_by"] == "lead" and body["created_at"] and body["started_at"] is None

    @pytest.mark.parametrize("number", [2, 2**31, 2**63 - 1])
    def test_a_round_that_does_not_exist_is_404(self, lead_client, queued_round, number):
        assert lead_client.get(f"{P}/rounds/{number}/").status_code == 404

    def test_another_projects_rounds_are_not_listed(self, lead_client, lead, base, queued_round):
        other = Project.objects.create(name="Other", slug="other")
        launch_round(other, method="dpo", user=lead, base=base)

        assert [r["project"] for r in lead_client.get(f"{P}/rounds/").json()["results"]] == ["helpfulness"]


class TestCancelAndRelaunch:
    def test_cancelling_a_queued_round_cancels_it_at_once(self, lead_client, queued_round):
        response = lead_client.post(f"{P}/rounds/1/cancel/")

        assert response.status_code == 202
        assert (response.json()["status"], response.json()["cancel_requested"]) == ("cancelled", True)
        queued_round.refresh_from_db()
        assert queued_round.status == "cancelled" and queued_round.finished_at is not None

    def test_cancelling_a_running_round_asks_its_worker_to_stop(self, lead_client, queued_round):
        TrainingRound.objects.filter(pk=queued_round.pk).update(status="running", started_at=timezone.now())

        body = lead_client.post(f"{P}/rounds/1/cancel/").json()

        assert (body["status"], body["cancel_requested"]) == ("running", True)
        assert queued_round.cancel_is_requested()

    def test_a_finished_round_cannot_be_cancelled(self, lead_client, queued_round):
        queued_round.finish(TrainingRound.Status.FAILED, error="boom")

        response = lead_client.post(f"{P}/rounds/1/cancel/")

        assert response.status_code == 409 and response.json() == {"detail": "The round has already failed."}
        assert not queued_round.cancel_is_requested()

    def test_relaunch_queues_a_new_round_like_the_old_one(
        self, lead_client, admin, client_for, queued_round, enqueued, django_capture_on_commit_callbacks
    ):
        queued_round.finish(TrainingRound.Status.FAILED, error="The worker stopped sending heartbeats")

        with django_capture_on_commit_callbacks(execute=True):
            response = client_for(admin).post(f"{P}/rounds/1/relaunch/")

        assert response.status_code == 201
        body = response.json()
        assert (body["number"], body["status"], body["created_by"]) == (2, "queued", "admin")
        assert (body["method"], body["config"], body["filters"]) == ("dpo", queued_round.config, queued_round.filters)
        assert response.headers["Location"] == f"{P}/rounds/2/"
        assert body["snapshot"]["id"] != queued_round.snapshot_id  # a fresh snapshot of the data as it is now
        assert enqueued == [body["id"]]


class TestModels:
    def test_the_list_is_newest_first_and_filters_by_kind_and_status(self, lead_client, project):
        policy, reward = register(project), register(project, kind="reward")
        reward.promote()

        def ids(**query):
            return [v["id"] for v in lead_client.get(f"{P}/models/", query).json()["results"]]

        assert ids() == [reward.pk, policy.pk]
        assert ids(kind="policy") == [policy.pk]
        assert ids(kind="reward", status="active") == [reward.pk]
        assert lead_client.get(f"{P}/models/", {"kind": "critic"}).status_code == 400

    def test_the_detail_shows_where_a_version_came_from_and_its_lineage(self, lead_client, project, queued_round):
        first = register(project)
        second = register(
            project,
            parent=first,
            adapter_path="/artifacts/round-1/dpo",
            training_round=queued_round,
            snapshot_sha256="b" * 64,
            config={"beta": 0.1},
            eval_report={"mean_reward": 1.5},
            code_version="abc123",
        )

        body = lead_client.get(f"{P}/models/{second.pk}/").json()

        assert (body["name"], body["kind"], body["version"], body["status"]) == ("policy-v2", "policy", 2, "candidate")
        assert body["parent"]["name"] == "policy-v1" and body["training_round"] == 1
        assert (body["adapter_path"], body["snapshot_sha256"]) == ("/artifacts/round-1/dpo", "b" * 64)
        assert (body["config"], body["eval_report"], body["code_version"]) == (
            {"beta": 0.1},
            {"mean_reward": 1.5},
            "abc123",
        )
        assert [v["name"] for v in body["lineage"]] == ["policy-v2", "policy-v1"]

    def test_the_detail_reads_a_long_lineage_in_as_many_queries_as_a_short_one(self, lead_client, project):
        def queries_for(version):
            with CaptureQueriesContext(connection) as queries:
                assert lead_client.get(f"{P}/models/{version.pk}/").status_code == 200
            return len(queries)

        newest = register(project)
        short = queries_for(newest)
        for _ in range(3):
            newest = register(project, parent=newest)
        assert queries_for(newest) <= short  # not one more per ancestor

    def test_promoting_a_version_archives_the_one_active_before(self, lead_client, project):
        old, new = register(project), register(project)
        old.promote()

        response = lead_client.post(f"{P}/models/{new.pk}/promote/")

        assert response.status_code == 200 and response.json()["status"] == "active"
        old.refresh_from_db()
        assert old.status == "archived" and ModelVersion.objects.active_policy(project) == new

    def test_another_projects_version_is_404(self, lead_client):
        other = Project.objects.create(name="Other", slug="other")
        version = register(other)

        assert lead_client.get(f"{P}/models/{version.pk}/").status_code == 404
        assert lead_client.post(f"{P}/models/{version.pk}/promote/").status_code == 404
        assert ModelVersion.objects.get(pk=version.pk).status == "candidate"


def test_a_round_bigger_than_the_reported_gpus_is_refused_naming_the_estimate(
    lead_client, project, tiny_base, django_capture_on_commit_callbacks
):
    Worker.report("celery@small", queues=["gpu"], devices=[{"name": "Tiny GPU", "total_memory": 2**29}])
    response = launch(lead_client, django_capture_on_commit_callbacks, method="dpo", base=tiny_base)
    assert response.status_code == 400
    assert "more than the largest GPU the workers have reported, Tiny GPU" in str(response.json())
    assert not TrainingRound.objects.exists()


@pytest.fixture
def tiny_base(tmp_path, settings):
    """A base whose config.json has a decoder's sizes, so that the launch can estimate its memory."""
    settings.ARBITER_MODEL_ROOTS = [tmp_path / "models"]
    path = write_model_files(tmp_path / "models" / "sized")
    sizes = {"model_type": "llama", "vocab_size": 512, "hidden_size": 64, "intermediate_size": 128}
    (Path(path) / "config.json").write_text(json.dumps({**sizes, "num_hidden_layers": 2, "num_attention_heads": 4}))
    return path
