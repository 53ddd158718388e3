"""The model registry: every trained policy or reward model, traceable to its base, data, config and code."""

from typing import Any

from django.db import models, transaction
from django.db.models import Max, Q


class ModelVersionQuerySet(models.QuerySet):
    def active_policy(self, project: Any) -> "ModelVersion | None":
        return self.filter(project=project, kind=ModelVersion.Kind.POLICY, status=ModelVersion.Status.ACTIVE).first()

    def latest_reward(self, project: Any) -> "ModelVersion | None":
        """The project's newest reward model that is not archived: what a PPO round scores with by default."""
        return (
            self.filter(project=project, kind=ModelVersion.Kind.REWARD)
            .exclude(status=ModelVersion.Status.ARCHIVED)
            .order_by("-version")
            .first()
        )

    def named(self, project: Any, kind: str, name: str) -> "ModelVersion | None":
        """The project's version of this kind named as leads write it: reward-v2, v2 or 2."""
        number = name.strip().removeprefix(f"{kind}-").removeprefix("v")
        if not number.isdecimal():
            return None
        return self.filter(project=project, kind=kind, version=int(number)).first()


class ModelVersion(models.Model):
    class Kind(models.TextChoices):
        POLICY = "policy", "Policy"
        REWARD = "reward", "Reward model"

    class Status(models.TextChoices):
        CANDIDATE = "candidate", "Candidate"
        ACTIVE = "active", "Active"
        ARCHIVED = "archived", "Archived"

    project = models.ForeignKey("annotate.Project", on_delete=models.CASCADE, related_name="model_versions")
    kind = models.CharField(max_length=16, choices=Kind.choices, default=Kind.POLICY)
    version = models.PositiveIntegerField()
    base_model = models.CharField(max_length=500, help_text="Hub id or local path of the base model.")
    adapter_path = models.CharField(
        max_length=500, blank=True, help_text="The LoRA adapter (or full weights) this version adds to its base."
    )
    parent = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="children", help_text="Trained from."
    )
    training_round = models.ForeignKey(
        "training.TrainingRound", null=True, blank=True, on_delete=models.SET_NULL, related_name="model_versions"
    )
    snapshot_sha256 = models.CharField(max_length=64, blank=True, help_text="The dataset snapshot it trained on.")
    config = models.JSONField(default=dict, blank=True)
    eval_report = models.JSONField(default=dict, blank=True)
    code_version = models.CharField(max_length=64, blank=True, help_text="git commit of the code that trained it.")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.CANDIDATE)
    created_at = models.DateTimeField(auto_now_add=True)

    objects = ModelVersionQuerySet.as_manager()

    class Meta:
        ordering = ["project", "kind", "-version"]
        constraints = [
            models.UniqueConstraint(fields=["project", "kind", "version"], name="model_version_unique"),
            models.UniqueConstraint(
                fields=["project", "kind"], condition=Q(status="active"), name="model_version_one_active"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.project.slug}/{self.kind}-v{self.version}"

    @property
    def path(self) -> str:
        """What from_pretrained loads: the adapter directory (which names its base), else the base model."""
        return self.adapter_path or self.base_model

    @classmethod
    def register(cls, *, project: Any, kind: str, **fields: Any) -> "ModelVersion":
        """A new candidate with the next version number for the project and kind."""
        with transaction.atomic():
            project.lock()  # two rounds that finish at once get different numbers
            last = cls.objects.filter(project=project, kind=kind).aggregate(n=Max("version"))["n"] or 0
            return cls.objects.create(project=project, kind=kind, version=last + 1, **fields)

    def promote(self) -> None:
        """Make this the project's active version of its kind; the one active before is archived."""
        with transaction.atomic():
            ModelVersion.objects.filter(project=self.project_id, kind=self.kind, status=self.Status.ACTIVE).exclude(
                pk=self.pk
            ).update(status=self.Status.ARCHIVED)
            self.status = self.Status.ACTIVE
            self.save(update_fields=["status"])

    def lineage(self) -> list["ModelVersion"]:
        """This version and its ancestors, newest first (two queries however long the line: the project's versions
        are read once and linked in memory)."""
        versions = ModelVersion.objects.filter(project_id=self.project_id).select_related("project", "training_round")
        by_id = versions.in_bulk()
        chain, version = [], by_id.get(self.pk, self)
        while version is not None and version not in chain:
            chain.append(version)
            parent = by_id.get(version.parent_id)
            if parent is not None:
                version.parent = parent  # the relation, filled from what was read: no query per ancestor
            version = parent
        return chain
