"""The KTO stage and the kto round: the loss starts at 0.5 and falls on rated answers, only the adapter moves, the
saved adapter reloads; a round trains on the unpaired export of rated tasks, registers a policy and samples."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from tests.training.conftest import marker_pairs, settings, write_jsonl
from training.engine import kto
from training.engine.common import load_policy
from training.engine.config import BaseConfig, KTOConfig
from training.engine.kto import train_kto

pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")

IDS = torch.tensor([[1, 4, 30, 31, 32, 2, 5, 40, 41, 42]])  # <s><|user|>…</s><|assistant|>…


def marker_unpaired(n: int) -> list[dict]:
    """An unpaired export's rows: each marker pair's answers rated apart, the one with the marker desirable."""
    return [
        {"prompt": pair["prompt"], "completion": pair[side], "label": side == "chosen", "score": score,
         "prompt_id": pair["prompt_id"], "response_id": pair[f"{side}_id"], "model_version": None}
        for pair in marker_pairs(n)
        for side, score in (("chosen", 5.0), ("rejected", 1.0))
    ]  # fmt: skip


def test_loss_starts_at_one_half_and_falls_while_the_reference_stays_put(tiny, tmp_path, spy):
    seen = spy(kto)
    start = {}
    # Before the first step the adapter is zero, so π = π_ref: every log-ratio and the KL estimate are 0, and each
    # answer's loss is 1 - σ(0) = 0.5.
    seen["before_training"] = lambda trainer: start.update(trainer.evaluate(trainer.train_dataset))
    rows = write_jsonl(tmp_path / "unpaired.jsonl", marker_unpaired(16))
    out = tmp_path / "kto"

    result = train_kto(settings(KTOConfig, tiny.policy, max_steps=20, learning_rate=2e-3), rows, str(out))

    trainer = seen["trainer"]
    assert start["eval_loss"] == pytest.approx(0.5, abs=1e-6)
    assert start["eval_rewards/chosen"] == start["eval_rewards/rejected"] == 0
    end = trainer.evaluate(trainer.train_dataset)
    assert end["eval_loss"] < start["eval_loss"] - 0.05, end
    assert end["eval_rewards/chosen"] > end["eval_rewards/rejected"]
    assert result.steps == 20 and result.metrics["train_loss"] < 0.5
    assert {"loss", "kl", "reward_desirable", "reward_undesirable", "eval_rows"} <= result.eval_report.keys()
    assert result.eval_report["eval_rows"] == 8  # 4 of 16 prompts held out, two rated answers each

    # Only the adapter trained; with it disabled the model is the untouched base, i.e. the reference.
    model, before = trainer.model.eval(), seen["before"]
    changed = {name for name, p in model.named_parameters() if not torch.equal(p.detach(), before[name])}
    assert changed == {name for name, p in model.named_parameters() if p.requires_grad}
    assert changed and all("lora_" in name for name in changed)
    base = AutoModelForCausalLM.from_pretrained(tiny.policy).eval()
    with torch.no_grad(), model.disable_adapter():
        torch.testing.assert_close(model(IDS).logits, base(IDS).logits, rtol=0, atol=0)
    with torch.no_grad():
        assert not torch.allclose(model(IDS).logits, base(IDS).logits)
        # The saved adapter, loaded onto the base, is the trained policy.
        reloaded = load_policy(BaseConfig(model_name_or_path=str(out))).eval()
        torch.testing.assert_close(reloaded(IDS).logits, model(IDS).logits)


def test_weights_reach_the_trainer_and_an_unlabelled_file_is_refused(tiny, tmp_path, spy):
    seen = spy(kto)
    rows = write_jsonl(tmp_path / "unpaired.jsonl", marker_unpaired(8))
    config = settings(KTOConfig, tiny.policy, max_steps=2, beta=0.3, desirable_weight=1.2, undesirable_weight=0.9)

    train_kto(config, rows, str(tmp_path / "kto"))

    trainer = seen["trainer"]
    assert (trainer.beta, trainer.desirable_weight, trainer.undesirable_weight) == (0.3, 1.2, 0.9)
    pairs = write_jsonl(tmp_path / "pairs.jsonl", marker_pairs(4))
    with pytest.raises(ValueError, match="missing column.*completion, label"):
        train_kto(config, pairs, str(tmp_path / "again"))
