"""Password reset by email, with Django's own views on the site's pages."""

import re

from django.core import mail
from django.urls import reverse

from annotate.models import Membership


def test_a_member_resets_their_password_by_email(client, project, make_user):
    user = make_user("forgetful", email="forgetful@example.com")
    Membership.objects.create(project=project, user=user)
    assert reverse("password_reset") == "/password-reset/"
    assert reverse("password_reset") in client.get(reverse("login")).content.decode()

    sent = client.post(reverse("password_reset"), {"email": "forgetful@example.com"})
    [message] = mail.outbox
    link = re.search(r"https?://testserver(/password-reset/\S+/)", message.body).group(1)
    form_page = client.get(link, follow=True)  # Django moves the token out of the URL into the session
    set_password = client.post(
        form_page.redirect_chain[-1][0],
        {"new_password1": "a-new-long-passphrase", "new_password2": "a-new-long-passphrase"},
    )

    assert sent.status_code == 302 and sent.url == reverse("password_reset_done")
    assert message.to == ["forgetful@example.com"] and "forgetful" in message.body
    assert form_page.status_code == 200 and form_page.context["validlink"]
    assert set_password.status_code == 302 and set_password.url == reverse("password_reset_complete")
    user.refresh_from_db()
    assert user.check_password("a-new-long-passphrase")
    assert client.get(link, follow=True).context["validlink"] is False  # the link works once
    assert "does not work" in client.get(link, follow=True).content.decode()


def test_an_unknown_address_sends_nothing_and_says_the_same(client, db):
    response = client.post(reverse("password_reset"), {"email": "nobody@example.com"})

    assert response.status_code == 302 and response.url == reverse("password_reset_done")
    assert mail.outbox == []


def test_the_reset_pages_are_the_sites_not_the_admins(client, db):
    for name in ["password_reset", "password_reset_done", "password_reset_complete"]:
        page = client.get(reverse(name))
        assert page.status_code == 200
        assert "base.html" in [t.name for t in page.templates], name
        assert "admin/base.html" not in [t.name for t in page.templates], name
