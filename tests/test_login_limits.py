"""Failed logins are limited per account and per address on every login path, and the lockout expires.

django-axes counts them in the database (settings.AXES_*); these tests check the behaviour a guesser meets.
"""

from datetime import timedelta

import pytest
from axes.models import AccessAttempt
from django.urls import reverse
from rest_framework.test import APIClient

from tests.conftest import PASSWORD

pytestmark = pytest.mark.django_db

LIMIT = 3


@pytest.fixture(autouse=True)
def small_limit(settings):
    settings.AXES_FAILURE_LIMIT = LIMIT
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # fast; the users are made after


def html_login(client, username, password, path="login", address="10.0.0.1"):
    return client.post(reverse(path), {"username": username, "password": password}, REMOTE_ADDR=address)


def api_login(username, password, address="10.0.0.1"):
    body = {"username": username, "password": password, "name": "bot"}
    return APIClient().post(reverse("api:login"), body, REMOTE_ADDR=address)


def logged_in(client):
    return "_auth_user_id" in client.session


class TestLoginPage:
    def test_the_right_password_is_refused_after_the_limit_of_wrong_ones(self, client, annotator):
        for _ in range(LIMIT - 1):
            assert html_login(client, "annotator", "wrong").status_code == 200  # the form again, with its error
        assert html_login(client, "annotator", "wrong").status_code == 429  # the failure that reaches the limit
        response = html_login(client, "annotator", PASSWORD)
        assert response.status_code == 429
        assert "Too many failed logins" in response.content.decode()
        assert int(response["Retry-After"]) == 15 * 60
        assert not logged_in(client)

    def test_below_the_limit_the_right_password_logs_in(self, client, annotator):
        for _ in range(LIMIT - 1):
            html_login(client, "annotator", "wrong")
        assert html_login(client, "annotator", PASSWORD).status_code == 302
        assert logged_in(client)

    def test_the_lockout_expires(self, client, annotator, settings):
        for _ in range(LIMIT):
            html_login(client, "annotator", "wrong")
        assert html_login(client, "annotator", PASSWORD).status_code == 429
        # Attempts during the lockout are not counted: the lockout ends a cool-off after the last counted failure.
        AccessAttempt.objects.update(attempt_time=AccessAttempt.objects.get().attempt_time - settings.AXES_COOLOFF_TIME)
        assert html_login(client, "annotator", PASSWORD).status_code == 302
        assert logged_in(client)

    def test_an_account_is_locked_whatever_address_the_guesses_come_from(self, client, annotator):
        for number in range(LIMIT):
            html_login(client, "annotator", "wrong", address=f"10.0.1.{number}")
        assert html_login(client, "annotator", PASSWORD, address="10.0.2.1").status_code == 429

    def test_an_address_is_locked_whatever_accounts_it_guesses(self, client, annotator, lead):
        for name in ("lead", "someone", "nobody-at-all"):
            html_login(client, name, "wrong", address="10.0.3.1")
        assert html_login(client, "annotator", PASSWORD, address="10.0.3.1").status_code == 429
        # The accounts themselves are not locked from elsewhere: only one failure each.
        assert html_login(client, "lead", PASSWORD, address="10.0.3.2").status_code == 302


class TestAdminLogin:
    def test_the_admin_login_is_limited_too(self, client, lead):
        for _ in range(LIMIT - 1):
            assert html_login(client, "lead", "wrong", path="admin:login").status_code == 200
        html_login(client, "lead", "wrong", path="admin:login")
        assert html_login(client, "lead", PASSWORD, path="admin:login").status_code == 429
        assert not logged_in(client)


class TestApiLogin:
    def test_the_token_endpoint_answers_429_json_once_locked(self, annotator):
        for _ in range(LIMIT - 1):
            assert api_login("annotator", "wrong").status_code == 400
        assert api_login("annotator", "wrong").status_code == 429
        response = api_login("annotator", PASSWORD)
        assert response.status_code == 429
        assert "Too many failed logins" in response.json()["detail"]
        assert int(response["Retry-After"]) == 15 * 60
        assert not annotator.api_tokens.exists()

    def test_failures_on_one_path_count_on_the_others(self, client, annotator):
        for _ in range(LIMIT - 1):
            api_login("annotator", "wrong")
        html_login(client, "annotator", "wrong", path="admin:login")
        assert html_login(client, "annotator", PASSWORD).status_code == 429


def test_cool_off_is_the_configured_minutes(settings):
    assert timedelta(minutes=15) == settings.AXES_COOLOFF_TIME
