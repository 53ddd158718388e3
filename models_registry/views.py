"""The lead's models page: how the project's model versions compare in human votes, the registry, and promoting a
version (after a confirm page)."""

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_http_methods

from annotate.access import get_project_led_by_user
from models_registry.measures import cross_version_votes, leaderboard, reward_accuracies, round_win_rates


@login_required
def model_leaderboard(request: HttpRequest, project_slug: str) -> HttpResponse:
    project = get_project_led_by_user(request, project_slug)
    votes = cross_version_votes(project)  # read once, measured three ways
    context = {
        "project": project,
        "vote_count": sum(not vote.auto for vote in votes),
        "auto_tie_count": sum(vote.auto for vote in votes),
        "entries": leaderboard(project, votes=votes),
        "round_win_rates": round_win_rates(project, votes=votes),
        "reward_accuracies": reward_accuracies(project),
        "versions": project.model_versions.select_related("parent", "training_round").order_by("kind", "-version"),
    }
    return render(request, "models_registry/leaderboard.html", context)


@require_http_methods(["GET", "POST"])
@login_required
def promote_version(request: HttpRequest, project_slug: str, version_id: int) -> HttpResponse:
    """GET asks the lead to confirm (a page, so it works without JavaScript); POST promotes."""
    project = get_project_led_by_user(request, project_slug)
    version = get_object_or_404(project.model_versions.select_related("project"), pk=version_id)
    if request.method == "POST":
        version.promote()
        messages.success(
            request, f"{version.kind} v{version.version} is now the active {version.get_kind_display().lower()}."
        )
        return redirect("model_leaderboard", project_slug=project.slug)
    active = project.model_versions.filter(kind=version.kind, status=version.Status.ACTIVE).exclude(pk=version.pk)
    context = {"project": project, "version": version, "active": active.first()}
    return render(request, "models_registry/promote.html", context)
