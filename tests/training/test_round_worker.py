"""Rounds run by a real `celery worker` process on the gpu queue: launched through the admin (embedded broker) and
through `launch_round --wait` (Redis); a worker killed with SIGKILL leaves a failed round, and a relaunch works.

PostgreSQL only: the worker is another process, and it must see the test's database (SQLite's is in memory).
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
from django.urls import reverse

from annotate.admin import project_leads_group
from annotate.importing import import_file
from models_registry.models import ModelVersion
from tests.celery_worker import BASE_DIR, Worker, wait_for
from tests.training.conftest import marker_pairs
from training.models import TrainingRound
from training.rounds import fail_stale_rounds, launch_round, relaunch

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

FAST = "max_steps=3\nper_device_batch_size=2\nlora_r=4\nmax_length=128\neval_fraction=0.25"


@pytest.fixture
def pairs_project(project, tmp_path):
    rows = [{key: row[key] for key in ("prompt", "chosen", "rejected")} for row in marker_pairs(16, style="standard")]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    import_file(project, path)
    return project


def status_of(training_round: TrainingRound) -> str:
    return TrainingRound.objects.values_list("status", flat=True).get(pk=training_round.pk)


def test_a_round_launched_in_the_admin_is_run_by_a_celery_worker(
    client, pairs_project, lead, policy, worker_env, tmp_path
):
    lead.groups.add(project_leads_group())
    client.force_login(lead)
    form = {"project": pairs_project.pk, "method": "dpo", "base": policy, "settings": FAST}
    page = client.post(reverse("admin:training_traininground_launch"), form)
    training_round = TrainingRound.objects.get(project=pairs_project)
    assert page.status_code == 302 and page["Location"] == reverse("round_page", args=[pairs_project.slug, 1])
    assert training_round.status == "queued" and training_round.created_by == lead

    worker = Worker(worker_env, tmp_path / "worker.log", queues="gpu")
    try:
        wait_for(lambda: status_of(training_round) not in ("queued", "running"), "the round to end", worker)
    finally:
        worker.stop()
    training_round.refresh_from_db()
    assert training_round.status == "succeeded", training_round.error + worker.output()[-3000:]
    assert f"Task training.tasks.run_training_round[{training_round.celery_task_id}] succeeded" in worker.output()
    version = ModelVersion.objects.get(training_round=training_round)
    assert version.kind == "policy" and version.snapshot_sha256 == training_round.snapshot.sha256 != ""
    assert (Path(version.adapter_path) / "adapter_config.json").is_file()
    assert Path(training_round.snapshot.file.path).is_file()

    page = client.get(reverse("round_page", args=[pairs_project.slug, 1])).content.decode()
    assert "Succeeded" in page and "<polyline" in page and "hx-trigger" not in page


def test_launch_round_wait_follows_a_round_through_redis(pairs_project, tiny, worker_env, tmp_path):
    redis_server = shutil.which("redis-server")
    if redis_server is None:
        pytest.skip("needs redis-server (apt-get install redis-server; .ci/run installs it)")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    redis = subprocess.Popen(
        [redis_server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    env = {**worker_env, "CELERY_BROKER_URL": f"redis://127.0.0.1:{port}/0"}
    worker = Worker(env, tmp_path / "worker.log", queues="gpu")
    try:
        launched = subprocess.run(
            [sys.executable, "manage.py", "launch_round", pairs_project.slug, "--method", "reward", "--wait",
             "--base", str(tiny.policy), *[arg for line in FAST.splitlines() for arg in ("--set", line)]],
            cwd=BASE_DIR, env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
    finally:
        worker.stop()
        redis.terminate()
        redis.wait(timeout=30)
    assert launched.returncode == 0, launched.stdout + launched.stderr + worker.output()[-3000:]
    assert "Queued round 1" in launched.stdout and "succeeded" in launched.stdout
    version = ModelVersion.objects.get(project=pairs_project)
    assert f"Registered {version}" in launched.stdout and version.kind == "reward"
    assert "Task training.tasks.run_training_round" in worker.output()


def test_a_worker_killed_mid_round_leaves_it_failed_and_a_relaunch_succeeds(
    pairs_project, policy, worker_env, tmp_path, settings
):
    long = {"max_steps": "120", "per_device_batch_size": "2", "lora_r": "4", "max_length": "128"}
    training_round = launch_round(pairs_project, method="dpo", base=policy, settings_=long)
    worker = Worker(worker_env, tmp_path / "worker.log", queues="gpu")
    try:
        wait_for(lambda: TrainingRound.objects.get(pk=training_round.pk).step >= 2, "two steps", worker)
        os.kill(worker.process.pid, signal.SIGKILL)
        worker.process.wait(timeout=30)
    finally:
        worker.stop()
    assert status_of(training_round) == "running"  # nobody is left to say otherwise

    settings.ARBITER_ROUND_HEARTBEAT_TIMEOUT = timedelta(seconds=3)
    time.sleep(3.5)
    assert fail_stale_rounds() == 1
    training_round.refresh_from_db()
    assert training_round.status == "failed" and "stopped sending heartbeats" in training_round.error
    assert not ModelVersion.objects.exists()

    again = relaunch(training_round)
    worker = Worker(worker_env, tmp_path / "worker-2.log", queues="gpu")
    try:
        wait_for(lambda: status_of(again) not in ("queued", "running"), "the relaunched round to end", worker)
    finally:
        worker.stop()
    again.refresh_from_db()
    assert again.status == "succeeded", again.error
    assert again.number == 2 and ModelVersion.objects.get().training_round == again
    assert status_of(training_round) == "failed"
