"""`python -m training.engine <stage>`: settings from --config and --set, a progress line per step, JSON at the end."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.training.conftest import marker_pairs, write_jsonl
from training.engine.__main__ import main

ROOT = Path(__file__).resolve().parents[2]


def test_runs_a_stage_and_prints_progress_and_the_result(tiny, tmp_path):
    data = write_jsonl(tmp_path / "pairs.jsonl", marker_pairs(16))
    (tmp_path / "rm.json").write_text(json.dumps({"max_steps": 99, "per_device_batch_size": 4, "lora_r": 4}))

    run = subprocess.run(
        [sys.executable, "-m", "training.engine", "reward", "--data", str(data), "--out", str(tmp_path / "rm")]
        + ["--config", str(tmp_path / "rm.json"), "--set", f"model_name_or_path={tiny.reward}"]
        + ["--set", "max_steps=3", "--set", "logging_steps=2", "--set", "max_length=128"],
        cwd=ROOT,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0] == "step 1/3"
    assert lines[1].startswith("step 2/3 loss=")
    assert lines[2] == "step 3/3"
    result = json.loads(lines[-1])
    assert (result["steps"], result["stopped"], result["output_dir"]) == (3, False, str(tmp_path / "rm"))
    assert 0 <= result["eval_report"]["accuracy"] <= 1
    assert (tmp_path / "rm" / "adapter_model.safetensors").is_file()


def test_refuses_a_bad_setting_naming_it(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit:
        main(["dpo", "--data", "x.jsonl", "--out", str(tmp_path), "--set", "beta=-1"])

    assert exit.value.code == 2
    assert "beta: must be > 0, got -1.0" in capsys.readouterr().err


def test_best_of_n_runs_from_the_command_line_and_needs_a_reward_model(tiny, tmp_path, capsys):
    data = write_jsonl(tmp_path / "pairs.jsonl", marker_pairs(8))
    out = tmp_path / "bon"
    common = ["best_of_n", "--prompts", str(data), "--out", str(out), "--set", f"model_name_or_path={tiny.policy}"]
    with pytest.raises(SystemExit):
        main(common)
    assert "--reward-model: required by ppo, rloo, grpo, best_of_n" in capsys.readouterr().err

    settings = ["k=2", "max_new_tokens=4", "max_length=128", "max_steps=2", "lora_r=4", "eval_fraction=0"]
    assert main([*common, "--reward-model", str(tiny.reward), *(arg for s in settings for arg in ("--set", s))]) == 0
    result = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert result["steps"] == 2 and result["eval_report"]["k"] == 2 and result["eval_report"]["reward_gain"] >= 0
