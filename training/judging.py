"""Reward-model judges. Owned by the judge-run work of issue 16."""

from collections.abc import Iterator
from typing import Any


def rates(version: Any) -> bool:
    """Whether this reward model has a rating head (objective ratings or both)."""
    raise NotImplementedError


def reward_model_verdicts(judge: Any, items: list[Any]) -> Iterator[Any]:
    """The reward model's verdicts on these items (annotate.judges.Item → Verdict)."""
    raise NotImplementedError
