"""Every page carries a strict Content-Security-Policy, and no script can read the CSRF cookie.

tests/browser/test_every_page_under_csp.py walks the pages in Chromium and checks that nothing they need breaks.
"""

import pytest
from django.http import HttpResponse
from django.test import Client

pytestmark = pytest.mark.django_db


def directives(header: str) -> dict[str, list[str]]:
    return {name: sources for name, *sources in (part.split() for part in header.split(";") if part.strip())}


@pytest.mark.parametrize(
    "url, who",
    [
        ("/login/", "anonymous"),
        ("/", "lead"),
        ("/p/helpfulness/annotate/", "lead"),
        ("/admin/", "lead"),
        ("/api/docs/", "anonymous"),
        ("/api/v1/projects/", "lead"),
    ],
)
def test_every_response_sends_the_policy(client, lead, url, who):
    if who == "lead":
        client.force_login(lead)
    response = client.get(url)

    assert response.status_code == 200
    policy_ = directives(response["Content-Security-Policy"])
    assert policy_["default-src"] == ["'self'"]
    assert policy_["script-src"] == ["'self'"]
    assert policy_["style-src"] == ["'self'"]
    assert policy_["object-src"] == ["'none'"]
    assert policy_["frame-ancestors"] == ["'none'"]
    assert policy_["base-uri"] == ["'none'"]
    assert policy_["form-action"] == ["'self'"]
    assert "Content-Security-Policy-Report-Only" not in response


def test_report_only_mode_reports_the_same_policy_and_enforces_none(client, settings):
    enforced = client.get("/login/")["Content-Security-Policy"]
    settings.SECURE_CSP_REPORT_ONLY, settings.SECURE_CSP = settings.SECURE_CSP, {}

    response = Client().get("/login/")

    assert "Content-Security-Policy" not in response
    assert response["Content-Security-Policy-Report-Only"] == enforced


def test_a_header_the_view_set_itself_is_kept(rf):
    from arbiter.middleware import ContentSecurityPolicyMiddleware

    own = "default-src 'none'"
    response = ContentSecurityPolicyMiddleware(lambda request: HttpResponse(headers={"Content-Security-Policy": own}))(
        rf.get("/")
    )

    assert response["Content-Security-Policy"] == own


def test_policy_joins_sources_and_bare_directives():
    from arbiter.middleware import policy

    assert policy({"default-src": ["'self'"], "img-src": ["'self'", "data:"], "upgrade-insecure-requests": True}) == (
        "default-src 'self'; img-src 'self' data:; upgrade-insecure-requests"
    )
    assert policy({"script-src": ["'self'"], "report-uri": []}) == "script-src 'self'"


def test_csrf_cookie_is_http_only(client):
    response = client.get("/login/")

    assert response.cookies["csrftoken"]["httponly"] is True


def test_api_docs_serve_their_init_script_as_a_file(client):
    page = client.get("/api/docs/").content.decode()

    assert "<style" not in page
    scripts = [part.split(">", 1)[0] for part in page.split("<script")[1:]]
    assert scripts and all(" src=" in attributes for attributes in scripts), scripts
    assert 'src="/api/docs/?script="' in page

    script = client.get("/api/docs/?script=")
    assert script["Content-Type"].startswith("application/javascript")
    assert "SwaggerUIBundle(" in script.content.decode()
    assert '"validatorUrl": null' in script.content.decode()  # no image from validator.swagger.io


def test_report_only_mode_and_report_uri_come_from_the_environment(tmp_path):
    from tests.test_settings import manage

    env = {"DATABASE_URL": f"sqlite:///{tmp_path}/a.sqlite3", "ARBITER_VAR_DIR": str(tmp_path)}
    show = "from django.conf import settings as s; print(s.SECURE_CSP, s.SECURE_CSP_REPORT_ONLY['report-uri'])"
    report_only = {"ARBITER_CSP_REPORT_ONLY": "true", "ARBITER_CSP_REPORT_URI": "https://reports.example/csp"}

    result = manage("shell", "--no-imports", "-c", show, env={**env, **report_only})

    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["{}", "['https://reports.example/csp']"]
