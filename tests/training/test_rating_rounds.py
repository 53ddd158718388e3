"""Rounds with a reward model on ratings: what launch refuses (API, admin and command line all plan through
rounds.plan_round), which export they train on, and reward rounds end to end on ratings and on both."""

import json
from pathlib import Path

import pytest
from django.core.exceptions import ValidationError
from django.urls import reverse

from annotate.importing import import_file
from annotate.leads import project_leads_group
from annotate.models import DatasetSnapshot
from models_registry.models import ModelVersion
from tests.training.conftest import marker_pairs, write_jsonl
from tests.training.test_rounds import launch
from training.engine.model_files import REWARD_HEAD_FILE
from training.models import TrainingRound
from training.rounds import run_round


@pytest.fixture
def rated_project(project, annotator, tmp_path):
    """Eight prompts with two answers each, rated through the queue: the one with the marker 5 (and ticked
    unsafe), the other 1. The project's labels: factual error, unsafe, off-topic."""
    project.task_kinds = ["rating"]
    project.save(update_fields=["task_kinds"])
    pairs = marker_pairs(8, style="standard")
    rows = [{"prompt": f"{row['prompt']} ({n})", "responses": [row["chosen"], row["rejected"]]} for n, row in
            enumerate(pairs)]  # fmt: skip
    import_file(project, write_jsonl(tmp_path / "responses.jsonl", rows), format="responses")
    chosen = {row["chosen"] for row in pairs}
    while lease := project.next_assignment(annotator):
        good = lease.task.responses.get().content in chosen
        lease.submit({"score": 5 if good else 1, "labels": ["unsafe"] if good else []}, user=annotator)
    return project


@pytest.fixture
def pairs_only(project, tmp_path):
    pairs = [{key: row[key] for key in ("prompt", "chosen", "rejected")} for row in marker_pairs(4)]
    import_file(project, write_jsonl(tmp_path / "pairs.jsonl", pairs))  # votes, no ratings
    return project


def refused(project, policy, method, **settings_):
    with pytest.raises(ValidationError) as refusal:
        launch(project, policy, method, settings_=settings_)
    assert not TrainingRound.objects.exists() and not DatasetSnapshot.objects.exists()
    return refusal.value.message_dict


@pytest.mark.django_db
class TestLaunch:
    def test_ratings_without_rated_answers_are_refused(self, pairs_only, policy):
        for method, objective in (("reward", "ratings"), ("ppo", "both")):
            message = refused(pairs_only, policy, method, objective=objective)["reward.objective"][0]
            assert f"objective={objective} trains on rated answers, and this project has none" in message

    def test_a_weight_for_a_label_the_project_lacks_is_refused(self, rated_project, policy):
        message = refused(rated_project, policy, "reward", objective="ratings", label_weights="unsafe:-2, toxic:-1")
        assert message["reward.label_weights"] == [
            "label_weights: 'toxic' is not a label of this project (its outputs: score, factual error, unsafe, "
            "off-topic)"
        ]

    def test_a_bad_objective_or_weights_on_pairs_are_refused(self, rated_project, policy):
        assert "reward.objective" in refused(rated_project, policy, "reward", objective="scores")
        assert "reward.label_weights" in refused(rated_project, policy, "reward", label_weights="unsafe:-2")

    def test_the_api_and_the_admin_form_refuse_alike(self, pairs_only, policy, lead, client):
        client.force_login(lead)
        body = {"method": "reward", "base": policy, "settings": {"objective": "ratings"}}
        response = client.post(f"/api/v1/projects/{pairs_only.slug}/rounds/", body, content_type="application/json")
        assert response.status_code == 400 and "reward.objective" in response.json(), response.content

        lead.groups.add(project_leads_group())
        form = {"project": pairs_only.pk, "method": "reward", "base": policy, "settings": "objective=ratings"}
        page = client.post(reverse("admin:training_traininground_launch"), form).content.decode()
        assert "trains on rated answers, and this project has none" in page
        assert not TrainingRound.objects.exists() and not DatasetSnapshot.objects.exists()

    def test_a_round_on_ratings_alone_snapshots_the_rated_answers(self, rated_project, policy):
        assert launch(rated_project, policy, "reward").snapshot.kind == DatasetSnapshot.Kind.PAIRS  # the default
        ratings = launch(rated_project, policy, "ppo", settings_={"objective": "ratings"})
        assert ratings.snapshot.kind == DatasetSnapshot.Kind.UNPAIRED
        assert ratings.config["reward"]["objective"] == "ratings"
        # both: the pairs are the round's snapshot; the ratings are written when its reward stage starts
        assert launch(rated_project, policy, "reward", settings_={"objective": "both"}).snapshot.kind == "pairs"


@pytest.mark.django_db(transaction=True)
class TestRound:
    def test_a_reward_round_on_ratings_registers_a_model_with_its_weights_and_correlation(self, rated_project, policy):
        weights = {"objective": "ratings", "label_weights": "unsafe:-0.5", "eval_fraction": "0.5"}
        training_round = run_round(launch(rated_project, policy, "reward", settings_=weights).pk)

        assert training_round.status == "succeeded", training_round.error
        version = ModelVersion.objects.get(kind="reward", training_round=training_round)
        assert version.snapshot_sha256 == training_round.snapshot.sha256 and version.config["objective"] == "ratings"
        report = version.eval_report
        assert report["eval_ratings"] == 8 and report["rating_pairs"] == 16, report  # 4 prompts held out
        assert -1 <= report["rating_spearman"] <= 1 and 0 <= report["label_mae"] <= 1
        head = json.loads((Path(version.path) / REWARD_HEAD_FILE).read_text())
        assert head["outputs"] == ["score", "factual error", "unsafe", "off-topic"]
        assert head["weights"] == [1.0, 0.0, -0.5, 0.0]

    def test_a_reward_round_on_both_reads_the_pairs_and_a_ratings_snapshot(self, rated_project, policy, tmp_path):
        pairs = [{key: row[key] for key in ("prompt", "chosen", "rejected")} for row in marker_pairs(8, seed=3)]
        import_file(rated_project, write_jsonl(tmp_path / "pairs.jsonl", pairs))
        both = {"objective": "both", "eval_fraction": "0.5"}

        training_round = run_round(launch(rated_project, policy, "reward", settings_=both).pk)

        assert training_round.status == "succeeded", training_round.error
        report = ModelVersion.objects.get(kind="reward", training_round=training_round).eval_report
        ratings = DatasetSnapshot.objects.get(kind="unpaired")
        assert report["ratings_snapshot_sha256"] == ratings.sha256 and ratings.row_count == 16
        assert 0 < report["eval_pairs"] < 8 and report["eval_ratings"] == 8 and "accuracy" in report, report
