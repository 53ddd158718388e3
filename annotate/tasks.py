"""Celery tasks of the annotation app: thin wrappers around model methods."""

from celery import shared_task

from annotate.exports import run_snapshot
from annotate.models import Assignment, DatasetSnapshot


@shared_task
def expire_leases() -> int:
    """Close leases whose time ran out (beat runs this every few minutes)."""
    return Assignment.objects.expire_stale()


@shared_task
def export_snapshot(snapshot_id: int) -> str:
    """Write a pending dataset snapshot (progress in its rows_written); returns the status it ends in."""
    return run_snapshot(DatasetSnapshot.objects.get(pk=snapshot_id)).status
