"""A reward model from the registry as a judge (training/judging.py): its verdicts are its scores read as answers,
stored as the judge's annotations by a run, in-process and in a real Celery worker on the gpu queue."""

import math
import re

import pytest
import torch
from django.db.models.signals import post_save
from transformers import AutoModelForSequenceClassification, AutoTokenizer

import training.engine.generate
from annotate import judges
from annotate.models import Annotation, Judge, JudgeRun, Prompt, Task
from models_registry.models import ModelVersion
from tests.annotate.test_judges import QUESTION, TEXTS, make_task
from tests.celery_worker import Worker, wait_for
from tests.training.conftest import marker_pairs, settings, write_jsonl
from training.engine.config import RewardConfig
from training.engine.generate import score
from training.engine.model_files import save_reward_head
from training.engine.reward import train_reward
from training.judging import STRONG, rates, reward_model_verdicts


def reward_judge(project, path, name="rm"):
    version = ModelVersion.register(project=project, kind=ModelVersion.Kind.REWARD, base_model=str(path))
    return Judge.create(project, name, kind=Judge.Kind.REWARD_MODEL, model_version=version)


def conversation(text):
    return [*QUESTION, {"role": "assistant", "content": text}]


@pytest.fixture(scope="module")
def rating_model(tiny, tmp_path_factory):
    """The tiny reward model with a fresh rating head (score, "unsafe", "off-topic") whose two label outputs are
    opposite, so that exactly one of them is ticked."""
    path = tmp_path_factory.mktemp("rating-judge")
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(tiny.reward, num_labels=3, ignore_mismatched_sizes=True)
    with torch.no_grad():
        model.score.weight[2] = -model.score.weight[1]
    model.save_pretrained(path)
    AutoTokenizer.from_pretrained(tiny.reward).save_pretrained(path)
    save_reward_head(path, ["score", "unsafe", "off-topic"], [1.0, -2.0, 0.0], "ratings")
    return path


def test_pairwise_verdicts_are_the_models_scores_read_as_answers(db, project, tiny):
    pairs = [make_task(project, "pairwise", TEXTS[i : i + 2]) for i in range(4)]
    same = make_task(project, "pairwise", ["Two.", "Two."])
    judge = reward_judge(project, tiny.reward)
    rewards = score(str(tiny.reward), [conversation(text) for i in range(4) for text in TEXTS[i : i + 2]]).tolist()

    verdicts = list(reward_model_verdicts(judge, judges.items_for([*pairs, same])))

    assert [verdict.task_id for verdict in verdicts] == [task.pk for task in [*pairs, same]]
    for i, verdict in enumerate(verdicts[:4]):
        r_a, r_b = rewards[2 * i : 2 * i + 2]
        p = 1 / (1 + math.exp(r_b - r_a))
        assert verdict.answer["choice"] == ("a" if r_a > r_b else "b")
        assert verdict.answer["strength"] == (2 if max(p, 1 - p) >= STRONG else 1)
        assert verdict.answer["both_bad"] is False
        assert verdict.confidence == pytest.approx(abs(2 * p - 1), abs=1e-6)
        assert verdict.consistent is True and verdict.detail["scores"] == pytest.approx([r_a, r_b], abs=1e-5)
    # The same text twice: the same score, a tie of no confidence.
    assert verdicts[4].answer == {"choice": "tie", "strength": None, "both_bad": False} and verdicts[4].confidence == 0


def test_a_ranking_is_best_first_by_score(db, project, tiny):
    task = make_task(project, "ranking", TEXTS)
    judge = reward_judge(project, tiny.reward)
    rewards = score(str(tiny.reward), [conversation(text) for text in TEXTS]).tolist()

    (verdict,) = reward_model_verdicts(judge, judges.items_for([task]))

    ids = list(task.task_responses.order_by("position").values_list("response_id", flat=True))
    assert verdict.answer["ranking"] == [[ids[i]] for i in sorted(range(5), key=lambda i: -rewards[i])]
    best, runner_up = sorted(rewards, reverse=True)[:2]
    assert verdict.confidence == pytest.approx(2 / (1 + math.exp(runner_up - best)) - 1, abs=1e-6)


def test_a_rating_model_rates_on_the_projects_scale_with_its_labels(db, project, rating_model):
    task = make_task(project, "rating", ["Seven."])
    judge = reward_judge(project, rating_model)
    assert rates(judge.model_version)
    scaled, unsafe, off_topic = score(str(rating_model), [conversation("Seven.")], outputs=True)[0].tolist()

    for low, high in ((1, 5), (0, 10), (-3, 3)):
        project.rating_min, project.rating_max = low, high
        project.save()
        (verdict,) = reward_model_verdicts(Judge.objects.get(pk=judge.pk), judges.items_for([task]))

        # σ(z_0) on [0, 1] is the scale from rating_min to rating_max; a label is ticked at a predicted share ≥ ½.
        point = low + scaled * (high - low)
        assert verdict.answer == {"score": round(point), "labels": ["unsafe" if unsafe >= 0.5 else "off-topic"]}
        assert verdict.confidence == pytest.approx(1 - 2 * abs(point - round(point)), abs=1e-5)
        assert verdict.detail["outputs"] == pytest.approx({"score": scaled, "unsafe": unsafe, "off-topic": off_topic})
    task.clean_answer(verdict.answer)  # an answer the task takes


@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")
def test_a_trained_reward_model_judges_held_out_pairs_by_the_rule_it_learnt(db, project, tiny, tmp_path):
    config = settings(RewardConfig, tiny.reward, max_steps=40, learning_rate=2e-3)
    trained = train_reward(config, str(write_jsonl(tmp_path / "pairs.jsonl", marker_pairs(64))), str(tmp_path / "rm"))
    version = ModelVersion.register(
        project=project, kind="reward", base_model=str(tiny.reward), adapter_path=trained.output_dir
    )
    judge = Judge.create(project, "rm", kind="reward_model", model_version=version)
    held_out = marker_pairs(24, seed=7)  # prompts and answers drawn afresh: not the training pairs
    marked = []  # the position of the answer with MARKER, which people prefer
    for i, pair in enumerate(held_out):
        sides = [pair["chosen"][0]["content"], pair["rejected"][0]["content"]]
        if i % 2:
            sides.reverse()
        marked.append("b" if i % 2 else "a")
        task = make_task(project, "pairwise", sides)
        Prompt.objects.filter(pk=task.prompt_id).update(messages=pair["prompt"])

    job = judges.run(judges.start(judge))

    assert (job.status, job.answered) == ("succeeded", 24), job.error
    judged = Annotation.objects.filter(annotator=judge.user).order_by("task_id")
    right = [annotation.choice == side for annotation, side in zip(judged, marked, strict=True)]
    assert sum(right) / len(right) >= 0.8, right  # chance is 0.5, whichever side the marker is on
    confidences = [annotation.confidence for annotation in judged]
    wrong = [c for c, ok in zip(confidences, right, strict=True) if not ok]
    assert not wrong or sum(wrong) / len(wrong) < sum(confidences) / len(confidences)  # unsure where it errs


def test_a_run_answers_what_the_model_can_and_skips_the_rest(db, project, tiny):
    project.task_kinds = ["pairwise", "ranking", "rating", "write"]
    project.save()
    pairs = [make_task(project, "pairwise", TEXTS[i : i + 2]) for i in range(3)]
    ranking = make_task(project, "ranking", TEXTS[:3])
    rating = make_task(project, "rating", ["Seven."])
    write = Task.objects.create(project=project, prompt=ranking.prompt, kind="write")
    judge = reward_judge(project, tiny.reward)
    assert not rates(judge.model_version)  # trained on pairs: no rating head

    job = judges.run(judges.start(judge))

    assert (job.status, job.total, job.answered, job.failed, job.skipped) == ("succeeded", 6, 4, 0, 2), job.error
    judged = Annotation.objects.filter(annotator=judge.user)
    assert set(judged.values_list("task_id", flat=True)) == {task.pk for task in [*pairs, ranking]}
    assert all(annotation.source == Annotation.Source.JUDGE for annotation in judged)
    assert not judged.filter(task__in=[rating, write]).exists()
    # People's overlap is untouched: the judge votes beside them.
    assert set(Task.objects.filter(pk__in=[t.pk for t in pairs]).values_list("annotation_count", "status")) == {
        (0, "open")
    }

    again = judges.run(judges.start(judge))  # a judge answers a task once
    assert (again.answered, again.skipped) == (0, 6) and judged.count() == 4


def test_a_cancelled_run_stops_between_batches_and_keeps_what_it_answered(db, project, tiny, monkeypatch):
    tasks = [make_task(project, "pairwise", TEXTS[i : i + 2]) for i in range(4) for _ in range(2)]
    judge = reward_judge(project, tiny.reward)
    job = judges.start(judge)
    monkeypatch.setattr(judges, "BATCH", 3)

    def cancel_at_the_first_answer(sender, instance, created, **kwargs):
        if created and instance.annotator_id == judge.user_id:
            job.request_cancel()  # as the API or the admin does, while the worker is in its first batch

    post_save.connect(cancel_at_the_first_answer, sender=Annotation)
    try:
        job = judges.run(job)
    finally:
        post_save.disconnect(cancel_at_the_first_answer, sender=Annotation)

    assert (job.status, job.total, job.answered, job.skipped) == ("cancelled", 8, 3, 0)
    assert Annotation.objects.filter(annotator=judge.user).count() == 3  # the first batch's answers stay
    assert set(Annotation.objects.values_list("task_id", flat=True)) == {task.pk for task in tasks[:3]}


def test_a_run_loads_the_reward_model_once_for_all_its_batches(db, project, tiny, monkeypatch):
    tasks = [make_task(project, "pairwise", TEXTS[i : i + 2]) for i in range(4) for _ in range(2)]
    judge = reward_judge(project, tiny.reward)
    monkeypatch.setattr(judges, "BATCH", 3)
    loads = []
    load = training.engine.generate.load_scorer
    monkeypatch.setattr(training.engine.generate, "load_scorer", lambda *a, **k: loads.append(a) or load(*a, **k))

    job = judges.run(judges.start(judge))

    assert (job.status, job.answered) == ("succeeded", len(tasks)) and len(loads) == 1  # 3 batches, one load


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_celery_worker_on_the_gpu_queue_runs_a_reward_model_judge(project, tiny, worker_env, tmp_path):
    tasks = [make_task(project, "pairwise", TEXTS[i : i + 2]) for i in range(3)]
    judge = reward_judge(project, tiny.reward)
    job = judges.start(judge)  # queued on commit: autocommit here

    worker = Worker(worker_env, tmp_path / "worker.log", queues="gpu")
    try:
        wait_for(lambda: JudgeRun.objects.get(pk=job.pk).status not in ("pending", "running"), "the run", worker)
    finally:
        worker.stop()
    job.refresh_from_db()
    assert (job.status, job.answered, job.failed, job.skipped) == ("succeeded", 3, 0, 0), job.error
    assert re.search(r"Task annotate\.tasks\.run_judge\[[\w-]+\] succeeded in .*'succeeded'", worker.output())
    assert Annotation.objects.filter(annotator=judge.user, task__in=tasks).count() == 3
