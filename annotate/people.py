"""Getting people in: a lead invites people to a project by a link (emailed where an address is given), the invitee
joins with a new account or the one they are logged in with, and a lead makes a project."""

import logging
import smtplib

from django import forms
from django.conf import settings
from django.contrib import messages
from django.contrib.auth import get_user_model, login
from django.contrib.auth.decorators import login_required
from django.contrib.auth.forms import UserCreationForm
from django.core.mail import send_mail
from django.db import transaction
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.template.loader import render_to_string
from django.urls import reverse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_POST

from annotate.access import get_project_led_by_user
from annotate.models import Invitation, InvitationUnusable, Membership, Project, make_lead

logger = logging.getLogger(__name__)

# The session key under which a new invitation's link waits for the page the POST redirects to: the link is shown
# once, and a reload makes no second invitation.
NEW_LINK = "arbiter:new-invitation"
# The login a new account is logged in with; django-axes' backend comes first and only checks credentials.
MODEL_BACKEND = "django.contrib.auth.backends.ModelBackend"
MAX_SHARED_USES = 1000


class InvitationForm(forms.Form):
    role = forms.ChoiceField(choices=Membership.Role.choices, initial=Membership.Role.ANNOTATOR)
    email = forms.EmailField(required=False, help_text="Optional: the link is emailed there too.")
    max_uses = forms.IntegerField(
        label="People",
        min_value=1,
        max_value=MAX_SHARED_USES,
        initial=1,
        help_text="1: a link for one person. More: a shared link that this many people may join with.",
    )

    def clean(self) -> dict:
        data = super().clean()
        if data.get("email") and data.get("max_uses", 1) > 1:
            self.add_error("max_uses", "A link emailed to one address is for one person: leave 1, or no address.")
        return data


class JoinForm(UserCreationForm):
    """A new account: username, an email address for password resets, and a password Django's validators accept."""

    class Meta(UserCreationForm.Meta):
        model = get_user_model()
        fields = ("username", "email")
        help_texts = {"email": "Optional: where a password reset link is sent if you forget your password."}


class ProjectForm(forms.ModelForm):
    class Meta:
        model = Project
        fields = ["name", "slug"]
        help_texts = {"slug": "Part of its address, /p/your-slug/: letters, digits, hyphens and underscores."}


@never_cache  # the page that shows a new link must stay in no cache
@login_required
def invitations(request: HttpRequest, project_slug: str) -> HttpResponse:
    """The project's invitations; a POST makes one and shows its link, this once (only its hash is kept)."""
    project = get_project_led_by_user(request, project_slug)
    form = InvitationForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        invitation, token = Invitation.issue(project, by=request.user, **form.cleaned_data)
        link = request.build_absolute_uri(reverse("accept_invitation", args=[token]))
        if invitation.email:
            _email_invitation(request, invitation, link)
        request.session[NEW_LINK] = {"id": invitation.pk, "link": link}
        return redirect("invitations", project_slug=project.slug)
    new = request.session.get(NEW_LINK)
    if new and project.invitations.filter(pk=new["id"]).exists():
        del request.session[NEW_LINK]  # shown once; another project's invitations page leaves it be
    else:
        new = None
    context = {
        "project": project,
        "form": form,
        "new": new,
        "invitations": project.invitations.select_related("created_by")[:100],
        "days": settings.ARBITER_INVITATION_DAYS,
    }
    return render(request, "annotate/invitations.html", context, status=400 if form.errors else 200)


@require_POST
@login_required
def revoke_invitation(request: HttpRequest, project_slug: str, invitation_id: int) -> HttpResponse:
    project = get_project_led_by_user(request, project_slug)
    get_object_or_404(project.invitations, pk=invitation_id).revoke()
    messages.success(request, "Invitation revoked: its link no longer works. Who joined with it stays a member.")
    return redirect("invitations", project_slug=project.slug)


@never_cache
def accept_invitation(request: HttpRequest, token: str) -> HttpResponse:
    """Join a project by an invitation: with a new account, or the one logged in. 404 for a link that never was."""
    invitation = Invitation.objects.by_link(token)
    if invitation is None:
        raise Http404("No such invitation.")
    project = invitation.project
    user = request.user
    if user.is_authenticated and project.memberships.filter(user=user).exists():
        messages.info(request, f"You are a member of {project.name} already.")
        return redirect("project_detail", project_slug=project.slug)
    if invitation.problem:
        return _unusable(request, invitation, invitation.problem)
    form = None if user.is_authenticated else JoinForm(request.POST or None, initial={"email": invitation.email})
    if request.method == "POST" and (form is None or form.is_valid()):
        try:
            with transaction.atomic():  # no account is left behind when the invitation was used up meanwhile
                user = form.save() if form else user
                invitation.accept(user)
        except InvitationUnusable as error:
            return _unusable(request, invitation, str(error))
        if form:
            login(request, user, backend=MODEL_BACKEND)
        messages.success(request, f"Welcome to {project.name}.")
        return redirect("project_detail", project_slug=project.slug)
    context = {"invitation": invitation, "project": project, "form": form}
    return render(request, "annotate/invitation.html", context, status=400 if form and form.errors else 200)


@login_required
def new_project(request: HttpRequest) -> HttpResponse:
    """A lead (anyone with the permission to add projects) makes a project, and leads it."""
    if not request.user.has_perm("annotate.add_project"):
        raise Http404
    form = ProjectForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        with transaction.atomic():
            project = form.save()
            make_lead(project, request.user)
        messages.success(request, f"Project {project.name} made. Invite people to it here.")
        return redirect("invitations", project_slug=project.slug)
    return render(request, "annotate/new_project.html", {"form": form}, status=400 if form.errors else 200)


def _unusable(request: HttpRequest, invitation: Invitation, problem: str) -> HttpResponse:
    # 410: the link was real, and it will not work again.
    context = {"invitation": invitation, "project": invitation.project, "problem": problem}
    return render(request, "annotate/invitation.html", context, status=410)


def _email_invitation(request: HttpRequest, invitation: Invitation, link: str) -> None:
    context = {"invitation": invitation, "project": invitation.project, "link": link, "by": request.user}
    subject = f"You are invited to {invitation.project.name} on Arbiter"
    try:
        send_mail(subject, render_to_string("annotate/invitation_email.txt", context), None, [invitation.email])
    except (OSError, smtplib.SMTPException) as error:
        # The invitation stands: the lead still gets the link to pass on.
        logger.warning("Invitation %s could not be emailed to %s: %s", invitation.pk, invitation.email, error)
        messages.error(request, f"The link could not be emailed to {invitation.email} ({error}): copy it below.")
    else:
        messages.success(request, f"The link was emailed to {invitation.email}.")
