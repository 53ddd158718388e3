"""Celery tasks of the annotation app: thin wrappers around model methods and the export and import functions."""

from celery import shared_task

from annotate.exports import fail_stale_exports as fail_stale_export_snapshots
from annotate.exports import run_snapshot
from annotate.import_jobs import fail_stale_imports as fail_stale_import_jobs
from annotate.import_jobs import run_import_job
from annotate.judges import fail_stale_runs
from annotate.judges import run as run_judge_job
from annotate.models import Assignment, DatasetSnapshot, ImportJob, JudgeRun, Project, QualityReport
from annotate.quality_reports import refresh_quality_reports as queue_quality_refreshes
from annotate.quality_reports import run_quality_report


@shared_task
def expire_leases() -> int:
    """Close leases whose time ran out (beat runs this every few minutes)."""
    return Assignment.objects.expire_stale()


# Exports and imports are acknowledged when they end, as rounds are: a message whose worker was lost before it ran
# (killed with messages prefetched) is delivered again instead of leaving its job pending for good. A second delivery
# is harmless: the job's conditional claim refuses it, and a job its dead worker left running is failed by beat.
@shared_task(acks_late=True, reject_on_worker_lost=False)
def export_snapshot(snapshot_id: int) -> str:
    """Write a pending dataset snapshot (progress in its rows_written); returns the status it ends in."""
    return run_snapshot(DatasetSnapshot.objects.get(pk=snapshot_id)).status


@shared_task(acks_late=True, reject_on_worker_lost=False)
def run_import(job_id: int) -> str:
    """Import a pending import job's file (progress in its rows_read); returns the status it ends in."""
    return run_import_job(ImportJob.objects.select_related("project").get(pk=job_id)).status


@shared_task
def fail_stale_exports() -> int:
    """Fail running exports whose worker stopped sending heartbeats (beat runs this every minute)."""
    return fail_stale_export_snapshots()


@shared_task
def recount_task_counters() -> int:
    """Recount every project's task counters, logging and repairing drift (beat runs this every hour)."""
    return Project.objects.recount_tasks()


@shared_task
def fail_stale_imports() -> int:
    """Fail running import jobs whose worker stopped sending heartbeats (beat runs this every minute)."""
    return fail_stale_import_jobs()


@shared_task(acks_late=True, reject_on_worker_lost=False)
def refresh_quality(report_id: int) -> str:
    """Compute a pending quality report's figures (the Quality page's); returns the status it ends in."""
    return run_quality_report(QualityReport.objects.get(pk=report_id)).status


@shared_task
def refresh_quality_reports() -> int:
    """Queue a quality refresh for each project with new answers, and reap dead ones (beat, every few minutes)."""
    return queue_quality_refreshes()


@shared_task(acks_late=True, reject_on_worker_lost=False)
def run_judge(run_id: int) -> str:
    """Run a pending judge run (progress in its counts); returns the status it ends in."""
    return run_judge_job(JudgeRun.objects.get(pk=run_id)).status


@shared_task
def fail_stale_judge_runs() -> int:
    """Fail running judge runs whose worker stopped sending heartbeats (beat runs this every minute)."""
    return fail_stale_runs()
