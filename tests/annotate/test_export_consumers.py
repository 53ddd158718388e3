"""The real consumers take the exports as they are: Hugging Face `datasets` loads them, TRL trains on them."""

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


@pytest.mark.filterwarnings("ignore::FutureWarning")  # transformers' renames, not ours
@pytest.mark.parametrize("style", DatasetSnapshot.Style.values)
def test_kto_export_passes_trls_data_preparation_and_trains(project, data, tmp_path, style):
    """KTOTrainer prepares the loaded export (chat template or EOS, tokenising, KL completions, label balance) and
    takes a step on it, with a tiny model and tokenizer made here: no download."""
    pytest.importorskip("trl")
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
    from trl import KTOConfig, KTOTrainer

    dataset = load(export(project, "unpaired", "parquet", style), tmp_path)
    words = {"user:", "assistant:"}
    for row in dataset:
        for part in (row["prompt"], row["completion"]):
            texts = [part] if isinstance(part, str) else [message["content"] for message in part]
            words.update(word for text in texts for word in text.split())
    vocab = {word: i for i, word in enumerate(["[UNK]", "[PAD]", "[EOS]", *sorted(words)])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]", eos_token="[EOS]"
    )
    tokenizer.chat_template = (
        "{% for m in messages %}{{ m.role }}: {{ m.content }} {% endfor %}"
        "{% if add_generation_prompt %}assistant: {% endif %}"
    )
    config = LlamaConfig(
        vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=2, pad_token_id=1, eos_token_id=2,
    )  # fmt: skip
    model, reference = LlamaForCausalLM(config), LlamaForCausalLM(config)
    args = KTOConfig(
        output_dir=str(tmp_path / "kto"), per_device_train_batch_size=2, max_steps=1, use_cpu=True,
        report_to=[], save_strategy="no", logging_strategy="no",
    )  # fmt: skip
    trainer = KTOTrainer(model=model, ref_model=reference, args=args, train_dataset=dataset, processing_class=tokenizer)

    prepared = trainer.train_dataset
    assert prepared.num_rows == dataset.num_rows == 4
    assert prepared["label"] == [True, False, False, False]
    assert {"prompt_ids", "completion_ids", "KL_completion_ids"} <= set(prepared.column_names)
    assert all(prepared["completion_ids"])
    before = [parameter.detach().clone() for parameter in model.parameters()]
    trainer.train()
    assert any((old != new.detach()).any() for old, new in zip(before, model.parameters(), strict=True))


HH_TURN = re.compile(r"\n\n(Human|Assistant):")
ASSISTANT = "\n\nAssistant:"


def hh_expected(row: dict) -> tuple[str, str, str]:
    """(prompt, chosen, rejected) of an HH-RLHF row in the standard style, read from the source transcripts.

    The prompt is the transcript both sides share up to their last shared "Assistant:" turn; its turns become
    "user: …" / "assistant: …" separated by blank lines (a repeated speaker's turns joined by a blank line), or
    the bare text when it is a single user turn.
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
    prompt = turns[0][1] if len(turns) == 1 else "\n\n".join(f"{role}: {text}" for role, text in turns)
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
