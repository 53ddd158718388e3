"""NUL characters, which PostgreSQL cannot store, are refused with a clear error on both databases."""

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


def test_answer_with_nul_in_the_comment_is_refused(project):
    with pytest.raises(ValidationError) as error:
        clean_answer(project, "rating", [1], {"score": 3, "comment": "fine\u0000"})

    assert "comment" in error.value.message_dict
