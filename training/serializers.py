"""The training API's inputs and outputs (views in training/api.py): rounds."""

from typing import Any

from django.urls import reverse
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from annotate.models import DatasetSnapshot
from annotate.serializers import ExportFiltersSerializer
from models_registry.serializers import VERSION_RELATED, ModelVersionSerializer, VersionRefSerializer
from training.models import TrainingRound
from training.rounds import BASE_HELP

# Rounds ----------------------------------------------------------------------------------------------------


@extend_schema_field({"oneOf": [{"type": "string"}, {"type": "number"}, {"type": "boolean"}]})
class SettingValue(serializers.Field):
    """A setting's value: a string ("200", as `--set` sends it), a number or a boolean."""

    default_error_messages = {"invalid": "Must be a string, a number or a boolean."}
    # Strings are checked as every text field is: no NUL or lone surrogates, which the database cannot store.
    text = serializers.CharField(allow_blank=True, trim_whitespace=False)

    def to_internal_value(self, data: Any) -> str | int | float | bool:
        if isinstance(data, str):
            return self.text.run_validation(data)
        if isinstance(data, bool | int | float):
            return data
        self.fail("invalid")

    def to_representation(self, value: Any) -> Any:
        return value


class LaunchIn(serializers.Serializer):
    """A round as the admin's launch form takes it; launch_round checks the rest, naming the field or setting."""

    method = serializers.ChoiceField(TrainingRound.Method.choices)
    base = serializers.CharField(
        max_length=500,
        required=False,
        allow_blank=True,
        help_text=BASE_HELP,
    )
    reward_model = serializers.CharField(
        max_length=100,
        required=False,
        allow_blank=True,
        help_text="PPO, RLOO, GRPO, best_of_n: score with this reward version (reward-v2) instead of training one.",
    )
    settings = serializers.DictField(
        child=SettingValue(),
        required=False,
        help_text="Hyper-parameters: `key` for every stage that has it, `stage.key` for one stage "
        '({"max_steps": 200, "ppo.kl_coef": 0.05}). An unknown or bad one is refused under its own name.',
    )
    filters = ExportFiltersSerializer(required=False, help_text="Which annotations the round's snapshot takes.")


class RoundSnapshotSerializer(serializers.ModelSerializer):
    class Meta:
        model = DatasetSnapshot
        fields = ["id", "status", "row_count", "sha256", "judge_weights"]


class RoundSerializer(serializers.ModelSerializer):
    project = serializers.SlugField(source="project.slug")
    base_version = VersionRefSerializer(allow_null=True, help_text="The registered policy it starts from, if any.")
    reward_version = VersionRefSerializer(allow_null=True, help_text="PPO: the reward model given instead of one.")
    snapshot = RoundSnapshotSerializer(allow_null=True, help_text="The dataset it trains on, written when it starts.")
    filters = serializers.DictField()
    created_by = serializers.CharField(source="created_by.username", allow_null=True)
    url = serializers.SerializerMethodField()

    class Meta:
        model = TrainingRound
        fields = [
            "id",
            "project",
            "number",
            "method",
            "status",
            "cancel_requested",
            "stage",
            "step",
            "total_steps",
            "progress",
            "base_model",
            "base_version",
            "reward_version",
            "snapshot",
            "filters",
            "error",
            "warning",
            "created_by",
            "created_at",
            "started_at",
            "heartbeat_at",
            "finished_at",
            "url",
        ]
        extra_kwargs = {"step": {"help_text": "The current stage's step, of total_steps."}}

    def get_url(self, training_round: TrainingRound) -> str:
        return reverse("api:round_detail", args=[training_round.project.slug, training_round.number])


class MetricPointSerializer(serializers.Serializer):
    step = serializers.IntegerField()
    value = serializers.FloatField()


class RoundDetailSerializer(RoundSerializer):
    config = serializers.DictField(help_text="Per stage, its settings with the defaults filled in.")
    metrics = serializers.SerializerMethodField(
        help_text='Each series reported, by "stage/metric": reward/loss, ppo/kl…'
    )
    model_versions = serializers.SerializerMethodField(help_text="What the round registered, once it succeeded.")

    class Meta(RoundSerializer.Meta):
        fields = [*RoundSerializer.Meta.fields, "config", "log_tail", "metrics", "model_versions"]
        extra_kwargs = {**RoundSerializer.Meta.extra_kwargs, "log_tail": {"help_text": "The last lines it logged."}}

    @extend_schema_field(serializers.DictField(child=MetricPointSerializer(many=True)))
    def get_metrics(self, training_round: TrainingRound) -> dict[str, list[dict[str, Any]]]:
        return {
            name: [{"step": step, "value": value} for step, value in points]
            for name, points in training_round.metric_series().items()
        }

    @extend_schema_field(ModelVersionSerializer(many=True))
    def get_model_versions(self, training_round: TrainingRound) -> list[dict[str, Any]]:
        versions = training_round.model_versions.select_related(*VERSION_RELATED)
        return ModelVersionSerializer(versions, many=True).data
