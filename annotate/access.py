"""Who may see a project page: the access helpers the annotate, training and registry views share."""

from django.http import HttpRequest
from django.shortcuts import get_object_or_404

from annotate.models import Project


def get_project_for_user(request: HttpRequest, project_slug: str) -> Project:
    """The project if the user belongs to it; 404 otherwise, so outsiders cannot tell it exists."""
    return get_object_or_404(Project.objects.for_user(request.user), slug=project_slug)


def get_project_led_by_user(request: HttpRequest, project_slug: str) -> Project:
    """The project if the user leads it (or is a superuser); 404 for annotators and outsiders alike."""
    return get_object_or_404(Project.objects.led_by(request.user), slug=project_slug)
