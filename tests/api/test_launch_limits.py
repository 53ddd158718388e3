"""Limits on launching: per project, the rounds and exports under way are capped (409, nothing queued); per user,
launches and exports are throttled (429 with Retry-After); reading the lists never is."""

import threading
from types import SimpleNamespace

import pytest
from django.db import connection

from annotate import tasks as annotate_tasks
from annotate.exports import queue_export
from annotate.models import DatasetSnapshot, Project, QuotaReached
from training import tasks as training_tasks
from training.models import TrainingRound
from training.rounds import launch_round

P = "/api/v1/projects/helpfulness"
HUB_BASE = "tiny/base"  # a hub id: launching does not load it


@pytest.fixture
def enqueued(monkeypatch):
    """What was handed to the Celery tasks (no worker in these tests)."""
    sent = []
    monkeypatch.setattr(
        training_tasks.run_training_round, "delay", lambda pk: sent.append(pk) or SimpleNamespace(id="")
    )
    monkeypatch.setattr(annotate_tasks.export_snapshot, "delay", sent.append)
    return sent


@pytest.fixture
def post(django_capture_on_commit_callbacks):
    def send(client, path, body=None):
        with django_capture_on_commit_callbacks(execute=True):
            return client.post(f"{P}/{path}", body)

    return send


ROUND = {"method": "dpo", "base": HUB_BASE}
EXPORT = {"kind": "pairs"}


class TestRoundQuota:
    def test_a_launch_beyond_the_projects_rounds_under_way_is_409_and_queues_nothing(
        self, lead_client, project, lead, settings, enqueued, post
    ):
        settings.ARBITER_MAX_ACTIVE_ROUNDS = 2
        assert [post(lead_client, "rounds/", ROUND).status_code for _ in range(2)] == [201, 201]
        TrainingRound.objects.filter(number=1).update(status="running")  # running counts as queued does

        refused = post(lead_client, "rounds/", ROUND)

        assert refused.status_code == 409
        assert refused.json() == {
            "detail": "helpfulness has 2 rounds queued or running, the most allowed (ARBITER_MAX_ACTIVE_ROUNDS): "
            "wait for one to finish, or cancel one."
        }
        assert TrainingRound.objects.count() == DatasetSnapshot.objects.count() == len(enqueued) == 2
        assert post(lead_client, "rounds/1/relaunch/").status_code == 409  # a relaunch is a launch
        # Another project has places of its own; a round that ends frees one.
        other = Project.objects.create(name="Other", slug="other")
        assert launch_round(other, method="dpo", base=HUB_BASE, user=lead).number == 1
        post(lead_client, "rounds/2/cancel/")
        assert post(lead_client, "rounds/", ROUND).status_code == 201

    def test_the_admin_form_says_so_and_queues_nothing(self, client, lead, project, settings):
        from annotate.admin import project_leads_group

        settings.ARBITER_MAX_ACTIVE_ROUNDS = 1
        launch_round(project, method="dpo", base=HUB_BASE)
        lead.groups.add(project_leads_group())
        client.force_login(lead)

        page = client.post("/admin/training/traininground/launch/", {"project": project.pk, **ROUND})

        assert page.status_code == 200 and "the most allowed (ARBITER_MAX_ACTIVE_ROUNDS)" in page.content.decode()
        assert TrainingRound.objects.count() == 1


class TestExportQuota:
    def test_an_export_beyond_the_projects_exports_under_way_is_409_and_queues_nothing(
        self, lead_client, project, settings, enqueued, post
    ):
        settings.ARBITER_MAX_ACTIVE_EXPORTS = 2
        launch_round(project, method="dpo", base=HUB_BASE)  # a round's pending snapshot is the round's quota
        assert [post(lead_client, "exports/", EXPORT).status_code for _ in range(2)] == [202, 202]

        refused = post(lead_client, "exports/", EXPORT)

        assert refused.status_code == 409
        assert refused.json() == {
            "detail": "helpfulness has 2 exports pending or running, the most allowed (ARBITER_MAX_ACTIVE_EXPORTS): "
            "wait for one to finish."
        }
        assert DatasetSnapshot.objects.count() == 3 and len(enqueued) == 2
        DatasetSnapshot.objects.filter(pk=enqueued[0]).update(status="ready")  # one that ended frees its place
        assert post(lead_client, "exports/", EXPORT).status_code == 202

    def test_the_admin_form_says_so_and_queues_nothing(self, client, lead, project, settings, enqueued):
        from annotate.admin import project_leads_group

        settings.ARBITER_MAX_ACTIVE_EXPORTS = 1
        queue_export(project, kind="pairs", user=lead)
        lead.groups.add(project_leads_group())
        client.force_login(lead)

        page = client.post(f"/admin/annotate/project/{project.pk}/export/", {**EXPORT, "format": "jsonl",
                                                                              "style": "conversational"})  # fmt: skip

        assert page.status_code == 200 and "the most allowed (ARBITER_MAX_ACTIVE_EXPORTS)" in page.content.decode()
        assert DatasetSnapshot.objects.count() == 1


class TestThrottles:
    def test_launches_and_relaunches_are_throttled_per_user_and_listing_is_not(
        self, lead_client, admin, client_for, settings, throttle_rates, enqueued, post
    ):
        throttle_rates("launch", "2/hour")
        settings.ARBITER_MAX_ACTIVE_ROUNDS = 10
        assert post(lead_client, "rounds/", ROUND).status_code == 201
        assert post(lead_client, "rounds/1/relaunch/").status_code == 201

        throttled = post(lead_client, "rounds/", ROUND)

        assert throttled.status_code == 429 and int(throttled["Retry-After"]) > 0
        assert post(lead_client, "rounds/1/relaunch/").status_code == 429
        assert TrainingRound.objects.count() == 2
        assert lead_client.get(f"{P}/rounds/").status_code == 200
        assert post(client_for(admin), "rounds/", ROUND).status_code == 201  # another user's launches are theirs

    def test_exports_are_throttled_per_user_and_listing_is_not(
        self, lead_client, settings, throttle_rates, enqueued, post
    ):
        throttle_rates("export", "2/hour")
        settings.ARBITER_MAX_ACTIVE_EXPORTS = 10
        assert [post(lead_client, "exports/", EXPORT).status_code for _ in range(3)] == [202, 202, 429]
        assert DatasetSnapshot.objects.count() == 2
        assert lead_client.get(f"{P}/exports/").status_code == 200


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_launches_and_exports_at_once_never_pass_the_quota(project, lead, settings):
    settings.ARBITER_MAX_ACTIVE_ROUNDS = settings.ARBITER_MAX_ACTIVE_EXPORTS = 2
    start = threading.Barrier(8)
    outcomes: list[str] = []

    def run(what: str) -> None:
        start.wait()
        try:
            if what == "round":
                launch_round(project, method="dpo", base=HUB_BASE, user=lead)
            else:
                queue_export(project, kind="pairs", user=lead)
            outcomes.append(f"{what} queued")
        except QuotaReached:
            outcomes.append(f"{what} refused")
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=[what]) for what in ["round", "export"] * 4]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert (
        sorted(outcomes)
        == ["export queued"] * 2 + ["export refused"] * 2 + ["round queued"] * 2 + ["round refused"] * 2
    )
    assert TrainingRound.objects.count() == 2 and DatasetSnapshot.objects.filter(training_rounds=None).count() == 2
