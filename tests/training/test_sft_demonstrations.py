"""An SFT round trains on what annotators wrote: its snapshot holds each written answer and correction."""

import json

import pytest

from annotate.exports import run_snapshot
from annotate.importing import import_file
from annotate.models import TaskKind
from training.rounds import launch_round


@pytest.mark.django_db
def test_an_sft_rounds_snapshot_holds_written_answers_and_corrections(project, annotator, policy, tmp_path):
    rated = tmp_path / "rated.jsonl"
    rated.write_text(json.dumps({"id": "r", "prompt": "Name a square.", "response": "Three."}) + "\n")
    import_file(project, rated)  # a rating task
    project.task_kinds = [TaskKind.RATING, TaskKind.WRITE]
    project.save(update_fields=["task_kinds"])
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"id": "w", "prompt": "Name a prime."}) + "\n")
    import_file(project, prompts)  # a write task
    while lease := project.next_assignment(annotator):
        if lease.task.kind == TaskKind.WRITE:
            lease.submit({"text": "Two, the only even prime."}, user=annotator)
        else:
            lease.submit({"score": 1, "correction": "Four."}, user=annotator)

    training_round = launch_round(project, method="sft", base=policy)
    # The snapshot alone, as the round's first step writes it: training it is test_sft.py's and test_rounds.py's.
    snapshot = run_snapshot(training_round.snapshot)

    assert snapshot.kind == "sft" and snapshot.status == "ready", snapshot.error
    with snapshot.file.open("rb") as file:
        rows = [json.loads(line) for line in file.read().decode().splitlines()]
    assert [(row["prompt_id"], row["messages"][-1]) for row in rows] == [
        ("r", {"role": "assistant", "content": "Four."}),
        ("w", {"role": "assistant", "content": "Two, the only even prime."}),
    ]
