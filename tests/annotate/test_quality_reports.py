"""The Quality page's figures: computed by a worker into one QualityReport per project, refreshed one at a time (by
beat for projects with new answers, or on a lead's request), and flagged against the thresholds when read."""

from datetime import timedelta

import pytest
from django.utils import timezone

from annotate import quality_reports
from annotate.models import Annotation, Membership, MembershipEvent, Project, QualityReport
from annotate.quality_reports import (
    MIN_GOLD_ANSWERS,
    MIN_TIMED_ANSWERS,
    _no_figures,
    flags,
    quality_for,
    refresh_quality_reports,
    request_quality,
    run_quality_report,
)
from tests.annotate.test_quality import answer, new_task
from tests.celery_worker import Worker, wait_for


@pytest.fixture
def people(project, make_user):
    users = {name: make_user(name) for name in ("ann", "bob")}
    for user in users.values():
        Membership.objects.create(project=project, user=user)
    return users


def answered(project, user, n, *, seconds=20.0, first=True):
    """n pairwise answers, each for the response shown first (or not), taking `seconds` each."""
    for _ in range(n):
        task, (a, b) = new_task(project, "pairwise", ("short", "a longer one"))
        answer(task, user, [a, b], seconds=seconds, choice="a" if first else "b", strength=1)


class TestFlags:
    def test_three_answers_cannot_flag_anyone_and_enough_do(self, project):
        few = {
            **_no_figures("ann"),
            "gold_answers": 3, "gold_accuracy": 0.0, "compared_answers": 3, "competence": -0.5,
            "first_position_choices": 3, "position_p_value": 0.25, "timed_answers": 3, "fast_share": 1.0,
        }  # fmt: skip
        project.position_bias_p = 0.5  # even a p-value this loose needs enough choices

        assert flags(few, project) == []
        enough = {
            **few,
            "gold_answers": MIN_GOLD_ANSWERS, "compared_answers": 20, "first_position_choices": 20,
            "timed_answers": MIN_TIMED_ANSWERS,
        }  # fmt: skip
        assert flags(enough, project) == ["low_gold_accuracy", "low_competence", "position_bias", "too_fast"]

    def test_each_flag_against_its_threshold(self, project):
        figures = {
            **_no_figures("ann"),
            "gold_answers": 40, "gold_accuracy": 0.7, "compared_answers": 40, "competence": 0.2,
            "first_position_choices": 40, "position_p_value": 0.01, "timed_answers": 40, "fast_share": 0.25,
        }  # fmt: skip
        assert flags(figures, project) == []  # each exactly at its threshold: not past it
        project.min_gold_accuracy, project.min_competence = 0.71, 0.21
        project.position_bias_p, project.max_fast_share = 0.011, 0.24
        assert flags(figures, project) == ["low_gold_accuracy", "low_competence", "position_bias", "too_fast"]

    def test_rankings_can_show_a_position_bias_too(self, project):
        figures = {**_no_figures("ann"), "first_ranked_rankings": 25, "first_ranked_p_value": 1e-6}
        assert flags(figures, project) == ["position_bias"]


class TestReport:
    def test_before_any_refresh_the_members_are_listed_without_figures(self, project, people):
        shown = quality_for(project)

        assert (shown["status"], shown["computed_at"], shown["project"]) == (None, None, None)
        assert [row["username"] for row in shown["annotators"]] == ["ann", "bob"]
        assert shown["annotators"][0]["answers"] == 0 and shown["annotators"][0]["flags"] == []

    def test_a_refresh_runs_once_and_its_figures_are_read_with_the_flags_and_membership_now(
        self, project, people, lead, enqueued, django_capture_on_commit_callbacks
    ):
        ann, bob = people["ann"], people["bob"]
        answered(project, ann, 25, seconds=1)  # fast
        answered(project, bob, 25)
        with django_capture_on_commit_callbacks(execute=True):
            assert request_quality(project, user=lead)
            assert not request_quality(project, user=lead)  # one at a time: already queued
        report = QualityReport.objects.get(project=project)
        assert enqueued == [report.pk] and report.status == "pending" and report.requested_by == lead

        assert run_quality_report(report).status == "ready"
        assert run_quality_report(QualityReport.objects.get(pk=report.pk)).status == "ready"  # delivered twice: once

        report.refresh_from_db()
        assert report.computed_at == report.started_at and report.fast_seconds == project.fast_seconds == 5
        shown = quality_for(project)
        assert shown["status"] == "ready" and shown["project"]["answers"] == 50
        assert [(row["username"], row["flags"]) for row in shown["annotators"]] == [
            ("ann", ["position_bias", "too_fast"]),  # always the first shown, in a second: flagged ones first
            ("bob", ["position_bias"]),
        ]
        ann_row = shown["annotators"][0]
        assert (ann_row["answers"], ann_row["median_seconds"], ann_row["fast_share"]) == (25, 1.0, 1.0)
        assert ann_row["first_position_share"] == 1.0 and ann_row["first_position_low"] < 1.0
        # The thresholds and decisions are read when shown, not when computed.
        project.position_bias_p, project.max_fast_share = 0.0, 1.0
        project.save()
        Membership.objects.get(user=bob).decide(MembershipEvent.Kind.PAUSED, by=lead, reason="Checking.")
        shown = quality_for(project)
        assert [(row["username"], row["flags"], row["paused"]) for row in shown["annotators"]] == [
            ("ann", [], False),
            ("bob", [], True),
        ]

        # A new refresh replaces every figure at once.
        answered(project, bob, 5, seconds=2)
        with django_capture_on_commit_callbacks(execute=True):
            assert request_quality(project)
        run_quality_report(QualityReport.objects.get(pk=report.pk))
        assert quality_for(project)["project"]["answers"] == 55

    def test_a_failed_refresh_keeps_the_last_figures_and_says_why(
        self, project, people, enqueued, monkeypatch, django_capture_on_commit_callbacks
    ):
        answered(project, people["ann"], 3)
        with django_capture_on_commit_callbacks(execute=True):
            request_quality(project)
        report = run_quality_report(QualityReport.objects.get(project=project))

        def broken(*args, **kwargs):
            raise RuntimeError("the database went away in /srv/arbiter/var")

        monkeypatch.setattr(quality_reports, "annotator_quality", broken)
        with django_capture_on_commit_callbacks(execute=True):
            request_quality(project)
        failed = run_quality_report(QualityReport.objects.get(pk=report.pk))

        assert failed.status == "failed" and failed.error == "the database went away in <path>"
        shown = quality_for(project)
        assert shown["status"] == "failed" and shown["computed_at"] == report.computed_at
        assert shown["project"]["answers"] == 3
        with django_capture_on_commit_callbacks(execute=True):
            assert request_quality(project)  # a failed one may be asked again


class TestBeat:
    def test_queues_only_projects_with_new_human_answers(
        self, project, people, enqueued, django_capture_on_commit_callbacks
    ):
        quiet = Project.objects.create(name="Quiet", slug="quiet")
        task, _ = new_task(quiet, "pairwise", ("x", "y"))
        Annotation.objects.create(task=task, source="imported", choice="a", strength=1)  # not a person's answer
        answered(project, people["ann"], 2)

        with django_capture_on_commit_callbacks(execute=True):
            assert refresh_quality_reports() == 1
        assert enqueued == [QualityReport.objects.get(project=project).pk]
        assert not QualityReport.objects.filter(project=quiet).exists()

        run_quality_report(QualityReport.objects.get(project=project))
        with django_capture_on_commit_callbacks(execute=True):
            assert refresh_quality_reports() == 0  # nothing new since the last look
        answer(task, people["bob"], None, choice="b", strength=1)
        with django_capture_on_commit_callbacks(execute=True):
            assert refresh_quality_reports() == 1
        assert enqueued[-1] == QualityReport.objects.get(project=quiet).pk

    def test_fails_a_refresh_whose_worker_died_and_sends_a_lost_one_again(self, project, settings, enqueued):
        other = Project.objects.create(name="Other", slug="other")
        long_ago = timezone.now() - timedelta(minutes=30)
        dead = QualityReport.objects.create(project=project, status="running", heartbeat_at=long_ago)
        lost = QualityReport.objects.create(project=other, status="pending", requested_at=long_ago)

        refresh_quality_reports()

        dead.refresh_from_db()
        assert dead.status == "failed" and "stopped sending heartbeats" in dead.error
        assert enqueued == [lost.pk]


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_celery_worker_refreshes_what_beat_queued(project, people, worker_env, tmp_path):
    answered(project, people["ann"], 4)

    assert refresh_quality_reports() == 1  # committed: its message goes to the broker

    worker = Worker(worker_env, tmp_path / "worker.log", queues="default")
    try:
        wait_for(lambda: QualityReport.objects.get(project=project).status == "ready", "the refresh", worker)
    finally:
        worker.stop()
    assert "Task annotate.tasks.refresh_quality[" in worker.output()
    assert quality_for(project)["annotators"][0]["answers"] == 4
