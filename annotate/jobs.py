"""Long jobs that Celery workers run (exports, import jobs, training rounds): one status move at a time, a heartbeat
while they run, and the reaper that fails those whose worker died.

A job changes status only by a conditional UPDATE (`move`), so a message delivered twice never runs it twice, and a
worker that turns out to be alive after all cannot mark "done" a job that the reaper failed. While a job runs, a
`Heartbeat` thread records every few seconds that its worker is alive, whatever the job's own thread is doing (a
long query, a model loading); beat runs the reapers every minute, and each fails with `fail_stale` the running jobs
whose heartbeat is older than a timeout, with a message that says what happened.
"""

import logging
import re
import threading
from collections.abc import Callable, Iterable
from datetime import timedelta
from typing import Any

from django.db import DatabaseError, connection, models
from django.utils import timezone

logger = logging.getLogger(__name__)

# The same values in every job's statuses.
RUNNING, FAILED = "running", "failed"

# An absolute, home or relative path in an error message: what a lead's view of a job's error leaves out.
_PATH = re.compile(r"(?<![\w.~/:-])(?:~|\.{1,2})?/[^\s'\"`,;()\[\]<>]+")


def hide_paths(text: str) -> str:
    """An error message as leads see it: every server path in it is `<path>` (the worker's log has them)."""
    return _PATH.sub("<path>", text)


def move(job: models.Model, from_statuses: Iterable[str], **fields: Any) -> bool:
    """Change the job's row only if it is still in one of `from_statuses`; True if this call changed it."""
    changed = type(job)._default_manager.filter(pk=job.pk, status__in=list(from_statuses)).update(**fields)
    if changed:
        for name, value in fields.items():
            setattr(job, name, value)
    return bool(changed)


class Heartbeat(threading.Thread):
    """Calls `beat` every `seconds` on a thread and a database connection of its own, from start() (or `with`) to
    stop()."""

    def __init__(self, beat: Callable[[], Any], seconds: float, name: str) -> None:
        super().__init__(daemon=True, name=name)
        self.beat, self.seconds, self.stopping = beat, seconds, threading.Event()

    def run(self) -> None:
        try:
            while not self.stopping.wait(self.seconds):
                try:
                    self.beat()
                except DatabaseError as error:
                    # A lost connection, or SQLite's one writer busy (an import's transaction holds it to its end):
                    # a missed beat, not a dead worker. The next one tries again on a fresh connection.
                    logger.warning("%s missed a beat: %s", self.name, error)
                    connection.close()
        finally:
            connection.close()  # this thread's own connection

    def stop(self) -> None:
        self.stopping.set()
        self.join()

    def __enter__(self) -> "Heartbeat":
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def fail_stale(jobs: models.QuerySet, *, timeout: timedelta, message: str) -> list[Any]:
    """Fail the running jobs whose last heartbeat is older than `timeout`, with `message` ("{seen}" becomes the time
    of that heartbeat); returns the jobs it failed."""
    failed = []
    for job in jobs.filter(status=RUNNING, heartbeat_at__lt=timezone.now() - timeout):
        seen = job.heartbeat_at
        error = message.format(seen=f"{seen:%Y-%m-%d %H:%M:%S} UTC")
        # Conditional on the heartbeat too: a worker that beat just now is alive after all.
        if jobs.model._default_manager.filter(pk=job.pk, status=RUNNING, heartbeat_at=seen).update(
            status=FAILED, error=error, finished_at=seen
        ):
            job.status, job.error, job.finished_at = FAILED, error, seen
            logger.warning("%s: %s", job, error)
            failed.append(job)
    return failed
