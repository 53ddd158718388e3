"""The launch checks a round's GPU memory estimate against the GPUs that workers have reported, and workers report."""

from datetime import timedelta

import pytest
from django.core.exceptions import ValidationError
from django.core.management import CommandError, call_command
from django.urls import reverse
from django.utils import timezone

from annotate.admin import project_leads_group
from annotate.importing import import_file
from tests.celery_worker import Worker as CeleryWorker
from tests.celery_worker import wait_for
from tests.training.conftest import marker_pairs, write_jsonl
from training.engine.memory import GIB
from training.models import TrainingRound, Worker
from training.rounds import check_memory, launch_round, plan_round
from training.workers import report_devices

FAST = {"max_steps": "3", "per_device_batch_size": "2", "lora_r": "4", "max_length": "128"}
SMALL_GPU = {"name": "Tiny GPU", "total_memory": GIB // 2}  # less than the CUDA context alone
BIG_GPU = {"name": "NVIDIA H100 80GB HBM3", "total_memory": 80 * GIB}


@pytest.fixture
def pairs_project(project, tmp_path):
    rows = [{key: row[key] for key in ("prompt", "chosen", "rejected")} for row in marker_pairs(8, style="standard")]
    write_jsonl(tmp_path / "pairs.jsonl", rows)
    import_file(project, tmp_path / "pairs.jsonl")
    return project


def launch(project, policy, method="dpo", **settings_):
    return launch_round(project, method=method, base=policy, settings_={**FAST, **settings_})


@pytest.mark.django_db
class TestLaunchMemory:
    def test_without_a_gpu_report_the_estimate_is_for_information_only(self, pairs_project, policy):
        check = check_memory(plan_round(pairs_project, method="dpo", base=policy)["config"], None)
        assert check.gpu is None and check.fits
        assert "for information: no GPU worker has reported in" in check.message()
        assert launch(pairs_project, policy).status == "queued"

    def test_refuses_a_round_bigger_than_the_largest_reported_gpu_and_queues_nothing(self, pairs_project, policy):
        Worker.report("celery@small", queues=["gpu"], devices=[SMALL_GPU, SMALL_GPU])
        Worker.report("celery@cpu", queues=["gpu"], devices=[])
        with pytest.raises(ValidationError) as refused:
            launch(pairs_project, policy)
        message = refused.value.message_dict["settings"][0]
        assert "The dpo stage needs about 826 MiB" in message and "Tiny GPU, has 512 MiB" in message
        for setting in ("per_device_batch_size", "max_length (now 128)", "activation_checkpointing", "load_in_4bit"):
            assert setting in message
        assert "use_lora" not in message  # it is on already
        assert not TrainingRound.objects.exists()

        Worker.report("celery@big", queues=["gpu"], devices=[BIG_GPU])
        assert launch(pairs_project, policy).status == "queued"

    def test_reports_stop_counting_when_stale_or_gone(self, pairs_project, policy, settings):
        settings.ARBITER_WORKER_REPORT_SECONDS = 60
        Worker.report("celery@small", queues=["gpu"], devices=[SMALL_GPU])
        assert Worker.objects.largest_gpu()["name"] == "Tiny GPU"
        Worker.objects.update(last_seen=timezone.now() - timedelta(minutes=4))  # more than 3 intervals ago
        assert Worker.objects.largest_gpu() is None
        assert launch(pairs_project, policy).status == "queued"
        Worker.report("celery@small", queues=["gpu"], devices=[SMALL_GPU])
        Worker.gone("celery@small")
        assert Worker.objects.largest_gpu() is None

    def test_the_largest_training_stage_is_checked(self, pairs_project, policy):
        plan = plan_round(pairs_project, method="ppo", base=policy, settings_={"reward.max_length": "4096"})
        check = check_memory(plan["config"], None)
        assert check.stage == "reward"
        plan = plan_round(pairs_project, method="ppo", base=policy, settings_={"ppo.max_length": "4096"})
        assert check_memory(plan["config"], None).stage == "ppo"

    def test_a_hub_base_has_no_estimate(self, pairs_project, settings):
        settings.ARBITER_ALLOW_HUB_MODELS = True
        plan = plan_round(pairs_project, method="dpo", base="org/model")
        assert check_memory(plan["config"], None) is None

    def test_the_command_line_refuses_too(self, pairs_project, policy):
        Worker.report("celery@small", queues=["gpu"], devices=[SMALL_GPU])
        with pytest.raises(CommandError, match="settings: The sft stage needs about .* Tiny GPU"):
            call_command("launch_round", pairs_project.slug, "--method", "sft", "--base", policy)
        assert not TrainingRound.objects.exists()

    def test_a_cpu_worker_reports_no_gpus(self):
        worker = report_devices("celery@here", ["gpu"])  # this machine has no CUDA
        assert Worker.objects.get(hostname="celery@here").devices == worker.devices == []

    def test_the_launch_page_checks_without_queueing_and_shows_why_it_refuses(
        self, client, lead, pairs_project, policy
    ):
        lead.groups.add(project_leads_group())
        client.force_login(lead)
        url = reverse("admin:training_traininground_launch")
        form = {"project": pairs_project.pk, "method": "dpo", "base": policy, "settings": "max_length=128"}
        page = client.post(url, {**form, "check": "1"})
        assert page.status_code == 200 and not TrainingRound.objects.exists()
        assert b"no GPU worker has reported in" in page.content
        assert "Activations (batch × length)" in page.content.decode()

        Worker.report("celery@small", queues=["gpu"], devices=[SMALL_GPU])
        page = client.post(url, form)
        assert page.status_code == 200 and not TrainingRound.objects.exists()
        assert page.content.count(b"more than the largest GPU the workers have reported, Tiny GPU") == 1


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_gpu_worker_reports_at_start_and_is_gone_at_shutdown(worker_env, tmp_path):
    worker = CeleryWorker({**worker_env, "ARBITER_WORKER_REPORT_SECONDS": "1"}, tmp_path / "worker.log", queues="gpu")
    try:
        wait_for(lambda: Worker.objects.filter(last_seen__isnull=False).exists(), "the worker's report", worker, 120)
        reported = Worker.objects.get()
        assert reported.queues == ["gpu"] and reported.devices == [] and reported.hostname.startswith("celery@")
        first = reported.last_seen
        wait_for(lambda: Worker.objects.get().last_seen > first, "a second report", worker, 30)
    finally:
        worker.stop()
    assert Worker.objects.get().last_seen is None
