"""The lead's models page: how the project's model versions compare in human votes, and the registry."""

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render

from annotate.models import Project
from models_registry.measures import cross_version_votes, leaderboard, reward_accuracies, round_win_rates


def _get_project_led_by_user(request: HttpRequest, project_slug: str) -> Project:
    """The project if the user leads it (or is a superuser); 404 for annotators and outsiders alike."""
    return get_object_or_404(Project.objects.led_by(request.user), slug=project_slug)


@login_required
def model_leaderboard(request: HttpRequest, project_slug: str) -> HttpResponse:
    project = _get_project_led_by_user(request, project_slug)
    votes = cross_version_votes(project)  # read once, measured three ways
    context = {
        "project": project,
        "vote_count": len(votes),
        "entries": leaderboard(project, votes=votes),
        "round_win_rates": round_win_rates(project, votes=votes),
        "reward_accuracies": reward_accuracies(project),
        "versions": project.model_versions.select_related("parent", "training_round").order_by("kind", "-version"),
    }
    return render(request, "models_registry/leaderboard.html", context)
