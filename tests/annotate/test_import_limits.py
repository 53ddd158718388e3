"""Import limits: no line, record or text past its cap, no file past its size, no JSON nested too deep.

Each refusal names the line (and the field where there is one) and writes nothing. The reading tests feed
streams that fail the test if read much beyond the limit, which shows that a refusal comes while reading,
not after a whole line has been taken into memory (benchmarks/import_memory.py measures the memory itself).
"""

import csv
import gzip
import io
import json
import os

import pytest

from annotate import importing
from annotate.importing import MAX_NESTING, ImportFailed, import_file
from annotate.models import Prompt

FIELD = 1000  # ARBITER_IMPORT_MAX_FIELD_BYTES in these tests
ROW = importing.ROW_FIELDS * FIELD  # the most one line or CSV record may hold
READ_AHEAD = 64 * 1024  # what buffered readers may fetch beyond the byte they need


@pytest.fixture(autouse=True)
def small_field_limit(settings):
    settings.ARBITER_IMPORT_MAX_FIELD_BYTES = FIELD


def jsonl(*rows) -> bytes:
    return "".join(json.dumps(row) + "\n" for row in rows).encode()


def csv_bytes(header, *rows) -> bytes:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows([header, *rows])
    return out.getvalue().encode()


def refused(project, content: bytes) -> ImportFailed:
    with pytest.raises(ImportFailed) as excinfo:
        import_file(project, io.BytesIO(content))
    assert not Prompt.objects.exists()
    return excinfo.value


def nested(depth: int, leaf=1):
    """A value `depth` lists deep."""
    for _ in range(depth):
        leaf = [leaf]
    return leaf


class Endless(io.RawIOBase):
    """A line that never ends (`head`, then "a" forever), unseekable, failing the test if read past `budget`."""

    def __init__(self, head: bytes, budget: int) -> None:
        self.head, self.budget, self.consumed = head, budget, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self.consumed > self.budget:
            raise AssertionError(f"read {self.consumed:,} bytes, more than {self.budget:,}")
        chunk = (self.head + b"a" * len(buffer))[: len(buffer)]
        self.head = self.head[len(chunk) :]
        buffer[: len(chunk)] = chunk
        self.consumed += len(chunk)
        return len(chunk)


class Counting(io.BytesIO):
    """Bytes in memory that count how many of them were read."""

    consumed = 0

    def read(self, size=-1):
        data = super().read(size)
        self.consumed += len(data)
        return data


class TestRowLimit:
    def test_a_jsonl_line_one_byte_over_the_limit_is_refused_naming_the_line_and_setting(self, project):
        def line(size: int) -> bytes:
            # A row of several texts under the field limit, padded in its metadata to `size` bytes.
            responses = [letter * 950 for letter in "abcdefg"]
            row = {"id": "q2", "prompt": "p" * 900, "responses": responses, "metadata": {"pad": ""}}
            row["metadata"]["pad"] = "x" * (size - len(json.dumps(row)))
            assert len(json.dumps(row)) == size
            return json.dumps(row).encode() + b"\n"

        ok = jsonl({"id": "q1", "prompt": "Fine?", "responses": ["Yes."]})

        error = refused(project, ok + line(ROW + 1))
        assert (error.line, error.field) == (2, None)
        assert f"{ROW:,} bytes" in str(error) and "ARBITER_IMPORT_MAX_FIELD_BYTES" in str(error)

        assert import_file(project, io.BytesIO(ok + line(ROW))).rows == 2

    def test_a_csv_record_over_the_limit_is_refused_naming_the_line_it_starts_on(self, project):
        # Every physical line is short; the quoted cell spanning them is not.
        content = csv_bytes(["id", "prompt"], ["q1", "Fine?"], ["q2", "Long?\n" * (ROW // 6)])
        assert max(len(line) for line in content.splitlines()) < 10
        error = refused(project, content)
        assert (error.line, error.field) == (3, None)
        assert "ARBITER_IMPORT_MAX_FIELD_BYTES" in str(error)

    def test_reading_a_line_stops_at_the_limit_however_long_the_line(self, project):
        stream = Endless(b'{"prompt": "', budget=ROW + READ_AHEAD)
        with pytest.raises(ImportFailed) as excinfo:
            import_file(project, io.BufferedReader(stream))
        assert excinfo.value.line == 1
        assert "ARBITER_IMPORT_MAX_FIELD_BYTES" in str(excinfo.value)

    def test_reading_a_line_stops_at_the_file_size_limit(self, project, settings):
        settings.ARBITER_IMPORT_MAX_FIELD_BYTES = 2**20  # rows of 8 MiB: the file limit comes first
        settings.ARBITER_IMPORT_MAX_BYTES = 5000
        stream = Endless(b'{"prompt": "', budget=5000 + READ_AHEAD)
        with pytest.raises(ImportFailed) as excinfo:
            import_file(project, io.BufferedReader(stream))
        assert "ARBITER_IMPORT_MAX_BYTES" in str(excinfo.value)
        assert not Prompt.objects.exists()

    def test_a_gzip_bomb_line_is_refused_having_read_little_of_it(self, project):
        # Random hex digits compress to about half: 2.3 MB of gzip for a 4 MB line, which is read only to 8,000 bytes.
        bomb = Counting(gzip.compress(b'{"prompt": "' + os.urandom(2 * 10**6).hex().encode(), compresslevel=1))
        with pytest.raises(ImportFailed) as excinfo:
            import_file(project, bomb)
        assert excinfo.value.line == 1
        assert "ARBITER_IMPORT_MAX_FIELD_BYTES" in str(excinfo.value)
        assert bomb.consumed < READ_AHEAD, f"read {bomb.consumed:,} of {len(bomb.getvalue()):,} bytes"
        assert len(bomb.getvalue()) > 2 * 10**6

    def test_rows_are_written_in_batches_of_bounded_bytes(self, project, monkeypatch):
        # Rows of about 3 KB in batches of at most 10 KB of the file: no more than 4 rows a batch.
        monkeypatch.setattr(importing, "BATCH_BYTES", 10_000)
        batches = []
        write_batch = importing._write_batch

        def spy(project, rows, *args):
            batches.append(len(rows))
            write_batch(project, rows, *args)

        monkeypatch.setattr(importing, "_write_batch", spy)
        rows = [{"id": f"q{n}", "prompt": "Why?", "responses": ["a" * 950, "b" * 950, "c" * 950]} for n in range(20)]

        assert import_file(project, io.BytesIO(jsonl(*rows))).rows == 20
        assert sum(batches) == 20 and max(batches) <= 4, batches


# (row, field) of one-row files in which one text is over FIELD bytes.
LONG = "a" * (FIELD + 1)
LONG_TEXTS = {
    "prompt": ({"prompt": LONG}, "prompt"),
    "message content": ({"messages": [{"role": "user", "content": LONG}]}, "messages"),
    "response": ({"prompt": "Hi?", "responses": ["Yes.", LONG]}, "responses"),
    "single response": ({"prompt": "Hi?", "response": LONG}, "response"),
    "chosen": ({"prompt": "Hi?", "chosen": LONG, "rejected": "No."}, "chosen"),
    "rejected in a message": (
        {"prompt": "Hi?", "chosen": "Yes.", "rejected": [{"role": "assistant", "content": LONG}]},
        "rejected",
    ),
    "metadata as JSON": ({"prompt": "Hi?", "metadata": {"tags": ["x" * 100] * 10}}, "metadata"),
}


class TestFieldLimit:
    @pytest.mark.parametrize(("row", "field"), LONG_TEXTS.values(), ids=LONG_TEXTS.keys())
    def test_a_jsonl_text_over_the_limit_is_refused_naming_line_and_field(self, project, row, field):
        error = refused(project, jsonl(row))
        assert (error.line, error.field) == (1, field)
        assert f"{FIELD:,}" in str(error) and "ARBITER_IMPORT_MAX_FIELD_BYTES" in str(error)

    @pytest.mark.parametrize(
        ("header", "row", "field"),
        [
            (["id", "prompt"], ["q1", LONG], "prompt"),
            (["prompt", "response_1", "response_2"], ["Hi?", "Yes.", LONG], "response_2"),
            (["prompt", "metadata"], ["Hi?", json.dumps({"tags": ["x" * 100] * 10})], "metadata"),
        ],
        ids=["prompt", "numbered response", "metadata"],
    )
    def test_a_csv_cell_over_the_limit_is_refused_naming_line_and_column(self, project, header, row, field):
        error = refused(project, csv_bytes(header, row))
        assert (error.line, error.field) == (2, field)
        assert "ARBITER_IMPORT_MAX_FIELD_BYTES" in str(error)

    def test_the_limit_counts_utf8_bytes(self, project):
        fits, over = "é" * (FIELD // 2), "é" * (FIELD // 2 + 1)  # two bytes a character

        error = refused(project, jsonl({"prompt": over}))
        assert (error.line, error.field) == (1, "prompt")
        assert import_file(project, io.BytesIO(jsonl({"prompt": fits}))).prompts_created == 1


class TestNesting:
    @pytest.fixture(autouse=True)
    def room_for_long_lines(self, settings):
        settings.ARBITER_IMPORT_MAX_FIELD_BYTES = 2**20  # the issue's lines are 10 KB, over the tests' usual rows

    def test_metadata_nested_to_the_limit_is_stored_and_read_back(self, project):
        metadata = {"deep": nested(MAX_NESTING - 1)}  # the object is one level, its lists the rest
        import_file(project, io.BytesIO(jsonl({"id": "q1", "prompt": "Hi?", "metadata": metadata})))
        assert Prompt.objects.get(external_id="q1").metadata == metadata

    @pytest.mark.parametrize("depth", [MAX_NESTING + 1, 5000], ids=["one too deep", "the issue's 5000"])
    def test_jsonl_metadata_nested_too_deep_is_refused_naming_line_and_field(self, project, depth):
        line = b'{"prompt": "Hi?", "metadata": {"a": ' + nested_text(depth - 1) + b"}}\n"
        error = refused(project, jsonl({"id": "q1", "prompt": "Fine?"}) + line)
        assert (error.line, error.field) == (2, "metadata")
        assert f"{MAX_NESTING}" in str(error)

    def test_a_nested_prompt_names_the_prompt(self, project):
        error = refused(project, b'{"id": "q1", "split": "train", "prompt": ' + nested_text(5000) + b"}\n")
        assert (error.line, error.field) == (1, "prompt")

    def test_a_line_that_is_only_nesting_names_the_line(self, project):
        error = refused(project, jsonl({"prompt": "Fine?"}) + nested_text(5000) + b"\n")
        assert (error.line, error.field) == (2, None)

    @pytest.mark.parametrize("column", ["metadata", "messages"])
    def test_a_csv_json_cell_nested_too_deep_is_refused_naming_line_and_column(self, project, column):
        deep = nested_text(5000).decode()
        if column == "metadata":
            content = csv_bytes(["prompt", "metadata"], ["Fine?", "{}"], ["Hi?", deep])
        else:
            content = csv_bytes(["messages"], [json.dumps([{"role": "user", "content": "Fine?"}])], [deep])
        error = refused(project, content)
        assert (error.line, error.field) == (3, column)

    def test_brackets_inside_strings_do_not_count(self, project):
        text = 'He typed "[[{{" and left \\' + "[" * 5000
        import_file(project, io.BytesIO(jsonl({"id": "q1", "prompt": text, "metadata": {"key [": "{" * 100}})))
        assert Prompt.objects.get(external_id="q1").messages[0]["content"] == text


def nested_text(depth: int) -> bytes:
    return b"[" * depth + b"1" + b"]" * depth
