"""Reward-model judges: a reward model from the registry answering a project's tasks (annotate/judges.py runs them).

The model scores each response alone, prompt and answer together, through training.engine.generate.score (on the
GPU when there is one), and the verdict follows from the scores:
- pairwise: p(A) = σ(r_a − r_b), Bradley-Terry's probability that a rater prefers A; the higher score wins (a tie
  only for equal scores), "much better" (strength 2) when p ≥ STRONG, and the confidence is |2p − 1| (0 for a coin
  toss, 1 for certainty). A reward model reads each response on its own, so showing the pair the other way round
  cannot change its answer: `consistent` is True by construction, not measured;
- rating (a model trained on ratings, `rates`): its score output σ(z_0), on [0, 1] as trained (rating_min → 0,
  rating_max → 1), put back on the project's scale and rounded; the labels whose predicted share of raters is at
  least a half; the confidence is how close the unrounded score is to the point it rounds to (1 on a point, 0 half
  way between two);
- ranking: best first by score (equal scores tied), the confidence that of the top pick against the runner-up.
A rating model's reward (its weighted outputs, common.WeightedOutputs) is bounded, so its pairwise confidences are
small beside a pairs-trained model's: choose Project.routing_confidence for the judge the project routes by.
"""

import math
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from training.engine.model_files import read_reward_head

if TYPE_CHECKING:
    from annotate.judges import Item, Verdict
    from annotate.models import Judge
    from models_registry.models import ModelVersion

STRONG = 0.8  # p(A) at which A is "much better": a Bradley-Terry model expecting four raters in five to prefer it
# Tasks per reward_model_verdicts call on a GPU. The model loads once per call: a 0.5B model (Qwen2.5-0.5B's shape)
# loads in about 2 s, which on a GPU is more than scoring a few hundred answers; on 2 CPU cores each answer takes
# about 1 s, loading is noise, and a run keeps its usual batch, for progress and cancel every few tasks.
GPU_BATCH = 256


def rates(version: "ModelVersion") -> bool:
    """Whether this reward model has a rating head (objective ratings or both), read from its files (no torch)."""
    head = read_reward_head(version.path)
    return head is not None and head.get("objective") != "pairs"


def batch_size(default: int) -> int:
    """Tasks to hand the reward model at a time in a run: GPU_BATCH on an accelerator, else the run's default."""
    from training.engine.common import pick_device

    return GPU_BATCH if pick_device().type != "cpu" else default


def reward_model_verdicts(judge: "Judge", items: list["Item"]) -> Iterator["Verdict"]:
    """The reward model's verdicts on these items, in their order (the model loads once per call, twice when ratings
    and other kinds come together: ratings read its outputs each, the others its reward)."""
    from annotate.judges import Verdict
    from training.engine.generate import score

    path = judge.model_version.path
    rated = [item for item in items if item.kind == "rating"]
    ordered = [item for item in items if item.kind != "rating"]
    outputs: list[dict[str, float]] = []
    if rated:
        names = read_reward_head(path)["outputs"]  # [score, *labels]
        rows = score(path, [_conversation(item, text) for item in rated for _, text in item.responses], outputs=True)
        outputs = [dict(zip(names, row, strict=True)) for row in rows.tolist()]
    rewards = []
    if ordered:
        rewards = score(path, [_conversation(item, text) for item in ordered for _, text in item.responses]).tolist()
    by_task = {}
    for item, row in zip(rated, outputs, strict=True):
        by_task[item.task_id] = _rating(row, judge.project)
    in_order = iter(rewards)
    for item in ordered:
        scores = [next(in_order) for _ in item.responses]
        if item.kind == "pairwise":
            by_task[item.task_id] = _pairwise(scores)
        else:
            by_task[item.task_id] = _ranking([response_id for response_id, _ in item.responses], scores)
    for item in items:
        answer, confidence, detail = by_task[item.task_id]
        yield Verdict(item.task_id, answer, confidence=confidence, consistent=True, detail=detail)


def _conversation(item: "Item", text: str) -> list[dict[str, str]]:
    return [*item.messages, {"role": "assistant", "content": text}]


def _pairwise(scores: list[float]) -> tuple[dict[str, Any], float, dict[str, Any]]:
    r_a, r_b = scores
    p = (1 + math.tanh((r_a - r_b) / 2)) / 2  # σ(r_a − r_b), without overflow for a wide gap
    choice = "a" if r_a > r_b else "b" if r_b > r_a else "tie"
    strength = None if choice == "tie" else 2 if max(p, 1 - p) >= STRONG else 1
    answer = {"choice": choice, "strength": strength, "both_bad": False}
    return answer, abs(2 * p - 1), {"scores": scores, "p_a": p}


def _rating(outputs: dict[str, float], project: Any) -> tuple[dict[str, Any], float, dict[str, Any]]:
    (_, scaled), *labels = outputs.items()  # the score output first, then one per label
    point = project.rating_min + scaled * (project.rating_max - project.rating_min)
    score = round(point)
    answer = {"score": score, "labels": [name for name, share in labels if share >= 0.5 and name in project.labels]}
    return answer, 1 - 2 * abs(point - score), {"outputs": outputs, "point": point}


def _ranking(response_ids: list[int], scores: list[float]) -> tuple[dict[str, Any], float, dict[str, Any]]:
    by_score: dict[float, list[int]] = {}
    for response_id, value in zip(response_ids, scores, strict=True):
        by_score.setdefault(value, []).append(response_id)
    ranking = [by_score[value] for value in sorted(by_score, reverse=True)]
    best, runner_up = sorted(scores, reverse=True)[:2]
    confidence = math.tanh((best - runner_up) / 2)  # |2σ(r_1 − r_2) − 1|, as for a pair
    return {"ranking": ranking}, confidence, {"scores": dict(zip(map(str, response_ids), scores, strict=True))}
