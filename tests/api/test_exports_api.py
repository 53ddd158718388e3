"""Dataset exports over the API: start one (202, enqueued after commit), poll it, download the file."""

import hashlib
import io
import json

import pyarrow.parquet as pq
import pytest

from annotate import tasks
from annotate.models import DatasetSnapshot, Project

P = "/api/v1/projects/helpfulness"


@pytest.fixture(autouse=True)
def _media(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path


@pytest.fixture
def enqueued(monkeypatch):
    """The snapshot ids handed to the Celery task (no broker in tests)."""
    ids = []
    monkeypatch.setattr(tasks.export_snapshot, "delay", ids.append)
    return ids


@pytest.fixture
def votes(client_for, annotator, second_annotator, project, make_task):
    """Three pairwise tasks, each answered by two annotators through the API."""
    for _ in range(3):
        make_task(project, "pairwise", ["good answer", "bad answer"], required=2)
    for user in (annotator, second_annotator):
        bot = client_for(user)
        while (lease := bot.post(f"{P}/next/")).status_code == 200:
            good = next(r for r in lease.json()["responses"] if r["content"] == "good answer")
            bot.post(lease.json()["submit_url"], {"preference": "a1" if good["letter"] == "A" else "b1"})


def start(client, django_capture_on_commit_callbacks, **body):
    with django_capture_on_commit_callbacks(execute=True):
        return client.post(f"{P}/exports/", body)


class TestCreate:
    def test_an_export_is_accepted_pending_and_enqueued_after_commit(
        self, lead_client, enqueued, django_capture_on_commit_callbacks
    ):
        response = start(lead_client, django_capture_on_commit_callbacks, kind="pairs", filters={"split": "train"})

        assert response.status_code == 202
        snapshot = response.json()
        assert snapshot["status"] == "pending" and snapshot["download_url"] is None
        assert (snapshot["kind"], snapshot["format"], snapshot["style"]) == ("pairs", "jsonl", "conversational")
        assert snapshot["filters"]["split"] == "train"
        assert snapshot["created_by"] == "lead"
        assert response.headers["Location"] == f"{P}/exports/{snapshot['id']}/"
        assert enqueued == [snapshot["id"]]

    @pytest.mark.parametrize(
        ("body", "field"),
        [
            ({"kind": "everything"}, "kind"),
            ({"kind": "pairs", "format": "csv"}, "format"),
            ({"kind": "votes", "filters": {"include_ties": True}}, "include_ties"),  # pairs only
            ({"kind": "pairs", "filters": {"since": "2026-02-30"}}, "since"),
            ({"kind": "pairs", "filters": {"since": "2026-03-01", "until": "2026-02-01"}}, "until"),
            ({"kind": "pairs", "filters": {"annotator": "nobody"}}, "annotator"),
            ({"kind": "pairs", "filters": {"min_agreement": 2}}, "filters"),
            ({"kind": "pairs", "filters": {"min_agreemnt": 0.5}}, "filters"),  # misspelt: refused, not ignored
        ],
    )
    def test_bad_options_are_400_by_field_and_start_nothing(
        self, lead_client, enqueued, django_capture_on_commit_callbacks, body, field
    ):
        response = start(lead_client, django_capture_on_commit_callbacks, **body)

        assert response.status_code == 400
        assert field in response.json()
        assert not DatasetSnapshot.objects.exists() and enqueued == []


class TestRunAndDownload:
    def test_poll_until_ready_then_download_the_file_its_sha256_names(
        self, lead_client, votes, enqueued, django_capture_on_commit_callbacks
    ):
        created = start(lead_client, django_capture_on_commit_callbacks, kind="pairs", style="standard").json()
        tasks.export_snapshot(enqueued[0])  # what the worker does

        snapshot = lead_client.get(f"{P}/exports/{created['id']}/").json()
        download = lead_client.get(snapshot["download_url"])

        assert snapshot["status"] == "ready" and snapshot["row_count"] == snapshot["rows_written"] == 3
        content = b"".join(download.streaming_content)
        assert download.status_code == 200
        assert download.headers["Content-Type"] == "application/jsonl"
        assert download.headers["ETag"] == f'"{snapshot["sha256"]}"'
        assert f'filename="helpfulness-pairs-{created["id"]}.jsonl"' in download.headers["Content-Disposition"]
        assert hashlib.sha256(content).hexdigest() == snapshot["sha256"]
        rows = [json.loads(line) for line in content.splitlines()]
        assert [(row["chosen"], row["rejected"]) for row in rows] == [("good answer", "bad answer")] * 3

    def test_parquet(self, lead_client, votes, enqueued, django_capture_on_commit_callbacks):
        created = start(lead_client, django_capture_on_commit_callbacks, kind="votes", format="parquet").json()
        tasks.export_snapshot(enqueued[0])

        download = lead_client.get(
            f"{P}/exports/{created['id']}/download/", HTTP_ACCEPT="application/vnd.apache.parquet"
        )

        assert download.headers["Content-Type"] == "application/vnd.apache.parquet"
        table = pq.read_table(io.BytesIO(b"".join(download.streaming_content)))
        assert table.num_rows == 6

    def test_downloading_before_it_is_ready_is_409(self, lead_client, enqueued, django_capture_on_commit_callbacks):
        created = start(lead_client, django_capture_on_commit_callbacks, kind="pairs").json()

        response = lead_client.get(f"{P}/exports/{created['id']}/download/")

        assert response.status_code == 409
        assert "pending" in response.json()["detail"]

    def test_the_list_is_newest_first(self, lead_client, enqueued, django_capture_on_commit_callbacks):
        for kind in ("pairs", "votes", "sft"):
            start(lead_client, django_capture_on_commit_callbacks, kind=kind)

        listed = lead_client.get(f"{P}/exports/").json()["results"]

        assert [s["kind"] for s in listed] == ["sft", "votes", "pairs"]

    def test_another_projects_export_is_404(self, lead_client):
        other = Project.objects.create(name="Other", slug="other")
        theirs = DatasetSnapshot.objects.create(project=other, kind="pairs")

        assert lead_client.get(f"{P}/exports/{theirs.pk}/").status_code == 404
        assert lead_client.get(f"/api/v1/projects/other/exports/{theirs.pk}/").status_code == 404
