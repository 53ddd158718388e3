"""The lead's models page: how the project's model versions compare in human votes, and the registry."""

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

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
