"""The model registry: every trained policy or reward model, traceable to its data and config.

Only the fields a Response needs to name its source model exist so far; lineage, artifacts and
evaluation reports arrive with the training rounds.
"""

from django.db import models


class ModelVersion(models.Model):
    class Kind(models.TextChoices):
        POLICY = "policy", "Policy"
        REWARD = "reward", "Reward model"

    project = models.ForeignKey("annotate.Project", on_delete=models.CASCADE, related_name="model_versions")
    kind = models.CharField(max_length=16, choices=Kind.choices, default=Kind.POLICY)
    version = models.PositiveIntegerField()
    base_model = models.CharField(max_length=500, help_text="Hub id or local path of the base model.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["project", "kind", "-version"]
        constraints = [
            models.UniqueConstraint(fields=["project", "kind", "version"], name="model_version_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.project.slug}/{self.kind}-v{self.version}"
