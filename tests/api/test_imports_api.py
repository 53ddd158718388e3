"""Bulk import over the API (the one import path, import_file), and the prompt and response lists."""

import base64
import gzip
import io
import json

import pytest

from annotate.models import Prompt, Response, Task

P = "/api/v1/projects/helpfulness"


def jsonl(*rows):
    return "".join(json.dumps(row) + "\n" for row in rows).encode()


def upload(client, content, name="data.jsonl", **fields):
    return client.post(f"{P}/import/", {"file": io.BytesIO(content), **fields}, format="multipart")


class TestImport:
    def test_a_lead_imports_responses_and_gets_the_counts(self, lead_client, project):
        content = jsonl(
            {"id": "q1", "prompt": "Name a prime.", "responses": ["Two.", "Nine."]},
            {"id": "q2", "prompt": "Name a colour.", "responses": ["Red.", "Loud."], "split": "eval"},
        )

        response = upload(lead_client, content)

        assert response.status_code == 201
        assert response.json() == {
            "format": "responses",
            "filetype": "jsonl",
            "rows": 2,
            "prompts_created": 2,
            "prompts_existing": 0,
            "responses_created": 4,
            "tasks_created": 6,  # per prompt: two ratings and a pairwise
            "annotations_created": 0,
            "gold_tasks_created": 0,
        }
        assert Task.objects.filter(project=project).count() == 6

    def test_importing_the_same_file_again_changes_nothing(self, lead_client):
        content = jsonl({"id": "q1", "prompt": "Name a prime.", "responses": ["Two.", "Nine."]})
        upload(lead_client, content)

        again = upload(lead_client, content).json()

        assert (again["prompts_created"], again["prompts_existing"], again["tasks_created"]) == (0, 1, 0)

    def test_csv_and_gzip_and_a_forced_format(self, lead_client):
        csv = b"id,prompt\nq1,Name a prime.\nq2,Name a colour.\n"

        response = upload(lead_client, gzip.compress(csv), name="prompts.csv.gz", format="prompts")

        assert response.status_code == 201
        assert (response.json()["filetype"], response.json()["rows"]) == ("csv", 2)

    @pytest.mark.parametrize(
        ("content", "line", "field"),
        [
            (jsonl({"id": "q1", "prompt": "Hi?", "responses": ["ok"]}, {"id": "q2", "prompt": "Hi?"}), 2, "responses"),
            (jsonl({"id": "q1", "prompt": "Hi?", "responses": ["ok", ""]}), 1, "responses"),
            (jsonl({"id": "q1", "prompt": "Hi?", "split": "test"}), 1, "split"),
            (b'{"id": "q1", "prompt": "Hi?"}\n{"id": "q2", "prompt": \n', 2, None),
            (b"id,prompt,colour\nq1,Hi?,red\n", 1, "colour"),
        ],
        ids=["missing-field", "empty-response", "bad-split", "malformed-json", "unknown-column"],
    )
    def test_a_bad_file_is_400_with_line_and_field_and_writes_nothing(self, lead_client, content, line, field):
        response = upload(lead_client, content)

        assert response.status_code == 400
        error = response.json()
        assert (error["line"], error["field"]) == (line, field)
        assert error["detail"].startswith(f"line {line}")
        assert not Prompt.objects.exists()

    def test_an_empty_file_no_file_or_an_unknown_format_are_refused_in_the_same_shape(self, lead_client):
        empty = upload(lead_client, b"")
        missing = lead_client.post(f"{P}/import/", {}, format="multipart")
        unknown = upload(lead_client, jsonl({"prompt": "Hi?"}), format="tweets")

        assert empty.status_code == missing.status_code == unknown.status_code == 400
        assert (empty.json()["line"], empty.json()["field"]) == (None, "file")
        assert missing.json() == {"detail": "field 'file': No file was submitted.", "line": None, "field": "file"}
        assert unknown.json()["field"] == "format"

    def test_a_deeply_nested_line_is_400_naming_the_line_and_field(self, lead_client):
        # The file: 10 KB, nested 5,000 deep, which the json module cannot parse without a RecursionError.
        deep = b'{"prompt": "Hi?", "metadata": {"a": ' + b"[" * 5000 + b"]" * 5000 + b"}}\n"

        response = upload(lead_client, jsonl({"prompt": "Fine?"}) + deep)

        assert response.status_code == 400
        assert (response.json()["line"], response.json()["field"]) == (2, "metadata")
        assert not Prompt.objects.exists()

    def test_a_gzip_bomb_is_400_naming_the_limit(self, lead_client, settings):
        # One line that decompresses to 10 MB, against rows of at most 8 × 1,000 bytes.
        settings.ARBITER_IMPORT_MAX_FIELD_BYTES = 1000
        settings.ARBITER_IMPORT_INLINE_BYTES = 10**8  # read in the request, not queued as a job
        bomb = gzip.compress(b'{"prompt": "' + b"a" * 10**7 + b'"}\n')
        assert len(bomb) < 20_000

        response = upload(lead_client, bomb, name="bomb.jsonl.gz")

        assert response.status_code == 400
        assert response.json()["line"] == 1
        assert "ARBITER_IMPORT_MAX_FIELD_BYTES" in response.json()["detail"]
        assert not Prompt.objects.exists()

    def test_json_is_not_accepted_for_a_file(self, lead_client):
        assert lead_client.post(f"{P}/import/", {"file": "x"}).status_code == 415


class TestLists:
    @pytest.fixture
    def imported(self, lead_client):
        rows = [{"id": f"q{n}", "prompt": f"Question {n}?", "responses": [f"A{n}"]} for n in range(5)]
        rows[4]["split"] = "eval"
        assert upload(lead_client, jsonl(*rows)).status_code == 201

    def test_prompts_in_pages_by_cursor(self, lead_client, imported):
        first = lead_client.get(f"{P}/prompts/", {"page_size": 3}).json()
        rest = lead_client.get(first["next"]).json()

        ids = [p["external_id"] for p in first["results"] + rest["results"]]
        assert ids == ["q0", "q1", "q2", "q3", "q4"]
        assert first["results"][0]["messages"] == [{"role": "user", "content": "Question 0?"}]

    def test_prompts_by_split(self, lead_client, imported):
        rows = lead_client.get(f"{P}/prompts/", {"split": "eval"}).json()["results"]

        assert [p["external_id"] for p in rows] == ["q4"]
        assert lead_client.get(f"{P}/prompts/", {"split": "test"}).status_code == 400

    def test_responses_by_prompt(self, lead_client, imported):
        prompt = Prompt.objects.get(external_id="q2")

        rows = lead_client.get(f"{P}/responses/", {"prompt": prompt.pk}).json()["results"]

        assert [(r["prompt"], r["content"], r["source"]) for r in rows] == [(prompt.pk, "A2", "imported")]
        assert Response.objects.count() == 5

    @pytest.mark.parametrize("cursor", ["nonsense", "p=abc", "p=1e5", "p=99999999999999999999", "o=-1"])
    def test_a_bad_or_made_up_cursor_is_404(self, lead_client, imported, cursor):
        if "=" in cursor:
            cursor = base64.b64encode(cursor.encode()).decode()

        assert lead_client.get(f"{P}/prompts/", {"cursor": cursor}).status_code == 404
