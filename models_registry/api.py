"""The model registry in the API (/api/v1/projects/<slug>/models/): leads only.

Access is annotate/api.py's, as for rounds: 401 without credentials, 404 for a project you are not a member of,
403 for its annotators. Versions are named by id (their name, policy-v3, is in the body). Promoting makes the call
the admin makes: ModelVersion.promote.
"""

from django.db.models import QuerySet
from drf_spectacular.utils import extend_schema, extend_schema_view
from rest_framework.generics import ListAPIView
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from annotate.api import project_led_by
from annotate.models import Project
from arbiter.api import error_responses, get_or_404, validated
from arbiter.api_defaults import NewestFirstPagination
from models_registry.models import ModelVersion
from models_registry.serializers import (
    VERSION_RELATED,
    ModelVersionDetailSerializer,
    ModelVersionFilter,
    ModelVersionSerializer,
)


def _versions(project: Project) -> QuerySet[ModelVersion]:
    return project.model_versions.select_related(*VERSION_RELATED)


def _version_for(request: Request, slug: str, version_id: int) -> ModelVersion:
    return get_or_404(_versions(project_led_by(request, slug)), pk=version_id)


@extend_schema_view(
    get=extend_schema(
        parameters=[ModelVersionFilter],
        responses={200: ModelVersionSerializer(many=True), **error_responses(400, 401, 403, 404)},
    )
)
class ModelVersionListView(ListAPIView):
    """The project's registered policies and reward models, newest first (leads)."""

    serializer_class = ModelVersionSerializer
    pagination_class = NewestFirstPagination

    def get_queryset(self) -> QuerySet[ModelVersion]:
        versions = _versions(project_led_by(self.request, self.kwargs["slug"]))
        return versions.filter(**validated(ModelVersionFilter, self.request.query_params))


class ModelVersionDetailView(APIView):
    @extend_schema(responses={200: ModelVersionDetailSerializer, **error_responses(401, 403, 404)})
    def get(self, request: Request, slug: str, version_id: int) -> Response:
        """One version by id: where it came from (base, parent, round, snapshot, config, code) and its evaluation."""
        return Response(ModelVersionDetailSerializer(_version_for(request, slug, version_id)).data)


class ModelVersionPromoteView(APIView):
    @extend_schema(request=None, responses={200: ModelVersionDetailSerializer, **error_responses(401, 403, 404)})
    def post(self, request: Request, slug: str, version_id: int) -> Response:
        """Make this the project's active version of its kind; the one active before is archived."""
        version = _version_for(request, slug, version_id)
        version.promote()
        return Response(ModelVersionDetailSerializer(version).data)
