"""benchmarks/loop_bench.py on a few prompts keeps the loop benchmark from rotting: a ratings campaign (KTO) trains on
ratings alone and is measured on the same eval pairs as a pairwise one (DPO). Its own SQLite database, in a
subprocess, so the test database is not touched."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "loop_bench.py"
SMALL = ["--rounds", "1", "--eval-prompts", "6", "--train-prompts", "12", "--sample-prompts", "12"]
SMALL += ["--measure-samples", "2", "--max-new-tokens", "16", "--set", "dpo:sample.max_new_tokens=16"]
SMALL += ["--set", "kto:sample.max_new_tokens=16"]


@pytest.mark.slow
def test_a_ratings_campaign_trains_on_ratings_alone_and_is_measured_on_the_eval_pairs(tmp_path):
    run = subprocess.run(
        [sys.executable, str(SCRIPT), "--methods", "kto,dpo", *SMALL, "--output", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
    )

    assert run.returncode == 0, run.stderr[-5000:]
    results = json.loads(next(tmp_path.glob("loop-*/results.json")).read_text())
    kto, dpo = ([row for row in results["rows"] if row["campaign"] == name] for name in ("kto", "dpo"))
    assert [row["round"] for row in kto] == [row["round"] for row in dpo] == [0, 1]
    assert kto[0]["bots"]["answered"] == {"rating": 36}  # 12 train prompts, one sample each, 3 ratings each
    assert kto[1]["snapshot_kind"] == "unpaired" and kto[1]["trained_rows"] == 12
    assert set(kto[1]["bots"]["answered"]) == {"rating", "pairwise"}  # the eval pairs, voted for the yardstick
    assert kto[1]["win_rate"]["n"] > 0 and dpo[1]["win_rate"]["n"] > 0
    assert dpo[1]["snapshot_kind"] == "pairs" and "rating" not in dpo[1]["bots"]["answered"]
    for row in kto[1:] + dpo[1:]:
        assert row["kl_demo"] is not None and row["wall_s"] > 0 and row.get("rm_correlation") is None
    table = run.stdout.splitlines()[-4:]
    assert [line.split(" | ")[:3] for line in table] == [
        ["| KTO", "ratings", "0"], ["| KTO", "ratings", "1"], ["| DPO", "pairwise", "0"], ["| DPO", "pairwise", "1"],
    ]  # fmt: skip
