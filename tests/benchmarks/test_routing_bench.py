"""benchmarks/routing_bench.py on a small pool keeps the routing benchmark from rotting: the judge labels the whole
pool and routing leaves only what it is unsure of (and the audit share) to people, the votes=judge export is the
judge's answers, and the equal-accuracy figures read the human-only curve as it says. Its own SQLite database, in a
subprocess, so the test database is not touched."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
SCRIPT = BENCHMARKS / "routing_bench.py"
SMALL = ["--seeds", "1", "--pool", "40", "--budgets", "10,40", "--hybrid-budgets", "0,10", "--accuracies", "0.75"]
SMALL += ["--held-out", "20", "--users", "2", "--bootstrap", "20"]


def curve_votes():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        from routing_bench import curve_votes
    finally:
        sys.path.remove(str(BENCHMARKS))
    return curve_votes


def test_equal_accuracy_votes_interpolate_the_human_curve_and_are_infinite_past_it():
    votes = curve_votes()
    curve = [(0.0, 0.5), (50.0, 0.7), (100.0, 0.8), (200.0, 0.8), (400.0, 0.9)]

    assert votes(curve, 0.6) == pytest.approx(25.0)
    assert votes(curve, 0.75) == pytest.approx(75.0)
    assert votes(curve, 0.8) == 100.0  # the first budget that reaches it, not the flat stretch after
    assert votes(curve, 0.85) == pytest.approx(300.0)
    assert votes(curve, 0.4) == 0.0
    assert math.isinf(votes(curve, 0.95))


@pytest.mark.slow
def test_a_small_run_routes_the_pool_and_trains_on_each_kind_of_votes(tmp_path):
    run = subprocess.run(
        [sys.executable, str(SCRIPT), *SMALL, "--output", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
    )

    assert run.returncode == 0, run.stderr[-5000:]
    results = json.loads(next(tmp_path.glob("routing-*/results.json")).read_text())
    (seed,) = results["seeds"]
    assert [p["human_votes"] for p in seed["human"]] == [10, 40]
    assert {p["votes"] for p in seed["human"]} == {"human"}
    judged = seed["hybrid"]["0.75"]
    assert judged["judge"]["answered"] == 40 and sum(judged["routed"].values()) == 40
    left_to_people = judged["routed"].get("audit", 0) + judged["routed"].get("people_first", 0)
    alone, beside = judged["points"]
    # No human vote yet: the export is the judge's answer on every task (the pool has no ties), right where it was.
    assert (alone["human_votes"], alone["votes"], alone["pairs"]) == (0, "judge", 40)
    assert alone["rule_agrees"] == judged["judge"]["right"]
    assert beside["votes"] == "both" and beside["human_votes"] == min(10, left_to_people)
    for point in [*seed["human"], alone, beside]:
        assert len(point["correct"]) == 20 and point["filters"]["votes"] == point["votes"]
    table = run.stdout.splitlines()[-6:]
    assert table[0].startswith("| Labelling |")
    assert [line.split(" | ")[:3] for line in table[2:]] == [
        ["| human only", "—", "10"], ["| human only", "—", "40"],
        ["| hybrid, votes=judge", "75 %", "0"], ["| hybrid, votes=both", "75 %", str(beside["human_votes"])],
    ]  # fmt: skip
