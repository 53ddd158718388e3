"""The "my work" pages: a member's recent answers, and changing one (Annotation.change keeps the one it replaces).

The change opens in the task page's own template (task.html, in its editing shape), showing the responses in the
order the annotator was shown them and filled with the answer as it stands, so the keys and the words are the ones
they answered with.
"""

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.core.paginator import Paginator
from django.db.models import Count, Max
from django.http import HttpRequest, HttpResponse, QueryDict
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django_htmx.http import HttpResponseClientRedirect

from annotate.access import get_project_for_user
from annotate.models import Annotation, AnswerLocked, LeaseError, MemberPaused, Project
from annotate.views import answer_form, error_messages

PAGE_SIZE = 25


def _get_own_annotation(request: HttpRequest, project_slug: str, annotation_id: int) -> Annotation:
    """The user's own answer, given on the task page, in a project they belong to; 404 for anyone else's."""
    project = get_project_for_user(request, project_slug)
    return get_object_or_404(
        Annotation.objects.select_related("task__prompt", "task__project", "assignment"),
        pk=annotation_id,
        task__project=project,
        annotator=request.user,
        source=Annotation.Source.HUMAN,
        assignment__isnull=False,
    )


def _paused(project: Project, user: object) -> str:
    return str(MemberPaused(project)) if project.memberships.filter(user=user, paused=True).exists() else ""


@login_required
def my_work(request: HttpRequest, project_slug: str) -> HttpResponse:
    project = get_project_for_user(request, project_slug)
    answers = (
        Annotation.objects.filter(task__project=project, annotator=request.user, source=Annotation.Source.HUMAN)
        .select_related("task__prompt", "task__project", "assignment", "written_response")
        .prefetch_related("task__task_responses")
        .annotate(changes=Count("revisions"), changed_at=Max("revisions__created_at"))
        .order_by("-id")
    )
    page = Paginator(answers, PAGE_SIZE).get_page(request.GET.get("page"))
    paused, now = _paused(project, request.user), timezone.now()
    rows = [
        {"annotation": annotation, "words": annotation.shown_summary(), "locked": annotation.locked_because(now)}
        for annotation in page
    ]
    context = {"project": project, "page": page, "rows": rows, "paused": paused}
    return render(request, "annotate/my_work.html", context)


@login_required
def change_answer(request: HttpRequest, project_slug: str, annotation_id: int) -> HttpResponse:
    """GET: the task as it was shown, filled with the answer as it stands; POST: the changed answer."""
    annotation = _get_own_annotation(request, project_slug, annotation_id)
    project, assignment = annotation.task.project, annotation.assignment
    assignment.task = annotation.task
    if request.method != "POST":
        if refused := _paused(project, request.user) or annotation.locked_because():
            messages.error(request, f"Task {annotation.task_id}: {refused}")
            return redirect("my_work", project_slug=project.slug)
        return _render_change(request, annotation, assignment.form_from_answer(annotation.answer()))
    try:
        changed = annotation.change(assignment.answer_from_shown(request.POST), user=request.user)
    except ValidationError as error:
        return _render_change(request, annotation, request.POST, errors=error_messages(error), status=400)
    except (AnswerLocked, LeaseError) as error:
        return _render_change(request, annotation, request.POST, problem=str(error), status=409)
    summary = annotation.shown_summary()
    if changed:
        messages.success(request, f"Task {annotation.task_id}: your answer is now {summary}.")
    else:
        messages.info(request, f"Task {annotation.task_id}: nothing changed, your answer is still {summary}.")
    if request.htmx:
        return HttpResponseClientRedirect(reverse("my_work", args=[project.slug]))
    return redirect("my_work", project_slug=project.slug)


def _render_change(
    request: HttpRequest,
    annotation: Annotation,
    data: QueryDict,
    *,
    errors: dict[str, list[str]] | None = None,
    problem: str = "",
    status: int = 200,
) -> HttpResponse:
    """The task page in its editing shape (or its #task region for htmx): the form posts the change here."""
    project, assignment = annotation.task.project, annotation.assignment
    context = {
        "project": project,
        "assignment": assignment,
        "editing": annotation,
        "problem": problem,
        "errors": [message for messages in (errors or {}).values() for message in messages],
        **answer_form(project, assignment, data),
        "submit_url": reverse("change_answer", args=[project.slug, annotation.pk]),
        "skip_url": "",
    }
    template = "annotate/task.html#task" if request.htmx else "annotate/task.html"
    return render(request, template, context, status=status)
