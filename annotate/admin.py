"""The Django admin for the annotation domain, scoped so that a lead sees and edits only the projects they lead.

Leads are staff without superuser: every ModelAdmin here filters its rows, and the choices of its foreign keys,
through the row's path to its project. Superusers see everything.
"""

from collections.abc import Callable
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import ForeignKey, Model, OuterRef, Prefetch, QuerySet, Subquery, URLField
from django.http import FileResponse, HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html
from django.utils.text import Truncator

from annotate import judges
from annotate.exports import EXPORT_OPTIONS, Aggregation, Votes, queue_export
from annotate.import_jobs import import_upload
from annotate.importing import ImportFailed
from annotate.leads import LEAD_PERMISSIONS, LEADS_GROUP, project_leads_group  # noqa: F401 (imported from here)
from annotate.models import (
    Annotation,
    AnnotationRevision,
    Assignment,
    DatasetSnapshot,
    GoldRefused,
    ImportJob,
    Judge,
    JudgeRun,
    Membership,
    Project,
    Prompt,
    QuotaReached,
    Response,
    Task,
    TaskResponse,
    count_of,
    make_lead,
)

admin.site.site_header = "Arbiter administration"
admin.site.site_title = "Arbiter admin"


def scope_to_led_projects(queryset: QuerySet, user: Any, project_path: str) -> QuerySet:
    """The rows of `queryset` whose project (reached through `project_path`) the user leads."""
    if user.is_superuser:
        return queryset
    return queryset.filter(**{f"{project_path}__in": Project.objects.led_by(user)})


class ScopedChoicesMixin:
    """Limit foreign-key choices to rows of the user's led projects, so a lead cannot point a row elsewhere."""

    def formfield_for_foreignkey(
        self, db_field: ForeignKey, request: HttpRequest, **kwargs: Any
    ) -> forms.ModelChoiceField | None:
        if "queryset" not in kwargs and not request.user.is_superuser:
            queryset = self._scoped_choices(db_field.related_model, request)
            if queryset is not None:
                kwargs["queryset"] = queryset
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def _scoped_choices(self, model: type[Model], request: HttpRequest) -> QuerySet | None:
        if model is get_user_model():
            # Users have no project path: a lead picks among the members of the projects they lead, also to add
            # someone to a project, so no lead sees every account on the server; others come in by invitation.
            users = model._default_manager.filter(is_active=True).order_by("username")
            return users.filter(memberships__project__in=Project.objects.led_by(request.user)).distinct()
        if not self.admin_site.is_registered(model):
            return None
        related_admin = self.admin_site.get_model_admin(model)
        if isinstance(related_admin, ProjectScopedAdmin):
            return scope_to_led_projects(model._default_manager.all(), request.user, related_admin.project_path)
        return None


class ProjectScopedAdmin(ScopedChoicesMixin, admin.ModelAdmin):
    """A ModelAdmin whose rows a lead sees only for the projects they lead."""

    project_path: str  # the lookup from this model to its Project, e.g. "prompt__project"

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return scope_to_led_projects(super().get_queryset(request), request.user, self.project_path)


def _related_only(field_path: str) -> tuple[str, type[admin.RelatedOnlyFieldListFilter]]:
    # The default related filter lists every row of the related table: projects a lead does not lead, by name.
    return (field_path, admin.RelatedOnlyFieldListFilter)


class MembershipInline(ScopedChoicesMixin, admin.TabularInline):
    model = Membership
    extra = 1
    fields = ["user", "role", "created_at"]
    readonly_fields = ["created_at"]


class ImportForm(forms.Form):
    file = forms.FileField(help_text="JSONL or CSV, UTF-8, optionally gzipped.")
    format = forms.ChoiceField(
        required=False,
        choices=[
            ("", "Detect from the file"),
            ("prompts", "Prompts"),
            ("responses", "Prompts with responses"),
            ("preferences", "Preference pairs (TRL standard or conversational, HH-RLHF)"),
            ("demonstrations", "Demonstrations (TRL SFT: messages ending in the reply, or prompt + completion)"),
        ],
    )


class DatasetFiltersForm(forms.Form):
    """Which annotations a dataset is made of: the export options an export and a training round share."""

    split = forms.ChoiceField(required=False, choices=[("", "All"), *Prompt.Split.choices])
    round = forms.IntegerField(required=False, min_value=0)
    since = forms.DateTimeField(required=False)
    until = forms.DateTimeField(required=False)
    annotator = forms.CharField(required=False)
    min_agreement = forms.FloatField(required=False, min_value=0, max_value=1)
    # Blank is the default (human, majority): a round that only samples takes no filters, and these always have a
    # value.
    votes = forms.ChoiceField(required=False, choices=[("", f"{Votes.HUMAN.label} (default)"), *Votes.choices[1:]])
    aggregation = forms.ChoiceField(
        required=False, choices=[("", f"{Aggregation.MAJORITY.label} (default)"), *Aggregation.choices[1:]]
    )
    include_ties = forms.BooleanField(required=False)
    include_both_bad = forms.BooleanField(required=False)
    ratings_as_pairs = forms.BooleanField(required=False)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for name in self.fields.keys() & EXPORT_OPTIONS.keys():
            option = EXPORT_OPTIONS[name]
            kinds = "" if len(option.kinds) == len(DatasetSnapshot.Kind) else f" ({', '.join(option.kinds)} only)"
            self.fields[name].help_text = option.help + kinds

    def filters(self) -> dict[str, Any]:
        return {name: value for name, value in self.cleaned_data.items() if name in EXPORT_OPTIONS}


class ExportForm(DatasetFiltersForm):
    kind = forms.ChoiceField(choices=DatasetSnapshot.Kind.choices)
    format = forms.ChoiceField(choices=DatasetSnapshot.Format.choices)
    style = forms.ChoiceField(choices=DatasetSnapshot.Style.choices)
    reveal_annotators = forms.BooleanField(required=False)
    field_order = ["kind", "format", "style"]


@admin.register(Project)
class ProjectAdmin(ProjectScopedAdmin):
    project_path = "pk"
    list_display = ["name", "slug", "prompt_count", "open_tasks", "complete_tasks", "overlap", "created_at"]
    search_fields = ["name", "slug"]
    prepopulated_fields = {"slug": ["name"]}
    readonly_fields = ["created_at"]
    inlines = [MembershipInline]
    actions = ["export_dataset", "launch_training_round"]
    fieldsets = [
        (None, {"fields": ["name", "slug", "guidelines", "created_at"]}),
        ("Tasks", {"fields": ["task_kinds", "overlap", "fill", "text_format", "lease_length", "max_open_leases"]}),
        ("Gold tasks", {"fields": ["gold_rate"]}),
        ("Changing answers", {"fields": ["edit_window_minutes"]}),
        ("Rating scale", {"fields": ["rating_min", "rating_max", "rating_descriptions", "labels"]}),
        (
            "New samples after each policy round",
            {"fields": ["samples_per_prompt", "sample_prompts", "pair_selection", "sample_rating_tasks"]},
        ),
    ]

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return super().get_queryset(request).with_counts()

    def save_related(self, request: HttpRequest, form: forms.ModelForm, formsets: Any, change: bool) -> None:
        super().save_related(request, form, formsets, change)
        if not change and not request.user.is_superuser:
            # A lead leads the project they made (after the inline, which may have named them already), or it
            # would vanish from their list.
            make_lead(form.instance, request.user)

    @admin.display(description="Prompts", ordering="prompt_count")
    def prompt_count(self, project: Project) -> int:
        return project.prompt_count

    @admin.display(description="Open tasks", ordering="open_tasks")
    def open_tasks(self, project: Project) -> int:
        return project.open_tasks

    @admin.display(description="Complete tasks", ordering="complete_tasks")
    def complete_tasks(self, project: Project) -> int:
        return project.complete_tasks

    def view_on_site(self, project: Project) -> str:
        return reverse("project_detail", args=[project.slug])

    def get_urls(self) -> list[URLPattern]:
        # Ahead of the defaults: their catch-all "<path:object_id>/" would swallow "<id>/import/".
        return [
            path(
                "<int:object_id>/import/",
                self.admin_site.admin_view(self.import_view),
                name="annotate_project_import",
            ),
            path(
                "<int:object_id>/export/",
                self.admin_site.admin_view(self.export_view),
                name="annotate_project_export",
            ),
            *super().get_urls(),
        ]

    def import_view(self, request: HttpRequest, object_id: int) -> HttpResponse:
        """Import an uploaded file into the project: all of it, or nothing and the offending line is named. A big
        file is imported by a worker: the page goes to its import job."""
        project = self._led_project(request, object_id)
        form = ImportForm(request.POST or None, request.FILES or None)
        if request.method == "POST" and form.is_valid():
            data = form.cleaned_data
            try:
                outcome = import_upload(project, data["file"], format=data["format"] or None, user=request.user)
            except ImportFailed as error:
                messages.error(request, f"Nothing was imported: {error}")
            else:
                if isinstance(outcome, ImportJob):
                    shown = "The file is big: a worker imports it, all or nothing. Reload this page to follow it."
                    messages.success(request, shown)
                    return HttpResponseRedirect(reverse("admin:annotate_importjob_change", args=[outcome.pk]))
                messages.success(request, f"Imported into {project}: {outcome}")
                return HttpResponseRedirect(reverse("admin:annotate_project_change", args=[project.pk]))
        return self._form_page(request, project, form, f"Import data into {project}", "import.html")

    @admin.action(description="Export dataset")
    def export_dataset(self, request: HttpRequest, queryset: QuerySet) -> HttpResponse | None:
        return _to_one_project(
            request, queryset, "export", lambda pk: reverse("admin:annotate_project_export", args=[pk])
        )

    @admin.action(description="Launch training round")
    def launch_training_round(self, request: HttpRequest, queryset: QuerySet) -> HttpResponse | None:
        launch = reverse("admin:training_traininground_launch")
        return _to_one_project(request, queryset, "train on", lambda pk: f"{launch}?project={pk}")

    def export_view(self, request: HttpRequest, object_id: int) -> HttpResponse:
        """Start an export of the project as a dataset snapshot; a Celery worker writes it."""
        project = self._led_project(request, object_id)
        form = ExportForm(request.POST or None)
        if request.method == "POST" and form.is_valid():
            data = form.cleaned_data
            try:
                snapshot = queue_export(
                    project,
                    kind=data["kind"],
                    format=data["format"],
                    style=data["style"],
                    filters=form.filters(),
                    user=request.user,
                )
            except ValidationError as error:
                form.add_error(None, error)
            except QuotaReached as error:
                form.add_error(None, str(error))
            else:
                link = reverse("admin:annotate_datasetsnapshot_change", args=[snapshot.pk])
                messages.success(
                    request, format_html('Export started: <a href="{}">{}</a> shows its progress.', link, snapshot)
                )
                return HttpResponseRedirect(reverse("admin:annotate_project_change", args=[project.pk]))
        return self._form_page(request, project, form, f"Export a dataset from {project}", "export.html")

    def _led_project(self, request: HttpRequest, object_id: int) -> Project:
        project = get_object_or_404(Project.objects.led_by(request.user), pk=object_id)
        if not self.has_change_permission(request, project):
            raise PermissionDenied
        return project

    def _form_page(
        self, request: HttpRequest, project: Project, form: forms.Form, title: str, template: str
    ) -> HttpResponse:
        context = {**self.admin_site.each_context(request), "title": title, "opts": self.opts, "original": project}
        return TemplateResponse(request, f"admin/annotate/project/{template}", {**context, "form": form})


def _to_one_project(
    request: HttpRequest, queryset: QuerySet, doing: str, url_for: Callable[[int], str]
) -> HttpResponse | None:
    """An action on one project: to its page, or a warning when the selection is not one project."""
    if queryset.count() != 1:
        messages.warning(request, f"Select one project to {doing}.")
        return None
    return HttpResponseRedirect(url_for(queryset.get().pk))


@admin.register(Membership)
class MembershipAdmin(ProjectScopedAdmin):
    project_path = "project"
    list_display = ["user", "project", "role", "created_at"]
    list_filter = ["role", _related_only("project")]
    search_fields = ["user__username", "user__email", "project__name", "project__slug"]
    list_select_related = ["user", "project"]
    readonly_fields = ["created_at"]


class ResponseInline(ScopedChoicesMixin, admin.StackedInline):
    model = Response
    extra = 0
    fields = ["content", "source", "model_version", "generation_params", "created_at"]
    readonly_fields = ["created_at"]
    show_change_link = True


@admin.register(Prompt)
class PromptAdmin(ProjectScopedAdmin):
    project_path = "project"
    list_display = ["external_id", "project", "text", "split", "response_count", "created_at"]
    list_filter = ["split", _related_only("project")]
    search_fields = ["external_id", "messages"]
    list_select_related = ["project"]
    readonly_fields = ["created_at"]
    inlines = [ResponseInline]

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return super().get_queryset(request).annotate(response_count=count_of(Response, "prompt"))

    @admin.display(description="Last user message")
    def text(self, prompt: Prompt) -> str:
        return Truncator(prompt.last_user_message).chars(80)

    @admin.display(description="Responses", ordering="response_count")
    def response_count(self, prompt: Prompt) -> int:
        return prompt.response_count


@admin.register(Response)
class ResponseAdmin(ProjectScopedAdmin):
    project_path = "prompt__project"
    list_display = ["__str__", "prompt", "project", "source", "author", "model_version", "text", "created_at"]
    list_filter = ["source", _related_only("prompt__project")]
    search_fields = ["content", "prompt__external_id"]
    list_select_related = ["prompt__project", "model_version__project", "author"]
    autocomplete_fields = ["prompt"]
    raw_id_fields = ["author"]
    readonly_fields = ["created_at"]

    @admin.display(description="Project", ordering="prompt__project__name")
    def project(self, response: Response) -> Project:
        return response.prompt.project

    @admin.display(description="Content")
    def text(self, response: Response) -> str:
        return Truncator(response.content).chars(80)


class TaskResponseInline(ScopedChoicesMixin, admin.TabularInline):
    model = TaskResponse
    extra = 0
    fields = ["position", "response"]
    autocomplete_fields = ["response"]


class AnnotationInline(admin.TabularInline):
    """Read-only: answers are given on the task page or imported, and checked there."""

    model = Annotation
    extra = 0
    fields = ["annotator", "source", "answer", "created_at"]
    readonly_fields = fields
    show_change_link = True
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: Task | None = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Task | None = None) -> bool:
        return False

    @admin.display(description="Answer")
    def answer(self, annotation: Annotation) -> str:
        return annotation.summary()

    # An edit here bypasses the queue, so recount: a task's count and status must match its annotations.
    def save_model(self, request: HttpRequest, obj: Annotation, form: forms.ModelForm, change: bool) -> None:
        super().save_model(request, obj, form, change)
        obj.task.refresh_progress()

    def delete_model(self, request: HttpRequest, obj: Annotation) -> None:
        super().delete_model(request, obj)
        obj.task.refresh_progress()

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet) -> None:
        tasks = list(Task.objects.filter(annotations__in=queryset).distinct())
        super().delete_queryset(request, queryset)
        for task in tasks:
            task.refresh_progress()


class TaskForm(forms.ModelForm):
    class Meta:
        model = Task
        fields = ["project", "prompt", "kind", "required_annotations", "priority", "round_number"]
        help_texts = {
            "status": "Follows the annotations: complete at the required count, gold while it has a gold answer. "
            "Change that count to close or reopen the task; delete its gold answer to return a gold task to the data.",
        }


@admin.register(Task)
class TaskAdmin(ProjectScopedAdmin):
    project_path = "project"
    list_display = ["__str__", "kind", "project", "prompt", "status", "annotations", "priority", "round_number"]
    list_filter = ["status", "kind", "round_number", _related_only("project")]
    search_fields = ["=id", "prompt__external_id", "project__name"]
    list_select_related = ["project", "prompt"]
    autocomplete_fields = ["prompt"]
    form = TaskForm
    fields = ["project", "prompt", "kind", "required_annotations", "annotation_count", "status", "priority"]
    fields += ["round_number", "created_at"]
    # The status follows the annotations and the required count (Task.refresh_progress): to close a task, lower
    # its required count, or delete it; to reopen one, raise it.
    readonly_fields = ["status", "annotation_count", "created_at"]
    inlines = [TaskResponseInline, AnnotationInline]
    actions = ["make_gold"]

    @admin.action(description="Make gold from the majority answer", permissions=["change"])
    def make_gold(self, request: HttpRequest, queryset: QuerySet) -> None:
        """Freeze each complete task's majority answer as gold (Task.make_gold); say which could not be, and why."""
        made, refused = 0, []
        for task in queryset.order_by("pk"):
            try:
                task.make_gold()
            except GoldRefused as error:
                refused.append(str(error))
            else:
                made += 1
        if made:
            tasks = f"{made} task{'s' if made != 1 else ''}"
            messages.success(
                request, f"{tasks} made gold: served as gold from now on, and out of the data and progress."
            )
        for reason in refused:
            messages.warning(request, f"Not made gold: {reason}")

    def get_readonly_fields(self, request: HttpRequest, obj: Task | None = None) -> list[str]:
        # A task stays in its project: the counters of both, and its prompt and responses, belong to it.
        return [*self.readonly_fields, "project"] if obj is not None else self.readonly_fields

    def save_model(self, request: HttpRequest, obj: Task, form: forms.ModelForm, change: bool) -> None:
        super().save_model(request, obj, form, change)
        if change and "required_annotations" in form.changed_data:
            obj.refresh_progress()

    @admin.display(description="Annotations", ordering="annotation_count")
    def annotations(self, task: Task) -> str:
        return f"{task.annotation_count}/{task.required_annotations}"


@admin.register(TaskResponse)
class TaskResponseAdmin(ProjectScopedAdmin):
    project_path = "task__project"
    list_display = ["__str__", "task", "position", "response"]
    list_filter = [_related_only("task__project")]
    search_fields = ["=task__id", "=response__id"]
    list_select_related = ["task", "response"]
    autocomplete_fields = ["task", "response"]


@admin.register(Assignment)
class AssignmentAdmin(ProjectScopedAdmin):
    project_path = "task__project"
    list_display = ["__str__", "task", "annotator", "leased_at", "expires_at", "submitted_at"]
    list_filter = [_related_only("task__project"), _related_only("annotator")]
    search_fields = ["=task__id", "annotator__username"]
    list_select_related = ["task", "annotator"]
    autocomplete_fields = ["task"]
    date_hierarchy = "leased_at"


class AnnotationRevisionInline(admin.TabularInline):
    """Read-only: the answers its annotator replaced from the "my work" page (Annotation.change), oldest first."""

    model = AnnotationRevision
    extra = 0
    fields = ["answer", "by", "created_at"]
    readonly_fields = fields
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: Annotation | None = None) -> bool:
        return False


@admin.register(Annotation)
class AnnotationAdmin(ProjectScopedAdmin):
    project_path = "task__project"
    inlines = [AnnotationRevisionInline]
    list_display = ["__str__", "task", "annotator", "source", "answer", "created_at"]
    list_filter = ["source", "task__kind", _related_only("task__project"), _related_only("annotator")]
    search_fields = ["=task__id", "task__prompt__external_id", "annotator__username", "comment"]
    list_select_related = ["task", "annotator", "written_response"]
    autocomplete_fields = ["task"]
    raw_id_fields = ["assignment", "written_response"]
    readonly_fields = ["created_at"]

    @admin.display(description="Answer")
    def answer(self, annotation: Annotation) -> str:
        return annotation.summary()

    # An edit here bypasses the queue, so recount: a task's count and status must match its annotations.
    def save_model(self, request: HttpRequest, obj: Annotation, form: forms.ModelForm, change: bool) -> None:
        super().save_model(request, obj, form, change)
        obj.task.refresh_progress()

    def delete_model(self, request: HttpRequest, obj: Annotation) -> None:
        super().delete_model(request, obj)
        obj.task.refresh_progress()

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet) -> None:
        tasks = list(Task.objects.filter(annotations__in=queryset).distinct())
        super().delete_queryset(request, queryset)
        for task in tasks:
            task.refresh_progress()


@admin.register(DatasetSnapshot)
class DatasetSnapshotAdmin(ProjectScopedAdmin):
    """Read-only: a snapshot is made by an export and never changes, so training can point at it."""

    project_path = "project"
    list_display = ["__str__", "project", "kind", "format", "rows", "sha256", "status", "created_by", "created_at"]
    list_display += ["download"]
    list_filter = ["status", "kind", "format", _related_only("project")]
    list_select_related = ["project", "created_by"]
    exclude = ["file"]  # shown as a /media/ link, which is not served: "download" is the file's one link
    readonly_fields = ["download"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: DatasetSnapshot | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: DatasetSnapshot | None = None) -> bool:
        return False

    @admin.display(description="Rows")
    def rows(self, snapshot: DatasetSnapshot) -> str:
        if snapshot.status == DatasetSnapshot.Status.READY:
            return f"{snapshot.row_count:,}"
        return f"{snapshot.rows_written:,} so far" if snapshot.status == DatasetSnapshot.Status.RUNNING else "–"

    @admin.display(description="File")
    def download(self, snapshot: DatasetSnapshot) -> str:
        if snapshot.status != DatasetSnapshot.Status.READY:
            return snapshot.error or "–"
        url = reverse("admin:annotate_datasetsnapshot_download", args=[snapshot.pk])
        return format_html('<a href="{}">Download</a>', url)

    def get_urls(self) -> list[URLPattern]:
        return [
            path(
                "<int:object_id>/download/",
                self.admin_site.admin_view(self.download_view),
                name="annotate_datasetsnapshot_download",
            ),
            *super().get_urls(),
        ]

    def download_view(self, request: HttpRequest, object_id: int) -> FileResponse:
        """The snapshot's file: media files are not served publicly, so it goes through the admin's scoping."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        snapshot = get_object_or_404(self.get_queryset(request), pk=object_id, status=DatasetSnapshot.Status.READY)
        return FileResponse(snapshot.file.open("rb"), as_attachment=True, filename=snapshot.file.name.split("/")[-1])


@admin.register(ImportJob)
class ImportJobAdmin(ProjectScopedAdmin):
    """Read-only: a job is made by a big upload on a project's Import data page, and a worker runs it."""

    project_path = "project"
    list_display = ["__str__", "project", "status", "rows", "error", "created_by", "created_at", "finished_at"]
    list_filter = ["status", _related_only("project")]
    list_select_related = ["project", "created_by"]
    fields = ["project", "file_name", "format", "status", "rows", "result", "error", "error_line", "error_field"]
    fields += ["created_by", "created_at", "started_at", "heartbeat_at", "finished_at"]
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: ImportJob | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: ImportJob | None = None) -> bool:
        return False

    @admin.display(description="Rows")
    def rows(self, job: ImportJob) -> str:
        if job.status == ImportJob.Status.SUCCEEDED:
            return f"{job.rows_read:,} imported"
        return f"{job.rows_read:,} read so far" if job.status == ImportJob.Status.RUNNING else "–"


class JudgeRunInline(admin.TabularInline):
    """A judge's latest runs, on its page (the Judge runs list has them all, and the cancel action)."""

    model = JudgeRun
    fields = ["__str__", "scope", "status", "progress", "answered", "failed", "skipped", "created_at"]
    readonly_fields = fields
    ordering = ["-created_at"]
    extra = 0
    max_num = 0  # read-only: runs are started by the action, the API or run_judge
    show_change_link = True
    can_delete = False

    @admin.display(description="Progress")
    def progress(self, run: JudgeRun) -> str:
        return _run_progress(run)


@admin.register(Judge)
class JudgeAdmin(ProjectScopedAdmin):
    """A judge is added here with its identity (Judge.create's); its configuration is what it is, so only its rate
    settings change afterwards: a judge configured otherwise is another judge."""

    project_path = "project"
    list_display = ["name", "project", "kind", "configuration", "username", "latest_run", "created_at"]
    list_filter = ["kind", _related_only("project")]
    list_select_related = ["project", "model_version", "user"]
    search_fields = ["name", "project__slug"]
    fields = ["project", "name", "kind", "model_version", "endpoint", "model_name", "api_key_env", "rubric"]
    fields += ["concurrency", "requests_per_minute", "max_retries", "username", "created_by", "created_at"]
    inlines = [JudgeRunInline]
    actions = ["run_over_open_tasks"]
    formfield_overrides = {URLField: {"assume_scheme": "https"}}  # Django 6's default, without its warning

    def get_readonly_fields(self, request: HttpRequest, obj: Judge | None = None) -> list[str]:
        if obj is None:
            return ["username", "created_by", "created_at"]
        return [name for name in self.fields if name not in ("concurrency", "requests_per_minute")]

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        # Each judge's latest run, for the list, in one query (not one per row).
        latest = JudgeRun.objects.filter(judge=OuterRef("judge")).order_by("-created_at").values("pk")[:1]
        runs = JudgeRun.objects.filter(pk=Subquery(latest))
        return super().get_queryset(request).prefetch_related(Prefetch("runs", queryset=runs, to_attr="latest_runs"))

    def save_model(self, request: HttpRequest, obj: Judge, form: forms.ModelForm, change: bool) -> None:
        if change:
            super().save_model(request, obj, form, change)
            return
        obj.created_by = request.user
        obj.save_with_identity()  # the form validated it (Judge.clean and its constraints)

    @admin.display(description="Model or endpoint")
    def configuration(self, judge: Judge) -> str:
        return str(judge.model_version) if judge.model_version_id else f"{judge.model_name} at {judge.endpoint}"

    @admin.display(description="Answers as")
    def username(self, judge: Judge) -> str:
        return judge.user.username if judge.user_id else "–"

    @admin.display(description="Latest run")
    def latest_run(self, judge: Judge) -> str:
        run = next(iter(judge.latest_runs), None)
        return f"{run.get_status_display()}, {_run_progress(run)}" if run else "–"

    @admin.action(description="Run the selected judges over their open tasks", permissions=["change"])
    def run_over_open_tasks(self, request: HttpRequest, queryset: QuerySet) -> None:
        started = [judges.start(judge, created_by=request.user) for judge in queryset]
        url = reverse("admin:annotate_judgerun_changelist")
        messages.success(request, format_html('Queued {} run(s): <a href="{}">follow them</a>.', len(started), url))


@admin.register(JudgeRun)
class JudgeRunAdmin(ProjectScopedAdmin):
    """Read-only: a run is started by the judges' action, the API or run_judge, and a worker runs it."""

    project_path = "judge__project"
    list_display = ["__str__", "judge", "scope", "status", "progress", "answered", "failed", "skipped"]
    list_display += ["created_by", "created_at", "finished_at"]
    list_filter = ["status", "scope", _related_only("judge__project")]
    list_select_related = ["judge", "created_by"]
    fields = ["judge", "scope", "limit", "round_number", "status", "progress", "total", "answered", "failed"]
    fields += ["skipped", "failures", "cancel_requested", "error", "created_by", "created_at", "started_at"]
    fields += ["heartbeat_at", "finished_at"]
    readonly_fields = fields
    actions = ["cancel"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: JudgeRun | None = None) -> bool:
        return False

    @admin.display(description="Progress")
    def progress(self, run: JudgeRun) -> str:
        return _run_progress(run)

    @admin.action(
        description="Cancel the selected runs (running ones stop after the tasks in flight)", permissions=["change"]
    )
    def cancel(self, request: HttpRequest, queryset: QuerySet) -> None:
        unfinished = queryset.filter(status__in=[JudgeRun.Status.PENDING, JudgeRun.Status.RUNNING])
        for run in unfinished:
            run.request_cancel()
        messages.success(request, f"Asked {len(unfinished)} run(s) to stop.")


def _run_progress(run: JudgeRun) -> str:
    done = run.answered + run.failed + run.skipped
    return f"{done:,} of {run.total:,}" if run.total else "–"
