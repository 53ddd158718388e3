"""Hugging Face `datasets` loads every export as it is, and HH-RLHF survives an import and an export unchanged.

TRL's trainers on exports (reward, DPO, KTO): test_export_trl.py.
"""

import gzip
import json
import os
import re
from datetime import UTC, datetime

import datasets
import pyarrow.parquet as pq
import pytest

from annotate.exports import create_snapshot, run_snapshot
from annotate.importing import import_file
from annotate.models import DatasetSnapshot
from tests.annotate.test_exports import build_data, rows_of
from tests.annotate.test_import import HH_FILE, HH_ROWS


@pytest.fixture(autouse=True)
def media_root(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"


@pytest.fixture
def data(project, django_user_model, tmp_path):
    """The prompts, responses and votes of the exact-row tests in test_exports.py."""
    return build_data(project, django_user_model, tmp_path)


def export(project, kind, format="jsonl", style="conversational", **filters):
    snapshot = run_snapshot(create_snapshot(project, kind=kind, format=format, style=style, filters=filters))
    assert snapshot.status == "ready", snapshot.error
    return snapshot


def load(snapshot, tmp_path):
    builder = "json" if snapshot.format == "jsonl" else "parquet"
    return datasets.load_dataset(
        builder, data_files=snapshot.file.path, split="train", cache_dir=str(tmp_path / "hf-cache")
    )


# TRL's columns for each form, in TRL's order; further columns follow them.
COLUMNS = {
    ("pairs", "conversational"): ["prompt", "chosen", "rejected"],
    ("pairs", "standard"): ["prompt", "chosen", "rejected"],
    ("unpaired", "conversational"): ["prompt", "completion", "label"],
    ("unpaired", "standard"): ["prompt", "completion", "label"],
    ("sft", "conversational"): ["messages"],
    ("sft", "standard"): ["prompt", "completion"],
    ("votes", "conversational"): ["annotation_id", "task_id"],  # not a TRL form
    ("votes", "standard"): ["annotation_id", "task_id"],
}


@pytest.mark.parametrize("format", DatasetSnapshot.Format.values)
@pytest.mark.parametrize("style", DatasetSnapshot.Style.values)
@pytest.mark.parametrize("kind", DatasetSnapshot.Kind.values)
def test_datasets_loads_every_export_with_its_columns_and_rows(project, data, tmp_path, kind, style, format):
    snapshot = export(project, kind, format, style, include_ties=kind == "pairs", ratings_as_pairs=kind == "pairs")
    loaded = load(snapshot, tmp_path)

    assert loaded.column_names[: len(COLUMNS[kind, style])] == COLUMNS[kind, style]
    assert loaded.column_names == pq.read_schema(export(project, kind, "parquet", style).file.path).names
    assert loaded.num_rows == snapshot.row_count > 0
    expected = rows_of(snapshot)
    if kind == "votes" and format == "jsonl":
        # pyarrow's JSON reader, under datasets, reads ISO 8601 text as a timestamp (in UTC, without a zone).
        for row in expected:
            row["created_at"] = datetime.fromisoformat(row["created_at"]).astimezone(UTC).replace(tzinfo=None)
    assert loaded.to_list() == expected
    if style == "conversational" and kind != "votes":
        first = loaded[0]
        messages = first["messages"] if kind == "sft" else first["prompt"] + first[COLUMNS[kind, style][1]]
        assert set(messages[-1]) == {"role", "content"} and messages[-1]["role"] == "assistant"


HH_TURN = re.compile(r"\n\n(Human|Assistant):")
ASSISTANT = "\n\nAssistant:"


def hh_expected(row: dict) -> tuple[str, str, str]:
    """(prompt, chosen, rejected) of an HH-RLHF row in the standard style, read from the source transcripts.

    The prompt is the transcript both sides share up to their last shared "Assistant:" turn; its turns become
    "user: …" / "assistant: …", each followed by a blank line (a repeated speaker's turns joined by a blank
    line), and then "assistant:" and a line break, the turn the answers take.
    """
    shared = len(os.path.commonprefix([row["chosen"], row["rejected"]]))
    cut = row["chosen"].rfind(ASSISTANT, 0, shared)
    parts = HH_TURN.split(row["chosen"][:cut])
    turns: list[list[str]] = []
    for speaker, text in zip(parts[1::2], parts[2::2], strict=True):
        role = "user" if speaker == "Human" else "assistant"
        if turns and turns[-1][0] == role:
            turns[-1][1] += "\n\n" + text.strip()
        else:
            turns.append([role, text.strip()])
    prompt = "".join(f"{role}: {text}\n\n" for role, text in turns) + "assistant:\n"
    start = cut + len(ASSISTANT)
    return prompt, row["chosen"][start:].strip(), row["rejected"][start:].strip()


def test_hh_rlhf_round_trips_through_import_and_a_standard_pairs_export(project, tmp_path):
    if not HH_FILE.exists():
        pytest.skip(f"HH-RLHF sample not found at {HH_FILE} (it lives in ../shared/data/, outside the repository)")
    with gzip.open(HH_FILE, "rt", encoding="utf-8") as file:
        source = [json.loads(line) for line in file]
    path = tmp_path / "hh.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in source))
    import_file(project, path)

    loaded = load(export(project, "pairs", style="standard"), tmp_path)

    expected = [hh_expected(row) for row in source]
    # Rows come by prompt: the second row of a repeated prompt follows its first, otherwise the file's order.
    first_line = {}
    for line, (prompt, _, _) in enumerate(expected):
        first_line.setdefault(prompt, line)
    expected.sort(key=lambda triple: first_line[triple[0]])
    assert len(loaded) == HH_ROWS
    assert list(zip(loaded["prompt"], loaded["chosen"], loaded["rejected"], strict=True)) == expected
    assert set(loaded["margin"]) == {1.0} and set(loaded["chosen_model_version"]) == {None}
