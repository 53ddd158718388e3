"""What no database can store (NUL characters, half a surrogate pair, NaN and infinities in JSON) is refused with a
clear error naming the line and field, on both databases, never a 500 from the insert."""

import json

import pytest
from django.core.exceptions import ValidationError

from annotate.answers import clean_answer
from annotate.importing import ImportFailed, import_file
from annotate.models import Prompt, Response, Task


@pytest.mark.parametrize(
    "row, field",
    [
        ({"prompt": "Hi\u0000there", "responses": ["a", "b"]}, "prompt"),
        ({"prompt": "Hi", "responses": ["a", "b\u0000"]}, "responses"),
        ({"prompt": "Hi", "responses": ["a"], "metadata": {"note": "x\u0000"}}, "metadata"),
    ],
)
def test_import_refuses_nul_naming_line_and_field(project, tmp_path, row, field):
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps({"prompt": "Fine", "responses": ["ok"]}) + "\n" + json.dumps(row) + "\n")

    with pytest.raises(ImportFailed) as error:
        import_file(project, path)

    assert (error.value.line, error.value.field) == (2, field)
    assert "NUL" in str(error.value)
    assert (Prompt.objects.count(), Response.objects.count(), Task.objects.count()) == (0, 0, 0)


def test_import_refuses_a_raw_nul_in_csv(project, tmp_path):
    path = tmp_path / "rows.csv"
    path.write_bytes(b"id,prompt\nq1,fine\nq2,bad\x00cell\n")

    with pytest.raises(ImportFailed) as error:
        import_file(project, path)

    assert (error.value.line, error.value.field) == (3, "prompt")
    assert Prompt.objects.count() == 0


@pytest.mark.parametrize(
    "line, field, message",
    [
        ('{"prompt": "Hi \\ud800 there", "responses": ["a"]}', "prompt", "\\ud800, half of a surrogate pair"),
        ('{"prompt": "Hi", "responses": ["a", "\\udfff"]}', "responses", "\\udfff, half of a surrogate pair"),
        ('{"prompt": "Hi", "responses": ["a"], "metadata": {"score": NaN}}', "metadata", "nan, which is not a JSON"),
        ('{"prompt": "Hi", "responses": ["a"], "metadata": {"x": [-Infinity]}}', "metadata", "-inf, which is not"),
    ],
)
def test_import_refuses_what_json_reads_but_no_database_stores(project, tmp_path, line, field, message):
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps({"prompt": "Fine", "responses": ["ok"]}) + "\n" + line + "\n")

    with pytest.raises(ImportFailed) as error:
        import_file(project, path)

    assert (error.value.line, error.value.field) == (2, field)
    assert message in str(error.value)
    assert (Prompt.objects.count(), Response.objects.count(), Task.objects.count()) == (0, 0, 0)


@pytest.mark.parametrize("cell", ['{"note": "x\\u0000y"}', '{"a": NaN}', '{"a": "\\ud83d"}'])
def test_a_csv_metadata_cell_is_checked_after_its_escapes_are_read(project, tmp_path, cell):
    path = tmp_path / "rows.csv"
    path.write_text('id,prompt,metadata\nq1,fine,{}\nq2,also fine,"' + cell.replace('"', '""') + '"\n')

    with pytest.raises(ImportFailed) as error:
        import_file(project, path)

    assert (error.value.line, error.value.field) == (3, "metadata")
    assert Prompt.objects.count() == 0


def test_answer_with_nul_in_the_comment_is_refused(project):
    with pytest.raises(ValidationError) as error:
        clean_answer(project, "rating", [1], {"score": 3, "comment": "fine\u0000"})

    assert "comment" in error.value.message_dict
