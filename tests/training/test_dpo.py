"""The DPO stage: starts at ln 2, lowers the loss on its pairs, leaves the reference alone, saves the adapter."""

import math

import pytest
import torch
from transformers import AutoModelForCausalLM

from tests.training.conftest import marker_pairs, save_adapter, settings, write_jsonl
from training.engine import common, dpo
from training.engine.common import load_policy
from training.engine.config import LOSS_TYPES, BaseConfig, DPOConfig
from training.engine.dpo import train_dpo

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


# The smoothing their papers suggest, for the losses that need some (robust at 0 would be sigmoid).
SMOOTHING = {"robust": 0.1, "exo_pair": 1e-3}


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_every_loss_type_the_launch_offers_trains(tiny, tmp_path, spy, loss_type):
    seen = spy(dpo)
    pairs = write_jsonl(tmp_path / "pairs.jsonl", marker_pairs(8))
    smoothing = SMOOTHING.get(loss_type, 0.0)
    config = settings(DPOConfig, tiny.policy, max_steps=2, loss_type=loss_type, label_smoothing=smoothing)

    result = train_dpo(config, pairs, str(tmp_path / "dpo"))

    trainer = seen["trainer"]
    assert (trainer.loss_types, trainer.label_smoothing) == ([loss_type], smoothing)
    assert result.steps == 2
    assert math.isfinite(result.metrics["train_loss"]) and math.isfinite(result.eval_report["loss"])
    before = seen["before"]
    changed = {name for name, p in trainer.model.named_parameters() if not torch.equal(p.detach(), before[name])}
    assert changed and all("lora_" in name for name in changed)


def test_continues_training_an_adapter_it_saved(tiny, tmp_path):
    pairs = write_jsonl(tmp_path / "pairs.jsonl", marker_pairs(16))
    first = train_dpo(settings(DPOConfig, tiny.policy, max_steps=2), pairs, str(tmp_path / "one"))

    second = train_dpo(settings(DPOConfig, first.output_dir, max_steps=2), pairs, str(tmp_path / "two"))

    reloaded = load_policy(BaseConfig(model_name_or_path=second.output_dir)).eval()
    previous = load_policy(BaseConfig(model_name_or_path=first.output_dir)).eval()
    with torch.no_grad():
        assert not torch.allclose(reloaded(IDS).logits, previous(IDS).logits)


@pytest.mark.parametrize("use_lora", [True, False], ids=["lora", "full"])
def test_off_cuda_the_plain_lm_head_gives_what_trls_fused_head_gives(tiny, tmp_path, monkeypatch, use_lora):
    """On the CPU train_dpo swaps TRL's fused LM head for the plain one (faster there): same outputs, same gradients,
    for the policy, the reference through the disabled adapter and a separate reference model."""
    compared = []
    use_plain_lm_head = common.use_plain_lm_head

    def outputs_of(model, batch, *, grad):
        labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
        model.zero_grad()
        with torch.set_grad_enabled(grad):
            out = model(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels, fused_lm_head=True
            )
        if grad:
            out.loss.backward()
        grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
        return out, grads

    def compare(trainer):
        batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
        model = trainer.model
        with torch.no_grad():  # as if trained a little, so that the policy and the reference differ
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(std=0.05)
                elif not use_lora:
                    p.add_(torch.randn_like(p), alpha=0.02)
        patched = [m for m in (trainer.model.get_base_model() if use_lora else model, trainer.ref_model) if m]

        def everything():
            policy = outputs_of(model, batch, grad=True)
            if use_lora:
                with model.disable_adapter():
                    reference = outputs_of(model, batch, grad=False)
            else:
                reference = outputs_of(trainer.ref_model, batch, grad=False)
            return policy, reference

        trls = everything()
        forwards = [vars(m)["forward"] for m in patched]
        use_plain_lm_head(trainer)
        assert all(vars(m)["forward"] is not forward for m, forward in zip(patched, forwards, strict=True))
        compared.append((trls, everything()))

    monkeypatch.setattr(common, "use_plain_lm_head", compare)
    pairs = write_jsonl(tmp_path / "pairs.jsonl", marker_pairs(16))
    train_dpo(settings(DPOConfig, tiny.policy, max_steps=1, use_lora=use_lora), pairs, str(tmp_path / "dpo"))

    [(((trl_policy, trl_grads), (trl_ref, _)), ((policy, grads), (ref, _)))] = compared
    assert policy.label_mask.any() and not policy.label_mask.all()  # prompt tokens and padding are unlabelled
    torch.testing.assert_close(policy.label_mask, trl_policy.label_mask, rtol=0, atol=0)
    torch.testing.assert_close(policy.log_probs, trl_policy.log_probs, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(policy.loss, trl_policy.loss)
    torch.testing.assert_close(policy.entropy, trl_policy.entropy.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(policy.mean_logits, trl_policy.mean_logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(policy.is_top1, trl_policy.is_top1, rtol=0, atol=0)
    assert policy.is_top1.any()
    assert grads.keys() == trl_grads.keys() and grads
    for name, grad in grads.items():
        torch.testing.assert_close(grad, trl_grads[name], rtol=1e-4, atol=1e-6, msg=name)
    assert not torch.allclose(ref.log_probs, policy.log_probs)  # the reference is another model
    torch.testing.assert_close(ref.log_probs, trl_ref.log_probs, rtol=1e-5, atol=1e-5)


def test_models_whose_logits_are_capped_after_the_head_keep_trls_fused_head(tiny, tmp_path, monkeypatch):
    kept = {}
    use_plain_lm_head = common.use_plain_lm_head

    def capped(trainer):
        policy = trainer.model.get_base_model()
        policy.config.final_logit_softcapping = 30.0  # Gemma 2's: TRL's head applies it, the plain one would not
        forward = vars(policy)["forward"]
        use_plain_lm_head(trainer)
        kept["same"] = vars(policy)["forward"] is forward

    monkeypatch.setattr(common, "use_plain_lm_head", capped)
    pairs = write_jsonl(tmp_path / "pairs.jsonl", marker_pairs(8))
    train_dpo(settings(DPOConfig, tiny.policy, max_steps=1), pairs, str(tmp_path / "dpo"))

    assert kept == {"same": True}


def test_continuing_an_adapter_the_reference_is_that_adapter_and_only_the_trained_one_is_saved(tiny, tmp_path, spy):
    seen, start = spy(dpo), {}
    seen["before_training"] = lambda trainer: start.update(trainer.evaluate(trainer.train_dataset))
    parent = save_adapter(tiny.policy, tmp_path / "policy-v1")  # random B: far from the base
    pairs = write_jsonl(tmp_path / "pairs.jsonl", marker_pairs(16))
    out = tmp_path / "dpo"

    train_dpo(settings(DPOConfig, str(parent), max_steps=2), pairs, str(out))

    # π_ref is the policy the stage starts from (TRL's frozen copy of it), not the base under it: rewards start at 0.
    assert start["eval_loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert start["eval_rewards/chosen"] == start["eval_rewards/rejected"] == 0
    assert [p.name for p in out.iterdir() if p.is_dir() and not p.name.startswith("checkpoint-")] == []
    model = seen["trainer"].model.eval()
    with torch.no_grad():
        torch.testing.assert_close(load_policy(BaseConfig(model_name_or_path=str(out))).eval()(IDS).logits,
                                   model(IDS).logits)  # fmt: skip
