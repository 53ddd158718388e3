"""The lead's round pages: the list of a project's rounds, one round live (htmx polls it while it runs), and the
step that confirms cancelling one."""

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_http_methods

from annotate.access import get_project_led_by_user
from training.charts import charts_for
from training.models import TrainingRound

POLL_SECONDS = 2


def _get_round_for_lead(request: HttpRequest, project_slug: str, number: int) -> TrainingRound:
    project = get_project_led_by_user(request, project_slug)
    return get_object_or_404(
        TrainingRound.objects.select_related("project", "snapshot", "created_by"), project=project, number=number
    )


def _queued_samples(training_round: TrainingRound) -> dict[str, int] | None:
    # Sampling writes its tasks in one transaction at its end: before the round ends there is nothing to count.
    if training_round.is_finished and "sample" in training_round.config:
        return training_round.queued_samples()
    return None


@login_required
def round_list(request: HttpRequest, project_slug: str) -> HttpResponse:
    project = get_project_led_by_user(request, project_slug)
    rounds = project.training_rounds.select_related("snapshot", "created_by")
    return render(request, "training/round_list.html", {"project": project, "rounds": rounds})


@login_required
def round_page(request: HttpRequest, project_slug: str, number: int) -> HttpResponse:
    training_round = _get_round_for_lead(request, project_slug, number)
    context = {
        "project": training_round.project,
        "round": training_round,
        "charts": charts_for(training_round.metric_series(), training_round.chart_lines()),
        "versions": training_round.model_versions.all(),
        "samples": _queued_samples(training_round),
        "poll_seconds": POLL_SECONDS,
    }
    template = "training/round.html#live" if request.htmx else "training/round.html"
    return render(request, template, context)


@require_http_methods(["GET", "POST"])
@login_required
def cancel_round(request: HttpRequest, project_slug: str, number: int) -> HttpResponse:
    """GET asks the lead to confirm (a page, so it works without JavaScript); POST cancels."""
    training_round = _get_round_for_lead(request, project_slug, number)
    if request.method == "GET" and not training_round.is_finished:
        context = {"project": training_round.project, "round": training_round}
        return render(request, "training/cancel_round.html", context)
    if request.method == "POST":
        training_round.request_cancel()
    return redirect("round_page", project_slug=project_slug, number=number)
