"""Pages for annotators and leads: plain function views, one access helper, one model call each."""

from django.contrib.auth.decorators import login_required
from django.db.models import Count
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render

from annotate.models import Membership, Project


def _get_project_for_user(request: HttpRequest, project_slug: str) -> Project:
    """The project if the user belongs to it; 404 otherwise, so outsiders cannot tell it exists."""
    return get_object_or_404(Project.objects.for_user(request.user), slug=project_slug)


@login_required
def home(request: HttpRequest) -> HttpResponse:
    projects = Project.objects.for_user(request.user).with_counts()
    roles = dict(Membership.objects.filter(user=request.user).values_list("project_id", "role"))
    rows = [(project, "lead" if request.user.is_superuser else roles.get(project.pk)) for project in projects]
    return render(request, "annotate/home.html", {"rows": rows})


@login_required
def project_detail(request: HttpRequest, project_slug: str) -> HttpResponse:
    project = _get_project_for_user(request, project_slug)
    counts = dict(project.tasks.values_list("status").annotate(n=Count("id")).values_list("status", "n"))
    return render(
        request,
        "annotate/project_detail.html",
        {
            "project": project,
            "role": project.role_of(request.user),
            "counts": counts,
            "prompt_count": project.prompts.count(),
            "my_annotations": project.tasks.filter(annotations__annotator=request.user).count(),
        },
    )
