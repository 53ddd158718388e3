"""Pages for annotators and leads: plain function views, one access helper, one model call each."""

import time
from dataclasses import asdict
from typing import Any

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse, QueryDict
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_POST

from annotate.access import get_project_for_user, get_project_led_by_user
from annotate.answers import PREFERENCES
from annotate.forms import DecisionForm, ThresholdsForm
from annotate.models import (
    REMAINING_CAP,
    ApiToken,
    Assignment,
    LeaseError,
    MemberPaused,
    Membership,
    MembershipEvent,
    Project,
    Task,
    TaskKind,
    TextFormat,
)
from annotate.quality_reports import quality_for, request_quality
from annotate.suggestions import following
from annotate.templatetags.arbiter_markdown import formats

REMAINING_RECOUNT_SECONDS = 60


def _get_assignment_for_user(request: HttpRequest, project_slug: str, assignment_id: int) -> Assignment:
    """The user's own lease in a project they belong to; 404 for anyone else's, so lease ids cannot be probed."""
    project = get_project_for_user(request, project_slug)
    return get_object_or_404(
        Assignment.objects.select_related("task__prompt", "task__project"),
        pk=assignment_id,
        task__project=project,
        annotator=request.user,
    )


def lockout_message() -> str:
    """What a locked-out login is told, on the pages and in the API."""
    minutes = round(settings.AXES_COOLOFF_TIME.total_seconds() / 60)
    return (
        f"Too many failed logins for this account or from this address ({settings.AXES_FAILURE_LIMIT} in a row): "
        f"logging in is locked for {minutes} minute{'s' if minutes != 1 else ''} after the last one."
    )


def locked_out(request: HttpRequest, response: HttpResponse | None = None, credentials: Any = None) -> HttpResponse:
    """django-axes' answer to a login it refused (AXES_LOCKOUT_CALLABLE): a page saying so, 429."""
    page = render(request, "registration/locked_out.html", {"message": lockout_message()}, status=429)
    page["Retry-After"] = str(int(settings.AXES_COOLOFF_TIME.total_seconds()))
    return page


@login_required
def home(request: HttpRequest) -> HttpResponse:
    roles = dict(Membership.objects.filter(user=request.user).values_list("project_id", "role"))
    rows = [
        (project, "lead" if request.user.is_superuser else roles.get(project.pk), project.progress_for(request.user))
        for project in Project.objects.for_user(request.user)
    ]
    return render(request, "annotate/home.html", {"rows": rows, "remaining_cap": REMAINING_CAP})


@login_required
def project_detail(request: HttpRequest, project_slug: str) -> HttpResponse:
    project = get_project_for_user(request, project_slug)
    return render(
        request,
        "annotate/project_detail.html",
        {
            "project": project,
            "role": project.role_of(request.user),
            "progress": project.progress_for(request.user),
            "remaining_cap": REMAINING_CAP,
            "paused": str(MemberPaused(project)) if project.memberships.filter(user=request.user, paused=True) else "",
        },
    )


@login_required
def guidelines(request: HttpRequest, project_slug: str) -> HttpResponse:
    project = get_project_for_user(request, project_slug)
    return render(request, "annotate/guidelines.html", {"project": project})


@login_required
def task_page(request: HttpRequest, project_slug: str) -> HttpResponse:
    project = get_project_for_user(request, project_slug)
    return _render_next(request, project)


@require_POST
@login_required
def submit_assignment(request: HttpRequest, project_slug: str, assignment_id: int) -> HttpResponse:
    assignment = _get_assignment_for_user(request, project_slug, assignment_id)
    project = assignment.task.project
    # Submitting twice returns the first annotation; only the first counts towards the session.
    first_submission = assignment.status != Assignment.Status.SUBMITTED
    try:
        assignment.submit(assignment.answer_from_shown(request.POST), user=request.user)
    except ValidationError as error:
        return _render_task(request, project, assignment, data=request.POST, errors=error_messages(error), status=400)
    except LeaseError as error:
        return _render_next(request, project, problem=str(error), status=409)
    if first_submission:
        _count_submission(request, project)
    return _next_task_response(request, project)


@require_POST
@login_required
def skip_assignment(request: HttpRequest, project_slug: str, assignment_id: int) -> HttpResponse:
    assignment = _get_assignment_for_user(request, project_slug, assignment_id)
    project = assignment.task.project
    try:
        assignment.skip(user=request.user)
    except LeaseError as error:
        return _render_next(request, project, problem=str(error), status=409)
    _one_less_remaining(request, project)
    return _next_task_response(request, project)


@require_POST
@login_required
def write_preview(request: HttpRequest, project_slug: str) -> HttpResponse:
    """A written answer as it will read, for htmx: the task page's own rendering of a response (nh3-sanitised)."""
    project = get_project_for_user(request, project_slug)
    text = request.POST.get("text", "")
    formatted = formats(text, text_format=project.text_format)
    return render(request, "annotate/task.html#written-preview", {"text": text, "formatted": formatted})


@login_required
def project_stats(request: HttpRequest, project_slug: str) -> HttpResponse:
    project = get_project_led_by_user(request, project_slug)
    stats = project.lead_stats()
    return render(
        request,
        "annotate/stats.html",
        {
            "project": project,
            "task_rows": _tasks_by_kind(stats["tasks_by_status"]),
            "per_annotator": stats["per_annotator"],
            # Each hour a <meter> against the busiest one: no charting library, and no inline style for the CSP.
            "per_hour": stats["per_hour"],
            "busiest_hour": max((n for _hour, n in stats["per_hour"]), default=0),
            "live_leases": stats["live_leases"],
            "agreement": stats["agreement"],
        },
    )


@login_required
def quality_page(request: HttpRequest, project_slug: str) -> HttpResponse:
    project = get_project_led_by_user(request, project_slug)
    # htmx asks only while a refresh is under way: the status region polls itself.
    return _render_quality(request, project, region="status" if request.htmx else "")


@require_POST
@login_required
def quality_recompute(request: HttpRequest, project_slug: str) -> HttpResponse:
    project = get_project_led_by_user(request, project_slug)
    if request_quality(project, user=request.user):
        notice = "Recomputing: the new figures replace these in a minute or so (longer for a big project)."
    else:
        notice = "A recomputation is already under way: it reads every answer given until it starts."
    if request.htmx:
        return _render_quality(request, project, region="status", notice=notice)
    messages.info(request, notice)
    return redirect("quality_page", project_slug=project.slug)


@require_POST
@login_required
def quality_thresholds(request: HttpRequest, project_slug: str) -> HttpResponse:
    project = get_project_led_by_user(request, project_slug)
    floor = project.fast_seconds
    form = ThresholdsForm(request.POST, instance=project)
    if not form.is_valid():
        project.refresh_from_db()  # the page's flags go by the thresholds saved, not the refused ones
        return _render_quality(request, project, thresholds=form, status=400)
    # Only these columns: a whole-row save would write back task counters that submits move meanwhile.
    form.save(commit=False).save(update_fields=list(form.Meta.fields))
    notice = "Thresholds saved: the flags follow them now."
    if project.fast_seconds != floor:
        request_quality(project, user=request.user)
        notice += " The fast shares are being recomputed against the new floor."
    messages.success(request, notice)
    return redirect("quality_page", project_slug=project.slug)


# What the page says after each decision: to a lead, in the decision's own terms.
DECIDED = {
    MembershipEvent.Kind.PAUSED: "Paused {user}: they get no tasks here until resumed; the tasks they held went back "
    "to the queue.",
    MembershipEvent.Kind.RESUMED: "Resumed {user}: they get tasks again.",
    MembershipEvent.Kind.EXCLUDED: "Excluded {user}'s votes: they count in no export, round or agreement from now on.",
    MembershipEvent.Kind.INCLUDED: "Included {user}'s votes again.",
}


@require_POST
@login_required
def member_decision(request: HttpRequest, project_slug: str, username: str) -> HttpResponse:
    project = get_project_led_by_user(request, project_slug)
    membership = get_object_or_404(project.memberships.select_related("user"), user__username=username)
    form = DecisionForm(request.POST)
    if form.is_valid():
        try:
            event = membership.decide(form.cleaned_data["action"], by=request.user, reason=form.cleaned_data["reason"])
        except ValidationError as error:
            form.add_error(None, error)
    if not form.is_valid():
        region = "members" if request.htmx else ""
        return _render_quality(request, project, region=region, decision=(username, form), status=400)
    kind = form.cleaned_data["action"]
    notice = DECIDED[kind].format(user=username) if event else f"Nothing changed: {username} was so already."
    if request.htmx:
        return _render_quality(request, project, region="members", notice=notice)
    messages.success(request, notice)
    return redirect("quality_page", project_slug=project.slug)


def _render_quality(
    request: HttpRequest,
    project: Project,
    *,
    region: str = "",
    notice: str = "",
    thresholds: ThresholdsForm | None = None,
    decision: tuple[str, DecisionForm] | None = None,
    status: int = 200,
) -> HttpResponse:
    """The Quality page, or one of its regions for htmx: "status" (the refresh) or "members" (the table and the
    decisions); `thresholds` and `decision` are forms refused, shown with their errors."""
    shown = quality_for(project)
    computed = shown["computed_at"].isoformat() if shown["computed_at"] else ""
    context = {
        "project": project,
        "quality": shown,
        "under_way": shown["status"] in ("pending", "running"),
        # The poll says when figures newer than the page's are ready, rather than swap the table under the lead.
        "computed": computed,
        "newer": request.htmx and request.GET.get("shown", computed) != computed,
        "notice": notice,
        "thresholds": thresholds or ThresholdsForm(instance=project),
        "decision": decision,
        "events": project.membership_events.select_related("user", "by")[:50],
        "refresh_minutes": settings.ARBITER_QUALITY_REFRESH_MINUTES,
        "suggestions": following(project) if not region else None,  # the regions htmx swaps do not show it
    }
    template = f"annotate/quality.html#{region}" if region else "annotate/quality.html"
    return render(request, template, context, status=status)


NEW_TOKEN_SESSION_KEY = "new_api_token"


@never_cache  # the response that shows a new token must stay in no cache
@login_required
def api_tokens(request: HttpRequest) -> HttpResponse:
    """The user's API tokens; a POST makes one and redirects to the list, which shows it this once."""
    errors = []
    if request.method == "POST":
        try:
            new_token, plaintext = ApiToken.issue(request.user, request.POST.get("name", ""))
        except ValidationError as error:
            errors = error.messages
        else:
            # Redirect-after-post, so a reload cannot make a second token; the session carries the plaintext to the
            # next page, which forgets it (only the token's hash is kept).
            request.session[NEW_TOKEN_SESSION_KEY] = {"id": new_token.pk, "plaintext": plaintext}
            return redirect("api_tokens")
    shown = request.session.pop(NEW_TOKEN_SESSION_KEY, None) or {}
    tokens = request.user.api_tokens.all()
    context = {
        "tokens": tokens,
        "new_token": next((token for token in tokens if token.pk == shown.get("id")), None),
        "plaintext": shown.get("plaintext", ""),
        "errors": errors,
    }
    return render(request, "annotate/tokens.html", context, status=400 if errors else 200)


@require_POST
@login_required
def revoke_api_token(request: HttpRequest, token_id: int) -> HttpResponse:
    get_object_or_404(request.user.api_tokens, pk=token_id).revoke()
    return redirect("api_tokens")


def _next_task_response(request: HttpRequest, project: Project) -> HttpResponse:
    """After a submit or skip: the next task's region for htmx, a redirect to the task page without it."""
    if not request.htmx:
        return redirect("task_page", project_slug=project.slug)
    project.refresh_from_db(fields=["task_count", "complete_task_count"])  # the submit may have completed a task
    return _render_next(request, project)


def _render_next(request: HttpRequest, project: Project, *, problem: str = "", status: int = 200) -> HttpResponse:
    """The task page (or its #task region) with the user's next task; a paused member is told why there is none."""
    try:
        assignment = project.next_assignment(request.user)
    except MemberPaused as paused:
        # Said once, in place of the task, whatever else went wrong (the submit it refused says the same).
        return _render_task(request, project, None, paused=str(paused), status=status)
    return _render_task(request, project, assignment, problem=problem, status=status)


def _render_task(
    request: HttpRequest,
    project: Project,
    assignment: Assignment | None,
    *,
    data: QueryDict | None = None,
    errors: dict[str, list[str]] | None = None,
    problem: str = "",
    paused: str = "",
    status: int = 200,
) -> HttpResponse:
    """The task page, or only its #task region for htmx; `data` and `errors` refill a refused answer."""
    remaining = _remaining(request, project)
    session_done = request.session.get(_session_key(project), 0)
    context = {
        "project": project,
        "assignment": assignment,
        "problem": problem,
        "paused": paused,
        "errors": [message for messages in (errors or {}).values() for message in messages],
        "remaining": remaining,
        "remaining_capped": remaining >= REMAINING_CAP,
        "session_done": session_done,
        # What this session could still reach: what it did, this task, and what remains for the user.
        "session_total": session_done + remaining + (1 if assignment else 0),
        **(answer_form(project, assignment, data or QueryDict()) if assignment else {}),
    }
    template = "annotate/task.html#task" if request.htmx else "annotate/task.html"
    return render(request, template, context, status=status)


def answer_form(project: Project, assignment: Assignment, data: QueryDict) -> dict[str, Any]:
    """The task's responses in shown order and its form's choices, checked as `data` had them."""
    task = assignment.task
    responses = assignment.shown_responses()
    texts = [str(message.get("content", "")) for message in task.prompt.messages] + [r.content for _, r in responses]
    # All formatted or all plain: a pair shown one formatted, one plain would sway the comparison.
    formatted = formats(*texts, text_format=project.text_format)
    form: dict[str, Any] = {
        "task": task,
        "responses": [{"letter": letter, "response": r} for letter, r in responses],
        "formatted": formatted,
        "too_long_to_format": not formatted and project.text_format == TextFormat.MARKDOWN,
        "format_limit": settings.ARBITER_MARKDOWN_MAX_CHARS,
        "comment": data.get("comment", ""),
        "submit_url": reverse("submit_assignment", args=[project.slug, assignment.pk]),
        "skip_url": reverse("skip_assignment", args=[project.slug, assignment.pk]),
        "suggestion": assignment.suggestion(),
    }
    if task.kind == TaskKind.WRITE:
        # The model draft, when the task has one, is where the answer starts; a refused or changed answer comes back.
        draft = responses[0][1] if responses else None
        form["draft"] = draft
        form["text"] = data.get("text", draft.content if draft else "")
        form["write_preview_url"] = reverse("write_preview", args=[project.slug])
        form["preview_formatted"] = formats(form["text"], text_format=project.text_format)
    elif task.kind == TaskKind.RATING:
        form["correction"] = data.get("correction", "")
        form["write_preview_url"] = reverse("write_preview", args=[project.slug])
        descriptions = project.rating_descriptions or {}
        chosen_labels = data.getlist("labels")
        form["scale"] = [
            {
                "value": point,
                "description": descriptions.get(str(point), ""),
                # Digits 1–9 pick the first nine points; a longer scale's top is reached by mouse or Tab.
                "key": str(i) if i <= 9 else "",
                "checked": data.get("score") == str(point),
            }
            for i, point in enumerate(project.rating_points, start=1)
        ]
        form["labels"] = [
            {"name": label, "key": str(i) if i <= 9 else "", "checked": label in chosen_labels}
            for i, label in enumerate(project.labels, start=1)
        ]
        form["digit_keys"] = min(len(form["scale"]), 9)
        form["label_keys"] = min(len(form["labels"]), 9)
    elif task.kind == TaskKind.PAIRWISE:
        form["preferences"] = [{**asdict(p), "checked": data.get("preference") == p.value} for p in PREFERENCES]
        form["both_bad"] = data.get("both_bad") == "on"
    else:
        form["rank_choices"] = [str(n) for n in range(1, len(responses) + 1)]
        form["digit_keys"] = min(len(responses), 9)
        for row in form["responses"]:
            row["rank"] = data.get(f"rank-{row['response'].pk}", "")
    return form


def _tasks_by_kind(tasks_by_status: dict[tuple[str, str], int]) -> list[dict[str, Any]]:
    """One row per task kind with its open, complete and total counts, and a total row."""
    rows = []
    for kind, label in TaskKind.choices:
        open_ = tasks_by_status.get((Task.Status.OPEN, kind), 0)
        complete = tasks_by_status.get((Task.Status.COMPLETE, kind), 0)
        rows.append({"kind": label, "open": open_, "complete": complete, "total": open_ + complete})
    rows.append(
        {
            "kind": "All",
            "open": sum(row["open"] for row in rows),
            "complete": sum(row["complete"] for row in rows),
            "total": sum(row["total"] for row in rows),
        }
    )
    return rows


def error_messages(error: ValidationError) -> dict[str, list[str]]:
    return error.message_dict if hasattr(error, "error_dict") else {"answer": error.messages}


def _session_key(project: Project) -> str:
    return f"arbiter:session-done:{project.pk}"


def _remaining_key(project: Project) -> str:
    return f"arbiter:remaining:{project.pk}"


def _remaining(request: HttpRequest, project: Project) -> int:
    """What remains for the user, counted once a minute per session and less what they submitted since.

    Counting walks up to REMAINING_CAP queue entries (~2 ms); every task page showing it need not pay that.
    """
    key = _remaining_key(project)
    counted = request.session.get(key)
    if counted is None or time.time() - counted["at"] > REMAINING_RECOUNT_SECONDS:
        counted = {"n": project.remaining_for(request.user), "at": time.time()}
        request.session[key] = counted
    return counted["n"]


def _count_submission(request: HttpRequest, project: Project) -> None:
    key = _session_key(project)
    request.session[key] = request.session.get(key, 0) + 1
    _one_less_remaining(request, project)


def _one_less_remaining(request: HttpRequest, project: Project) -> None:
    """After a submit or skip the next lease comes out of what remained."""
    if counted := request.session.get(_remaining_key(project)):
        request.session[_remaining_key(project)] = {**counted, "n": max(counted["n"] - 1, 0)}
