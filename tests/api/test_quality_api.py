"""GET projects/<slug>/quality/, its recompute, and the decisions on members (pause, resume, exclude, include)."""

import pytest

from annotate import tasks
from annotate.models import Membership, QualityReport
from annotate.quality_reports import request_quality, run_quality_report
from tests.annotate.test_quality_reports import answered

P = "/api/v1/projects/helpfulness"


@pytest.fixture
def enqueued(monkeypatch):
    ids = []
    monkeypatch.setattr(tasks.refresh_quality, "delay", ids.append)
    return ids


def test_the_figures_per_annotator_with_flags_and_state(
    lead_client, project, annotator, second_annotator, lead, enqueued, django_capture_on_commit_callbacks
):
    answered(project, annotator, 22, seconds=2)
    answered(project, second_annotator, 3)
    assert lead_client.get(f"{P}/quality/").json()["status"] is None  # nothing computed yet
    with django_capture_on_commit_callbacks(execute=True):
        request_quality(project)
    run_quality_report(QualityReport.objects.get())
    Membership.objects.get(user=second_annotator).decide("excluded", by=lead, reason="Left early.")

    body = lead_client.get(f"{P}/quality/").json()

    assert body["status"] == "ready" and body["computed_at"] and body["fast_seconds"] == 5
    assert body["thresholds"] == {
        "fast_seconds": 5, "min_gold_accuracy": 0.7, "min_competence": 0.2, "position_bias_p": 0.01,
        "max_fast_share": 0.25,
    }  # fmt: skip
    assert body["minimum_answers"]["too_fast"] == 20
    assert body["project"]["answers"] == 25 and "username" not in body["project"]
    first, second = body["annotators"]
    required = {"username", "answers", "gold_answers", "gold_accuracy", "competence", "first_position_share",
                "position_p_value", "longer_share", "median_seconds", "fast_share", "flags", "paused",
                "votes_excluded"}  # fmt: skip
    assert required <= set(first)
    assert (first["username"], first["flags"], first["answers"]) == ("annotator", ["position_bias", "too_fast"], 22)
    assert first["fast_share"] == 1.0 and first["median_seconds"] == 2.0 and first["gold_accuracy"] is None
    assert first["first_position_low"] < first["first_position_share"] == 1.0
    # Three answers flag no one, however one-sided.
    assert (second["username"], second["flags"], second["votes_excluded"]) == ("second", [], True)


def test_recompute_answers_202_then_409_while_under_way(lead_client, project, enqueued):
    started = lead_client.post(f"{P}/quality/recompute/")

    assert started.status_code == 202 and started.json()["status"] == "pending"
    assert started["Location"] == f"{P}/quality/"
    again = lead_client.post(f"{P}/quality/recompute/")
    assert again.status_code == 409 and "already under way" in again.json()["detail"]


def test_decisions_need_a_reason_to_act_against_someone_and_are_listed(
    lead_client, project, annotator, second_annotator
):
    refused = lead_client.post(f"{P}/members/annotator/pause/", {"reason": ""}, format="json")
    assert refused.status_code == 400 and "reason" in refused.json()

    paused = lead_client.post(f"{P}/members/annotator/pause/", {"reason": "Too fast."}, format="json").json()
    again = lead_client.post(f"{P}/members/annotator/pause/", {"reason": "Again."}, format="json").json()
    resumed = lead_client.post(f"{P}/members/annotator/resume/", {}, format="json").json()
    lead_client.post(f"{P}/members/second/exclude/", {"reason": "Spam."}, format="json")

    assert paused["paused"] and paused["event"]["kind"] == "paused" and paused["event"]["by"] == "lead"
    assert again["paused"] and again["event"] is None
    assert not resumed["paused"] and resumed["event"]["reason"] == ""
    events = lead_client.get(f"{P}/member-events/").json()["results"]
    assert [(e["username"], e["kind"]) for e in events] == [
        ("second", "excluded"),
        ("annotator", "resumed"),
        ("annotator", "paused"),
    ]
    mine = lead_client.get(f"{P}/member-events/", {"username": "second"}).json()["results"]
    assert [e["reason"] for e in mine] == ["Spam."]
    assert lead_client.post(f"{P}/members/nobody/pause/", {"reason": "x"}, format="json").status_code == 404
