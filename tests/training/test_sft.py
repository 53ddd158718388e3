"""The SFT stage: loss on the assistant's tokens only, falling as it trains; the adapter saves and reloads."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.training.conftest import MARKER, settings, sft_rows, write_jsonl
from training.engine import common, sft
from training.engine.common import load_policy
from training.engine.config import BaseConfig, SFTConfig
from training.engine.sft import train_sft

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


def test_off_cuda_the_plain_lm_head_gives_trls_loss_metrics_and_gradients(tiny, tmp_path, monkeypatch):
    """On the CPU train_sft swaps TRL's fused LM head for the plain one: TRL's own compute_loss (token-normalised
    over the batch, as with gradient accumulation) gives the same loss, entropy, accuracy and gradients."""
    compared = []
    use_plain_lm_head = common.use_plain_lm_head

    def loss_metrics_and_grads(trainer, batch):
        model = trainer.model
        model.zero_grad()
        torch.manual_seed(0)  # SFT keeps LoRA's dropout: the same masks for both heads
        # Tokens over all of a step's batches, as under gradient accumulation: more than this batch holds.
        loss = trainer.compute_loss(model, batch, num_items_in_batch=3 * (batch["labels"] != -100).sum())
        loss.backward()
        metrics = {name: values.pop() for name, values in trainer._metrics["train"].items() if values}
        grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
        return loss.detach(), metrics, grads

    def compare(trainer):
        batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
        with torch.no_grad():  # as if trained a little, so that the adapter changes the outputs and gradients
            for name, p in trainer.model.named_parameters():
                if "lora_B" in name:
                    p.normal_(std=0.05)
        trls = loss_metrics_and_grads(trainer, batch)
        use_plain_lm_head(trainer)
        compared.append((trls, loss_metrics_and_grads(trainer, batch)))

    monkeypatch.setattr(common, "use_plain_lm_head", compare)
    data = write_jsonl(tmp_path / "sft.jsonl", sft_rows(16))
    train_sft(settings(SFTConfig, tiny.policy, max_steps=1), data, str(tmp_path / "sft"))

    [((trl_loss, trl_metrics, trl_grads), (loss, metrics, grads))] = compared
    torch.testing.assert_close(loss, trl_loss)
    assert {"entropy", "mean_token_accuracy"} <= metrics.keys()
    for name in ("entropy", "mean_token_accuracy"):
        assert metrics[name] == pytest.approx(trl_metrics[name], rel=1e-5), name
    assert grads.keys() == trl_grads.keys() and grads
    for name, grad in grads.items():
        torch.testing.assert_close(grad, trl_grads[name], rtol=1e-4, atol=1e-6, msg=name)


MULTI_TURN = [
    {"role": "user", "content": "What is two plus two?"},
    {"role": "assistant", "content": "Four."},
    {"role": "user", "content": "And three plus three?"},
    {"role": "assistant", "content": "Six."},
]
# Per chat template: the text of each assistant turn that carries loss, its end-of-turn token included (ChatML and
# Zephyr end the turn with a newline too; Phi-3's template closes the conversation with <|endoftext|>).
# TRL's own masks (before ours) took Qwen's newline after the role tag and refused SmolLM2's and TinyLlama's
# templates.
TRAINED_TURNS = {
    "tiny": ["Four.</s>", "Six.</s>"],
    "qwen2.5-instruct": ["Four.<|im_end|>\n", "Six.<|im_end|>\n"],
    "smollm2-instruct": ["Four.<|im_end|>\n", "Six.<|im_end|>\n"],
    "tinyllama-chat": ["Four.</s>\n", "Six.</s>\n"],
    "phi3-mini-instruct": ["Four.<|end|>", "Six.<|end|><|endoftext|>"],  # <|end|> swallows the newline (rstrip)
}


def trained_spans(trainer) -> list[list[str]]:
    """Per example of the first training batch: each run of tokens that carries a loss, as text."""
    batch = next(iter(trainer.get_train_dataloader()))
    spans = []
    for ids, labels in zip(batch["input_ids"], batch["labels"], strict=True):
        trained = (labels != -100).int().tolist()
        runs, start = [], None
        for i, bit in enumerate([*trained, 0]):
            if bit and start is None:
                start = i
            elif not bit and start is not None:
                runs.append(trainer.processing_class.decode(ids[start:i]))
                start = None
        spans.append(runs)
    return spans


def assert_only_assistant_turns_trained(models, tmp_path, spy):
    seen = spy(sft)
    rows = [{"messages": MULTI_TURN, "prompt_id": f"p{i}"} for i in range(4)]
    data = write_jsonl(tmp_path / "sft.jsonl", rows)

    train_sft(settings(SFTConfig, models.policy, max_steps=1, eval_fraction=0), data, str(tmp_path / "sft"))

    expected = TRAINED_TURNS[models.like.name if models.like else "tiny"]
    assert trained_spans(seen["trainer"]) == [expected] * 4


def test_each_assistant_turn_and_its_end_of_turn_carry_the_loss(tiny, tmp_path, spy):
    assert_only_assistant_turns_trained(tiny, tmp_path, spy)


def test_each_assistant_turn_and_its_end_of_turn_carry_the_loss_without_generation_markers(family, tmp_path, spy):
    assert "{% generation %}" not in AutoTokenizer.from_pretrained(family.policy).chat_template
    assert_only_assistant_turns_trained(family, tmp_path, spy)
