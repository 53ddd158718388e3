"""Exports as jobs: the file grows at a known path and is renamed into place, a heartbeat while it runs, the reaper
that fails an export whose worker died (a real Celery worker killed mid-export), and a message delivered twice."""

import contextlib
import json
import os
import signal
import threading
import time
from datetime import timedelta

import pytest
from django.db import connection, transaction
from django.db.migrations.executor import MigrationExecutor
from django.utils import timezone
from rest_framework.test import APIClient

from annotate import exports
from annotate.exports import create_snapshot, fail_stale_exports, run_snapshot
from annotate.importing import import_file
from annotate.models import DatasetSnapshot
from annotate.tasks import export_snapshot
from tests.celery_worker import Worker, wait_for

P = "/api/v1/projects/helpfulness"


@pytest.fixture
def pairs(project, tmp_path):
    """The project with three imported preference pairs: a pairs export of three rows."""
    rows = [{"prompt": f"Question {n}?", "chosen": f"Good {n}.", "rejected": f"Bad {n}."} for n in range(3)]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    import_file(project, path)
    return project


def running(project, settings, silent_for=None):
    """A claimed (running) pairs export with a part file; its heartbeat `silent_for` old, if given."""
    snapshot = create_snapshot(project, kind="pairs")
    assert snapshot.claim()
    snapshot.part_path.parent.mkdir(parents=True, exist_ok=True)
    snapshot.part_path.write_bytes(b'{"prompt": "half a row')
    if silent_for is not None:
        long_ago = timezone.now() - silent_for
        DatasetSnapshot.objects.filter(pk=snapshot.pk).update(heartbeat_at=long_ago)
    return snapshot


class TestPartFile:
    def test_the_file_grows_at_its_part_path_under_media_root_and_is_renamed_into_place(
        self, pairs, settings, monkeypatch
    ):
        seen, rows = {}, exports._rows

        def watched_rows(snapshot):
            part = snapshot.part_path
            seen["part"], seen["inode"] = part, part.stat().st_ino
            yield from rows(snapshot)

        monkeypatch.setattr(exports, "_rows", watched_rows)
        snapshot = run_snapshot(create_snapshot(pairs, kind="pairs"))

        assert snapshot.status == "ready" and snapshot.row_count == 3
        assert seen["part"] == settings.MEDIA_ROOT / "exports" / "tmp" / f"{snapshot.pk}.jsonl.part"
        assert not seen["part"].exists()
        final = os.stat(snapshot.file.path)
        assert final.st_ino == seen["inode"] and final.st_size > 0  # moved, not copied

    def test_a_failed_export_leaves_no_part_file(self, pairs, monkeypatch):
        def broken_rows(snapshot):
            yield from []
            raise RuntimeError("the database went away")

        monkeypatch.setattr(exports, "_rows", broken_rows)
        snapshot = run_snapshot(create_snapshot(pairs, kind="pairs"))

        assert snapshot.status == "failed" and snapshot.error == "the database went away"
        assert not snapshot.part_path.exists()

    def test_a_failed_exports_error_shows_no_server_path(self, pairs, monkeypatch, caplog):
        def full_disk(snapshot, rows, out):
            raise OSError(28, "No space left on device", "/srv/arbiter/media/exports/tmp/1.jsonl.part")

        monkeypatch.setattr(exports, "_write", full_disk)
        snapshot = run_snapshot(create_snapshot(pairs, kind="pairs"))

        assert snapshot.error == "[Errno 28] No space left on device: '<path>'"
        assert "/srv/arbiter" in caplog.text  # the worker's log keeps it


class TestReaper:
    def test_a_silent_running_export_fails_with_a_message_and_its_part_file_goes(self, project, settings):
        silent = running(project, settings, silent_for=settings.ARBITER_JOB_HEARTBEAT_TIMEOUT + timedelta(seconds=1))
        alive = running(project, settings)

        assert fail_stale_exports() == 1

        silent.refresh_from_db(), alive.refresh_from_db()
        assert silent.status == "failed" and silent.finished_at == silent.heartbeat_at
        assert silent.error.startswith("The worker stopped sending heartbeats (last at ")
        assert "Start the export again." in silent.error
        assert not silent.part_path.exists()
        assert alive.status == "running" and alive.part_path.exists()
        assert not silent.beat()  # a worker that comes back finds its export failed
        assert fail_stale_exports() == 0

    @pytest.mark.parametrize("when", ["while it writes", "as it ends"])
    def test_an_export_failed_while_it_ran_stays_failed_and_keeps_no_file(self, pairs, settings, monkeypatch, when):
        def reap(snapshot):
            long_ago = timezone.now() - settings.ARBITER_JOB_HEARTBEAT_TIMEOUT - timedelta(seconds=1)
            DatasetSnapshot.objects.filter(pk=snapshot.pk).update(heartbeat_at=long_ago)
            assert fail_stale_exports() == 1

        rows, finish = exports._rows, DatasetSnapshot.finish

        def reaped_while_it_writes(snapshot):
            reap(snapshot)
            yield from rows(snapshot)

        def reaped_as_it_ends(snapshot, status, **fields):
            if status == "ready":  # the file is in place, not yet the row
                reap(snapshot)
            return finish(snapshot, status, **fields)

        if when == "while it writes":
            monkeypatch.setattr(exports, "_rows", reaped_while_it_writes)
        else:
            monkeypatch.setattr(DatasetSnapshot, "finish", reaped_as_it_ends)
        snapshot = run_snapshot(create_snapshot(pairs, kind="pairs"))

        assert snapshot.status == "failed" and "stopped sending heartbeats" in snapshot.error
        assert (snapshot.file.name, snapshot.sha256, snapshot.row_count) == ("", "", None)
        assert not any(path.is_file() for path in (settings.MEDIA_ROOT / "exports").rglob("*"))

    def test_a_message_delivered_again_leaves_a_running_export_to_the_reaper(self, project, settings):
        # Acknowledged when it ends, so that a worker lost before it ran the message leaves it to be delivered again.
        assert export_snapshot.acks_late
        snapshot = running(project, settings)

        assert export_snapshot(snapshot.pk) == "running"
        snapshot.refresh_from_db()
        assert snapshot.status == "running" and snapshot.part_path.exists()


@contextlib.contextmanager
def table_locked(table):
    """Hold an exclusive lock on `table`, from a connection of its own, until the block ends: whatever reads the table
    meanwhile waits."""
    locked, release = threading.Event(), threading.Event()

    def hold():
        try:
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
                locked.set()
                release.wait()
        finally:
            connection.close()

    holder = threading.Thread(target=hold)
    holder.start()
    assert locked.wait(timeout=30)
    try:
        yield
    finally:
        release.set()
        holder.join()


def beaten(snapshot):
    """Whether the export's heartbeat has moved since it was claimed."""
    started, beat = DatasetSnapshot.objects.values_list("started_at", "heartbeat_at").get(pk=snapshot.pk)
    return None not in (started, beat) and beat > started


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_running_export_beats_while_its_query_waits(pairs, settings):
    settings.ARBITER_JOB_HEARTBEAT_SECONDS = 0.1
    snapshot = create_snapshot(pairs, kind="pairs")

    def export():
        try:
            run_snapshot(snapshot)
        finally:
            connection.close()

    worker = threading.Thread(target=export)
    with table_locked("annotate_prompt"):  # the export's first read of the prompts waits; the heartbeat must not
        worker.start()
        deadline = time.monotonic() + 30
        while not beaten(snapshot):
            assert time.monotonic() < deadline, "no heartbeat"
            time.sleep(0.05)
        assert DatasetSnapshot.objects.get(pk=snapshot.pk).status == "running"
    worker.join(timeout=60)
    snapshot.refresh_from_db()
    assert snapshot.status == "ready" and snapshot.row_count == 3


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_worker_killed_mid_export_leaves_it_failed_without_its_part_file(pairs, worker_env, tmp_path, settings, lead):
    client = APIClient()
    client.force_authenticate(lead)
    started = client.post(f"{P}/exports/", {"kind": "pairs"})  # committed, and its message sent to the broker
    assert started.status_code == 202
    snapshot = DatasetSnapshot.objects.get(pk=started.json()["id"])
    with table_locked("annotate_prompt"):  # the worker claims the export, opens its part file, and waits here
        worker = Worker(worker_env, tmp_path / "worker.log", queues="default")
        try:
            wait_for(lambda: beaten(snapshot), "a heartbeat", worker)
            assert snapshot.part_path.exists()
            os.kill(worker.process.pid, signal.SIGKILL)
            worker.process.wait(timeout=30)
        finally:
            worker.stop()
    snapshot.refresh_from_db()
    assert snapshot.status == "running"  # nobody is left to say otherwise
    assert client.get(f"{P}/exports/{snapshot.pk}/download/").status_code == 409

    settings.ARBITER_JOB_HEARTBEAT_TIMEOUT = timedelta(seconds=2)
    time.sleep(2.5)
    assert fail_stale_exports() == 1

    detail = client.get(f"{P}/exports/{snapshot.pk}/").json()
    assert detail["status"] == "failed" and "stopped sending heartbeats" in detail["error"]
    assert not snapshot.part_path.exists()
    assert client.get(f"{P}/exports/{snapshot.pk}/download/").status_code == 409


@pytest.mark.django_db(transaction=True)
def test_exports_left_running_before_the_heartbeat_existed_are_given_one_for_the_reaper(settings):
    before, after = ("annotate", "0006_sampling_settings"), ("annotate", "0007_export_heartbeat_and_import_jobs")
    executor = MigrationExecutor(connection)
    executor.migrate([before])
    old = executor.loader.project_state([before]).apps
    project = old.get_model("annotate", "Project").objects.create(name="Old", slug="old")
    stuck = old.get_model("annotate", "DatasetSnapshot").objects.create(project=project, kind="pairs", status="running")

    executor = MigrationExecutor(connection)
    executor.migrate([after])
    migrated = executor.loader.project_state([after]).apps.get_model("annotate", "DatasetSnapshot")
    assert migrated.objects.get(pk=stuck.pk).heartbeat_at is not None  # as it was then: later fields are not there
    # And the migrations since, as the models are today's (and the tests after this one need them).
    executor = MigrationExecutor(connection)
    executor.migrate(executor.loader.graph.leaf_nodes())

    settings.ARBITER_JOB_HEARTBEAT_TIMEOUT = timedelta(0)
    assert fail_stale_exports() == 1
    assert DatasetSnapshot.objects.get(pk=stuck.pk).status == "failed"
