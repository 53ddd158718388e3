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


def rates(version: "ModelVersion") -> bool:
    """Whether this reward model has a rating head (objective ratings or both), read from its files (no torch)."""
    head = read_reward_head(version.path)
    return head is not None and head.get("objective") != "pairs"


class RewardModelJudge:
    """A reward-model judge over a run's batches: the model loads once, at the first batch, on the GPU when there is
    one, and goes with this object."""

    def __init__(self, judge: "Judge") -> None:
        self.judge, self.path = judge, judge.model_version.path
        self.loaded: tuple[Any, Any] | None = None

    def __call__(self, items: list["Item"], should_stop: Any = None) -> Iterator["Verdict"]:
        """The verdicts on these items, in their order (ratings read the model's outputs each, the others its
        reward)."""
        from annotate.judges import Verdict
        from training.engine.generate import load_scorer, score

        if not items:
            return
        self.loaded = self.loaded or load_scorer(self.path)
        rated = [item for item in items if item.kind == "rating"]
        ordered = [item for item in items if item.kind != "rating"]
        by_task = {}
        if rated:
            names = read_reward_head(self.path)["outputs"]  # [score, *labels]
            chats = [_conversation(item, text) for item in rated for _, text in item.responses]
            rows = score(self.path, chats, outputs=True, loaded=self.loaded).tolist()
            for item, row in zip(rated, rows, strict=True):
                by_task[item.task_id] = _rating(dict(zip(names, row, strict=True)), self.judge.project)
        if ordered:
            chats = [_conversation(item, text) for item in ordered for _, text in item.responses]
            rewards = iter(score(self.path, chats, loaded=self.loaded).tolist())
            for item in ordered:
                scores = [next(rewards) for _ in item.responses]
                if item.kind == "pairwise":
                    by_task[item.task_id] = _pairwise(scores)
                else:
                    by_task[item.task_id] = _ranking([response_id for response_id, _ in item.responses], scores)
        for item in items:
            answer, confidence, detail = by_task[item.task_id]
            yield Verdict(item.task_id, answer, confidence=confidence, consistent=True, detail=detail)


def reward_model_verdicts(judge: "Judge", items: list["Item"]) -> Iterator["Verdict"]:
    """The reward model's verdicts on these items (one batch; a run keeps one RewardModelJudge for all of its)."""
    return RewardModelJudge(judge)(items)


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
