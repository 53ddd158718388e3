"""The DPO stage: starts at ln 2, lowers the loss on its pairs, leaves the reference alone, saves the adapter."""

import math

import pytest
import torch
from transformers import AutoModelForCausalLM

from tests.training.conftest import marker_pairs, settings, write_jsonl
from training.engine import dpo
from training.engine.common import BaseConfig, load_policy
from training.engine.dpo import DPOConfig, train_dpo

pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")

IDS = torch.tensor([[1, 4, 30, 31, 32, 2, 5, 40, 41, 42]])  # <s><|user|>…</s><|assistant|>…


def test_loss_starts_at_ln2_and_falls_while_the_reference_stays_put(tiny, tmp_path, spy):
    seen = spy(dpo)
    start = {}
    # Before the first step the adapter is zero, so π = π_ref: every implicit reward is 0 and the loss is ln 2.
    seen["before_training"] = lambda trainer: start.update(trainer.evaluate(trainer.train_dataset))
    pairs = write_jsonl(tmp_path / "pairs.jsonl", marker_pairs(32))
    out = tmp_path / "dpo"

    result = train_dpo(settings(DPOConfig, tiny.policy, max_steps=30, learning_rate=2e-3), pairs, str(out))

    trainer = seen["trainer"]
    assert start["eval_loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert start["eval_rewards/chosen"] == start["eval_rewards/rejected"] == 0
    end = trainer.evaluate(trainer.train_dataset)
    assert end["eval_loss"] < start["eval_loss"] - 0.1, end
    assert end["eval_rewards/margins"] > 0
    assert result.steps == 30 and result.metrics["train_loss"] < math.log(2)
    assert {"accuracy", "margin", "loss", "eval_pairs"} <= result.eval_report.keys()
    assert result.eval_report["eval_pairs"] == 8

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


def test_trains_on_standard_strings_with_precomputed_reference_log_probs(tiny, tmp_path, spy):
    seen = spy(dpo)
    pairs = write_jsonl(tmp_path / "pairs.jsonl", marker_pairs(16, style="standard"))
    config = settings(DPOConfig, tiny.policy, max_steps=3, precompute_ref_log_probs=True, beta=0.5, loss_type="ipo")

    result = train_dpo(config, pairs, str(tmp_path / "dpo"))

    assert {"ref_chosen_logps", "ref_rejected_logps"} <= set(seen["trainer"].train_dataset.column_names)
    assert (seen["trainer"].beta, seen["trainer"].loss_types) == (0.5, ["ipo"])
    assert result.steps == 3 and math.isfinite(result.eval_report["loss"])


def test_continues_training_an_adapter_it_saved(tiny, tmp_path):
    pairs = write_jsonl(tmp_path / "pairs.jsonl", marker_pairs(16))
    first = train_dpo(settings(DPOConfig, tiny.policy, max_steps=2), pairs, str(tmp_path / "one"))

    second = train_dpo(settings(DPOConfig, first.output_dir, max_steps=2), pairs, str(tmp_path / "two"))

    reloaded = load_policy(BaseConfig(model_name_or_path=second.output_dir)).eval()
    previous = load_policy(BaseConfig(model_name_or_path=first.output_dir)).eval()
    with torch.no_grad():
        assert not torch.allclose(reloaded(IDS).logits, previous(IDS).logits)
