"""Every list endpoint reads a page in a fixed number of queries, however many rows the page holds."""

import itertools

from django.db import connection
from django.test.utils import CaptureQueriesContext

from annotate.models import ApiToken, DatasetSnapshot, Membership, Project
from models_registry.models import ModelVersion
from training.rounds import launch_round

P = "/api/v1/projects/helpfulness"
LISTS = [
    "/api/v1/me/",  # its memberships
    "/api/v1/tokens/",
    "/api/v1/projects/",
    f"{P}/stats/",  # its live leases and annotators
    f"{P}/prompts/",
    f"{P}/responses/",
    f"{P}/annotations/",
    f"{P}/my-work/",  # the revisions, the task's positions and the lease's shown order
    f"{P}/exports/",
    f"{P}/rounds/",
    f"{P}/models/",
    f"{P}/rounds/1/",  # the versions it registered
]
_numbers = itertools.count()


def add_rows(project, lead, make_user, make_task) -> None:
    """One more row of everything the lists show, each pointing at all it can (a parent, a round, a base)."""
    n = next(_numbers)
    ApiToken.issue(lead, f"token {n}")
    Membership.objects.create(
        project=Project.objects.create(name=f"Project {n}", slug=f"project-{n}"), user=lead, role=Membership.Role.LEAD
    )
    annotator = make_user(f"annotator-{n}")
    Membership.objects.create(project=project, user=annotator)
    make_task(project, "pairwise", required=1)
    make_task(project, "pairwise", required=1)
    project.next_assignment(annotator).submit({"choice": "a"}, user=annotator)
    project.next_assignment(annotator)  # a live lease, for the stats
    make_task(project, "pairwise", required=2)  # an answer of the lead's, changed, for my-work
    project.next_assignment(lead).submit({"choice": "a"}, user=lead).change({"choice": "b"}, user=lead)
    DatasetSnapshot.objects.create(project=project, kind="pairs", created_by=lead)
    parent = ModelVersion.objects.filter(project=project, kind="policy").first()
    launch_round(project, method="dpo", base=f"policy-v{parent.version}" if parent else "tiny/base", user=lead)
    ModelVersion.register(
        project=project,
        kind="policy",
        base_model="tiny/base",
        parent=parent,
        training_round=project.training_rounds.get(number=1),
    )


def query_counts(client) -> dict[str, int]:
    client.get("/api/v1/me/")  # the token's first use writes last_used_at
    counts = {}
    for path in LISTS:
        with CaptureQueriesContext(connection) as queries:
            response = client.get(path)
        assert response.status_code == 200, (path, response.content)
        counts[path] = len(queries)
    return counts


def test_list_endpoints_read_in_a_constant_number_of_queries(client_for, project, lead, make_user, make_task, settings):
    settings.ARBITER_MAX_ACTIVE_ROUNDS = 10  # four rounds stay queued
    client = client_for(lead)
    add_rows(project, lead, make_user, make_task)
    one = query_counts(client)
    for _ in range(3):
        add_rows(project, lead, make_user, make_task)

    four = query_counts(client)

    assert four == one, {path: (one[path], four[path]) for path in LISTS if one[path] != four[path]}
