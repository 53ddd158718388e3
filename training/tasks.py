"""Celery tasks of the training app: thin wrappers around training/rounds.py."""

from celery import shared_task
from django.conf import settings

from training.rounds import fail_stale_rounds as fail_stale
from training.rounds import run_round
from training.workers import report_devices  # noqa: F401 (connects the device reports to the worker's signals)


@shared_task(acks_late=True, reject_on_worker_lost=False, time_limit=settings.ARBITER_ROUND_TIME_LIMIT)
def run_training_round(round_id: int) -> str:
    """Run a queued training round (routed to the `gpu` queue); returns the status it ends in."""
    return run_round(round_id).status


@shared_task
def fail_stale_rounds() -> int:
    """Fail running rounds whose worker stopped sending heartbeats (beat runs this every minute)."""
    return fail_stale()
