"""Closing the loop: training rounds on simulated annotators' votes or ratings, each round's samples back in the queue.

    .venv/bin/python benchmarks/loop_bench.py                          # two rounds of every campaign below
    .venv/bin/python benchmarks/loop_bench.py --methods kto --rounds 1     # a quick look
    .venv/bin/python benchmarks/loop_bench.py --set ppo:ppo.kl_coef=0.05   # a campaign's round setting (repeat)
    .venv/bin/python benchmarks/loop_bench.py --database-url postgres://…  # a database you run (migrated here)

A campaign is a round method with its settings and the signal its annotators give (CAMPAIGNS): pairwise votes
(DPO, PPO) or ratings alone (KTO). Per campaign: a project of demo prompts (a held-out eval split and a train
split), the demo policy (the tiny model SFT'd on the demo corpus, training/engine/demo.py) registered as policy v1
and sampled into the queue (round 0), and simulated annotators (annotate/simulation.py: token-authenticated bots on
the real HTTP API, served in-process) following a hidden rule with some noise. Then, `--rounds` times: launch_round
(from the previous round's policy) and run_round in-process, which snapshots the votes or ratings, trains,
registers, evaluates, and samples the new policy back into the queue; the bots answer what the round queued (eval
pairs new-vs-parent, and the train tasks of the campaign's signal), and the next round trains on everything
answered so far. One campaign each, fixed seeds: no medians.

Signals (SIGNALS). Pairwise: the project's task kinds are `--kinds` (default pairwise), K = `--samples-per-prompt`
samples per train prompt and one pair of them to vote on. Ratings: the project enables rating only, on a 0-1 scale
(thumbs down or up: the bots rate 1 an answer that satisfies the rule, and the unpaired export calls an answer
desirable when its mean rating is above 0.5), one sample per train prompt and a rating task of it (so as many train
tasks as a pairwise campaign has, and no pairs anywhere in its data). The eval pairs are the same yardstick for every
campaign: the bots vote on them with pairwise enabled for that pass only (they are on the eval split, which no round
trains on, and KTO reads ratings alone), so a ratings campaign has a win rate over its parent too.

Defaults: 100 eval and 1,000 train prompts, all sampled every round (sample_prompts 1000), 3 bots' answers per task
and rounds that keep pairs with at least 60 % agreement (the filter has no say on ratings). With one vote per task, a
random answer (noise) to a pair the rule calls equal still makes a pair, and about one held-out vote in ten is then a
coin toss that no reward model can beat; three votes and the agreement filter drop those (see benchmarks/README.md).

Measured per round: the share of the policy's samples on the held-out eval prompts that satisfy the rule (with a
95 % Wilson interval; round 0 is the demo policy); the win rate over the parent from the bots' votes on the eval
pairs (models_registry.measures.win_rate); for campaigns that train a reward model, its held-out accuracy
(eval_report["accuracy"]) and beside it how far the held-out votes themselves agree with the rule, and a rating
reward model's held-out rank correlation (RM_CORRELATION, "—" where the report has none); KL to the demo policy,
the same measure for every method, and the eval report's KL (eval_report["kl"], to the round's reference); the wall
time from launch_round to the new samples being in the queue, split by stage; the rows the round trained on (pairs
or rated answers); how much of the machine other work took meanwhile (/proc/stat less this process).

Everything lands in benchmarks/output/loop-<time>/ (or `--output`/loop-<time>/): the SQLite database, media,
artifacts, the rounds' log, a JSON of the results; the last lines printed are a Markdown table for BENCHMARKS.md.
"""

import argparse
import json
import logging
import math
import os
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from _machine import Meter, busy_percent, code_version, set_up_app, wait_until_quiet

REPO_ROOT = Path(__file__).resolve().parent.parent
OUTPUT = REPO_ROOT / "benchmarks" / "output"

# The efficacy test's DPO settings (tests/training/test_efficacy.py): the tiny model learns faster whole.
DPO_SETTINGS = {
    "use_lora": "false",
    "learning_rate": "5e-4",
    "num_train_epochs": "3",
    "per_device_batch_size": "8",
    "max_length": "96",
    "beta": "0.1",
    "eval_fraction": "0",
    "sample.max_new_tokens": "40",
    "sample.batch_size": "64",
}
# PPO needs LoRA (its reference is the starting policy: the adapter off, or a frozen copy of the parent adapter);
# on the tiny model's tied embeddings an adapter on lm_head lets it move. β is the default, adapted toward
# kl_target (tests/training/test_ppo.py).
PPO_SETTINGS = {
    "reward.use_lora": "false",
    "reward.learning_rate": "1e-3",
    "reward.num_train_epochs": "5",
    "reward.per_device_batch_size": "8",
    "reward.max_length": "96",
    "reward.eval_fraction": "0.2",
    "ppo.lora_target_modules": "q_proj,v_proj,lm_head",
    "ppo.learning_rate": "1e-4",
    "ppo.max_steps": "100",
    "ppo.per_device_batch_size": "8",
    "ppo.ppo_epochs": "4",
    "ppo.max_new_tokens": "40",
    "ppo.max_length": "96",
    "sample.max_new_tokens": "40",
    "sample.batch_size": "64",
}
# KTO: DPO's settings; λ_D 3 because about one demo sample in five says "thanks", and KTO wants
# λ_D·desirable ≳ λ_U·undesirable (tests/training/test_efficacy.py).
KTO_SETTINGS = {**DPO_SETTINGS, "desirable_weight": "3"}
# RLOO and GRPO: PPO's reward model; LoRA on every linear layer (TRL refuses one on lm_head, whose weight its
# log-probabilities read directly), 100 steps of 4 prompts × 4 responses (each step samples
# twice PPO's responses, one pass over them instead of PPO's 4 epochs), β at TRL's scale (KL in the loss or reward).
ONLINE_SETTINGS = {
    **{key: value for key, value in PPO_SETTINGS.items() if key.startswith(("reward.", "sample."))},
    "learning_rate": "3e-4",
    "max_steps": "100",
    "per_device_batch_size": "8",
    "gradient_accumulation_steps": "2",
    "num_generations": "4",
    "max_new_tokens": "40",
    "max_length": "96",
}
RLOO_SETTINGS = {f"rloo.{k}" if "." not in k else k: v for k, v in ONLINE_SETTINGS.items()}
GRPO_SETTINGS = {f"grpo.{k}" if "." not in k else k: v for k, v in ONLINE_SETTINGS.items()}
# Best-of-N: PPO's reward model; K = 4 answers for each train prompt, SFT (full, as DPO's) on the best of each.
BEST_OF_N_SETTINGS = {
    **{key: value for key, value in PPO_SETTINGS.items() if key.startswith(("reward.", "sample."))},
    "best_of_n.k": "4",
    "best_of_n.use_lora": "false",
    "best_of_n.learning_rate": "5e-4",
    "best_of_n.num_train_epochs": "3",
    "best_of_n.per_device_batch_size": "8",
    "best_of_n.max_new_tokens": "40",
    "best_of_n.max_length": "96",
    "best_of_n.sample_batch_size": "64",
    "best_of_n.eval_fraction": "0.1",
}
# PPO on ratings alone: the reward model regresses the bots' ratings (objective=ratings, 20 % of prompts held out
# for its rank correlation), then PPO as above.
PPO_RATINGS_SETTINGS = {**PPO_SETTINGS, "reward.objective": "ratings"}
# A campaign: the round method, its settings, and the signal the bots give (a key of SIGNALS). Adding a method is one
# line here, e.g. "rloo": {"method": "rloo", "signal": "pairwise", "settings": {...}}; `--methods` picks them by key.
CAMPAIGNS: dict[str, dict[str, Any]] = {
    "dpo": {"method": "dpo", "signal": "pairwise", "settings": DPO_SETTINGS},
    "kto": {"method": "kto", "signal": "ratings", "settings": KTO_SETTINGS},
    "ppo": {"method": "ppo", "signal": "pairwise", "settings": PPO_SETTINGS},
    "ppo-ratings": {"method": "ppo", "signal": "ratings", "settings": PPO_RATINGS_SETTINGS},
    "rloo": {"method": "rloo", "signal": "pairwise", "settings": RLOO_SETTINGS},
    "grpo": {"method": "grpo", "signal": "pairwise", "settings": GRPO_SETTINGS},
    "best_of_n": {"method": "best_of_n", "signal": "pairwise", "settings": BEST_OF_N_SETTINGS},
}
# What the campaign's project asks its annotators for (Project fields), over the command line's kinds and K.
SIGNALS: dict[str, dict[str, Any]] = {
    "pairwise": {},
    "ratings": {
        "task_kinds": ["rating"],
        "sample_rating_tasks": True,
        "rating_min": 0,  # thumbs down or up: desirable is a mean rating above 0.5
        "rating_max": 1,
        "samples_per_prompt": 1,  # a rating needs one answer: as many train tasks as a pairwise campaign
    },
}
# The key of a rating reward model's held-out rank correlation in its eval report (objective=ratings).
RM_CORRELATION = "rating_spearman"
MEASURE_SEED = 11  # the same sampling for every policy measured


# Machine ----------------------------------------------------------------------------------------------------------


# Set-up -----------------------------------------------------------------------------------------------------------


class StageClock(logging.Handler):
    """Times the rounds' log lines (training.*), to split a round's wall time by stage."""

    MARKS = ("Snapshot ", "Stage ", "Evaluating the policy", "Sampling ", "New samples in the queue")

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.marks: list[tuple[float, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith(self.MARKS):
            self.marks.append((time.monotonic(), message))


def set_up(args: argparse.Namespace, run_dir: Path) -> StageClock:
    """Environment, Django, a migrated database, quiet logs (the rounds' go to run_dir/rounds.log)."""
    var = run_dir / "var"
    for folder in ("celery-broker/queue", "celery-broker/control"):
        (var / folder).mkdir(parents=True, exist_ok=True)  # launch_round sends its message there; nobody reads it
    set_up_app(run_dir, args.database_url, args.threads)

    # The tiny model's lm_head adapter shares its weight with the embeddings; peft says so at every save.
    warnings.filterwarnings("ignore", message="Model (has|with) `tie_word_embeddings=True`")
    warnings.filterwarnings("ignore", message="Setting `save_embedding_layers`")
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
    clock = StageClock()
    training_log = logging.getLogger("training")
    training_log.setLevel(logging.INFO)
    training_log.propagate = False
    to_file = logging.FileHandler(run_dir / "rounds.log")
    to_file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    training_log.addHandler(to_file)
    training_log.addHandler(clock)
    return clock


# Measures ---------------------------------------------------------------------------------------------------------


def satisfaction(path: str, prompts: list, args: argparse.Namespace) -> dict[str, Any]:
    """The share of `measure_samples` samples per eval prompt that satisfy the rule, with a 95 % Wilson interval."""
    from annotate.simulation import feature
    from models_registry.measures import wilson_interval
    from training.engine.generate import generate

    texts = generate(
        path,
        prompts,
        num_samples=args.measure_samples,
        max_new_tokens=args.max_new_tokens,
        batch_size=64,
        seed=MEASURE_SEED,
    )
    flat = [text for per_prompt in texts for text in per_prompt]
    k, n = sum(feature(text, args.rule) > 0 for text in flat), len(flat)
    low, high = wilson_interval(k / n, n)
    return {"k": k, "n": n, "rate": k / n, "low": low, "high": high, "texts": texts}


def kl_to(path: str, reference: str, prompts: list, args: argparse.Namespace) -> float | None:
    """Mean per-token KL(policy ‖ reference) on the policy's own samples for the eval prompts."""
    from training.engine.generate import evaluate_policy

    report = evaluate_policy(
        path, prompts, reference_path=reference, num_samples=4, max_new_tokens=args.max_new_tokens, seed=MEASURE_SEED
    )
    return report.get("kl")


def held_out_labels(snapshot_path: str, reward_config: dict, rule: str) -> dict[str, Any]:
    """How the reward stage's held-out pairs (the same split it made) agree with the rule: agreeing, flipped,
    and undecided (equal features, so only noise made them a pair); `ceiling` is what a model that knows the rule
    scores on them (undecided pairs at chance)."""
    from annotate.simulation import feature
    from training.engine.common import load_rows, split_dataset

    rows = load_rows(snapshot_path, ["prompt", "chosen", "rejected"])
    _, held = split_dataset(rows, reward_config["eval_fraction"], reward_config["seed"])
    if held is None or not len(held):
        return {}
    counts = {"agree": 0, "flipped": 0, "undecided": 0}
    for row in held:
        chosen, rejected = (row[side][-1]["content"] for side in ("chosen", "rejected"))
        gap = feature(chosen, rule) - feature(rejected, rule)
        counts["agree" if gap > 0 else "flipped" if gap < 0 else "undecided"] += 1
    n = sum(counts.values())
    return {**counts, "n": n, "ceiling": (counts["agree"] + counts["undecided"] / 2) / n}


def rule_accuracy(reward_path: str, prompts: list, samples: list[list[list[str]]], rule: str) -> dict[str, Any]:
    """The reward model against the rule itself, on the eval prompts: over every pair of samples of one prompt
    whose features differ, the share it orders as the rule does (a tie counts half)."""
    from annotate.simulation import feature
    from training.engine.generate import score

    per_prompt = [[text for texts in samples for text in texts[i]] for i in range(len(prompts))]
    conversations = [
        [*prompt, {"role": "assistant", "content": text}]
        for prompt, texts in zip(prompts, per_prompt, strict=True)
        for text in texts
    ]
    rewards = iter(score(reward_path, conversations, batch_size=64).tolist())
    right = pairs = 0.0
    for texts in per_prompt:
        scored = [(feature(text, rule), next(rewards)) for text in texts]
        for i, (f1, r1) in enumerate(scored):
            for f2, r2 in scored[i + 1 :]:
                if f1 != f2:
                    pairs += 1
                    right += 0.5 if r1 == r2 else float((f1 > f2) == (r1 > r2))
    return {"accuracy": right / pairs if pairs else None, "pairs": int(pairs)}


# A campaign -------------------------------------------------------------------------------------------------------


@contextmanager
def eval_pairs_served(project: Any) -> Iterator[None]:
    """Pairwise enabled for a while, so that the bots vote on a ratings-only project's eval pairs (its rounds make
    no train pairs: training/sampling.py asks the project's kinds at sampling time)."""
    kinds = list(project.task_kinds)
    if "pairwise" in kinds:
        yield
        return
    project.task_kinds = [*kinds, "pairwise"]
    project.save(update_fields=["task_kinds"])
    try:
        yield
    finally:
        project.task_kinds = kinds
        project.save(update_fields=["task_kinds"])


def annotate(project: Any, args: argparse.Namespace, seed: int) -> dict[str, Any]:
    from annotate.simulation import simulate_annotators

    with eval_pairs_served(project):
        result = simulate_annotators(project=project, users=args.users, rule=args.rule, noise=args.noise, seed=seed)
    if result.tally.errors:
        sys.exit("the bots failed:\n" + "\n".join(result.summary()))
    return {"answered": dict(result.tally.answered), "seconds": result.elapsed}


def stage_times(marks: list[tuple[float, str]], start: float, end: float) -> dict[str, float]:
    """Seconds per part of a round, from its log lines: data (snapshot), each stage's training, eval, sample."""
    spans: dict[str, float] = {}
    current, since = "data", start
    for at, message in marks:
        if message.startswith("Stage ") and ": training from" in message:
            name = message.removeprefix("Stage ").split(":", 1)[0]
        elif message.startswith("Evaluating the policy"):
            name = "eval"
        elif message.startswith("Sampling ") and current != "sample":
            name = "sample"
        else:
            continue
        spans[current] = spans.get(current, 0.0) + at - since
        current, since = name, at
    spans[current] = spans.get(current, 0.0) + end - since
    return spans


def campaign_settings(name: str, args: argparse.Namespace) -> dict[str, str]:
    """The campaign's round settings with the command line's `--set NAME:KEY=VALUE` for it on top."""
    given = [item.split(":", 1)[1] for item in args.set or [] if item.split(":", 1)[0] == name]
    return {**CAMPAIGNS[name]["settings"], **dict(item.split("=", 1) for item in given)}


def campaign(name: str, args: argparse.Namespace, demo: Path, clock: StageClock) -> list[dict[str, Any]]:
    from annotate.models import Project, Prompt, Task
    from models_registry.measures import win_rate
    from models_registry.models import ModelVersion
    from training.engine.config import SampleConfig
    from training.engine.demo import demo_prompts
    from training.rounds import launch_round, run_round
    from training.sampling import sample_into_queue

    method, signal = CAMPAIGNS[name]["method"], CAMPAIGNS[name]["signal"]
    settings_ = campaign_settings(name, args)
    asked = {"task_kinds": args.kinds.split(","), "samples_per_prompt": args.samples_per_prompt}
    asked |= SIGNALS[signal]
    project = Project.objects.create(
        name=f"Loop {name.upper()}",
        slug=f"loop-{name}",
        overlap=args.overlap,
        sample_prompts=args.sample_prompts,
        **asked,
    )
    for number, messages in enumerate(demo_prompts(args.eval_prompts + args.train_prompts, seed=7)):
        split = Prompt.Split.EVAL if number < args.eval_prompts else Prompt.Split.TRAIN
        Prompt.objects.create(project=project, external_id=f"q{number}", messages=messages, split=split)
    eval_prompts = [p.messages for p in project.prompts.filter(split=Prompt.Split.EVAL).order_by("id")]

    base = ModelVersion.register(project=project, kind="policy", base_model=str(demo))
    base.promote()
    started = time.monotonic()
    sample_into_queue(
        project, base, round_number=0, config=SampleConfig(max_new_tokens=args.max_new_tokens, seed=1, batch_size=64)
    )
    queued0 = time.monotonic() - started
    bots = annotate(project, args, seed=100)
    measured = satisfaction(base.path, eval_prompts, args)
    rows = [
        {
            "campaign": name,
            "method": method,
            "signal": signal,
            "round": 0,
            "policy": f"policy v{base.version}",
            "satisfaction": {k: v for k, v in measured.items() if k != "texts"},
            "queued_s": queued0,
            "tasks": Task.objects.filter(project=project, round_number=0).count(),
            "bots": bots,
        }
    ]
    print(f"{name} round 0: {_describe(rows[-1])}", file=sys.stderr)
    samples = [measured["texts"]]
    parent = base
    # The agreement filter is on pairs; a rated answer's label is already its ratings' mean (annotate/exports.py).
    filters = {"min_agreement": args.min_agreement} if args.min_agreement and signal == "pairwise" else None
    for number in range(1, args.rounds + 1):
        busy_before = wait_until_quiet(args.quiet_below, args.quiet_wait) if args.quiet_below else busy_percent()
        meter = Meter()
        clock.marks.clear()
        meter.start()
        start = time.monotonic()
        training_round = launch_round(
            project, method=method, base=f"policy-v{parent.version}", settings_=settings_, filters=filters
        )
        training_round = run_round(training_round.pk)
        end = time.monotonic()
        load = meter.stop()
        if training_round.status != "succeeded":
            sys.exit(f"{name} round {number} {training_round.status}: {training_round.error}")
        new = ModelVersion.objects.get(training_round=training_round, kind=ModelVersion.Kind.POLICY)
        reward = ModelVersion.objects.filter(training_round=training_round, kind=ModelVersion.Kind.REWARD).first()
        tasks = Task.objects.filter(project=project, round_number=training_round.number).count()
        snapshot = training_round.snapshot
        row = {
            "campaign": name,
            "method": method,
            "signal": signal,
            "round": number,
            "policy": f"policy v{new.version}",
            "parent": f"policy v{parent.version}",
            "wall_s": end - start,
            "stages": stage_times(list(clock.marks), start, end),
            "busy_before": busy_before,
            **load,
            "trained_rows": snapshot.row_count if snapshot else None,
            "snapshot_kind": snapshot.kind if snapshot else None,
            "tasks": tasks,
            "kl": new.eval_report.get("kl"),
            "kl_reference": "parent",  # every stage's eval KL is to the policy the round started from
            "mean_reward": new.eval_report.get("mean_reward"),
        }
        if reward is not None:
            row["rm_accuracy"] = reward.eval_report.get("accuracy")
            row["rm_correlation"] = reward.eval_report.get(RM_CORRELATION)
            row["rm_human_eval"] = reward.eval_report.get("human_eval_accuracy")
            row["rm_human_eval_pairs"] = reward.eval_report.get("human_eval_pairs")
            row["rm_eval_pairs"] = reward.eval_report.get("eval_pairs")
            if snapshot.kind == snapshot.Kind.PAIRS:
                row["rm_labels"] = held_out_labels(snapshot.file.path, training_round.config["reward"], args.rule)
        row["bots"] = annotate(project, args, seed=100 + number)
        rate = win_rate(project, new, parent)
        row["win_rate"] = {"rate": rate.rate, "low": rate.low, "high": rate.high, "n": rate.n,
                           "wins": rate.wins, "ties": rate.ties, "losses": rate.losses}  # fmt: skip
        measured = satisfaction(new.path, eval_prompts, args)
        row["satisfaction"] = {k: v for k, v in measured.items() if k != "texts"}
        samples.append(measured["texts"])
        row["kl_demo"] = kl_to(new.path, str(demo), eval_prompts, args)
        if reward is not None:
            row["rm_rule"] = rule_accuracy(reward.path, eval_prompts, [samples[0], samples[-1]], args.rule)
        rows.append(row)
        print(f"{name} round {number}: {_describe(row)}", file=sys.stderr)
        parent = new
    return rows


# Reporting --------------------------------------------------------------------------------------------------------


def _share(share: dict[str, Any] | None) -> str:
    if not share or share.get("rate") is None:
        return "—"
    return f"{100 * share['rate']:.0f} % [{100 * share['low']:.0f}, {100 * share['high']:.0f}]"


def _number(value: float | None, form: str = "{:.3f}") -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else form.format(value)


def _describe(row: dict[str, Any]) -> str:
    parts = [f"rule {row['satisfaction']['k']}/{row['satisfaction']['n']} = {_share(row['satisfaction'])}"]
    if row["round"] == 0:
        parts.append(f"{row['tasks']} tasks queued in {row['queued_s']:.0f} s")
    else:
        stages = ", ".join(f"{name} {seconds:.0f} s" for name, seconds in row["stages"].items())
        parts += [
            f"launch → queued {row['wall_s']:.0f} s ({stages})",
            f"trained on {_number(row['trained_rows'], '{}')} {row['snapshot_kind']} rows, {row['tasks']} tasks queued",
            f"win rate {_share(row['win_rate'])} of {row['win_rate']['n']}",
            f"KL {_number(row['kl'])} (to {row['kl_reference']}), to demo {_number(row['kl_demo'])}",
            f"machine {row['busy_before']:.0f} % busy before, others {row['other_pct']:.0f} % during",
        ]
        if "rm_accuracy" in row:
            labels = row.get("rm_labels", {})
            parts.append(
                f"RM held-out {_number(row['rm_accuracy'], '{:.1%}')} of {row['rm_eval_pairs']} pairs"
                f" (labels: {labels.get('agree')} agree, {labels.get('flipped')} flipped, {labels.get('undecided')}"
                f" undecided by the rule; ceiling {_number(labels.get('ceiling'), '{:.1%}')}),"
                f" on eval-split votes {_number(row['rm_human_eval'], '{:.1%}')} of {row['rm_human_eval_pairs']},"
                f" against the rule on eval prompts {_number(row['rm_rule']['accuracy'], '{:.1%}')}"
                f" of {row['rm_rule']['pairs']} pairs; rank correlation {_number(row['rm_correlation'])}"
            )
    answered = ", ".join(f"{n} {kind}" for kind, n in sorted(row["bots"]["answered"].items())) or "nothing"
    parts.append(f"bots answered {answered} in {row['bots']['seconds']:.0f} s")
    return "; ".join(parts)


def markdown(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| Campaign | Signal | Round | Policy | Rule satisfied, eval prompts (95 % CI) | Win rate over parent (votes) "
        "| RM held-out accuracy (pairs; label ceiling) | Rating RM held-out rank correlation | KL to demo "
        "| KL in eval report (to) | Launch → samples queued | Trained on | Other work |",
        "|---|---|---:|---|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        sat = row["satisfaction"]
        first = f"| {row['campaign'].upper()} | {row['signal']} | {row['round']} | {row['policy']}"
        first += f" | {_share(sat)} ({sat['k']}/{sat['n']})"
        if row["round"] == 0:
            lines.append(first + " | — | — | — | — | — | — | — | — |")
            continue
        rate = row["win_rate"]
        rm = "—"
        if "rm_accuracy" in row:
            ceiling = row.get("rm_labels", {}).get("ceiling")
            rm = f"{_number(row['rm_accuracy'], '{:.1%}')} ({row['rm_eval_pairs']}; {_number(ceiling, '{:.0%}')})"
        trained = f"{_number(row['trained_rows'], '{}')} {'rated' if row['snapshot_kind'] == 'unpaired' else 'pairs'}"
        lines.append(
            f"{first} | {_share(rate)} ({rate['n']}) | {rm} | {_number(row.get('rm_correlation'))}"
            f" | {_number(row['kl_demo'])} | {_number(row['kl'])} ({row['kl_reference']}) | {row['wall_s']:.0f} s"
            f" | {trained} | {row['other_pct']:.0f} % |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--methods",
        "--campaigns",
        default=",".join(CAMPAIGNS),
        help=f"campaigns, one each, of {', '.join(CAMPAIGNS)} (default all)",
    )
    parser.add_argument("--rounds", type=int, default=2, help="rounds per campaign (default 2)")
    parser.add_argument("--rule", default="word:thanks", help="the bots' hidden rule (default word:thanks)")
    parser.add_argument("--noise", type=float, default=0.1, help="share of random answers (default 0.1)")
    parser.add_argument("--users", type=int, default=4, help="bots (default 4)")
    parser.add_argument("--eval-prompts", type=int, default=100, help="held-out eval prompts (default 100)")
    parser.add_argument("--train-prompts", type=int, default=1000, help="train prompts (default 1000)")
    parser.add_argument("--sample-prompts", type=int, default=1000, help="project.sample_prompts (default 1000)")
    parser.add_argument("--samples-per-prompt", type=int, default=4, help="K (default 4)")
    parser.add_argument("--kinds", default="pairwise", help="the project's task kinds (default pairwise)")
    parser.add_argument("--overlap", type=int, default=3, help="annotations per task (default 3)")
    parser.add_argument("--min-agreement", type=float, default=0.6, help="the rounds' filter; 0: none (0.6)")
    parser.add_argument("--measure-samples", type=int, default=16, help="samples per eval prompt measured (16)")
    parser.add_argument("--max-new-tokens", type=int, default=40, help="sampling cap, round 0 and measures (40)")
    parser.add_argument(
        "--set", action="append", metavar="CAMPAIGN:KEY=VALUE", help="a campaign's round setting, e.g. kto:beta=0.2"
    )
    parser.add_argument("--demo-policy", type=Path, help="<run>/demo/policy of an earlier run (default: build it)")
    parser.add_argument("--output", type=Path, default=OUTPUT, help="where the run's folder goes (benchmarks/output)")
    parser.add_argument("--database-url", help="a database to migrate and use (default: a new SQLite file)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--quiet-below", type=float, help="before each round, wait until the machine is less busy (%%)")
    parser.add_argument("--quiet-wait", type=float, default=300, help="how long to wait for that, seconds (300)")
    args = parser.parse_args()
    names = args.methods.split(",")
    if unknown := [name for name in names if name not in CAMPAIGNS]:
        parser.error(f"unknown campaign(s) {', '.join(unknown)}: use {', '.join(CAMPAIGNS)}")
    for item in args.set or []:
        name, _, setting = item.partition(":")
        if name not in names or "=" not in setting:
            parser.error(f"--set {item}: use CAMPAIGN:KEY=VALUE for a campaign in --methods ({args.methods})")

    run_dir = args.output / f"loop-{datetime.now():%Y%m%d-%H%M%S}"
    run_dir.mkdir(parents=True)
    busy, code = busy_percent(), code_version()  # the code as it was when the run started
    print(f"output in {run_dir}; machine {busy:.0f} % busy at the start", file=sys.stderr)
    clock = set_up(args, run_dir)
    from training.engine.demo import build_demo_policy

    demo, demo_s = args.demo_policy, 0.0
    if demo is None:
        started = time.monotonic()
        demo = build_demo_policy(run_dir / "demo")
        demo_s = time.monotonic() - started
        print(f"demo policy built in {demo_s:.0f} s", file=sys.stderr)

    rows = []
    for name in names:
        rows += campaign(name, args, Path(demo).resolve(), clock)

    import platform

    import torch
    import transformers
    import trl

    header = (
        f"{platform.platform()}, CPython {platform.python_version()}, {os.cpu_count()} CPUs, torch {torch.__version__}"
        f" ({args.threads} thread(s)), transformers {transformers.__version__}, trl {trl.__version__};"
        f" code {code}; rule {args.rule}, noise {args.noise}, {args.users} bots; {args.eval_prompts} eval"
        f" and {args.train_prompts} train prompts, sample_prompts {args.sample_prompts}; pairwise campaigns: kinds"
        f" {args.kinds}, K {args.samples_per_prompt}; ratings campaigns: rating 0-1, K 1; overlap {args.overlap},"
        f" min_agreement {args.min_agreement};"
        f" machine {busy:.0f} % busy at the start"
    )
    (run_dir / "results.json").write_text(
        json.dumps(
            {
                "header": header,
                "args": {k: str(v) for k, v in vars(args).items()},
                "campaigns": {name: {**CAMPAIGNS[name], "settings": campaign_settings(name, args)} for name in names},
                "rows": rows,
            },
            indent=1,
        )
    )
    print(f"\n{header}")
    print("\n".join(markdown(rows)))


if __name__ == "__main__":
    main()
