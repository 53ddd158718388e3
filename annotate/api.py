"""The REST API under /api/v1/, for scripts and bots: tokens, projects, import, the annotation queue, exports.

Who may do what (tests/api/test_permissions.py checks every endpoint for every kind of caller):
- anonymous: 401 everywhere except POST auth/token/ (username and password for a token);
- a project the user is not a member of does not exist for them: 404, never 403, so slugs cannot be probed;
- members (annotators and leads) read the project and their progress, work the queue, list their own annotations;
- leads (and superusers, who lead every project) also list prompts and responses, import, see every annotation
  and the lead stats, export, read the quality figures and pause or exclude members; an annotator asking for those
  gets 403, since they know the project exists.
Each view checks access with one helper, validates its input with an explicit serializer, and calls the same
model method as the pages do (Project.next_assignment, Assignment.submit, import_upload, ApiToken.issue, …).
"""

from typing import Any

from django.conf import settings
from django.contrib.auth import authenticate
from django.db.models import F, QuerySet, Value
from django.http import FileResponse
from django.urls import reverse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiExample, OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import exceptions
from rest_framework.generics import ListAPIView
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.parsers import MultiPartParser
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from annotate import judges
from annotate.exports import queue_export
from annotate.import_jobs import import_upload
from annotate.importing import ImportFailed
from annotate.models import (
    Annotation,
    ApiToken,
    Assignment,
    DatasetSnapshot,
    ImportJob,
    Judge,
    JudgeRun,
    LeaseError,
    Membership,
    MembershipEvent,
    Project,
    Prompt,
    QualityReport,
)
from annotate.models import Response as ModelResponse
from annotate.quality_reports import quality_for, request_quality
from annotate.serializers import (
    AnnotationFilter,
    AnnotationSerializer,
    AnswerIn,
    DecisionIn,
    ExportIn,
    ImportErrorSerializer,
    ImportIn,
    ImportJobSerializer,
    ImportResultSerializer,
    JudgeIn,
    JudgeRunIn,
    JudgeRunSerializer,
    JudgeSerializer,
    LeaseSerializer,
    LoginIn,
    MembershipEventFilter,
    MembershipEventSerializer,
    MemberStateSerializer,
    MeSerializer,
    MyAnswerSerializer,
    NewTokenSerializer,
    NextIn,
    ProjectSerializer,
    PromptFilter,
    PromptSerializer,
    QualitySerializer,
    QualityStatusSerializer,
    ResponseFilter,
    ResponseSerializer,
    SnapshotSerializer,
    StatsSerializer,
    TokenIn,
    TokenSerializer,
)
from annotate.suggestions import following
from annotate.views import lockout_message
from arbiter.api import Conflict, ErrorSerializer, error_responses, get_or_404, validated
from arbiter.api_defaults import NewestFirstPagination
from models_registry.models import ModelVersion

# Access helpers: 404 for what the user may not see ------------------------------------------------------------


def _projects_with_role(user: Any) -> QuerySet[Project]:
    """The user's projects, each with `role` annotated (superusers lead every project)."""
    if user.is_superuser:
        return Project.objects.annotate(role=Value(Membership.Role.LEAD))
    # The filter and the annotation share one join, so `role` is this user's membership's.
    return Project.objects.filter(memberships__user=user).annotate(role=F("memberships__role"))


def _project_for(request: Request, slug: str) -> Project:
    """The project if the user is a member (or a superuser); 404 otherwise."""
    return get_or_404(_projects_with_role(request.user), slug=slug)


def project_led_by(request: Request, slug: str) -> Project:
    """The project if the user leads it; 404 for outsiders, 403 for its annotators."""
    project = _project_for(request, slug)
    if project.role != Membership.Role.LEAD:
        raise exceptions.PermissionDenied("Only the project's leads may do this.")
    return project


# Me and tokens ------------------------------------------------------------------------------------------------


class MeView(APIView):
    @extend_schema(responses={200: MeSerializer, **error_responses(401)})
    def get(self, request: Request) -> Response:
        return Response(MeSerializer(request.user, context={"request": request}).data)


def _token_issued(user: Any, name: str) -> Response:
    token, plaintext = ApiToken.issue(user, name)
    return Response(NewTokenSerializer(token, context={"plaintext": plaintext}).data, status=201)


class LoginView(APIView):
    """Exchange a username and password for a new token (throttled: scope `login`)."""

    # The credentials are in the body: a stale Authorization header or a session must not get in the way.
    authentication_classes: list[type] = []
    permission_classes = [AllowAny]
    throttle_scope = "login"

    @extend_schema(
        request=LoginIn,
        responses={
            201: NewTokenSerializer,
            400: OpenApiResponse(
                OpenApiTypes.OBJECT, 'Missing fields, by field, or {"detail": "Wrong username or password."}.'
            ),
            **error_responses(429),
        },
        auth=[],
    )
    def post(self, request: Request) -> Response:
        data = validated(LoginIn, request.data)
        user = authenticate(request, username=data["username"], password=data["password"])
        if getattr(request, "axes_locked_out", False):  # set by django-axes on the request it was given
            retry_after = str(int(settings.AXES_COOLOFF_TIME.total_seconds()))
            return Response({"detail": lockout_message()}, status=429, headers={"Retry-After": retry_after})
        if user is None:
            return Response({"detail": "Wrong username or password."}, status=400)
        return _token_issued(user, data["name"])


@extend_schema_view(get=extend_schema(responses={200: TokenSerializer(many=True), **error_responses(400, 401, 404)}))
class TokenListView(ListAPIView):
    """Your API tokens, newest first; revoked ones stay listed with revoked_at."""

    serializer_class = TokenSerializer
    pagination_class = NewestFirstPagination

    def get_queryset(self) -> QuerySet[ApiToken]:
        return self.request.user.api_tokens.all()

    @extend_schema(request=TokenIn, responses={201: NewTokenSerializer, **error_responses(400, 401, 403)})
    def post(self, request: Request) -> Response:
        """Make a token: the response holds its plaintext, which is shown this once. Needs a session or password."""
        # A leaked token that could make tokens would outlive its own revocation.
        if isinstance(request.auth, ApiToken):
            raise exceptions.PermissionDenied("A token cannot make tokens: use /tokens/ or POST /api/v1/auth/token/.")
        return _token_issued(request.user, validated(TokenIn, request.data)["name"])


class TokenDetailView(APIView):
    @extend_schema(responses={204: None, **error_responses(401, 404)})
    def delete(self, request: Request, token_id: int) -> Response:
        """Revoke a token: refused from now on, and still listed. Revoking it again changes nothing."""
        get_or_404(request.user.api_tokens, pk=token_id).revoke()
        return Response(status=204)


# Projects ----------------------------------------------------------------------------------------------------


@extend_schema_view(get=extend_schema(responses={200: ProjectSerializer(many=True), **error_responses(400, 401, 404)}))
class ProjectListView(ListAPIView):
    """The projects you are a member of (every project, for superusers), with your role."""

    serializer_class = ProjectSerializer

    def get_queryset(self) -> QuerySet[Project]:
        return _projects_with_role(self.request.user)


class ProjectDetailView(APIView):
    @extend_schema(responses={200: ProjectSerializer, **error_responses(401, 404)})
    def get(self, request: Request, slug: str) -> Response:
        return Response(ProjectSerializer(_project_for(request, slug)).data)


class ProjectStatsView(APIView):
    @extend_schema(responses={200: StatsSerializer, **error_responses(401, 404)})
    def get(self, request: Request, slug: str) -> Response:
        """Your progress here; for leads also the project's figures (`lead`, null for annotators)."""
        project = _project_for(request, slug)
        lead = project.lead_stats() if project.role == Membership.Role.LEAD else None
        return Response(StatsSerializer({"progress": project.progress_for(request.user), "lead": lead}).data)


@extend_schema_view(
    get=extend_schema(
        parameters=[PromptFilter], responses={200: PromptSerializer(many=True), **error_responses(400, 401, 403, 404)}
    )
)
class PromptListView(ListAPIView):
    """The project's prompts (leads)."""

    serializer_class = PromptSerializer

    def get_queryset(self) -> QuerySet[Prompt]:
        prompts = project_led_by(self.request, self.kwargs["slug"]).prompts.all()
        if split := validated(PromptFilter, self.request.query_params).get("split"):
            prompts = prompts.filter(split=split)
        return prompts


@extend_schema_view(
    get=extend_schema(
        parameters=[ResponseFilter],
        responses={200: ResponseSerializer(many=True), **error_responses(400, 401, 403, 404)},
    )
)
class ResponseListView(ListAPIView):
    """The project's responses (leads)."""

    serializer_class = ResponseSerializer

    def get_queryset(self) -> QuerySet[ModelResponse]:
        project = project_led_by(self.request, self.kwargs["slug"])
        responses = ModelResponse.objects.filter(prompt__project=project).select_related("author")
        if prompt := validated(ResponseFilter, self.request.query_params).get("prompt"):
            responses = responses.filter(prompt_id=prompt)
        return responses


class ImportView(APIView):
    parser_classes = [MultiPartParser]

    @extend_schema(
        request=ImportIn,
        examples=[
            OpenApiExample(
                "Two responses to one prompt",
                value={"file": '{"id": "q1", "prompt": "Name a prime.", "responses": ["Two.", "Nine."]}\n'},
                request_only=True,
                media_type="multipart/form-data",
            )
        ],
        responses={
            201: OpenApiResponse(ImportResultSerializer, "A small file, imported in the request."),
            202: OpenApiResponse(ImportJobSerializer, "A big file, saved as an import job: poll its Location."),
            400: OpenApiResponse(ImportErrorSerializer, "The file was refused, naming the line and field."),
            **error_responses(401, 403, 404, 415),
        },
    )
    def post(self, request: Request, slug: str) -> Response:
        """Import a JSONL or CSV file (optionally gzipped), all or nothing; the formats of `manage.py import_data`.

        A file up to ARBITER_IMPORT_INLINE_BYTES (gzip: unpacked) is imported at once: 201 with what it made. A
        bigger one is imported by a worker: 202 with the job, which says its progress, result or error.
        """
        project = project_led_by(request, slug)
        upload = ImportIn(data=request.data)
        if not upload.is_valid():
            # One shape for every refusal here, whether of the upload or of a line in it.
            field, messages = next(iter(upload.errors.items()))
            raise ImportFailed(str(messages[0]), field=field)
        data = upload.validated_data
        outcome = import_upload(project, data["file"], format=data.get("format"), user=request.user)
        if isinstance(outcome, ImportJob):
            location = reverse("api:import_detail", args=[project.slug, outcome.pk])
            return Response(ImportJobSerializer(outcome).data, status=202, headers={"Location": location})
        return Response(ImportResultSerializer(outcome).data, status=201)


@extend_schema_view(
    get=extend_schema(responses={200: ImportJobSerializer(many=True), **error_responses(400, 401, 403, 404)})
)
class ImportJobListView(ListAPIView):
    """The project's import jobs (big uploads), newest first (leads)."""

    serializer_class = ImportJobSerializer
    pagination_class = NewestFirstPagination

    def get_queryset(self) -> QuerySet[ImportJob]:
        return project_led_by(self.request, self.kwargs["slug"]).import_jobs.select_related("project", "created_by")


class ImportJobDetailView(APIView):
    @extend_schema(responses={200: ImportJobSerializer, **error_responses(401, 403, 404)})
    def get(self, request: Request, slug: str, job_id: int) -> Response:
        """One import job: status, rows read so far, and its result, or its error with the line and field."""
        jobs = project_led_by(request, slug).import_jobs.select_related("project", "created_by")
        return Response(ImportJobSerializer(get_or_404(jobs, pk=job_id)).data)


# The queue ---------------------------------------------------------------------------------------------------


def _assignment_for(request: Request, slug: str, assignment_id: int) -> Assignment:
    """The user's own lease in a project they belong to; 404 for anyone else's, so lease ids cannot be probed."""
    project = _project_for(request, slug)
    assignments = Assignment.objects.select_related("task__project", "task__prompt")
    return get_or_404(assignments, pk=assignment_id, task__project=project, annotator=request.user)


class NextTaskView(APIView):
    @extend_schema(
        request=NextIn,
        responses={
            200: LeaseSerializer,
            204: OpenApiResponse(description="Nothing is left for you in this project now."),
            **error_responses(400, 401, 404),
            409: OpenApiResponse(
                ErrorSerializer,
                "With reuse_lease false: you already hold max_open_leases leases; or a lead paused your work here.",
            ),
        },
    )
    def post(self, request: Request, slug: str) -> Response:
        """Your next task: your oldest live lease here (unless reuse_lease is false), else a new lease.

        The responses come in the order this lease shows them, lettered A, B, …; answer in those terms.
        """
        project = _project_for(request, slug)
        reuse_lease = validated(NextIn, request.data)["reuse_lease"]
        assignment = project.next_assignment(request.user, reuse_lease=reuse_lease)
        if assignment is not None:
            return Response(LeaseSerializer(assignment).data)
        # next_assignment says None both when the queue is empty and when the cap is reached; a bot asking for
        # several leases must not mistake the second for the first and stop. Only a caller not reusing can reach
        # the cap: one reusing a lease would have been given it.
        if not reuse_lease:
            held = Assignment.objects.live().filter(task__project=project, annotator=request.user).count()
            if held >= project.max_open_leases:
                raise LeaseError(f"You hold {held} unsubmitted tasks here, the most allowed: submit or skip one first.")
        return Response(status=204)


class SubmitView(APIView):
    throttle_scope = "submit"

    @extend_schema(request=AnswerIn, responses={200: AnnotationSerializer, **error_responses(400, 401, 404, 409, 429)})
    def post(self, request: Request, slug: str, assignment_id: int) -> Response:
        """Answer a lease (throttled: scope `submit`). Sending the same answer twice stores it once: both succeed."""
        assignment = _assignment_for(request, slug, assignment_id)
        answer = assignment.answer_from_shown(validated(AnswerIn, request.data))
        annotation = assignment.submit(answer, user=request.user)
        return Response(AnnotationSerializer(annotation).data)


class SkipView(APIView):
    @extend_schema(request=None, responses={204: None, **error_responses(401, 404, 409)})
    def post(self, request: Request, slug: str, assignment_id: int) -> Response:
        """Give the task back; you will not be given it again."""
        _assignment_for(request, slug, assignment_id).skip(user=request.user)
        return Response(status=204)


@extend_schema_view(
    get=extend_schema(
        parameters=[AnnotationFilter],
        responses={200: AnnotationSerializer(many=True), **error_responses(400, 401, 404)},
    )
)
class AnnotationListView(ListAPIView):
    """Annotations in the project: your own, or every one for leads. Pairwise A and B are task positions 0 and 1."""

    serializer_class = AnnotationSerializer

    def get_queryset(self) -> QuerySet[Annotation]:
        project = _project_for(self.request, self.kwargs["slug"])
        annotations = (
            Annotation.objects.filter(task__project=project)
            .select_related("task", "annotator", "assignment", "written_response")
            .prefetch_related("task__task_responses")
        )
        if project.role != Membership.Role.LEAD:
            annotations = annotations.filter(annotator=self.request.user)
        if task := validated(AnnotationFilter, self.request.query_params).get("task"):
            annotations = annotations.filter(task_id=task)
        return annotations


# Your work: your answers, and changing one (the "my work" page's API) ------------------------------------------


def _own_answers(request: Request, slug: str) -> QuerySet[Annotation]:
    """The user's answers given on the task page, in a project they belong to."""
    return Annotation.objects.filter(
        task__project=_project_for(request, slug),
        annotator=request.user,
        source=Annotation.Source.HUMAN,
        assignment__isnull=False,
    ).select_related("task__project", "annotator", "assignment", "written_response")


@extend_schema_view(get=extend_schema(responses={200: MyAnswerSerializer(many=True), **error_responses(400, 401, 404)}))
class MyWorkView(ListAPIView):
    """Your answers in the project, newest first, in the terms you gave them, with whether each can still be changed
    (while its task is open, or for the project's edit_window_minutes after you gave it) and the answers it replaced."""

    serializer_class = MyAnswerSerializer
    pagination_class = NewestFirstPagination

    def get_queryset(self) -> QuerySet[Annotation]:
        return _own_answers(self.request, self.kwargs["slug"]).prefetch_related("task__task_responses", "revisions__by")


class ChangeAnswerView(APIView):
    throttle_scope = "submit"

    @extend_schema(request=AnswerIn, responses={200: MyAnswerSerializer, **error_responses(400, 401, 404, 409, 429)})
    def post(self, request: Request, slug: str, annotation_id: int) -> Response:
        """Change one of your answers (throttled: scope `submit`): the body is a submit's, in the terms its lease
        showed. The answer it replaces is kept in `revisions`; the same change twice is kept once. 409 once the answer
        can no longer be changed (`locked_because` says why) or while a lead paused your work here."""
        annotation = get_or_404(_own_answers(request, slug), pk=annotation_id)
        assignment = annotation.assignment
        answer = assignment.answer_from_shown(validated(AnswerIn, request.data))
        annotation.change(answer, user=request.user)
        return Response(MyAnswerSerializer(annotation).data)


# Exports -----------------------------------------------------------------------------------------------------


@extend_schema_view(
    get=extend_schema(responses={200: SnapshotSerializer(many=True), **error_responses(400, 401, 403, 404)})
)
class ExportListView(ListAPIView):
    """The project's dataset exports, newest first (leads)."""

    serializer_class = SnapshotSerializer
    pagination_class = NewestFirstPagination
    throttle_scope = "export"  # POST only (the default throttle leaves reads alone)

    def get_queryset(self) -> QuerySet[DatasetSnapshot]:
        return project_led_by(self.request, self.kwargs["slug"]).snapshots.select_related("project", "created_by")

    @extend_schema(
        request=ExportIn,
        responses={
            202: SnapshotSerializer,
            **error_responses(400, 401, 403, 404, 429),
            409: OpenApiResponse(ErrorSerializer, "The project has ARBITER_MAX_ACTIVE_EXPORTS exports under way."),
        },
    )
    def post(self, request: Request, slug: str) -> Response:
        """Start an export; it runs in the background: poll it until status is ready, then download it."""
        project = project_led_by(request, slug)
        data = validated(ExportIn, request.data)
        snapshot = queue_export(
            project,
            kind=data["kind"],
            format=data["format"],
            style=data["style"],
            filters=data.get("filters", {}),
            user=request.user,
        )
        location = reverse("api:export_detail", args=[project.slug, snapshot.pk])
        return Response(SnapshotSerializer(snapshot).data, status=202, headers={"Location": location})


def _snapshot_for(request: Request, slug: str, snapshot_id: int) -> DatasetSnapshot:
    project = project_led_by(request, slug)
    return get_or_404(project.snapshots.select_related("project", "created_by"), pk=snapshot_id)


class ExportDetailView(APIView):
    @extend_schema(responses={200: SnapshotSerializer, **error_responses(401, 403, 404)})
    def get(self, request: Request, slug: str, snapshot_id: int) -> Response:
        """One export: status, rows written so far, and when ready its row count and sha256."""
        return Response(SnapshotSerializer(_snapshot_for(request, slug, snapshot_id)).data)


EXPORT_MEDIA_TYPES = {
    DatasetSnapshot.Format.JSONL: "application/jsonl",
    DatasetSnapshot.Format.PARQUET: "application/vnd.apache.parquet",
}


class _AnyAccept(DefaultContentNegotiation):
    """The file goes out whatever Accept asks for (Swagger UI asks for its media type); errors stay JSON."""

    def select_renderer(self, request: Request, renderers: list, format_suffix: str | None = None) -> tuple:
        return renderers[0], renderers[0].media_type


class ExportDownloadView(APIView):
    content_negotiation_class = _AnyAccept

    @extend_schema(
        responses={
            **{(200, media_type): OpenApiTypes.BINARY for media_type in EXPORT_MEDIA_TYPES.values()},
            **error_responses(401, 403, 404, 409),
        }
    )
    def get(self, request: Request, slug: str, snapshot_id: int) -> FileResponse:
        """The export's file, once ready; its ETag is the sha256 of the content."""
        snapshot = _snapshot_for(request, slug, snapshot_id)
        if snapshot.status != DatasetSnapshot.Status.READY:
            raise Conflict(f"The export is {snapshot.status}, not ready: poll it until it is.")
        response = FileResponse(
            snapshot.file.open("rb"),
            as_attachment=True,
            filename=f"{snapshot.project.slug}-{snapshot.kind}-{snapshot.pk}.{snapshot.format}",
            content_type=EXPORT_MEDIA_TYPES[snapshot.format],
        )
        response["ETag"] = f'"{snapshot.sha256}"'
        return response


# Quality -----------------------------------------------------------------------------------------------------


class QualityView(APIView):
    @extend_schema(responses={200: QualitySerializer, **error_responses(401, 403, 404)})
    def get(self, request: Request, slug: str) -> Response:
        """The quality figures per annotator, per judge and for the project (leads), as last computed.

        Computed by a worker (every few minutes for a project with new answers, or on POST quality/recompute/); the
        flags are against the project's thresholds now, and paused and votes_excluded say each member's state now.
        Annotators flagged first; judges (with their agreement with the human majority) by name. `suggestions` (how
        far the judge's suggestions sway annotators) is read live.
        """
        project = project_led_by(request, slug)
        return Response(QualitySerializer({**quality_for(project), "suggestions": following(project)}).data)


class QualityRecomputeView(APIView):
    @extend_schema(
        request=None,
        responses={
            202: QualityStatusSerializer,
            **error_responses(401, 403, 404),
            409: OpenApiResponse(ErrorSerializer, "A recomputation is already queued or running."),
        },
    )
    def post(self, request: Request, slug: str) -> Response:
        """Recompute the quality figures now, in a worker: poll GET quality/ until computed_at moves."""
        project = project_led_by(request, slug)
        if not request_quality(project, user=request.user):
            raise Conflict("A recomputation is already under way: it reads every answer given until it starts.")
        report = QualityReport.objects.get(project=project)
        location = reverse("api:quality", args=[project.slug])
        return Response(QualityStatusSerializer(report).data, status=202, headers={"Location": location})


class MemberDecisionView(APIView):
    """One of a lead's decisions on a member; `kind` (a MembershipEvent.Kind) is given by the route."""

    kind = ""

    @extend_schema(request=DecisionIn, responses={200: MemberStateSerializer, **error_responses(400, 401, 403, 404)})
    def post(self, request: Request, slug: str, username: str) -> Response:
        """Pause a member (no tasks; their live leases go back to the queue) or resume them; exclude their votes
        from every export, round and agreement, or include them again. Recorded with who and why: a reason is needed
        to pause or exclude. Doing what is so already changes nothing (event null)."""
        project = project_led_by(request, slug)
        membership = get_or_404(project.memberships.select_related("user"), user__username=username)
        event = membership.decide(self.kind, by=request.user, reason=validated(DecisionIn, request.data)["reason"])
        state = {
            "username": membership.user.get_username(),
            "role": membership.role,
            "paused": membership.paused,
            "votes_excluded": membership.votes_excluded,
            "event": event,
        }
        return Response(MemberStateSerializer(state).data)


@extend_schema_view(
    get=extend_schema(
        parameters=[MembershipEventFilter],
        responses={200: MembershipEventSerializer(many=True), **error_responses(400, 401, 403, 404)},
    )
)
class MembershipEventListView(ListAPIView):
    """Leads' decisions on the project's members (paused, resumed, votes excluded or included), newest first."""

    serializer_class = MembershipEventSerializer
    pagination_class = NewestFirstPagination

    def get_queryset(self) -> QuerySet[MembershipEvent]:
        events = project_led_by(self.request, self.kwargs["slug"]).membership_events.select_related("user", "by")
        if username := validated(MembershipEventFilter, self.request.query_params).get("username"):
            events = events.filter(user__username=username)
        return events


# Judges (annotate/judges.py): leads only ----------------------------------------------------------------------


def _judge_for(request: Request, slug: str, name: str) -> Judge:
    project = project_led_by(request, slug)
    return get_or_404(project.judges.select_related("project", "model_version", "user", "created_by"), name=name)


@extend_schema_view(
    get=extend_schema(responses={200: JudgeSerializer(many=True), **error_responses(400, 401, 403, 404)})
)
class JudgeListView(ListAPIView):
    """The project's judges (leads)."""

    serializer_class = JudgeSerializer

    def get_queryset(self) -> QuerySet[Judge]:
        project = project_led_by(self.request, self.kwargs["slug"])
        return project.judges.select_related("model_version", "user", "created_by")

    @extend_schema(request=JudgeIn, responses={201: JudgeSerializer, **error_responses(400, 401, 403, 404)})
    def post(self, request: Request, slug: str) -> Response:
        """Add a judge: a reward model of the project's registry, or an LLM behind an OpenAI-compatible endpoint
        (its API key read from the environment variable api_key_env of the worker, never sent here)."""
        project = project_led_by(request, slug)
        data = dict(validated(JudgeIn, request.data))
        if name := data.pop("reward_model", None):
            version = ModelVersion.objects.named(project, ModelVersion.Kind.REWARD, name)
            if version is None:
                raise exceptions.ValidationError({"reward_model": [f"No reward model {name!r} in this project."]})
            fields = {"kind": Judge.Kind.REWARD_MODEL, "model_version": version}
        else:
            fields = {"kind": Judge.Kind.LLM, **{key: value for key, value in data.items() if key != "name"}}
        judge = Judge.create(project, data["name"], created_by=request.user, **fields)
        location = reverse("api:judge_runs", args=[project.slug, judge.name])
        return Response(JudgeSerializer(judge).data, status=201, headers={"Location": location})


@extend_schema_view(
    get=extend_schema(responses={200: JudgeRunSerializer(many=True), **error_responses(400, 401, 403, 404)})
)
class JudgeRunListView(ListAPIView):
    """A judge's runs, newest first (leads)."""

    serializer_class = JudgeRunSerializer
    pagination_class = NewestFirstPagination
    throttle_scope = "launch"  # POST only

    def get_queryset(self) -> QuerySet[JudgeRun]:
        return _judge_for(self.request, self.kwargs["slug"], self.kwargs["name"]).runs.select_related(
            "judge", "created_by"
        )

    @extend_schema(request=JudgeRunIn, responses={202: JudgeRunSerializer, **error_responses(400, 401, 403, 404, 429)})
    def post(self, request: Request, slug: str, name: str) -> Response:
        """Start a run over the open tasks, a random sample (limit) or a round's new samples; a worker runs it: poll
        it for its progress."""
        judge = _judge_for(request, slug, name)
        data = validated(JudgeRunIn, request.data)
        run = judges.start(judge, **data, created_by=request.user)
        location = reverse("api:judge_run_detail", args=[slug, name, run.pk])
        return Response(JudgeRunSerializer(run).data, status=202, headers={"Location": location})


def _run_for(request: Request, slug: str, name: str, run_id: int) -> JudgeRun:
    judge = _judge_for(request, slug, name)
    return get_or_404(judge.runs.select_related("judge", "created_by"), pk=run_id)


class JudgeRunDetailView(APIView):
    @extend_schema(responses={200: JudgeRunSerializer, **error_responses(401, 403, 404)})
    def get(self, request: Request, slug: str, name: str, run_id: int) -> Response:
        """One run: status, what it answered, failed and skipped so far, the first failures, or its error."""
        return Response(JudgeRunSerializer(_run_for(request, slug, name, run_id)).data)


class JudgeRunCancelView(APIView):
    @extend_schema(
        request=None,
        responses={
            202: JudgeRunSerializer,
            **error_responses(401, 403, 404),
            409: OpenApiResponse(ErrorSerializer, "The run has already finished."),
        },
    )
    def post(self, request: Request, slug: str, name: str, run_id: int) -> Response:
        """Cancel a run: a pending one at once; a running one after the tasks in flight (poll it). Its answers stay."""
        run = _run_for(request, slug, name, run_id)
        if run.status not in (JudgeRun.Status.PENDING, JudgeRun.Status.RUNNING):
            raise Conflict(f"The run has already {run.status}.")
        run.request_cancel()
        return Response(JudgeRunSerializer(run).data, status=202)
