"""Big imports as jobs: a small upload is imported in the request as before; a big one is saved as an ImportJob that
a worker imports, all or nothing, with its progress, what it made, or the line and field of its error; the reaper
fails a job whose worker died."""

import gzip
import json
import os
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
from django.contrib.messages import get_messages
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection
from django.urls import reverse
from django.utils import timezone
from rest_framework.test import APIClient

from annotate import import_jobs, importing, tasks
from annotate.admin import project_leads_group
from annotate.import_jobs import fail_stale_imports, run_import_job
from annotate.importing import import_file
from annotate.models import ImportJob, Prompt, Task
from tests.celery_worker import Worker, wait_for

P = "/api/v1/projects/helpfulness"
ROWS = [{"id": f"q{n}", "prompt": f"Question {n}?", "responses": [f"Yes {n}.", f"No {n}."]} for n in range(5)]


def jsonl(*rows) -> bytes:
    return "".join(json.dumps(row) + "\n" for row in rows).encode()


@pytest.fixture
def big(settings):
    """Every file of more than 100 bytes is big: a job."""
    settings.ARBITER_IMPORT_INLINE_BYTES = 100


@pytest.fixture
def lead_client(lead):
    client = APIClient()
    client.force_authenticate(lead)
    return client


@pytest.fixture
def enqueued(monkeypatch):
    """The job ids handed to the Celery task (no broker here)."""
    ids = []
    monkeypatch.setattr(tasks.run_import, "delay", ids.append)
    return ids


@pytest.fixture
def upload(lead_client, django_capture_on_commit_callbacks):
    def upload(content: bytes, name="big.jsonl", **fields):
        with django_capture_on_commit_callbacks(execute=True):
            body = {"file": SimpleUploadedFile(name, content), **fields}
            return lead_client.post(f"{P}/import/", body, format="multipart")

    return upload


def job_file(job_id):
    return ImportJob.objects.get(pk=job_id).file


class TestApi:
    def test_a_big_upload_is_accepted_as_a_job_enqueued_after_commit(self, big, upload, enqueued, lead, settings):
        response = upload(jsonl(*ROWS))

        assert response.status_code == 202
        job = response.json()
        assert response.headers["Location"] == f"{P}/imports/{job['id']}/"
        assert (job["status"], job["file_name"], job["rows_read"], job["result"]) == ("pending", "big.jsonl", 0, None)
        assert job["created_by"] == "lead" and enqueued == [job["id"]]
        assert not Prompt.objects.exists()
        saved = job_file(job["id"])
        assert saved.name.startswith("imports/") and saved.path.startswith(str(settings.MEDIA_ROOT))
        assert Path(saved.path).read_bytes() == jsonl(*ROWS)

    def test_the_job_imports_the_file_and_says_what_it_made(self, big, upload, enqueued, lead_client):
        job_id = upload(jsonl(*ROWS)).json()["id"]
        path = job_file(job_id).path

        assert tasks.run_import(job_id) == "succeeded"

        job = lead_client.get(f"{P}/imports/{job_id}/").json()
        assert job["status"] == "succeeded" and job["rows_read"] == 5
        assert (job["error"], job["line"], job["field"]) == ("", None, None)
        assert job["result"] == {
            "format": "responses",
            "filetype": "jsonl",
            "rows": 5,
            "prompts_created": 5,
            "prompts_existing": 0,
            "responses_created": 10,
            "tasks_created": 15,  # per prompt: two ratings and a pairwise
            "annotations_created": 0,
            "gold_tasks_created": 0,
        }
        assert job["started_at"] <= job["finished_at"]
        assert Prompt.objects.count() == 5 and Task.objects.count() == 15
        assert not job_file(job_id) and not os.path.exists(path)  # the upload is deleted
        assert [j["id"] for j in lead_client.get(f"{P}/imports/").json()["results"]] == [job_id]

    def test_a_bad_row_fails_the_job_naming_its_line_and_field_and_writes_nothing(
        self, big, upload, enqueued, lead_client
    ):
        rows = [*ROWS[:2], {"id": "q9", "prompt": "Hi?", "responses": ["Fine.", ""]}, *ROWS[2:]]
        job_id = upload(jsonl(*rows)).json()["id"]

        assert tasks.run_import(job_id) == "failed"

        job = lead_client.get(f"{P}/imports/{job_id}/").json()
        assert (job["status"], job["line"], job["field"], job["result"]) == ("failed", 3, "responses", None)
        assert job["error"] == "line 3, field 'responses': response 2 is empty"
        assert not Prompt.objects.exists() and not Task.objects.exists()
        assert not job_file(job_id)

    def test_a_forced_format_goes_with_the_job(self, big, upload, enqueued):
        csv = b"id,prompt\n" + b"".join(b"q%d,Question %d?\n" % (n, n) for n in range(20))
        job_id = upload(csv, name="prompts.csv", format="prompts").json()["id"]

        assert tasks.run_import(job_id) == "succeeded"
        job = ImportJob.objects.get(pk=job_id)
        assert (job.format, job.result["format"], job.result["filetype"], job.rows_read) == (
            "prompts",
            "prompts",
            "csv",
            20,
        )

    def test_a_gzip_file_is_big_by_what_it_unpacks_to(self, upload, enqueued, settings):
        content = jsonl(*ROWS)
        settings.ARBITER_IMPORT_INLINE_BYTES = len(content)
        assert upload(gzip.compress(content), name="rows.jsonl.gz").status_code == 201

        settings.ARBITER_IMPORT_INLINE_BYTES = len(content) - 1
        assert len(gzip.compress(content)) < len(content) - 1
        assert upload(gzip.compress(content), name="rows.jsonl.gz").status_code == 202

    @pytest.mark.parametrize("packed", [False, True])
    def test_a_file_over_the_limit_is_refused_before_anything_is_saved_or_queued(
        self, big, upload, enqueued, settings, packed
    ):
        content = jsonl(*ROWS)
        settings.ARBITER_IMPORT_MAX_BYTES = len(content) - 1
        response = upload(gzip.compress(content) if packed else content, name="rows.jsonl.gz" if packed else "x.jsonl")

        assert response.status_code == 400
        assert "ARBITER_IMPORT_MAX_BYTES" in response.json()["detail"]
        assert not ImportJob.objects.exists() and not enqueued
        assert not (Path(settings.MEDIA_ROOT) / "imports").exists()

    def test_a_small_upload_is_still_imported_in_the_request(self, upload, enqueued):
        response = upload(jsonl(*ROWS))

        assert response.status_code == 201 and response.json()["prompts_created"] == 5
        assert not ImportJob.objects.exists() and not enqueued


def queued(project, content=None):
    """A pending job for `content` (ROWS by default), as a big upload leaves it."""
    job = ImportJob(project=project, file_name="big.jsonl")
    job.file.save("big.jsonl", SimpleUploadedFile("big.jsonl", content or jsonl(*ROWS)), save=False)
    job.save()
    return job


class TestJob:
    def test_import_file_reports_the_rows_read_after_each_batch(self, project, monkeypatch, tmp_path):
        monkeypatch.setattr(importing, "BATCH_SIZE", 2)
        path = tmp_path / "rows.jsonl"
        path.write_bytes(jsonl(*ROWS))
        seen = []

        import_file(project, path, progress=seen.append)

        assert seen == [2, 4, 5]

    def test_a_message_delivered_again_leaves_a_running_job_alone(self, project):
        assert tasks.run_import.acks_late  # so that a worker lost before it ran the message leaves it to come again
        job = queued(project)
        assert job.claim()

        assert tasks.run_import(job.pk) == "running"
        assert not Prompt.objects.exists() and ImportJob.objects.get(pk=job.pk).file

    def test_a_silent_running_job_fails_with_a_message_and_its_file_goes(self, project, settings):
        silent, alive = queued(project), queued(project)
        for job in (silent, alive):
            assert job.claim()
        long_ago = timezone.now() - settings.ARBITER_JOB_HEARTBEAT_TIMEOUT - timedelta(seconds=1)
        ImportJob.objects.filter(pk=silent.pk).update(heartbeat_at=long_ago)
        path = silent.file.path

        assert fail_stale_imports() == 1

        silent.refresh_from_db(), alive.refresh_from_db()
        assert silent.status == "failed" and silent.error.startswith("The worker stopped sending heartbeats (last at")
        assert "Nothing was imported" in silent.error and "upload the file again" in silent.error
        assert not silent.file and not os.path.exists(path)
        assert alive.status == "running" and alive.file
        assert not silent.beat(rows_read=10)  # a worker that comes back finds its job failed


@pytest.fixture
def staff_lead(lead):
    lead.groups.add(project_leads_group())
    return lead


def test_a_big_file_in_the_admin_queues_a_job_and_shows_its_page(client, staff_lead, project, big, enqueued):
    client.force_login(staff_lead)
    url = reverse("admin:annotate_project_import", args=[project.pk])

    response = client.post(url, {"file": SimpleUploadedFile("big.jsonl", jsonl(*ROWS)), "format": ""})

    job = ImportJob.objects.get()
    assert response.status_code == 302
    assert response.url == reverse("admin:annotate_importjob_change", args=[job.pk])
    [message] = [str(m) for m in get_messages(response.wsgi_request)]
    assert message == "The file is big: a worker imports it, all or nothing. Reload this page to follow it."
    page = client.get(response.url).content.decode()
    assert "Pending" in page and "big.jsonl" in page
    assert (job.created_by, job.status) == (staff_lead, "pending") and not Prompt.objects.exists()

    run_import_job(job)
    page = client.get(response.url).content.decode()
    assert "Succeeded" in page and "5 imported" in page


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
class TestWhileItRuns:
    def run_in_thread(self, job):
        def run():
            try:
                run_import_job(job)
            finally:
                connection.close()

        worker = threading.Thread(target=run)
        worker.start()
        return worker

    def test_the_rows_read_so_far_show_while_nothing_is_committed(self, project, big, monkeypatch, settings):
        settings.ARBITER_JOB_HEARTBEAT_SECONDS = 0.05
        monkeypatch.setattr(importing, "BATCH_SIZE", 2)
        rows = [{"id": f"q{n}", "prompt": f"Question {n}?"} for n in range(10)]
        real = import_jobs.import_file

        def slowly(*args, progress, **kwargs):
            return real(*args, progress=lambda rows: progress(rows) or time.sleep(0.3), **kwargs)

        monkeypatch.setattr(import_jobs, "import_file", slowly)
        job = queued(project, jsonl(*rows))
        worker = self.run_in_thread(job)
        seen = set()
        while worker.is_alive():
            seen.add((*ImportJob.objects.values_list("status", "rows_read").get(pk=job.pk), Prompt.objects.count()))
            time.sleep(0.02)
        worker.join()

        during = {read for status, read, prompts in seen if status == "running" and 0 < read < 10 and prompts == 0}
        assert len(during) >= 2, seen  # it moved, and the rows waited for the end to be committed
        job.refresh_from_db()
        assert (job.status, job.rows_read, Prompt.objects.count()) == ("succeeded", 10, 10)

    def test_a_job_failed_while_it_ran_rolls_its_import_back(self, project, big, monkeypatch, settings):
        read, reaped = threading.Event(), threading.Event()
        real = import_jobs.import_file

        def waiting(*args, progress, **kwargs):
            def report(rows):
                read.set()
                reaped.wait(timeout=30)

            return real(*args, progress=report, **kwargs)

        monkeypatch.setattr(import_jobs, "import_file", waiting)
        job = queued(project)
        worker = self.run_in_thread(job)
        assert read.wait(timeout=30)
        long_ago = timezone.now() - settings.ARBITER_JOB_HEARTBEAT_TIMEOUT - timedelta(seconds=1)
        ImportJob.objects.filter(pk=job.pk).update(heartbeat_at=long_ago)
        assert fail_stale_imports() == 1
        reaped.set()
        worker.join(timeout=60)

        job.refresh_from_db()
        assert job.status == "failed" and "stopped sending heartbeats" in job.error and job.result is None
        assert not Prompt.objects.exists() and not Task.objects.exists()


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_celery_worker_runs_a_big_upload(project, big, lead_client, worker_env, tmp_path):
    body = {"file": SimpleUploadedFile("big.jsonl", jsonl(*ROWS))}
    response = lead_client.post(f"{P}/import/", body, format="multipart")
    assert response.status_code == 202
    job = ImportJob.objects.get(pk=response.json()["id"])

    worker = Worker(worker_env, tmp_path / "worker.log", queues="default")
    try:
        wait_for(lambda: ImportJob.objects.get(pk=job.pk).status == "succeeded", "the import job", worker, timeout=120)
    finally:
        worker.stop()
    assert "Task annotate.tasks.run_import[" in worker.output()
    assert Prompt.objects.filter(project=project).count() == 5
