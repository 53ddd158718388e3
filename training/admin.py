"""Training rounds in the admin: "Add" is the launch form; rows are watched, cancelled and relaunched here."""

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.db.models import Q, QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html

from annotate.admin import DatasetFiltersForm, ProjectScopedAdmin
from annotate.models import Project, QuotaReached
from models_registry.models import ModelVersion
from training.engine.memory import size_text
from training.models import TrainingRound, Worker
from training.rounds import (
    BASE_HELP,
    STAGES,
    MemoryCheck,
    check_memory,
    launch_round,
    plan_round,
    relaunch,
    stage_configs,
)


class LaunchForm(DatasetFiltersForm):
    project = forms.ModelChoiceField(queryset=Project.objects.none())
    split = forms.ChoiceField(required=False, choices=[("train", "Train"), ("eval", "Eval")], initial="train")
    method = forms.ChoiceField(choices=TrainingRound.Method.choices)
    base = forms.CharField(required=False, help_text=BASE_HELP, widget=forms.TextInput(attrs={"class": "vTextField"}))
    reward_model = forms.CharField(
        required=False,
        help_text="PPO, RLOO, GRPO, best_of_n: score with this reward version (reward-v2) instead of training one.",
    )
    settings = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 6, "cols": 60, "placeholder": "max_steps=200\nppo.kl_coef=0.05"}),
        help_text="One key=value per line: for every stage that has the key, or stage.key=value for one stage.",
    )
    field_order = ["project", "method", "base", "reward_model", "settings"]
    # The page's three groups; the dataset filters are the fields of DatasetFiltersForm, whatever it grows.
    WHAT = ("project", "method", "base", "reward_model")
    SETTINGS = ("settings",)

    def groups(self) -> list[tuple[str, str, list[forms.BoundField]]]:
        """(heading, description, fields) for each part of the form, in the page's order."""
        data = [self[name] for name in self.fields if name not in self.WHAT + self.SETTINGS]
        return [
            ("What to train", "", [self[name] for name in self.WHAT]),
            ("Which annotations", "The dataset snapshot the round trains on: the same options as an export.", data),
            ("Stage settings", "", [self[name] for name in self.SETTINGS]),
        ]

    def __init__(self, *args: Any, projects: QuerySet, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["project"].queryset = projects
        self.fields["split"].help_text = "Rounds train on train prompts; eval prompts measure each new policy."

    def clean_settings(self) -> dict[str, str]:
        pairs = {}
        for number, line in enumerate(self.cleaned_data["settings"].splitlines(), start=1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            key, sep, value = line.partition("=")
            if not sep or not key.strip():
                raise ValidationError(f"Line {number}: expected key=value, got {line.strip()!r}.")
            pairs[key.strip()] = value.strip()
        return pairs


@admin.register(TrainingRound)
class TrainingRoundAdmin(ProjectScopedAdmin):
    project_path = "project"
    list_display = ["__str__", "status", "progress_shown", "stage", "snapshot", "created_by", "created_at", "page"]
    list_filter = ["status", "method", ("project", admin.RelatedOnlyFieldListFilter)]
    list_select_related = ["project", "snapshot", "created_by"]
    search_fields = ["project__slug", "project__name"]
    actions = ["cancel", "relaunch_rounds"]
    readonly_fields = [
        "project", "number", "method", "base_model", "base_version", "reward_version", "config", "filters",
        "snapshot", "status", "cancel_requested", "stage", "step", "total_steps", "progress", "error", "log_tail",
        "celery_task_id", "created_by", "created_at", "started_at", "heartbeat_at", "finished_at",
    ]  # fmt: skip

    @admin.display(description="Progress", ordering="progress")
    def progress_shown(self, training_round: TrainingRound) -> str:
        return f"{training_round.progress:.0%}"

    @admin.display(description="Live page")
    def page(self, training_round: TrainingRound) -> str:
        url = reverse("round_page", args=[training_round.project.slug, training_round.number])
        return format_html('<a href="{}">Watch</a>', url)

    def get_urls(self) -> list[URLPattern]:
        launch = path("launch/", self.admin_site.admin_view(self.launch_view), name="training_traininground_launch")
        return [launch, *super().get_urls()]

    def add_view(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        return HttpResponseRedirect(reverse("admin:training_traininground_launch") + _query(request))

    def launch_view(self, request: HttpRequest) -> HttpResponse:
        """Check a lead's round and queue it; a refused one names the field and queues nothing."""
        if not self.has_add_permission(request):
            raise PermissionDenied
        projects = Project.objects.led_by(request.user)
        initial = {"project": _preselected(request, projects)}
        form = LaunchForm(request.POST or None, initial=initial, projects=projects)
        memory = None
        if request.method == "POST" and form.is_valid():
            data = form.cleaned_data
            try:
                # The estimate shows on "Check memory" (nothing queued) and beside a refusal.
                plan = plan_round(data["project"], method=data["method"], base=data["base"],
                                  reward_model=data["reward_model"], settings_=data["settings"],
                                  votes=data["votes"] or "human")  # fmt: skip
                memory = check_memory(plan["config"], plan["reward_version"])
                if "check" in request.POST:
                    return self._launch_page(request, form, projects, memory)
                training_round = launch_round(
                    data["project"],
                    method=data["method"],
                    user=request.user,
                    base=data["base"],
                    reward_model=data["reward_model"],
                    settings_=data["settings"],
                    filters=form.filters(),
                )
            except ValidationError as error:
                for field, errors in error.message_dict.items():
                    form.add_error(field if field in form.fields else None, [f"{field}: {e}" for e in errors])
            except QuotaReached as error:
                form.add_error(None, str(error))
            else:
                url = reverse("round_page", args=[training_round.project.slug, training_round.number])
                shown = format_html('{} queued: <a href="{}">watch it live</a>.', training_round, url)
                messages.success(request, shown)
                return HttpResponseRedirect(url)
        return self._launch_page(request, form, projects, memory)

    def _launch_page(
        self, request: HttpRequest, form: LaunchForm, projects: QuerySet, memory: MemoryCheck | None
    ) -> TemplateResponse:
        context = {
            **self.admin_site.each_context(request),
            "title": "Launch a training round",
            "opts": self.opts,
            "form": form,
            "memory": memory,
            "largest_gpu": _gpu_text(Worker.objects.largest_gpu()),
            "stages": _stage_defaults(),
            "versions": ModelVersion.objects.filter(project__in=projects).select_related("project")[:50],
        }
        return TemplateResponse(request, "admin/training/traininground/launch.html", context)

    @admin.action(description="Cancel the selected rounds (running ones stop after their current step)")
    def cancel(self, request: HttpRequest, queryset: QuerySet) -> None:
        unfinished = [r for r in queryset if not r.is_finished]
        for training_round in unfinished:
            training_round.request_cancel()
        messages.success(request, f"Asked {len(unfinished)} round(s) to stop.")

    @admin.action(description="Relaunch the selected rounds as new rounds")
    def relaunch_rounds(self, request: HttpRequest, queryset: QuerySet) -> None:
        try:
            with transaction.atomic():  # all or nothing: a refused round rolls back (and unsends) the others
                new = [relaunch(training_round, user=request.user) for training_round in queryset]
        except ValidationError as error:
            messages.error(request, f"Nothing relaunched: {'; '.join(error.messages)}")
            return
        except QuotaReached as error:
            messages.error(request, f"Nothing relaunched: {error}")
            return
        messages.success(request, f"Queued {', '.join(str(r) for r in new)}.")


def _gpu_text(gpu: dict[str, Any] | None) -> str:
    return f"{gpu['name']}, {size_text(gpu['total_memory'])} ({gpu['hostname']})" if gpu else ""


def _preselected(request: HttpRequest, projects: QuerySet) -> Project | None:
    """The project the page was opened for (?project=<slug or id>), else the lead's only project."""
    if wanted := request.GET.get("project", ""):
        return projects.filter(Q(slug=wanted) | (Q(pk=wanted) if wanted.isdigit() else Q())).first()
    return projects.first() if len(projects[:2]) == 1 else None


def _query(request: HttpRequest) -> str:
    return f"?{request.GET.urlencode()}" if request.GET else ""


def _stage_defaults() -> list[dict[str, Any]]:
    """Each stage's settings and defaults, and the methods it belongs to, for the launch page."""
    defaults = []
    for stage, config_class in stage_configs().items():
        methods = [method for method, stages in STAGES.items() if stage in stages]
        settings = {k: v for k, v in config_class().to_dict().items() if k != "model_name_or_path"}
        defaults.append({"stage": stage, "methods": methods, "settings": settings})
    return defaults


@admin.register(Worker)
class WorkerAdmin(admin.ModelAdmin):
    """The gpu queue's workers and the GPUs they reported: read only, they write it themselves."""

    list_display = ["hostname", "gpus", "queues", "last_seen"]

    @admin.display(description="GPUs")
    def gpus(self, worker: Worker) -> str:
        return ", ".join(f"{gpu['name']} ({size_text(gpu['total_memory'])})" for gpu in worker.devices) or "none"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Worker | None = None) -> bool:
        return False
