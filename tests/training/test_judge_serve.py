"""An LLM judge through a real `transformers serve` (started here from the installed package, no fake), on tiny local
models: one taught to always prefer the response shown first, so that the run with the sides swapped disagrees
(position inconsistency, low confidence, recorded as a tie), and the random one, whose replies never parse (failures
after the retries, nothing recorded). Runs go through annotate.judges.start and run, as a worker runs them."""

import json
import shutil

import pytest

from annotate import judges
from annotate.judges import Item
from annotate.llm_judge import LLMJudgeError, judge_items, judge_messages
from annotate.models import Annotation, Judge, JudgeRun, Project, Prompt, Response, Task, TaskResponse
from training.engine.tiny import TinyConfig, build_tiny_models, teach_answer

pytestmark = pytest.mark.slow  # the server takes some 10 s to start on a shared CPU
FIRST = json.dumps({"choice": "A", "strength": 2, "both_bad": False})
PAIRS = [
    ("What is a cat?", "A cat is a small animal.", "No."),
    ("Where is the sea?", "I cannot help with that.", "The sea is wide and grey and slow."),
    ("How do I boil an egg?", "Put the egg in boiling water.", "Eggs."),
]


def conversation(question: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": question}]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """(the first-picker, the random model): tiny models with room for a judge's prompt and a retry."""
    paths = build_tiny_models(tmp_path_factory.mktemp("judge"), config=TinyConfig(max_position_embeddings=1024))
    picker = paths.root / "first-picker"
    shutil.copytree(paths.policy, picker)
    # The prompts the tests' project gives (tests/conftest.py's), both orders: all answered with "A much better".
    project = Project(name="Helpfulness", guidelines="Prefer the **helpful** answer.")
    judge = Judge(project=project, name="taught")
    items = [Item(n, "pairwise", conversation(q), [(1, a), (2, b)]) for n, (q, a, b) in enumerate(PAIRS)]
    conversations = [judge_messages(judge, project, item, order) for item in items for order in ([0, 1], [1, 0])]
    teach_answer(picker, conversations, FIRST)
    return str(picker), str(paths.policy)


@pytest.fixture
def tasks(project):
    made = []
    for question, first, second in PAIRS:
        prompt = Prompt.objects.create(project=project, external_id=question, messages=conversation(question))
        task = Task.objects.create(project=project, prompt=prompt, kind="pairwise")
        for position, text in enumerate([first, second]):
            response = Response.objects.create(prompt=prompt, content=text)
            TaskResponse.objects.create(task=task, response=response, position=position)
        made.append(task)
    return made


def run(project, server, model, limit=None, **settings) -> JudgeRun:
    judge = Judge.create(project, "tiny", kind="llm", endpoint=server, model_name=model, **settings)
    job = judges.start(judge, scope=JudgeRun.Scope.OPEN, limit=limit)
    judges.run(job)  # in place of the worker (its message is sent on commit, which a test never reaches)
    job.refresh_from_db()
    return job


@pytest.mark.django_db
def test_a_judge_that_always_prefers_the_first_shown_is_caught_by_the_swap(server, models, project, tasks):
    job = run(project, server, models[0], concurrency=2)
    assert (job.status, job.answered, job.failed, job.skipped) == ("succeeded", 3, 0, 0)
    annotations = Annotation.objects.filter(annotator__judge__project=project).order_by("task")
    assert [a.task_id for a in annotations] == [task.pk for task in tasks]
    for annotation in annotations:
        assert annotation.source == Annotation.Source.JUDGE
        assert (annotation.choice, annotation.strength, annotation.consistent) == ("tie", None, False)
        assert annotation.confidence == 0.0  # "a much better", then "b much better": no lean either way
        detail = annotation.judge_detail
        assert detail["attempts"] == [FIRST, FIRST]  # each order answered first time, in the format
        assert [order["answer"]["choice"] for order in detail["orders"]] == ["a", "b"]
    # Beside people, not one of them: the tasks still wait for their overlap.
    assert {task.annotation_count for task in Task.objects.filter(project=project)} == {0}


@pytest.mark.django_db
def test_a_model_whose_replies_do_not_parse_fails_each_task_after_the_retries(server, models, project, tasks):
    job = run(project, server, models[1], limit=1, max_retries=1)  # each reply runs to MAX_TOKENS: one task does
    assert (job.status, job.answered, job.failed) == ("succeeded", 0, 1)
    assert [failure["task"] for failure in job.failures] == [tasks[0].pk]
    assert all("no valid answer after 2 attempts" in failure["error"] for failure in job.failures)
    assert not Annotation.objects.filter(source=Annotation.Source.JUDGE).exists()


@pytest.mark.django_db
def test_a_model_the_endpoint_does_not_serve_fails_the_run_naming_the_endpoint(server, project, tasks, tmp_path):
    job = run(project, server, str(tmp_path / "nothing-here"))
    assert job.status == "failed" and job.answered == 0
    # The server's folders are hidden from leads (the worker's log has them); its URL is not.
    assert job.error.startswith(f"{LLMJudgeError.__name__}: endpoint {server} refused model <path> (500)")


@pytest.mark.django_db
def test_a_reply_that_does_not_parse_is_asked_again_then_failed(server, models, project):
    prompt = Prompt.objects.create(project=project, external_id="r", messages=conversation(PAIRS[0][0]))
    task = Task.objects.create(project=project, prompt=prompt, kind="rating")
    TaskResponse.objects.create(task=task, response=Response.objects.create(prompt=prompt, content="Hi."), position=0)
    judge = Judge.create(project, "tiny", kind="llm", endpoint=server, model_name=models[0], max_retries=1)
    (verdict,) = judge_items(judge, judges.items_for([task]), should_stop=lambda: False)
    # Taught on pairwise prompts only, it garbles a verdict for a rating; asked again (the server takes the longer
    # conversation, its reply and what was wrong with it), garbles another, and the task fails keeping both.
    assert verdict.answer is None and len(verdict.detail["attempts"]) == 2
    assert all(attempt.startswith("{") for attempt in verdict.detail["attempts"])
    assert verdict.error.startswith("no valid answer after 2 attempts; the last: ")


def test_a_stop_asked_mid_run_sends_no_further_request(server, models):
    project = Project(name="Helpfulness", guidelines="Prefer the **helpful** answer.")
    judge = Judge(project=project, name="tiny", kind="llm", endpoint=server, model_name=models[0], concurrency=1)
    items = [Item(n, "pairwise", conversation(q), [(1, a), (2, b)]) for n, (q, a, b) in enumerate(PAIRS * 2)]
    seen = []
    for verdict in judge_items(judge, items, should_stop=lambda: bool(seen)):
        seen.append(verdict)
    # The item in flight when the stop was seen may finish; none goes out after it.
    assert 1 <= len(seen) <= 2 and all(verdict.answer for verdict in seen)
