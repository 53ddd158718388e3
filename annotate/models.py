"""The annotation domain: projects and their members, prompts and responses, tasks, leases and answers."""

from datetime import timedelta
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import Count, OuterRef, Q, Subquery
from django.db.models.functions import Coalesce


class TaskKind(models.TextChoices):
    RATING = "rating", "Single-sided rating"
    PAIRWISE = "pairwise", "Side-by-side pairwise"
    RANKING = "ranking", "N-way ranking"


def _all_task_kinds() -> list[str]:
    return list(TaskKind.values)


def _default_lease_length() -> timedelta:
    return settings.ARBITER_DEFAULT_LEASE


def count_of(model: type[models.Model], parent: str, **filters: Any) -> Coalesce:
    """How many `model` rows point at the outer row through their `parent` foreign key."""
    # One correlated subquery per count: joining prompts and tasks in one query would multiply their rows.
    rows = (
        model._default_manager.filter(**{parent: OuterRef("pk")}, **filters)
        .order_by()
        .values(parent)
        .annotate(n=Count("pk"))
        .values("n")
    )
    return Coalesce(Subquery(rows), 0)


class ProjectQuerySet(models.QuerySet):
    def with_counts(self) -> "ProjectQuerySet":
        """Annotate prompt_count, open_tasks and complete_tasks, one subquery each."""
        return self.annotate(
            prompt_count=count_of(Prompt, "project"),
            open_tasks=count_of(Task, "project", status=Task.Status.OPEN),
            complete_tasks=count_of(Task, "project", status=Task.Status.COMPLETE),
        )

    def for_user(self, user: Any) -> "ProjectQuerySet":
        """The projects a user may see: all for superusers, else those they are a member of."""
        if not user.is_authenticated:
            return self.none()
        if user.is_superuser:
            return self.all()
        return self.filter(memberships__user=user)

    def led_by(self, user: Any) -> "ProjectQuerySet":
        """The projects a user may manage: all for superusers, else those they lead."""
        if not user.is_authenticated:
            return self.none()
        if user.is_superuser:
            return self.all()
        return self.filter(memberships__user=user, memberships__role=Membership.Role.LEAD)


class Project(models.Model):
    name = models.CharField(max_length=200)
    slug = models.SlugField(max_length=100, unique=True)
    guidelines = models.TextField(blank=True, help_text="Markdown, shown to annotators on every task.")
    task_kinds = models.JSONField(
        default=_all_task_kinds, help_text=f"Enabled task kinds, a list of: {', '.join(TaskKind.values)}."
    )
    rating_min = models.SmallIntegerField(default=1)
    rating_max = models.SmallIntegerField(default=5)
    rating_descriptions = models.JSONField(
        default=dict, blank=True, help_text='What each point of the scale means, e.g. {"1": "Harmful", "5": "Ideal"}.'
    )
    labels = models.JSONField(default=list, blank=True, help_text="Labels an annotator may tick when rating.")
    overlap = models.PositiveSmallIntegerField(default=1, help_text="Annotations wanted per task (k).")
    lease_length = models.DurationField(
        default=_default_lease_length, help_text="How long a task stays reserved for the annotator it was given to."
    )
    max_open_leases = models.PositiveSmallIntegerField(
        default=3, help_text="Most tasks one annotator may hold unsubmitted at once."
    )
    created_at = models.DateTimeField(auto_now_add=True)
    members = models.ManyToManyField(settings.AUTH_USER_MODEL, through="Membership", related_name="projects")

    objects = ProjectQuerySet.as_manager()

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(condition=Q(rating_min__lt=models.F("rating_max")), name="project_rating_scale"),
            models.CheckConstraint(condition=Q(overlap__gte=1), name="project_overlap_positive"),
            models.CheckConstraint(condition=Q(max_open_leases__gte=1), name="project_max_open_leases_positive"),
        ]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        errors: dict[str, str] = {}
        if not isinstance(self.task_kinds, list) or not self.task_kinds:
            errors["task_kinds"] = "Enable at least one task kind."
        elif unknown := sorted(set(map(str, self.task_kinds)) - set(TaskKind.values)):
            errors["task_kinds"] = f"Unknown task kinds: {', '.join(unknown)}."
        if self.rating_min is not None and self.rating_max is not None and self.rating_min >= self.rating_max:
            errors["rating_max"] = "The top of the scale must be above the bottom."
        if not isinstance(self.rating_descriptions, dict):
            errors["rating_descriptions"] = "Give an object mapping scale points to descriptions."
        elif self.rating_min is not None and self.rating_max is not None:
            points = {str(p) for p in self.rating_points}
            if stray := sorted(set(self.rating_descriptions) - points):
                errors["rating_descriptions"] = f"Not points of the scale: {', '.join(stray)}."
        if not isinstance(self.labels, list) or not all(isinstance(x, str) and x.strip() for x in self.labels):
            errors["labels"] = "Give a list of non-empty label names."
        elif len(set(self.labels)) != len(self.labels):
            errors["labels"] = "Label names must be unique."
        if errors:
            raise ValidationError(errors)

    @property
    def rating_points(self) -> range:
        return range(self.rating_min, self.rating_max + 1)

    def role_of(self, user: Any) -> str | None:
        """The user's role here ('lead', 'annotator'), 'lead' for superusers, None for outsiders."""
        if not user.is_authenticated:
            return None
        if user.is_superuser:
            return Membership.Role.LEAD
        membership = self.memberships.filter(user=user).only("role").first()
        return membership.role if membership else None

    def is_led_by(self, user: Any) -> bool:
        return self.role_of(user) == Membership.Role.LEAD


class Membership(models.Model):
    class Role(models.TextChoices):
        LEAD = "lead", "Lead"
        ANNOTATOR = "annotator", "Annotator"

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.ANNOTATOR)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["project", "user"], name="membership_unique")]

    def __str__(self) -> str:
        return f"{self.user} is {self.role} of {self.project}"


class Prompt(models.Model):
    class Split(models.TextChoices):
        TRAIN = "train", "Train"
        EVAL = "eval", "Eval"

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="prompts")
    external_id = models.CharField(
        max_length=255, help_text="Id from the imported file, or a hash of the messages when it had none."
    )
    messages = models.JSONField(help_text='Chat form: [{"role": "user", "content": "…"}, …].')
    metadata = models.JSONField(default=dict, blank=True)
    split = models.CharField(max_length=8, choices=Split.choices, default=Split.TRAIN)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(fields=["project", "external_id"], name="prompt_external_id_unique"),
        ]

    def __str__(self) -> str:
        return self.external_id

    @property
    def last_user_message(self) -> str:
        for message in reversed(self.messages or []):
            if message.get("role") == "user":
                return message.get("content", "")
        return ""


class Response(models.Model):
    class Source(models.TextChoices):
        IMPORTED = "imported", "Imported"
        HUMAN = "human", "Written by a person"
        MODEL = "model", "Generated by a registered model"

    prompt = models.ForeignKey(Prompt, on_delete=models.CASCADE, related_name="responses")
    content = models.TextField()
    source = models.CharField(max_length=16, choices=Source.choices, default=Source.IMPORTED)
    model_version = models.ForeignKey(
        "models_registry.ModelVersion", null=True, blank=True, on_delete=models.PROTECT, related_name="responses"
    )
    generation_params = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.CheckConstraint(
                condition=Q(source="model") | Q(model_version__isnull=True),
                name="response_model_version_only_for_model_source",
            ),
        ]

    def __str__(self) -> str:
        return f"Response {self.pk} to {self.prompt_id}"


class Task(models.Model):
    class Status(models.TextChoices):
        OPEN = "open", "Open"
        COMPLETE = "complete", "Complete"

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="tasks")
    prompt = models.ForeignKey(Prompt, on_delete=models.CASCADE, related_name="tasks")
    kind = models.CharField(max_length=16, choices=TaskKind.choices)
    responses = models.ManyToManyField(Response, through="TaskResponse", related_name="tasks")
    required_annotations = models.PositiveSmallIntegerField(default=1)
    annotation_count = models.PositiveIntegerField(default=0, editable=False)
    priority = models.SmallIntegerField(default=0, help_text="Higher goes first.")
    round_number = models.PositiveIntegerField(default=0, help_text="Training round whose data this task is for.")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.OPEN)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.CheckConstraint(condition=Q(required_annotations__gte=1), name="task_required_positive"),
        ]
        indexes = [models.Index(fields=["project", "status", "kind"], name="task_project_status_kind")]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} task {self.pk}"

    def clean(self) -> None:
        if self.prompt_id and self.project_id and self.prompt.project_id != self.project_id:
            raise ValidationError({"prompt": "The prompt belongs to another project."})

    def refresh_progress(self) -> None:
        """Recount the annotations and set the status from it (after an edit or delete outside the queue)."""
        self.annotation_count = self.annotations.count()
        done = self.annotation_count >= self.required_annotations
        self.status = self.Status.COMPLETE if done else self.Status.OPEN
        self.save(update_fields=["annotation_count", "status"])

    def response_ids(self) -> list[int]:
        """The task's response ids in position order (position 0 is A, 1 is B)."""
        return list(self.task_responses.order_by("position").values_list("response_id", flat=True))

    def clean_answer(self, data: dict[str, Any]) -> dict[str, Any]:
        from annotate.answers import clean_answer

        return clean_answer(self.project, self.kind, self.response_ids(), data)


class TaskResponse(models.Model):
    task = models.ForeignKey(Task, on_delete=models.CASCADE, related_name="task_responses")
    response = models.ForeignKey(Response, on_delete=models.CASCADE, related_name="task_responses")
    position = models.PositiveSmallIntegerField()

    class Meta:
        ordering = ["task", "position"]
        constraints = [
            models.UniqueConstraint(fields=["task", "position"], name="task_response_position_unique"),
            models.UniqueConstraint(fields=["task", "response"], name="task_response_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.response_id} at {self.position} in {self.task_id}"

    def clean(self) -> None:
        if self.task_id and self.response_id and self.response.prompt_id != self.task.prompt_id:
            raise ValidationError({"response": "The response answers another prompt than the task's."})


class Assignment(models.Model):
    """A lease: one task reserved for one annotator until it expires or is submitted."""

    task = models.ForeignKey(Task, on_delete=models.CASCADE, related_name="assignments")
    annotator = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="assignments")
    leased_at = models.DateTimeField()
    expires_at = models.DateTimeField()
    submitted_at = models.DateTimeField(null=True, blank=True)
    shown_order = models.JSONField(
        default=list, help_text="Response ids in the order they were shown (first is the displayed A)."
    )

    class Meta:
        ordering = ["-leased_at"]
        indexes = [models.Index(fields=["annotator", "expires_at"], name="assignment_annotator_expiry")]

    def __str__(self) -> str:
        return f"{self.task} leased to {self.annotator}"


class Annotation(models.Model):
    class Source(models.TextChoices):
        HUMAN = "human", "Annotator"
        IMPORTED = "imported", "Imported preference"

    class Choice(models.TextChoices):
        A = "a", "A is better"
        B = "b", "B is better"
        TIE = "tie", "Tie"

    task = models.ForeignKey(Task, on_delete=models.CASCADE, related_name="annotations")
    annotator = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="annotations"
    )
    assignment = models.OneToOneField(
        Assignment, null=True, blank=True, on_delete=models.SET_NULL, related_name="annotation"
    )
    source = models.CharField(max_length=16, choices=Source.choices, default=Source.HUMAN)
    # rating
    score = models.SmallIntegerField(null=True, blank=True)
    labels = models.JSONField(default=list, blank=True)
    # pairwise: A and B are the task's positions 0 and 1, not the order shown (that is on the assignment).
    choice = models.CharField(max_length=3, choices=Choice.choices, blank=True)
    strength = models.PositiveSmallIntegerField(
        null=True, blank=True, help_text="1 = better, 2 = much better; empty for a tie."
    )
    both_bad = models.BooleanField(default=False)
    # ranking: groups of response ids, best first; responses in one group are tied.
    ranking = models.JSONField(null=True, blank=True)
    comment = models.TextField(blank=True)
    time_spent = models.DurationField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(fields=["task", "annotator"], name="annotation_unique_per_annotator"),
            models.CheckConstraint(
                condition=Q(annotator__isnull=False) | Q(source="imported"), name="annotation_has_annotator"
            ),
            models.CheckConstraint(condition=Q(choice__in=["", "a", "b", "tie"]), name="annotation_choice_valid"),
            models.CheckConstraint(
                condition=Q(strength__isnull=True) | Q(strength__in=[1, 2]), name="annotation_strength_valid"
            ),
        ]

    def __str__(self) -> str:
        return f"Annotation {self.pk} on {self.task_id}"

    def answer(self) -> dict[str, Any]:
        """The kind-specific answer, in the shape clean_answer accepts."""
        if self.task.kind == TaskKind.RATING:
            return {"score": self.score, "labels": self.labels, "comment": self.comment}
        if self.task.kind == TaskKind.PAIRWISE:
            answer = {"choice": self.choice, "both_bad": self.both_bad, "comment": self.comment}
            if self.strength is not None:
                answer["strength"] = self.strength
            return answer
        return {"ranking": self.ranking, "comment": self.comment}

    def summary(self) -> str:
        """A short reading of the answer: "4 (unsafe)", "A much better, both bad", "3 > 1 = 2"."""
        if self.task.kind == TaskKind.RATING:
            return f"{self.score} ({', '.join(self.labels)})" if self.labels else str(self.score)
        if self.task.kind == TaskKind.PAIRWISE:
            if self.choice == self.Choice.TIE:
                text = "Tie"
            else:
                text = f"{self.choice.upper()} {'much ' if self.strength == 2 else ''}better"
            return f"{text}, both bad" if self.both_bad else text
        return " > ".join(" = ".join(map(str, group)) for group in self.ranking or [])

    def clean(self) -> None:
        if self.task_id is not None:
            self.task.clean_answer(self.answer())
