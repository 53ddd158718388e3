"""Celery tasks of the annotation app: thin wrappers around model methods."""

from celery import shared_task

from annotate.models import Assignment


@shared_task
def expire_leases() -> int:
    """Close leases whose time ran out (beat runs this every few minutes)."""
    return Assignment.objects.expire_stale()
