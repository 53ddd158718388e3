"""The queue's selection on a large project reads its fill order's index in order (task_queue for breadth,
task_queue_depth for depth): no scan or sort of the tasks.

Run with -s to see the plans.
"""

import json
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from annotate.importing import _insert
from annotate.models import Annotation, Assignment, Membership, Prompt, Task

pytestmark = pytest.mark.postgres

TASKS = 100_000


def plan_nodes(node):
    yield node
    for child in node.get("Plans", []):
        yield from plan_nodes(child)


def reads_tasks(node):
    return any(n.get("Relation Name") == "annotate_task" for n in plan_nodes(node))


@pytest.fixture(params=["breadth", "depth"])
def fill(request):
    return request.param


@pytest.fixture
def big_project(project, annotator, django_user_model, fill):
    """100k tasks: a third complete, some urgent, many half done; the annotator did the 2,000 at the head of the
    queue (in the project's fill order), others hold leases."""
    project.fill = fill
    project.save()
    now = timezone.now()
    prompt = Prompt.objects.create(project=project, external_id="p", messages=[{"role": "user", "content": "?"}])
    fields = [
        "project", "prompt", "kind", "required_annotations", "annotation_count", "status", "priority",
        "round_number", "created_at",
    ]  # fmt: skip
    rows = [
        (
            project.id,
            prompt.id,
            ("rating", "pairwise", "ranking")[i % 3],
            2,
            2 if i % 3 == 0 else i % 2,
            Task.Status.COMPLETE if i % 3 == 0 else Task.Status.OPEN,
            1 if i % 100 == 1 else 0,
            0,
            now,
        )
        for i in range(TASKS)
    ]
    task_ids = _insert(Task, fields, rows)
    # The annotator already went through the 2,000 tasks at the head of the queue.
    head = list(
        Task.objects.filter(project=project, status=Task.Status.OPEN)
        .order_by("-priority", "-annotation_count" if fill == "depth" else "annotation_count", "id")
        .values_list("id", flat=True)[:2000]
    )
    lease_fields = ["task", "annotator", "status", "leased_at", "expires_at", "shown_order"]
    _insert(
        Assignment,
        lease_fields,
        [
            (task_id, annotator.id, Assignment.Status.SUBMITTED, now, now + timedelta(minutes=30), [])
            for task_id in head
        ],
    )
    _insert(
        Annotation,
        ["task", "annotator", "source", "score", "labels", "choice", "both_bad", "comment", "created_at"],
        [(task_id, annotator.id, "human", 3, [], "", False, "", now) for task_id in head],
    )
    others = django_user_model.objects.bulk_create(django_user_model(username=f"other{i}") for i in range(20))
    Membership.objects.bulk_create(Membership(project=project, user=user) for user in others)
    _insert(
        Assignment,
        lease_fields,
        [
            (task_id, others[n % 20].id, Assignment.Status.ACTIVE, now, now + timedelta(minutes=30), [])
            for n, task_id in enumerate(task_ids[1::7])
        ],
    )
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE annotate_task, annotate_assignment, annotate_annotation")
    return project


@pytest.mark.parametrize("kinds", [["rating", "pairwise", "ranking"], ["pairwise"]], ids=["all-kinds", "one-kind"])
def test_selection_reads_the_queue_index_without_scanning_or_sorting_tasks(big_project, annotator, kinds, fill):
    big_project.task_kinds = kinds
    with CaptureQueriesContext(connection) as queries:
        lease = big_project.next_assignment(annotator)
    assert lease.task.kind in kinds
    [selection] = [q["sql"] for q in queries if q["sql"].endswith("SKIP LOCKED") and '"annotate_task"' in q["sql"]]

    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN (FORMAT JSON) {selection}")
        [[[plan]]] = cursor.fetchall()
        cursor.execute(f"EXPLAIN (ANALYZE, BUFFERS, TIMING OFF) {selection}")
        analyzed = "\n".join(line for [line] in cursor.fetchall())
    print(f"\n{selection}\n\n{analyzed}\n")

    nodes = list(plan_nodes(plan["Plan"]))
    index = {"breadth": "task_queue", "depth": "task_queue_depth"}[fill]
    assert any(node.get("Index Name") == index for node in nodes), json.dumps(plan, indent=1)
    assert not any(n["Node Type"] == "Seq Scan" and n.get("Relation Name") == "annotate_task" for n in nodes)
    assert not any(n["Node Type"] in ("Sort", "Incremental Sort") and reads_tasks(n) for n in nodes)
