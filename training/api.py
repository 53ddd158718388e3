"""Training rounds in the API (/api/v1/projects/<slug>/rounds/): leads only.

Access is annotate/api.py's: 401 without credentials, 404 for a project you are not a member of, 403 for its
annotators (they know the project exists, but training is the leads' business). Rounds are named by their
number in the project, as on the round pages (model versions are in models_registry/api.py).
Each view makes the call the admin makes: launch_round, relaunch, TrainingRound.request_cancel.
Launches and relaunches are throttled per user (scope `launch`: 429) and refused while the project has
ARBITER_MAX_ACTIVE_ROUNDS rounds under way (409).
"""

from django.db.models import QuerySet
from django.urls import reverse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_view
from rest_framework.generics import ListAPIView
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from annotate.api import project_led_by
from annotate.models import Project
from arbiter.api import Conflict, ErrorSerializer, error_responses, get_or_404, validated
from arbiter.api_defaults import NewestFirstPagination
from training.models import TrainingRound
from training.rounds import launch_round, relaunch
from training.serializers import (
    LaunchIn,
    RoundDetailSerializer,
    RoundSerializer,
)

_REFUSED = OpenApiResponse(
    OpenApiTypes.OBJECT,
    "Refused, nothing queued: errors by field, or by the setting or dataset filter at fault "
    '({"dpo.beta": ["beta: must be > 0, got -1.0"]}).',
)
# A launch is throttled (scope `launch`, per user) and refused while the project has its quota of rounds under way.
_LAUNCH_REFUSALS = {
    400: _REFUSED,
    **error_responses(401, 403, 404, 429),
    409: OpenApiResponse(
        ErrorSerializer, "The project has ARBITER_MAX_ACTIVE_ROUNDS rounds queued or running: nothing queued."
    ),
}


# Rounds ----------------------------------------------------------------------------------------------------


def _rounds(project: Project) -> QuerySet[TrainingRound]:
    return project.training_rounds.select_related(
        "project", "snapshot", "created_by", "base_version__project", "reward_version__project"
    )


def _round_for(request: Request, slug: str, number: int) -> TrainingRound:
    return get_or_404(_rounds(project_led_by(request, slug)), number=number)


def _round_created(training_round: TrainingRound) -> Response:
    location = reverse("api:round_detail", args=[training_round.project.slug, training_round.number])
    return Response(RoundDetailSerializer(training_round).data, status=201, headers={"Location": location})


@extend_schema_view(
    get=extend_schema(responses={200: RoundSerializer(many=True), **error_responses(400, 401, 403, 404)})
)
class RoundListView(ListAPIView):
    """The project's training rounds, newest first (leads)."""

    serializer_class = RoundSerializer
    pagination_class = NewestFirstPagination
    throttle_scope = "launch"  # POST only (the default throttle leaves reads alone)

    def get_queryset(self) -> QuerySet[TrainingRound]:
        return _rounds(project_led_by(self.request, self.kwargs["slug"]))

    @extend_schema(request=LaunchIn, responses={201: RoundDetailSerializer, **_LAUNCH_REFUSALS})
    def post(self, request: Request, slug: str) -> Response:
        """Launch a round: checked as the admin's launch form checks it, then queued for a GPU worker; poll it."""
        project = project_led_by(request, slug)
        data = validated(LaunchIn, request.data)
        training_round = launch_round(
            project,
            method=data["method"],
            user=request.user,
            base=data.get("base", ""),
            reward_model=data.get("reward_model", ""),
            settings_=data.get("settings", {}),
            filters=data.get("filters", {}),
        )
        return _round_created(training_round)


class RoundDetailView(APIView):
    @extend_schema(responses={200: RoundDetailSerializer, **error_responses(401, 403, 404)})
    def get(self, request: Request, slug: str, number: int) -> Response:
        """One round: status, progress, its snapshot and config, the metric series, the log tail, what it registered."""
        return Response(RoundDetailSerializer(_round_for(request, slug, number)).data)


class RoundCancelView(APIView):
    @extend_schema(
        request=None,
        responses={
            202: RoundDetailSerializer,
            **error_responses(401, 403, 404),
            409: OpenApiResponse(ErrorSerializer, "The round has already finished."),
        },
    )
    def post(self, request: Request, slug: str, number: int) -> Response:
        """Cancel a round: a queued one at once; a running one stops after its current step (poll it)."""
        training_round = _round_for(request, slug, number)
        if training_round.is_finished:
            raise Conflict(f"The round has already {training_round.status}.")
        training_round.request_cancel()
        return Response(RoundDetailSerializer(training_round).data, status=202)


class RoundRelaunchView(APIView):
    throttle_scope = "launch"

    @extend_schema(request=None, responses={201: RoundDetailSerializer, **_LAUNCH_REFUSALS})
    def post(self, request: Request, slug: str, number: int) -> Response:
        """A new round with this one's method, base, settings and filters (after a failure or a cancel); its base is
        checked again, as a new launch's would be."""
        return _round_created(relaunch(_round_for(request, slug, number), user=request.user))
