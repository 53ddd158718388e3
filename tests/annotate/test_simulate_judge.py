"""The simulated judge: known accuracy against the hidden rule, informative confidence, position inconsistency, and
verdicts recorded as a real judge's are."""

import pytest

from annotate.models import Annotation, Judge, Prompt, Response, Task, TaskResponse
from annotate.simulation import feature, simulate_judge


def make_tasks(project, n, kind="pairwise"):
    """`n` tasks whose responses differ in how often they say "cat" (the rule word:cat), in both orders."""
    tasks = []
    first = Prompt.objects.filter(project=project).count()
    for i in range(n):
        prompt = Prompt.objects.create(
            project=project, external_id=f"p{first + i}", messages=[{"role": "user", "content": "?"}]
        )
        task = Task.objects.create(project=project, prompt=prompt, kind=kind)
        texts = ["cat " * (i % 3), "cat " * ((i + 1) % 4) + "dog"][:: 1 if i % 2 else -1]
        if kind == "ranking":
            texts.append("cat " * (i % 5))
        if kind == "rating":
            texts = texts[:1]
        for position, text in enumerate(texts):
            TaskResponse.objects.create(
                task=task, response=Response.objects.create(prompt=prompt, content=text), position=position
            )
        tasks.append(task)
    return tasks


@pytest.fixture
def judge(project):
    return Judge.create(project, "sim", kind=Judge.Kind.LLM, endpoint="http://judge.invalid/v1", model_name="sim")


def test_right_answers_are_the_rules_and_the_share_right_is_the_accuracy(project, judge):
    tasks = make_tasks(project, 300)
    counts = simulate_judge(judge, tasks, accuracy=0.75, seed=1, rule="word:cat", inconsistency=0.2)
    assert counts["answered"] == 300 and counts["skipped"] == 0
    assert 0.68 <= counts["right"] / 300 <= 0.82  # 99.9 % binomial interval of 0.75 over 300
    assert 0.13 <= counts["inconsistent"] / 300 <= 0.27
    for annotation in Annotation.objects.filter(annotator=judge.user).select_related("task"):
        a, b = (row.response.content for row in annotation.task.task_responses.order_by("position"))
        truth = (
            "tie"
            if feature(a, "word:cat") == feature(b, "word:cat")
            else "ab"[feature(a, "word:cat") < feature(b, "word:cat")]
        )
        assert annotation.source == Annotation.Source.JUDGE
        assert (annotation.choice == truth) == annotation.judge_detail["right"]
        assert annotation.consistent is not None and 0 <= annotation.confidence <= 1


def test_right_answers_come_with_higher_confidence(project, judge):
    simulate_judge(judge, make_tasks(project, 200), accuracy=0.7, seed=2, rule="word:cat")
    rows = Annotation.objects.filter(annotator=judge.user)
    right = [a.confidence for a in rows if a.judge_detail["right"]]
    wrong = [a.confidence for a in rows if not a.judge_detail["right"]]
    assert sum(right) / len(right) > sum(wrong) / len(wrong) + 0.1


@pytest.mark.parametrize("kind", ["rating", "ranking"])
def test_ratings_and_rankings_are_answered_in_their_own_terms(project, judge, kind):
    counts = simulate_judge(judge, make_tasks(project, 40, kind), accuracy=0.5, seed=3, rule="word:cat")
    assert counts["answered"] == 40 and 0 < counts["right"] < 40
    rows = Annotation.objects.filter(annotator=judge.user)
    if kind == "rating":
        assert all(row.score is not None and row.consistent is None for row in rows)
    else:
        assert all(sum(map(len, row.ranking)) == 3 for row in rows)


def test_a_second_run_skips_what_it_answered_and_the_verdicts_are_reproducible(project, judge):
    tasks = make_tasks(project, 30)
    first = simulate_judge(judge, tasks, accuracy=0.6, seed=4, rule="word:cat")
    again = simulate_judge(judge, tasks, accuracy=0.6, seed=4, rule="word:cat")
    assert again["answered"] == 0 and again["skipped"] == 30
    kept = dict(Annotation.objects.filter(annotator=judge.user).values_list("task_id", "choice"))
    Annotation.objects.filter(annotator=judge.user).delete()
    assert simulate_judge(judge, tasks[::-1], accuracy=0.6, seed=4, rule="word:cat") == first
    assert dict(Annotation.objects.filter(annotator=judge.user).values_list("task_id", "choice")) == kept


def test_a_judge_vote_fills_no_overlap_by_default(project, judge):
    simulate_judge(judge, make_tasks(project, 5), accuracy=0.9, seed=5, rule="word:cat")
    assert set(Task.objects.values_list("annotation_count", "status")) == {(0, Task.Status.OPEN)}
