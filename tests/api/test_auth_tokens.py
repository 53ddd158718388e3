"""API tokens: hashed at rest, shown once, refused when wrong or revoked, throttled logins, and the /tokens/ page."""

import hashlib
import os
import re
import subprocess
import sys
from datetime import timedelta

import pytest
from django.conf import settings
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone
from rest_framework.test import APIClient

from annotate.models import ApiToken
from tests.conftest import PASSWORD

ME = "/api/v1/me/"
TOKENS = "/api/v1/tokens/"
LOGIN = "/api/v1/auth/token/"


def bearer(plaintext):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {plaintext}")
    return client


def database_text():
    """Every row of every table, as one string."""
    rows = []
    with connection.cursor() as cursor:
        for table in connection.introspection.table_names():
            cursor.execute(f"SELECT * FROM {connection.ops.quote_name(table)}")
            rows.extend(map(repr, cursor.fetchall()))
    return "\n".join(rows)


class TestIssue:
    def test_a_token_is_arb_prefix_secret_and_only_its_sha256_is_stored(self, annotator):
        token, plaintext = ApiToken.issue(annotator, "  labelling bot ")

        assert re.fullmatch(r"arb_[0-9a-f]{12}_[A-Za-z0-9_-]{43}", plaintext)
        assert token.prefix == plaintext.split("_")[1]
        assert token.digest == hashlib.sha256(plaintext.encode()).hexdigest()
        assert token.name == "labelling bot"
        assert token.masked == f"arb_{token.prefix}_…"

    def test_the_plaintext_appears_nowhere_in_the_database(self, client, annotator):
        _, issued = ApiToken.issue(annotator, "model method")
        bearer(issued).get(ME)
        client.force_login(annotator)
        from_api = client.post(TOKENS, {"name": "api"}, content_type="application/json").json()
        from_login = APIClient().post(LOGIN, {"username": "annotator", "password": PASSWORD}, format="json").json()
        page = client.post(reverse("api_tokens"), {"name": "page"}, follow=True).content.decode()
        from_page = re.search(r'<code class="token">([^<]+)</code>', page).group(1)

        stored = database_text()

        for plaintext in [issued, from_api["token"], from_login["token"], from_page]:
            secret = plaintext.split("_", 2)[2]
            assert secret not in stored
            assert hashlib.sha256(plaintext.encode()).hexdigest() in stored

    def test_a_blank_name_is_refused_by_field(self, client, annotator):
        client.force_login(annotator)

        response = client.post(TOKENS, {"name": "  "}, content_type="application/json")

        assert response.status_code == 400
        assert "name" in response.json()
        assert not ApiToken.objects.exists()


class TestBearerAuthentication:
    def test_a_token_authenticates_its_user(self, annotator):
        _, plaintext = ApiToken.issue(annotator, "bot")

        response = bearer(plaintext).get(ME)

        assert response.status_code == 200
        assert response.json()["username"] == "annotator"
        assert response.json()["auth"] == "token"

    @pytest.mark.parametrize(
        "mangle",
        [
            lambda t: t[:-1] + ("A" if t[-1] != "A" else "B"),  # the right prefix, a wrong secret
            lambda t: "arb_000000000000_" + t.split("_", 2)[2],  # an unknown prefix
            lambda t: t.replace("arb_", "xyz_", 1),
            lambda t: "arb_",
            lambda t: "nonsense",
        ],
        ids=["wrong-secret", "unknown-prefix", "wrong-scheme", "truncated", "nonsense"],
    )
    def test_a_wrong_token_is_refused_with_401(self, annotator, mangle):
        _, plaintext = ApiToken.issue(annotator, "bot")

        response = bearer(mangle(plaintext)).get(ME)

        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"] == 'Bearer realm="api"'

    def test_no_credentials_is_401_with_the_scheme_to_use(self, db):
        response = APIClient().get(ME)

        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"] == 'Bearer realm="api"'

    def test_a_revoked_token_is_refused(self, annotator):
        token, plaintext = ApiToken.issue(annotator, "bot")
        client = bearer(plaintext)
        assert client.get(ME).status_code == 200

        assert client.delete(f"{TOKENS}{token.pk}/").status_code == 204

        assert client.get(ME).status_code == 401
        token.refresh_from_db()
        assert token.revoked_at is not None

    def test_an_inactive_users_token_is_refused(self, annotator):
        _, plaintext = ApiToken.issue(annotator, "bot")
        annotator.is_active = False
        annotator.save()

        assert bearer(plaintext).get(ME).status_code == 401

    def test_last_used_is_written_at_most_once_a_minute(self, annotator):
        token, plaintext = ApiToken.issue(annotator, "bot")
        client = bearer(plaintext)

        client.get(ME)
        token.refresh_from_db()
        first_use = token.last_used_at
        assert first_use is not None
        with CaptureQueriesContext(connection) as queries:
            client.get(ME)
        assert not [q for q in queries if q["sql"].startswith("UPDATE")]
        token.refresh_from_db()
        assert token.last_used_at == first_use

        ApiToken.objects.filter(pk=token.pk).update(last_used_at=timezone.now() - timedelta(minutes=2))
        client.get(ME)
        token.refresh_from_db()
        assert token.last_used_at > first_use


class TestTokenEndpoints:
    def test_a_browser_session_makes_a_token_whose_plaintext_is_shown_once(self, annotator):
        client = APIClient()
        client.force_login(annotator)

        made = client.post(TOKENS, {"name": "bot"}, format="json")

        assert made.status_code == 201
        assert bearer(made.json()["token"]).get(ME).status_code == 200
        listed = client.get(TOKENS).json()["results"]
        assert [t["name"] for t in listed] == ["bot"]
        assert "token" not in listed[0]
        assert listed[0]["hint"] == made.json()["hint"]

    def test_a_token_cannot_make_tokens(self, client_for, annotator):
        response = client_for(annotator).post(TOKENS, {"name": "another"}, format="json")

        assert response.status_code == 403
        assert ApiToken.objects.count() == 1

    def test_session_requests_need_the_csrf_token(self, annotator):
        client = APIClient(enforce_csrf_checks=True)
        client.force_login(annotator)

        assert client.get(ME).json()["auth"] == "session"
        assert client.post(TOKENS, {"name": "bot"}, format="json").status_code == 403

    def test_the_list_holds_only_your_tokens_newest_first_revoked_included(self, client_for, annotator, lead):
        ApiToken.issue(lead, "theirs")
        old, _ = ApiToken.issue(annotator, "old")
        old.revoke()
        client = client_for(annotator)

        listed = client.get(TOKENS).json()["results"]

        assert [(t["name"], t["revoked_at"] is not None) for t in listed] == [("tests", False), ("old", True)]

    def test_someone_elses_token_cannot_be_revoked(self, client_for, annotator, lead):
        theirs, _ = ApiToken.issue(lead, "theirs")

        assert client_for(annotator).delete(f"{TOKENS}{theirs.pk}/").status_code == 404
        theirs.refresh_from_db()
        assert theirs.revoked_at is None

    def test_revoking_twice_keeps_the_first_time(self, client_for, annotator):
        token, _ = ApiToken.issue(annotator, "bot")
        client = client_for(annotator)
        client.delete(f"{TOKENS}{token.pk}/")
        token.refresh_from_db()
        first = token.revoked_at

        assert client.delete(f"{TOKENS}{token.pk}/").status_code == 204
        token.refresh_from_db()
        assert token.revoked_at == first


class TestLogin:
    def test_username_and_password_give_a_working_token(self, annotator):
        response = APIClient().post(LOGIN, {"username": "annotator", "password": PASSWORD, "name": "cli"})

        assert response.status_code == 201
        assert response.json()["name"] == "cli"
        assert bearer(response.json()["token"]).get(ME).json()["username"] == "annotator"

    def test_a_wrong_password_is_400_and_makes_no_token(self, annotator):
        response = APIClient().post(LOGIN, {"username": "annotator", "password": "wrong"})

        assert response.status_code == 400
        assert response.json() == {"detail": "Wrong username or password."}
        assert not ApiToken.objects.exists()

    def test_an_inactive_user_gets_no_token(self, annotator):
        annotator.is_active = False
        annotator.save()

        assert APIClient().post(LOGIN, {"username": "annotator", "password": PASSWORD}).status_code == 400

    def test_logins_are_throttled_after_the_limit(self, annotator, throttle_rates):
        throttle_rates("login", "3/min")
        client = APIClient()

        codes = [client.post(LOGIN, {"username": "annotator", "password": "wrong"}).status_code for _ in range(3)]
        refused = client.post(LOGIN, {"username": "annotator", "password": PASSWORD})

        assert codes == [400, 400, 400]
        assert refused.status_code == 429
        assert int(refused.headers["Retry-After"]) > 0
        assert not ApiToken.objects.exists()

    def test_a_bad_rate_stops_startup_naming_the_variable(self, tmp_path):
        env = {"PATH": os.environ["PATH"], "DATABASE_URL": f"sqlite:///{tmp_path}/db.sqlite3"}
        result = subprocess.run(
            [sys.executable, "manage.py", "check"],
            cwd=settings.BASE_DIR,
            env={**env, "ARBITER_THROTTLE_LOGIN": "10/fortnight"},
            capture_output=True,
            text=True,
            timeout=120,
        )

        assert result.returncode != 0
        assert "ARBITER_THROTTLE_LOGIN='10/fortnight' is not a rate" in result.stderr

    def test_a_made_up_forwarded_for_does_not_reset_the_throttle(self, annotator, throttle_rates):
        throttle_rates("login", "2/min")
        client = APIClient()
        for n in range(2):
            client.post(LOGIN, {"username": "annotator", "password": "wrong"}, HTTP_X_FORWARDED_FOR=f"10.0.0.{n}")

        refused = client.post(LOGIN, {"username": "annotator", "password": "x"}, HTTP_X_FORWARDED_FOR="10.0.0.9")

        assert refused.status_code == 429


class TestTokensPage:
    def test_anonymous_is_sent_to_log_in(self, client, db):
        assert client.get(reverse("api_tokens")).status_code == 302

    def test_the_navigation_links_to_it_once_logged_in(self, client, annotator):
        link = f'href="{reverse("api_tokens")}"'
        assert link not in client.get(reverse("login")).content.decode()
        client.force_login(annotator)

        assert link in client.get(reverse("home")).content.decode()

    def test_making_a_token_redirects_shows_it_once_and_a_reload_makes_no_second_one(self, client, annotator):
        client.force_login(annotator)

        made = client.post(reverse("api_tokens"), {"name": "notebook"})
        assert made.status_code == 302 and made["Location"] == reverse("api_tokens")
        shown = client.get(reverse("api_tokens"))
        plaintext = re.search(r'<code class="token">([^<]+)</code>', shown.content.decode()).group(1)

        assert "no-store" in shown.headers["Cache-Control"] and "Your new token “notebook”" in shown.content.decode()
        assert bearer(plaintext).get(ME).status_code == 200
        again = client.get(reverse("api_tokens")).content.decode()  # the reload
        assert plaintext not in again and 'class="token"' not in again
        assert "notebook" in again and ApiToken.objects.get().masked in again  # .get(): still the one token

    def test_a_blank_name_is_refused(self, client, annotator):
        client.force_login(annotator)

        response = client.post(reverse("api_tokens"), {"name": ""})

        assert response.status_code == 400
        assert 'class="errorlist"' in response.content.decode()
        assert not ApiToken.objects.exists()

    def test_revoking_from_the_page(self, client, annotator):
        token, plaintext = ApiToken.issue(annotator, "notebook")
        client.force_login(annotator)

        response = client.post(reverse("revoke_api_token", args=[token.pk]))

        assert response.status_code == 302
        assert bearer(plaintext).get(ME).status_code == 401
        assert "Revoked" in client.get(reverse("api_tokens")).content.decode()

    def test_someone_elses_token_is_404_on_the_page(self, client, annotator, lead):
        theirs, _ = ApiToken.issue(lead, "theirs")
        client.force_login(annotator)

        assert client.post(reverse("revoke_api_token", args=[theirs.pk])).status_code == 404
        assert client.get(reverse("api_tokens")).content.decode().count("theirs") == 0
