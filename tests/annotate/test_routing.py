"""Hybrid labelling: what the project judge's answer does to its task (annotate/routing.py), with the simulated judge
of known accuracy and with verdicts written by hand."""

import pytest
from django.utils import timezone

from annotate import routing
from annotate.judges import Verdict, record
from annotate.models import Annotation, Judge, Project, Task
from annotate.simulation import simulate_judge
from models_registry.measures import wilson_interval
from tests.annotate.test_simulate_judge import make_tasks

Z_999 = 3.29  # a 99.9 % interval: a test that draws hundreds of tasks fails by chance once in a thousand runs


@pytest.fixture
def judge(project):
    judge = Judge.create(project, "sim", kind=Judge.Kind.LLM, endpoint="http://judge.invalid/v1", model_name="sim")
    Project.objects.filter(pk=project.pk).update(judge=judge, routing=True, routing_audit_share=0)
    project.refresh_from_db()
    judge.project = project
    return judge


def verdict(task, *, confidence, consistent=True, choice="a"):
    return Verdict(
        task_id=task.pk,
        answer={"choice": choice, "strength": 1, "both_bad": False},
        confidence=confidence,
        consistent=consistent,
        detail={"attempts": ["{}"]},
    )


def test_confident_consistent_answers_take_the_judges_label_and_the_rest_go_to_people_first(project, judge):
    tasks = make_tasks(project, 200)
    simulate_judge(judge, tasks, accuracy=0.8, seed=1, rule="word:cat", inconsistency=0.2)
    judged = Annotation.objects.filter(annotator=judge.user).select_related("task")
    routed = {routed: 0 for routed in Task.Routed.values}
    for annotation in judged:
        task = annotation.task
        routed[task.routed] += 1
        if annotation.confidence >= 0.8 and annotation.consistent:
            assert (task.routed, task.status, task.priority) == (Task.Routed.JUDGE, Task.Status.COMPLETE, 0)
        else:
            assert (task.routed, task.status, task.priority) == (Task.Routed.PEOPLE_FIRST, Task.Status.OPEN, 1)
    # confidence is uniform on [0.6, 1]: half at 0.8 or above, 80 % of those consistent
    assert 0.3 <= routed[Task.Routed.JUDGE] / 200 <= 0.5
    assert routed[Task.Routed.AUDIT] == 0
    project.refresh_from_db()
    assert (project.task_count, project.complete_task_count) == (200, routed[Task.Routed.JUDGE])
    assert project.recount_tasks() is None  # the counters moved with the tasks: nothing to repair


def test_the_audit_share_falls_within_its_interval_and_each_task_is_drawn_the_same_every_time(project, judge):
    Project.objects.filter(pk=project.pk).update(routing_audit_share=0.3)
    judge.project.refresh_from_db()
    tasks = make_tasks(project, 400)
    # Accuracy 0.9: every confidence in [0.8, 1], so every consistent verdict is confident.
    simulate_judge(judge, tasks, accuracy=0.9, seed=2, rule="word:cat", inconsistency=0)
    routed = dict(Task.objects.values_list("pk", "routed"))
    audited = [pk for pk, decision in routed.items() if decision == Task.Routed.AUDIT]
    assert set(routed.values()) == {Task.Routed.AUDIT, Task.Routed.JUDGE}
    low, high = wilson_interval(len(audited) / 400, 400, z=Z_999)
    assert low <= 0.3 <= high
    # Audited tasks stay open for people, as before; the draw is the task's own, whatever records it.
    assert set(Task.objects.filter(pk__in=audited).values_list("status", "priority")) == {(Task.Status.OPEN, 0)}
    again = [task for task in Task.objects.select_related("project") if routing.audited(task)]
    assert sorted(task.pk for task in again) == sorted(audited)


def test_an_inconsistent_verdict_goes_to_people_first_however_confident(project, judge):
    sure, unsure = make_tasks(project, 2)
    record(judge, verdict(sure, confidence=0.99, consistent=False))
    record(judge, verdict(unsure, confidence=0.79))
    assert set(Task.objects.values_list("routed", "status", "priority")) == {
        (Task.Routed.PEOPLE_FIRST, Task.Status.OPEN, 1)
    }


def test_a_rating_with_no_consistency_check_is_routed_by_its_confidence(project, judge):
    task = make_tasks(project, 1, kind="rating")[0]
    record(judge, Verdict(task.pk, {"score": 4, "labels": []}, confidence=0.8, consistent=None))
    task.refresh_from_db()
    assert (task.routed, task.status) == (Task.Routed.JUDGE, Task.Status.COMPLETE)


def test_people_first_tasks_come_ahead_of_their_priority_but_not_of_higher_ones(project, judge, annotator):
    older, unsure, later, eval_task = make_tasks(project, 4)
    Task.objects.filter(pk=eval_task.pk).update(priority=10)
    record(judge, verdict(unsure, confidence=0.2))
    queue = list(project.available_tasks(annotator, timezone.now()).values_list("pk", flat=True))
    assert queue == [eval_task.pk, unsure.pk, older.pk, later.pk]
    assert project.next_assignment(annotator).task_id == eval_task.pk
    assert project.next_assignment(annotator, reuse_lease=False).task_id == unsure.pk


def test_a_task_that_took_the_judges_label_is_given_to_no_one_and_stays_complete_on_recount(project, judge, annotator):
    task = make_tasks(project, 1)[0]
    record(judge, verdict(task, confidence=0.95))
    assert project.next_assignment(annotator) is None
    task.refresh_from_db()
    task.refresh_progress()  # what an edit or delete elsewhere runs: the judge's label still completes it
    assert task.status == Task.Status.COMPLETE and task.annotation_count == 0


def test_nothing_is_routed_without_routing_or_by_another_judge(project, judge):
    other = Judge.create(project, "other", kind=Judge.Kind.LLM, endpoint="http://judge.invalid/v1", model_name="o")
    first, second = make_tasks(project, 2)
    record(other, verdict(first, confidence=0.99))
    Project.objects.filter(pk=project.pk).update(routing=False)
    judge.project.refresh_from_db()
    record(judge, verdict(second, confidence=0.99))
    assert set(Task.objects.values_list("routed", "status")) == {("", Task.Status.OPEN)}


def test_a_task_people_completed_is_left_as_it_is(project, judge):
    task = make_tasks(project, 1)[0]
    Task.objects.filter(pk=task.pk).update(status=Task.Status.COMPLETE)
    record(judge, verdict(task, confidence=0.1))
    task.refresh_from_db()
    assert (task.routed, task.status, task.priority) == ("", Task.Status.COMPLETE, 0)
