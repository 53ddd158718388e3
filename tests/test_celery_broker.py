"""The embedded filesystem broker carries a task from one process to a real `celery -A arbiter worker`."""

import os
import subprocess
import sys
import time
from pathlib import Path

from django.conf import settings

BASE_DIR = Path(settings.BASE_DIR)

# celery.accumulate is built into every Celery app, so the round trip needs no task of ours.
SEND_PROBE = """
from arbiter.celery import app
print(app.send_task("celery.accumulate", args=("arbiter-probe",)).id)
"""
# Solo pool and no gossip/mingle/heartbeat: one process that starts fast and only consumes.
WORKER = ["-m", "celery", "-A", "arbiter", "worker", "--pool", "solo", "--loglevel", "INFO"]
WORKER += ["--without-gossip", "--without-mingle", "--without-heartbeat"]


def test_worker_runs_a_task_sent_through_the_filesystem_broker(tmp_path):
    env = {
        "PATH": os.environ.get("PATH", ""),
        "ARBITER_VAR_DIR": str(tmp_path),
        "DATABASE_URL": f"sqlite:///{tmp_path}/arbiter.sqlite3",
        "CELERY_BROKER_URL": "filesystem://",
    }
    sent = subprocess.run(
        [sys.executable, "-c", SEND_PROBE], cwd=BASE_DIR, env=env, capture_output=True, text=True, timeout=60
    )
    assert sent.returncode == 0, sent.stderr
    task_id = sent.stdout.strip()
    assert list((tmp_path / "celery-broker" / "queue").iterdir()), "the message should wait on disk for a worker"

    log_path = tmp_path / "worker.log"
    with log_path.open("w") as log:
        worker = subprocess.Popen([sys.executable, *WORKER], cwd=BASE_DIR, env=env, stdout=log, stderr=log)
        try:
            deadline = time.monotonic() + 60
            while f"{task_id}] succeeded" not in log_path.read_text() and time.monotonic() < deadline:
                assert worker.poll() is None, log_path.read_text()
                time.sleep(0.2)
        finally:
            worker.terminate()
            worker.wait(timeout=30)
    output = log_path.read_text()
    assert f"Task celery.accumulate[{task_id}] succeeded" in output, output
    assert "arbiter-probe" in output


def test_every_beat_schedule_entry_names_a_registered_task():
    from django.conf import settings

    from arbiter.celery import app

    app.loader.import_default_modules()
    assert settings.CELERY_BEAT_SCHEDULE
    for entry in settings.CELERY_BEAT_SCHEDULE.values():
        assert entry["task"] in app.tasks, entry
