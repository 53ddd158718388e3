"""Judges: how many human votes hybrid labelling (routing) saves at equal reward-model held-out accuracy.

    .venv/bin/python benchmarks/routing_bench.py                      # the BENCHMARKS.md run (23 min on 2 busy CPUs)
    .venv/bin/python benchmarks/routing_bench.py --seeds 1 --pool 120 --budgets 40,120 --hybrid-budgets 0,40
                                                                       # a quick look

A pool of `--pool` pairwise tasks, each a demo question with two answers that differ in how many "Thanks." they
carry (benchmarks/aggregation_bench.py's pairs: 0, 1 or 2, never equal), and simulated annotators (annotate/
simulation.py: bots on the real HTTP API, served in-process) answering by the hidden rule `word:thanks` with
`--noise`. Overlap 1: a human vote labels a task. Per seed, the same pool (drawn from the seed) is labelled two ways:

- **human only**: a project without a judge; the bots answer `--budgets` votes in turn (nested: the 200-vote
  point is the 100-vote one plus 100 more votes), and after each step a reward round (training/rounds.py, method
  reward, votes=human) trains a reward model on the export.
- **hybrid**, once per `--accuracies`: a project with routing on and a simulated judge of that accuracy
  (annotate.simulation.simulate_judge: calibrated confidence, position-inconsistent on `--inconsistency` of
  tasks) as its judge. The judge answers the whole pool first, through annotate.judges.record, so routing decides
  each task as it would for a real judge: confident and consistent ones take the judge's label but for an audit
  share (`--audit-share`) that stays open for people, the others go to people first. Then the bots answer
  `--hybrid-budgets` votes in turn (fewer where the queue runs dry: they answer only what routing left open), and
  after each step a reward round trains on the export with votes=both (judge votes weighted by the judge's measured
  agreement with people, annotate/votes.py); at 0 human votes, votes=judge (there is no agreement to measure yet).

Every reward model starts from the demo policy with a fresh score head, fully fine-tuned (`--epochs` at 1e-3,
batch 8) as the loop benchmark's reward stage, and is scored on `--held-out` other pairs built the same way and
labelled by the rule itself (a tie in score counts half). The human-only points, with (0 votes, 50 %) for a model
that has seen nothing, make a curve of accuracy against human votes (the seeds' mean at each budget, made
non-decreasing, linear between points); a hybrid point's **equal-accuracy human votes** are where that curve
reaches its accuracy, and the **votes saved** are those less the hybrid's own human votes ("> N" where human-only
never got there within the pool). Intervals: 95 % percentile bootstrap (`--bootstrap` draws) over the seeds and the
held-out pairs together (each draw resamples both and recomputes every curve), so they hold the training's variation
between seeds and the held-out set's.

Everything lands in benchmarks/output/routing-<time>/: the SQLite database, the reward models, a JSON of every
model's per-pair results; the last lines printed are a Markdown table for BENCHMARKS.md.
"""

import argparse
import json
import math
import random
import sys
import time
import warnings
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

from _machine import Meter, busy_percent, code_version, set_up_app
from aggregation_bench import RULE, answer_pair

REPO_ROOT = Path(__file__).resolve().parent.parent
OUTPUT = REPO_ROOT / "benchmarks" / "output"
Pair = tuple[list[dict[str, str]], str, str, int]  # messages, answer a, answer b, which the rule prefers (0/1)


def ints(text: str) -> list[int]:
    return sorted({int(x) for x in text.split(",")})


def floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",")]


# Set-up -----------------------------------------------------------------------------------------------------------


def build_project(slug: str, pool: list[Pair], demo: Path, **fields: Any) -> Any:
    """A pairwise project, overlap 1, with a task per pool pair and the demo policy as policy v1 (the rounds' base)."""
    from annotate.models import Project, Prompt, Response, Task, TaskResponse
    from models_registry.models import ModelVersion

    project = Project.objects.create(
        name=slug, slug=slug, task_kinds=["pairwise"], overlap=1, max_fast_share=1.0, **fields
    )
    for n, (messages, a, b, _) in enumerate(pool):
        prompt = Prompt.objects.create(project=project, external_id=f"q{n}", messages=messages)
        task = Task.objects.create(project=project, prompt=prompt, kind="pairwise", required_annotations=1)
        for position, text in enumerate((a, b)):
            response = Response.objects.create(prompt=prompt, content=text)
            TaskResponse.objects.create(task=task, response=response, position=position)
    ModelVersion.register(project=project, kind="policy", base_model=str(demo)).promote()
    return project


def human_votes(project: Any) -> int:
    from annotate.models import Annotation

    return Annotation.objects.filter(task__project=project, source=Annotation.Source.HUMAN).count()


def answer_up_to(project: Any, budget: int, args: argparse.Namespace, seed: int) -> dict[str, Any]:
    """The bots answer until the project has `budget` human votes (or its queue is empty for them)."""
    from annotate.simulation import simulate_annotators

    need = budget - human_votes(project)
    if need <= 0:
        return {"answered": 0, "seconds": 0.0}
    users = min(args.users, need)
    # per_user caps each bot; the last few votes go to one bot, so the budget is met exactly.
    result = simulate_annotators(
        project=project, users=users, rule=RULE, noise=args.noise, per_user=need // users, seed=seed
    )
    if result.tally.errors:
        sys.exit("the bots failed:\n" + "\n".join(result.summary()))
    if rest := budget - human_votes(project):
        extra = simulate_annotators(project=project, users=1, rule=RULE, noise=args.noise, per_user=rest, seed=-seed)
        if extra.tally.errors:
            sys.exit("the bots failed:\n" + "\n".join(extra.summary()))
    return {"answered": sum(result.tally.answered.values()), "seconds": result.elapsed}


def reward_settings(args: argparse.Namespace) -> dict[str, str]:
    # aggregation_bench's reward model (the loop benchmark's reward stage), all of the export trained on.
    return {
        "reward.use_lora": "false",
        "reward.learning_rate": "1e-3",
        "reward.num_train_epochs": str(args.epochs),
        "reward.per_device_batch_size": "8",
        "reward.max_length": "96",
        "reward.eval_fraction": "0",
        "reward.save_steps": "100000",
    }


def train_and_score(project: Any, votes: str, held_out: list[Pair], args: argparse.Namespace) -> dict[str, Any]:
    """A reward round on the project's export with these votes; the model's result on each held-out pair."""
    from annotate.simulation import feature
    from models_registry.models import ModelVersion
    from training.engine.generate import score
    from training.rounds import launch_round, run_round

    started = time.monotonic()
    training_round = launch_round(
        project, method="reward", base="policy-v1", settings_=reward_settings(args), filters={"votes": votes}
    )
    training_round = run_round(training_round.pk)
    if training_round.status != "succeeded":
        sys.exit(f"{project.slug}: the reward round {training_round.status}: {training_round.error}")
    seconds = time.monotonic() - started
    snapshot = training_round.snapshot
    rule_agrees = 0
    with open(snapshot.file.path, encoding="utf-8") as rows:
        for line in rows:
            row = json.loads(line)
            chosen, rejected = (row[side][-1]["content"] for side in ("chosen", "rejected"))
            rule_agrees += feature(chosen, RULE) > feature(rejected, RULE)
    reward = ModelVersion.objects.get(training_round=training_round, kind=ModelVersion.Kind.REWARD)
    conversations = [[*m, {"role": "assistant", "content": text}] for m, a, b, _ in held_out for text in (a, b)]
    rewards = score(reward.path, conversations, batch_size=64).tolist()
    correct = []
    for i, (_, _, _, better) in enumerate(held_out):
        mine, other = rewards[2 * i + better], rewards[2 * i + 1 - better]
        correct.append(0.5 if mine == other else float(mine > other))
    return {
        "votes": votes,
        "pairs": snapshot.row_count,
        "rule_agrees": rule_agrees,
        "filters": snapshot.filters,
        "round_s": seconds,
        "correct": correct,
    }


# A seed -----------------------------------------------------------------------------------------------------------


def human_only(seed: int, pool: list[Pair], demo: Path, held_out: list[Pair], args: argparse.Namespace) -> list:
    project = build_project(f"human-s{seed}", pool, demo)
    points = []
    for step, budget in enumerate(args.budgets):
        bots = answer_up_to(project, budget, args, seed=1000 * seed + step)
        point = {"budget": budget, "human_votes": human_votes(project), "bots_s": bots["seconds"]}
        point |= train_and_score(project, "human", held_out, args)
        points.append(point)
        print(f"seed {seed} human only: {_point(point)}", file=sys.stderr)
    return points


def hybrid(
    seed: int, accuracy: float, pool: list[Pair], demo: Path, held_out: list[Pair], args: argparse.Namespace
) -> dict[str, Any]:
    from collections import Counter

    from annotate.models import Judge, Task
    from annotate.simulation import simulate_judge

    project = build_project(
        f"hybrid-{100 * accuracy:g}-s{seed}",  # a slug: no dots
        pool,
        demo,
        routing=True,
        routing_confidence=args.routing_confidence,
        routing_audit_share=args.audit_share,
    )
    judge = Judge.create(
        project, "simulated", kind=Judge.Kind.LLM, endpoint="http://judge.invalid/v1", model_name="sim"
    )
    project.judge = judge
    project.save(update_fields=["judge"])
    started = time.monotonic()
    judged = simulate_judge(
        judge, project.tasks.order_by("pk"), accuracy=accuracy, seed=seed, rule=RULE, inconsistency=args.inconsistency
    )
    judge_s = time.monotonic() - started
    routed = Counter(Task.objects.filter(project=project).values_list("routed", flat=True))
    print(f"seed {seed} judge {accuracy:g}: {dict(judged)}, routed {dict(routed)}", file=sys.stderr)
    points = []
    for step, budget in enumerate(args.hybrid_budgets):
        bots = answer_up_to(project, budget, args, seed=1000 * seed + 100 + step)
        point = {"budget": budget, "human_votes": human_votes(project), "bots_s": bots["seconds"]}
        point |= train_and_score(project, "both" if point["human_votes"] else "judge", held_out, args)
        points.append(point)
        print(f"seed {seed} hybrid {accuracy:g}: {_point(point)}", file=sys.stderr)
    return {"judge": dict(judged), "judge_s": judge_s, "routed": dict(routed), "points": points}


def _point(point: dict[str, Any]) -> str:
    acc = sum(point["correct"]) / len(point["correct"])
    return (
        f"{point['human_votes']} human votes, votes={point['votes']}: {point['pairs']} pairs"
        f" ({point['rule_agrees']} as the rule), RM held-out {acc:.1%} (round {point['round_s']:.0f} s)"
    )


# Analysis ---------------------------------------------------------------------------------------------------------


def curve_votes(curve: list[tuple[float, float]], accuracy: float) -> float:
    """The human votes at which a (votes, accuracy) curve, non-decreasing, reaches `accuracy`; inf if it never does."""
    for (v0, a0), (v1, a1) in zip(curve, curve[1:], strict=False):
        if a1 >= accuracy:
            return v1 if a1 == a0 else v0 + max(0.0, accuracy - a0) / (a1 - a0) * (v1 - v0)
    return math.inf


def estimates(seeds: list[dict[str, Any]], accuracies: list[float], weights: Any, chosen: list[int]) -> dict:
    """Every figure of the table for one draw: `chosen` seeds (with repeats) and held-out pair `weights`."""
    import numpy as np

    def accuracy(point: dict[str, Any]) -> float:
        return float(np.dot(point["correct"], weights))

    n_budgets = len(seeds[0]["human"])
    human = [
        (
            float(np.mean([seeds[s]["human"][k]["human_votes"] for s in chosen])),
            float(np.mean([accuracy(seeds[s]["human"][k]) for s in chosen])),
        )
        for k in range(n_budgets)
    ]
    curve, best = [(0.0, 0.5)], 0.5
    for votes, acc in human:
        best = max(best, acc)
        curve.append((votes, best))
    figures: dict[str, float] = {f"human:{k}": acc for k, (_, acc) in enumerate(human)}
    for a in accuracies:
        for j in range(len(seeds[0]["hybrid"][str(a)]["points"])):
            points = [seeds[s]["hybrid"][str(a)]["points"][j] for s in chosen]
            acc = float(np.mean([accuracy(p) for p in points]))
            votes = float(np.mean([p["human_votes"] for p in points]))
            equal = curve_votes(curve, acc)
            figures |= {f"{a}:{j}:acc": acc, f"{a}:{j}:equal": equal, f"{a}:{j}:saved": equal - votes}
    return figures


def bootstrap(seeds: list[dict[str, Any]], accuracies: list[float], draws: int) -> dict[str, tuple[float, ...]]:
    """Each figure: its estimate on all seeds and pairs, and a 95 % percentile interval over `draws` draws."""
    import numpy as np

    n_pairs = len(seeds[0]["human"][0]["correct"])
    for seed in seeds:
        for point in [*seed["human"], *(p for h in seed["hybrid"].values() for p in h["points"])]:
            point["correct"] = np.asarray(point["correct"])
    rng = np.random.default_rng(0)
    full = estimates(seeds, accuracies, np.full(n_pairs, 1 / n_pairs), list(range(len(seeds))))
    samples: dict[str, list[float]] = {key: [] for key in full}
    for _ in range(draws):
        weights = np.bincount(rng.integers(0, n_pairs, n_pairs), minlength=n_pairs) / n_pairs
        chosen = rng.integers(0, len(seeds), len(seeds)).tolist()
        for key, value in estimates(seeds, accuracies, weights, chosen).items():
            samples[key].append(value)
    for seed in seeds:
        for point in [*seed["human"], *(p for h in seed["hybrid"].values() for p in h["points"])]:
            point["correct"] = point["correct"].tolist()
    # np.percentile orders inf last, so an upper bound past the pool stays inf.
    return {key: (full[key], *np.percentile(np.asarray(samples[key]), [2.5, 97.5], method="lower")) for key in full}


def _votes(value: float, cap: int) -> str:
    """Votes, or "> cap" where the human-only curve never reached the accuracy (cap: the most it could be)."""
    return f"> {cap:,}" if math.isinf(value) else f"{value:,.0f}"


def _span(figure: tuple[float, float, float], form: Any) -> str:
    value, low, high = figure
    return f"{form(value)} ({form(low)} to {form(high)})"


def markdown(seeds: list[dict[str, Any]], figures: dict, args: argparse.Namespace) -> list[str]:
    pool = args.pool
    pct = "{:.1%}".format
    lines = [
        "| Labelling | Judge accuracy | Human votes | Routed: judge / audit / people first | Pairs trained on "
        "(rule agrees) | RM held-out accuracy (95 % CI) | Human-only votes for that accuracy (95 % CI) "
        "| Human votes saved (95 % CI) |",
        "|---|---:|---:|---|---:|---:|---:|---:|",
    ]
    n = len(seeds)
    for k in range(len(args.budgets)):
        points = [seed["human"][k] for seed in seeds]
        votes = sum(p["human_votes"] for p in points) / n
        pairs, agrees = (sum(p[key] for p in points) / n for key in ("pairs", "rule_agrees"))
        acc = _span(figures[f"human:{k}"], pct)
        lines.append(f"| human only | — | {votes:,.0f} | — | {pairs:,.0f} ({agrees / pairs:.1%}) | {acc} | — | — |")
    for a in args.accuracies:
        hybrids = [seed["hybrid"][str(a)] for seed in seeds]
        routed = "/".join(
            f"{sum(h['routed'].get(key, 0) for h in hybrids) / n:,.0f}" for key in ("judge", "audit", "people_first")
        )
        for j in range(len(args.hybrid_budgets)):
            points = [h["points"][j] for h in hybrids]
            votes = sum(p["human_votes"] for p in points) / n
            pairs, agrees = (sum(p[key] for p in points) / n for key in ("pairs", "rule_agrees"))
            lines.append(
                f"| hybrid, votes={points[0]['votes']} | {100 * a:g} % | {votes:,.0f} | {routed} "
                f"| {pairs:,.0f} ({agrees / pairs:.1%}) | {_span(figures[f'{a}:{j}:acc'], pct)} "
                f"| {_span(figures[f'{a}:{j}:equal'], partial(_votes, cap=pool))} "
                f"| {_span(figures[f'{a}:{j}:saved'], partial(_votes, cap=round(pool - votes)))} |"
            )
    return lines


# Main -------------------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pool", type=int, default=800, help="pairwise tasks to label per project (default 800)")
    parser.add_argument(
        "--budgets", type=ints, default=ints("25,50,100,200,400,800"), help="human-only votes (25,…,800)"
    )
    parser.add_argument("--hybrid-budgets", type=ints, default=ints("0,25,50,100,200"), help="hybrid votes (0,…,200)")
    parser.add_argument("--accuracies", type=floats, default=floats("0.75,0.9"), help="judge accuracies (0.75,0.9)")
    parser.add_argument("--seeds", type=int, default=3, help="pools, bots and judges drawn anew (default 3)")
    parser.add_argument("--held-out", type=int, default=400, help="rule-labelled pairs to score on (default 400)")
    parser.add_argument("--users", type=int, default=4, help="bots (default 4)")
    parser.add_argument("--noise", type=float, default=0.1, help="the bots' share of random answers (default 0.1)")
    parser.add_argument("--inconsistency", type=float, default=0.1, help="judge's position-inconsistent share (0.1)")
    parser.add_argument("--routing-confidence", type=float, default=0.8, help="Project.routing_confidence (0.8)")
    parser.add_argument("--audit-share", type=float, default=0.1, help="Project.routing_audit_share (0.1)")
    parser.add_argument("--epochs", type=float, default=2, help="reward model epochs (default 2)")
    parser.add_argument("--bootstrap", type=int, default=2000, help="bootstrap draws (default 2000)")
    parser.add_argument("--demo-policy", type=Path, help="a demo policy built before (default: build one, ~1 min)")
    parser.add_argument("--output", type=Path, default=OUTPUT, help="where the run's folder goes (benchmarks/output)")
    parser.add_argument("--database-url", help="a database to migrate and use (default: a new SQLite file)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args()
    if max(args.budgets) > args.pool or min(args.budgets) < 1:
        parser.error(f"--budgets: each from 1 to the pool ({args.pool})")
    if not all(0 < a <= 1 for a in args.accuracies):
        parser.error("--accuracies: each above 0 and at most 1")

    run_dir = args.output / f"routing-{datetime.now():%Y%m%d-%H%M%S}"
    run_dir.mkdir(parents=True)
    busy, code = busy_percent(), code_version()
    print(f"output in {run_dir}; machine {busy:.0f} % busy at the start", file=sys.stderr)
    for folder in ("celery-broker/queue", "celery-broker/control"):
        (run_dir / "var" / folder).mkdir(parents=True, exist_ok=True)  # launch_round's message lands there, unread
    set_up_app(run_dir, args.database_url, args.threads)
    warnings.filterwarnings("ignore", message="Model (has|with) `tie_word_embeddings=True`")
    from training.engine.demo import build_demo_policy

    started = time.monotonic()
    meter = Meter()
    meter.start()
    demo = (args.demo_policy or build_demo_policy(run_dir / "demo")).resolve()
    rng = random.Random("held-out")  # the same pairs for every seed, drawn apart from the pools
    held_out = [answer_pair(rng) for _ in range(args.held_out)]
    seeds = []
    for seed in range(1, args.seeds + 1):
        rng = random.Random(seed)
        pool = [answer_pair(rng) for _ in range(args.pool)]
        seeds.append(
            {
                "seed": seed,
                "human": human_only(seed, pool, demo, held_out, args),
                "hybrid": {str(a): hybrid(seed, a, pool, demo, held_out, args) for a in args.accuracies},
            }
        )
    figures = bootstrap(seeds, args.accuracies, args.bootstrap)
    load = meter.stop()
    header = (
        f"code {code}; {args.seeds} seed(s), pool {args.pool}, held-out {args.held_out}, {args.users} bots, noise"
        f" {args.noise}, rule {RULE}; judge inconsistency {args.inconsistency}, routing_confidence"
        f" {args.routing_confidence}, audit share {args.audit_share}; reward model {args.epochs:g} epoch(s);"
        f" {time.monotonic() - started:.0f} s; machine {busy:.0f} % busy at the start, other work"
        f" {load['other_pct']:.0f} % during"
    )
    (run_dir / "results.json").write_text(
        json.dumps(
            {
                "header": header,
                "args": {k: str(v) for k, v in vars(args).items()},
                "figures": {k: [None if math.isinf(x) else x for x in v] for k, v in figures.items()},
                "seeds": seeds,
            },
            indent=1,
        )
    )
    print(f"\n{header}")
    print("\n".join(markdown(seeds, figures, args)))


if __name__ == "__main__":
    main()
