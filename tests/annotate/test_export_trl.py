"""The real consumers of exports: TRL's trainers take Arbiter's snapshots as they are, and train on them.

Imported preference pairs are exported with annotate.exports, loaded with `datasets`, and given to TRL's
RewardTrainer and DPOTrainer (pairs) and KTOTrainer (unpaired), two steps each on the tiny local models.
"""

import json
import math
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may come from a model hub; fail at once if something tries

import torch  # noqa: E402
from datasets import load_dataset  # noqa: E402
from peft import LoraConfig  # noqa: E402
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer  # noqa: E402
from trl import DPOConfig, DPOTrainer, KTOConfig, KTOTrainer, RewardConfig, RewardTrainer  # noqa: E402

from annotate.exports import create_snapshot, run_snapshot  # noqa: E402
from annotate.importing import import_file  # noqa: E402
from annotate.models import DatasetSnapshot  # noqa: E402
from training.engine.tiny import build_tiny_models  # noqa: E402

# TRL 1.16 still calls the name transformers 5.23 renamed; nothing to fix on this side.
pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")

STYLES = ["conversational", "standard"]
# Four pairs: two steps of two. One prompt has a system message, one is a conversation in TRL's own form.
PREFERENCES = [
    {"prompt": "What is two plus two?", "chosen": "Two plus two is four.", "rejected": "It is five."},
    {
        "prompt": [
            {"role": "system", "content": "Answer in one word."},
            {"role": "user", "content": "Translate hello into Spanish."},
        ],
        "chosen": [{"role": "assistant", "content": "Hola."}],
        "rejected": [{"role": "assistant", "content": "Bonjour."}],
    },
    {"prompt": "How many legs does a spider have?", "chosen": "Eight.", "rejected": "Six, like an insect."},
    {"prompt": "Tell me a joke.", "chosen": "A scarecrow won an award: he was outstanding.", "rejected": "No."},
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_models(tmp_path_factory.mktemp("tiny"))


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


@pytest.fixture
def export(project, tmp_path, settings):
    """Import the pairs into the project; export(kind, style) returns the READY snapshot's file as a Dataset."""
    settings.MEDIA_ROOT = tmp_path / "media"
    import_file(project, write_jsonl(tmp_path / "preferences.jsonl", PREFERENCES))

    def export(kind: str, style: str):
        snapshot = run_snapshot(create_snapshot(project, kind=kind, format="jsonl", style=style))
        assert snapshot.status == DatasetSnapshot.Status.READY, snapshot.error
        return load_dataset("json", data_files=snapshot.file.path, split="train", cache_dir=str(tmp_path / "hf"))

    return export


def config(config_class, tmp_path, **extra):
    return config_class(
        output_dir=str(tmp_path / "out"),
        max_steps=2,
        per_device_train_batch_size=2,
        learning_rate=1e-3,
        logging_steps=1,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        # TRL turns both on by default, even on a CPU: pointless for a tiny model, and bf16 only blurs the numbers.
        activation_checkpointing=False,
        bf16=False,
        **extra,
    )


def train_two_steps(trainer) -> set[str]:
    """Train; check that two steps ran with finite losses; return the trainable parameters that changed."""
    before = {name: p.detach().clone() for name, p in trainer.model.named_parameters() if p.requires_grad}
    trainer.train()
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    assert trainer.state.global_step == 2
    assert len(losses) == 2 and all(math.isfinite(loss) for loss in losses), losses
    after = dict(trainer.model.named_parameters())
    return {name for name, value in before.items() if not torch.equal(value, after[name].detach())}


@pytest.mark.parametrize("style", STYLES)
def test_reward_trainer_trains_on_exported_pairs(export, tiny, tmp_path, style):
    pairs = export("pairs", style)
    assert {"prompt", "chosen", "rejected", "margin"} <= set(pairs.column_names)
    assert len(pairs) == len(PREFERENCES)
    assert all(math.isfinite(margin) for margin in pairs["margin"])

    trainer = RewardTrainer(
        model=AutoModelForSequenceClassification.from_pretrained(tiny.reward),
        args=config(RewardConfig, tmp_path),
        train_dataset=pairs,
        processing_class=AutoTokenizer.from_pretrained(tiny.reward),
    )
    # The margin goes into the loss: -log σ(r(x, y_w) - r(x, y_l) - margin).
    assert "margin" in trainer.train_dataset.column_names
    changed = train_two_steps(trainer)

    assert "score.weight" in changed
    assert "model.layers.0.self_attn.q_proj.weight" in changed


@pytest.mark.parametrize("style", STYLES)
def test_dpo_trainer_trains_a_lora_adapter_on_exported_pairs(export, tiny, tmp_path, style):
    pairs = export("pairs", style)

    trainer = DPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(tiny.policy),
        args=config(DPOConfig, tmp_path),
        train_dataset=pairs,
        processing_class=AutoTokenizer.from_pretrained(tiny.policy),
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
    )
    frozen = {name: p.detach().clone() for name, p in trainer.model.named_parameters() if not p.requires_grad}
    changed = train_two_steps(trainer)

    # LoRA's B starts at zero, so the adapter is the identity until a step moves it; the base model stays put
    # (it is also DPO's reference: the policy with the adapter disabled).
    assert any("lora_B" in name for name in changed)
    assert all(torch.equal(p.detach(), frozen[name]) for name, p in trainer.model.named_parameters() if name in frozen)


def test_a_standard_prompt_ends_on_a_token_boundary(export, tiny):
    """DPOTrainer takes a completion to start where the prompt's tokens stop being a prefix of the tokens of prompt
    + completion: the standard prompt ends with "assistant:" and a line break, which no completion's text joins."""
    pairs = export("pairs", "standard")
    tokenizer = AutoTokenizer.from_pretrained(tiny.policy)

    for row in pairs:
        assert row["prompt"].endswith("\n\nassistant:\n")
        prompt = tokenizer(text=row["prompt"])["input_ids"]
        for side in ("chosen", "rejected"):
            assert tokenizer(text=row["prompt"] + row[side])["input_ids"][: len(prompt)] == prompt


@pytest.fixture
def rated(project, annotator, tmp_path):
    """The same responses, each rated through the queue: chosen ones 5 (desirable), rejected ones 1."""
    rows = [{"prompt": row["prompt"], "responses": [text(row["chosen"]), text(row["rejected"])]} for row in PREFERENCES]
    import_file(project, write_jsonl(tmp_path / "responses.jsonl", rows), format="responses")
    scores = {text(row["chosen"]): 5 for row in PREFERENCES} | {text(row["rejected"]): 1 for row in PREFERENCES}
    while lease := project.next_assignment(annotator):
        lease.submit({"score": scores[lease.task.responses.get().content]}, user=annotator)


def text(side):
    return side if isinstance(side, str) else side[0]["content"]


@pytest.mark.parametrize("style", STYLES)
def test_kto_trainer_accepts_exported_unpaired_data(export, rated, tiny, tmp_path, style):
    unpaired = export("unpaired", style)
    assert {"prompt", "completion", "label"} <= set(unpaired.column_names)
    assert sorted(unpaired["label"]) == [False] * len(PREFERENCES) + [True] * len(PREFERENCES)

    # Constructing the trainer runs TRL's KTO data preparation: prompt/completion tokenised through the chat
    # template (or with an EOS appended, for strings), and mismatched completions for the KL estimate.
    trainer = KTOTrainer(
        model=AutoModelForCausalLM.from_pretrained(tiny.policy),
        args=config(KTOConfig, tmp_path),
        train_dataset=unpaired,
        processing_class=AutoTokenizer.from_pretrained(tiny.policy),
    )
    prepared = trainer.train_dataset
    assert {"prompt_ids", "completion_ids", "KL_completion_ids", "label"} <= set(prepared.column_names)
    assert len(prepared) == len(unpaired)
    assert all(ids[-1] == trainer.processing_class.eos_token_id for ids in prepared["completion_ids"])
    changed = train_two_steps(trainer)

    assert "model.layers.0.self_attn.q_proj.weight" in changed


def test_reward_trainer_trains_on_pairs_with_a_judges_weighted_votes(export, project, annotator, tiny, tmp_path):
    """votes=both: a person and a judge beside the imported votes; the judge, right on three of the four, weighs 0.75
    of a vote and overturns none, but its votes move the margins off the whole numbers."""
    from annotate import judges
    from annotate.models import Annotation, Judge, Task

    export("pairs", "conversational")  # imports the pairs
    judge = Judge.create(project, "critic", kind=Judge.Kind.LLM, endpoint="http://127.0.0.1:9/v1", model_name="tiny")
    for number, task in enumerate(Task.objects.filter(project=project).order_by("pk")):
        imported = task.annotations.get()
        Annotation.objects.create(task=task, annotator=annotator, choice=imported.choice, strength=1)
        choice = imported.choice if number else ("b" if imported.choice == "a" else "a")
        judges.record(judge, judges.Verdict(task.pk, {"choice": choice, "strength": 2, "both_bad": False}))
    snapshot = run_snapshot(create_snapshot(project, kind="pairs", filters={"votes": "both"}))
    assert snapshot.judge_weights == {"critic": 0.75}
    pairs = load_dataset("json", data_files=snapshot.file.path, split="train", cache_dir=str(tmp_path / "hf"))
    assert len(pairs) == len(PREFERENCES) and pairs["votes"] == [3] * 4
    assert sorted(pairs["margin"]) == pytest.approx([0.5 / 2.75] + [3.5 / 2.75] * 3)

    trainer = RewardTrainer(
        model=AutoModelForSequenceClassification.from_pretrained(tiny.reward),
        args=config(RewardConfig, tmp_path),
        train_dataset=pairs,
        processing_class=AutoTokenizer.from_pretrained(tiny.reward),
    )
    assert "score.weight" in train_two_steps(trainer)
