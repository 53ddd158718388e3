"""Many annotators working the queue at once on PostgreSQL: never more than k annotations, nothing lost."""

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from io import BytesIO

import pytest
from django.db import connection, transaction
from django.db.models import Count, F, Q
from django.utils.timezone import now

from annotate.importing import import_file
from annotate.models import Annotation, Assignment, Membership, Task

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

ANNOTATORS = 32
PROMPTS = 120  # 2 responses each: two rating tasks and one pairwise task per prompt
ANSWERS = {"rating": {"score": 4}, "pairwise": {"choice": "b", "strength": 1}}
DEADLINE_SECONDS = 90


def import_rows(project, rows):
    import_file(project, BytesIO("".join(json.dumps(row) + "\n" for row in rows).encode()))


def run_together(target, args_list):
    threads = [threading.Thread(target=target, args=args) for args in args_list]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


@contextmanager
def task_locked_elsewhere(task, seconds: float) -> Iterator[threading.Event]:
    """Another connection holds the task's row lock for `seconds`, or until the yielded event is set."""
    locked, release = threading.Event(), threading.Event()

    def hold() -> None:
        try:
            with transaction.atomic():
                Task.objects.select_for_update().get(pk=task.pk)
                locked.set()
                release.wait(seconds)
        finally:
            connection.close()

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert locked.wait(10)
        yield release
    finally:
        release.set()
        holder.join()


def test_annotators_working_at_once_fill_every_task_exactly_to_k(project, django_user_model):
    import_rows(
        project, [{"id": f"p{i}", "prompt": f"Q{i}?", "responses": [f"yes {i}", f"no {i}"]} for i in range(PROMPTS)]
    )
    assert project.overlap == 2
    # No passwords: hashing 32 of them would take longer than the annotating.
    users = django_user_model.objects.bulk_create(django_user_model(username=f"a{i}") for i in range(ANNOTATORS))
    Membership.objects.bulk_create(Membership(project=project, user=user) for user in users)
    start = threading.Barrier(ANNOTATORS)
    deadline = time.monotonic() + DEADLINE_SECONDS
    submitted: list[tuple[int, int, int]] = []  # (annotator, task, annotation) of every submit that succeeded

    def work(user) -> None:
        try:
            start.wait()
            while time.monotonic() < deadline:
                lease = project.next_assignment(user)
                if lease is not None:
                    annotation = lease.submit(ANSWERS[lease.task.kind], user=user)
                    submitted.append((user.pk, lease.task_id, annotation.pk))
                    continue
                # None means nothing is free for this user now: every open task they never had is full of
                # live leases held by others (never merely locked: the queue waits for a locked task).
                # annotations + live leases never falls here (no skips, no expiry), so checking after the
                # fact is sound.
                unhad = Task.objects.filter(project=project, status=Task.Status.OPEN).exclude(
                    assignments__annotator=user
                )
                if not unhad.exists():
                    return
                live = Count("assignments", filter=Q(assignments__status="active", assignments__expires_at__gt=now()))
                for task in unhad.annotate(live=live):
                    assert task.annotation_count + task.live >= task.required_annotations, (user, task)
                time.sleep(0.01)
            raise AssertionError(f"{user} still found open tasks after {DEADLINE_SECONDS} s")
        finally:
            connection.close()

    began = time.monotonic()
    run_together(work, [(user,) for user in users])
    print(f"\n{len(submitted)} submissions by {ANNOTATORS} annotators in {time.monotonic() - began:.1f} s")

    tasks = Task.objects.filter(project=project).annotate(real=Count("annotations"))
    assert tasks.count() == PROMPTS * 3
    assert not tasks.filter(real__gt=2).exists()
    assert not tasks.exclude(status=Task.Status.COMPLETE).exists()
    assert not tasks.exclude(annotation_count=F("real")).exists()
    assert set(tasks.values_list("real", flat=True)) == {2}
    pairs = list(Annotation.objects.values_list("annotator", "task"))
    assert len(pairs) == len(set(pairs)), "someone annotated a task twice"
    assert set(Annotation.objects.values_list("annotator", "task", "pk")) == set(submitted)
    assert len(submitted) == PROMPTS * 3 * 2
    assert set(Assignment.objects.values_list("status", flat=True)) == {Assignment.Status.SUBMITTED}
    assert len({user for user, _, _ in submitted}) > 1


def test_a_task_locked_by_another_request_is_passed_over_not_waited_for(project, annotator, make_user):
    import_rows(project, [{"id": f"p{i}", "prompt": f"Question {i}?", "response": "yes"} for i in range(2)])
    first, second = Task.objects.filter(project=project).order_by("id")
    other = make_user("other")
    Membership.objects.create(project=project, user=other)
    with task_locked_elsewhere(first, seconds=10) as release:
        began = time.monotonic()
        lease = project.next_assignment(annotator)
        waited = time.monotonic() - began
        release.set()

    assert lease.task == second
    assert waited < 2
    assert project.next_assignment(other).task == first


def test_one_users_simultaneous_requests_respect_the_open_lease_cap(project, annotator):
    import_rows(project, [{"id": f"p{i}", "prompt": f"Question {i}?", "response": "yes"} for i in range(20)])
    project.max_open_leases = 3
    start = threading.Barrier(8)
    given: list[int | None] = []

    def request(reuse_lease: bool) -> None:
        try:
            start.wait()
            lease = project.next_assignment(annotator, reuse_lease=reuse_lease)
            given.append(lease and lease.pk)
        finally:
            connection.close()

    run_together(request, [(False,)] * 8)  # a client working on several tasks at once
    assert Assignment.objects.live().filter(annotator=annotator).count() == 3
    assert given.count(None) == 5
    assert sorted(pk for pk in given if pk) == sorted(Assignment.objects.values_list("pk", flat=True))

    given.clear()
    run_together(request, [(True,)] * 8)  # two tabs, a retrying script
    assert Assignment.objects.filter(annotator=annotator).count() == 3
    oldest = Assignment.objects.order_by("leased_at", "pk").first()
    assert set(given) == {oldest.pk}


def test_when_every_candidate_is_locked_the_queue_waits_rather_than_report_nothing_left(project, annotator):
    import_rows(project, [{"id": "p0", "prompt": "Question?", "response": "yes"}])
    [only] = Task.objects.filter(project=project)
    with task_locked_elsewhere(only, seconds=0.5):  # a request in flight, e.g. someone else's submit
        began = time.monotonic()
        lease = project.next_assignment(annotator)
        waited = time.monotonic() - began

    assert lease is not None and lease.task_id == only.pk
    assert waited >= 0.3


def test_gold_tasks_mixed_in_leave_the_open_tasks_filled_exactly_to_k(project, django_user_model):
    import_rows(project, [{"id": f"p{i}", "prompt": f"Q{i}?", "response": f"yes {i}"} for i in range(40)])
    import_rows(
        project, [{"id": f"g{i}", "prompt": f"G{i}?", "response": f"gold {i}", "gold_score": 3} for i in range(8)]
    )
    project.gold_rate = 2  # half the leases, while gold tasks remain for the annotator
    users = django_user_model.objects.bulk_create(django_user_model(username=f"a{i}") for i in range(12))
    Membership.objects.bulk_create(Membership(project=project, user=user) for user in users)
    start = threading.Barrier(len(users))

    def work(user) -> None:
        try:
            start.wait()
            while (lease := project.next_assignment(user)) is not None:
                lease.submit(ANSWERS[lease.task.kind], user=user)
        finally:
            connection.close()

    run_together(work, [(user,) for user in users])

    tasks = Task.objects.filter(project=project).annotate(
        human=Count("annotations", filter=Q(annotations__source="human"))
    )
    open_tasks = tasks.exclude(status=Task.Status.GOLD)
    assert set(open_tasks.values_list("status", "human")) == {(Task.Status.COMPLETE, 2)}
    assert Annotation.objects.filter(task__status=Task.Status.GOLD, source="human").exists()
    pairs = list(Annotation.objects.exclude(annotator=None).values_list("annotator", "task"))
    assert len(pairs) == len(set(pairs)), "someone was given a task twice"
    project.refresh_from_db()
    assert (project.task_count, project.complete_task_count) == (40, 40)
