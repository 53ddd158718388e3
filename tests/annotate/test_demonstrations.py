"""Demonstrations in and out: TRL's SFT formats imported as human responses, write tasks made from prompts, written
answers in the sft export, and each correction a pair (the better answer over the rated one) in the pairs export."""

import io
import json

import pyarrow.parquet as pq
import pytest
from django.utils import timezone

from annotate.exports import create_snapshot, run_snapshot
from annotate.importing import ImportFailed, import_file
from annotate.models import Membership, Prompt, Response, Task, TaskKind

USER = {"role": "user", "content": "Name a prime."}


def jsonl(*rows) -> io.BytesIO:
    return io.BytesIO("".join(json.dumps(row) + "\n" for row in rows).encode())


def export(project, kind, format="jsonl", style="conversational", **filters):
    snapshot = run_snapshot(create_snapshot(project, kind=kind, format=format, style=style, filters=filters))
    assert snapshot.status == "ready", snapshot.error
    with snapshot.file.open("rb") as file:
        if format == "parquet":
            return pq.read_table(file).to_pylist()
        return [json.loads(line) for line in file.read().decode().splitlines()]


@pytest.fixture
def writing(project):
    project.task_kinds = [*project.task_kinds, TaskKind.WRITE]
    project.save(update_fields=["task_kinds"])
    return project


class TestImport:
    def test_trl_sft_rows_of_every_shape_are_human_responses_without_tasks(self, project):
        result = import_file(
            project,
            jsonl(
                {"id": "m", "messages": [USER, {"role": "assistant", "content": "Two."}]},
                {"id": "s", "prompt": "Name an even prime.", "completion": "Two."},
                {"id": "c", "prompt": [USER], "completion": [{"role": "assistant", "content": "Three."}]},
            ),
        )
        assert result.format == "demonstrations" and result.responses_created == 3
        replies = {r.prompt.external_id: (r.content, r.source, r.author) for r in Response.objects.all()}
        assert replies == {
            "m": ("Two.", "human", None),
            "s": ("Two.", "human", None),
            "c": ("Three.", "human", None),
        }
        assert Prompt.objects.get(external_id="m").messages == [USER]
        assert not Task.objects.exists()

    @pytest.mark.parametrize(
        ("rows", "error"),
        [
            ([{"prompt": "Hi", "completion": "  "}], "line 2, field 'completion': the reply is empty"),
            (
                [{"prompt": "Hi", "completion": [{"role": "user", "content": "x"}]}],
                "line 2, field 'completion': must hold exactly one assistant message",
            ),
            (
                [{"messages": [{"role": "system", "content": "s"}, {"role": "assistant", "content": "x"}]}],
                "line 2, field 'messages': the messages before the reply must end with a user message",
            ),
            ([{"prompt": "Hi", "completion": "x", "score": 3}], "line 2, field 'score': unknown field"),
        ],
    )
    def test_a_bad_row_names_its_line_and_nothing_is_written(self, project, rows, error):
        good = {"prompt": "Fine.", "completion": "Yes."}
        with pytest.raises(ImportFailed) as failed:
            import_file(project, jsonl(good, *rows))
        assert str(failed.value).startswith(error)
        assert not Prompt.objects.exists() and not Response.objects.exists()

    def test_prompts_make_write_tasks_once_writing_is_enabled(self, project):
        def import_both():
            import_file(project, jsonl({"id": "a", "prompt": "Name a prime."}))
            import_file(project, jsonl({"id": "b", "prompt": "Name a square.", "response": "Nine."}))

        import_both()
        assert not Task.objects.filter(kind=TaskKind.WRITE).exists()  # not enabled: none
        project.task_kinds = [*project.task_kinds, TaskKind.WRITE]
        project.save(update_fields=["task_kinds"])
        for _ in range(2):  # the same prompts get their write tasks, once
            import_both()
        write = Task.objects.filter(kind=TaskKind.WRITE).order_by("prompt__external_id")
        assert [(t.prompt.external_id, t.response_ids()) for t in write] == [
            ("a", []),
            ("b", [Response.objects.get(content="Nine.").pk]),  # the draft
        ]
        assert Task.objects.filter(kind=TaskKind.RATING).count() == 1


class TestExport:
    def test_written_answers_and_corrections_are_sft_rows_and_an_export_imports_back(self, writing, annotator, lead):
        import_file(writing, jsonl({"id": "w", "prompt": "Name a prime."}))
        import_file(writing, jsonl({"id": "r", "prompt": "Hi", "response": "Yo"}))
        for _ in range(2):
            lease = writing.next_assignment(annotator)
            if lease.task.kind == TaskKind.WRITE:
                lease.submit({"text": "Two."}, user=annotator)
            else:
                lease.submit({"score": 2, "correction": "Hello!"}, user=annotator)

        rows = export(writing, "sft")
        assert [(row["prompt_id"], row["messages"][-1]["content"], row["source"]) for row in rows] == [
            ("w", "Two.", "human"),
            ("r", "Hello!", "human"),
        ]
        assert [row["prompt_id"] for row in export(writing, "sft", annotator="annotator")] == ["w", "r"]
        assert export(writing, "sft", annotator="lead") == []
        assert [row["prompt_id"] for row in export(writing, "sft", round=0)] == ["w", "r"]
        assert export(writing, "sft", round=1) == []

        # The sft export is a demonstrations file: another project reads it back, both styles.
        other = type(writing).objects.create(name="Other", slug="other")
        for style in ("conversational", "standard"):
            lines = export(writing, "sft", style=style)
            result = import_file(other, jsonl(*lines))
            assert result.format == "demonstrations"
        # Keyed by the exported prompt_id: the second file finds the prompts and replies the first made.
        copied = Response.objects.get(prompt__project=other, prompt__external_id="w")
        assert (copied.content, copied.source, copied.author) == ("Two.", "human", None)
        assert copied.prompt.messages == [{"role": "user", "content": "Name a prime."}]
        assert Response.objects.filter(prompt__project=other).count() == 2

    def test_an_excluded_members_written_answers_leave_the_sft_export(self, writing, annotator, lead):
        import_file(writing, jsonl({"id": "w", "prompt": "Name a prime."}))
        writing.next_assignment(annotator).submit({"text": "Two."}, user=annotator)
        Membership.objects.get(user=annotator).decide("excluded", by=lead, reason="Copied answers.")
        assert export(writing, "sft") == []

    def test_a_better_answer_to_a_gold_task_is_no_data(self, project, annotator):
        import_file(project, jsonl({"id": "g", "prompt": "Name a prime.", "response": "Nine.", "gold_score": 1}))
        gold = Task.objects.get(status=Task.Status.GOLD)
        lease = project._lease(gold, annotator, timezone.now())  # as the queue serves it, among real work
        lease.submit({"score": 1, "correction": "Two."}, user=annotator)
        assert Response.objects.filter(content="Two.", source="human").exists()
        assert export(project, "sft") == [] and export(project, "pairs") == []

    @pytest.mark.parametrize("format", ["jsonl", "parquet"])
    def test_each_correction_is_a_pair_marked_as_such(self, project, annotator, make_user, format):
        import_file(project, jsonl({"id": "r", "prompt": "Name a prime.", "response": "Nine."}))
        Task.objects.update(required_annotations=3)
        other, third = make_user("other"), make_user("third")
        Membership.objects.create(project=project, user=other)
        Membership.objects.create(project=project, user=third)
        project.next_assignment(annotator).submit({"score": 1, "correction": "Two."}, user=annotator)
        project.next_assignment(other).submit({"score": 1, "correction": "Three."}, user=other)
        project.next_assignment(third).submit({"score": 2}, user=third)

        rows = export(project, "pairs", format=format)
        nine = Response.objects.get(content="Nine.")
        assert [
            (row["chosen"][0]["content"], row["rejected"][0]["content"], row["pair_source"], row["margin"])
            for row in rows
        ] == [("Two.", "Nine.", "correction", 1.0), ("Three.", "Nine.", "correction", 1.0)]
        assert {row["rejected_id"] for row in rows} == {nine.pk}
        assert {row["task_id"] for row in rows} == {nine.tasks.get().pk}
        assert [row["prompt_id"] for row in export(project, "pairs", format=format, annotator="other")] == ["r"]
        votes = export(project, "votes", format=format)
        assert [row["written"] for row in votes] == ["Two.", "Three.", None]
