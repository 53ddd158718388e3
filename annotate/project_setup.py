"""Setting up a project without the admin: the lead's settings page (/p/<slug>/settings/) with its live previews, and
any task seen as annotators see it (/p/<slug>/tasks/<id>/preview/), read only and without a lease."""

import hashlib
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.db import transaction
from django.db.models import Min
from django.http import HttpRequest, HttpResponse, QueryDict
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from annotate.access import get_project_led_by_user
from annotate.forms import ProjectSettingsForm
from annotate.models import Assignment, Project, TaskKind
from annotate.views import answer_form


@login_required
def project_settings(request: HttpRequest, project_slug: str) -> HttpResponse:
    """The settings; a POST saves them all or none, and asks first when they would change work under way."""
    project = get_project_led_by_user(request, project_slug)
    if request.method != "POST":
        return _render_settings(request, project, ProjectSettingsForm(instance=project))
    with transaction.atomic():
        # One save at a time, and the checks against the work done (Project.clean) read what is saved.
        project.lock()
        form = ProjectSettingsForm(request.POST, instance=project)
        if not form.is_valid():
            return _render_settings(request, project, form, status=400)
        changes = form.instance.changes_to_confirm()
        # The lead confirms these changes, not whatever the form holds by the time they tick the box.
        if changes and request.POST.get("confirm") != _digest(changes):
            return _render_settings(request, project, form, changes=changes, status=409)
        # Only the form's columns: a whole-row save would write back task counters that submits move meanwhile.
        form.instance.save(update_fields=form.saved_fields())
    messages.success(request, "Settings saved: annotators get them with their next task.")
    return redirect("project_settings", project_slug=project.slug)


@require_POST
@login_required
def guidelines_preview(request: HttpRequest, project_slug: str) -> HttpResponse:
    """The draft guidelines as annotators will see them: the guidelines page's own partial, for htmx."""
    get_project_led_by_user(request, project_slug)
    return render(request, "annotate/guidelines.html#text", {"guidelines": request.POST.get("guidelines", "")})


@require_POST
@login_required
def scale_points(request: HttpRequest, project_slug: str) -> HttpResponse:
    """The description of each point of the scale as typed, for htmx: a point per row as the bounds change."""
    project = get_project_led_by_user(request, project_slug)
    form = ProjectSettingsForm(request.POST, instance=project)
    return render(request, "annotate/project_settings.html#scale-points", {"form": form, "project": project})


@login_required
def task_preview(request: HttpRequest, project_slug: str, task_id: int) -> HttpResponse:
    """A task on the annotation page's own template, its controls disabled; no lease is taken, nothing is written."""
    project = get_project_led_by_user(request, project_slug)
    task = get_object_or_404(project.tasks.select_related("prompt"), pk=task_id)
    # Never saved: the lease the page's form is built from, its responses in the task's order. Its pk only lets the
    # form's URLs be made; the preview shows none of them (its form has no action).
    assignment = Assignment(pk=0, task=task, annotator=request.user, shown_order=task.response_ids())
    tasks = project.tasks.order_by("id").values_list("id", flat=True)
    context = {
        "project": project,
        "assignment": assignment,
        "preview": True,
        "kind_enabled": task.kind in project.task_kinds,
        "previous_task": tasks.filter(id__lt=task.pk).order_by("-id").first(),
        "next_task": tasks.filter(id__gt=task.pk).first(),
        "errors": [],
        "session_done": 0,
        "session_total": 1,
        **answer_form(project, assignment, QueryDict()),
    }
    return render(request, "annotate/task.html", context)


def _render_settings(
    request: HttpRequest,
    project: Project,
    form: ProjectSettingsForm,
    *,
    changes: list[str] | None = None,
    status: int = 200,
) -> HttpResponse:
    first_tasks = dict(project.tasks.order_by().values_list("kind").annotate(first=Min("id")))
    context: dict[str, Any] = {
        "project": project,
        "form": form,
        "changes": changes or [],
        "confirm": _digest(changes) if changes else "",
        "preview_links": [(label, first_tasks[kind]) for kind, label in TaskKind.choices if kind in first_tasks],
    }
    return render(request, "annotate/project_settings.html", context, status=status)


def _digest(changes: list[str]) -> str:
    return hashlib.sha256("\n".join(changes).encode()).hexdigest()[:16]
