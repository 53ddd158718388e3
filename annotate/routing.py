"""Hybrid labelling (Project.routing): what the project's judge's answer does to its task.

annotate.judges.record calls `route` inside its transaction, the task row locked, when the project routes and the
judge is the project's judge. Only an open task is routed: one that people (or the judge's own counted vote) have
completed needs nothing, and a gold task is never judged. The decision is kept on the task (Task.routed):

- confident (confidence ≥ Project.routing_confidence) and consistent (the judge's two runs with the sides swapped
  agreed, or the kind has no such check): the task takes the judge's label, `judge`: it completes (the project's
  counters with it) and leaves the queue. Except for an audit share (Project.routing_audit_share) of these, `audit`,
  which stay open for people exactly as before, so that the judge's label can be checked against theirs on tasks it
  was sure of. Which tasks are audited is drawn from the project and task ids, not from a clock or a global random
  state: the same task of the same project is always audited or never, whichever worker records it, and a test or a
  benchmark can count on it.
- otherwise (less confident, no confidence, or inconsistent): `people_first`, the task goes ahead in the queue by
  PEOPLE_FIRST_BOOST: people first answer what the judge cannot.

Routing applies to the answers the judge gives while the project routes; answers given before are not routed again.
"""

import random
from typing import Any

from django.db.models import F
from django.db.models.functions import Least

from annotate.models import Task

# A low-confidence task goes one priority up: ahead of every task of its own priority, but behind any the lead or a
# round put higher (a round's eval tasks, at 10, still go first: their answer decides whether the policy is kept).
PEOPLE_FIRST_BOOST = 1
MAX_PRIORITY = 32767  # Task.priority is a SmallIntegerField


def audited(task: Task) -> bool:
    """Whether a confidently judged task is in the project's audit share (the same answer for the same task)."""
    draw = random.Random(f"routing-audit:{task.project_id}:{task.pk}").random()
    return draw < task.project.routing_audit_share


def decision(task: Task, annotation: Any) -> str:
    """Task.Routed for the judge's answer to this task, by the project's settings."""
    project = task.project
    confident = annotation.confidence is not None and annotation.confidence >= project.routing_confidence
    if not confident or annotation.consistent is False:
        return Task.Routed.PEOPLE_FIRST
    return Task.Routed.AUDIT if audited(task) else Task.Routed.JUDGE


def route(task: Task, annotation: Any) -> None:
    """Route a task the project's judge just answered (inside record's transaction, the task row locked)."""
    if task.status != Task.Status.OPEN:
        return
    task.routed = decision(task, annotation)
    rows = Task.objects.filter(pk=task.pk)
    if task.routed == Task.Routed.JUDGE:
        task.status = Task.Status.COMPLETE
        rows.update(routed=task.routed, status=task.status)
        task.project.count_tasks(completed=1)  # last: the project's row is held until commit
    elif task.routed == Task.Routed.PEOPLE_FIRST:
        rows.update(routed=task.routed, priority=Least(F("priority") + PEOPLE_FIRST_BOOST, MAX_PRIORITY))
        task.refresh_from_db(fields=["priority"])
    else:
        rows.update(routed=task.routed)
