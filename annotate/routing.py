"""Hybrid labelling (Project.routing): what the project's judge's answer does to its task. Owned by the routing
work of issue 16; see ISSUE16_SPLIT.md."""

from typing import Any


def route(task: Any, annotation: Any) -> None:
    """Route a task the project's judge just answered (inside record's transaction, the task row locked)."""
    raise NotImplementedError("routing: to be written")
