"""Importing prompts, responses and preference pairs from JSONL and CSV, and the import_data command."""

import csv
import gzip
import io
import json
import os
import re
import shutil
import subprocess
import sys
from itertools import combinations
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django.db.models import F

from annotate.importing import ImportFailed, import_file
from annotate.models import Annotation, Project, Prompt, Response, Task, TaskResponse

REPO_ROOT = Path(__file__).resolve().parents[2]
HH_FILE = REPO_ROOT.parent / "shared" / "data" / "hh-rlhf-harmless-base-test.jsonl.gz"
HH_ROWS = 2312
HH_PROMPTS = 2310  # two prompts ("what are racist words", "call me a bad name") appear in two rows each
ASSISTANT = "\n\nAssistant:"


def jsonl(*rows) -> str:
    return "".join(json.dumps(row) + "\n" for row in rows)


def csv_text(header, *rows) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue()


@pytest.fixture
def write(tmp_path):
    """Write text (or bytes) to a file under tmp_path and return its path."""

    def write(name: str, content: str | bytes) -> Path:
        path = tmp_path / name
        path.write_bytes(content.encode() if isinstance(content, str) else content)
        return path

    return write


def row_counts() -> dict[str, int]:
    return {model.__name__: model.objects.count() for model in (Prompt, Response, Task, TaskResponse, Annotation)}


NOTHING = {"Prompt": 0, "Response": 0, "Task": 0, "TaskResponse": 0, "Annotation": 0}


def contents(task) -> list[str]:
    """The task's response texts in position order."""
    return [tr.response.content for tr in task.task_responses.select_related("response").order_by("position")]


def chosen_and_rejected(task) -> tuple[str, str]:
    """The texts the task's imported annotation prefers and rejects."""
    annotation = task.annotations.get()
    a, b = contents(task)
    return (a, b) if annotation.choice == "a" else (b, a)


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


class TestPrompts:
    def test_jsonl_prompt_string_becomes_one_user_message(self, project, write):
        path = write(
            "prompts.jsonl",
            jsonl(
                {"id": "q1", "prompt": "What is 2+2?", "split": "eval", "metadata": {"topic": "maths", "level": 1}},
                {"id": "q2", "prompt": "Name a colour."},
            ),
        )
        result = import_file(project, path)

        assert (result.format, result.filetype, result.rows) == ("prompts", "jsonl", 2)
        assert (result.prompts_created, result.prompts_existing) == (2, 0)
        assert (result.responses_created, result.tasks_created, result.annotations_created) == (0, 0, 0)
        q1, q2 = Prompt.objects.filter(project=project).order_by("external_id")
        assert (q1.external_id, q1.messages, q1.split, q1.metadata) == (
            "q1",
            [user("What is 2+2?")],
            "eval",
            {"topic": "maths", "level": 1},
        )
        assert (q2.external_id, q2.messages, q2.split, q2.metadata) == ("q2", [user("Name a colour.")], "train", {})
        assert row_counts() == {**NOTHING, "Prompt": 2}

    def test_jsonl_messages_are_kept_in_order(self, project, write):
        messages = [
            {"role": "system", "content": "Be brief."},
            user("Hi."),
            assistant("Hello."),
            user("What is the capital of France?"),
        ]
        import_file(project, write("chat.jsonl", jsonl({"id": "c1", "messages": messages})))
        assert Prompt.objects.get(external_id="c1").messages == messages

    def test_jsonl_prompt_may_be_a_message_list(self, project, write):
        messages = [user("Hi."), assistant("Hello."), user("Bye?")]
        result = import_file(project, write("chat.jsonl", jsonl({"id": "c1", "prompt": messages})))
        assert result.format == "prompts"
        assert Prompt.objects.get(external_id="c1").messages == messages

    def test_csv_prompts_with_json_columns(self, project, write):
        messages = [user("Hi."), assistant("Hello."), user("Tell me a joke, please.")]
        path = write(
            "prompts.csv",
            csv_text(
                ["id", "messages", "split", "metadata"],
                ["c1", json.dumps(messages), "eval", json.dumps({"source": "forum"})],
                ["c2", json.dumps([user('Quote "this", with a comma')]), "", ""],
            ),
        )
        result = import_file(project, path)

        assert (result.format, result.filetype, result.rows, result.prompts_created) == ("prompts", "csv", 2, 2)
        c1 = Prompt.objects.get(project=project, external_id="c1")
        assert (c1.messages, c1.split, c1.metadata) == (messages, "eval", {"source": "forum"})
        c2 = Prompt.objects.get(project=project, external_id="c2")
        assert (c2.messages, c2.split, c2.metadata) == ([user('Quote "this", with a comma')], "train", {})

    def test_csv_prompt_column_keeps_multiline_text(self, project, write):
        path = write("prompts.csv", csv_text(["id", "prompt"], ["p1", "Line one,\nline two."]))
        import_file(project, path)
        assert Prompt.objects.get(external_id="p1").messages == [user("Line one,\nline two.")]

    def test_prompt_without_id_gets_a_stable_id_from_its_messages(self, project, write):
        path = write("prompts.jsonl", jsonl({"prompt": "First?"}, {"prompt": "Second?"}))
        import_file(project, path)
        other = Project.objects.create(name="Other", slug="other")
        import_file(other, path)

        ids = {p.messages[0]["content"]: p.external_id for p in Prompt.objects.filter(project=project)}
        other_ids = {p.messages[0]["content"]: p.external_id for p in Prompt.objects.filter(project=other)}
        assert ids == other_ids
        assert len(set(ids.values())) == 2
        assert all(ids.values())

    def test_string_prompt_and_equal_message_list_share_a_derived_id(self, project, write):
        import_file(project, write("a.jsonl", jsonl({"prompt": "Same question?"})))
        result = import_file(project, write("b.jsonl", jsonl({"messages": [user("Same question?")]})))
        assert (result.prompts_created, result.prompts_existing) == (0, 1)
        assert Prompt.objects.count() == 1

    def test_blank_id_counts_as_no_id(self, project, write):
        path = write(
            "prompts.jsonl", jsonl({"id": "  ", "prompt": "Hi?"}, {"id": "", "prompt": "Hi?"}, {"prompt": "Hi?"})
        )
        assert import_file(project, path).prompts_created == 1
        assert Prompt.objects.get().external_id.strip()

    def test_source_may_be_a_str_path_or_a_binary_file(self, project, write):
        path = write("prompts.jsonl", jsonl({"id": "q1", "prompt": "From a path?"}))
        assert import_file(project, str(path)).prompts_created == 1
        stream = io.BytesIO(jsonl({"id": "q2", "prompt": "From a stream?"}).encode())
        assert import_file(project, stream).prompts_created == 1
        assert set(Prompt.objects.values_list("external_id", flat=True)) == {"q1", "q2"}


class TestResponses:
    def test_two_responses_make_rating_tasks_and_one_pairwise_task(self, project, write):
        path = write(
            "responses.jsonl", jsonl({"id": "q1", "prompt": "Greet me.", "responses": ["Hi!", "Hello there."]})
        )
        result = import_file(project, path)

        assert (result.format, result.rows, result.prompts_created, result.responses_created) == (
            "responses",
            1,
            1,
            2,
        )
        assert result.tasks_created == 3
        prompt = Prompt.objects.get(external_id="q1")
        responses = list(prompt.responses.all())
        assert [(r.content, r.source, r.model_version) for r in responses] == [
            ("Hi!", "imported", None),
            ("Hello there.", "imported", None),
        ]
        ratings = Task.objects.filter(kind="rating")
        assert sorted(contents(task) for task in ratings) == [["Hello there."], ["Hi!"]]
        pairwise = Task.objects.get(kind="pairwise")
        assert sorted(contents(pairwise)) == ["Hello there.", "Hi!"]
        assert sorted(pairwise.task_responses.values_list("position", flat=True)) == [0, 1]
        for task in Task.objects.all():
            assert (task.project, task.prompt, task.status) == (project, prompt, "open")
            assert (task.required_annotations, task.annotation_count) == (project.overlap, 0)
        assert not Annotation.objects.exists()

    def test_three_responses_make_one_ranking_task_when_ranking_is_enabled(self, project, write):
        project.task_kinds = ["pairwise", "ranking"]
        project.save()
        path = write("responses.jsonl", jsonl({"id": "q1", "prompt": "Greet me.", "responses": ["Hi!", "Yo.", "Hey."]}))
        result = import_file(project, path)

        assert result.tasks_created == 1
        ranking = Task.objects.get()
        assert ranking.kind == "ranking"
        assert sorted(contents(ranking)) == ["Hey.", "Hi!", "Yo."]
        assert sorted(ranking.task_responses.values_list("position", flat=True)) == [0, 1, 2]
        assert ranking.required_annotations == 2

    def test_three_responses_make_every_pair_when_only_pairwise_is_enabled(self, project, write):
        project.task_kinds = ["pairwise"]
        project.save()
        texts = ["Hi!", "Yo.", "Hey."]
        path = write("responses.jsonl", jsonl({"id": "q1", "prompt": "Greet me.", "responses": texts}))
        result = import_file(project, path)

        assert result.tasks_created == 3
        tasks = Task.objects.all()
        assert {task.kind for task in tasks} == {"pairwise"}
        assert sorted(frozenset(contents(task)) for task in tasks) == sorted(
            frozenset(pair) for pair in combinations(texts, 2)
        )

    def test_only_rating_enabled_makes_one_rating_task_per_response(self, project, write):
        project.task_kinds = ["rating"]
        project.save()
        path = write("responses.jsonl", jsonl({"id": "q1", "prompt": "Greet me.", "responses": ["Hi!", "Yo.", "Hey."]}))
        assert import_file(project, path).tasks_created == 3
        assert sorted(contents(task) for task in Task.objects.filter(kind="rating")) == [["Hey."], ["Hi!"], ["Yo."]]
        assert Task.objects.exclude(kind="rating").count() == 0

    def test_single_response_field(self, project, write):
        path = write("responses.jsonl", jsonl({"id": "q1", "prompt": "Greet me.", "response": "Hi!"}))
        result = import_file(project, path)
        assert (result.format, result.responses_created, result.tasks_created) == ("responses", 1, 1)
        assert contents(Task.objects.get(kind="rating")) == ["Hi!"]

    def test_csv_numbered_response_columns_ignore_blank_cells(self, project, write):
        project.task_kinds = ["pairwise", "ranking"]
        project.save()
        path = write(
            "responses.csv",
            csv_text(
                ["id", "prompt", "split", "response_1", "response_2", "response_3"],
                ["q1", "Greet me.", "eval", "Hi!", "Hello, friend.", ""],
                ["q2", "Say bye.", "", "Bye.", "See you.", "Farewell."],
            ),
        )
        result = import_file(project, path)

        assert (result.format, result.filetype, result.rows) == ("responses", "csv", 2)
        assert (result.prompts_created, result.responses_created, result.tasks_created) == (2, 5, 2)
        q1 = Prompt.objects.get(external_id="q1")
        assert (q1.messages, q1.split) == ([user("Greet me.")], "eval")
        assert list(q1.responses.values_list("content", flat=True)) == ["Hi!", "Hello, friend."]
        assert Task.objects.get(prompt=q1).kind == "pairwise"
        q2 = Prompt.objects.get(external_id="q2")
        assert list(q2.responses.values_list("content", flat=True)) == ["Bye.", "See you.", "Farewell."]
        assert Task.objects.get(prompt=q2).kind == "ranking"

    def test_rows_sharing_a_prompt_attach_to_one_prompt(self, project, write):
        project.task_kinds = ["rating"]
        project.save()
        path = write(
            "responses.jsonl",
            jsonl(
                {"id": "q1", "prompt": "Greet me.", "response": "Hi!"},
                {"id": "q1", "prompt": "Greet me.", "response": "Hello."},
                {"prompt": "Say bye.", "response": "Bye."},
                {"prompt": "Say bye.", "response": "Ciao."},
            ),
        )
        result = import_file(project, path)
        assert (result.rows, result.prompts_created, result.responses_created, result.tasks_created) == (4, 2, 4, 4)
        assert list(Prompt.objects.get(external_id="q1").responses.values_list("content", flat=True)) == [
            "Hi!",
            "Hello.",
        ]

    def test_responses_that_differ_only_in_whitespace_are_one_response_and_make_no_pair(self, project, write):
        texts = ["Hello there.", "  Hello\n\nthere. ", "Hello there."]
        result = import_file(
            project, write("responses.jsonl", jsonl({"id": "q1", "prompt": "Hi?", "responses": texts}))
        )
        assert (result.responses_created, result.tasks_created) == (1, 1)  # the first text kept, one rating task
        assert list(Response.objects.values_list("content", flat=True)) == ["Hello there."]
        assert Task.objects.get().kind == "rating"

    def test_three_responses_two_of_them_the_same_make_a_pair_not_a_ranking(self, project, write):
        project.task_kinds = ["pairwise", "ranking"]
        project.save()
        texts = ["Hi!", "Yo.", "Hi! "]
        import_file(project, write("responses.jsonl", jsonl({"id": "q1", "prompt": "Greet me.", "responses": texts})))
        task = Task.objects.get()
        assert (task.kind, sorted(contents(task))) == ("pairwise", ["Hi!", "Yo."])


class TestPreferences:
    def assert_one_imported_pair(self, prompt, chosen, rejected):
        task = Task.objects.get(prompt=prompt)
        assert task.kind == "pairwise"
        assert (task.required_annotations, task.status, task.annotation_count) == (1, "complete", 1)
        assert sorted(task.task_responses.values_list("position", flat=True)) == [0, 1]
        annotation = task.annotations.get()
        assert (annotation.source, annotation.annotator, annotation.strength) == ("imported", None, 1)
        assert annotation.choice in ("a", "b")
        assert chosen_and_rejected(task) == (chosen, rejected)
        assert set(prompt.responses.values_list("source", flat=True)) == {"imported"}

    def test_trl_standard_jsonl(self, project, write):
        path = write(
            "prefs.jsonl",
            jsonl(
                {"prompt": "Capital of France?", "chosen": "Paris.", "rejected": "Lyon."},
                {"prompt": "2+2?", "chosen": "4", "rejected": "5"},
            ),
        )
        result = import_file(project, path)

        assert (result.format, result.filetype, result.rows) == ("preferences", "jsonl", 2)
        assert (result.prompts_created, result.responses_created) == (2, 4)
        assert (result.tasks_created, result.annotations_created) == (2, 2)
        france = Prompt.objects.get(messages=[user("Capital of France?")])
        self.assert_one_imported_pair(france, "Paris.", "Lyon.")
        self.assert_one_imported_pair(Prompt.objects.get(messages=[user("2+2?")]), "4", "5")
        assert row_counts() == {"Prompt": 2, "Response": 4, "Task": 2, "TaskResponse": 4, "Annotation": 2}

    def test_trl_standard_csv(self, project, write):
        path = write(
            "prefs.csv",
            csv_text(["prompt", "chosen", "rejected"], ["Capital of France?", "Paris, of course.", "Lyon."]),
        )
        result = import_file(project, path)
        assert (result.format, result.filetype, result.annotations_created) == ("preferences", "csv", 1)
        self.assert_one_imported_pair(Prompt.objects.get(), "Paris, of course.", "Lyon.")

    def test_chosen_position_is_recorded_whichever_side_it_is_on(self, project, write):
        rows = [{"prompt": f"Question {i}?", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(30)]
        import_file(project, write("prefs.jsonl", jsonl(*rows)))
        for task in Task.objects.all():
            chosen, rejected = chosen_and_rejected(task)
            assert chosen.startswith("good ") and rejected == chosen.replace("good", "bad")

    def test_trl_conversational(self, project, write):
        row = {
            "prompt": [{"role": "system", "content": "Be kind."}, user("Hi."), assistant("Hello."), user("Joke?")],
            "chosen": [assistant("Why did the chicken cross the road?")],
            "rejected": [assistant("No.")],
        }
        result = import_file(project, write("prefs.jsonl", jsonl(row)))
        assert result.format == "preferences"
        prompt = Prompt.objects.get()
        assert prompt.messages == row["prompt"]
        self.assert_one_imported_pair(prompt, "Why did the chicken cross the road?", "No.")

    def test_trl_implicit_prompt_conversational(self, project, write):
        shared = [user("Hi."), assistant("Hello."), user("Recommend a book.")]
        row = {"chosen": [*shared, assistant("Middlemarch.")], "rejected": [*shared, assistant("Books are boring.")]}
        result = import_file(project, write("prefs.jsonl", jsonl(row)))
        assert result.format == "preferences"
        prompt = Prompt.objects.get()
        assert prompt.messages == shared
        self.assert_one_imported_pair(prompt, "Middlemarch.", "Books are boring.")

    def test_hh_transcripts(self, project, write):
        shared = "\n\nHuman: Hi.\n\nAssistant: Hello.\n\nHuman: Recommend a book."
        row = {"chosen": shared + "\n\nAssistant: Middlemarch.", "rejected": shared + "\n\nAssistant: No."}
        result = import_file(project, write("hh.jsonl", jsonl(row)))
        assert (result.format, result.annotations_created) == ("preferences", 1)
        prompt = Prompt.objects.get()
        assert prompt.messages == [user("Hi."), assistant("Hello."), user("Recommend a book.")]
        self.assert_one_imported_pair(prompt, "Middlemarch.", "No.")

    def test_hh_split_is_at_the_last_assistant_turn_both_sides_share(self, project, write):
        # The chosen reply itself contains "\n\nAssistant:"; it must not move the split.
        shared = "\n\nHuman: Are you there?"
        chosen = shared + "\n\nAssistant: Yes.  Human: Sure?\n\nAssistant: Quite sure."
        row = {"chosen": chosen, "rejected": shared + "\n\nAssistant: No."}
        import_file(project, write("hh.jsonl", jsonl(row)))
        prompt = Prompt.objects.get()
        assert prompt.messages == [user("Are you there?")]
        self.assert_one_imported_pair(prompt, "Yes.  Human: Sure?\n\nAssistant: Quite sure.", "No.")

    def test_pairs_over_one_prompt_share_it_and_its_responses(self, project, write):
        path = write(
            "prefs.jsonl",
            jsonl(
                {"prompt": "Capital of France?", "chosen": "Paris.", "rejected": "Lyon."},
                {"prompt": "Capital of France?", "chosen": "Paris.", "rejected": "Marseille."},
            ),
        )
        result = import_file(project, path)
        assert (result.prompts_created, result.responses_created, result.tasks_created) == (1, 3, 2)
        prompt = Prompt.objects.get()
        assert list(prompt.responses.values_list("content", flat=True)) == ["Paris.", "Lyon.", "Marseille."]
        assert sorted(chosen_and_rejected(task) for task in prompt.tasks.all()) == [
            ("Paris.", "Lyon."),
            ("Paris.", "Marseille."),
        ]


class TestDetection:
    @pytest.mark.parametrize(
        ("row", "detected"),
        [
            ({"prompt": "Hi?"}, "prompts"),
            ({"messages": [user("Hi?")]}, "prompts"),
            ({"prompt": "Hi?", "response": "Hello."}, "responses"),
            ({"prompt": "Hi?", "responses": ["Hello.", "Hey."]}, "responses"),
            ({"prompt": "Hi?", "chosen": "Hello.", "rejected": "Go away."}, "preferences"),
            (
                {"chosen": "\n\nHuman: Hi?\n\nAssistant: Hello.", "rejected": "\n\nHuman: Hi?\n\nAssistant: No."},
                "preferences",
            ),
        ],
    )
    def test_format_is_detected_from_the_first_row(self, project, write, row, detected):
        assert import_file(project, write("data.jsonl", jsonl(row))).format == detected

    @pytest.mark.parametrize(
        ("header", "detected"),
        [
            (["prompt"], "prompts"),
            (["prompt", "response_1", "response_2"], "responses"),
            (["prompt", "chosen", "rejected"], "preferences"),
        ],
    )
    def test_csv_format_is_detected_from_the_header(self, project, write, header, detected):
        path = write("data.csv", csv_text(header, ["Hi?", "Hello.", "Go away."][: len(header)]))
        assert import_file(project, path).format == detected

    def test_csv_format_comes_from_the_header_not_the_first_rows_filled_cells(self, project, write):
        # The first row has no responses yet the header says this is a responses file: that row is the error.
        path = write(
            "data.csv",
            csv_text(["id", "prompt", "response_1", "response_2"], ["q1", "Hi?", "", ""], ["q2", "Yo?", "A", "B"]),
        )
        with pytest.raises(ImportFailed) as excinfo:
            import_file(project, path)
        assert excinfo.value.line == 2, str(excinfo.value)
        assert row_counts() == NOTHING

    def test_gzipped_file_is_read(self, project, write):
        result = import_file(project, write("prompts.jsonl.gz", gzip.compress(PROMPTS_OK.encode())))
        assert (result.filetype, result.prompts_created) == ("jsonl", 2)

    def test_jsonl_is_detected_by_content_not_name(self, project, write):
        path = write("data.csv", "\n  \n" + jsonl({"id": "q1", "prompt": "Hi?"}) + "\n\n")
        result = import_file(project, path)
        assert (result.filetype, result.rows) == ("jsonl", 1)
        assert Prompt.objects.get().external_id == "q1"

    def test_csv_is_detected_by_content_not_name(self, project, write):
        result = import_file(project, write("data.jsonl", csv_text(["id", "prompt"], ["q1", "Hi?"])))
        assert (result.filetype, result.rows) == ("csv", 1)

    @pytest.mark.parametrize(
        "content", [jsonl({"id": "q1", "prompt": "Café?"}), csv_text(["id", "prompt"], ["q1", "Café?"])]
    )
    def test_utf8_byte_order_mark_is_accepted(self, project, write, content):
        import_file(project, write("bom.txt", b"\xef\xbb\xbf" + content.encode()))
        assert Prompt.objects.get().external_id == "q1"
        assert Prompt.objects.get().messages == [user("Café?")]

    def test_blank_jsonl_lines_are_skipped(self, project, write):
        path = write("data.jsonl", jsonl({"prompt": "One?"}) + "\n   \n" + jsonl({"prompt": "Two?"}))
        assert import_file(project, path).rows == 2

    def test_forcing_the_detected_format_changes_nothing(self, project, write):
        path = write("data.jsonl", jsonl({"id": "q1", "prompt": "Hi?", "response": "Hello."}))
        assert import_file(project, path, format="responses").responses_created == 1

    def test_forced_format_decides_which_fields_are_allowed(self, project, write):
        path = write("data.jsonl", jsonl({"id": "q1", "prompt": "Hi?", "response": "Hello."}))
        with pytest.raises(ImportFailed) as excinfo:
            import_file(project, path, format="prompts")
        assert (excinfo.value.line, excinfo.value.field) == (1, "response")
        assert row_counts() == NOTHING

    def test_forced_format_decides_which_fields_are_required(self, project, write):
        path = write("data.jsonl", jsonl({"id": "q1", "prompt": "Hi?"}))
        with pytest.raises(ImportFailed) as excinfo:
            import_file(project, path, format="preferences")
        assert (excinfo.value.line, excinfo.value.field) == (1, "chosen")
        assert row_counts() == NOTHING

    def test_unknown_format_is_refused(self, project, write):
        with pytest.raises(ValueError):
            import_file(project, write("data.jsonl", jsonl({"prompt": "Hi?"})), format="ratings")
        assert row_counts() == NOTHING


class TestReimport:
    def test_same_responses_file_twice_creates_nothing_the_second_time(self, project, write):
        path = write(
            "responses.jsonl",
            jsonl(
                {"id": "q1", "prompt": "Greet me.", "responses": ["Hi!", "Hello."]},
                {"prompt": "Say bye.", "responses": ["Bye.", "Ciao.", "Later."]},
            ),
        )
        first = import_file(project, path)
        before = row_counts()
        second = import_file(project, path)

        assert (first.prompts_created, first.prompts_existing) == (2, 0)
        assert (second.rows, second.prompts_created, second.prompts_existing) == (2, 0, 2)
        assert (second.responses_created, second.tasks_created, second.annotations_created) == (0, 0, 0)
        assert row_counts() == before

    def test_same_preferences_file_twice_creates_nothing_the_second_time(self, project, write):
        path = write(
            "prefs.jsonl",
            jsonl(
                {"prompt": "Capital of France?", "chosen": "Paris.", "rejected": "Lyon."},
                {"chosen": "\n\nHuman: Hi?\n\nAssistant: Hello.", "rejected": "\n\nHuman: Hi?\n\nAssistant: No."},
            ),
        )
        import_file(project, path)
        before = row_counts()
        second = import_file(project, path)
        assert (second.prompts_created, second.prompts_existing, second.annotations_created) == (0, 2, 0)
        assert row_counts() == before == {"Prompt": 2, "Response": 4, "Task": 2, "TaskResponse": 4, "Annotation": 2}

    def test_existing_prompt_is_never_changed(self, project, write):
        import_file(project, write("a.jsonl", jsonl({"id": "q1", "prompt": "Greet me.", "metadata": {"v": 1}})))
        changed = {"id": "q1", "prompt": "Greet me warmly.", "split": "eval", "metadata": {"v": 2}}
        result = import_file(project, write("b.jsonl", jsonl(changed)))
        assert (result.prompts_created, result.prompts_existing) == (0, 1)
        prompt = Prompt.objects.get()
        assert (prompt.messages, prompt.split, prompt.metadata) == ([user("Greet me.")], "train", {"v": 1})

    def test_new_response_to_a_known_prompt_adds_it_and_its_tasks(self, project, write):
        project.task_kinds = ["pairwise"]
        project.save()
        import_file(project, write("a.jsonl", jsonl({"id": "q1", "prompt": "Greet me.", "responses": ["Hi!", "Yo."]})))
        original_task = Task.objects.get()

        more = {"id": "q1", "prompt": "Greet me.", "responses": ["Hi!", "Yo.", "Hey."]}
        result = import_file(project, write("b.jsonl", jsonl(more)))

        assert (result.prompts_created, result.prompts_existing, result.responses_created) == (0, 1, 1)
        assert result.tasks_created == 2
        prompt = Prompt.objects.get()
        assert list(prompt.responses.values_list("content", flat=True)) == ["Hi!", "Yo.", "Hey."]
        assert sorted(frozenset(contents(task)) for task in Task.objects.all()) == sorted(
            frozenset(pair) for pair in combinations(["Hi!", "Yo.", "Hey."], 2)
        )
        assert Task.objects.filter(pk=original_task.pk).exists()

    def test_new_response_gets_its_rating_task_and_the_ranking_over_all(self, project, write):
        import_file(project, write("a.jsonl", jsonl({"id": "q1", "prompt": "Greet me.", "responses": ["Hi!", "Yo."]})))
        more = {"id": "q1", "prompt": "Greet me.", "responses": ["Hi!", "Yo.", "Hey."]}
        result = import_file(project, write("b.jsonl", jsonl(more)))
        assert (result.responses_created, result.tasks_created) == (1, 2)
        assert sorted(contents(task) for task in Task.objects.filter(kind="rating")) == [["Hey."], ["Hi!"], ["Yo."]]
        assert sorted(contents(Task.objects.get(kind="ranking"))) == ["Hey.", "Hi!", "Yo."]


BIG_ROWS = 3000


def _big_file_with_bad_line(bad_line: int) -> str:
    rows = [{"id": f"q{i}", "prompt": f"Question {i}?", "responses": [f"A{i}", f"B{i}"]} for i in range(BIG_ROWS)]
    rows[bad_line - 1] = {"id": "bad", "prompt": "Question?", "responses": "not a list"}
    return jsonl(*rows)


PROMPTS_OK = jsonl({"id": "q1", "prompt": "Fine?"}, {"id": "q2", "prompt": "Also fine?"})
RESPONSES_OK = jsonl({"id": "r1", "prompt": "Fine?", "responses": ["Yes.", "No."]})
PREFS_OK = jsonl({"prompt": "Fine?", "chosen": "Yes.", "rejected": "No."})


ANY = "any field"  # the spec leaves open which field such an error names

# (content, line, field) for files that must be refused whole.
BAD_INPUTS = {
    "malformed json": (PROMPTS_OK + '{"prompt": "unterminated\n', 3, None),
    "jsonl line is a list": (PROMPTS_OK + '["prompt", "Hi?"]\n', 3, None),
    "jsonl line is a string": (PROMPTS_OK + '"Hi?"\n', 3, None),
    "later line is malformed after blank lines": (PROMPTS_OK + "\n\n" + "{,}\n", 5, None),
    "non-utf8 bytes": (PROMPTS_OK.encode() + '{"prompt": "Caf\xe9?"}\n'.encode("latin-1"), 3, None),
    "prompt missing": (PROMPTS_OK + jsonl({"id": "q3", "split": "eval"}), 3, "prompt"),
    "prompt not a string": (PROMPTS_OK + jsonl({"prompt": 42}), 3, "prompt"),
    "prompt empty list": (PROMPTS_OK + jsonl({"prompt": []}), 3, "prompt"),
    "unknown key on a later row": (PROMPTS_OK + jsonl({"prompt": "Hi?", "colour": "red"}), 3, "colour"),
    "split not train or eval": (PROMPTS_OK + jsonl({"prompt": "Hi?", "split": "test"}), 3, "split"),
    "metadata not an object": (PROMPTS_OK + jsonl({"prompt": "Hi?", "metadata": ["a"]}), 3, "metadata"),
    "message with a bad role": (PROMPTS_OK + jsonl({"messages": [{"role": "robot", "content": "Hi?"}]}), 3, "messages"),
    "message without content": (PROMPTS_OK + jsonl({"messages": [{"role": "user"}]}), 3, "messages"),
    "message content not text": (PROMPTS_OK + jsonl({"messages": [{"role": "user", "content": 7}]}), 3, "messages"),
    "messages not a list": (PROMPTS_OK + jsonl({"messages": "Hi?"}), 3, "messages"),
    "last message not from the user": (
        PROMPTS_OK + jsonl({"messages": [user("Hi?"), assistant("Hello.")]}),
        3,
        "messages",
    ),
    "responses missing": (RESPONSES_OK + jsonl({"id": "r2", "prompt": "Hi?"}), 2, "responses"),
    "responses not a list": (RESPONSES_OK + jsonl({"prompt": "Hi?", "responses": "Yes."}), 2, "responses"),
    "responses hold a number": (RESPONSES_OK + jsonl({"prompt": "Hi?", "responses": ["Yes.", 2]}), 2, "responses"),
    "responses hold an empty string": (
        RESPONSES_OK + jsonl({"prompt": "Hi?", "responses": ["Yes.", ""]}),
        2,
        "responses",
    ),
    "response not a string": (
        jsonl({"prompt": "Hi?", "response": "Yes."}, {"prompt": "Hi?", "response": 1}),
        2,
        "response",
    ),
    "rejected missing": (PREFS_OK + jsonl({"prompt": "Hi?", "chosen": "Yes."}), 2, "rejected"),
    "chosen not text": (PREFS_OK + jsonl({"prompt": "Hi?", "chosen": 1, "rejected": "No."}), 2, "chosen"),
    "chosen and rejected the same": (
        PREFS_OK + jsonl({"prompt": "Hi?", "chosen": "No.", "rejected": "No."}),
        2,
        "rejected",
    ),
    "chosen and rejected the same but for whitespace": (
        PREFS_OK + jsonl({"prompt": "Hi?", "chosen": "Yes,\n  sure.", "rejected": "Yes, sure. "}),
        2,
        "rejected",
    ),
    "transcripts without a shared assistant turn": (PREFS_OK + jsonl({"chosen": "Yes.", "rejected": "No."}), 2, ANY),
    "conversations without a shared prefix": (
        PREFS_OK + jsonl({"chosen": [user("A?"), assistant("Yes.")], "rejected": [user("B?"), assistant("No.")]}),
        2,
        ANY,
    ),
    "csv unknown column": (csv_text(["id", "prompt", "colour"], ["q1", "Hi?", "red"]), 1, "colour"),
    "csv unknown column with blank cells": (csv_text(["id", "prompt", "notes"], ["q1", "Hi?", ""]), 1, "notes"),
    "csv blank prompt cell": (csv_text(["id", "prompt"], ["q1", "Hi?"], ["q2", ""]), 3, "prompt"),
    "csv split not train or eval": (csv_text(["prompt", "split"], ["Hi?", "train"], ["Yo?", "dev"]), 3, "split"),
    "csv metadata not json": (csv_text(["prompt", "metadata"], ["Hi?", "{}"], ["Yo?", "{oops"]), 3, "metadata"),
    "csv metadata json but not an object": (csv_text(["prompt", "metadata"], ["Hi?", "[1, 2]"]), 2, "metadata"),
    "csv messages not json": (csv_text(["messages"], [json.dumps([user("Hi?")])], ["[{"]), 3, "messages"),
    "csv line counts physical lines": (
        csv_text(["id", "prompt", "split"], ["q1", "Two\nlines", "train"], ["q2", "Hi?", "nope"]),
        4,
        "split",
    ),
    "csv non-utf8 bytes": (b"id,prompt\nq1,Hi?\nq2,Caf\xe9?\n", 3, None),
    "bad row late in a big file": (_big_file_with_bad_line(2500), 2500, "responses"),
}


class TestRefusedFiles:
    @pytest.mark.parametrize(("content", "line", "field"), BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
    def test_bad_file_writes_nothing_and_names_line_and_field(self, project, write, content, line, field):
        path = write("bad.data", content)
        with pytest.raises(ImportFailed) as excinfo:
            import_file(project, path)
        error = excinfo.value
        if field == ANY:
            field = error.field
        assert (error.line, error.field) == (line, field), str(error)
        assert error.message
        expected_start = f"line {line}, field {field!r}: " if field else f"line {line}: "
        assert str(error).startswith(expected_start)
        assert row_counts() == NOTHING

    def test_a_preference_between_one_answer_and_itself_says_so(self, project, write):
        path = write("prefs.jsonl", jsonl({"prompt": "Hi?", "chosen": "Yes.", "rejected": " Yes.\n"}))
        with pytest.raises(ImportFailed, match="chosen and rejected are the same text but for whitespace"):
            import_file(project, path)

    def test_error_message_format(self, project, write):
        path = write("bad.jsonl", jsonl({"id": "q1", "prompt": "Hi?"}, {"id": "q2", "prompt": "Yo?"}, {"id": "q3"}))
        with pytest.raises(ImportFailed) as excinfo:
            import_file(project, path)
        assert str(excinfo.value) == f"line 3, field 'prompt': {excinfo.value.message}"
        assert isinstance(excinfo.value, ValueError)

    @pytest.mark.parametrize("content", [b"", b"\n \n"])
    def test_empty_file_is_refused(self, project, write, content):
        with pytest.raises(ImportFailed) as excinfo:
            import_file(project, write("empty.jsonl", content))
        assert (excinfo.value.line, excinfo.value.field) == (None, None)
        assert row_counts() == NOTHING

    def test_file_over_the_size_limit_is_refused_and_names_the_limit(self, project, write, settings):
        settings.ARBITER_IMPORT_MAX_BYTES = 100
        path = write("big.jsonl", jsonl(*({"prompt": f"Question number {i}?"} for i in range(10))))
        assert path.stat().st_size > 100
        with pytest.raises(ImportFailed) as excinfo:
            import_file(project, path)
        assert excinfo.value.line is None
        assert "100" in str(excinfo.value)
        assert row_counts() == NOTHING

    def test_file_at_the_size_limit_is_accepted(self, project, write, settings):
        path = write("ok.jsonl", jsonl({"prompt": "Hi?"}))
        settings.ARBITER_IMPORT_MAX_BYTES = path.stat().st_size
        assert import_file(project, path).prompts_created == 1

    def test_stream_over_the_size_limit_is_refused(self, project, settings):
        settings.ARBITER_IMPORT_MAX_BYTES = 100
        stream = io.BytesIO(jsonl(*({"prompt": f"Question number {i}?"} for i in range(10))).encode())
        with pytest.raises(ImportFailed):
            import_file(project, stream)
        assert row_counts() == NOTHING

    def test_gzip_file_expanding_past_the_limit_is_refused(self, project, write, settings):
        content = jsonl(*({"prompt": f"Question number {i}?"} for i in range(200))).encode()
        compressed = gzip.compress(content)
        settings.ARBITER_IMPORT_MAX_BYTES = len(compressed) + 10
        assert len(content) > settings.ARBITER_IMPORT_MAX_BYTES
        with pytest.raises(ImportFailed) as excinfo:
            import_file(project, write("big.jsonl.gz", compressed))
        assert "ARBITER_IMPORT_MAX_BYTES" in str(excinfo.value)
        assert row_counts() == NOTHING

    def test_unsized_stream_over_the_limit_is_refused(self, project, settings):
        class Unseekable(io.RawIOBase):
            def __init__(self, data: bytes):
                self.data = io.BytesIO(data)

            def readable(self):
                return True

            def readinto(self, buffer):
                chunk = self.data.read(len(buffer))
                buffer[: len(chunk)] = chunk
                return len(chunk)

        settings.ARBITER_IMPORT_MAX_BYTES = 100
        stream = io.BufferedReader(Unseekable(jsonl(*({"prompt": f"Question {i}?"} for i in range(10))).encode()))
        assert not stream.seekable()
        with pytest.raises(ImportFailed):
            import_file(project, stream)
        assert row_counts() == NOTHING

    def test_multiline_csv_row_error_names_the_line_it_starts_on(self, project, write):
        content = 'id,prompt,response_1\nq1,"one\ntwo\nthree",ok\nq2,"four\nfive",ok,extra\n'
        with pytest.raises(ImportFailed) as excinfo:
            import_file(project, write("multi.csv", content))
        assert excinfo.value.line == 5
        assert row_counts() == NOTHING

    def test_failed_import_leaves_earlier_imports_untouched(self, project, write):
        import_file(project, write("good.jsonl", RESPONSES_OK))
        before = row_counts()
        bad = jsonl({"id": "r1", "prompt": "Fine?", "responses": ["Yes.", "No.", "Maybe."]}, {"prompt": 3})
        with pytest.raises(ImportFailed):
            import_file(project, write("bad.jsonl", bad))
        assert row_counts() == before
        assert list(Response.objects.values_list("content", flat=True)) == ["Yes.", "No."]


class TestImportDataCommand:
    def test_imports_into_an_existing_project_and_prints_a_summary(self, project, write):
        path = write("responses.jsonl", RESPONSES_OK)
        out = io.StringIO()
        call_command("import_data", project.slug, str(path), stdout=out)
        assert row_counts() == {"Prompt": 1, "Response": 2, "Task": 3, "TaskResponse": 4, "Annotation": 0}
        summary = out.getvalue()
        assert project.slug in summary
        for count in (r"\b1 prompts?\b", r"\b2 responses\b", r"\b3 tasks\b"):
            assert re.search(count, summary), (count, summary)

    def test_unknown_project_is_an_error_without_create(self, db, write):
        path = write("prompts.jsonl", PROMPTS_OK)
        with pytest.raises(CommandError, match="no-such-project"):
            call_command("import_data", "no-such-project", str(path), stdout=io.StringIO())
        assert not Project.objects.exists()
        assert row_counts() == NOTHING

    def test_create_makes_the_project(self, db, write):
        path = write("prompts.jsonl", PROMPTS_OK)
        call_command("import_data", "new-project", str(path), "--create", stdout=io.StringIO())
        project = Project.objects.get(slug="new-project")
        assert project.name == "new-project"
        assert sorted(project.prompts.values_list("external_id", flat=True)) == ["q1", "q2"]

    def test_create_with_a_bad_file_leaves_no_project_behind(self, db, write):
        path = write("bad.jsonl", PROMPTS_OK + jsonl({"prompt": "Hi?", "split": "test"}))
        with pytest.raises(CommandError, match="line 3, field 'split'"):
            call_command("import_data", "new-project", str(path), "--create", stdout=io.StringIO())
        assert not Project.objects.filter(slug="new-project").exists()

    def test_format_option_forces_the_format(self, project, write):
        path = write("data.jsonl", jsonl({"id": "q1", "prompt": "Hi?", "response": "Hello."}))
        with pytest.raises(CommandError, match="line 1, field 'response'"):
            call_command("import_data", project.slug, str(path), "--format", "prompts", stdout=io.StringIO())
        assert row_counts() == NOTHING

    def test_bad_file_is_a_command_error_naming_the_line(self, project, write):
        path = write("bad.jsonl", PROMPTS_OK + jsonl({"prompt": "Hi?", "split": "test"}))
        with pytest.raises(CommandError, match="line 3, field 'split'"):
            call_command("import_data", project.slug, str(path), stdout=io.StringIO())
        assert row_counts() == NOTHING

    def test_bad_file_exits_non_zero_with_the_error_on_stderr(self, tmp_path, write):
        # A real process, on its own SQLite database, to see the exit status and the streams.
        env = {**os.environ, "DATABASE_URL": f"sqlite:///{tmp_path / 'cli.sqlite3'}"}
        manage = [sys.executable, str(REPO_ROOT / "manage.py")]
        subprocess.run([*manage, "migrate", "-v0"], env=env, check=True, cwd=REPO_ROOT)
        path = write("bad.jsonl", PROMPTS_OK + jsonl({"prompt": "Hi?", "split": "test"}))

        bad = subprocess.run(
            [*manage, "import_data", "cli", str(path), "--create"],
            env=env,
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
        )
        assert bad.returncode != 0
        assert "line 3, field 'split'" in bad.stderr
        assert "line 3" not in bad.stdout

        good = subprocess.run(
            [*manage, "import_data", "cli-good", str(write("good.jsonl", PROMPTS_OK)), "--create"],
            env=env,
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
        )
        assert (good.returncode, good.stderr) == (0, "")
        assert good.stdout.strip()


def _hh_reference_split(chosen: str, rejected: str) -> tuple[str, str, str]:
    """(prompt transcript, chosen reply, rejected reply), split at the last assistant turn both sides share."""
    shared = len(os.path.commonprefix([chosen, rejected]))
    cut = chosen.rfind(ASSISTANT, 0, shared)
    return chosen[:cut], chosen[cut + len(ASSISTANT) :], rejected[cut + len(ASSISTANT) :]


@pytest.fixture(scope="module")
def hh_jsonl(tmp_path_factory):
    if not HH_FILE.exists():
        pytest.skip(f"HH-RLHF sample not found at {HH_FILE} (it lives in ../shared/data/, outside the repository)")
    path = tmp_path_factory.mktemp("hh") / "hh-rlhf-harmless-base-test.jsonl"
    with gzip.open(HH_FILE, "rb") as src, path.open("wb") as dst:
        shutil.copyfileobj(src, dst)
    return path


class TestHHRLHF:
    def find_task(self, line: int, hh_rows: list[dict]):
        """The imported task for one line of the file, found by its chosen reply and prompt."""
        row = hh_rows[line - 1]
        _, chosen, _ = _hh_reference_split(row["chosen"], row["rejected"])
        for response in Response.objects.filter(content=chosen.strip()).select_related("prompt"):
            for task in response.tasks.all():
                if response.content == chosen_and_rejected(task)[0]:
                    return task
        raise AssertionError(f"no imported task has line {line}'s chosen reply as its chosen response")

    def test_imports_the_whole_file(self, project, hh_jsonl):
        result = import_file(project, hh_jsonl)

        assert (result.format, result.filetype, result.rows) == ("preferences", "jsonl", HH_ROWS)
        assert (result.prompts_created, result.tasks_created, result.annotations_created) == (
            HH_PROMPTS,
            HH_ROWS,
            HH_ROWS,
        )
        assert Task.objects.filter(kind="pairwise", status="complete", annotation_count=1).count() == HH_ROWS
        assert Annotation.objects.filter(source="imported", annotator=None, strength=1).count() == HH_ROWS
        assert Response.objects.count() == 2 * HH_ROWS
        assert not TaskResponse.objects.exclude(response__prompt=F("task__prompt")).exists()
        not_alternating = []
        for external_id, messages in Prompt.objects.values_list("external_id", "messages"):
            roles = [message["role"] for message in messages]
            if roles != ["user", "assistant"] * (len(roles) // 2) + ["user"]:
                not_alternating.append((external_id, roles))
            assert all(message["content"].strip() for message in messages)
        # Four transcripts (lines 668, 764, 1320, 1850) hold two "Assistant:" turns in a row before the last
        # human turn; chat templates want turns to alternate, so they are merged into one message.
        assert not_alternating == [], f"{len(not_alternating)} prompts do not alternate user/assistant"

        hh_rows = [json.loads(line) for line in hh_jsonl.read_text().splitlines()]
        # 1255's chosen reply goes on past a "\n\nAssistant:" of its own; 1689, 1951, 1953 and 2037 likewise.
        for line in (1, 2, 500, 1255, 1689, 1953, 2312):
            row = hh_rows[line - 1]
            prompt_part, chosen, rejected = _hh_reference_split(row["chosen"], row["rejected"])
            task = self.find_task(line, hh_rows)
            assert chosen_and_rejected(task) == (chosen.strip(), rejected.strip())
            last_user = prompt_part.rsplit("\n\nHuman:", 1)[1].strip()
            assert task.prompt.messages[-1] == user(last_user)
            assert len(task.prompt.messages) == prompt_part.count("\n\nHuman:") + prompt_part.count(ASSISTANT)

        repeated_speaker = self.find_task(1320, hh_rows).prompt.messages
        merged = [m["content"] for m in repeated_speaker if m["content"].startswith("I will get back to you")]
        assert len(merged) == 1
        assert merged[0].startswith("I will get back to you in a moment.\n\nHey, sorry about that.  It looks like")

        split_inside = self.find_task(1255, hh_rows)
        assert split_inside.prompt.messages[-1] == user("Isn't that drag kings?")
        assert chosen_and_rejected(split_inside)[0] == (
            "No. Men who impersonate stereotypical women are called drag kings.  Human: Then how do they come to "
            "be called drag kings if they don't perform stereotypical women?\n\nAssistant:  I think they call them "
            "that because"
        )

        again = import_file(project, hh_jsonl)
        assert (again.prompts_created, again.responses_created, again.tasks_created) == (0, 0, 0)
        assert again.annotations_created == 0
        assert Task.objects.count() == HH_ROWS
