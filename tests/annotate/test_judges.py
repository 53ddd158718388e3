"""A judge's answers (annotate/judges.py): recorded as annotations by its own identity, validated like anyone's, once
per task; beside people's overlap unless the project counts them; over the tasks a run's scope chooses; and runs that
end, whatever happens to their worker."""

from datetime import timedelta

import pytest
from django.core.exceptions import ValidationError
from django.urls import reverse
from django.utils import timezone
from rest_framework.test import APIClient

from annotate import judges
from annotate.judges import Verdict
from annotate.models import Annotation, Judge, JudgeRun, Prompt, Response, Task, TaskResponse
from tests.conftest import PASSWORD

QUESTION = [{"role": "user", "content": "Name a prime."}]
TEXTS = ["Two.", "Seven is prime.", "Nine.", "Four, which is not prime.", "Eleven."]
A_WINS = {"choice": "a", "strength": 2, "both_bad": False}


def make_task(project, kind="pairwise", texts=("Two.", "Nine."), *, required=None, round_number=0, number=[0]):  # noqa: B006
    """A task of `kind` over fresh responses to a fresh prompt (the default list counts the prompts made)."""
    number[0] += 1
    prompt = Prompt.objects.create(project=project, external_id=f"q{number[0]}", messages=QUESTION)
    task = Task.objects.create(
        project=project,
        prompt=prompt,
        kind=kind,
        required_annotations=required or project.overlap,
        round_number=round_number,
    )
    for position, text in enumerate(texts):
        response = Response.objects.create(prompt=prompt, content=text)
        TaskResponse.objects.create(task=task, response=response, position=position)
    return task


@pytest.fixture
def judge(project):
    return Judge.create(project, "llm", kind="llm", endpoint="http://127.0.0.1:8000/v1", model_name="tiny-chat")


def counts(task):
    task.refresh_from_db()
    return task.annotation_count, task.status


def test_a_verdict_is_recorded_once_as_the_judges_annotation(judge):
    task = make_task(judge.project)
    verdict = Verdict(task.pk, A_WINS, confidence=0.9, consistent=True, detail={"attempts": ['{"choice": "A"}']})

    annotation = judges.record(judge, verdict)

    assert (annotation.annotator, annotation.source) == (judge.user, Annotation.Source.JUDGE)
    assert (annotation.choice, annotation.strength, annotation.both_bad) == ("a", 2, False)
    assert (annotation.confidence, annotation.consistent) == (0.9, True)
    assert annotation.judge_detail == {"attempts": ['{"choice": "A"}']}
    assert judges.record(judge, verdict) is None  # delivered twice: still one answer
    assert judges.record(judge, Verdict(task.pk, {"choice": "b"})) is None  # and never a second opinion
    assert Annotation.objects.filter(task=task).count() == 1


@pytest.mark.parametrize(
    "kind, texts, answer, field",
    [
        ("pairwise", ("Two.", "Nine."), {"choice": "c"}, "choice"),
        ("pairwise", ("Two.", "Nine."), {"choice": "tie", "strength": 2}, "strength"),
        ("rating", ("Two.",), {"score": 9, "labels": []}, "score"),
        ("rating", ("Two.",), {"score": 3, "labels": ["rude"]}, "labels"),
        ("ranking", TEXTS[:3], {"ranking": [[1], [2]]}, "ranking"),
    ],
)
def test_an_answer_the_task_does_not_take_is_refused_and_nothing_is_stored(judge, kind, texts, answer, field):
    task = make_task(judge.project, kind, texts)

    with pytest.raises(ValidationError) as refused:
        judges.record(judge, Verdict(task.pk, answer))

    assert field in refused.value.message_dict
    assert not Annotation.objects.exists() and counts(task) == (0, "open")


def test_a_judges_answer_fills_no_overlap_and_people_still_get_the_task(judge, annotator):
    project = judge.project
    task = make_task(project, required=1)

    judges.record(judge, Verdict(task.pk, A_WINS))

    assert counts(task) == (0, "open")
    lease = project.next_assignment(annotator)
    assert lease.task == task
    lease.submit({"choice": "b"}, user=annotator)
    assert counts(task) == (1, "complete")
    task.refresh_progress()  # a recount agrees: the judge's answer is not counted
    assert counts(task) == (1, "complete")
    project.refresh_from_db()
    assert (project.task_count, project.complete_task_count) == (1, 1)


def test_a_project_that_counts_judges_votes_completes_tasks_with_them(judge, annotator):
    project = judge.project
    project.judge_votes_count = True
    project.save()
    done, half = make_task(project, required=1), make_task(project, required=2)

    judges.record(judge, Verdict(done.pk, A_WINS))
    judges.record(judge, Verdict(half.pk, A_WINS))

    assert counts(done) == (1, "complete") and counts(half) == (1, "open")
    project.refresh_from_db()
    assert (project.task_count, project.complete_task_count) == (2, 1)
    assert project.next_assignment(annotator).task == half  # the complete one is no one's to answer
    done.refresh_progress()
    assert counts(done) == (1, "complete")


def test_a_run_covers_the_open_tasks_a_rounds_new_samples_or_a_sample(judge):
    project = judge.project
    project.task_kinds = ["pairwise", "rating"]
    project.save()
    opened = [make_task(project) for _ in range(6)]
    complete = make_task(project)
    Task.objects.filter(pk=complete.pk).update(status=Task.Status.COMPLETE)
    gold = make_task(project)
    Task.objects.filter(pk=gold.pk).update(status=Task.Status.GOLD)
    sampled = [make_task(project, round_number=3), make_task(project, round_number=3)]
    make_task(project, "ranking", TEXTS[:3])  # a kind the project no longer asks for
    Task.objects.filter(pk=sampled[1].pk).update(status=Task.Status.COMPLETE)

    def chosen(**options):
        return judges.tasks_for(judges.start(judge, queue=False, **options))

    assert chosen() == [*opened, sampled[0]]
    assert chosen(limit=2) == opened[:2]
    assert chosen(scope="round", round_number=3) == sampled
    sample = chosen(scope="sample", limit=4)
    assert len(sample) == 4 and set(sample) <= {*opened, complete, *sampled} and gold not in sample
    run = JudgeRun.objects.get(scope="sample")
    assert judges.tasks_for(run) == sample  # seeded by the run: the same tasks each time
    assert len(chosen(scope="sample", limit=100)) == 9


@pytest.mark.parametrize(
    "options, field",
    [
        ({"scope": "sample"}, "limit"),
        ({"scope": "round"}, "round_number"),
        ({"scope": "all"}, "scope"),
        ({"limit": 0}, "limit"),
    ],
)
def test_a_run_that_cannot_be_is_refused_before_anything_is_queued(judge, options, field,
                                                                     django_capture_on_commit_callbacks):  # fmt: skip
    with django_capture_on_commit_callbacks() as queued, pytest.raises(ValidationError) as refused:
        judges.start(judge, **options)
    assert field in refused.value.message_dict and queued == [] and not JudgeRun.objects.exists()


def test_a_pending_run_cancelled_never_runs(judge):
    make_task(judge.project)
    job = judges.start(judge, queue=False)

    job.request_cancel()
    assert judges.run(job).status == "cancelled"

    job.refresh_from_db()
    assert (job.status, job.total, job.answered) == ("cancelled", 0, 0) and job.finished_at is not None
    assert not Annotation.objects.exists()


def test_a_run_whose_worker_died_is_failed_by_the_reaper_and_its_answers_stay(judge, settings):
    task = make_task(judge.project)
    job = judges.start(judge, queue=False)
    job.claim()
    judges.record(judge, Verdict(task.pk, A_WINS))
    job.beat(total=5, answered=1)
    fresh = judges.start(judge, queue=False)
    fresh.claim()
    long_ago = timezone.now() - settings.ARBITER_JOB_HEARTBEAT_TIMEOUT - timedelta(seconds=1)
    JudgeRun.objects.filter(pk=job.pk).update(heartbeat_at=long_ago)

    assert judges.fail_stale_runs() == 1

    job.refresh_from_db()
    assert job.status == "failed" and "stopped responding" in job.error and job.answered == 1
    assert JudgeRun.objects.get(pk=fresh.pk).status == "running"
    assert Annotation.objects.filter(annotator=judge.user).count() == 1
    assert not job.beat(answered=2)  # the worker, alive after all, cannot revive it


def test_a_judges_identity_cannot_log_in(client, judge):
    user = judge.user
    assert not user.is_active and not user.has_usable_password()
    user.set_password(PASSWORD)  # even given a password, it is inactive
    user.save()

    page = client.post(reverse("login"), {"username": user.username, "password": PASSWORD})
    assert page.status_code == 200 and "_auth_user_id" not in client.session  # the form again
    token = APIClient().post(reverse("api:login"), {"username": user.username, "password": PASSWORD})
    assert token.status_code == 400


def test_a_judge_never_takes_over_an_account_with_its_identitys_name(project, make_user):
    person = make_user(f"judge.{project.pk}.rm")

    with pytest.raises(ValidationError) as refused:
        Judge.create(project, "rm", kind="llm", endpoint="http://127.0.0.1:8000/v1", model_name="tiny-chat")

    assert "exists already" in refused.value.message_dict["name"][0]
    assert not Judge.objects.exists() and person.is_active


def test_a_counted_judge_answer_on_a_complete_task_is_counted_as_a_recount_counts_it(judge, annotator):
    project = judge.project
    project.judge_votes_count = True
    project.save()
    task = make_task(project, required=1)
    project.next_assignment(annotator).submit({"choice": "b"}, user=annotator)
    assert counts(task) == (1, "complete")

    judges.record(judge, Verdict(task.pk, A_WINS))  # a sample run judges complete tasks too

    assert counts(task) == (2, "complete")
    task.refresh_progress()  # the recount agrees: nothing drifted
    assert counts(task) == (2, "complete")
    project.refresh_from_db()
    assert (project.task_count, project.complete_task_count) == (1, 1)
