"""The OpenAPI schema: valid, served with docs that load nothing from a CDN, and true to the API.

The last test has schemathesis generate requests for every operation in the schema (valid ones and
invalid ones) and send them, as a lead with a bearer token, to the WSGI app over a project with data: no
response may be a 5xx, and every response must have a status, content type, headers and body that the
schema documents for it. Examples per operation are kept few, so the run stays well under a minute.
"""

import hypothesis
import pytest
import schemathesis
from django.contrib.staticfiles import finders
from django.core.files.base import ContentFile
from django.core.management import call_command
from django.core.signals import request_finished, request_started
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from annotate import judges
from annotate.models import ApiToken, DatasetSnapshot, ImportJob, Judge
from models_registry.models import ModelVersion
from training.rounds import launch_round


def test_the_schema_is_valid_and_generates_without_warnings(tmp_path):
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(tmp_path / "schema.yaml"))


def test_every_operation_but_login_needs_the_bearer_token_or_the_session(client, db):
    schema = client.get("/api/schema/", {"format": "json"}).json()

    assert schema["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "arb_<prefix>_<secret>",
        "description": "A token from /tokens/ or POST /api/v1/auth/token/.",
    }
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            if path == "/api/v1/auth/token/":
                assert "security" not in operation or operation["security"] == [{}]
                assert "429" in operation["responses"]
            else:
                assert operation["security"] == [{"bearerAuth": []}, {"cookieAuth": []}], (method, path)
                assert "401" in operation["responses"], (method, path)


def test_documented_status_codes(client, db):
    paths = client.get("/api/schema/", {"format": "json"}).json()["paths"]

    def codes(path, method):
        return set(paths[f"/api/v1{path}"][method]["responses"])

    assert codes("/projects/{slug}/next/", "post") == {"200", "204", "400", "401", "404", "409"}
    assert codes("/projects/{slug}/assignments/{assignment_id}/submit/", "post") >= {"200", "400", "404", "409", "429"}
    assert codes("/projects/{slug}/assignments/{assignment_id}/skip/", "post") == {"204", "401", "404", "409"}
    assert codes("/projects/{slug}/import/", "post") == {"201", "202", "400", "401", "403", "404", "415"}
    assert codes("/projects/{slug}/exports/", "post") == {"202", "400", "401", "403", "404", "409", "429"}
    launches = {"201", "400", "401", "403", "404", "409", "429"}
    assert codes("/projects/{slug}/rounds/", "post") == codes("/projects/{slug}/rounds/{number}/relaunch/", "post")
    assert codes("/projects/{slug}/rounds/", "post") == launches
    assert codes("/projects/{slug}/exports/{snapshot_id}/download/", "get") == {"200", "401", "403", "404", "409"}
    assert codes("/tokens/{token_id}/", "delete") == {"204", "401", "404"}
    assert codes("/projects/{slug}/quality/", "get") == {"200", "401", "403", "404"}
    assert codes("/projects/{slug}/quality/recompute/", "post") == {"202", "401", "403", "404", "409"}
    assert codes("/projects/{slug}/judges/", "post") == {"201", "400", "401", "403", "404"}
    assert codes("/projects/{slug}/judges/{name}/runs/", "post") == {"202", "400", "401", "403", "404", "429"}
    assert codes("/projects/{slug}/judges/{name}/runs/{run_id}/cancel/", "post") == {"202", "401", "403", "404", "409"}
    for action in ("pause", "resume", "exclude", "include"):
        assert codes(f"/projects/{{slug}}/members/{{username}}/{action}/", "post") == {
            "200",
            "400",
            "401",
            "403",
            "404",
        }


def test_the_docs_page_is_served_from_static_files(client, db):
    page = client.get("/api/docs/").content.decode()

    assert "/static/drf_spectacular_sidecar/swagger-ui-dist/swagger-ui-bundle.js" in page
    assert "cdn" not in page.lower() and "unpkg" not in page
    assert finders.find("drf_spectacular_sidecar/swagger-ui-dist/swagger-ui-bundle.js")


# Fuzzing ------------------------------------------------------------------------------------------------------


class Data:
    """A project with tasks of every kind, some skipped, two leases of the lead's, a ready export, an import job,
    a spare token, a queued training round, a registered policy and a judge with a pending run."""

    def __init__(self, project, lead, annotator, make_task, client_for):
        for kind, texts in [("rating", ["x"]), ("pairwise", ["x", "y"]), ("ranking", ["x", "y", "z"])] * 2:
            make_task(project, kind, texts, required=3)
        bot = client_for(annotator)
        for _ in range(3):
            lease = bot.post("/api/v1/projects/helpfulness/next/").json()
            bot.post(lease["skip_url"])
        # One lease to skip and one to submit: a skipped lease could only ever answer a submit with 409.
        self.to_skip = project.next_assignment(lead)
        self.to_submit = project.next_assignment(lead, reuse_lease=False)
        # And an answer of the lead's to change.
        lease = project.next_assignment(lead, reuse_lease=False)
        answers = {
            "rating": {"score": 3},
            "pairwise": {"choice": "a"},
            "ranking": {"ranking": lease.task.response_ids()},
        }
        self.to_change = lease.submit(answers[lease.task.kind], user=lead)
        _, self.plaintext = ApiToken.issue(lead, "schemathesis")
        self.spare_token, _ = ApiToken.issue(lead, "spare")
        self.snapshot = DatasetSnapshot.objects.create(
            project=project, kind="pairs", status=DatasetSnapshot.Status.READY, row_count=0, sha256="0" * 64
        )
        self.snapshot.file.save("empty.jsonl", ContentFile(b""))
        self.import_job = ImportJob.objects.create(project=project, file_name="big.jsonl", created_by=lead)
        self.round = launch_round(project, method="dpo", base="tiny/base", user=lead)
        self.version = ModelVersion.register(project=project, kind="policy", base_model="tiny/base")
        self.judge = Judge.create(project, "llm", kind="llm", endpoint="http://127.0.0.1:9/v1", model_name="m")
        self.judge_run = judges.start(self.judge)


@pytest.fixture
def data(project, lead, annotator, make_task, client_for, settings, tmp_path, throttle_rates):
    settings.MEDIA_ROOT = tmp_path
    # Generous rates, so that the fuzzer reaches the views rather than the throttle.
    throttle_rates("login", "1000/min")
    throttle_rates("submit", "1000/min")
    throttle_rates("launch", "1000/min")
    throttle_rates("export", "1000/min")
    return Data(project, lead, annotator, make_task, client_for)


@pytest.fixture
def api_schema(data):
    # As Django's test client does while it serves a request: a request must not close the connection that holds
    # the test's transaction (on PostgreSQL it would). After `data`, since the test client connects them again.
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    yield schemathesis.openapi.from_wsgi("/api/schema/", get_wsgi_application())
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@hypothesis.settings(
    max_examples=15,
    deadline=None,
    phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
    suppress_health_check=list(hypothesis.HealthCheck),
)
def test_the_api_keeps_to_its_schema(case, data):
    # Made-up slugs and ids would only ever find nothing: paths point at things that exist; bodies and query
    # strings are what is fuzzed.
    pinned = {
        "slug": "helpfulness",
        "assignment_id": (data.to_skip if case.operation.path.endswith("/skip/") else data.to_submit).pk,
        "snapshot_id": data.snapshot.pk,
        "job_id": data.import_job.pk,
        "token_id": data.spare_token.pk,  # never the token the requests use
        "number": data.round.number,
        "version_id": data.version.pk,
        "annotation_id": data.to_change.pk,
        "username": "annotator",  # a member: decisions on them are made, or refused for their reason
        "name": data.judge.name,
        "run_id": data.judge_run.pk,
    }
    for name in case.path_parameters or {}:
        case.path_parameters[name] = pinned[name]

    case.call_and_validate(
        headers={"Authorization": f"Bearer {data.plaintext}"},
        checks=[
            not_a_server_error,
            status_code_conformance,
            content_type_conformance,
            response_headers_conformance,
            response_schema_conformance,
        ],
    )
