"""AI judges: what a judge is shown of a task, how its verdict becomes an annotation, and a judge run.

A judge (annotate.models.Judge) answers tasks beside people: a reward model from the registry (training/judging.py)
or an LLM behind an OpenAI-compatible chat endpoint (annotate/llm_judge.py). Both turn `Item`s into `Verdict`s; this
module chooses the tasks, records each verdict as an annotation by the judge's identity, validated like any answer
(Task.clean_answer), and runs the whole as a job with progress, heartbeat and cancel (JudgeRun, annotate/jobs.py).

- A verdict's answer is in the task's own terms and positions: pairwise {"choice", "strength", "both_bad"} (a and b
  are the task's positions 0 and 1, whatever order the judge was shown), rating {"score", "labels"}, ranking
  {"ranking": [[response id, …], …]} best first. No answer means a failure: never guessed, never recorded as an
  annotation, counted and kept (the first ones) on the run.
- A judge's annotation never fills a task's overlap unless the project says so (Project.judge_votes_count, read by
  Task.counted_annotations), so people see the task as before.
- A judge answers a task once: a task it already answered, and a kind it cannot answer (written answers; ratings for
  a pairwise reward model), are skipped.
"""

import logging
import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction

from annotate.jobs import Heartbeat, fail_stale, hide_paths
from annotate.models import Annotation, Judge, JudgeRun, Task, TaskKind

logger = logging.getLogger(__name__)

BATCH = 32  # tasks handed to the judge at a time: progress and cancel are looked at between batches
KEPT_FAILURES = 50  # failures kept on a run (all are counted)


@dataclass
class Item:
    """What a judge is shown of one task."""

    task_id: int
    kind: str  # TaskKind: pairwise, rating, ranking
    messages: list[dict[str, str]]  # the prompt, in chat form
    responses: list[tuple[int, str]]  # (response id, text), in the task's position order (A, B, …)


@dataclass
class Verdict:
    """A judge's answer to one task, or its failure (answer None, error saying why)."""

    task_id: int
    answer: dict[str, Any] | None
    confidence: float | None = None  # 0–1
    consistent: bool | None = None  # pairwise: the two runs with the sides swapped agreed
    detail: dict[str, Any] = field(default_factory=dict)  # raw answers, each order's verdict, attempts
    error: str = ""


def items_for(tasks: Iterable[Task]) -> list[Item]:
    """The items for these tasks (their prompts and responses read in two queries per batch)."""
    tasks = list(tasks)
    rows = (
        Task.objects.filter(pk__in=[task.pk for task in tasks])
        .select_related("prompt")
        .prefetch_related("task_responses__response")
    )
    by_id = {task.pk: task for task in rows}
    items = []
    for task in tasks:
        task = by_id[task.pk]
        responses = sorted(task.task_responses.all(), key=lambda row: row.position)
        items.append(
            Item(
                task_id=task.pk,
                kind=task.kind,
                messages=task.prompt.messages,
                responses=[(row.response_id, row.response.content) for row in responses],
            )
        )
    return items


def can_answer(judge: Judge, kind: str) -> bool:
    """Whether the judge answers tasks of this kind: none writes answers; a reward model rates only with a rating
    head (objective ratings or both)."""
    if kind == TaskKind.WRITE:
        return False
    if judge.kind == Judge.Kind.REWARD_MODEL and kind == TaskKind.RATING:
        from training.judging import rates

        return rates(judge.model_version)
    return True


def answerer(judge: Judge) -> Callable[[list[Item], Callable[[], bool]], Iterator[Verdict]]:
    """What gives the judge's verdicts on a batch of items, as they come (not necessarily in order), for a whole run:
    a reward model loads once (training/judging.py), an LLM's batches go to its endpoint (annotate/llm_judge.py)."""
    if judge.kind == Judge.Kind.REWARD_MODEL:
        from training.judging import RewardModelJudge

        return RewardModelJudge(judge)
    from annotate.llm_judge import judge_items

    return lambda items, should_stop: judge_items(judge, items, should_stop=should_stop)


def record(judge: Judge, verdict: Verdict) -> Annotation | None:
    """Store a verdict as the judge's annotation, validated like any answer (ValidationError where the task does not
    accept it); None where the judge had answered the task already. Under hybrid labelling the project's judge's
    annotation routes its task (annotate/routing.py)."""
    from annotate import routing

    with transaction.atomic():
        task = Task.objects.select_for_update().select_related("project").get(pk=verdict.task_id)
        if Annotation.objects.filter(task=task, annotator=judge.user).exists():
            return None
        fields = task.clean_answer(verdict.answer or {})
        annotation = Annotation.objects.create(
            task=task,
            annotator=judge.user,
            source=Annotation.Source.JUDGE,
            confidence=verdict.confidence,
            consistent=verdict.consistent,
            judge_detail=verdict.detail,
            **fields,
        )
        if task.project.judge_votes_count:
            task.count_answer()  # as Task.counted_annotations counts it
        if task.project.routing and task.project.judge_id == judge.pk:
            routing.route(task, annotation)
    return annotation


def start(
    judge: Judge,
    *,
    scope: str = JudgeRun.Scope.OPEN,
    limit: int | None = None,
    round_number: int | None = None,
    created_by: Any = None,
    queue: bool = True,
) -> JudgeRun:
    """A pending run of the judge, queued once the transaction commits (a reward model's on the gpu queue, an LLM's
    on the default one; queue=False: for the caller to `run` in place); ValidationError naming the field for a run
    that cannot be."""
    from annotate.tasks import run_judge

    if scope not in JudgeRun.Scope.values:
        raise ValidationError({"scope": f"{scope!r} is not one of {', '.join(JudgeRun.Scope.values)}."})
    if scope == JudgeRun.Scope.ROUND and round_number is None:
        raise ValidationError({"round_number": "A run over a round's samples needs the round's number."})
    if scope == JudgeRun.Scope.SAMPLE and not limit:
        raise ValidationError({"limit": "A sample needs its size."})
    if limit is not None and limit < 1:
        raise ValidationError({"limit": "Give 1 or more."})
    job = JudgeRun.objects.create(
        judge=judge, scope=scope, limit=limit, round_number=round_number, created_by=created_by
    )
    if queue:
        name = "gpu" if judge.kind == Judge.Kind.REWARD_MODEL else settings.CELERY_TASK_DEFAULT_QUEUE
        transaction.on_commit(lambda: run_judge.apply_async((job.pk,), queue=name))
    return job


def tasks_for(run: JudgeRun) -> list[Task]:
    """The tasks a run is over, in id order: every open one, a training round's new ones (open or complete), or a
    random sample of the open and complete ones (seeded by the run's id); at most `limit`. Gold tasks never (their
    answer is known: a judge's accuracy on them is measured by annotate/judge_quality.py from its ordinary answers
    on tasks that became gold)."""
    project = run.judge.project
    tasks = Task.objects.filter(project=project, kind__in=project.task_kinds)
    if run.scope == JudgeRun.Scope.OPEN:
        tasks = tasks.filter(status=Task.Status.OPEN)
    elif run.scope == JudgeRun.Scope.ROUND:
        tasks = tasks.filter(round_number=run.round_number, status__in=[Task.Status.OPEN, Task.Status.COMPLETE])
    else:
        ids = list(tasks.filter(status__in=[Task.Status.OPEN, Task.Status.COMPLETE]).values_list("pk", flat=True))
        chosen = random.Random(run.pk).sample(ids, min(run.limit or len(ids), len(ids)))
        return list(Task.objects.filter(pk__in=chosen).order_by("pk"))
    tasks = tasks.order_by("pk")
    return list(tasks[: run.limit] if run.limit else tasks)


def run(job: JudgeRun) -> JudgeRun:
    """Run a pending judge run to its end (succeeded, cancelled, or failed with an error); a second delivery of the
    same message does nothing."""
    if not job.claim():
        return job
    judge = Judge.objects.select_related("project", "model_version", "user").get(pk=job.judge_id)
    counts = {"answered": 0, "failed": 0, "skipped": 0}
    failures: list[dict[str, Any]] = []
    try:
        with Heartbeat(job.beat, settings.ARBITER_JOB_HEARTBEAT_SECONDS, name=f"judge run {job.pk}"):
            tasks = tasks_for(job)
            job.beat(total=len(tasks))
            answered = set(
                Annotation.objects.filter(annotator=judge.user, task__in=tasks).values_list("task_id", flat=True)
            )
            kinds = {kind for kind in TaskKind.values if can_answer(judge, kind)}  # a reward model's files read once
            answer = answerer(judge)
            for start in range(0, len(tasks), BATCH):
                if job.cancel_is_requested():
                    break
                batch = tasks[start : start + BATCH]
                todo = [task for task in batch if task.pk not in answered and task.kind in kinds]
                counts["skipped"] += len(batch) - len(todo)
                for verdict in answer(items_for(todo), job.cancel_is_requested):
                    _keep(judge, verdict, counts, failures)
                job.beat(**counts, failures=failures)
    except Exception as error:
        logger.exception("judge run %s failed", job.pk)
        job.finish(JudgeRun.Status.FAILED, error=hide_paths(f"{type(error).__name__}: {error}"), **counts)
        return job
    status = JudgeRun.Status.CANCELLED if job.cancel_is_requested() else JudgeRun.Status.SUCCEEDED
    job.finish(status, failures=failures, **counts)
    return job


def _keep(judge: Judge, verdict: Verdict, counts: dict[str, int], failures: list[dict[str, Any]]) -> None:
    """Record one verdict, counting it as answered, failed (no answer, or one the task refuses) or skipped."""
    error = verdict.error
    if verdict.answer is not None:
        try:
            if record(judge, verdict) is None:
                counts["skipped"] += 1
                return
            counts["answered"] += 1
            return
        except ValidationError as refused:
            error = "; ".join(f"{name}: {' '.join(messages)}" for name, messages in refused.message_dict.items())
    counts["failed"] += 1
    if len(failures) < KEPT_FAILURES:
        last = (verdict.detail.get("attempts") or [""])[-1]
        failures.append({"task": verdict.task_id, "error": error or "no answer", "last_answer": str(last)[:2000]})


def fail_stale_runs() -> int:
    """Fail the running judge runs whose worker stopped beating (beat runs this every minute)."""
    failed = fail_stale(
        JudgeRun.objects.all(),
        timeout=settings.ARBITER_JOB_HEARTBEAT_TIMEOUT,
        message="The worker running this judge stopped responding (last heartbeat {seen}); answers it recorded stay.",
    )
    return len(failed)
