"""The SFT stage: loss on the assistant's tokens only, falling as it trains; the adapter saves and reloads."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.training.conftest import MARKER, settings, sft_rows, write_jsonl
from training.engine import sft
from training.engine.common import BaseConfig, load_policy
from training.engine.sft import SFTConfig, train_sft

pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")

IDS = torch.tensor([[1, 4, 30, 31, 32, 2, 5, 40, 41, 42]])


def trained_text(trainer) -> list[str]:
    """Per example of the first training batch: the tokens that carry a loss, as text."""
    batch = next(iter(trainer.get_train_dataloader()))
    return [
        trainer.processing_class.decode(ids[labels != -100])
        for ids, labels in zip(batch["input_ids"], batch["labels"], strict=True)
    ]


def test_learns_the_answers_only_and_the_loss_falls(tiny, tmp_path, spy):
    seen = spy(sft)
    data = write_jsonl(tmp_path / "sft.jsonl", sft_rows(16))
    out = tmp_path / "sft"

    result = train_sft(
        settings(SFTConfig, tiny.policy, max_steps=20, per_device_batch_size=4, learning_rate=5e-3), data, str(out)
    )

    trainer = seen["trainer"]
    # Prompts (system and user turns, role tags) carry no loss: only the answer and its end-of-turn token.
    assert set(trained_text(trainer)) == {f"The answer is {MARKER}.</s>"}
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    assert len(losses) == 20 and sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.5, losses
    assert result.eval_report["eval_examples"] == 4 and result.eval_report["loss"] < losses[0]

    model, before = trainer.model.eval(), seen["before"]
    changed = {name for name, p in model.named_parameters() if not torch.equal(p.detach(), before[name])}
    assert changed == {name for name, p in model.named_parameters() if p.requires_grad}
    assert changed and all("lora_" in name for name in changed)
    base = AutoModelForCausalLM.from_pretrained(tiny.policy).eval()
    with torch.no_grad():
        with model.disable_adapter():
            torch.testing.assert_close(model(IDS).logits, base(IDS).logits, rtol=0, atol=0)
        reloaded = load_policy(BaseConfig(model_name_or_path=str(out))).eval()
        torch.testing.assert_close(reloaded(IDS).logits, model(IDS).logits)
    assert AutoTokenizer.from_pretrained(out).chat_template == AutoTokenizer.from_pretrained(tiny.policy).chat_template


def test_standard_export_learns_the_completion_only(tiny, tmp_path, spy):
    seen = spy(sft)
    rows = [{"prompt": "What is two plus two?", "completion": " Four.", "prompt_id": f"p{i}"} for i in range(8)]

    data = write_jsonl(tmp_path / "sft.jsonl", rows)

    result = train_sft(settings(SFTConfig, tiny.policy, max_steps=2), data, str(tmp_path / "sft"))

    assert set(trained_text(seen["trainer"])) == {" Four.</s>"}
    assert result.steps == 2


def test_whole_transcripts_when_assistant_only_loss_is_off(tiny, tmp_path, spy):
    seen = spy(sft)
    data = write_jsonl(tmp_path / "sft.jsonl", sft_rows(8))

    train_sft(settings(SFTConfig, tiny.policy, max_steps=1, assistant_only_loss=False), data, str(tmp_path / "sft"))

    assert all("<|user|>" in text for text in trained_text(seen["trainer"]))
