"""Training rounds on the tiny local model: launch checks, each method end to end in-process, claims, cancel,
stale workers, and what lands in the registry."""

import errno
import json
import logging
import threading
import time
from datetime import timedelta
from importlib import import_module
from pathlib import Path

import pytest
from django.core.exceptions import ValidationError
from django.urls import reverse
from django.utils import timezone

from annotate.exports import run_snapshot
from annotate.importing import import_file
from annotate.models import DatasetSnapshot, Response, Task
from models_registry.models import ModelVersion
from tests.conftest import write_model_files
from tests.training.conftest import marker_pairs, save_adapter
from training.models import RoundMetric, TrainingRound, Worker
from training.rounds import fail_stale_rounds, failure_message, launch_round, plan_round, relaunch, run_round

FAST = {"max_steps": "3", "per_device_batch_size": "2", "lora_r": "4", "max_length": "128", "eval_fraction": "0.25"}


@pytest.fixture
def pairs_project(project, tmp_path):
    """The project with 16 imported preference pairs (chosen answers contain the marker word)."""
    rows = [{key: row[key] for key in ("prompt", "chosen", "rejected")} for row in marker_pairs(16, style="standard")]
    for number, row in enumerate(rows):
        row["prompt"] = f"{row['prompt']} ({number})"  # one prompt per pair
        if number >= 12:
            row["split"] = "eval"  # measured, never trained on: the round's new samples are compared on these
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    import_file(project, path)
    return project


def launch(project, policy, method, **extra):
    settings_ = {**FAST, **extra.pop("settings_", {})}
    if method != "reward":
        settings_.setdefault("sample.max_new_tokens", "8")
    if method == "best_of_n":
        settings_.setdefault("best_of_n.max_new_tokens", "8")  # its default, 128, leaves FAST's max_length no room
    return launch_round(project, method=method, base=policy, settings_=settings_, **extra)


@pytest.mark.django_db
class TestLaunch:
    def test_queues_a_round_with_a_pending_snapshot_and_each_stages_config(self, pairs_project, policy, lead):
        training_round = launch(pairs_project, policy, "ppo", user=lead, settings_={"ppo.kl_coef": "0.2"})
        assert (training_round.number, training_round.status, training_round.created_by) == (1, "queued", lead)
        assert list(training_round.config) == ["reward", "ppo", "sample"]
        assert training_round.config["ppo"]["kl_coef"] == 0.2 and training_round.config["ppo"]["max_steps"] == 3
        assert training_round.config["reward"]["max_steps"] == 3  # an unprefixed key goes to every stage with it
        assert training_round.config["reward"]["model_name_or_path"] == policy
        assert training_round.snapshot.status == DatasetSnapshot.Status.PENDING
        assert training_round.snapshot.kind == "pairs"
        assert launch(pairs_project, policy, "sft").number == 2

    @pytest.mark.parametrize(
        ("method", "options", "field"),
        [
            ("bogus", {}, "method"),
            ("dpo", {"settings_": {"learnin_rate": "1"}}, "learnin_rate"),
            ("dpo", {"settings_": {"learning_rate": "-1"}}, "dpo.learning_rate"),
            ("dpo", {"settings_": {"learning_rate": "fast"}}, "dpo.learning_rate"),
            ("dpo", {"settings_": {"ppo.kl_coef": "0.1"}}, "ppo.kl_coef"),
            ("reward", {"settings_": {"beta": "0.1"}}, "beta"),
            ("dpo", {"settings_": {"model_name_or_path": "x"}}, "model_name_or_path"),
            ("dpo", {"filters": {"split": "nope"}}, "split"),
            ("dpo", {"reward_model": "reward-v1"}, "reward_model"),
            ("ppo", {"reward_model": "reward-v9"}, "reward_model"),
            ("dpo", {"settings_": {"adapter": "adapters"}}, "dpo.adapter"),
            ("ppo", {"settings_": {"adapter": "prompt_tuning"}}, "reward.adapter"),
            ("ppo", {"settings_": {"reward.adapter": "ia3", "ppo.adapter": "prompt_tuning"}}, "ppo.adapter"),
            ("ppo", {"settings_": {"kl_stop": "0.5"}}, "ppo.kl_stop"),
            ("best_of_n", {"settings_": {"k": "1"}}, "best_of_n.k"),
            ("best_of_n", {"settings_": {"best_of_n.temperature": "0"}}, "best_of_n.temperature"),
            ("best_of_n", {"settings_": {"best_of_n.launch": "ddp"}}, "best_of_n.launch"),
            ("best_of_n", {"reward_model": "reward-v9"}, "reward_model"),
            ("dpo", {"settings_": {"load_in_4bit": "true"}}, "dpo.load_in_4bit"),  # no GPU worker has reported
            ("reward", {"settings_": {"load_in_4bit": "true", "use_lora": "false"}}, "reward.load_in_4bit"),
            # TRL refuses exo_pair without label smoothing only in the worker; robust without it is sigmoid.
            ("dpo", {"settings_": {"loss_type": "exo_pair"}}, "dpo.label_smoothing"),
            ("dpo", {"settings_": {"loss_type": "robust"}}, "dpo.label_smoothing"),
            ("dpo", {"settings_": {"loss_type": "robust", "label_smoothing": "0.5"}}, "dpo.label_smoothing"),
            ("dpo", {"settings_": {"loss_type": "ipo", "label_smoothing": "0.1"}}, "dpo.label_smoothing"),
        ],
    )
    def test_refuses_bad_requests_naming_the_field_and_queues_nothing(
        self, pairs_project, policy, method, options, field
    ):
        with pytest.raises(ValidationError) as refused:
            launch(pairs_project, policy, method, **options)
        assert field in refused.value.message_dict, refused.value.message_dict
        assert not TrainingRound.objects.exists() and not DatasetSnapshot.objects.exists()

    def test_load_in_4bit_is_queued_only_while_a_gpu_worker_reports_in(self, pairs_project, policy):
        Worker.report("celery@gpu-1", queues=["gpu"], devices=[{"name": "H100", "total_memory": 80 * 1024**3}])
        training_round = launch(pairs_project, policy, "ppo", settings_={"load_in_4bit": "true"})
        assert training_round.config["reward"]["load_in_4bit"] and training_round.config["ppo"]["load_in_4bit"]
        Worker.gone("celery@gpu-1")
        with pytest.raises(ValidationError) as refused:
            relaunch(training_round)
        assert "no worker with one has reported in" in refused.value.message_dict["reward.load_in_4bit"][0]
        assert TrainingRound.objects.count() == 1

    def test_sampling_an_adapter_through_transformers_serve_is_refused_at_launch(self, pairs_project, policy):
        server = {"sample.server_url": "http://127.0.0.1:8000/v1", "sample.server_kind": "transformers"}
        with pytest.raises(ValidationError) as refused:
            launch(pairs_project, policy, "dpo", settings_=server)
        assert "the dpo stage trains an adapter" in refused.value.message_dict["sample.server_kind"][0]
        assert not TrainingRound.objects.exists()
        # A whole model trained (use_lora off) is servable, and so is any adapter through vLLM.
        assert launch(pairs_project, policy, "dpo", settings_={**server, "use_lora": "false"})
        assert launch(pairs_project, policy, "dpo", settings_={**server, "sample.server_kind": "vllm"})

    def test_best_of_n_trains_a_reward_model_or_scores_with_the_one_given(self, pairs_project, policy):
        planned = plan_round(pairs_project, method="best_of_n", base=policy, settings_={"k": "8", "max_steps": "3"})
        assert list(planned["config"]) == ["reward", "best_of_n", "sample"]
        assert planned["config"]["best_of_n"]["k"] == 8 and planned["config"]["best_of_n"]["max_steps"] == 3
        # max_new_tokens is a setting of both best_of_n and sample: unprefixed, it goes to both.
        both = plan_round(pairs_project, method="best_of_n", base=policy, settings_={"max_new_tokens": "16"})
        assert both["config"]["best_of_n"]["max_new_tokens"] == both["config"]["sample"]["max_new_tokens"] == 16
        reward = ModelVersion.register(project=pairs_project, kind="reward", base_model=policy, adapter_path="/r")
        given = plan_round(pairs_project, method="best_of_n", base=policy, reward_model="reward-v1")
        assert list(given["config"]) == ["best_of_n", "sample"] and given["reward_version"] == reward

    def test_without_a_base_it_takes_the_active_policy_or_says_there_is_none(self, pairs_project, policy, settings):
        settings.ARBITER_DEFAULT_BASE_MODEL = ""
        with pytest.raises(ValidationError, match="no active policy"):
            launch_round(pairs_project, method="dpo")
        active = ModelVersion.register(project=pairs_project, kind="policy", base_model=policy, adapter_path="/a")
        active.promote()
        training_round = launch_round(pairs_project, method="dpo", settings_=FAST)
        assert training_round.base_version == active and training_round.base_model == policy
        assert training_round.config["dpo"]["model_name_or_path"] == "/a"


def refusal(project, base, **options) -> str:
    """What launching from `base` answers; nothing may be queued."""
    before = TrainingRound.objects.count(), DatasetSnapshot.objects.count()
    with pytest.raises(ValidationError) as refused:
        launch_round(project, method="dpo", base=base, **options)
    assert (TrainingRound.objects.count(), DatasetSnapshot.objects.count()) == before
    return refused.value.message_dict["base"][0]


@pytest.mark.django_db
class TestBase:
    """What a round may start from: the project's versions, hub ids, folders under ARBITER_MODEL_ROOTS; nothing
    else, and a refusal that says the same whether or not the thing exists."""

    @pytest.fixture
    def root(self, tmp_path, settings):
        """An allowed model root holding one model folder; the artifacts root (tmp_path/artifacts) lies beside it."""
        write_model_files(tmp_path / "models" / "llama")
        settings.ARBITER_MODEL_ROOTS = [tmp_path / "models"]
        return tmp_path / "models"

    def test_paths_outside_the_roots_are_refused_alike_whether_they_exist_or_not(self, pairs_project, root):
        answers = {base: refusal(pairs_project, base) for base in
                   ["/etc/passwd", "/nonexistent/x", "/etc", f"{root}/../models-not", "~root", "~nosuchuser/model",
                    "./manage.py", "../x"]}  # fmt: skip
        assert len(set(answers.values())) == 1, answers
        assert "Not a base this server allows" in answers["/etc/passwd"]
        assert str(root) in answers["/etc/passwd"]  # where a lead may put models, as the operator said

    def test_another_projects_artifacts_are_refused_even_under_a_root(self, pairs_project, root, tmp_path, settings):
        settings.ARBITER_MODEL_ROOTS = [tmp_path]  # a root that holds the artifacts root too
        other = type(pairs_project).objects.create(name="Alpha", slug="alpha")
        adapter = settings.ARBITER_ARTIFACTS_ROOT / "alpha" / "round-1" / "dpo"
        adapter.mkdir(parents=True)
        ModelVersion.register(project=other, kind="policy", base_model="tiny/base", adapter_path=str(adapter))

        assert refusal(pairs_project, str(adapter)) == refusal(pairs_project, "/nonexistent/x")
        assert refusal(pairs_project, str(root / ".." / "artifacts" / "alpha")) == refusal(pairs_project, "/etc")
        # alpha's version by name is not this project's: the project's own registry says so
        assert refusal(pairs_project, "policy-v1") == "This project has no policy-v1 (its policies: the Models page)."

    def test_a_symlink_out_of_a_root_is_refused(self, pairs_project, root, tmp_path):
        (tmp_path / "outside").mkdir()
        (root / "escape").symlink_to(tmp_path / "outside")
        assert refusal(pairs_project, str(root / "escape")) == refusal(pairs_project, "/nonexistent/x")

    def test_a_folder_under_a_root_is_taken_by_its_real_path(self, pairs_project, root):
        (root / "current").symlink_to(root / "llama")
        training_round = launch_round(pairs_project, method="dpo", base=f"{root}/current/")
        assert training_round.base_model == str(root / "llama")
        assert training_round.config["dpo"]["model_name_or_path"] == str(root / "llama")
        # Under a root the operator opened to leads, a missing model is named.
        with pytest.raises(ValidationError, match="No model at"):
            launch_round(pairs_project, method="dpo", base=f"{root}/mistral")

    def test_a_folder_that_is_not_a_model_is_refused_naming_what_it_lacks(self, pairs_project, root):
        (root / "empty").mkdir()
        assert refusal(pairs_project, f"{root}/empty/") == (
            f"{root}/empty/ is not a model a round can load: it has no config.json; no weights (model.safetensors, "
            "pytorch_model.bin or a sharded index of either); no fast tokenizer (tokenizer.json, or vocab.json and "
            "merges.txt)."
        )
        llama = root / "llama"
        (llama / "model.safetensors").unlink()
        (llama / "model.safetensors.index.json").write_text("{}")  # sharded weights count
        (llama / "tokenizer.json").unlink()
        (llama / "vocab.json").write_text("{}")
        (llama / "merges.txt").write_text("")  # a byte-level BPE's slow files convert without sentencepiece
        assert launch_round(pairs_project, method="dpo", base=str(llama)).base_model == str(llama)
        (llama / "config.json").write_text("[]")
        assert refusal(pairs_project, str(llama)).endswith("it has no config.json.")

    def test_the_folder_make_tiny_model_wrote_is_refused_pointing_to_its_policy(self, pairs_project, tiny, policy):
        answer = refusal(pairs_project, str(tiny.root))
        assert answer.endswith(f"It holds models in policy/ and reward/: give {tiny.root}/policy, for instance.")
        assert launch_round(pairs_project, method="dpo", base=policy).base_model == policy  # the real files pass

    def test_an_adapter_is_refused_when_it_or_its_base_lacks_files(self, pairs_project, root, tmp_path):
        outside = tmp_path / "server-only" / "base"  # need not be under a root; its path stays hidden
        outside.mkdir(parents=True)
        adapter = root / "adapter"
        adapter.mkdir()
        (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(outside)}))
        answer = refusal(pairs_project, str(adapter))
        assert answer == (
            f"{adapter} is not a model a round can load: it has no adapter weights (adapter_model.safetensors or "
            "adapter_model.bin); no base model that loads (its base has no config.json; no weights (model.safetensors, "
            "pytorch_model.bin or a sharded index of either); no fast tokenizer (tokenizer.json, or vocab.json and "
            "merges.txt))."
        )
        assert "server-only" not in answer
        (adapter / "adapter_model.safetensors").write_bytes(b"")
        write_model_files(outside)
        assert launch_round(pairs_project, method="dpo", base=str(adapter)).base_model == str(adapter)
        (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "org/name"}))
        assert launch_round(pairs_project, method="dpo", base=str(adapter)).base_model == str(adapter)  # a hub id

    def test_hub_ids_are_taken_while_the_operator_allows_them(self, pairs_project, settings):
        assert launch_round(pairs_project, method="dpo", base="Qwen/Qwen2.5-0.5B-Instruct").base_model == (
            "Qwen/Qwen2.5-0.5B-Instruct"
        )
        for spelled_like_a_path in ["org/../etc", "./org/name", ".org/name", "org/name/sub", "-org/name", "org/.x"]:
            assert refusal(pairs_project, spelled_like_a_path).startswith("Not a base this server allows")
        settings.ARBITER_ALLOW_HUB_MODELS = False
        assert "hub id" not in refusal(pairs_project, "Qwen/Qwen2.5-0.5B-Instruct")

    def test_the_operators_command_line_may_name_any_path(self, pairs_project, settings, tmp_path):
        settings.ARBITER_ALLOW_HUB_MODELS = False
        outside = write_model_files(tmp_path / "outside")
        assert launch_round(pairs_project, method="dpo", base=outside, trusted=True).base_model == outside
        assert launch_round(pairs_project, method="dpo", base="org/name", trusted=True).base_model == "org/name"

    def test_relaunch_checks_the_base_again(self, pairs_project, root, settings):
        from_folder = launch_round(pairs_project, method="dpo", base=str(root / "llama"))
        version = ModelVersion.register(project=pairs_project, kind="policy", base_model=str(root / "llama"))
        from_version = launch_round(pairs_project, method="dpo", base="policy-v1")
        settings.ARBITER_DEFAULT_BASE_MODEL = "/srv/models/default"  # the operator's: trusted
        from_default = launch_round(pairs_project, method="sft")
        for training_round in (from_folder, from_version, from_default):
            training_round.request_cancel()
        settings.ARBITER_MODEL_ROOTS = []  # the operator closed the root since

        with pytest.raises(ValidationError) as refused:
            relaunch(from_folder)
        assert refused.value.message_dict["base"][0].startswith("Not a base this server allows")
        assert relaunch(from_version).base_version == version  # the project's own version, by reference
        assert relaunch(from_default).base_model == "/srv/models/default"
        assert TrainingRound.objects.count() == 5


@pytest.mark.django_db(transaction=True)
class TestRun:
    def test_a_ppo_round_trains_a_reward_model_then_the_policy_and_registers_both(self, pairs_project, policy, lead):
        training_round = launch(pairs_project, policy, "ppo", user=lead, settings_={"ppo.max_new_tokens": "8"})
        training_round = run_round(training_round.pk)

        assert training_round.status == "succeeded", training_round.error
        assert training_round.progress == 1.0 and training_round.finished_at is not None
        snapshot = training_round.snapshot
        assert snapshot.status == "ready" and snapshot.row_count == 12 and len(snapshot.sha256) == 64
        reward, policy_version = (
            ModelVersion.objects.get(kind="reward", training_round=training_round),
            ModelVersion.objects.get(kind="policy", training_round=training_round),
        )
        for version in (reward, policy_version):
            assert version.version == 1 and version.status == "candidate"
            assert version.snapshot_sha256 == snapshot.sha256 and version.base_model == policy
            assert version.adapter_path and len(version.code_version) == 40, version.code_version
        assert 0 <= reward.eval_report["accuracy"] <= 1 and reward.config["max_steps"] == 3
        # The eval prompts' 4 imported votes are held out of training and measure the reward model.
        assert reward.eval_report["human_eval_pairs"] == 4 and 0 <= reward.eval_report["human_eval_accuracy"] <= 1
        assert {"mean_reward", "kl"} <= set(policy_version.eval_report), policy_version.eval_report
        series = training_round.metric_series()
        assert any(name.startswith("reward/") for name in series) and "ppo/kl" in series, sorted(series)
        assert "ppo step 3/3" in training_round.log_tail

    def test_a_ppo_round_whose_kl_runs_away_succeeds_with_a_warning_and_the_policy_from_before(
        self, pairs_project, policy, client, lead
    ):
        runaway = {"ppo.kl_target": "1e-4", "ppo.kl_stop": "2", "ppo.kl_stop_steps": "2", "ppo.learning_rate": "5e-2",
                   "ppo.max_steps": "10", "ppo.max_new_tokens": "8"}  # fmt: skip
        training_round = run_round(launch(pairs_project, policy, "ppo", settings_=runaway).pk)

        assert training_round.status == "succeeded", training_round.error
        version = ModelVersion.objects.get(kind="policy", training_round=training_round)
        stopped_at, kept = version.eval_report["kl_stop_step"], version.eval_report["kept_step"]
        assert kept + 2 <= stopped_at < 10, version.eval_report  # stopped early, keeping a policy from before
        said = f"PPO stopped at step {stopped_at}"
        assert said in training_round.warning and f"after step {kept} " in training_round.warning
        assert max(step for step, _ in training_round.metric_series()["ppo/kl"]) == stopped_at
        client.force_login(lead)
        page = client.get(reverse("round_page", args=[pairs_project.slug, training_round.number])).content.decode()
        assert 'id="round-warning"' in page and said in page

    def test_a_best_of_n_round_trains_a_reward_model_then_sfts_on_its_best_samples(self, pairs_project, policy):
        training_round = run_round(launch(pairs_project, policy, "best_of_n", settings_={"k": "3"}).pk)

        assert training_round.status == "succeeded", training_round.error
        version = ModelVersion.objects.get(kind="policy", training_round=training_round)
        report = version.eval_report
        assert report["k"] == 3 and report["prompts"] == 9  # 12 train prompts, a quarter held out
        assert report["reward_gain"] == pytest.approx(report["mean_best_reward"] - report["mean_sample_reward"])
        assert report["reward_gain"] >= 0 and {"mean_reward", "kl"} <= set(report), report
        assert ModelVersion.objects.filter(kind="reward", training_round=training_round).exists()
        assert "best_of_n/loss" in training_round.metric_series()
        assert Response.objects.filter(model_version=version).exists()  # its samples reached the queue

    def test_a_round_from_a_lora_policy_reports_its_kl_to_that_policy_not_to_the_base_under_it(
        self, pairs_project, policy, tmp_path
    ):
        parent = save_adapter(policy, tmp_path / "policy-v1")  # random B: 0.08 nats per token from the base
        ModelVersion.register(project=pairs_project, kind="policy", base_model=policy, adapter_path=str(parent))
        slow = {"dpo.learning_rate": "1e-6"}  # three steps that barely move it from its parent
        training_round = run_round(launch(pairs_project, "policy-v1", "dpo", settings_=slow).pk)

        assert training_round.status == "succeeded", training_round.error
        version = ModelVersion.objects.get(kind="policy", training_round=training_round)
        assert version.parent.adapter_path == str(parent) and abs(version.eval_report["kl"]) < 1e-3, version.eval_report
        assert [p.name for p in Path(version.adapter_path).iterdir() if p.is_dir() and p.name == "ref"] == []

    @pytest.mark.parametrize("method", ["dpo", "sft", "reward"])
    def test_each_method_succeeds_and_registers_what_it_trained(self, pairs_project, policy, method):
        training_round = run_round(launch(pairs_project, policy, method).pk)
        assert training_round.status == "succeeded", training_round.error
        kinds = set(training_round.model_versions.values_list("kind", flat=True))
        assert kinds == ({"reward"} if method == "reward" else {"policy"})
        assert RoundMetric.objects.filter(training_round=training_round, stage=method).exists()

    @pytest.mark.parametrize(("method", "adapter"), [("dpo", "prompt_tuning"), ("ppo", "ia3")])
    def test_prompt_tuning_and_ia3_adapters_are_registered_and_sampled_like_lora(
        self, pairs_project, policy, method, adapter
    ):
        training_round = run_round(launch(pairs_project, policy, method, settings_={"adapter": adapter}).pk)

        assert training_round.status == "succeeded", training_round.error
        version = ModelVersion.objects.get(kind="policy", training_round=training_round)
        saved = json.loads((Path(version.adapter_path) / "adapter_config.json").read_text())
        assert saved["peft_type"] == {"prompt_tuning": "PROMPT_TUNING", "ia3": "IA3"}[adapter]
        assert "kl" in version.eval_report and version.config["adapter"] == adapter
        assert Response.objects.filter(model_version=version).exists()  # its samples reached the queue

    def test_a_second_delivery_does_not_run_the_round_again(self, pairs_project, policy):
        training_round = run_round(launch(pairs_project, policy, "reward").pk)
        metrics = RoundMetric.objects.count()
        again = run_round(training_round.pk)
        assert again.status == "succeeded" and RoundMetric.objects.count() == metrics
        assert ModelVersion.objects.count() == 1

    def test_an_empty_snapshot_fails_the_round_with_a_clear_error(self, project, policy):
        training_round = run_round(launch(project, policy, "dpo").pk)
        assert training_round.status == "failed" and "no rows" in training_round.error
        assert not ModelVersion.objects.exists()

    def test_cancel_stops_a_running_round_within_a_step(self, pairs_project, policy):
        training_round = launch(pairs_project, policy, "dpo", settings_={"max_steps": "40"})
        worker = threading.Thread(target=run_round, args=[training_round.pk])
        worker.start()
        deadline = time.monotonic() + 120
        while not RoundMetric.objects.filter(training_round=training_round).exists():
            assert time.monotonic() < deadline, "no step reported"
            time.sleep(0.05)
        training_round.request_cancel()
        asked_at = TrainingRound.objects.get(pk=training_round.pk).step
        worker.join(timeout=120)
        training_round.refresh_from_db()
        assert training_round.status == "cancelled"
        assert training_round.step <= asked_at + 1 < 40
        assert not ModelVersion.objects.exists()

    def test_a_queued_round_cancels_at_once(self, pairs_project, policy):
        training_round = launch(pairs_project, policy, "dpo")
        training_round.request_cancel()
        assert TrainingRound.objects.get(pk=training_round.pk).status == "cancelled"
        assert run_round(training_round.pk).status == "cancelled" and not RoundMetric.objects.exists()

    def test_relaunch_queues_the_same_request_as_a_new_round(self, pairs_project, policy, lead):
        first = launch(pairs_project, policy, "dpo", settings_={"beta": "0.3"})
        first.request_cancel()
        second = relaunch(first, user=lead)
        assert (second.number, second.status, second.config, second.filters) == (
            2,
            "queued",
            first.config,
            first.filters,
        )
        assert second.snapshot != first.snapshot and second.created_by == lead


@pytest.mark.django_db
class TestStale:
    def test_a_silent_running_round_fails_with_a_message_and_a_live_one_keeps_running(
        self, pairs_project, policy, settings
    ):
        silent, alive = launch(pairs_project, policy, "dpo"), launch(pairs_project, policy, "dpo")
        for training_round in (silent, alive):
            assert training_round.claim()
        long_ago = timezone.now() - settings.ARBITER_ROUND_HEARTBEAT_TIMEOUT - timedelta(seconds=1)
        TrainingRound.objects.filter(pk=silent.pk).update(heartbeat_at=long_ago)

        assert fail_stale_rounds() == 1
        silent.refresh_from_db(), alive.refresh_from_db()
        assert silent.status == "failed" and "stopped sending heartbeats" in silent.error
        assert alive.status == "running"
        assert not silent.beat(step=3)  # a worker that comes back finds its round failed, and stops


@pytest.mark.django_db(transaction=True)
def test_a_failed_rounds_error_names_the_problem_without_server_paths_or_a_traceback(pairs_project, base, caplog):
    queued = launch_round(pairs_project, method="dpo", base=base, settings_=FAST)
    # Broken after the launch checked it: transformers' error names the file ("… config file at '/…'").
    (Path(base) / "config.json").write_text("{")
    training_round = run_round(queued.pk)

    assert training_round.status == "failed"
    assert training_round.error.startswith("OSError: the worker could not read or write a model's files")
    for shown in (training_round.error, training_round.log_tail):
        assert "config.json" not in shown and "Traceback" not in shown and 'File "' not in shown, shown
    assert "Round" in training_round.log_tail and "failed (helpfulness round 1 (DPO))" in training_round.log_tail
    # The worker's own log keeps the whole story for the operator.
    [logged] = [record for record in caplog.records if record.exc_info]
    assert f"{base}/config.json" in str(logged.exc_info[1])


@pytest.mark.django_db
def test_errors_stored_before_lose_their_traceback_and_paths_in_the_migration(project):
    from django.apps import apps

    migration = import_module("training.migrations.0003_hide_worker_tracebacks")
    failed, cancelled = (launch_round(project, method="dpo", base="org/name") for _ in range(2))
    traceback = 'Traceback (most recent call last):\n  File "/app/training/rounds.py", line 9, in run_round\nOSError: …'
    logged = "10:00:00 INFO training.rounds: Stage dpo\n10:00:01 ERROR training.rounds: Round 1 failed"
    TrainingRound.objects.filter(pk=failed.pk).update(
        status="failed",
        error=f"OSError: the config file at '/srv/models/x/config.json' is not valid JSON.\n\n{traceback}",
        log_tail=f"{logged}\n{traceback}",
    )
    TrainingRound.objects.filter(pk=cancelled.pk).update(status="cancelled", log_tail="10:00:00 INFO x: a\nmore")

    migration.hide_tracebacks(apps, None)

    failed.refresh_from_db(), cancelled.refresh_from_db()
    assert failed.error == "OSError: the config file at '<path>' is not valid JSON."
    assert failed.log_tail == logged
    assert cancelled.log_tail == "10:00:00 INFO x: a\nmore"  # no traceback in its error: left as it was


class _FakeOutOfMemory(RuntimeError):
    pass


_FakeOutOfMemory.__name__ = "OutOfMemoryError"  # torch.OutOfMemoryError, without a GPU to run out of


@pytest.mark.parametrize(
    ("error", "shown"),
    [
        (
            ValueError("Can't find 'adapter_config.json' at '/srv/artifacts/alpha/round-1/dpo'\nCheck the path."),
            "ValueError: Can't find 'adapter_config.json' at '<path>' Check the path.",
        ),
        (ValueError("beta must be positive (~/x, ../y/z, ./w, org/name, 3/4)"), None),
        (_FakeOutOfMemory("CUDA out of memory. Tried to allocate 2.00 GiB"), "Out of memory: lower"),
        (OSError(errno.ENOSPC, "No space left on device", "/srv/artifacts/x"), "The worker's disk is full"),
        (KeyError("/srv/secret"), "KeyError: the worker failed; see the worker log for helpfulness round 1 (DPO)."),
    ],
)
@pytest.mark.django_db
def test_what_leads_see_of_a_workers_error(project, error, shown):
    training_round = launch_round(project, method="dpo", base="org/name")
    message = failure_message(error, training_round)
    if shown is None:
        assert message == "ValueError: beta must be positive (<path>, <path>, <path>, org/name, 3/4)"
    else:
        assert message.startswith(shown), message
    assert "/srv" not in message


class TestUnwrittenSnapshots:
    """A round that ends before writing its dataset snapshot ends the snapshot too: nothing else would."""

    def snapshot_of(self, training_round):
        return DatasetSnapshot.objects.get(pk=training_round.snapshot_id)

    def test_a_round_cancelled_while_queued_fails_its_snapshot_saying_why(self, pairs_project, policy):
        training_round = launch(pairs_project, policy, "dpo")
        training_round.request_cancel()
        snapshot = self.snapshot_of(training_round)
        assert snapshot.status == "failed" and snapshot.finished_at is not None
        assert snapshot.error == "Not written: training round 1 was cancelled before writing its data."

    def test_a_round_that_fails_before_its_snapshot_fails_it(self, pairs_project, policy, monkeypatch):
        def no_gpu(training_round):
            raise RuntimeError("CUDA driver missing")

        monkeypatch.setattr("training.rounds._run_stages", no_gpu)
        training_round = run_round(launch(pairs_project, policy, "dpo").pk)
        assert training_round.status == "failed" and training_round.error.startswith("RuntimeError: the worker failed")
        error = "Not written: training round 1 failed before writing its data."
        assert (self.snapshot_of(training_round).status, self.snapshot_of(training_round).error) == ("failed", error)

    def test_the_stale_round_reaper_fails_the_snapshots_of_rounds_that_ended_without_them(
        self, pairs_project, policy, settings
    ):
        silent, cancelled, queued = (launch(pairs_project, policy, "dpo") for _ in range(3))
        silent.claim()  # its worker died before it wrote the snapshot
        long_ago = timezone.now() - settings.ARBITER_ROUND_HEARTBEAT_TIMEOUT - timedelta(seconds=1)
        TrainingRound.objects.filter(pk=silent.pk).update(heartbeat_at=long_ago)
        TrainingRound.objects.filter(pk=cancelled.pk).update(status="cancelled")  # as before rounds ended them

        assert fail_stale_rounds() == 1
        assert self.snapshot_of(silent).status == self.snapshot_of(cancelled).status == "failed"
        assert "training round 1 failed" in self.snapshot_of(silent).error
        assert "training round 2 was cancelled" in self.snapshot_of(cancelled).error
        assert self.snapshot_of(queued).status == "pending"

    def test_a_snapshot_already_written_is_left_as_it_is(self, pairs_project, policy):
        training_round = launch(pairs_project, policy, "dpo")
        assert training_round.claim()
        run_snapshot(training_round.snapshot)
        training_round.finish(TrainingRound.Status.CANCELLED)
        assert self.snapshot_of(training_round).status == "ready"


@pytest.mark.django_db
def test_a_nan_metric_is_kept_out_of_the_series_and_named_in_the_log(pairs_project, policy):
    from training.rounds import _LogTail, _progress_callback

    training_round = launch(pairs_project, policy, "dpo")
    training_round.claim()
    log = _LogTail()
    logging.getLogger("training").addHandler(log)
    try:
        stop = _progress_callback(training_round, "dpo", 0, 1)(1, 4, {"loss": float("nan"), "accuracy": 0.5})
    finally:
        logging.getLogger("training").removeHandler(log)
    assert stop is False
    assert training_round.metric_series() == {"dpo/accuracy": [(1, 0.5)]}
    assert "loss nan" in log.text()


@pytest.mark.django_db(transaction=True)
class TestSamplesBackIntoTheQueue:
    def test_a_dpo_round_queues_eval_pairs_against_what_was_there_and_train_pairs_among_its_samples(
        self, pairs_project, policy
    ):
        training_round = run_round(launch(pairs_project, policy, "dpo").pk)
        assert training_round.status == "succeeded", training_round.error
        assert training_round.snapshot.row_count == 12  # the train split only: eval prompts are held out
        version = ModelVersion.objects.get(kind="policy")
        new = Response.objects.filter(model_version=version)
        assert new.filter(prompt__split="eval").count() == 4 and new.filter(prompt__split="train").count() == 24
        assert all(r.generation_params["max_new_tokens"] == 8 and r.source == "model" for r in new)

        tasks = Task.objects.filter(round_number=1)
        eval_tasks, train_tasks = tasks.filter(prompt__split="eval"), tasks.filter(prompt__split="train")
        assert eval_tasks.count() == 4 and set(eval_tasks.values_list("priority", flat=True)) == {10}
        for task in eval_tasks:
            sources = [(r.model_version_id, r.source) for r in task.responses.order_by("task_responses__position")]
            assert sources == [(version.pk, "model"), (None, "imported")]  # round one: against the imported answer
        assert train_tasks.count() == 12 and set(train_tasks.values_list("kind", flat=True)) == {"pairwise"}
        for task in train_tasks:
            assert set(task.responses.values_list("model_version", flat=True)) == {version.pk}
        pairs_project.refresh_from_db()
        assert pairs_project.task_count == Task.objects.count()  # the counters include the new tasks
        assert "New samples in the queue: 28 responses, 16 tasks" in training_round.log_tail

    def test_uncertainty_pairs_the_closest_rewards_first_and_three_samples_also_make_a_ranking(
        self, pairs_project, policy, lead
    ):
        pairs_project.pair_selection, pairs_project.samples_per_prompt = "uncertainty", 3
        pairs_project.save()
        training_round = run_round(launch(pairs_project, policy, "ppo", settings_={"ppo.max_new_tokens": "8"}).pk)
        assert training_round.status == "succeeded", training_round.error
        pairwise = Task.objects.filter(round_number=1, prompt__split="train", kind="pairwise")
        assert set(pairwise.values_list("priority", flat=True)) == {0}  # below the eval tasks
        assert Task.objects.filter(round_number=1, kind="ranking").count() == 12

        from training.engine.generate import score

        reward = ModelVersion.objects.get(kind="reward")
        smallest_gaps = []
        for task in pairwise:
            chosen = set(task.responses.values_list("pk", flat=True))
            samples = list(Response.objects.filter(prompt=task.prompt, model_version__kind="policy"))
            rewards = score(reward.path, [[*task.prompt.messages, {"role": "assistant", "content": r.content}]
                                          for r in samples]).tolist()  # fmt: skip
            by_reward = sorted(zip(rewards, [r.pk for r in samples], strict=True))
            gaps = [(b[0] - a[0], {a[1], b[1]}) for a, b in zip(by_reward, by_reward[1:], strict=False)]
            assert chosen == min(gaps, key=lambda gap: gap[0])[1]
            smallest_gaps.append((min(gaps, key=lambda gap: gap[0])[0], task.pk))
        # Most uncertain first: the queue serves tasks of one priority in id order.
        queue = [task.pk for task in pairs_project.available_tasks(lead, timezone.now()) if task.kind == "pairwise"]
        train_queue = [pk for pk in queue if pk in {pk for _, pk in smallest_gaps}]
        assert train_queue == [pk for _, pk in sorted(smallest_gaps)]

    def test_a_sample_round_samples_a_registered_version_on_demand(self, pairs_project, policy):
        run_round(launch(pairs_project, policy, "dpo").pk)
        with pytest.raises(ValidationError, match="registered policy version"):
            launch_round(pairs_project, method="sample", base=policy)
        second = run_round(launch_round(pairs_project, method="sample", base="policy-v1").pk)
        assert second.status == "succeeded", second.error
        assert second.snapshot is None and list(second.config) == ["sample"]
        assert Task.objects.filter(round_number=2).count() == 16
        assert not ModelVersion.objects.filter(training_round=second).exists()
