"""benchmarks/gpu_check.py: its --smoke run on the CPU keeps the GPU check from rotting between GPU loans; the full
check runs under `-m gpu` on a CUDA machine. No database."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_check.py"
QWEN = Path(__file__).resolve().parents[3] / "shared" / "data" / "tokenizers" / "qwen2.5-instruct"

pytestmark = pytest.mark.skipif(not QWEN.is_dir(), reason=f"{QWEN} is absent: the real Qwen2.5 files are shared data")


def run_check(tmp_path, *options: str, timeout: int) -> tuple[subprocess.CompletedProcess, dict]:
    output = tmp_path / "gpu_check.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), *options, "--output", str(output)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert output.is_file(), proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc, json.loads(output.read_text())


@pytest.mark.slow
def test_smoke_runs_every_stage_against_the_bare_loop_and_samples(tmp_path):
    proc, report = run_check(tmp_path, "--smoke", "--steps", "3", timeout=900)

    assert proc.returncode == 0, proc.stderr[-5000:]
    assert [(r["variant"], r["stage"]) for r in report["stages"]] == [
        ("float32 LoRA", stage) for stage in ("reward", "dpo", "sft", "ppo", "rloo", "grpo")
    ]
    for row in report["stages"]:
        assert len(row["step_s"]) == 2 and row["mean_step_s"] > 0 and row["peak_mib"] > 100  # torch alone is more
    compared = {r["stage"]: r["bare"] for r in report["stages"] if "bare" in r}
    assert set(compared) == {"reward", "dpo"}
    assert all(c["ratio"] == pytest.approx(c["ours_s"] / c["bare_s"]) for c in compared.values())
    assert report["passed"] == all(c["ratio"] <= report["target"] for c in compared.values())
    assert report["sampling"]["engine_tokens_per_s"] > 0
    assert report["sampling"]["vllm"] in ("installed", "not installed")
    assert "| float32 LoRA | dpo |" in proc.stdout and ("PASS" in proc.stdout or "FAIL" in proc.stdout)


@pytest.mark.gpu
def test_full_check_on_a_gpu_meets_the_target(tmp_path):
    proc, report = run_check(tmp_path, timeout=600)

    print(proc.stdout)
    assert {r["variant"] for r in report["stages"]} == {"bfloat16 LoRA", "QLoRA (4-bit)"}
    assert all(r["peak_kind"] == "cuda max_memory_allocated" for r in report["stages"])
    assert report["passed"] and proc.returncode == 0, proc.stdout[-3000:]
