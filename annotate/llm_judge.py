"""LLM judges behind an OpenAI-compatible chat endpoint. Owned by the LLM-judge work of issue 16."""

from collections.abc import Callable, Iterator
from typing import Any


def judge_items(judge: Any, items: list[Any], *, should_stop: Callable[[], bool]) -> Iterator[Any]:
    """The LLM judge's verdicts on these items (annotate.judges.Item → Verdict)."""
    raise NotImplementedError("LLM judges: to be written")
