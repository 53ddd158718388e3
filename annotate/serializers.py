"""The API's inputs and outputs (views in annotate/api.py): explicit shapes, so the OpenAPI schema is exact."""

from collections.abc import Mapping
from typing import Any

from django.urls import reverse
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from annotate.answers import PREFERENCES
from annotate.exports import EXPORT_OPTIONS, Aggregation, Votes
from annotate.importing import FORMATS
from annotate.models import (
    Annotation,
    AnnotationRevision,
    ApiToken,
    Assignment,
    DatasetSnapshot,
    ImportJob,
    Membership,
    MembershipEvent,
    Project,
    Prompt,
    QualityReport,
    Response,
    TaskKind,
)
from annotate.quality_reports import FLAGS
from arbiter.api import MAX_ID, ErrorSerializer, JsonBooleanField, QueryFilter


class ImportErrorSerializer(ErrorSerializer):
    line = serializers.IntegerField(allow_null=True, help_text="The file's line (CSV: the row's first line).")
    field = serializers.CharField(allow_null=True, help_text="The field or column at fault.")


# Me and tokens -------------------------------------------------------------------------------------------------


class MembershipSerializer(serializers.ModelSerializer):
    project = serializers.SlugField(source="project.slug")

    class Meta:
        model = Membership
        fields = ["project", "role"]


class MeSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    username = serializers.CharField()
    email = serializers.CharField(help_text="May be empty.")
    is_admin = serializers.BooleanField(source="is_superuser", help_text="Superusers lead every project.")
    auth = serializers.SerializerMethodField(help_text="How this request was authenticated: token or session.")
    memberships = serializers.SerializerMethodField()

    def get_auth(self, user: Any) -> str:
        return "token" if isinstance(self.context["request"].auth, ApiToken) else "session"

    def get_memberships(self, user: Any) -> list[dict[str, str]]:
        memberships = user.memberships.select_related("project").order_by("project__slug")
        return MembershipSerializer(memberships, many=True).data


class TokenSerializer(serializers.ModelSerializer):
    hint = serializers.CharField(source="masked", help_text="The token's start, to tell tokens apart.")

    class Meta:
        model = ApiToken
        fields = ["id", "name", "hint", "created_at", "last_used_at", "revoked_at"]


class NewTokenSerializer(TokenSerializer):
    token = serializers.SerializerMethodField(help_text="The token itself: shown this once, only its hash is kept.")

    class Meta(TokenSerializer.Meta):
        fields = [*TokenSerializer.Meta.fields, "token"]

    def get_token(self, token: ApiToken) -> str:
        return self.context["plaintext"]


class TokenIn(serializers.Serializer):
    name = serializers.CharField(max_length=100, help_text="What the token is for, e.g. the script using it.")


class LoginIn(TokenIn):
    username = serializers.CharField()
    password = serializers.CharField(trim_whitespace=False, style={"input_type": "password"})
    name = serializers.CharField(max_length=100, default="API login", help_text=TokenIn().fields["name"].help_text)


# Projects and their data ---------------------------------------------------------------------------------------


class ProjectSerializer(serializers.ModelSerializer):
    role = serializers.ChoiceField(Membership.Role.choices, help_text="Your role here.")
    task_kinds = serializers.ListField(child=serializers.ChoiceField(TaskKind.choices))
    rating_descriptions = serializers.DictField(child=serializers.CharField(), help_text="Scale point → meaning.")
    labels = serializers.ListField(child=serializers.CharField())
    lease_seconds = serializers.SerializerMethodField(help_text="How long a task stays yours once given.")

    class Meta:
        model = Project
        fields = [
            "id",
            "slug",
            "name",
            "role",
            "guidelines",
            "task_kinds",
            "rating_min",
            "rating_max",
            "rating_descriptions",
            "labels",
            "overlap",
            "fill",
            "text_format",
            "lease_seconds",
            "max_open_leases",
            "created_at",
        ]

    def get_lease_seconds(self, project: Project) -> int:
        return int(project.lease_length.total_seconds())


class ProgressSerializer(serializers.Serializer):
    done = serializers.IntegerField(help_text="Your annotations here.")
    remaining = serializers.IntegerField(help_text="Tasks left for you, counted up to 1000.")
    complete_tasks = serializers.IntegerField()
    total_tasks = serializers.IntegerField()


class TaskCountSerializer(serializers.Serializer):
    status = serializers.CharField()
    kind = serializers.CharField()
    count = serializers.IntegerField()


class AnnotatorCountSerializer(serializers.Serializer):
    username = serializers.CharField()
    annotations = serializers.IntegerField()
    last_at = serializers.DateTimeField()


class HourCountSerializer(serializers.Serializer):
    hour = serializers.DateTimeField()
    annotations = serializers.IntegerField()


class LiveLeaseSerializer(serializers.ModelSerializer):
    annotator = serializers.CharField(source="annotator.username")
    kind = serializers.CharField(source="task.kind")

    class Meta:
        model = Assignment
        fields = ["id", "annotator", "task", "kind", "leased_at", "expires_at"]


class KindAgreementSerializer(serializers.Serializer):
    kind = serializers.ChoiceField(TaskKind.choices)
    units = serializers.IntegerField(help_text="Items with two human answers or more.")
    values = serializers.IntegerField(help_text="The answers on them.")
    percent = serializers.FloatField(
        allow_null=True, help_text="Of every two answers to one item, the share that are equal (0-1)."
    )
    alpha = serializers.FloatField(
        allow_null=True, help_text="Krippendorff's alpha: 1 perfect, 0 chance; null with nothing to expect."
    )


class AnnotatorAgreementSerializer(serializers.Serializer):
    username = serializers.CharField(source="annotator")
    agreed = serializers.IntegerField(help_text="Comparisons with another's answer to the same item that were equal.")
    compared = serializers.IntegerField()
    percent = serializers.FloatField()


class AgreementSerializer(serializers.Serializer):
    tasks = serializers.IntegerField(help_text="The latest tasks with two annotations or more, measured.")
    by_kind = KindAgreementSerializer(many=True)
    by_annotator = AnnotatorAgreementSerializer(many=True, help_text="Lowest agreement first.")


class LeadStatsSerializer(serializers.Serializer):
    tasks = TaskCountSerializer(many=True)
    per_annotator = AnnotatorCountSerializer(many=True)
    per_hour = HourCountSerializer(many=True, help_text="Annotations per hour over the last day.")
    live_leases = LiveLeaseSerializer(many=True)
    agreement = AgreementSerializer(help_text="Inter-annotator agreement; see annotate/agreement.py.")

    def to_representation(self, stats: dict[str, Any]) -> dict[str, Any]:
        # Project.lead_stats gives tuples; the API names their parts.
        return super().to_representation(
            {
                "tasks": [
                    {"status": status, "kind": kind, "count": n}
                    for (status, kind), n in sorted(stats["tasks_by_status"].items())
                ],
                "per_annotator": [
                    {"username": username, "annotations": n, "last_at": last_at}
                    for username, n, last_at in stats["per_annotator"]
                ],
                "per_hour": [{"hour": hour, "annotations": n} for hour, n in stats["per_hour"]],
                "live_leases": stats["live_leases"],
                "agreement": stats["agreement"],
            }
        )


class StatsSerializer(serializers.Serializer):
    progress = ProgressSerializer()
    lead = LeadStatsSerializer(allow_null=True, help_text="The project's figures, for leads; null for annotators.")


class MessageSerializer(serializers.Serializer):
    role = serializers.ChoiceField(["system", "user", "assistant"])
    content = serializers.CharField()


class PromptSerializer(serializers.ModelSerializer):
    messages = MessageSerializer(many=True)
    metadata = serializers.DictField()

    class Meta:
        model = Prompt
        fields = ["id", "external_id", "split", "messages", "metadata", "created_at"]


class ResponseSerializer(serializers.ModelSerializer):
    generation_params = serializers.DictField()
    author = serializers.CharField(
        source="author.username", allow_null=True, help_text="Who wrote a human response on a task; else null."
    )

    class Meta:
        model = Response
        fields = ["id", "prompt", "content", "source", "author", "model_version", "generation_params", "created_at"]


class PromptFilter(QueryFilter):
    split = serializers.ChoiceField(Prompt.Split.choices, required=False)


class ResponseFilter(QueryFilter):
    prompt = serializers.IntegerField(min_value=1, max_value=MAX_ID, required=False, help_text="A prompt's id.")


class ImportIn(serializers.Serializer):
    file = serializers.FileField(help_text="JSONL or CSV, UTF-8, optionally gzipped.")
    format = serializers.ChoiceField(
        FORMATS, required=False, help_text="The row format; detected from the first row when not given."
    )


class ImportResultSerializer(serializers.Serializer):
    format = serializers.ChoiceField(FORMATS)
    filetype = serializers.CharField()
    rows = serializers.IntegerField()
    prompts_created = serializers.IntegerField()
    prompts_existing = serializers.IntegerField(help_text="Rows for prompts that already existed (reused as is).")
    responses_created = serializers.IntegerField()
    tasks_created = serializers.IntegerField()
    annotations_created = serializers.IntegerField(help_text="Imported votes and gold answers.")
    gold_tasks_created = serializers.IntegerField(
        required=False, help_text="Of tasks_created: gold tasks, each with its gold answer (absent in older jobs)."
    )


class ImportJobSerializer(serializers.ModelSerializer):
    project = serializers.SlugField(source="project.slug")
    created_by = serializers.CharField(source="created_by.username", allow_null=True)
    result = ImportResultSerializer(allow_null=True, help_text="What the import made, once status is succeeded.")
    line = serializers.IntegerField(
        source="error_line", allow_null=True, help_text="When it failed on a line: that line (CSV: the row's first)."
    )
    field = serializers.SerializerMethodField(help_text="When it failed on a field or column: its name.")

    class Meta:
        model = ImportJob
        fields = [
            "id",
            "project",
            "file_name",
            "format",
            "status",
            "rows_read",
            "result",
            "error",
            "line",
            "field",
            "created_by",
            "created_at",
            "started_at",
            "heartbeat_at",
            "finished_at",
        ]
        extra_kwargs = {
            "format": {"help_text": "The format asked for; empty: detected from the first row (result.format)."},
            "rows_read": {"help_text": "Progress: rows read so far (committed only when the whole file is)."},
        }

    def get_field(self, job: ImportJob) -> str | None:
        return job.error_field or None


# The queue -----------------------------------------------------------------------------------------------------


class NextIn(serializers.Serializer):
    reuse_lease = JsonBooleanField(
        default=True,
        help_text="false: a new lease even while you hold one (up to the project's max_open_leases), "
        "to work on several tasks at once.",
    )


class PromptMessagesSerializer(serializers.ModelSerializer):
    messages = MessageSerializer(many=True)

    class Meta:
        model = Prompt
        fields = ["id", "messages"]


class ShownResponseSerializer(serializers.Serializer):
    letter = serializers.CharField(help_text="A, B, …: the name the answer uses (pairwise: a2 = A much better).")
    id = serializers.IntegerField()
    content = serializers.CharField()


class AnswerFieldSerializer(serializers.Serializer):
    name = serializers.CharField()
    type = serializers.ChoiceField(["integer", "string", "boolean", "array", "object"])
    required = serializers.BooleanField()
    choices = serializers.ListField(child=serializers.JSONField(), help_text="The values allowed; empty: any.")
    keys = serializers.ListField(child=serializers.CharField(), required=False, help_text="An object's keys.")
    description = serializers.CharField()


class LeaseSerializer(serializers.ModelSerializer):
    """A task given to you: its prompt, its responses in the order shown to you, and what to answer."""

    project = serializers.SlugField(source="task.project.slug")
    kind = serializers.ChoiceField(TaskKind.choices, source="task.kind")
    prompt = PromptMessagesSerializer(source="task.prompt")
    responses = serializers.SerializerMethodField()
    answer_fields = serializers.SerializerMethodField()
    submit_url = serializers.SerializerMethodField()
    skip_url = serializers.SerializerMethodField()

    class Meta:
        model = Assignment
        fields = [
            "id",
            "project",
            "task",
            "kind",
            "status",
            "leased_at",
            "expires_at",
            "prompt",
            "responses",
            "answer_fields",
            "submit_url",
            "skip_url",
        ]

    @extend_schema_field(ShownResponseSerializer(many=True))
    def get_responses(self, assignment: Assignment) -> list[dict[str, Any]]:
        return [
            {"letter": letter, "id": response.pk, "content": response.content}
            for letter, response in assignment.shown_responses()
        ]

    @extend_schema_field(AnswerFieldSerializer(many=True))
    def get_answer_fields(self, assignment: Assignment) -> list[dict[str, Any]]:
        """What a submit for this lease must send: the task page's fields, with the values each allows."""
        task, project = assignment.task, assignment.task.project
        comment = {"name": "comment", "type": "string", "required": False, "choices": [], "description": "Optional."}
        if task.kind == TaskKind.WRITE:
            draft = " The task's one response is a model draft to start from." if assignment.shown_order else ""
            return [
                {
                    "name": "text",
                    "type": "string",
                    "required": True,
                    "choices": [],
                    "description": "The assistant's reply to the prompt, written by you (not blank)." + draft,
                },
                comment,
            ]
        if task.kind == TaskKind.RATING:
            meanings = project.rating_descriptions or {}
            scale = "; ".join(f"{p}: {meanings[str(p)]}" for p in project.rating_points if str(p) in meanings)
            return [
                {
                    "name": "score",
                    "type": "integer",
                    "required": True,
                    "choices": list(project.rating_points),
                    "description": scale or "The rating.",
                },
                {
                    "name": "labels",
                    "type": "array",
                    "required": False,
                    "choices": project.labels,
                    "description": "The project's labels that apply.",
                },
                {
                    "name": "correction",
                    "type": "string",
                    "required": False,
                    "choices": [],
                    "description": "A better answer than the response, written by you: it is kept as a human "
                    "response, and preferred over the rated one in the pairs export.",
                },
                comment,
            ]
        if task.kind == TaskKind.PAIRWISE:
            return [
                {
                    "name": "preference",
                    "type": "string",
                    "required": True,
                    "choices": [p.value for p in PREFERENCES],
                    "description": ", ".join(f"{p.value}: {p.text}" for p in PREFERENCES)
                    + " (A and B as lettered in responses).",
                },
                {
                    "name": "both_bad",
                    "type": "boolean",
                    "required": False,
                    "choices": [],
                    "description": "Both responses are bad, whichever is better.",
                },
                comment,
            ]
        return [
            {
                "name": "ranks",
                "type": "object",
                "required": True,
                "choices": list(range(1, len(assignment.shown_order) + 1)),
                "keys": [str(response_id) for response_id in assignment.shown_order],
                "description": "Each response's rank by its id, 1 the best; equal ranks are ties. "
                "An error about one response is reported as rank-<id>.",
            },
            comment,
        ]

    def get_submit_url(self, assignment: Assignment) -> str:
        return reverse("api:submit", args=[assignment.task.project.slug, assignment.pk])

    def get_skip_url(self, assignment: Assignment) -> str:
        return reverse("api:skip", args=[assignment.task.project.slug, assignment.pk])


class AnswerIn(serializers.Serializer):
    """An answer in the terms the lease showed: A is the first of its responses. Send the fields of its kind."""

    score = serializers.IntegerField(required=False, help_text="rating")
    labels = serializers.ListField(child=serializers.CharField(), required=False, help_text="rating")
    preference = serializers.ChoiceField([p.value for p in PREFERENCES], required=False, help_text="pairwise")
    both_bad = JsonBooleanField(required=False, help_text="pairwise")
    ranks = serializers.DictField(
        child=serializers.IntegerField(), required=False, help_text="ranking: response id → rank, 1 the best"
    )
    text = serializers.CharField(
        required=False, allow_blank=True, trim_whitespace=False, help_text="write: the reply you wrote"
    )
    correction = serializers.CharField(
        required=False, allow_blank=True, trim_whitespace=False, help_text="rating, optional: a better answer"
    )
    comment = serializers.CharField(required=False, allow_blank=True, trim_whitespace=False)


class AnnotationSerializer(serializers.ModelSerializer):
    kind = serializers.ChoiceField(TaskKind.choices, source="task.kind")
    annotator = serializers.CharField(
        source="annotator.username", allow_null=True, help_text="null when imported or automatic (source)."
    )
    responses = serializers.SerializerMethodField(help_text="The task's response ids by position: A first, then B.")
    shown_order = serializers.SerializerMethodField(help_text="The response ids in the order the annotator saw them.")
    labels = serializers.ListField(child=serializers.CharField())
    ranking = serializers.ListField(
        child=serializers.ListField(child=serializers.IntegerField()),
        allow_null=True,
        help_text="Groups of response ids, best first; a group is a tie.",
    )
    time_spent_seconds = serializers.SerializerMethodField()
    written = serializers.CharField(
        source="written_text",
        allow_null=True,
        help_text="What the annotator wrote: a write task's answer, or a rating's better answer; else null.",
    )

    class Meta:
        model = Annotation
        fields = [
            "id",
            "task",
            "kind",
            "annotator",
            "source",
            "responses",
            "shown_order",
            "score",
            "labels",
            "choice",
            "strength",
            "both_bad",
            "ranking",
            "written",
            "written_response",
            "comment",
            "time_spent_seconds",
            "created_at",
        ]

    def get_responses(self, annotation: Annotation) -> list[int]:
        # From the list's prefetch (in position order, TaskResponse's ordering): Task.response_ids would query per row.
        return [link.response_id for link in annotation.task.task_responses.all()]

    def get_shown_order(self, annotation: Annotation) -> list[int] | None:
        return annotation.assignment.shown_order if annotation.assignment else None

    def get_time_spent_seconds(self, annotation: Annotation) -> float | None:
        return annotation.time_spent.total_seconds() if annotation.time_spent is not None else None


class RevisionSerializer(serializers.ModelSerializer):
    by = serializers.CharField(source="by.username", allow_null=True)

    class Meta:
        model = AnnotationRevision
        fields = ["answer", "by", "created_at"]
        extra_kwargs = {"created_at": {"help_text": "When this answer was replaced."}}


class MyAnswerSerializer(AnnotationSerializer):
    """One of your answers, with what the "my work" page shows of it."""

    shown_answer = serializers.CharField(
        source="shown_summary", help_text='The answer in the terms it was given: "B much better", "C > A = B".'
    )
    locked_because = serializers.CharField(help_text='Why it can no longer be changed; "" while it can.')
    revisions = RevisionSerializer(many=True, help_text="The answers it replaced, oldest first.")
    change_url = serializers.SerializerMethodField()

    class Meta(AnnotationSerializer.Meta):
        fields = [*AnnotationSerializer.Meta.fields, "shown_answer", "locked_because", "revisions", "change_url"]

    def get_change_url(self, annotation: Annotation) -> str:
        return reverse("api:change_answer", args=[annotation.task.project.slug, annotation.pk])


class AnnotationFilter(QueryFilter):
    task = serializers.IntegerField(min_value=1, max_value=MAX_ID, required=False, help_text="A task's id.")


# Exports -------------------------------------------------------------------------------------------------------


def _export_option(field_class: type[serializers.Field], name: str, **kwargs: Any) -> serializers.Field:
    return field_class(required=False, help_text=EXPORT_OPTIONS[name].help, **kwargs)


class ExportFiltersSerializer(serializers.Serializer):
    """The types; create_snapshot checks the rest (which options a kind takes, since before until, …)."""

    split = _export_option(serializers.ChoiceField, "split", choices=Prompt.Split.choices)
    round = _export_option(serializers.IntegerField, "round", min_value=0)
    since = _export_option(serializers.CharField, "since")
    until = _export_option(serializers.CharField, "until")
    annotator = _export_option(serializers.CharField, "annotator")
    min_agreement = _export_option(serializers.FloatField, "min_agreement", min_value=0, max_value=1)
    votes = _export_option(serializers.ChoiceField, "votes", choices=Votes.choices)
    aggregation = _export_option(serializers.ChoiceField, "aggregation", choices=Aggregation.choices)
    include_ties = _export_option(JsonBooleanField, "include_ties")
    include_both_bad = _export_option(JsonBooleanField, "include_both_bad")
    ratings_as_pairs = _export_option(JsonBooleanField, "ratings_as_pairs")
    reveal_annotators = _export_option(JsonBooleanField, "reveal_annotators")

    def to_internal_value(self, data: Any) -> dict[str, Any]:
        # A misspelt filter must not be dropped in silence: the export would hold more than was asked for.
        if isinstance(data, Mapping) and (unknown := sorted(set(data) - set(self.fields))):
            raise serializers.ValidationError({unknown[0]: f"Not an export option ({', '.join(self.fields)})."})
        return super().to_internal_value(data)


class ExportIn(serializers.Serializer):
    kind = serializers.ChoiceField(DatasetSnapshot.Kind.choices)
    format = serializers.ChoiceField(DatasetSnapshot.Format.choices, default=DatasetSnapshot.Format.JSONL)
    style = serializers.ChoiceField(DatasetSnapshot.Style.choices, default=DatasetSnapshot.Style.CONVERSATIONAL)
    filters = ExportFiltersSerializer(required=False)


class SnapshotSerializer(serializers.ModelSerializer):
    project = serializers.SlugField(source="project.slug")
    created_by = serializers.CharField(source="created_by.username", allow_null=True)
    filters = serializers.DictField()
    judge_weights = serializers.DictField(
        child=serializers.FloatField(),
        allow_null=True,
        help_text="votes=both: each judge's weight, its measured agreement with people; null where none applies.",
    )
    download_url = serializers.SerializerMethodField(help_text="Where to get the file, once status is ready.")

    class Meta:
        model = DatasetSnapshot
        fields = [
            "id",
            "project",
            "kind",
            "format",
            "style",
            "filters",
            "judge_weights",
            "status",
            "rows_written",
            "row_count",
            "sha256",
            "error",
            "created_by",
            "created_at",
            "started_at",
            "heartbeat_at",
            "finished_at",
            "download_url",
        ]
        extra_kwargs = {"rows_written": {"help_text": "Progress: rows written so far."}}

    def get_download_url(self, snapshot: DatasetSnapshot) -> str | None:
        if snapshot.status != DatasetSnapshot.Status.READY:
            return None
        return reverse("api:export_download", args=[snapshot.project.slug, snapshot.pk])


# Quality ---------------------------------------------------------------------------------------------------------


def _share(what: str) -> serializers.FloatField:
    return serializers.FloatField(allow_null=True, help_text=f"{what}, 0-1; null without any.")


def _bound(which: str) -> serializers.FloatField:
    return serializers.FloatField(allow_null=True, help_text=f"The {which} end of its 95 % Wilson interval.")


def _p_value(what: str) -> serializers.FloatField:
    return serializers.FloatField(allow_null=True, help_text=f"Two-sided exact binomial test {what}.")


class QualityFiguresSerializer(serializers.Serializer):
    """The measures of annotate/quality.py, for an annotator or the whole project (annotate/quality_reports.py)."""

    answers = serializers.IntegerField(help_text="Human annotations.")
    gold_answers = serializers.IntegerField(help_text="Answers to gold tasks (tasks with a known answer).")
    gold_right = serializers.IntegerField(help_text="Of those, the right ones.")
    gold_accuracy = _share("Share of gold answers that are right")
    gold_accuracy_low = _bound("low")
    gold_accuracy_high = _bound("high")
    competence = serializers.FloatField(
        allow_null=True, help_text="Dawid-Skene: 1 always right, 0 chance or always the same answer, below 0 worse."
    )
    compared_answers = serializers.IntegerField(help_text="Answers to items someone else answered too.")
    first_position_choices = serializers.IntegerField(help_text="Pairwise choices (ties aside) with a shown order.")
    first_position_share = _share("Share of those for the response shown first")
    first_position_low = _bound("low")
    first_position_high = _bound("high")
    position_p_value = _p_value("of that share against 1/2")
    first_ranked_rankings = serializers.IntegerField(help_text="Rankings with a shown order.")
    first_ranked_share = _share("Share of those with the response shown first on top")
    first_ranked_chance = serializers.FloatField(allow_null=True, help_text="How often that happens by chance.")
    first_ranked_p_value = _p_value("of that share against its chance")
    longer_votes = serializers.IntegerField(help_text="Votes on pairs of different lengths, ties aside.")
    longer_share = _share("Share of those for the longer response")
    longer_low = _bound("low")
    longer_high = _bound("high")
    longer_p_value = _p_value("of that share against 1/2")
    timed_answers = serializers.IntegerField(help_text="Answers with a time the server measured.")
    median_seconds = serializers.FloatField(allow_null=True)
    fast_answers = serializers.IntegerField(help_text="Timed answers under the fast floor (fast_seconds).")
    fast_share = _share("Share of timed answers that are fast")


class QualityAnnotatorSerializer(QualityFiguresSerializer):
    username = serializers.CharField()
    flags = serializers.ListField(
        child=serializers.ChoiceField(FLAGS), help_text="Against the project's thresholds now (README, Quality)."
    )
    member = serializers.BooleanField(help_text="False for someone who answered and has since left the project.")
    paused = serializers.BooleanField(help_text="Given no tasks while set.")
    votes_excluded = serializers.BooleanField(help_text="Their answers count in no export, round or agreement.")


class QualityThresholdsSerializer(serializers.ModelSerializer):
    class Meta:
        model = Project
        fields = ["fast_seconds", "min_gold_accuracy", "min_competence", "position_bias_p", "max_fast_share"]


class QualityMinimumsSerializer(serializers.Serializer):
    """The fewest answers on which each flag is raised."""

    low_gold_accuracy = serializers.IntegerField(help_text="Gold answers.")
    low_competence = serializers.IntegerField(help_text="Answers to items someone else answered too.")
    position_bias = serializers.IntegerField(help_text="Pairwise choices, or rankings.")
    too_fast = serializers.IntegerField(help_text="Timed answers.")


class QualitySerializer(serializers.Serializer):
    status = serializers.ChoiceField(
        QualityReport.Status.choices, allow_null=True, help_text="Of the latest refresh; null before the first."
    )
    requested_at = serializers.DateTimeField(allow_null=True, help_text="When the latest refresh was asked for.")
    computed_at = serializers.DateTimeField(allow_null=True, help_text="When the answers in these figures were read.")
    fast_seconds = serializers.IntegerField(allow_null=True, help_text="The fast floor these figures counted with.")
    error = serializers.CharField(help_text="Why the latest refresh failed; empty otherwise.")
    thresholds = QualityThresholdsSerializer(help_text="The project's, now: what the flags are against.")
    minimum_answers = QualityMinimumsSerializer()
    project = QualityFiguresSerializer(allow_null=True, help_text="The whole project; null before the first refresh.")
    annotators = QualityAnnotatorSerializer(many=True, help_text="Flagged ones first, then by username.")


class QualityStatusSerializer(serializers.ModelSerializer):
    class Meta:
        model = QualityReport
        fields = ["status", "requested_at", "computed_at"]


class MembershipEventSerializer(serializers.ModelSerializer):
    username = serializers.CharField(source="user.username")
    by = serializers.CharField(source="by.username", allow_null=True, help_text="The lead who decided.")

    class Meta:
        model = MembershipEvent
        fields = ["id", "username", "kind", "reason", "by", "created_at"]


class DecisionIn(serializers.Serializer):
    reason = serializers.CharField(
        required=False, allow_blank=True, max_length=1000, default="", help_text="Why: needed to pause or exclude."
    )


class MemberStateSerializer(serializers.Serializer):
    username = serializers.CharField()
    role = serializers.ChoiceField(Membership.Role.choices)
    paused = serializers.BooleanField()
    votes_excluded = serializers.BooleanField()
    event = MembershipEventSerializer(allow_null=True, help_text="The decision recorded; null when it was so already.")


class MembershipEventFilter(QueryFilter):
    username = serializers.CharField(required=False, help_text="One member's decisions only.")
