"""Submitting is idempotent: a double click, a retry after a timeout or two racing requests store one annotation."""

import threading
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from annotate.models import Annotation, Assignment, LeaseError, Membership, Prompt, Response, Task, TaskResponse


@pytest.fixture
def task(project):
    prompt = Prompt.objects.create(project=project, external_id="p1", messages=[{"role": "user", "content": "Hi?"}])
    task = Task.objects.create(project=project, prompt=prompt, kind="pairwise", required_annotations=2)
    for position, text in enumerate(["Hello!", "Go away."]):
        response = Response.objects.create(prompt=prompt, content=text)
        TaskResponse.objects.create(task=task, response=response, position=position)
    return task


@pytest.fixture
def second_annotator(project, make_user):
    user = make_user("second")
    Membership.objects.create(project=project, user=user)
    return user


ANSWER = {"choice": "a", "strength": 2, "comment": "clearer"}


def test_double_click_stores_one_annotation_and_succeeds_twice(project, task, annotator):
    lease = project.next_assignment(annotator)

    first = lease.submit(ANSWER, user=annotator)
    second = lease.submit(ANSWER, user=annotator)

    assert second.pk == first.pk
    assert Annotation.objects.filter(task=task).count() == 1
    task.refresh_from_db()
    assert task.annotation_count == 1


def test_retry_after_a_timeout_with_a_freshly_loaded_lease_returns_the_first_annotation(project, task, annotator):
    # The first request committed but its reply was lost; the retry loads the lease again, as a view does.
    first = project.next_assignment(annotator).submit(ANSWER, user=annotator)

    retried = Assignment.objects.get(task=task, annotator=annotator).submit(ANSWER, user=annotator)

    assert retried.pk == first.pk
    assert Annotation.objects.filter(task=task).count() == 1
    task.refresh_from_db()
    assert task.annotation_count == 1


def test_retry_after_the_lease_expired_and_the_task_filled_still_succeeds(project, task, annotator, second_annotator):
    lease = project.next_assignment(annotator)
    first = lease.submit(ANSWER, user=annotator)
    Assignment.objects.filter(pk=lease.pk).update(expires_at=timezone.now() - timedelta(minutes=1))
    project.next_assignment(second_annotator).submit(ANSWER, user=second_annotator)
    task.refresh_from_db()
    assert task.status == Task.Status.COMPLETE

    retried = Assignment.objects.get(pk=lease.pk).submit(ANSWER, user=annotator)

    assert retried.pk == first.pk
    task.refresh_from_db()
    assert (task.annotation_count, Annotation.objects.filter(task=task).count()) == (2, 2)


@pytest.mark.parametrize(
    "different", [{"choice": "b", "strength": 1}, {**ANSWER, "strength": 1}, {**ANSWER, "comment": "other"}]
)
def test_a_different_second_submission_is_refused_and_the_first_answer_stands(project, task, annotator, different):
    lease = project.next_assignment(annotator)
    lease.submit(ANSWER, user=annotator)

    with pytest.raises(LeaseError, match="already answered this task differently"):
        lease.submit(different, user=annotator)

    annotation = Annotation.objects.get(task=task)
    assert (annotation.choice, annotation.strength, annotation.comment) == ("a", 2, "clearer")


def test_the_same_answer_in_another_spelling_is_the_same_answer(project, task, annotator):
    lease = project.next_assignment(annotator)
    first = lease.submit({"choice": "a", "strength": 1}, user=annotator)

    assert lease.submit({"choice": "a", "strength": "1", "both_bad": "false", "comment": ""}, user=annotator) == first


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_concurrent_submissions_of_one_lease_store_one_annotation_and_all_succeed(project, annotator, make_user):
    prompt = Prompt.objects.create(project=project, external_id="race", messages=[{"role": "user", "content": "?"}])
    response = Response.objects.create(prompt=prompt, content="Hello!")
    rounds, racers = 10, 4
    for _ in range(rounds):
        task = Task.objects.create(project=project, prompt=prompt, kind="rating", required_annotations=2)
        TaskResponse.objects.create(task=task, response=response, position=0)
    project.max_open_leases = rounds
    leases = [project.next_assignment(annotator, reuse_lease=False) for _ in range(rounds)]
    results: dict[int, list[int]] = {lease.pk: [] for lease in leases}

    for lease in leases:
        start = threading.Barrier(racers)

        def submit(lease_id: int = lease.pk, start: threading.Barrier = start) -> None:
            try:
                mine = Assignment.objects.get(pk=lease_id)  # each request loads the lease itself
                start.wait()
                results[lease_id].append(mine.submit({"score": 3}, user=annotator).pk)
            finally:
                connection.close()

        threads = [threading.Thread(target=submit) for _ in range(racers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    for lease in leases:
        annotations = list(Annotation.objects.filter(assignment=lease).values_list("pk", flat=True))
        assert len(annotations) == 1
        assert results[lease.pk] == annotations * racers  # every request answered success, with the one row
        assert Task.objects.get(pk=lease.task_id).annotation_count == 1
