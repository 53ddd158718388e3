"""Everything under /api/ answers JSON, errors included, and query and body values are checked as the schema says.

Clients parse the body of every answer: an HTML page (Django's 404 or 500) breaks them where they expect
{"detail": …}, and a value the schema refuses but the server quietly ignores hides a client's bug.
"""

import pytest
from django.db import OperationalError
from django.test import Client

pytestmark = pytest.mark.django_db


def assert_json_error(response, status):
    assert response.status_code == status
    assert response["Content-Type"] == "application/json"
    assert response.json()["detail"]


class TestJsonEverywhere:
    @pytest.mark.parametrize(
        "path",
        [
            "/api/v1/nothing-here/",
            "/api/v1/projects/helpfulness/rounds/abc/",  # not a number: no route matches
            "/api/v1/projects/helpfulness/exports/1/download/extra/",
            "/api/v2/projects/",
            "/api/nothing",
        ],
    )
    def test_a_path_no_route_matches_is_a_json_404(self, client_for, lead, path):
        assert_json_error(client_for(lead).get(path), 404)

    def test_an_unknown_id_is_a_json_404(self, client_for, lead):
        assert_json_error(client_for(lead).get("/api/v1/projects/helpfulness/rounds/99/"), 404)
        assert_json_error(client_for(lead).get("/api/v1/projects/no-such-project/"), 404)

    def test_pages_outside_the_api_keep_their_html_404(self, client, lead):
        client.force_login(lead)
        response = client.get("/p/no-such-project/")
        assert response.status_code == 404
        assert response["Content-Type"].startswith("text/html")

    def test_a_database_outage_is_a_json_503(self, client_for, lead, monkeypatch, settings):
        settings.DEBUG = False
        api = client_for(lead)
        api.raise_request_exception = False

        def down(*args, **kwargs):
            raise OperationalError("connection to server at 10.0.0.5 failed: Connection refused")

        monkeypatch.setattr("annotate.api._projects_with_role", down)
        response = api.get("/api/v1/projects/")
        assert_json_error(response, 503)
        assert "10.0.0.5" not in response.content.decode()  # nothing about the server's insides

    def test_an_unexpected_error_is_a_json_500(self, client_for, lead, monkeypatch, settings):
        settings.DEBUG = False
        api = client_for(lead)
        api.raise_request_exception = False
        monkeypatch.setattr("annotate.api._projects_with_role", lambda user: 1 / 0)
        assert_json_error(api.get("/api/v1/projects/"), 500)

    def test_an_error_outside_any_view_is_json_too(self, lead, monkeypatch, settings):
        # A failure in middleware (the session store, say) never reaches DRF's exception handler.
        settings.DEBUG = False
        client = Client(raise_request_exception=False)

        def broken_session(request):
            raise OperationalError("the session table is unreachable")

        monkeypatch.setattr("django.contrib.sessions.middleware.SessionMiddleware.process_request", broken_session)
        response = client.get("/api/v1/me/")
        assert response.status_code in (500, 503)
        assert response["Content-Type"] == "application/json"


class TestValuesAsTheSchemaSays:
    @pytest.mark.parametrize("value", ["null", "", "0", "-5", "ten", "1001"])
    def test_page_size_must_be_a_whole_number_from_1_to_1000(self, client_for, lead, value):
        response = client_for(lead).get("/api/v1/projects/helpfulness/prompts/", {"page_size": value})
        assert response.status_code == 400
        assert "page_size" in response.json()

    def test_a_good_page_size_pages(self, client_for, lead):
        assert client_for(lead).get("/api/v1/projects/", {"page_size": "1000"}).status_code == 200

    @pytest.mark.parametrize(
        "path, name",
        [
            ("/api/v1/projects/helpfulness/prompts/", "split"),
            ("/api/v1/projects/helpfulness/responses/", "prompt"),
            ("/api/v1/projects/helpfulness/annotations/", "task"),
            ("/api/v1/projects/helpfulness/models/", "kind"),
            ("/api/v1/projects/helpfulness/models/", "status"),
        ],
    )
    def test_an_empty_filter_value_is_refused(self, client_for, lead, path, name):
        response = client_for(lead).get(path, {name: ""})
        assert response.status_code == 400
        assert name in response.json()

    @pytest.mark.parametrize("value", [0, 1, "false", "true", None, "no"])
    def test_reuse_lease_is_a_json_boolean(self, client_for, annotator, value):
        response = client_for(annotator).post("/api/v1/projects/helpfulness/next/", {"reuse_lease": value})
        assert response.status_code == 400
        assert "reuse_lease" in response.json()

    def test_reuse_lease_false_is_accepted(self, client_for, annotator):
        response = client_for(annotator).post("/api/v1/projects/helpfulness/next/", {"reuse_lease": False})
        assert response.status_code == 204
