"""Samples that are the same text (whitespace aside) never make a task that compares an answer with itself; an eval
pair whose new answer is the previous one's is an automatic tie: counted in the win rate, marked, asked of no one,
and never taken for a person's vote."""

import pytest
import torch
from django.urls import reverse

from annotate.models import Membership, Prompt, Response, Task, text_key
from models_registry.measures import win_rate
from models_registry.models import ModelVersion
from tests.annotate.test_exports import export, rows_of
from training.engine.config import SampleConfig
from training.sampling import EVAL_PRIORITY, sample_into_queue

pytestmark = pytest.mark.django_db

PREVIOUS = {"E1?": "The answer is 4.", "E2?": "Four."}
SAMPLES = {
    "E1?": ["The answer  is 4.\n"],  # the previous answer again, spaced differently
    "E2?": ["It is four."],
    "T1?": ["x y", "x\n y", "z"],  # two distinct answers
    "T2?": ["same", "same", " same"],  # one
    "T3?": ["a", "b", "c"],  # three
}


@pytest.fixture
def fake_model(monkeypatch):
    """The policy's samples and the reward model's scores, decided here: the models are not what is tested."""
    drawn = {question: iter(texts) for question, texts in SAMPLES.items()}

    def generate(path, prompts, **_):
        return [[next(drawn[messages[-1]["content"]])] for messages in prompts]

    def score(path, conversations, **_):
        rewards = {"x y": 0.0, "x\n y": 0.0, "z": 0.25, "same": 0.0, " same": 0.0, "a": 0.0, "b": 1.0, "c": 3.0}
        return torch.tensor([rewards[conversation[-1]["content"]] for conversation in conversations])

    monkeypatch.setattr("training.engine.generate.generate", generate)
    monkeypatch.setattr("training.engine.generate.score", score)


@pytest.fixture
def versions(project):
    project.samples_per_prompt, project.sample_rating_tasks, project.max_open_leases = 3, True, 50
    project.save()
    for question in SAMPLES:
        split = "eval" if question.startswith("E") else "train"
        Prompt.objects.create(project=project, external_id=question, messages=[{"role": "user", "content": question}],
                              split=split)  # fmt: skip
    v1 = ModelVersion.register(project=project, kind="policy", base_model="tiny")
    for question, text in PREVIOUS.items():
        Response.objects.create(prompt=Prompt.objects.get(external_id=question), content=text, source="model",
                                model_version=v1)  # fmt: skip
    return v1, ModelVersion.register(project=project, kind="policy", base_model="tiny", parent=v1)


def sample(project, versions):
    v1, v2 = versions
    return sample_into_queue(project, v2, round_number=2, config=SampleConfig(), previous=v1, reward_path="rm")


def texts(task):
    return [r.content for r in task.responses.order_by("task_responses__position")]


def tasks_of(question, kind):
    return Task.objects.filter(prompt__external_id=question, kind=kind)


@pytest.mark.parametrize("pair_selection", ["random", "uncertainty"])
def test_no_task_compares_an_answer_with_itself(project, versions, fake_model, pair_selection):
    project.pair_selection = pair_selection
    project.save()
    made = sample(project, versions)

    for task in Task.objects.exclude(annotations__source="auto"):
        keys = [text_key(text) for text in texts(task)]
        assert len(set(keys)) == len(keys), (task.kind, texts(task))
    assert sorted(texts(tasks_of("T1?", "pairwise").get())) == ["x y", "z"]  # the closest distinct two, too
    assert not tasks_of("T1?", "ranking").exists()  # two distinct answers make a pair, not a ranking
    assert not tasks_of("T2?", "pairwise").exists() and not tasks_of("T2?", "ranking").exists()
    assert sorted(texts(tasks_of("T3?", "ranking").get())) == ["a", "b", "c"]
    ratings = {question: tasks_of(question, "rating").count() for question in ("T1?", "T2?", "T3?")}
    assert ratings == {"T1?": 2, "T2?": 1, "T3?": 3}  # one rating per distinct answer
    assert texts(tasks_of("E2?", "pairwise").get()) == ["It is four.", "Four."]
    assert made == {"responses": 11, "tasks": 10, "automatic_ties": 1}


def test_an_eval_pair_of_the_same_text_is_an_automatic_tie_no_one_is_asked_for(
    project, versions, fake_model, annotator, lead
):
    sample(project, versions)

    tie = tasks_of("E1?", "pairwise").get()
    assert texts(tie) == ["The answer  is 4.\n", "The answer is 4."]
    assert (tie.status, tie.required_annotations, tie.annotation_count) == ("complete", 1, 1)
    assert (tie.priority, tie.round_number) == (EVAL_PRIORITY, 2)
    annotation = tie.annotations.get()
    assert (annotation.source, annotation.annotator, annotation.choice, annotation.strength) == (
        "auto", None, "tie", None,
    )  # fmt: skip
    project.refresh_from_db()
    assert (project.task_count, project.complete_task_count) == (Task.objects.count(), 1)

    given = []
    while lease := project.next_assignment(annotator, reuse_lease=False):
        given.append(lease.task)
    assert tie not in given and len(given) == Task.objects.count() - 1

    # The win rate counts it as one tie, and says it was automatic.
    task = tasks_of("E2?", "pairwise").get()
    project.next_assignment(lead)  # the lead's first lease is the other eval pair (priority first)
    lead.assignments.get(task=task).submit({"choice": "a", "strength": 1}, user=lead)  # v2's answer wins
    rate = win_rate(project, versions[1], versions[0])
    assert (rate.wins, rate.ties, rate.losses, rate.auto_ties, rate.rate) == (1, 1, 0, 1, 0.75)

    # Not a person's vote: neither in the lead's statistics nor in agreement, nor a pair to train on.
    stats = project.lead_stats()
    assert [username for username, *_ in stats["per_annotator"]] == ["lead"]
    assert stats["agreement"]["tasks"] == 0
    pairs = rows_of(export(project, include_ties=True, include_both_bad=True))
    assert tie.pk not in [row["task_id"] for row in pairs] and task.pk in [row["task_id"] for row in pairs]
    votes = {row["task_id"]: row for row in rows_of(export(project, kind="votes"))}
    assert (votes[tie.pk]["source"], votes[tie.pk]["annotator"], votes[tie.pk]["choice"]) == ("auto", None, "tie")


def test_the_models_page_marks_automatic_ties(client, project, versions, fake_model, lead):
    Membership.objects.filter(user=lead).update(role="lead")
    sample(project, versions)
    client.force_login(lead)
    page = client.get(reverse("model_leaderboard", args=[project.slug])).content.decode()

    assert "From 0 human votes" in page and "1 automatic tie</span>" in page
    rounds = page.split('id="round-win-rates"')[1].split("</table>")[0]
    assert "50 %" in rounds and "0 / 1 / 0 of 1" in rounds and "1 of the ties automatic" in rounds
    leaderboard = page.split('id="leaderboard"')[1].split("</table>")[0]
    assert "0 / 1 <span" in leaderboard and "(1 automatic)" in leaderboard


def test_the_api_lists_an_automatic_tie_with_its_source_and_no_annotator(client, project, versions, fake_model, lead):
    sample(project, versions)
    client.force_login(lead)
    answers = client.get(f"/api/v1/projects/{project.slug}/annotations/").json()["results"]
    assert [(a["source"], a["annotator"], a["choice"]) for a in answers] == [("auto", None, "tie")]
