"""The annotation domain: projects and their members, prompts and responses, tasks, leases and answers, dataset
snapshots (exports) and import jobs."""

import hashlib
import hmac
import logging
import random
import secrets
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator
from django.db import IntegrityError, models, transaction
from django.db.models import Count, Exists, F, Max, Min, OuterRef, Q, Subquery
from django.db.models.functions import Coalesce, Greatest, TruncHour
from django.db.models.signals import post_delete
from django.dispatch import receiver
from django.http import QueryDict
from django.utils import timezone

from annotate import answers
from annotate.jobs import move

logger = logging.getLogger(__name__)

# How many tasks "remaining" counts up to: past it the pages say "100+", so no request counts a whole table
# (each candidate costs three index probes: 100 take ~2 ms at 300k tasks, 1,000 took ~7 ms).
REMAINING_CAP = 100
AGREEMENT_TASKS = 2000  # the stats page measures agreement on this many of the latest multiply-annotated tasks
_T = TypeVar("_T")


MAX_SCALE_POINTS = 101  # a rating scale's points: each is a choice on the task page and a row on the settings page


def _answers(n: int) -> str:
    return f"{n} answer{'s' if n != 1 else ''}"


def _open_tasks(n: int) -> str:
    return "its 1 open task is" if n == 1 else f"its {n} open tasks are"


class _NoRoom(Exception):
    def __init__(self, task_id: int) -> None:
        self.task_id = task_id


class LeaseError(Exception):
    """A lease that cannot be used: someone else's, closed, or expired and given to someone else."""


class MemberPaused(LeaseError):
    """Refused: a lead paused the member's work in the project (Membership.paused)."""

    def __init__(self, project: "Project") -> None:
        super().__init__(
            f"A lead of {project.name} paused your work here: you are given no tasks until they resume it. What you "
            "answered so far stands."
        )


class QuotaReached(Exception):
    """Refused: the project already has as many rounds or exports under way as the settings allow."""


class GoldRefused(Exception):
    """A task that cannot become gold: the message names it and says why."""


class TaskKind(models.TextChoices):
    RATING = "rating", "Single-sided rating"
    PAIRWISE = "pairwise", "Side-by-side pairwise"
    RANKING = "ranking", "N-way ranking"
    # The annotator writes the assistant's reply (from the task's one response as a draft, if it has one).
    WRITE = "write", "Written answer"


# The kinds whose answers compare responses: agreement, quality, aggregation and gold read only these.
JUDGED_KINDS = (TaskKind.RATING, TaskKind.PAIRWISE, TaskKind.RANKING)


class TextFormat(models.TextChoices):
    MARKDOWN = "markdown", "Markdown"
    PLAIN = "plain", "Plain text"


def _all_task_kinds() -> list[str]:
    # Writing is asked for, not assumed: a project that enables it turns every imported prompt into a task.
    return list(JUDGED_KINDS)


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
        """Annotate prompt_count (a subquery), open_tasks and complete_tasks (from the task counters)."""
        return self.annotate(
            prompt_count=count_of(Prompt, "project"),
            open_tasks=F("task_count") - F("complete_task_count"),
            complete_tasks=F("complete_task_count"),
        )

    def recount_tasks(self) -> int:
        """Recount every project's task counters, one project at a time; log and repair any that drifted."""
        repaired = 0
        for project in self.order_by("pk").only("pk", "slug"):
            if drift := project.recount_tasks():
                (tasks, complete), (exact_tasks, exact_complete) = drift
                logger.warning(
                    "Project %s: task counters repaired, tasks %s -> %s, complete %s -> %s",
                    project.slug, tasks, exact_tasks, complete, exact_complete,
                )  # fmt: skip
                repaired += 1
        return repaired

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
    class Fill(models.TextChoices):
        BREADTH = "breadth", "Breadth: fewest annotations first"
        DEPTH = "depth", "Depth: finish tasks to k first"

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
    overlap = models.PositiveSmallIntegerField(
        default=1, validators=[MinValueValidator(1)], help_text="Annotations wanted per task (k)."
    )
    text_format = models.CharField(
        max_length=16,
        choices=TextFormat.choices,
        default=TextFormat.MARKDOWN,
        help_text="How annotators see prompts and responses: Markdown, formatted, or plain text, every character as "
        "written. Guidelines are always Markdown.",
    )
    lease_length = models.DurationField(
        default=_default_lease_length,
        validators=[MinValueValidator(timedelta(minutes=1), "A lease must last at least a minute.")],
        help_text="How long a task stays reserved for the annotator it was given to.",
    )
    max_open_leases = models.PositiveSmallIntegerField(
        default=3, validators=[MinValueValidator(1)], help_text="Most tasks one annotator may hold unsubmitted at once."
    )
    fill = models.CharField(
        max_length=8,
        choices=Fill.choices,
        default=Fill.BREADTH,
        help_text="Within a priority, which open task goes first. Breadth: the one with the fewest annotations, so "
        "every task gets its first answer before any gets its second. Depth: the one with the most (still under "
        "k), so tasks are finished one after another and agreement has data early.",
    )
    # After a policy round, its samples come back as tasks (training/sampling.py).
    samples_per_prompt = models.PositiveSmallIntegerField(
        default=2,
        validators=[MinValueValidator(1)],
        help_text="Responses the new policy writes per train prompt (K); 2 or more make pairs.",
    )
    sample_prompts = models.PositiveIntegerField(
        default=50, help_text="Prompts sampled after each policy round, from each split (eval and train)."
    )
    pair_selection = models.CharField(
        max_length=16,
        choices=[("random", "Random"), ("uncertainty", "Reward-model uncertainty")],
        default="random",
        help_text="Which two of a train prompt's samples to compare: random, or the two the round's reward model "
        "tells apart least (smallest |r(a) − r(b)|), most uncertain prompts first.",
    )
    sample_rating_tasks = models.BooleanField(
        default=False, help_text="Also make a rating task of every new sample (if rating is enabled)."
    )
    # Quality control: gold tasks, and what flags an annotator on the Quality page (annotate/quality.py).
    gold_rate = models.PositiveSmallIntegerField(
        default=20,
        help_text="One task in this many that an annotator is given is a gold task (its answer known), while they "
        "have gold tasks they have not seen; 0: no gold tasks.",
    )
    fast_seconds = models.PositiveSmallIntegerField(
        default=5, help_text="An answer given in less time than this, as the server measures it, is fast."
    )
    min_gold_accuracy = models.FloatField(default=0.7, help_text="Flag annotators whose gold accuracy is below this.")
    min_competence = models.FloatField(
        default=0.2,
        help_text="Flag annotators whose competence (Dawid–Skene: 0 is chance, 1 always right) is below this.",
    )
    position_bias_p = models.FloatField(
        default=0.01,
        help_text="Flag annotators who favour the response shown first with a two-sided p-value below this.",
    )
    max_fast_share = models.FloatField(
        default=0.25, help_text="Flag annotators whose share of fast answers is above this."
    )
    # Changing an answer from the "my work" page (Annotation.change).
    edit_window_minutes = models.PositiveIntegerField(
        default=0,
        help_text="An annotator may change an answer while its task is open, or for this many minutes after giving "
        "it; 0: only while the task is open.",
    )
    # AI feedback (annotate/judges.py): the judge whose answers route tasks and may be suggested to annotators.
    judge = models.ForeignKey(
        "Judge",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        help_text="The judge that routes tasks (hybrid labelling) and whose answer may be suggested to annotators.",
    )
    judge_votes_count = models.BooleanField(
        default=False,
        help_text="Judges' answers count toward a task's overlap (off: people fill the overlap, judges vote beside).",
    )
    routing = models.BooleanField(
        default=False,
        help_text="Hybrid labelling: tasks the project's judge answers confidently and consistently take its label "
        "(but for an audit share), low-confidence ones go to people first.",
    )
    routing_confidence = models.FloatField(
        default=0.8, help_text="The judge's confidence (0–1) at or above which its label is taken."
    )
    routing_audit_share = models.FloatField(
        default=0.1, help_text="Share of the confidently judged tasks still sent to people, to audit the judge."
    )
    show_judge_suggestions = models.BooleanField(
        default=False,
        help_text="Show annotators the project judge's answer as a suggestion (suggestions anchor people: a control "
        "group never sees them, to measure how often annotators follow them).",
    )
    suggestion_control_share = models.FloatField(
        default=0.5, help_text="Share of leases shown no suggestion (the control group), when suggestions are on."
    )
    created_at = models.DateTimeField(auto_now_add=True)
    members = models.ManyToManyField(settings.AUTH_USER_MODEL, through="Membership", related_name="projects")
    # Counters for the progress bars, so no page counts a project's tasks (45 ms at 1M). Kept by Task.save,
    # the importer, submit and Task.refresh_progress; recount_tasks() recomputes them after anything else.
    task_count = models.PositiveIntegerField(default=0, editable=False)
    complete_task_count = models.PositiveIntegerField(default=0, editable=False)

    objects = ProjectQuerySet.as_manager()

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(condition=Q(rating_min__lt=models.F("rating_max")), name="project_rating_scale"),
            models.CheckConstraint(condition=Q(overlap__gte=1), name="project_overlap_positive"),
            models.CheckConstraint(condition=Q(max_open_leases__gte=1), name="project_max_open_leases_positive"),
            models.CheckConstraint(condition=Q(samples_per_prompt__gte=1), name="project_samples_per_prompt_positive"),
            *(
                models.CheckConstraint(
                    condition=Q(**{f"{name}__gte": 0, f"{name}__lte": 1}), name=f"project_{name}_0_1"
                )
                for name in (
                    "min_gold_accuracy",
                    "min_competence",
                    "position_bias_p",
                    "max_fast_share",
                    "routing_confidence",
                    "routing_audit_share",
                    "suggestion_control_share",
                )
            ),
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
        elif self.rating_min is not None and self.rating_max is not None and len(self.rating_points) > MAX_SCALE_POINTS:
            errors["rating_max"] = f"A scale has at most {MAX_SCALE_POINTS} points (0–100, say)."
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
        errors.update(self._judge_refusals())
        if self.pk and not errors:
            errors.update(self._refusals_against_work_done())
        if errors:
            raise ValidationError(errors)

    def _judge_refusals(self) -> dict[str, str]:
        """Routing and suggestions need the project's judge, one of its own."""
        errors = {}
        if self.judge_id is not None and self.judge.project_id != self.pk:
            errors["judge"] = f"{self.judge.name} is another project's judge: choose one of this project's."
        if self.routing and self.judge_id is None:
            errors["routing"] = "Hybrid labelling routes tasks by the project judge's answers: choose the judge first."
        if self.show_judge_suggestions and self.judge_id is None:
            errors["show_judge_suggestions"] = "A suggestion is the project judge's answer: choose the judge first."
        return errors

    # Settings against the work already done (the settings page and the admin) -------------------------------

    def _refusals_against_work_done(self) -> dict[str, str]:
        """What the settings would leave answers given that they cannot hold: a scale that leaves out their scores,
        labels removed that answers carry (answers keep a label's name, so a rename is a removal too)."""
        saved = Project.objects.filter(pk=self.pk).first()
        if saved is None:
            return {}
        errors = {}
        if (self.rating_min, self.rating_max) != (saved.rating_min, saved.rating_max):
            scores = Annotation.objects.filter(task__project=self, score__isnull=False).aggregate(
                below=Count("pk", filter=Q(score__lt=self.rating_min)),
                above=Count("pk", filter=Q(score__gt=self.rating_max)),
                low=Min("score"),
                high=Max("score"),
            )
            kept = "a scale cannot leave out answers already given; start a new project for another scale"
            if scores["below"]:
                errors["rating_min"] = (
                    f"{_answers(scores['below'])} scored below {self.rating_min} (down to {scores['low']}): {kept}."
                )
            if scores["above"]:
                errors["rating_max"] = (
                    f"{_answers(scores['above'])} scored above {self.rating_max} (up to {scores['high']}): {kept}."
                )
        if removed := set(saved.labels) - set(self.labels):
            used: dict[str, int] = {}
            ticked = Annotation.objects.filter(task__project=self).exclude(labels=[]).order_by()
            # Per distinct set of labels, in Python: SQLite has no JSON containment lookup.
            for labels, n in ticked.values_list("labels").annotate(n=Count("pk")).iterator():
                for label in removed.intersection(labels):
                    used[label] = used.get(label, 0) + n
            if used:
                named = ", ".join(f"“{label}” ({_answers(n)})" for label, n in sorted(used.items()))
                errors["labels"] = (
                    f"Answers carry labels you removed: {named}. Keep them: answers store a label by its name, so "
                    "removing or renaming one would leave them holding a label the project no longer has."
                )
        return errors

    def changes_to_confirm(self) -> list[str]:
        """What these (valid, unsaved) settings would change in work under way, for a lead to confirm before saving:
        task kinds switched off with open tasks, a scale moved under given ratings, an overlap that open tasks keep."""
        saved = Project.objects.filter(pk=self.pk).first()
        if saved is None:
            return []
        changes = []
        if off := [kind for kind in saved.task_kinds if kind not in self.task_kinds]:
            open_tasks = dict(
                self.tasks.filter(status=Task.Status.OPEN, kind__in=off)
                .order_by()
                .values_list("kind")
                .annotate(n=Count("pk"))
            )
            for kind in off:
                if n := open_tasks.get(kind, 0):
                    changes.append(
                        f"{TaskKind(kind).label} is switched off: {_open_tasks(n)} given to no one until you "
                        "switch it on again. Answers already given stay in the data, and leases held now can still "
                        "be submitted."
                    )
        scale, saved_scale = (self.rating_min, self.rating_max), (saved.rating_min, saved.rating_max)
        if scale != saved_scale and (
            rated := Annotation.objects.filter(task__project=self, score__isnull=False).count()
        ):
            midpoint, saved_midpoint = (
                (self.rating_min + self.rating_max) / 2,
                (saved.rating_min + saved.rating_max) / 2,
            )
            changes.append(
                f"The scale goes from {saved.rating_min}–{saved.rating_max} to {self.rating_min}–{self.rating_max} "
                f"while {_answers(rated)} {'was' if rated == 1 else 'were'} given on the old one. Exports read every "
                f"rating against the scale in force: its midpoint ({midpoint:g} instead of {saved_midpoint:g}) splits "
                "good from bad, so those answers will count differently."
            )
        if self.overlap != saved.overlap and (n := self.tasks.filter(status=Task.Status.OPEN).count()):
            changes.append(
                f"Overlap {saved.overlap} → {self.overlap} applies to tasks added from now on; the open tasks ({n}) "
                "keep the overlap they were made with."
            )
        return changes

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

    def lock(self) -> None:
        """Hold the project's row until the transaction ends: its launches, exports and registrations then go one
        at a time, so numbers never collide and a quota is counted before the row that it allows is added."""
        Project.objects.select_for_update().filter(pk=self.pk).values_list("pk").get()

    def next_assignment(self, user: Any, *, reuse_lease: bool = True) -> "Assignment | None":
        """The user's oldest live lease here, else a new lease on the next task for them; None if none is left.

        With reuse_lease=False (a client working on several tasks at once) a new lease is made while the
        user holds fewer than max_open_leases. The order is in Task.objects.available_to.
        """
        now = timezone.now()
        with transaction.atomic():
            # One request per user at a time (two tabs, a retrying script): keeps reuse and the cap exact, and a
            # lease is made before a pause (Membership.decide takes this lock too), or not at all.
            get_user_model().objects.select_for_update().filter(pk=user.pk).values_list("pk").get()
            if self.memberships.filter(user=user, paused=True).exists():
                raise MemberPaused(self)
            mine = list(
                Assignment.objects.live(now)
                .filter(task__project=self, annotator=user)
                .select_related("task__prompt")
                .order_by("leased_at")[: self.max_open_leases]
            )
            if reuse_lease and mine:
                return mine[0]
            if len(mine) >= self.max_open_leases:
                return None
            # A gold task at random, one lease in gold_rate: a fixed spacing could be learnt and counted.
            if self.gold_rate and random.randrange(self.gold_rate) == 0 and (lease := self._lease_gold(user, now)):
                return lease
            passed_over: list[int] = []
            while True:
                try:
                    return self._lease_next_task(user, now, passed_over)
                except _NoRoom as no_room:
                    passed_over.append(no_room.task_id)

    def _lease_next_task(self, user: Any, now: datetime, passed_over: list[int]) -> "Assignment | None":
        # A savepoint: when the task turns out to be full, rolling back to it unlocks the task again.
        with transaction.atomic():
            candidates = self.available_tasks(user, now).exclude(pk__in=passed_over)
            # SKIP LOCKED: concurrent annotators take different tasks instead of queueing on one row.
            # The prompt comes along for the page that shows the task (locking only the task's row).
            candidates = candidates.select_related("prompt").select_for_update(of=("self",))
            task = candidates.select_for_update(skip_locked=True, of=("self",)).first()
            if task is None:
                # Every candidate may be locked by requests in flight (milliseconds): wait for one rather
                # than tell the annotator that nothing is left.
                task = candidates.first()
            if task is None:
                return None
            # The selection read counts from its snapshot; under the lock, a fresh statement sees every
            # committed lease and annotation, so this check is exact.
            if not task.has_room_for(user, now):
                raise _NoRoom(task.pk)
            return self._lease(task, user, now)

    def _lease_gold(self, user: Any, now: datetime) -> "Assignment | None":
        """A lease on a gold task the user was never given, while the open queue still holds a task for them: gold
        comes only among real work, so "N left for you" counts real tasks and a gold task is never the last one."""
        task = self.gold_tasks_for(user).select_related("prompt").first()
        if task is None or not self.available_tasks(user, now).exists():
            return None
        # No lock on the task: a gold task has no overlap to keep, and the user's row (locked) keeps this one lease.
        return self._lease(task, user, now)

    def _lease(self, task: "Task", user: Any, now: datetime) -> "Assignment":
        shown_order = task.response_ids()
        random.shuffle(shown_order)  # which response is A is random per lease, and recorded
        return Assignment.objects.create(
            task=task,
            annotator=user,
            leased_at=now,
            expires_at=now + self.lease_length,
            shown_order=shown_order,
            suggestion_shown=self._shows_suggestion(task),
        )

    def _shows_suggestion(self, task: "Task") -> bool | None:
        """Whether a new lease on the task shows the project judge's answer as a suggestion: None where there is none
        to offer (suggestions off, the judge has not answered the task, a gold task, whose answers measure people
        alone), else True but for the control group, a random suggestion_control_share of leases, that is shown
        nothing: how often people follow a suggestion means something only beside how often they agree unprompted
        (annotate/suggestions.py)."""
        if not self.show_judge_suggestions or self.judge_id is None or task.status == Task.Status.GOLD:
            return None
        if not task.annotations.filter(annotator__judge=self.judge_id).exists():
            return None
        return random.random() >= self.suggestion_control_share

    def available_tasks(self, user: Any, now: datetime) -> "TaskQuerySet":
        """This project's tasks the user may be given now, of the kinds it enables, in queue order."""
        return self._enabled(self.tasks.available_to(user, now, fill=self.fill))

    def gold_tasks_for(self, user: Any) -> "TaskQuerySet":
        """This project's gold tasks of the kinds it enables that the user was never given, oldest first."""
        return self._enabled(self.tasks.new_to(user).filter(status=Task.Status.GOLD).order_by("id"))

    def _enabled(self, tasks: "TaskQuerySet") -> "TaskQuerySet":
        if set(self.task_kinds) != set(TaskKind.values):
            tasks = tasks.filter(kind__in=self.task_kinds)
        return tasks

    def excluded_voters(self) -> models.QuerySet:
        """The user ids of members whose votes are excluded from this project's data (Membership.votes_excluded)."""
        return self.memberships.filter(votes_excluded=True).values("user_id")

    def count_tasks(self, *, added: int = 0, completed: int = 0) -> None:
        """Move the task counters by a difference (in the caller's transaction, as late in it as it can)."""
        # Never below 0: counters that drifted (rows written past them) must not make a delete fail on the
        # column's check; the periodic recount puts them right.
        Project.objects.filter(pk=self.pk).update(
            task_count=Greatest(F("task_count") + added, 0),
            complete_task_count=Greatest(F("complete_task_count") + completed, 0),
        )

    def recount_tasks(self) -> tuple[tuple[int, int], tuple[int, int]] | None:
        """Recompute the task counters from the tasks (counts the whole project: for repairs, not pages).

        Returns the counters (tasks, complete) before and after when they were wrong, None when they were right.
        """
        with transaction.atomic():
            # Every move of the counters takes the project's row last in its transaction: holding it, the count
            # sees each move's tasks exactly when it sees the move, so a busy project is never "repaired" wrongly.
            before = (
                Project.objects.select_for_update()
                .filter(pk=self.pk)
                .values_list("task_count", "complete_task_count")
                .get()
            )
            by_status = dict(self.tasks.order_by().values_list("status").annotate(n=Count("pk")))
            by_status.pop(Task.Status.GOLD, None)  # gold tasks are no part of the project's progress
            after = (sum(by_status.values()), by_status.get(Task.Status.COMPLETE, 0))
            self.task_count, self.complete_task_count = after
            if after == before:
                return None
            Project.objects.filter(pk=self.pk).update(task_count=after[0], complete_task_count=after[1])
        return before, after

    def done_by(self, user: Any) -> int:
        """How many of this project's tasks the user has annotated."""
        return Annotation.objects.filter(task__project=self, annotator=user).count()

    def remaining_for(self, user: Any) -> int:
        """How many tasks the user could still be given here, counted up to REMAINING_CAP."""
        return self.available_tasks(user, timezone.now())[:REMAINING_CAP].count()

    def progress_for(self, user: Any) -> dict[str, int]:
        """The user's done count, what remains for them (up to REMAINING_CAP), and the project's tasks."""
        return {
            "done": self.done_by(user),
            "remaining": self.remaining_for(user),
            "complete_tasks": self.complete_task_count,
            "total_tasks": self.task_count,
        }

    def lead_stats(self) -> dict[str, Any]:
        """What a lead watches: tasks by status and kind, annotations per annotator and per hour (answers to gold tasks
        aside: they are on the Quality page), live leases, and agreement (see agreement())."""
        now = timezone.now()
        annotations = Annotation.objects.filter(task__project=self, source=Annotation.Source.HUMAN).exclude(
            task__status=Task.Status.GOLD
        )
        return {
            "tasks_by_status": {
                (status, kind): n
                for status, kind, n in self.tasks.order_by().values_list("status", "kind").annotate(n=Count("pk"))
            },
            "per_annotator": list(
                annotations.order_by()
                .values_list("annotator__username")
                .annotate(n=Count("pk"), last_at=Max("created_at"))
                .order_by("-n", "annotator__username")
            ),
            "per_hour": list(
                annotations.filter(created_at__gte=now - timedelta(hours=24))
                .annotate(hour=TruncHour("created_at"))
                .order_by()
                .values_list("hour")
                .annotate(n=Count("pk"))
                .order_by("hour")
            ),
            "live_leases": list(
                Assignment.objects.live(now)
                .filter(task__project=self)
                .select_related("annotator", "task")
                .order_by("expires_at")
            ),
            "agreement": self.agreement(),
        }

    def agreement(self, tasks: int = AGREEMENT_TASKS) -> dict[str, Any]:
        """Inter-annotator agreement (annotate/agreement.py) on the latest `tasks` tasks with two annotations or
        more, gold tasks and excluded members' votes aside: per kind (units, values, percent, alpha) and per annotator
        (lowest first)."""
        from annotate import agreement
        from annotate.votes import pairwise_vote

        candidates = self.tasks.filter(annotation_count__gte=2).exclude(status=Task.Status.GOLD)
        if self.judge_votes_count:  # a judge's answer fills the count, but agreement is between people
            people = Count("annotations", filter=~Q(annotations__source=Annotation.Source.JUDGE))
            candidates = candidates.alias(people=people).filter(people__gte=2)
        latest = list(candidates.order_by("-id").values_list("id", flat=True)[:tasks])
        rows = (
            Annotation.objects.filter(task__in=latest, source=Annotation.Source.HUMAN)
            .exclude(annotator__in=self.excluded_voters())
            .order_by("task_id", "id")
            .values_list(
                "task_id", "task__kind", "annotator__username", "choice", "strength", "both_bad", "score", "ranking"
            )
        )
        units: dict[str, dict[Any, list[tuple[str, Any]]]] = {kind: {} for kind in JUDGED_KINDS}
        for task_id, kind, username, choice, strength, both_bad, score, ranking in rows:
            if kind not in units:  # a written answer has nothing to agree on
                continue
            if kind == TaskKind.RANKING:
                for pair, value in agreement.ranking_values(ranking).items():
                    units[kind].setdefault((task_id, pair), []).append((username, value))
            elif kind == TaskKind.PAIRWISE:
                units[kind].setdefault(task_id, []).append((username, pairwise_vote(choice, strength, both_bad).side))
            else:
                units[kind].setdefault(task_id, []).append((username, score))
        by_kind, compared = [], []
        for kind in JUDGED_KINDS:
            label = kind.label
            answers = [unit for unit in units[kind].values() if len(unit) >= 2]
            values = [[value for _, value in unit] for unit in answers]
            metric = "interval" if kind == TaskKind.RATING else "nominal"
            by_kind.append(
                agreement.KindAgreement(
                    kind=kind,
                    label=label,
                    units=len(values),
                    values=sum(map(len, values)),
                    percent=agreement.percent_agreement(values),
                    alpha=agreement.krippendorff_alpha(values, metric),
                )
            )
            compared += answers
        return {"tasks": len(latest), "by_kind": by_kind, "by_annotator": agreement.by_annotator(compared)}


class Membership(models.Model):
    class Role(models.TextChoices):
        LEAD = "lead", "Lead"
        ANNOTATOR = "annotator", "Annotator"

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.ANNOTATOR)
    # A lead's decisions on the member's work (recorded, with the reason, as MembershipEvents).
    paused = models.BooleanField(
        default=False, help_text="Given no new tasks here while set; what they answered so far stands."
    )
    votes_excluded = models.BooleanField(
        default=False, help_text="Their answers here count in no export, round or agreement while set."
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["project", "user"], name="membership_unique")]

    def __str__(self) -> str:
        return f"{self.user} is {self.role} of {self.project}"

    def decide(self, kind: str, *, by: Any, reason: str = "") -> "MembershipEvent | None":
        """A lead's decision on the member's work here (a MembershipEvent.Kind): pause or resume them, exclude their
        votes from the data or include them again, recorded with who and why; pausing also ends their live leases.

        None when it was so already (nothing is recorded); ValidationError on "reason" for a pause or an exclusion
        without one.
        """
        field, value, needs_reason = MembershipEvent.EFFECTS[kind]
        reason = reason.strip()
        if needs_reason and not reason:
            raise ValidationError({"reason": "Say why: the reason is kept with the decision, for the record."})
        with transaction.atomic():
            # The lock next_assignment takes: a lease it is making now is made before the pause, and released by it.
            get_user_model().objects.select_for_update().filter(pk=self.user_id).values_list("pk").get()
            changed = Membership.objects.filter(pk=self.pk).exclude(**{field: value}).update(**{field: value})
            setattr(self, field, value)
            if not changed:
                return None
            if kind == MembershipEvent.Kind.PAUSED:
                self.release_leases()
            return MembershipEvent.objects.create(
                project_id=self.project_id, user_id=self.user_id, kind=kind, reason=reason, by=by
            )

    def release_leases(self) -> int:
        """End the member's live leases in the project (when they leave it or are paused), so they stop holding places
        in the tasks' overlap; returns how many."""
        now = timezone.now()
        return (
            Assignment.objects.live(now)
            .filter(task__project_id=self.project_id, annotator_id=self.user_id)
            .update(status=Assignment.Status.EXPIRED, expires_at=now)
        )


class MembershipEvent(models.Model):
    """A lead's decision on a member's work, kept for the record: paused or resumed, their votes excluded from the
    data or included again, by whom, when and why."""

    class Kind(models.TextChoices):
        PAUSED = "paused", "Paused"
        RESUMED = "resumed", "Resumed"
        EXCLUDED = "excluded", "Votes excluded"
        INCLUDED = "included", "Votes included again"

    # What each decision sets on the membership, and whether it needs a reason: those that act against the member do.
    EFFECTS = {
        Kind.PAUSED: ("paused", True, True),
        Kind.RESUMED: ("paused", False, False),
        Kind.EXCLUDED: ("votes_excluded", True, True),
        Kind.INCLUDED: ("votes_excluded", False, False),
    }

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="membership_events")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="membership_events")
    kind = models.CharField(max_length=16, choices=Kind.choices)
    reason = models.TextField(blank=True)
    by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.user} {self.get_kind_display().lower()} in {self.project}"


@receiver(post_delete, sender=Membership)
def _release_leases_of_removed_member(sender: type, instance: Membership, **kwargs: Any) -> None:
    # A signal, not Membership.delete(): the admin's inline and its bulk action delete memberships both ways.
    instance.release_leases()


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


def text_key(text: str) -> str:
    """A text as the rule "the same text" compares it: every run of whitespace one space, none at the ends."""
    return " ".join(text.split())


def unique_texts(items: Iterable[_T], text: Callable[[_T], str] = str) -> list[_T]:
    """The items in order, less any whose text is the same (text_key) as an earlier one's."""
    first: dict[str, _T] = {}
    for item in items:
        first.setdefault(text_key(text(item)), item)
    return list(first.values())


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
    # Who wrote a human response on a write task or as a correction; null for imported demonstrations.
    author = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="written_responses"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.CheckConstraint(
                condition=Q(source="model") | Q(model_version__isnull=True),
                name="response_model_version_only_for_model_source",
            ),
            models.CheckConstraint(
                condition=Q(source="human") | Q(author__isnull=True), name="response_author_only_for_human_source"
            ),
        ]

    def __str__(self) -> str:
        return f"Response {self.pk} to {self.prompt_id}"


class TaskQuerySet(models.QuerySet):
    def available_to(self, user: Any, now: datetime, fill: str = "breadth") -> "TaskQuerySet":
        """Open tasks the user may be given, in queue order.

        A task qualifies if it is open, of a kind the project enables, the user never held a lease on it
        (submitted, skipped or expired) nor annotated it, and its annotations plus live leases are below
        its required count. Order: priority (highest first), then by the project's fill, breadth: fewest
        annotations first, or depth: most annotations first, then oldest (by id). The partial index task_queue
        (task_queue_depth for depth) serves this order, so the query reads index entries until it finds one that
        qualifies instead of counting or sorting the table.
        """
        live_leases = (
            Assignment.objects.live(now)
            .filter(task=OuterRef("pk"))
            .order_by()
            .values("task")
            .annotate(n=Count("pk"))
            .values("n")
        )
        tasks = (
            self.filter(status=Task.Status.OPEN)
            .new_to(user)
            .alias(live=Coalesce(Subquery(live_leases), 0))
            .filter(annotation_count__lt=F("required_annotations") - F("live"))
            .order_by("-priority", "-annotation_count" if fill == Project.Fill.DEPTH else "annotation_count", "id")
        )
        return tasks

    def new_to(self, user: Any) -> "TaskQuerySet":
        """Tasks the user never held a lease on (submitted, skipped or expired) nor annotated."""
        return self.exclude(Exists(Assignment.objects.filter(task=OuterRef("pk"), annotator=user))).exclude(
            Exists(Annotation.objects.filter(task=OuterRef("pk"), annotator=user))
        )


class Task(models.Model):
    class Status(models.TextChoices):
        OPEN = "open", "Open"
        COMPLETE = "complete", "Complete"
        # A known answer (an annotation with source gold): mixed into each annotator's stream at the project's
        # gold_rate, once per annotator, never complete, and outside the open queue and every dataset.
        GOLD = "gold", "Gold (answer known)"

    class Routed(models.TextChoices):
        """Hybrid labelling's decision (Project.routing), made when the project's judge answers the task."""

        JUDGE = "judge", "Took the judge's label"
        AUDIT = "audit", "Judged confidently, sent to people to audit the judge"
        PEOPLE_FIRST = "people_first", "Judged with low confidence, sent to people first"

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="tasks")
    prompt = models.ForeignKey(Prompt, on_delete=models.CASCADE, related_name="tasks")
    kind = models.CharField(max_length=16, choices=TaskKind.choices)
    responses = models.ManyToManyField(Response, through="TaskResponse", related_name="tasks")
    required_annotations = models.PositiveSmallIntegerField(default=1)
    annotation_count = models.PositiveIntegerField(default=0, editable=False)
    priority = models.SmallIntegerField(default=0, help_text="Higher goes first.")
    round_number = models.PositiveIntegerField(default=0, help_text="Training round whose data this task is for.")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.OPEN)
    routed = models.CharField(
        max_length=16,
        choices=Routed.choices,
        blank=True,
        default="",
        db_default="",  # the importer's bulk INSERT names its columns
        help_text="What hybrid labelling did with the task.",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    objects = TaskQuerySet.as_manager()

    class Meta:
        ordering = ["id"]
        constraints = [
            models.CheckConstraint(condition=Q(required_annotations__gte=1), name="task_required_positive"),
        ]
        indexes = [
            models.Index(fields=["project", "status", "kind"], name="task_project_status_kind"),
            # The queue's order (see TaskQuerySet.available_to), over open tasks only.
            models.Index(
                "project",
                F("priority").desc(),
                "annotation_count",
                "id",
                condition=Q(status="open"),
                name="task_queue",
            ),
            # The same for projects that fill in depth.
            models.Index(
                "project",
                F("priority").desc(),
                F("annotation_count").desc(),
                "id",
                condition=Q(status="open"),
                name="task_queue_depth",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} task {self.pk}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        adding = self._state.adding
        super().save(*args, **kwargs)
        if adding and self.status != self.Status.GOLD:
            self.project.count_tasks(added=1, completed=int(self.status == self.Status.COMPLETE))

    def clean(self) -> None:
        if self.prompt_id and self.project_id and self.prompt.project_id != self.project_id:
            raise ValidationError({"prompt": "The prompt belongs to another project."})

    def has_room_for(self, user: Any, now: datetime) -> bool:
        """Whether the user may lease this task now (exact when the task row is locked)."""
        # The queue's own rule, for this one task, in one statement.
        return Task.objects.filter(pk=self.pk).available_to(user, now).exists()

    def refresh_progress(self) -> None:
        """Recount the annotations and set the status from them (after an edit or delete outside the queue): gold
        while the task has a gold answer, else complete at the required count."""
        before = Task.objects.values_list("status", flat=True).get(pk=self.pk)
        self.annotation_count = self.counted_annotations().count()
        if self.annotations.filter(source=Annotation.Source.GOLD).exists():
            self.status = self.Status.GOLD
        else:
            done = self.annotation_count >= self.required_annotations or self.routed == self.Routed.JUDGE
            self.status = self.Status.COMPLETE if done else self.Status.OPEN
        self.save(update_fields=["annotation_count", "status"])
        (tasks, complete), (tasks_after, complete_after) = _counted(before), _counted(self.status)
        if (tasks, complete) != (tasks_after, complete_after):
            self.project.count_tasks(added=tasks_after - tasks, completed=complete_after - complete)

    def count_answer(self) -> None:
        """One more answer that fills the overlap, on the locked task: an open task completes at its required count,
        the project's counters with it."""
        self.annotation_count += 1
        completed = self.status == Task.Status.OPEN and self.annotation_count >= self.required_annotations
        if completed:
            self.status = Task.Status.COMPLETE
        self.save(update_fields=["annotation_count", "status"])
        if completed:
            # Last: every answer that completes a task queues on the project's row until commit.
            self.project.count_tasks(completed=1)

    def counted_annotations(self) -> models.QuerySet:
        """The annotations that fill the task's overlap (annotation_count): all but judges', unless the project
        counts judges' answers (Project.judge_votes_count)."""
        if self.project.judge_votes_count:
            return self.annotations.all()
        return self.annotations.exclude(source=Annotation.Source.JUDGE)

    def make_gold(self) -> "Annotation":
        """Freeze a complete task's majority answer as its gold answer: the task leaves the data and the progress
        counts and is served as gold from now on. GoldRefused where it has no such answer."""
        with transaction.atomic():
            task = Task.objects.select_for_update().select_related("project").get(pk=self.pk)
            if task.status != Task.Status.COMPLETE:
                status = task.get_status_display().lower()
                raise GoldRefused(f"Task {task.pk} is {status}: only a complete task can become gold.")
            fields = task.clean_answer(task.majority_answer())
            annotation = Annotation.objects.create(task=task, source=Annotation.Source.GOLD, **fields)
            Task.objects.filter(pk=task.pk).update(status=Task.Status.GOLD, annotation_count=F("annotation_count") + 1)
            task.project.count_tasks(added=-1, completed=-1)
        self.status, self.annotation_count = Task.Status.GOLD, task.annotation_count + 1
        return annotation

    def majority_answer(self) -> dict[str, Any]:
        """What the votes that count (annotate/votes.py; excluded members' aside) agree on, as an answer: a pairwise
        task's winning side, a rating task's median score. GoldRefused where they agree on none (a tie, both bad, a
        median between two points) and for rankings."""
        from annotate.votes import agreed_score, decide, pairwise_vote, tally

        if self.kind in (TaskKind.RANKING, TaskKind.WRITE):
            kind = "ranking" if self.kind == TaskKind.RANKING else "written answer"
            raise GoldRefused(f"Task {self.pk} is a {kind}: only pairwise and rating tasks can be gold.")
        votes = (
            self.annotations.filter(source__in=[Annotation.Source.HUMAN, Annotation.Source.IMPORTED])
            .exclude(annotator__in=self.project.excluded_voters())
            .order_by("id")
        )
        if self.kind == TaskKind.RATING:
            scores = list(votes.values_list("score", flat=True))
            if not scores:
                raise GoldRefused(f"Task {self.pk} has no ratings that count.")
            if (score := agreed_score(scores)) is None:
                low, high = sorted(scores)[(len(scores) - 1) // 2 : len(scores) // 2 + 1]
                raise GoldRefused(f"Task {self.pk}: its ratings split evenly between {low} and {high}.")
            return {"score": score}
        answers = [pairwise_vote(*row) for row in votes.values_list("choice", "strength", "both_bad")]
        if not answers:
            raise GoldRefused(f"Task {self.pk} has no votes that count.")
        decision = decide(tally(answers))
        if decision.winner == "tie":
            raise GoldRefused(f"Task {self.pk}: its votes make a tie.")
        if decision.both_bad:
            raise GoldRefused(f"Task {self.pk}: most of its votes say both responses are bad.")
        return {"choice": decision.winner}

    def response_ids(self) -> list[int]:
        """The task's response ids in position order (position 0 is A, 1 is B)."""
        return list(self.task_responses.order_by("position").values_list("response_id", flat=True))

    def clean_answer(self, data: dict[str, Any]) -> dict[str, Any]:
        return answers.clean_answer(self.project, self.kind, self.response_ids(), data)


@receiver(post_delete, sender=Task)
def _uncount_deleted_task(sender: type, instance: Task, origin: Any = None, **kwargs: Any) -> None:
    # A signal, not Task.delete(): deleting a prompt deletes its tasks by cascade, and the admin's bulk action
    # deletes a queryset; each sends this, in the deleting transaction.
    if isinstance(origin, Project) or getattr(origin, "model", None) is Project:
        return  # the counters go with their project
    tasks, complete = _counted(instance.status)
    if tasks:
        Project(pk=instance.project_id).count_tasks(added=-tasks, completed=-complete)


def _counted(status: str) -> tuple[int, int]:
    """What a task of this status adds to its project's counters (tasks, complete): gold tasks are no progress."""
    return int(status != Task.Status.GOLD), int(status == Task.Status.COMPLETE)


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


class AssignmentQuerySet(models.QuerySet):
    def live(self, now: datetime | None = None) -> "AssignmentQuerySet":
        """Leases still held: active and not yet expired."""
        return self.filter(status=Assignment.Status.ACTIVE, expires_at__gt=now or timezone.now())

    def expire_stale(self, now: datetime | None = None) -> int:
        """Close the leases whose time ran out (the queue already ignores them); returns how many."""
        return self.filter(status=Assignment.Status.ACTIVE, expires_at__lte=now or timezone.now()).update(
            status=Assignment.Status.EXPIRED
        )


class Assignment(models.Model):
    """A lease: one task reserved for one annotator until it expires, is submitted or skipped.

    A user holds at most one assignment per task, ever: the row stays after the lease ends, and that is
    what keeps a task they annotated, skipped or let expire from being shown to them again.
    """

    class Status(models.TextChoices):
        ACTIVE = "active", "Active"
        SUBMITTED = "submitted", "Submitted"
        SKIPPED = "skipped", "Skipped"
        EXPIRED = "expired", "Expired"

    task = models.ForeignKey(Task, on_delete=models.CASCADE, related_name="assignments")
    annotator = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="assignments")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACTIVE)
    leased_at = models.DateTimeField()
    expires_at = models.DateTimeField()
    submitted_at = models.DateTimeField(null=True, blank=True)
    skipped_at = models.DateTimeField(null=True, blank=True)
    shown_order = models.JSONField(
        default=list, help_text="Response ids in the order they were shown (first is the displayed A)."
    )
    suggestion_shown = models.BooleanField(
        null=True,
        blank=True,
        help_text="Whether the judge's suggestion was shown (False: the control group); empty: none was offered.",
    )

    objects = AssignmentQuerySet.as_manager()

    class Meta:
        ordering = ["-leased_at"]
        constraints = [
            models.UniqueConstraint(fields=["task", "annotator"], name="assignment_once_per_task_and_annotator"),
        ]
        indexes = [
            models.Index(fields=["task", "status", "expires_at"], name="assignment_task_live"),
            models.Index(fields=["annotator", "status", "expires_at"], name="assignment_annotator_live"),
            # The leases offered a judge's suggestion, few or none: what annotate/suggestions.py reads.
            models.Index(fields=["task"], condition=Q(suggestion_shown__isnull=False), name="assignment_suggested"),
        ]

    def __str__(self) -> str:
        return f"{self.task} leased to {self.annotator}"

    def shown_responses(self) -> list[tuple[str, Response]]:
        """The task's responses in the order this annotator was shown them, with their letters (A, B, …)."""
        by_id = Response.objects.in_bulk(self.shown_order)
        return [(_letter(index), by_id[response_id]) for index, response_id in enumerate(self.shown_order)]

    def answer_from_shown(self, data: Any) -> dict[str, Any]:
        """Turn an answer in the terms this lease showed (the task page's form or the API's JSON) into one for
        clean_answer."""
        kind = self.task.kind
        swapped = kind == TaskKind.PAIRWISE and self.shows_swapped()
        return answers.answer_from_shown(data, kind=kind, shown_order=self.shown_order, swapped=swapped)

    def suggestion(self) -> dict[str, Any] | None:
        """The project judge's answer this lease shows as a suggestion (Project._shows_suggestion), in the lease's
        letters (its A may be the task's B), with the judge's confidence; None for the control group and where none
        was offered. The judge's answer only, never anyone's text."""
        if not self.suggestion_shown or (judge := self.task.project.judge_id) is None:
            return None
        annotation = self.task.annotations.filter(annotator__judge=judge).select_related("task").first()
        if annotation is None:
            return None
        return {"answer": annotation.shown_summary(self.shown_order), "confidence": annotation.confidence}

    def shows_swapped(self) -> bool:
        """Whether this lease showed a pair the other way round: the task's position 1 as A."""
        return self.shown_order[0] != self.task.response_ids()[0]

    def form_from_answer(self, fields: dict[str, Any]) -> QueryDict:
        """The task page's form fields (in displayed terms) for a stored answer: answer_from_shown's inverse."""
        kind = self.task.kind
        return answers.form_from_answer(fields, kind=kind, swapped=kind == TaskKind.PAIRWISE and self.shows_swapped())

    def working_since(self) -> datetime:
        """When the annotator can have started on this task: the later of the lease and their last submit or skip in
        the project before now. A client holding several leases answers them one after another, and an answer's
        time must not include the time spent on the ones before it."""
        # Leases that ended after this one began were live when it began (or came after it): their expires_at is
        # later, so the annotator's live-lease index reads only those. A late submit on a lease that had expired
        # before this one began is missed, and the time counts from the lease, as it would without this.
        ended = (
            Assignment.objects.filter(
                annotator_id=self.annotator_id,
                status__in=[Assignment.Status.SUBMITTED, Assignment.Status.SKIPPED],
                expires_at__gt=self.leased_at,
                task__project_id=self.task.project_id,
            )
            .exclude(pk=self.pk)
            .aggregate(submitted=Max("submitted_at"), skipped=Max("skipped_at"))
        )
        return max([self.leased_at, *(moment for moment in ended.values() if moment is not None)])

    def submit(self, answer: dict[str, Any], *, user: Any) -> "Annotation":
        """Store the user's answer for this lease; the same submission twice returns the first annotation.

        Raises LeaseError for someone else's lease, a skipped one, one that expired and whose task has since
        been filled by others, or a different answer to a task the user already answered; ValidationError for an
        answer the project does not accept.
        """
        if self.annotator_id != user.pk:
            raise LeaseError("This task was given to someone else.")
        now = timezone.now()
        with transaction.atomic():
            # The task's lock orders this against leasing and other submissions of the same task.
            task = Task.objects.select_for_update().select_related("project").get(pk=self.task_id)
            lease = Assignment.objects.get(pk=self.pk)
            existing = Annotation.objects.filter(task=task, annotator=user).first()
            if existing is not None:
                # The same answer again (a double click, a retry) succeeds; a different one must not look stored.
                if existing.differs_from(task.clean_answer(answer)):
                    raise LeaseError(
                        "You already answered this task differently: your answer stands (change it on My work)."
                    )
                return existing
            if lease.status == Assignment.Status.SKIPPED:
                raise LeaseError("You skipped this task.")
            if Membership.objects.filter(project_id=task.project_id, user=user, paused=True).exists():
                raise MemberPaused(task.project)
            # A gold task has no overlap to fill: an answer after the lease ran out takes no one's place.
            if task.status != Task.Status.GOLD and (
                lease.status != Assignment.Status.ACTIVE or lease.expires_at <= now
            ):
                others = Assignment.objects.live(now).filter(task=task).exclude(pk=lease.pk).count()
                if task.status != Task.Status.OPEN or task.annotation_count + others >= task.required_annotations:
                    raise LeaseError("Your time on this task ran out and it went to someone else.")
            fields = task.clean_answer(answer)
            written = fields.pop(answers.WRITTEN, None)
            annotation = Annotation(
                task=task,
                annotator=user,
                assignment=lease,
                source=Annotation.Source.HUMAN,
                time_spent=min(now - self.working_since(), task.project.lease_length),
                **fields,
            )
            annotation._keep_written(written, user=user)
            annotation.save(force_insert=True)
            Assignment.objects.filter(pk=lease.pk).update(status=Assignment.Status.SUBMITTED, submitted_at=now)
            task.count_answer()
        self.status, self.submitted_at = Assignment.Status.SUBMITTED, now
        return annotation

    def skip(self, *, user: Any) -> None:
        """Give the task back and remember the skip, so the user is not shown it again."""
        if self.annotator_id != user.pk:
            raise LeaseError("This task was given to someone else.")
        now = timezone.now()
        with transaction.atomic():
            lease = Assignment.objects.select_for_update().get(pk=self.pk)
            if lease.status == Assignment.Status.SUBMITTED:
                raise LeaseError("You already submitted this task.")
            if lease.status != Assignment.Status.SKIPPED:
                lease.status, lease.skipped_at = Assignment.Status.SKIPPED, now
                lease.save(update_fields=["status", "skipped_at"])
        self.status, self.skipped_at = Assignment.Status.SKIPPED, lease.skipped_at


class Annotation(models.Model):
    class Source(models.TextChoices):
        HUMAN = "human", "Annotator"
        IMPORTED = "imported", "Imported preference"
        # A pair whose two texts are the same (text_key): recorded as a tie, and no one is asked.
        AUTO = "auto", "Automatic tie (identical answers)"
        # A gold task's known answer, against which annotators' answers are scored.
        GOLD = "gold", "Gold answer"
        # A judge's answer (annotate/judges.py), by its identity (Judge.user): beside people's, never one of them.
        JUDGE = "judge", "Judge"

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
    # What the annotator wrote (a human Response with them as author): a write task's answer, or a rating's
    # correction, "a better answer" than the rated response. RESTRICT: the response goes only with its annotation.
    written_response = models.OneToOneField(
        Response, null=True, blank=True, on_delete=models.RESTRICT, related_name="written_in"
    )
    time_spent = models.DurationField(null=True, blank=True)
    # A judge's answer: how sure it is (0–1), whether its two runs with the sides swapped agreed (pairwise), and
    # what it said (the raw answers, each order's verdict, the attempts).
    confidence = models.FloatField(null=True, blank=True)
    consistent = models.BooleanField(null=True, blank=True)
    judge_detail = models.JSONField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(fields=["task", "annotator"], name="annotation_unique_per_annotator"),
            models.CheckConstraint(
                condition=Q(annotator__isnull=False) | Q(source__in=["imported", "auto", "gold"]),
                name="annotation_has_annotator",
            ),
            models.CheckConstraint(condition=Q(choice__in=["", "a", "b", "tie"]), name="annotation_choice_valid"),
            models.CheckConstraint(
                condition=Q(strength__isnull=True) | Q(strength__in=[1, 2]), name="annotation_strength_valid"
            ),
        ]

    def __str__(self) -> str:
        return f"Annotation {self.pk} on {self.task_id}"

    def written_text(self) -> str | None:
        """The text the annotator wrote (a write task's answer, a rating's correction); None without one."""
        return self.written_response.content if self.written_response_id else None

    def differs_from(self, fields: dict[str, Any]) -> bool:
        """Whether clean_answer's `fields` are another answer than this one."""
        if fields.get(answers.WRITTEN) != self.written_text():
            return True
        return any(getattr(self, name) != value for name, value in fields.items() if name != answers.WRITTEN)

    def _keep_written(self, text: str | None, *, user: Any) -> None:
        """Make written_response hold `text`: a new human Response by `user`, the same one rewritten, or none."""
        current = self.written_response_id
        if text is None:
            if current is not None:
                Annotation.objects.filter(pk=self.pk).update(written_response=None)
                Response.objects.filter(pk=current).delete()
            self.written_response = None
        elif current is not None:
            Response.objects.filter(pk=current).update(content=text)
            self.written_response.content = text
        else:
            self.written_response = Response.objects.create(
                prompt_id=self.task.prompt_id, content=text, source=Response.Source.HUMAN, author=user
            )
            if self.pk is not None:
                Annotation.objects.filter(pk=self.pk).update(written_response=self.written_response)

    def answer(self) -> dict[str, Any]:
        """The kind-specific answer, in the shape clean_answer accepts."""
        if self.task.kind == TaskKind.WRITE:
            return {"text": self.written_text(), "comment": self.comment}
        if self.task.kind == TaskKind.RATING:
            answer = {"score": self.score, "labels": self.labels, "comment": self.comment}
            if (correction := self.written_text()) is not None:
                answer["correction"] = correction
            return answer
        if self.task.kind == TaskKind.PAIRWISE:
            answer = {"choice": self.choice, "both_bad": self.both_bad, "comment": self.comment}
            if self.strength is not None:
                answer["strength"] = self.strength
            return answer
        return {"ranking": self.ranking, "comment": self.comment}

    def summary(self) -> str:
        """A short reading of the answer: "4 (unsafe)", "A much better, both bad", "3 > 1 = 2", "Wrote 120
        characters"."""
        if self.task.kind == TaskKind.WRITE:
            return f"Wrote {len(self.written_text() or ''):,} characters"
        if self.task.kind == TaskKind.RATING:
            text = f"{self.score} ({', '.join(self.labels)})" if self.labels else str(self.score)
            return f"{text}, and a better answer" if self.written_response_id else text
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

    def shown_summary(self, shown_order: list[int] | None = None) -> str:
        """The answer as its annotator saw it: a pair's side and a ranking's responses by the letters they were shown
        under (the shown A may be the task's B), "4 (unsafe)", "B much better", "C > A = B". `shown_order`: as
        another lease showed them (a judge's answer suggested to an annotator)."""
        if shown_order is None:
            if self.assignment is None:
                return self.summary()
            shown_order = self.assignment.shown_order
        if self.task.kind in (TaskKind.RATING, TaskKind.WRITE):
            return self.summary()
        letters = {response_id: _letter(i) for i, response_id in enumerate(shown_order)}
        if self.task.kind == TaskKind.RANKING:
            return " > ".join(" = ".join(sorted(letters[r] for r in group)) for group in self.ranking or [])
        if self.choice == self.Choice.TIE:
            text = "Tie"
        else:
            # From the prefetch when the caller made one (the "my work" list), else one query.
            positions = [link.response_id for link in self.task.task_responses.all()]
            chosen = letters[positions[0 if self.choice == self.Choice.A else 1]]
            text = f"{chosen} {'much ' if self.strength == 2 else ''}better"
        return f"{text}, both bad" if self.both_bad else text

    def locked_because(self, now: datetime | None = None) -> str:
        """Why its annotator may not change this answer now; "" when they may: while its task is open, or for the
        project's edit_window_minutes after the answer was first given.

        A gold task counts as complete, and is told as such: an answer to one must not be told apart from others.
        """
        if self.source != self.Source.HUMAN or self.assignment_id is None:
            return "Only an answer given on the task page can be changed."
        if self.task.status == Task.Status.OPEN:
            return ""
        minutes = self.task.project.edit_window_minutes
        closes = self.created_at + timedelta(minutes=minutes)
        if (now or timezone.now()) < closes:
            return ""
        if not minutes:
            return "Its task is complete: an answer can be changed only while its task is open."
        when = timezone.localtime(closes).strftime("%d %b %Y %H:%M")
        return f"Its task is complete and the {minutes} minutes to change an answer ended at {when}."

    def change(self, answer: dict[str, Any], *, user: Any) -> bool:
        """Replace the user's answer with `answer` (in clean_answer's shape), keeping the one it replaces as an
        AnnotationRevision; False, and nothing kept, when it is the answer already stored (the same change twice).

        Raises AnswerLocked for someone else's answer or one locked_because refuses, MemberPaused for a paused
        member, ValidationError for an answer the project does not accept. Exports, agreement and quality read the
        Annotation row, so every one of them reads the answer as it stands.
        """
        if self.annotator_id != user.pk:
            raise AnswerLocked("This answer is someone else's.")
        with transaction.atomic():
            # The task's lock, as submit takes it: a change and the submit that completes the task go one at a time.
            task = Task.objects.select_for_update().select_related("project").get(pk=self.task_id)
            current = Annotation.objects.select_related("assignment", "written_response").get(pk=self.pk)
            current.task = task
            if Membership.objects.filter(project_id=task.project_id, user=user, paused=True).exists():
                raise MemberPaused(task.project)
            if reason := current.locked_because():
                raise AnswerLocked(reason)
            fields = task.clean_answer(answer)
            changed = current.differs_from(fields)
            written = fields.pop(answers.WRITTEN, None)
            if changed:
                AnnotationRevision.objects.create(annotation=current, answer=current.answer(), by=user)
                Annotation.objects.filter(pk=self.pk).update(**fields)
                current._keep_written(written, user=user)
        for name, value in fields.items():
            setattr(self, name, value)
        self.written_response = current.written_response
        return changed


class AnswerLocked(Exception):
    """Refused: an answer its annotator may no longer change (Annotation.locked_because says why)."""


class AnnotationRevision(models.Model):
    """An answer as it was before its annotator changed it (Annotation.change): the Annotation row holds the answer
    as it stands, which every reader uses; these keep the history."""

    annotation = models.ForeignKey(Annotation, on_delete=models.CASCADE, related_name="revisions")
    answer = models.JSONField(help_text="The answer replaced, as Annotation.answer() gave it (task positions).")
    by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True, help_text="When it was replaced.")

    class Meta:
        ordering = ["annotation", "id"]

    def __str__(self) -> str:
        return f"Revision {self.pk} of annotation {self.annotation_id}"


class Job(models.Model):
    """What exports and import jobs share as long jobs run by a worker (annotate/jobs.py): pending → running →
    an end, each move conditional; while running, a heartbeat that the reaper watches."""

    started_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True, help_text="While running: when its worker last beat.")
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        abstract = True

    def claim(self) -> bool:
        """pending → running, once: a second delivery of the same message gets False and does nothing."""
        now = timezone.now()
        return move(self, [self.Status.PENDING], status=self.Status.RUNNING, started_at=now, heartbeat_at=now)

    def beat(self, **progress: Any) -> bool:
        """Record that the worker is alive (and how far it got); False once the job is no longer running."""
        return move(self, [self.Status.RUNNING], heartbeat_at=timezone.now(), **progress)

    def finish(self, status: str, **fields: Any) -> bool:
        """running → an end (ready, succeeded, failed); False if the reaper failed it first."""
        return move(self, [self.Status.RUNNING], status=status, finished_at=timezone.now(), **fields)


class DatasetSnapshot(Job):
    """One export of a project's data: immutable once ready, and identified by the sha256 of its content.

    Training rounds point at a snapshot, so a model can always be traced to the exact data it saw.
    """

    class Kind(models.TextChoices):
        PAIRS = "pairs", "Preference pairs (reward model, DPO)"
        UNPAIRED = "unpaired", "Unpaired ratings (KTO)"
        VOTES = "votes", "Raw votes"
        SFT = "sft", "SFT conversations"

    class Format(models.TextChoices):
        JSONL = "jsonl", "JSON Lines"
        PARQUET = "parquet", "Parquet"

    class Style(models.TextChoices):
        CONVERSATIONAL = "conversational", "Conversational (message lists)"
        STANDARD = "standard", "Standard (strings)"

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        RUNNING = "running", "Running"
        READY = "ready", "Ready"
        FAILED = "failed", "Failed"

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="snapshots")
    kind = models.CharField(max_length=16, choices=Kind.choices)
    format = models.CharField(max_length=16, choices=Format.choices, default=Format.JSONL)
    style = models.CharField(max_length=16, choices=Style.choices, default=Style.CONVERSATIONAL)
    filters = models.JSONField(default=dict, blank=True, help_text="The filters and options the export ran with.")
    judge_weights = models.JSONField(
        null=True,
        blank=True,
        help_text="votes=both: each judge's weight (its measured agreement with people when the export was asked "
        "for), by name; empty where no weight applies.",
    )
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    rows_written = models.PositiveIntegerField(default=0, help_text="Progress while running; the total when ready.")
    row_count = models.PositiveIntegerField(null=True, blank=True)
    sha256 = models.CharField(max_length=64, blank=True, db_index=True)
    file = models.FileField(upload_to="exports/%Y/%m/", blank=True)
    error = models.TextField(blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="snapshots"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["status", "heartbeat_at"], name="snapshot_status_heartbeat")]

    def __str__(self) -> str:
        return f"{self.project.slug} {self.kind} export {self.pk}"

    @property
    def part_path(self) -> Path:
        """The file while it is written: under MEDIA_ROOT, which the web process and every worker share, so that
        the reaper can remove what a dead worker left, and on the file system the finished file is renamed into."""
        return Path(settings.MEDIA_ROOT) / "exports" / "tmp" / f"{self.pk}.{self.format}.part"


class ImportJob(Job):
    """A big upload that a Celery worker imports (annotate/import_jobs.py): all or nothing, like every import."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="import_jobs")
    file = models.FileField(upload_to="imports/%Y/%m/", blank=True, help_text="The upload, deleted when the job ends.")
    file_name = models.CharField(max_length=255, help_text="The uploaded file's name.")
    format = models.CharField(max_length=16, blank=True, help_text="The format asked for; blank: detected.")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    rows_read = models.PositiveIntegerField(default=0, help_text="Progress: rows read so far; none is kept on failure.")
    result = models.JSONField(null=True, blank=True, help_text="What the import made, once it succeeded.")
    error = models.TextField(blank=True)
    error_line = models.PositiveIntegerField(null=True, blank=True, help_text="The file's line at fault.")
    error_field = models.CharField(max_length=200, blank=True, help_text="The field or column at fault.")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="import_jobs"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["status", "heartbeat_at"], name="import_status_heartbeat")]

    def __str__(self) -> str:
        return f"{self.project.slug} import {self.pk} ({self.file_name})"

    def delete_file(self) -> None:
        """Delete the uploaded file (the job has ended: its rows are in the database, or none are)."""
        self.file.delete(save=False)
        ImportJob.objects.filter(pk=self.pk).update(file="")


class QualityReport(Job):
    """A project's quality figures (annotate/quality_reports.py): computed by a worker from every annotation, read
    whole by the Quality page and the API, so that no request reads the annotations. One per project; a refresh
    moves it pending → running → ready (or failed), one at a time, and the last figures stay until new ones replace
    them."""

    class Status(models.TextChoices):
        PENDING = "pending", "Queued"
        RUNNING = "running", "Computing"
        READY = "ready", "Ready"
        FAILED = "failed", "Failed"

    project = models.OneToOneField(Project, on_delete=models.CASCADE, related_name="quality_report")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    requested_at = models.DateTimeField(null=True, blank=True, help_text="When the refresh under way was asked for.")
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # The figures: {"project": {…}, "annotators": [{…}, …]}, each the API's shape less what is read live (flags,
    # paused, votes excluded). One JSON value rather than a row per annotator: a page reads one row, and a refresh
    # replaces every figure at once.
    figures = models.JSONField(default=dict, blank=True)
    computed_at = models.DateTimeField(
        null=True, blank=True, help_text="When the annotations in the figures were read."
    )
    fast_seconds = models.PositiveSmallIntegerField(
        null=True, blank=True, help_text="The project's fast_seconds when the figures were computed."
    )
    annotation_mark = models.BigIntegerField(
        default=0, help_text="The highest annotation id beat had looked past when it last looked for new answers."
    )
    revision_mark = models.BigIntegerField(
        default=0, help_text="The same for answers changed (AnnotationRevision ids)."
    )
    error = models.TextField(blank=True)

    class Meta:
        indexes = [models.Index(fields=["status", "heartbeat_at"], name="quality_status_heartbeat")]

    def __str__(self) -> str:
        return f"{self.project.slug} quality ({self.status})"


class ApiTokenQuerySet(models.QuerySet):
    def authenticate(self, plaintext: str) -> "ApiToken | None":
        """The live token that `plaintext` is, with its user; None if it is malformed, unknown, wrong or revoked."""
        scheme, _, rest = plaintext.partition("_")
        prefix, _, secret = rest.partition("_")  # the prefix is hex; the secret may hold more underscores
        if scheme != ApiToken.SCHEME or not prefix or not secret:
            return None
        token = self.select_related("user").filter(prefix=prefix, revoked_at__isnull=True).first()
        # compare_digest: how long the comparison takes says nothing about how much of the digest matched.
        if token is None or not hmac.compare_digest(token.digest, ApiToken.digest_of(plaintext)):
            return None
        if not token.user.is_active:
            return None
        token.record_use()
        return token


class ApiToken(models.Model):
    """A token for scripts: only a hash is stored, the token itself is shown once, when it is made.

    A token reads `arb_<prefix>_<secret>`: the prefix finds the row, the sha256 of the whole token checks it.
    """

    SCHEME = "arb"
    # last_used_at is for people ("used 3 days ago"): writing it on every request would double the writes.
    LAST_USED_RESOLUTION = timedelta(minutes=1)

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=100, help_text="What the token is for, e.g. the script using it.")
    prefix = models.CharField(max_length=16, unique=True, help_text="The token's first characters, to find it.")
    digest = models.CharField(max_length=64, help_text="sha256 of the whole token.")
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    objects = ApiTokenQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…) of {self.user}"

    @classmethod
    def issue(cls, user: Any, name: str) -> tuple["ApiToken", str]:
        """Make a token for `user`; returns it with its plaintext, which is not stored and cannot be shown again."""
        prefix = secrets.token_hex(6)
        plaintext = f"{cls.SCHEME}_{prefix}_{secrets.token_urlsafe(32)}"
        token = cls(user=user, name=name.strip(), prefix=prefix, digest=cls.digest_of(plaintext))
        token.full_clean()  # a blank or overlong name is a ValidationError on "name", for the page and the API
        token.save()
        return token, plaintext

    @staticmethod
    def digest_of(plaintext: str) -> str:
        # A plain hash suffices (no salt, no slow KDF): the secret is 256 random bits, not a password.
        return hashlib.sha256(plaintext.encode()).hexdigest()

    @property
    def masked(self) -> str:
        """How the token is shown after it was made: enough to recognise it, nothing to use."""
        return f"{self.SCHEME}_{self.prefix}_…"

    def record_use(self) -> None:
        now = timezone.now()
        if self.last_used_at is None or now - self.last_used_at >= self.LAST_USED_RESOLUTION:
            ApiToken.objects.filter(pk=self.pk).update(last_used_at=now)
            self.last_used_at = now

    def revoke(self) -> None:
        """Refuse the token from now on; the row stays, so its owner sees when it was revoked."""
        if self.revoked_at is None:
            self.revoked_at = timezone.now()
            self.save(update_fields=["revoked_at"])


def _letter(index: int) -> str:
    """A response's letter by its shown position: A to Z, then numbers."""
    return chr(ord("A") + index) if index < 26 else str(index + 1)


# People: invitations to a project, and the lead a project's maker becomes.


def make_lead(project: Project, user: Any) -> Membership:
    """Make `user` a lead of `project` (a member already or not): how the maker of a project comes to lead it."""
    membership, _ = Membership.objects.update_or_create(
        project=project, user=user, defaults={"role": Membership.Role.LEAD}
    )
    return membership


class InvitationUnusable(Exception):
    """The invitation was revoked, has expired or has been used as often as it may; the message says which."""


class InvitationQuerySet(models.QuerySet):
    def usable(self, now: datetime | None = None) -> "InvitationQuerySet":
        """Invitations someone may still join with: not revoked, not expired, uses left."""
        now = now or timezone.now()
        return self.filter(revoked_at__isnull=True, expires_at__gt=now, use_count__lt=F("max_uses"))

    def by_link(self, plaintext: str) -> "Invitation | None":
        """The invitation a link's token is (usable or not); None when no invitation has that token."""
        return self.select_related("project").filter(digest=ApiToken.digest_of(plaintext)).first()


class Invitation(models.Model):
    """A link that lets people join a project with a role: single-use, or shared with a cap on its uses.

    As with API tokens only a hash of the token is stored: the link is shown once, when it is made.
    """

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="invitations")
    role = models.CharField(max_length=16, choices=Membership.Role.choices, default=Membership.Role.ANNOTATOR)
    email = models.EmailField(blank=True, help_text="Who it was sent to, if it was sent by email.")
    digest = models.CharField(max_length=64, unique=True, help_text="sha256 of the link's token.")
    max_uses = models.PositiveIntegerField(default=1, help_text="How many people may join with it.")
    use_count = models.PositiveIntegerField(default=0)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()
    revoked_at = models.DateTimeField(null=True, blank=True)

    objects = InvitationQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.CheckConstraint(condition=Q(max_uses__gte=1), name="invitation_max_uses_positive"),
            models.CheckConstraint(condition=Q(use_count__lte=F("max_uses")), name="invitation_within_max_uses"),
        ]

    def __str__(self) -> str:
        return f"Invitation to {self.project} as {self.role}"

    @classmethod
    def issue(
        cls, project: Project, *, by: Any, role: str, email: str = "", max_uses: int = 1
    ) -> tuple["Invitation", str]:
        """Make an invitation; returns it with its token, which is not stored and cannot be shown again."""
        plaintext = secrets.token_urlsafe(32)
        invitation = cls(
            project=project,
            role=role,
            email=email.strip(),
            max_uses=max_uses,
            created_by=by,
            digest=ApiToken.digest_of(plaintext),
            expires_at=timezone.now() + timedelta(days=settings.ARBITER_INVITATION_DAYS),
        )
        invitation.full_clean()
        invitation.save()
        return invitation, plaintext

    @property
    def problem(self) -> str:
        """Why no one can join with it now; empty while it is usable."""
        if self.revoked_at is not None:
            return "This invitation was revoked."
        if self.expires_at <= timezone.now():
            return "This invitation has expired."
        if self.use_count >= self.max_uses:
            return "This invitation has been used." if self.max_uses == 1 else "This invitation has no uses left."
        return ""

    def accept(self, user: Any) -> Membership:
        """Make `user` a member with the invitation's role, counting one use; a member already keeps their membership
        and uses nothing, so accepting twice (a double click, a reload) joins once. InvitationUnusable if it was
        revoked, expired or used up."""
        try:
            with transaction.atomic():
                if existing := Membership.objects.filter(project_id=self.project_id, user=user).first():
                    return existing
                # One conditional UPDATE: of requests accepting at once, no more than the uses left get through.
                claimed = Invitation.objects.usable().filter(pk=self.pk).update(use_count=F("use_count") + 1)
                if not claimed:
                    self.refresh_from_db()
                    raise InvitationUnusable(self.problem or "This invitation cannot be used.")
                return Membership.objects.create(project_id=self.project_id, user=user, role=self.role)
        except IntegrityError:
            # The same person accepted at the same moment in another request: theirs joined; this use rolled back.
            return Membership.objects.get(project_id=self.project_id, user=user)

    def revoke(self) -> None:
        """Refuse the link from now on; who joined with it stays a member."""
        if self.revoked_at is None:
            self.revoked_at = timezone.now()
            self.save(update_fields=["revoked_at"])


class Judge(models.Model):
    """An AI judge that answers a project's tasks beside its people (annotate/judges.py): a reward model from the
    registry, or an instruction-following LLM behind an OpenAI-compatible chat endpoint given the project's
    guidelines and the rubric. It answers as its own identity, `user`: a non-human account that cannot log in,
    tied to this configuration (a judge with another configuration is another judge)."""

    class Kind(models.TextChoices):
        REWARD_MODEL = "reward_model", "Reward model"
        LLM = "llm", "LLM (OpenAI-compatible endpoint)"

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="judges")
    name = models.SlugField(max_length=100, help_text="Unique in the project; letters, digits, - and _.")
    kind = models.CharField(max_length=16, choices=Kind.choices)
    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="judge", editable=False
    )
    # reward_model
    model_version = models.ForeignKey(
        "models_registry.ModelVersion", null=True, blank=True, on_delete=models.PROTECT, related_name="judges"
    )
    # llm
    endpoint = models.URLField(max_length=500, blank=True, help_text="The OpenAI-compatible base URL, ending in /v1.")
    model_name = models.CharField(max_length=200, blank=True, help_text="The model the endpoint serves.")
    api_key_env = models.CharField(
        max_length=100, blank=True, help_text="The environment variable holding the endpoint's API key (empty: none)."
    )
    rubric = models.TextField(
        blank=True, help_text="What the judge is told beside the guidelines: a rubric or a short constitution."
    )
    concurrency = models.PositiveSmallIntegerField(default=8, help_text="Requests in flight at once.")
    requests_per_minute = models.PositiveIntegerField(default=0, help_text="Rate limit on the endpoint; 0: none.")
    max_retries = models.PositiveSmallIntegerField(
        default=2, help_text="Asks again this many times when an answer does not parse; then it is a failure."
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["project", "name"]
        constraints = [
            models.UniqueConstraint(fields=["project", "name"], name="judge_unique_name_per_project"),
            models.CheckConstraint(
                condition=(Q(kind="reward_model") & Q(model_version__isnull=False))
                | (Q(kind="llm") & ~Q(endpoint="") & ~Q(model_name="")),
                name="judge_kind_configured",
            ),
        ]

    def __str__(self) -> str:
        return f"Judge {self.name} ({self.get_kind_display()})"

    def identity_username(self) -> str:
        return f"judge.{self.project_id}.{self.name}"[:150]

    def clean(self) -> None:
        people = get_user_model().objects.filter(judge__isnull=True)  # another judge's: the name's constraint says so
        if self.user_id is None and people.filter(username=self.identity_username()).exists():
            # A person's account: never the judge's to become.
            raise ValidationError(
                {"name": f"The account {self.identity_username()} exists already: choose another name."}
            )
        for name in ("endpoint", "model_name", "api_key_env", "rubric"):
            if "\x00" in getattr(self, name):  # PostgreSQL cannot store it
                raise ValidationError({name: "Must not contain a NUL character."})
        # The rubric goes in every request the judge sends: no longer than one imported text may be.
        if (size := len(self.rubric.encode())) > (limit := settings.ARBITER_IMPORT_MAX_FIELD_BYTES):
            raise ValidationError(
                {"rubric": f"Is {size:,} bytes, over the limit of {limit:,} (ARBITER_IMPORT_MAX_FIELD_BYTES)."}
            )
        if self.kind == self.Kind.REWARD_MODEL:
            if self.model_version_id is None:
                raise ValidationError({"model_version": "A reward-model judge needs a reward model from the registry."})
            version = self.model_version
            if version.kind != version.Kind.REWARD:
                raise ValidationError({"model_version": f"{version} is a {version.get_kind_display().lower()}."})
            if self.project_id and version.project_id != self.project_id:
                raise ValidationError({"model_version": f"{version} belongs to another project."})
        elif self.kind == self.Kind.LLM:
            needed = ("endpoint", "model_name")
            if missing := {name: "An LLM judge needs it." for name in needed if not getattr(self, name)}:
                raise ValidationError(missing)

    @classmethod
    def create(cls, project: Project, name: str, *, created_by: Any = None, **fields: Any) -> "Judge":
        """A judge with its identity: a user named judge.<project id>.<name> that cannot log in."""
        judge = cls(project=project, name=name, created_by=created_by, **fields)
        judge.full_clean(exclude=["user"])
        judge.save_with_identity()
        return judge

    def save_with_identity(self) -> None:
        """Save a new, validated judge and its identity together (Judge.create; the admin's add form)."""
        with transaction.atomic():
            user = get_user_model().objects.create_user(
                username=self.identity_username(), first_name=f"Judge {self.name}"[:150], is_active=False
            )
            user.set_unusable_password()
            user.save(update_fields=["password"])
            self.user = user
            self.save()


class JudgeRun(Job):
    """A judge answering a set of a project's tasks, in a Celery worker (annotate/judges.py): progress, cancel, and
    what it answered, failed and skipped."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"

    class Scope(models.TextChoices):
        SAMPLE = "sample", "A random sample of the open and complete tasks"
        OPEN = "open", "Every open task"
        ROUND = "round", "A training round's new samples"

    judge = models.ForeignKey(Judge, on_delete=models.CASCADE, related_name="runs")
    scope = models.CharField(max_length=16, choices=Scope.choices, default=Scope.OPEN)
    limit = models.PositiveIntegerField(null=True, blank=True, help_text="At most this many tasks (a sample's size).")
    round_number = models.PositiveIntegerField(null=True, blank=True, help_text="For scope round: whose samples.")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    total = models.PositiveIntegerField(default=0, help_text="Tasks chosen.")
    answered = models.PositiveIntegerField(default=0)
    failed = models.PositiveIntegerField(default=0, help_text="Tasks whose answer did not parse after the retries.")
    skipped = models.PositiveIntegerField(default=0, help_text="Tasks the judge had answered or cannot answer.")
    failures = models.JSONField(default=list, blank=True, help_text="The first failures: task, reason, last answer.")
    cancel_requested = models.BooleanField(default=False)
    error = models.TextField(blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"Judge run {self.pk} of {self.judge.name}"

    def request_cancel(self) -> None:
        """Ask the worker to stop after the tasks in flight; a run that has not started is cancelled at once."""
        JudgeRun.objects.filter(pk=self.pk).update(cancel_requested=True)
        self.cancel_requested = True
        move(self, [self.Status.PENDING], status=self.Status.CANCELLED, finished_at=timezone.now())

    def cancel_is_requested(self) -> bool:
        return JudgeRun.objects.filter(pk=self.pk, cancel_requested=True).exists()


@receiver(post_delete, sender=Judge)
def _forget_deleted_judge(sender: type, instance: Judge, origin: Any = None, **kwargs: Any) -> None:
    # A judge deleted takes its answers with it (in the deleting transaction): its votes leave the data and the
    # measures, the tasks it routed go back to people, and its identity goes. With its project, all go anyway.
    if isinstance(origin, Project) or getattr(origin, "model", None) is Project:
        return
    answered = Task.objects.filter(annotations__annotator_id=instance.user_id).select_related("project").distinct()
    tasks = list(answered)
    Annotation.objects.filter(annotator_id=instance.user_id).delete()
    for task in tasks:
        task.routed = ""  # the judge's routing decision goes with its answer
        task.save(update_fields=["routed"])
        task.refresh_progress()
    get_user_model().objects.filter(pk=instance.user_id).delete()
