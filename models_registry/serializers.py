"""The model registry's API inputs and outputs (views in models_registry/api.py): registered model versions."""

from typing import Any

from django.urls import reverse
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from arbiter.api import QueryFilter
from models_registry.models import ModelVersion


class VersionRefSerializer(serializers.ModelSerializer):
    """A version named, for the rounds and versions that point at it."""

    name = serializers.SerializerMethodField(help_text="policy-v3, reward-v2: what a round's base accepts.")
    url = serializers.SerializerMethodField()

    class Meta:
        model = ModelVersion
        fields = ["id", "name", "status", "url"]

    def get_name(self, version: ModelVersion) -> str:
        return f"{version.kind}-v{version.version}"

    def get_url(self, version: ModelVersion) -> str:
        return reverse("api:model_detail", args=[version.project.slug, version.pk])


# What ModelVersionSerializer reads besides the version's row, for select_related: a page of versions in one query.
VERSION_RELATED = ("project", "parent__project", "training_round")


class ModelVersionSerializer(VersionRefSerializer):
    """A registered policy or reward model, traceable to its base, round, data and code."""

    parent = VersionRefSerializer(allow_null=True, help_text="The registered policy it was trained from.")
    training_round = serializers.IntegerField(
        source="training_round.number", allow_null=True, help_text="The project's round that trained it."
    )
    eval_report = serializers.DictField()

    class Meta:
        model = ModelVersion
        fields = [
            "id",
            "name",
            "kind",
            "version",
            "status",
            "base_model",
            "adapter_path",
            "parent",
            "training_round",
            "snapshot_sha256",
            "eval_report",
            "code_version",
            "created_at",
            "url",
        ]


class ModelVersionDetailSerializer(ModelVersionSerializer):
    """A version with its training config and lineage."""

    config = serializers.DictField(help_text="The stage's config that trained it.")
    lineage = serializers.SerializerMethodField(
        help_text="This version and the ones it was trained from, newest first."
    )

    class Meta(ModelVersionSerializer.Meta):
        fields = [*ModelVersionSerializer.Meta.fields, "config", "lineage"]

    @extend_schema_field(ModelVersionSerializer(many=True))
    def get_lineage(self, version: ModelVersion) -> list[dict[str, Any]]:
        return ModelVersionSerializer(version.lineage(), many=True).data


class ModelVersionFilter(QueryFilter):
    kind = serializers.ChoiceField(ModelVersion.Kind.choices, required=False)
    status = serializers.ChoiceField(ModelVersion.Status.choices, required=False)
