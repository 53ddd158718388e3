"""Big imports as Celery jobs: a file too big to import within a web request is saved, and a worker imports it.

The admin's Import data page and the API call `import_upload`. A file up to ARBITER_IMPORT_INLINE_BYTES (a gzip
file: what its trailer says it unpacks to) is imported at once, in the request. A bigger one is saved under
MEDIA_ROOT/imports/ with a pending ImportJob, and the Celery task calls `run_import_job`: it claims the job once (a
message delivered twice does nothing), imports the file with import_file, all or nothing as every import, while a
heartbeat thread (annotate/jobs.py) records that the worker is alive and how many rows it has read, and ends the job
succeeded with the counts, or failed with the error's line and field and nothing written. The job's end is written
in the import's own transaction, so a job is succeeded exactly when its rows are committed, and a job that the
reaper failed meanwhile rolls its import back. `fail_stale_imports` (beat) fails running jobs whose worker died.
The uploaded file is deleted when its job ends.
"""

import logging
from dataclasses import asdict
from typing import Any

from django.conf import settings
from django.core.files.uploadedfile import UploadedFile
from django.db import transaction

from annotate.importing import ImportFailed, ImportResult, check_size, import_file, too_large
from annotate.jobs import Heartbeat, fail_stale, hide_paths
from annotate.models import ImportJob, Project

logger = logging.getLogger(__name__)

GZIP_MAGIC = b"\x1f\x8b"
Status = ImportJob.Status


def import_upload(
    project: Project, upload: UploadedFile, *, format: str | None = None, user: Any = None
) -> ImportResult | ImportJob:
    """Import a small upload now (ImportFailed names the line and field), or save a big one as a queued job."""
    size = unpacked_size(upload)
    # A file over the limit is refused now, so nothing is saved or queued for it.
    check_size(upload)
    if size > settings.ARBITER_IMPORT_MAX_BYTES:
        raise too_large(f"the file unpacks to {size:,} bytes")
    if size <= settings.ARBITER_IMPORT_INLINE_BYTES:
        return import_file(project, upload, format=format)
    job = ImportJob(
        project=project,
        file_name=upload.name or "",
        format=format or "",
        created_by=user if getattr(user, "is_authenticated", False) else None,
    )
    job.file.save(upload.name or "upload", upload, save=False)
    job.save()
    transaction.on_commit(lambda: _enqueue(job))
    return job


def _enqueue(job: ImportJob) -> None:
    from annotate.tasks import run_import  # annotate.tasks imports this module

    run_import.delay(job.pk)


def unpacked_size(upload: UploadedFile) -> int:
    """The upload's size; a gzip file's is what it unpacks to, as its trailer says (modulo 4 GiB, as gzip keeps it)."""
    size = upload.size or 0
    upload.seek(0)
    if upload.read(2) == GZIP_MAGIC and size >= 18:  # 10 bytes of header, 8 of trailer
        upload.seek(size - 4)
        size = int.from_bytes(upload.read(4), "little")
    upload.seek(0)
    return size


class _FailedMeanwhile(Exception):
    """The reaper failed the job while it ran (its heartbeat was late): the import must not commit."""


def run_import_job(job: ImportJob) -> ImportJob:
    """Import a pending job's file and end the job succeeded or failed; one no longer pending is returned as it is.

    A job its dead worker left running stays so when its message comes again: fail_stale_imports fails it.
    """
    if not job.claim():
        job.refresh_from_db()
        return job
    read = 0

    def progress(rows: int) -> None:
        nonlocal read
        read = rows

    # The heartbeat writes the progress: this connection's writes stay in the import's transaction until it ends.
    # (On SQLite, whose one writer the import holds to its end, neither shows before; nor can the reaper fail the
    # job meanwhile.)
    heartbeat = Heartbeat(
        lambda: job.beat(rows_read=read), settings.ARBITER_JOB_HEARTBEAT_SECONDS, name=f"heartbeat-import-{job.pk}"
    )
    try:
        # The transaction ends before the heartbeat is stopped and joined: a beat waiting for the job's row, which
        # the job's end locks, would otherwise wait for a transaction that waits for it.
        with heartbeat, transaction.atomic():
            result = import_file(job.project, job.file.path, format=job.format or None, progress=progress)
            if not job.finish(Status.SUCCEEDED, rows_read=result.rows, result=asdict(result)):
                raise _FailedMeanwhile
    except ImportFailed as error:
        where = {"error_line": error.line, "error_field": error.field or ""}
        job.finish(Status.FAILED, rows_read=read, error=str(error), **where)
    except _FailedMeanwhile:
        logger.warning("Import job %s was failed while it ran: its import is rolled back", job.pk)
    except Exception as error:
        logger.exception("Import job %s failed", job.pk)
        job.finish(Status.FAILED, rows_read=read, error=f"{type(error).__name__}: {hide_paths(str(error))}")
    job.delete_file()
    job.refresh_from_db()
    return job


def fail_stale_imports() -> int:
    """Fail running import jobs whose worker stopped sending heartbeats (killed, out of memory, machine lost) and
    delete their files; returns how many (Celery beat runs this every minute)."""
    failed = fail_stale(
        ImportJob.objects.all(),
        timeout=settings.ARBITER_JOB_HEARTBEAT_TIMEOUT,
        message="The worker stopped sending heartbeats (last at {seen}): it was killed or lost its machine. Nothing "
        "was imported (an import is all or nothing): upload the file again.",
    )
    for job in failed:
        job.delete_file()
    return len(failed)
