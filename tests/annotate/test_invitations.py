"""Invitations: a lead makes a link (shown once, only its hash kept), people join with it, and it stops working when
revoked, expired or used up; joining twice joins once."""

import re
import threading
from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.core import mail
from django.db import connection
from django.urls import reverse
from django.utils import timezone

from annotate.models import Invitation, InvitationUnusable, Membership

NEW_PASSWORD = "a-long-unusual-passphrase"


def make_link(client, project, **data):
    """POST the invitations form as the logged-in lead; returns the link the page shows after the redirect."""
    url = reverse("invitations", args=[project.slug])
    response = client.post(url, {"role": "annotator", "email": "", "max_uses": 1, **data})
    assert response.status_code == 302, response.content.decode()
    page = client.get(response.url).content.decode()
    return re.search(r'id="invite-link">([^<]+)<', page).group(1)


def token_of(link):
    return link.rstrip("/").rsplit("/", 1)[1]


def sign_up(client, link, username="newcomer", password=NEW_PASSWORD, **extra):
    data = {"username": username, "email": "", "password1": password, "password2": password, **extra}
    return client.post(link, data)


@pytest.fixture
def lead_client(client, lead):
    client.force_login(lead)
    return client


def test_the_link_is_shown_once_and_only_its_hash_is_stored(lead_client, project):
    link = make_link(lead_client, project)

    invitation = Invitation.objects.get()
    assert link.startswith("http://testserver/invite/")
    assert token_of(link) not in str(Invitation.objects.values().get())  # only the digest
    assert invitation.digest == Invitation.objects.by_link(token_of(link)).digest
    again = lead_client.get(reverse("invitations", args=[project.slug])).content.decode()
    assert token_of(link) not in again and 'id="invite-link"' not in again


def test_reloading_after_making_a_link_makes_no_second_one(lead_client, project):
    make_link(lead_client, project)

    lead_client.get(reverse("invitations", args=[project.slug]))

    assert Invitation.objects.count() == 1


@pytest.mark.parametrize("who", ["annotator", "outsider"])
def test_invitations_page_is_404_to_all_but_leads(client, project, lead, request, who):
    client.force_login(request.getfixturevalue(who))
    invitation, _ = Invitation.issue(project, by=lead, role="annotator")

    assert client.get(reverse("invitations", args=[project.slug])).status_code == 404
    assert client.post(reverse("invitations", args=[project.slug]), {"role": "lead", "max_uses": 1}).status_code == 404
    revoke = reverse("revoke_invitation", args=[project.slug, invitation.pk])
    assert client.post(revoke).status_code == 404
    assert Invitation.objects.get().revoked_at is None and Invitation.objects.count() == 1


def test_invitee_signs_up_and_lands_in_the_project_with_the_role(client, lead_client, project):
    link = make_link(lead_client, project, role="lead")
    client.logout()

    response = sign_up(client, link, email="new@example.com")

    assert response.status_code == 302 and response.url == reverse("project_detail", args=[project.slug])
    user = get_user_model().objects.get(username="newcomer")
    assert user.email == "new@example.com" and user.check_password(NEW_PASSWORD)
    assert project.memberships.get(user=user).role == "lead"
    assert client.get(response.url).context["user"] == user  # logged in
    assert Invitation.objects.get().use_count == 1


def test_a_password_the_validators_refuse_creates_nothing(client, lead_client, project):
    link = make_link(lead_client, project)
    client.logout()

    response = sign_up(client, link, password="12345678")

    assert response.status_code == 400
    assert "This password is too common." in response.content.decode()
    assert not get_user_model().objects.filter(username="newcomer").exists()
    assert Invitation.objects.get().use_count == 0


def test_a_taken_username_is_a_form_error(client, lead_client, project, annotator):
    link = make_link(lead_client, project)
    client.logout()

    response = sign_up(client, link, username="ANNOTATOR")

    assert response.status_code == 400 and "username" in response.context["form"].errors
    assert Invitation.objects.get().use_count == 0


def test_an_unknown_link_is_404(client, db):
    assert client.get("/invite/no-such-token/").status_code == 404
    assert sign_up(client, "/invite/no-such-token/").status_code == 404


@pytest.mark.parametrize(
    "spoil, message",
    [
        (lambda i: i.revoke(), "This invitation was revoked."),
        (
            lambda i: Invitation.objects.filter(pk=i.pk).update(expires_at=timezone.now()),
            "This invitation has expired.",
        ),
        (lambda i: Invitation.objects.filter(pk=i.pk).update(use_count=1), "This invitation has been used."),
    ],
)
def test_a_spent_link_says_why_and_makes_no_account(client, project, lead, spoil, message):
    invitation, token = Invitation.issue(project, by=lead, role="annotator")
    spoil(invitation)

    page = client.get(f"/invite/{token}/")
    posted = sign_up(client, f"/invite/{token}/")

    assert page.status_code == 410 and message in page.content.decode()
    assert posted.status_code == 410
    assert not get_user_model().objects.filter(username="newcomer").exists()


def test_a_link_used_up_while_the_form_was_open_leaves_no_account(client, project, lead):
    invitation, token = Invitation.issue(project, by=lead, role="annotator")
    client.get(f"/invite/{token}/")
    Membership.objects.create(project=project, user=get_user_model().objects.create(username="faster"))
    Invitation.objects.filter(pk=invitation.pk).update(use_count=1)  # someone else joined first

    response = sign_up(client, f"/invite/{token}/")

    assert response.status_code == 410
    assert not get_user_model().objects.filter(username="newcomer").exists()


def test_a_logged_in_person_joins_with_their_account_once(client, project, lead, outsider):
    invitation, token = Invitation.issue(project, by=lead, role="annotator", max_uses=5)
    client.force_login(outsider)

    assert "Join as outsider" in client.get(f"/invite/{token}/").content.decode()
    first = client.post(f"/invite/{token}/")
    second = client.post(f"/invite/{token}/")  # a double click, a reload

    assert first.status_code == second.status_code == 302
    assert project.memberships.filter(user=outsider).count() == 1
    invitation.refresh_from_db()
    assert invitation.use_count == 1


def test_accepting_as_a_member_already_uses_nothing_and_keeps_the_role(project, lead, annotator):
    invitation, _ = Invitation.issue(project, by=lead, role="lead")

    membership = invitation.accept(annotator)

    assert membership.role == "annotator"
    invitation.refresh_from_db()
    assert invitation.use_count == 0


def test_a_shared_link_takes_as_many_people_as_its_cap(project, lead, make_user):
    invitation, _ = Invitation.issue(project, by=lead, role="annotator", max_uses=2)
    first, second, third = make_user("first"), make_user("second"), make_user("third")

    invitation.accept(first)
    invitation.accept(second)
    with pytest.raises(InvitationUnusable, match="no uses left"):
        invitation.accept(third)

    assert set(project.memberships.values_list("user__username", flat=True)) == {"lead", "first", "second"}


def test_revoking_stops_the_link_and_keeps_who_joined(lead_client, client, project, make_user):
    joined = make_user("joined")
    invitation, token = Invitation.issue(project, by=None, role="annotator", max_uses=3)
    invitation.accept(joined)

    lead_client.post(reverse("revoke_invitation", args=[project.slug, invitation.pk]))
    client.logout()

    assert client.get(f"/invite/{token}/").status_code == 410
    assert project.memberships.filter(user=joined).exists()


def test_links_expire_after_the_configured_days(settings, project, lead):
    settings.ARBITER_INVITATION_DAYS = 2

    invitation, _ = Invitation.issue(project, by=lead, role="annotator")

    assert abs(invitation.expires_at - (timezone.now() + timedelta(days=2))) < timedelta(minutes=1)


def test_an_invitation_with_an_address_is_emailed(lead_client, project):
    link = make_link(lead_client, project, email="friend@example.com")

    [message] = mail.outbox
    assert message.to == ["friend@example.com"]
    assert link in message.body and project.name in message.subject
    assert Invitation.objects.get().email == "friend@example.com"


def test_an_emailed_link_is_for_one_person(lead_client, project):
    url = reverse("invitations", args=[project.slug])

    response = lead_client.post(url, {"role": "annotator", "email": "friend@example.com", "max_uses": 5})

    assert response.status_code == 400 and "max_uses" in response.context["form"].errors
    assert not Invitation.objects.exists() and not mail.outbox


def test_a_lead_cannot_revoke_another_projects_invitation(lead_client, lead, make_user):
    from annotate.models import Project

    other = Project.objects.create(name="Other", slug="other")
    invitation, _ = Invitation.issue(other, by=None, role="annotator")

    response = lead_client.post(reverse("revoke_invitation", args=["helpfulness", invitation.pk]))

    assert response.status_code == 404
    invitation.refresh_from_db()
    assert invitation.revoked_at is None


def test_one_password_works_to_log_in_after_signing_up(client, lead_client, project):
    link = make_link(lead_client, project)
    client.logout()
    sign_up(client, link)
    client.logout()

    response = client.post(reverse("login"), {"username": "newcomer", "password": NEW_PASSWORD})

    assert response.status_code == 302 and response.url == reverse("home")


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
class TestAcceptingAtOnce:
    """Many requests accepting one link at the same moment, on PostgreSQL (SQLite runs one writer at a time)."""

    def run_together(self, invitation, users):
        start = threading.Barrier(len(users))
        outcomes = []

        def accept(user):
            try:
                start.wait()
                Invitation.objects.get(pk=invitation.pk).accept(user)
                outcomes.append("joined")
            except InvitationUnusable:
                outcomes.append("refused")
            finally:
                connection.close()

        threads = [threading.Thread(target=accept, args=[user]) for user in users]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return outcomes

    def test_a_shared_link_never_takes_more_than_its_cap(self, project, django_user_model):
        invitation, _ = Invitation.issue(project, by=None, role="annotator", max_uses=5)
        users = django_user_model.objects.bulk_create(django_user_model(username=f"u{i}") for i in range(16))

        outcomes = self.run_together(invitation, users)

        assert sorted(outcomes) == ["joined"] * 5 + ["refused"] * 11
        assert project.memberships.count() == 5
        invitation.refresh_from_db()
        assert invitation.use_count == 5

    def test_one_person_accepting_twice_at_once_joins_once_and_uses_one(self, project, django_user_model):
        invitation, _ = Invitation.issue(project, by=None, role="annotator", max_uses=5)
        user = django_user_model.objects.create(username="eager")

        outcomes = self.run_together(invitation, [user] * 8)

        assert outcomes == ["joined"] * 8
        assert project.memberships.filter(user=user).count() == 1
        invitation.refresh_from_db()
        assert invitation.use_count == 1


def test_a_link_that_cannot_be_emailed_is_still_made_and_shown(lead_client, project, settings):
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", 9  # nothing listens there: the connection is refused
    url = reverse("invitations", args=[project.slug])

    response = lead_client.post(url, {"role": "annotator", "email": "friend@example.com", "max_uses": 1}, follow=True)

    page = response.content.decode()
    assert "could not be emailed to friend@example.com" in page
    assert 'id="invite-link"' in page and Invitation.objects.count() == 1


def test_the_new_link_waits_for_its_own_projects_page(lead_client, lead, project):
    from annotate.models import Project

    other = Project.objects.create(name="Other", slug="other")
    Membership.objects.create(project=other, user=lead, role="lead")
    lead_client.post(reverse("invitations", args=[project.slug]), {"role": "annotator", "max_uses": 1})

    elsewhere = lead_client.get(reverse("invitations", args=[other.slug])).content.decode()
    own = lead_client.get(reverse("invitations", args=[project.slug])).content.decode()

    assert 'id="invite-link"' not in elsewhere and 'id="invite-link"' in own
