"""Training rounds: a lead's request to train on a project's annotations, and what became of it.

A round moves queued → running → succeeded | failed | cancelled, each move a conditional UPDATE, so a Celery
message delivered twice never runs a round twice and a round whose worker died is failed, not left running. A
round that ends before writing its dataset snapshot (cancelled while queued, failed first) fails that snapshot too,
saying why, so that no snapshot stays pending for good.
The work itself is in training/rounds.py; the maths in training/engine/ (no Django there).
"""

from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import models
from django.db.models import Q, QuerySet
from django.utils import timezone

from annotate.jobs import move
from annotate.models import DatasetSnapshot, Response, Task
from training.engine.config import PPOConfig


class TrainingRound(models.Model):
    class Method(models.TextChoices):
        REWARD = "reward", "Reward model only"
        PPO = "ppo", "Reward model, then PPO"
        DPO = "dpo", "DPO"
        KTO = "kto", "KTO (on ratings)"
        SFT = "sft", "SFT"
        SAMPLE = "sample", "New samples only"
        RLOO = "rloo", "RLOO (online, against a reward model)"
        GRPO = "grpo", "GRPO (online, against a reward model)"
        BEST_OF_N = "best_of_n", "Best-of-N (SFT on the reward model's best of K samples)"

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"

    FINISHED = (Status.SUCCEEDED, Status.FAILED, Status.CANCELLED)
    # What each value of `stage` means to a lead (training/rounds.py sets it as the round moves on).
    PHASES = {
        "": "Starting (the dataset snapshot, for a round that trains)",
        "reward": "Training the reward model",
        "ppo": "Training the policy (PPO)",
        "dpo": "Training the policy (DPO)",
        "kto": "Training the policy (KTO)",
        "sft": "Training the policy (SFT)",
        "eval_reward": "Evaluating the reward model on held-out votes",
        "eval": "Evaluating the new policy",
        "sample": "Sampling new responses into the queue",
        "rloo": "Training the policy (RLOO)",
        "grpo": "Training the policy (GRPO)",
        "best_of_n": "Best-of-N: sampling K answers per prompt, scoring them, SFT on the best",
    }

    project = models.ForeignKey("annotate.Project", on_delete=models.CASCADE, related_name="training_rounds")
    number = models.PositiveIntegerField(help_text="The project's round number, from 1.")
    method = models.CharField(max_length=16, choices=Method.choices)
    base_model = models.CharField(max_length=500, help_text="Hub id or local path the policy starts from.")
    base_version = models.ForeignKey(
        "models_registry.ModelVersion",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        help_text="The registered policy it starts from, if it starts from one.",
    )
    reward_version = models.ForeignKey(
        "models_registry.ModelVersion",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        help_text="PPO, RLOO and GRPO only: a reward model to use instead of training one in this round.",
    )
    config = models.JSONField(default=dict, blank=True, help_text="Per stage: asdict of its config dataclass.")
    filters = models.JSONField(default=dict, blank=True, help_text="Dataset filters of the snapshot it trains on.")
    snapshot = models.ForeignKey(
        "annotate.DatasetSnapshot", null=True, blank=True, on_delete=models.PROTECT, related_name="training_rounds"
    )
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    cancel_requested = models.BooleanField(default=False)
    stage = models.CharField(max_length=16, blank=True, help_text="The stage running now (reward, ppo, …).")
    step = models.PositiveIntegerField(default=0)
    total_steps = models.PositiveIntegerField(default=0)
    progress = models.FloatField(default=0, help_text="0 to 1, over all of the round's stages.")
    log_tail = models.TextField(blank=True)
    error = models.TextField(blank=True)
    warning = models.TextField(blank=True, help_text="What the lead should know of a round that went on regardless.")
    celery_task_id = models.CharField(max_length=64, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="training_rounds"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["project", "-number"]
        constraints = [
            models.UniqueConstraint(fields=["project", "number"], name="training_round_number_unique"),
            models.CheckConstraint(
                condition=Q(progress__gte=0) & Q(progress__lte=1), name="training_round_progress_range"
            ),
        ]
        indexes = [models.Index(fields=["status", "heartbeat_at"], name="round_status_heartbeat")]

    def __str__(self) -> str:
        return f"{self.project.slug} round {self.number} ({self.get_method_display()})"

    @property
    def is_finished(self) -> bool:
        return self.status in self.FINISHED

    @property
    def duration(self) -> timedelta | None:
        """How long it has run (or ran), to the second."""
        if self.started_at is None:
            return None
        return timedelta(seconds=round(((self.finished_at or timezone.now()) - self.started_at).total_seconds()))

    def claim(self) -> bool:
        """queued → running, once: a second delivery of the same message gets False and does nothing."""
        now = timezone.now()
        return move(self, [self.Status.QUEUED], status=self.Status.RUNNING, started_at=now, heartbeat_at=now)

    def beat(self, **progress: Any) -> bool:
        """Record that the worker is alive (and how far it got); False once the round is no longer running."""
        return move(self, [self.Status.RUNNING], heartbeat_at=timezone.now(), **progress)

    def finish(self, status: str, *, error: str = "") -> bool:
        """running (or queued) → a finished status; False if something else finished it first."""
        fields: dict[str, Any] = {"status": status, "finished_at": timezone.now(), "error": error}
        if status == self.Status.SUCCEEDED:
            fields["progress"] = 1.0
        finished = move(self, [self.Status.QUEUED, self.Status.RUNNING], **fields)
        if finished and self.snapshot_id:
            end_unwritten_snapshots(DatasetSnapshot.objects.filter(pk=self.snapshot_id))
        return finished

    def request_cancel(self) -> None:
        """Ask the worker to stop after its current step; a round that has not started is cancelled at once."""
        TrainingRound.objects.filter(pk=self.pk).update(cancel_requested=True)
        self.cancel_requested = True
        cancelled = move(self, [self.Status.QUEUED], status=self.Status.CANCELLED, finished_at=timezone.now())
        if cancelled and self.snapshot_id:
            end_unwritten_snapshots(DatasetSnapshot.objects.filter(pk=self.snapshot_id))

    def warn(self, message: str) -> None:
        """Keep a warning for the lead while the round goes on (shown on the round page and in the API)."""
        self.warning = "\n".join(filter(None, [self.warning, message]))
        TrainingRound.objects.filter(pk=self.pk).update(warning=self.warning)

    def chart_lines(self) -> dict[str, list[tuple[str, float]]]:
        """Reference lines for the round page's charts: PPO's KL target and its run-away limit."""
        if "ppo" not in self.config:
            return {}
        config = PPOConfig.from_dict({"kl_stop": None, **self.config["ppo"]})  # rounds from before kl_stop had none
        lines = [(name, value) for name, value in (("target", config.kl_target), ("stop", config.kl_limit)) if value]
        return {"ppo/kl": lines} if lines else {}

    def cancel_is_requested(self) -> bool:
        return TrainingRound.objects.filter(pk=self.pk, cancel_requested=True).exists()

    @property
    def phase(self) -> str:
        """What the round is doing (or was doing when it stopped), with how far it got, in words."""
        name = self.PHASES.get(self.stage, self.stage)
        if not self.total_steps:
            return name
        return f"{name}: {self.step} of {self.total_steps} {'responses' if self.stage == 'sample' else 'steps'}"

    def queued_samples(self) -> dict[str, int]:
        """What the round's sampling put in the annotation queue (training/sampling.py tags both with its number)."""
        tasks = Task.objects.filter(project=self.project_id, round_number=self.number).exclude(status=Task.Status.GOLD)
        return {
            "responses": Response.objects.filter(
                prompt__project=self.project_id, source=Response.Source.MODEL, generation_params__round=self.number
            ).count(),
            "tasks": tasks.count(),
            "open": tasks.filter(status=Task.Status.OPEN).count(),
        }

    def metric_series(self) -> dict[str, list[tuple[int, float]]]:
        """Every metric the stages reported, as (step, value) points, named "stage/metric"."""
        series: dict[str, list[tuple[int, float]]] = {}
        for stage, step, values in self.metrics.order_by("id").values_list("stage", "step", "values"):
            for name, value in values.items():
                if value is not None:  # a NaN or infinite value, stored as null
                    series.setdefault(f"{stage}/{name}", []).append((step, value))
        return series


def end_unwritten_snapshots(snapshots: QuerySet[DatasetSnapshot] | None = None) -> int:
    """Fail the pending snapshots whose training rounds all ended before writing them (cancelled while queued, or
    failed first), saying why: nothing would ever write them. Returns how many."""
    pending = (DatasetSnapshot.objects.all() if snapshots is None else snapshots).filter(
        status=DatasetSnapshot.Status.PENDING, training_rounds__isnull=False
    )
    pending = pending.exclude(training_rounds__status__in=[TrainingRound.Status.QUEUED, TrainingRound.Status.RUNNING])
    ended = 0
    for snapshot in pending.distinct():
        training_round = snapshot.training_rounds.order_by("-number").first()
        how = {TrainingRound.Status.CANCELLED: "was cancelled", TrainingRound.Status.FAILED: "failed"}
        ended_how = how.get(training_round.status, "ended")
        error = f"Not written: training round {training_round.number} {ended_how} before writing its data."
        ended += move(
            snapshot,
            [DatasetSnapshot.Status.PENDING],
            status=DatasetSnapshot.Status.FAILED,
            error=error,
            finished_at=timezone.now(),
        )
    return ended


class RoundMetric(models.Model):
    """One report from a stage: its step and the metrics logged at it."""

    training_round = models.ForeignKey(TrainingRound, on_delete=models.CASCADE, related_name="metrics")
    stage = models.CharField(max_length=16)
    step = models.PositiveIntegerField()
    values = models.JSONField(default=dict)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"{self.training_round} {self.stage} step {self.step}"


class WorkerQuerySet(models.QuerySet):
    def reporting(self) -> "WorkerQuerySet":
        """Workers whose last report is recent: one silent for a few report intervals has died or lost its machine."""
        silence = timedelta(seconds=settings.ARBITER_WORKER_REPORT_SECONDS * WORKER_MISSED_REPORTS)
        return self.filter(last_seen__gte=timezone.now() - silence)

    def largest_gpu(self) -> dict[str, Any] | None:
        """The reporting workers' GPU with the most memory ({name, total_memory, hostname, gpus: how many that
        worker has}), or None without one."""
        gpus = [
            {**device, "hostname": worker.hostname, "gpus": len(worker.devices)}
            for worker in self.reporting()
            for device in worker.devices
        ]
        return max(gpus, key=lambda gpu: gpu["total_memory"], default=None)


WORKER_MISSED_REPORTS = 3  # reports a worker may miss before its devices stop counting


class Worker(models.Model):
    """A Celery worker on the gpu queue and the devices it reported: what a round's memory estimate is checked
    against at launch. Reports at start and every ARBITER_WORKER_REPORT_SECONDS (training/workers.py)."""

    hostname = models.CharField(max_length=255, unique=True, help_text="Celery's node name, e.g. celery@gpu-1.")
    queues = models.JSONField(default=list, blank=True)
    devices = models.JSONField(default=list, blank=True, help_text="Its CUDA GPUs: [{name, total_memory}] in bytes.")
    last_seen = models.DateTimeField(null=True, blank=True, help_text="Its last report; empty once it shut down.")

    objects = WorkerQuerySet.as_manager()

    class Meta:
        ordering = ["hostname"]

    def __str__(self) -> str:
        return self.hostname

    @classmethod
    def report(cls, hostname: str, *, queues: list[str], devices: list[dict[str, Any]]) -> "Worker":
        """Record that the worker is alive with these devices."""
        worker, _ = cls.objects.update_or_create(
            hostname=hostname, defaults={"queues": queues, "devices": devices, "last_seen": timezone.now()}
        )
        return worker

    @classmethod
    def gone(cls, hostname: str) -> None:
        """The worker shut down: its devices no longer count."""
        cls.objects.filter(hostname=hostname).update(last_seen=None)
