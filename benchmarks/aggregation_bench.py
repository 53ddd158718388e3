"""Aggregation against bad annotators: majority, Dawid–Skene, and majority without the flagged, and what a reward
model learns from each.

    .venv/bin/python benchmarks/aggregation_bench.py                       # the issue's campaign (about 5 min)
    .venv/bin/python benchmarks/aggregation_bench.py --tasks 300 --campaigns 5 --seeds 3   # five smaller ones
    .venv/bin/python benchmarks/aggregation_bench.py --tasks 150 --held-out 100 --epochs 1   # a quick look

A pairwise project with overlap 3 and `--tasks` tasks, each two answers from the demo corpus's style to one demo
question, one carrying more "Thanks." than the other (0, 1 or 2 of them, never equal, so the rule never ties).
`--users` simulated annotators (annotate/simulation.py, real HTTP API served in-process) answer by the hidden rule
`word:thanks` with `--noise`; of them `--spammers` answer at random and `--position` pick the first-shown answer
with probability 0.9 (by default 2 + 2 of 12: a third). Every bot answers at once, so each does about the same
share of the work, and the project's speed flag is off (max_fast_share 1): speed is not what this measures.

Then, from the same votes:

- `majority`: a pairs export with `aggregation=majority` (ties left out, as exports do by default);
- `dawid-skene`: the same with `aggregation=dawid-skene`;
- `majority-excluding-flagged`: the Quality report computed as the worker computes it, every flagged annotator's
  votes excluded (Membership.decide, as a lead does from the Quality page), then a majority export.

For each: the pairs exported, and the share whose chosen answer the rule prefers (with a 95 % Wilson interval);
then a reward model (the demo policy with a fresh score head, full fine-tuning as the loop benchmark's PPO rounds
train it) trained on that export with `--seeds` seeds, and its accuracy on `--held-out` pairs built the same way
on other questions and labelled by the rule itself, not by any bot (Wilson interval per seed; with several seeds,
their mean and range). `--campaigns N` runs N such campaigns, each with its own pairs and bots (and the same held-out
pairs): the pairs' shares are pooled over them (independent campaigns: counts summed, one Wilson interval), and the
reward models' accuracies averaged over every campaign and seed, with a normal 95 % interval of that mean and their
range. Everything lands in benchmarks/output/aggregation-<time>/; the last lines printed are a Markdown table for
BENCHMARKS.md.
"""

import argparse
import json
import math
import random
import sys
import time
import warnings
from datetime import datetime
from pathlib import Path
from typing import Any

from _machine import busy_percent, code_version, set_up_app

REPO_ROOT = Path(__file__).resolve().parent.parent
OUTPUT = REPO_ROOT / "benchmarks" / "output"
RULE = "word:thanks"
THANKS = "Thanks."
METHODS = ("majority", "dawid-skene", "majority-excluding-flagged")


def answer_pair(rng: random.Random) -> tuple[list[dict[str, str]], str, str, int]:
    """A demo question and two answers to it whose counts of "Thanks." differ; and which one the rule prefers (0/1)."""
    from training.engine.demo import demo_conversations

    chats = demo_conversations(2, seed=rng.randrange(2**31), polite_share=0.0)
    counts = rng.sample(range(3), 2)
    texts = []
    for chat, count in zip(chats, counts, strict=True):
        sentences = [chat["messages"][1]["content"], *[THANKS] * count]
        rng.shuffle(sentences)  # where the thanks go says nothing
        texts.append(" ".join(sentences))
    return chats[0]["messages"][:1], texts[0], texts[1], int(counts[1] > counts[0])


def build_project(args: argparse.Namespace, number: int) -> Any:
    from annotate.models import Project, Prompt, Response, Task, TaskResponse

    project = Project.objects.create(
        name=f"Aggregation {number}",
        slug=f"aggregation-{number}",
        task_kinds=["pairwise"],
        overlap=3,
        max_fast_share=1.0,
    )
    rng = random.Random(campaign_seed(args, number))
    for n in range(args.tasks):
        messages, a, b, _ = answer_pair(rng)
        prompt = Prompt.objects.create(project=project, external_id=f"q{n}", messages=messages)
        task = Task.objects.create(project=project, prompt=prompt, kind="pairwise", required_annotations=3)
        for position, text in enumerate((a, b)):
            response = Response.objects.create(prompt=prompt, content=text)
            TaskResponse.objects.create(task=task, response=response, position=position)
    return project


def campaign_seed(args: argparse.Namespace, number: int) -> int:
    return args.seed + 1000 * number


def held_out(args: argparse.Namespace) -> list[tuple[list[dict[str, str]], str, str, int]]:
    rng = random.Random(args.seed - 1)  # the same pairs for every campaign, drawn apart from theirs
    return [answer_pair(rng) for _ in range(args.held_out)]


def wilson(k: int, n: int) -> dict[str, float]:
    from models_registry.measures import wilson_interval

    low, high = wilson_interval(k / n, n) if n else (0.0, 1.0)
    return {"k": k, "n": n, "rate": k / n if n else None, "low": low, "high": high}


def export(project: Any, aggregation: str) -> Any:
    from annotate.exports import create_snapshot, run_snapshot

    snapshot = run_snapshot(create_snapshot(project, kind="pairs", filters={"aggregation": aggregation}))
    if snapshot.status != "ready":
        sys.exit(f"the {aggregation} export {snapshot.status}: {snapshot.error}")
    return snapshot


def pair_accuracy(snapshot: Any) -> dict[str, Any]:
    """The exported pairs whose chosen answer has more thanks (the rule's preference)."""
    from annotate.simulation import feature

    right = n = 0
    with open(snapshot.file.path, encoding="utf-8") as rows:
        for line in rows:
            row = json.loads(line)
            chosen, rejected = (row[side][-1]["content"] for side in ("chosen", "rejected"))
            right += feature(chosen, RULE) > feature(rejected, RULE)
            n += 1
    return wilson(right, n)


def flag_and_exclude(project: Any, bad: set[str]) -> dict[str, Any]:
    """The Quality report as the worker computes it; every flagged annotator's votes excluded, as a lead would."""
    from annotate.models import Membership, MembershipEvent, QualityReport
    from annotate.quality_reports import quality_for, request_quality, run_quality_report

    request_quality(project)
    report = run_quality_report(QualityReport.objects.get(project=project))
    if report.status != "ready":
        sys.exit(f"the quality report {report.status}: {report.error}")
    flagged = {row["username"]: row["flags"] for row in quality_for(project)["annotators"] if row["flags"]}
    for membership in Membership.objects.filter(project=project, user__username__in=flagged):
        reason = f"flagged: {', '.join(flagged[membership.user.username])}"
        membership.decide(MembershipEvent.Kind.EXCLUDED, by=None, reason=reason)
    hits = len(set(flagged) & bad)
    return {
        "flagged": flagged,
        "precision": hits / len(flagged) if flagged else None,
        "recall": hits / len(bad) if bad else None,
    }


def train_and_score(snapshot: Any, demo: Path, pairs: list, args: argparse.Namespace, out: Path) -> list[dict]:
    """A reward model per seed on the export, scored on the held-out pairs against the rule."""
    if not args.seeds:
        return []
    from training.engine.config import RewardConfig
    from training.engine.generate import score
    from training.engine.reward import train_reward

    results = []
    for seed in range(args.seeds):
        config = RewardConfig(
            model_name_or_path=str(demo),
            use_lora=False,
            learning_rate=1e-3,
            num_train_epochs=args.epochs,
            per_device_batch_size=8,
            max_length=96,
            eval_fraction=0.0,
            seed=seed,
            logging_steps=50,
            save_steps=100000,
        )
        started = time.monotonic()
        result = train_reward(config, snapshot.file.path, str(out / f"seed{seed}"))
        seconds = time.monotonic() - started
        conversations = [
            [*messages, {"role": "assistant", "content": text}] for messages, a, b, _ in pairs for text in (a, b)
        ]
        rewards = score(result.output_dir, conversations, batch_size=64).tolist()
        right = sum(
            (rewards[2 * i + better] > rewards[2 * i + 1 - better]) for i, (_, _, _, better) in enumerate(pairs)
        )
        results.append({"seed": seed, "train_s": seconds, "steps": result.steps, **wilson(right, len(pairs))})
        print(
            f"  reward model, seed {seed}: {right}/{len(pairs)} held-out pairs right ({seconds:.0f} s)", file=sys.stderr
        )
    return results


def _share(share: dict[str, Any]) -> str:
    return f"{100 * share['rate']:.1f} % ({100 * share['low']:.1f}–{100 * share['high']:.1f})"


def _number(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def pooled(shares: list[dict[str, Any]]) -> dict[str, float]:
    """Independent campaigns' shares as one: their counts summed, with a Wilson interval."""
    return wilson(sum(x["k"] for x in shares), sum(x["n"] for x in shares))


def mean_interval(rates: list[float]) -> str:
    """The mean of several models' accuracies, with a normal 95 % interval of that mean, and their range."""
    mean = sum(rates) / len(rates)
    if len(rates) == 1:
        return f"{mean:.1f} %"
    sd = math.sqrt(sum((r - mean) ** 2 for r in rates) / (len(rates) - 1))
    half = 1.96 * sd / math.sqrt(len(rates))
    return f"{mean:.1f} % ({mean - half:.1f}–{mean + half:.1f}; models {min(rates):.1f}–{max(rates):.1f})"


def markdown(campaigns: list[dict[str, Any]], args: argparse.Namespace) -> list[str]:
    lines = [
        "| Aggregation | Pairs exported (of tasks) | Pairs the rule agrees with (95 % CI) | Reward models' held-out "
        "accuracy: mean (95 % CI; range) |",
        "|---|---:|---:|---:|",
    ]
    for method in METHODS:
        pairs = pooled([campaign["rows"][method]["pairs"] for campaign in campaigns])
        rates = [100 * m["rate"] for campaign in campaigns for m in campaign["rows"][method]["reward"]]
        reward = mean_interval(rates) if rates else "–"
        tasks = args.tasks * len(campaigns)
        lines.append(f"| {method} | {pairs['n']:,} ({tasks:,}) | {_share(pairs)} | {reward} |")
    return lines


def campaign(args: argparse.Namespace, number: int, demo: Path, pairs: list, run_dir: Path) -> dict[str, Any]:
    """One project, its bots' votes, and the three exports with their reward models."""
    from annotate.simulation import check_profile, simulate_annotators

    project = build_project(args, number)
    profiles = [check_profile("spammer")] * args.spammers + [check_profile("position:0.9")] * args.position
    bots = simulate_annotators(
        project=project,
        users=args.users,
        rule=RULE,
        noise=args.noise,
        seed=campaign_seed(args, number),
        profiles=profiles,
    )
    if bots.tally.errors:
        sys.exit("the bots failed:\n" + "\n".join(bots.summary()))
    bad = {f"sim-{project.slug}-{i}" for i in range(1, len(profiles) + 1)}
    print(f"campaign {number}: {sum(bots.tally.answered.values())} answers in {bots.elapsed:.0f} s", file=sys.stderr)
    rows: dict[str, dict[str, Any]] = {}
    quality: dict[str, Any] = {}
    for method in METHODS:
        if method == "majority-excluding-flagged":
            quality = flag_and_exclude(project, bad)
            print(f"  flagged: {quality['flagged']}", file=sys.stderr)
        snapshot = export(project, "dawid-skene" if method == "dawid-skene" else "majority")
        rows[method] = {"pairs": pair_accuracy(snapshot)}
        print(f"  {method}: {_share(rows[method]['pairs'])} of {rows[method]['pairs']['n']} pairs", file=sys.stderr)
        out = run_dir / "reward" / f"{number}-{method}"
        rows[method]["reward"] = train_and_score(snapshot, demo, pairs, args, out)
    return {"number": number, "bad": sorted(bad), "quality": quality, "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=1500, help="pairwise tasks, 3 votes each (default 1500)")
    parser.add_argument("--held-out", type=int, default=500, help="rule-labelled pairs to score on (default 500)")
    parser.add_argument("--users", type=int, default=12, help="bots (default 12)")
    parser.add_argument("--spammers", type=int, default=2, help="bots that answer at random (default 2)")
    parser.add_argument("--position", type=int, default=2, help="bots that pick the first shown at 0.9 (default 2)")
    parser.add_argument("--noise", type=float, default=0.1, help="careful bots' share of random answers (0.1)")
    parser.add_argument("--campaigns", type=int, default=1, help="campaigns, each its own pairs and bots (default 1)")
    parser.add_argument("--seeds", type=int, default=1, help="reward models per export; 0: none (default 1)")
    parser.add_argument("--epochs", type=float, default=2, help="reward model epochs (default 2)")
    parser.add_argument("--seed", type=int, default=2026, help="the pairs' seed (default 2026)")
    parser.add_argument("--demo-policy", type=Path, help="a demo policy built before (default: build one, ~1 min)")
    parser.add_argument("--database-url", help="a database to migrate and use (default: a new SQLite file)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args()

    run_dir = OUTPUT / f"aggregation-{datetime.now():%Y%m%d-%H%M%S}"
    run_dir.mkdir(parents=True)
    set_up_app(run_dir, args.database_url, args.threads)
    warnings.filterwarnings("ignore", message="Model (has|with) `tie_word_embeddings=True`")
    from training.engine.demo import build_demo_policy

    started = time.monotonic()
    demo = args.demo_policy or build_demo_policy(run_dir / "demo")
    pairs = held_out(args)
    campaigns = [campaign(args, number, demo, pairs, run_dir) for number in range(1, args.campaigns + 1)]
    result = {
        "args": {k: str(v) for k, v in vars(args).items()},
        "code": code_version(),
        "busy_after": busy_percent(),
        "seconds": time.monotonic() - started,
        "campaigns": campaigns,
    }
    (run_dir / "result.json").write_text(json.dumps(result, indent=2))
    flags = [(_number(c["quality"]["precision"]), _number(c["quality"]["recall"])) for c in campaigns]
    print(f"\n{run_dir}: {result['seconds']:.0f} s, code {result['code']}")
    print("flags (precision, recall) per campaign: " + ", ".join(f"({p}, {r})" for p, r in flags))
    print("\n".join(markdown(campaigns, args)))


if __name__ == "__main__":
    main()
