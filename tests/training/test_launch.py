"""Stages under `accelerate launch` (training/engine/launcher.py): two CPU processes train and save what one does,
a stop request and a failure reach across, a killed parent leaves no process, and the presets load."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from accelerate.commands.config.config_args import load_config_from_file
from django.core.exceptions import ValidationError
from safetensors.torch import load_file

from tests.training.conftest import marker_pairs, marker_unpaired, sft_rows, write_jsonl
from tests.training.conftest import settings as stage_settings
from tests.training.test_rounds import launch, pairs_project  # noqa: F401 (a fixture)
from training.engine.__main__ import STAGES
from training.engine.config import LAUNCH_MODES, DPOConfig, OnlineConfig, PPOConfig, SFTConfig
from training.engine.launcher import ROOT, launch_command, preset, run_launched
from training.models import RoundMetric, Worker
from training.rounds import _launch_machines, build_config, check_memory, run_round, stage_configs

# Two processes of 4 make the global batch of one process of 8; no dropout, so both see the same arithmetic.
TWO = {"launch": "ddp", "num_processes": 2, "per_device_batch_size": 4, "lora_dropout": 0.0, "max_steps": 3}
# The stages that train against a reward model; RLOO and GRPO: one group of 4 responses per process.
ONLINE = {"ppo": {}, "rloo": {"gradient_accumulation_steps": 1}, "grpo": {"gradient_accumulation_steps": 1}}


@pytest.fixture(autouse=True)
def _child_env(monkeypatch):
    # The children are the heavy part on a shared CPU: one thread each, and no hub.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def stage_run(stage, tiny, tmp_path, **overrides):
    """(config, data file, reward model) of a 3-step run of the stage on the tiny models."""
    model = tiny.reward if stage == "reward" else tiny.policy
    extra = {"max_new_tokens": 8, **ONLINE[stage]} if stage in ONLINE else {}
    config = stage_settings(STAGES[stage][0], model, **{**TWO, **extra, **overrides})
    rows = {"sft": sft_rows, "kto": marker_unpaired}.get(stage, marker_pairs)(32)
    data = write_jsonl(tmp_path / f"{stage}.jsonl", rows)
    return config, str(data), str(tiny.reward) if stage in ONLINE else ""


def weights(folder):
    return load_file(Path(folder) / "adapter_model.safetensors")


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["reward", "dpo", "kto", "sft", "ppo", "rloo", "grpo"])
def test_two_processes_train_and_save_what_one_process_does(stage, tiny, tmp_path):
    config, data, reward_model = stage_run(stage, tiny, tmp_path)
    seen = []

    two = run_launched(stage, config, data, str(tmp_path / "two"), lambda *step: seen.append(step) and False,
                       reward_model=reward_model)  # fmt: skip

    one_config = stage_settings(type(config), config.model_name_or_path, **{**TWO, **_stage_extra(config)})
    one_config.launch, one_config.num_processes, one_config.per_device_batch_size = "single", 0, 8
    args = (one_config, data, reward_model) if stage in ONLINE else (one_config, data)
    one = STAGES[stage][1](*args, str(tmp_path / "one"))
    assert (two.steps, two.stopped, one.steps) == (3, False, 3)
    assert [(step, total) for step, total, _ in seen] == [(1, 3), (2, 3), (3, 3)]
    assert all(metrics for _, _, metrics in seen)  # every step's metrics reached the callback
    assert two.eval_report.keys() == one.eval_report.keys()
    assert sorted(os.listdir(tmp_path / "two")) == sorted(os.listdir(tmp_path / "one"))
    trained, alone = weights(tmp_path / "two"), weights(tmp_path / "one")
    assert any(name.endswith("lora_B.weight") and tensor.abs().sum() > 0 for name, tensor in trained.items())
    if stage not in ONLINE:  # the online stages sample in each process: the same global batch, other samples
        for name, tensor in trained.items():
            torch.testing.assert_close(tensor, alone[name], rtol=1e-3, atol=1e-4, msg=name)


def _stage_extra(config):
    if isinstance(config, OnlineConfig):
        return {"max_new_tokens": config.max_new_tokens, "gradient_accumulation_steps": 1}
    return {"max_new_tokens": config.max_new_tokens} if isinstance(config, PPOConfig) else {}


@pytest.mark.slow
def test_a_stop_request_stops_every_process_after_the_step_with_its_checkpoint(tiny, tmp_path):
    config, data, _ = stage_run("sft", tiny, tmp_path, max_steps=50)

    result = run_launched("sft", config, data, str(tmp_path / "out"), lambda step, total, metrics: step >= 1)

    assert result.stopped and 1 <= result.steps < 50
    assert (tmp_path / "out" / f"checkpoint-{result.steps}").is_dir()
    assert (tmp_path / "out" / "adapter_model.safetensors").is_file()


WRAPPER = """
import sys
from training.engine.config import SFTConfig
from training.engine.launcher import run_launched
config = SFTConfig.from_dict(dict(arg.split("=", 1) for arg in sys.argv[3:]))
def progress(step, total, metrics):
    print("step", step, flush=True)
    return False
run_launched("sft", config, sys.argv[1], sys.argv[2], progress)
"""


@pytest.mark.slow
def test_a_parent_killed_while_the_ranks_load_leaves_no_process_behind(tiny, tmp_path):
    config, data, _ = stage_run("sft", tiny, tmp_path, max_steps=100_000)
    out = str(tmp_path / "killed")
    given = [f"{key}={value}" for key, value in config.to_dict().items() if value is not None]
    parent = subprocess.Popen([sys.executable, "-c", WRAPPER, data, out, *given], cwd=ROOT)
    deadline = time.monotonic() + 60
    while len(processes_naming(out)) < 4 and time.monotonic() < deadline:  # the parent, the launcher, two ranks
        time.sleep(0.05)
    assert len(processes_naming(out)) == 4

    # Silent while they load, the ranks would wait for the launcher's rendezvous for ever.
    parent.kill()
    parent.wait()

    deadline = time.monotonic() + 30
    while processes_naming(out) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert processes_naming(out) == []


def processes_naming(text):
    """The live processes whose command line holds text (zombies excluded)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if text in cmdline and state != "Z":
            found.append(int(pid))
    return found


def test_a_failing_stage_raises_its_own_error(tiny, tmp_path):
    config, _, _ = stage_run("dpo", tiny, tmp_path, num_processes=1)
    data = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "Hi", "chosen": "Hello"}])

    with pytest.raises(ValueError, match=r"missing column\(s\) rejected"):
        run_launched("dpo", config, str(data), str(tmp_path / "out"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for workers without CUDA")
def test_sharded_modes_are_refused_on_a_worker_without_gpus(tmp_path):
    for launch_mode in ("zero2", "zero3", "fsdp2"):
        with pytest.raises(ValueError, match=f"launch: {launch_mode} needs CUDA GPUs"):
            run_launched("dpo", DPOConfig(launch=launch_mode), "data.jsonl", str(tmp_path))


def test_a_bad_launch_setting_is_refused_naming_the_field():
    with pytest.raises(ValidationError) as refused:
        build_config(["sft"], base_model="m", policy_path="m", settings_={"launch": "zero9"})
    assert "launch: must be one of single, ddp, zero2, zero3, fsdp2" in refused.value.message_dict["sft.launch"][0]
    with pytest.raises(ValueError, match="num_processes: needs a launch other than single"):
        SFTConfig.from_dict({"num_processes": "2"})


def test_every_preset_loads_as_its_mode():
    kinds = {"ddp": "MULTI_GPU", "zero2": "DEEPSPEED", "zero3": "DEEPSPEED", "fsdp2": "FSDP"}
    assert set(kinds) == set(LAUNCH_MODES) - {"single"}
    for mode, kind in kinds.items():
        loaded = load_config_from_file(str(preset(mode)))
        assert loaded.distributed_type == kind, mode
    assert load_config_from_file(str(preset("zero3"))).deepspeed_config["zero_stage"] == 3
    assert load_config_from_file(str(preset("fsdp2"))).fsdp_config["fsdp_version"] == 2


@pytest.mark.slow
@pytest.mark.django_db
def test_a_round_with_a_launched_stage_reports_each_step_and_registers_it(pairs_project, policy):  # noqa: F811
    queued = launch(pairs_project, policy, "reward", settings_={"launch": "ddp", "num_processes": "2"})

    training_round = run_round(queued.pk)

    assert training_round.status == "succeeded", training_round.error
    assert list(RoundMetric.objects.values_list("step", flat=True)) == [1, 2, 3]
    assert training_round.model_versions.get().kind == "reward"


@pytest.mark.django_db
def test_sharded_modes_are_refused_at_launch_until_a_gpu_worker_reports(pairs_project, policy):  # noqa: F811
    Worker.report("celery@cpu", queues=["gpu"], devices=[])  # a CPU-only worker is no GPU
    with pytest.raises(ValidationError) as refused:
        launch(pairs_project, policy, "dpo", settings_={"dpo.launch": "fsdp2"})
    assert "no worker with one has reported in" in refused.value.message_dict["dpo.launch"][0]
    Worker.report("celery@gpu", queues=["gpu"], devices=[{"name": "H200", "total_memory": 141 * 2**30}])
    assert launch(pairs_project, policy, "dpo", settings_={"dpo.launch": "fsdp2"}).config["dpo"]["launch"] == "fsdp2"


@pytest.mark.django_db
def test_zero3_and_fsdp2_split_the_estimate_over_the_workers_gpus(pairs_project, policy):  # noqa: F811
    gpu = {"name": "H200", "total_memory": 141 * 2**30}
    Worker.report("celery@gpu", queues=["gpu"], devices=[gpu] * 4)
    full = {"use_lora": "false"}
    alone = check_memory(plan(pairs_project, policy, {**full}), None).estimate
    for mode in ("zero3", "fsdp2"):
        split = check_memory(plan(pairs_project, policy, {**full, "launch": mode}), None).estimate
        assert split.weights == alone.weights // 4 and split.trainable == alone.trainable // 4, mode
        assert split.activations == alone.activations, mode
    two = check_memory(plan(pairs_project, policy, {**full, "launch": "zero3", "num_processes": "2"}), None).estimate
    assert two.weights == alone.weights // 2
    ddp = check_memory(plan(pairs_project, policy, {**full, "launch": "ddp"}), None).estimate
    assert ddp.weights == alone.weights  # data parallel: a whole copy per GPU


def plan(project, policy, values):  # noqa: F811
    """The dpo stage's config of a round as launched with these settings, not queued."""
    return {"dpo": {**stage_configs()["dpo"]().to_dict(), "model_name_or_path": policy, **values}}


def test_deepspeed_stages_span_the_configured_machines_and_the_others_stay_on_one(settings):
    settings.ARBITER_LAUNCH_MACHINES = 3
    settings.ARBITER_LAUNCH_HOSTFILE, settings.ARBITER_LAUNCH_MAIN_ADDRESS = "/etc/arbiter/hosts", "10.0.0.1:29501"
    config = DPOConfig(model_name_or_path="m", launch="zero3", num_processes=8)

    command = launch_command("dpo", config, "c.json", "d.jsonl", "out", num_processes=8,
                             machines=_launch_machines("zero3"))  # fmt: skip

    assert command[command.index("--num_processes") + 1] == "24"  # accelerate counts every machine's processes
    assert command[command.index("--deepspeed_hostfile") + 1] == "/etc/arbiter/hosts"
    assert command.count("--main_process_port") == 1 and "10.0.0.1" in command
    assert _launch_machines("ddp") == [] and _launch_machines("fsdp2") == []
