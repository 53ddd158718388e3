"""Every API endpoint × anonymous, outsider, annotator, lead and admin: the status each gets.

The rule (annotate/api.py says it too):
- anonymous: 401 everywhere, except asking for a token with a username and password (400 without good ones);
- outsider (logged in, not a member): the project does not exist for them, 404, never 403; their own things
  (me, tokens, the empty project list) answer as for anyone;
- annotator: reads the project, its stats and their own annotations, works the queue with their own leases;
  lead-only endpoints (prompts, responses, imports, exports, training rounds, model versions, quality and the
  decisions on members) answer 403, since they know the project exists;
- lead and admin (a superuser leads every project, member or not): everything;
- someone else's lease is 404 for everyone, leads and admins included: a lease is its annotator's alone;
- a token cannot make tokens (403 for every caller with one; the browser session and the password can).
Callers authenticate with a bearer token, as scripts do.
"""

import io

import pytest
from django.core.files.base import ContentFile
from django.urls import resolve
from rest_framework.test import APIClient

from annotate import api_urls, judges
from annotate.models import Assignment, DatasetSnapshot, ImportJob, Judge, Project
from models_registry.models import ModelVersion
from tests.conftest import PASSWORD
from training.rounds import launch_round

ROLES = ["anonymous", "outsider", "annotator", "lead", "admin"]
JSONL = b'{"id": "new-1", "prompt": "Hello?", "responses": ["Hi.", "Hey."]}\n'


ANSWER = {"preference": "a1"}
BASE = "tiny/base"  # a hub id: launching does not load it
NEW_JUDGE = {"name": "new", "endpoint": "http://127.0.0.1:9/v1", "model_name": "m"}


class World:
    """A project with tasks, a lease of each member's own, another annotator's lease, a ready export, an import
    job, a queued training round and a registered policy."""

    def __init__(self, project, users, make_task, client_for):
        self.project = project
        self.users = users
        for _ in range(6):
            make_task(project, "pairwise", required=5)
        self.leases = {role: project.next_assignment(user) for role, user in users.items() if role != "outsider"}
        self.others = self.leases.pop("second").pk
        self.clients = {"anonymous": APIClient(), **{role: client_for(user) for role, user in users.items()}}
        self.snapshot = DatasetSnapshot.objects.create(
            project=project,
            kind="pairs",
            status=DatasetSnapshot.Status.READY,
            row_count=0,
            sha256="e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        )
        self.snapshot.file.save("empty.jsonl", ContentFile(b""))
        self.import_job = ImportJob.objects.create(project=project, file_name="big.jsonl", created_by=users["lead"])
        self.round = launch_round(project, method="dpo", base=BASE, user=users["lead"])
        self.version = ModelVersion.register(project=project, kind="policy", base_model=BASE)
        self.judge = Judge.create(project, "llm", kind="llm", endpoint="http://127.0.0.1:9/v1", model_name="m")
        self.judge_run = judges.start(self.judge)  # pending: no worker here

    def lease_id(self, role):
        """The caller's own lease; for callers without one, the annotator's."""
        return self.leases.get(role, self.leases["annotator"]).pk

    def answer_id(self, role):
        """The caller's own answer (its lease submitted, once); for callers without one, the annotator's."""
        role = role if role in self.leases else "annotator"
        return self.leases[role].submit({"choice": "a"}, user=self.users[role]).pk

    def others_answer_id(self):
        lease = Assignment.objects.get(pk=self.others)
        return lease.submit({"choice": "a"}, user=self.users["second"]).pk

    def token_id(self, role):
        """The caller's own token; for anonymous, the annotator's."""
        return self.users.get(role, self.users["annotator"]).api_tokens.get().pk


@pytest.fixture
def world(project, lead, annotator, second_annotator, outsider, admin, make_task, client_for, tmp_path, settings):
    settings.MEDIA_ROOT = tmp_path
    users = {"outsider": outsider, "annotator": annotator, "lead": lead, "admin": admin, "second": second_annotator}
    return World(project, users, make_task, client_for)


P = "/api/v1/projects/helpfulness"
# name, method, path (from the world and the role), body, and the status for each of ROLES in order:
#                                                                       anon outsider annotator lead admin
ENDPOINTS = [
    ("me", "get", lambda w, r: "/api/v1/me/", None, (401, 200, 200, 200, 200)),
    ("login", "post", lambda w, r: "/api/v1/auth/token/", "credentials", (400, 201, 201, 201, 201)),
    ("tokens-list", "get", lambda w, r: "/api/v1/tokens/", None, (401, 200, 200, 200, 200)),
    ("tokens-create", "post", lambda w, r: "/api/v1/tokens/", {"name": "x"}, (401, 403, 403, 403, 403)),
    ("tokens-revoke", "delete", lambda w, r: f"/api/v1/tokens/{w.token_id(r)}/", None, (401, 204, 204, 204, 204)),
    ("projects", "get", lambda w, r: "/api/v1/projects/", None, (401, 200, 200, 200, 200)),
    ("project", "get", lambda w, r: f"{P}/", None, (401, 404, 200, 200, 200)),
    ("stats", "get", lambda w, r: f"{P}/stats/", None, (401, 404, 200, 200, 200)),
    ("prompts", "get", lambda w, r: f"{P}/prompts/", None, (401, 404, 403, 200, 200)),
    ("responses", "get", lambda w, r: f"{P}/responses/", None, (401, 404, 403, 200, 200)),
    ("import", "post", lambda w, r: f"{P}/import/", "file", (401, 404, 403, 201, 201)),
    ("imports-list", "get", lambda w, r: f"{P}/imports/", None, (401, 404, 403, 200, 200)),
    ("import-job", "get", lambda w, r: f"{P}/imports/{w.import_job.pk}/", None, (401, 404, 403, 200, 200)),
    ("next", "post", lambda w, r: f"{P}/next/", {}, (401, 404, 200, 200, 200)),
    ("submit", "post", lambda w, r: f"{P}/assignments/{w.lease_id(r)}/submit/", ANSWER, (401, 404, 200, 200, 200)),
    ("skip", "post", lambda w, r: f"{P}/assignments/{w.lease_id(r)}/skip/", None, (401, 404, 204, 204, 204)),
    ("submit-others", "post", lambda w, r: f"{P}/assignments/{w.others}/submit/", ANSWER, (401, 404, 404, 404, 404)),
    ("skip-others", "post", lambda w, r: f"{P}/assignments/{w.others}/skip/", None, (401, 404, 404, 404, 404)),
    ("annotations", "get", lambda w, r: f"{P}/annotations/", None, (401, 404, 200, 200, 200)),
    ("my-work", "get", lambda w, r: f"{P}/my-work/", None, (401, 404, 200, 200, 200)),
    ("change", "post", lambda w, r: f"{P}/annotations/{w.answer_id(r)}/change/", ANSWER, (401, 404, 200, 200, 200)),
    (
        "change-others",
        "post",
        lambda w, r: f"{P}/annotations/{w.others_answer_id()}/change/",
        ANSWER,
        (401, 404, 404, 404, 404),
    ),
    ("exports-list", "get", lambda w, r: f"{P}/exports/", None, (401, 404, 403, 200, 200)),
    ("exports-create", "post", lambda w, r: f"{P}/exports/", {"kind": "pairs"}, (401, 404, 403, 202, 202)),
    ("export", "get", lambda w, r: f"{P}/exports/{w.snapshot.pk}/", None, (401, 404, 403, 200, 200)),
    ("export-download", "get", lambda w, r: f"{P}/exports/{w.snapshot.pk}/download/", None, (401, 404, 403, 200, 200)),
    ("quality", "get", lambda w, r: f"{P}/quality/", None, (401, 404, 403, 200, 200)),
    ("quality-recompute", "post", lambda w, r: f"{P}/quality/recompute/", None, (401, 404, 403, 202, 202)),
    *(
        (
            f"member-{action}",
            "post",
            lambda w, r, a=action: f"{P}/members/second/{a}/",
            {"reason": "Checking."},
            (401, 404, 403, 200, 200),
        )
        for action in ("pause", "resume", "exclude", "include")
    ),  # fmt: skip
    ("member-events", "get", lambda w, r: f"{P}/member-events/", None, (401, 404, 403, 200, 200)),
    ("rounds", "get", lambda w, r: f"{P}/rounds/", None, (401, 404, 403, 200, 200)),
    ("rounds-launch", "post", lambda w, r: f"{P}/rounds/", {"method": "dpo", "base": BASE}, (401, 404, 403, 201, 201)),
    ("round", "get", lambda w, r: f"{P}/rounds/{w.round.number}/", None, (401, 404, 403, 200, 200)),
    ("round-cancel", "post", lambda w, r: f"{P}/rounds/{w.round.number}/cancel/", None, (401, 404, 403, 202, 202)),
    ("round-relaunch", "post", lambda w, r: f"{P}/rounds/{w.round.number}/relaunch/", None, (401, 404, 403, 201, 201)),
    ("models", "get", lambda w, r: f"{P}/models/", None, (401, 404, 403, 200, 200)),
    ("model", "get", lambda w, r: f"{P}/models/{w.version.pk}/", None, (401, 404, 403, 200, 200)),
    ("model-promote", "post", lambda w, r: f"{P}/models/{w.version.pk}/promote/", None, (401, 404, 403, 200, 200)),
    ("judges", "get", lambda w, r: f"{P}/judges/", None, (401, 404, 403, 200, 200)),
    ("judges-create", "post", lambda w, r: f"{P}/judges/", NEW_JUDGE, (401, 404, 403, 201, 201)),
    ("judge-runs", "get", lambda w, r: f"{P}/judges/llm/runs/", None, (401, 404, 403, 200, 200)),
    ("judge-runs-start", "post", lambda w, r: f"{P}/judges/llm/runs/", {}, (401, 404, 403, 202, 202)),
    ("judge-run", "get", lambda w, r: f"{P}/judges/llm/runs/{w.judge_run.pk}/", None, (401, 404, 403, 200, 200)),
    (
        "judge-run-cancel",
        "post",
        lambda w, r: f"{P}/judges/llm/runs/{w.judge_run.pk}/cancel/",
        None,
        (401, 404, 403, 202, 202),
    ),
    ("schema", "get", lambda w, r: "/api/schema/", None, (200, 200, 200, 200, 200)),
    ("docs", "get", lambda w, r: "/api/docs/", None, (200, 200, 200, 200, 200)),
]


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize(
    ("method", "path", "body", "expected"), [e[1:] for e in ENDPOINTS], ids=[e[0] for e in ENDPOINTS]
)
def test_permission_matrix(world, role, method, path, body, expected):
    client = world.clients[role]
    if body == "credentials":
        client, body = APIClient(), {"username": role if role != "anonymous" else "nobody", "password": PASSWORD}
    kwargs = {}
    if body == "file":
        kwargs = {"data": {"file": io.BytesIO(JSONL)}, "format": "multipart"}
    elif body is not None:
        kwargs = {"data": body}

    response = getattr(client, method)(path(world, role), **kwargs)

    assert response.status_code == expected[ROLES.index(role)], getattr(response, "data", response)


def test_the_matrix_covers_every_api_route(world):
    covered = {resolve(path(world, "lead").split("?")[0]).url_name for _, _, path, *_ in ENDPOINTS}

    assert {route.name for route in api_urls.urlpatterns} <= covered


def test_an_outsider_sees_no_projects_and_an_admin_sees_all(world):
    Project.objects.create(name="Other", slug="other")

    assert world.clients["outsider"].get("/api/v1/projects/").json()["results"] == []
    slugs = [p["slug"] for p in world.clients["admin"].get("/api/v1/projects/").json()["results"]]
    assert slugs == ["helpfulness", "other"]


def test_roles_are_reported_per_project(world):
    def role_of(who):
        return world.clients[who].get(f"{P}/").json()["role"]

    assert [role_of(who) for who in ["annotator", "lead", "admin"]] == ["annotator", "lead", "lead"]


def test_annotators_get_their_progress_but_not_the_lead_stats(world):
    annotator = world.clients["annotator"].get(f"{P}/stats/").json()
    lead = world.clients["lead"].get(f"{P}/stats/").json()

    assert annotator["lead"] is None and annotator["progress"]["total_tasks"] == 6
    assert {row["annotator"] for row in lead["lead"]["live_leases"]} == {"annotator", "lead", "admin", "second"}
