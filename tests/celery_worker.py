"""A real `celery worker` process for tests that need one: it shares the test's PostgreSQL database (a test using it
is marked postgres and django_db(transaction=True), so the worker sees what the test committed), broker and files."""

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

from django.conf import settings
from django.db import connection

BASE_DIR = Path(settings.BASE_DIR)
# Solo pool and no gossip/mingle/heartbeat: one process that starts fast and only consumes.
OPTIONS = ["--pool", "solo", "--loglevel", "INFO", "--without-gossip", "--without-mingle", "--without-heartbeat"]


def worker_environment(broker_dir: Path) -> dict[str, str]:
    """The environment of a worker (or command) that shares this test's database, broker and files; the queue
    folder starts empty, so that no earlier test's message reaches the worker."""
    db = connection.settings_dict
    url = f"postgres://{quote(db['USER'])}:{quote(db['PASSWORD'])}@{db['HOST']}:{db['PORT']}/{quote(db['NAME'])}"
    shutil.rmtree(broker_dir / "celery-broker" / "queue", ignore_errors=True)
    (broker_dir / "celery-broker" / "queue").mkdir(parents=True)
    return {
        "PATH": os.environ.get("PATH", ""),
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "DATABASE_URL": url,
        "ARBITER_VAR_DIR": str(broker_dir),
        "CELERY_BROKER_URL": "filesystem://",
        "MEDIA_ROOT": str(settings.MEDIA_ROOT),
        "ARBITER_ARTIFACTS_ROOT": str(settings.ARBITER_ARTIFACTS_ROOT),
        "ARBITER_ROUND_HEARTBEAT_SECONDS": "1",
        "ARBITER_JOB_HEARTBEAT_SECONDS": "1",
    }


class Worker:
    """`celery -A arbiter worker -Q <queues>`, its output in `log`."""

    def __init__(self, env: dict[str, str], log: Path, queues: str) -> None:
        self.log = log
        command = [sys.executable, "-m", "celery", "-A", "arbiter", "worker", "-Q", queues, *OPTIONS]
        with log.open("a") as out:
            self.process = subprocess.Popen(command, cwd=BASE_DIR, env=env, stdout=out, stderr=out)

    def output(self) -> str:
        return self.log.read_text()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=60)


def wait_for(condition: Callable[[], bool], what: str, worker: Worker, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert worker.process.poll() is None or what == "the worker's death", worker.output()[-3000:]
        assert time.monotonic() < deadline, f"timed out waiting for {what}\n{worker.output()[-3000:]}"
        time.sleep(0.2)
