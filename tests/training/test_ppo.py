"""PPO: the maths against hand-worked numbers, then the loop on the tiny model: it trains the adapter and value
head only, learns a programmatic reward, stops within a step and resumes as if it had never stopped."""

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from torch.nn.modules.module import register_module_forward_pre_hook
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.training.conftest import QUESTIONS, save_adapter, settings, write_jsonl
from training.engine import ppo
from training.engine.__main__ import main
from training.engine.config import PPOConfig
from training.engine.generate import response_mask
from training.engine.ppo import (
    KLController,
    Samples,
    apply_missing_eos_penalty,
    batch_indices,
    gae,
    load_prompts,
    masked_whiten,
    policy_loss,
    ppo_targets,
    train_ppo,
    value_loss,
)

pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")

ROOT = Path(__file__).resolve().parents[2]
METRICS = {"reward", "kl", "entropy", "clip_fraction", "value_loss", "policy_loss", "beta"}


@pytest.fixture
def prompts(tmp_path):
    # As a pairs export has them: message lists, each prompt on several rows (one per pair).
    rows = [
        {"prompt": [{"role": "user", "content": q}], "chosen": "a", "prompt_id": f"p{i}"}
        for i, q in enumerate(QUESTIONS)
    ]
    return write_jsonl(tmp_path / "prompts.jsonl", rows + rows)


def quick(tiny, **overrides):
    """A few short PPO steps: batches of 4 prompts, responses of at most 6 tokens."""
    return settings(
        PPOConfig,
        tiny.policy,
        **{"max_steps": 3, "per_device_batch_size": 4, "max_new_tokens": 6, "ppo_epochs": 2, **overrides},
    )


def share_of_low_ids(responses, mask):
    """A reward that is easy to learn: the share of response tokens among ids 7–99 (about a fifth at random)."""
    return (((responses >= 7) & (responses < 100)) * mask).sum(dim=1) / mask.sum(dim=1)


# --- the maths ----------------------------------------------------------------------------------------------


def test_gae_matches_a_hand_worked_example():
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    values = torch.tensor([[0.5, 0.5, 0.5]])
    # γ = 1, λ = 0.5:  δ = (0, 0, 0.5);  A_2 = 0.5, A_1 = 0 + 0.5·0.5, A_0 = 0 + 0.5·0.25;  R = A + V
    advantages, returns = gae(rewards, values, torch.ones(1, 3), gamma=1.0, lam=0.5)

    torch.testing.assert_close(advantages, torch.tensor([[0.125, 0.25, 0.5]]))
    torch.testing.assert_close(returns, torch.tensor([[0.625, 0.75, 1.0]]))


def test_gae_ends_each_episode_at_its_mask_and_gives_discounted_returns_at_lambda_one():
    # What lies after the mask (a reward of 9, a value of 7) must not leak into the episode.
    rewards = torch.tensor([[0.0, 2.0, 9.0]])
    values = torch.tensor([[1.0, 1.0, 7.0]])
    mask = torch.tensor([[1, 1, 0]])

    advantages, returns = gae(rewards, values, mask, gamma=0.9, lam=1.0)

    # λ = 1: returns are the discounted rewards-to-go, (0 + 0.9·2, 2); advantages subtract V.
    torch.testing.assert_close(returns, torch.tensor([[1.8, 2.0, 0.0]]))
    torch.testing.assert_close(advantages, torch.tensor([[0.8, 1.0, 0.0]]))


def test_whitening_uses_only_the_masked_entries():
    values = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    mask = torch.tensor([[1, 1, 1, 0]])

    whitened = masked_whiten(values, mask)
    kept_mean = masked_whiten(values, mask, shift_mean=False)

    expected = torch.tensor([-1.0, 0.0, 1.0]) * math.sqrt(3 / 2)  # mean 2, variance 2/3 over the first three
    torch.testing.assert_close(whitened[0, :3], expected)
    torch.testing.assert_close(kept_mean[0, :3], expected + 2)


def test_adaptive_kl_controller_moves_beta_toward_the_target_by_at_most_twenty_percent_per_horizon():
    controller = KLController(0.1, target=6.0, horizon=100)
    controller.update(current_kl=24.0, n_samples=10)  # 4× the target: the error clips at +0.2
    assert controller.value == pytest.approx(0.1 * (1 + 0.2 * 10 / 100))

    controller = KLController(0.1, target=6.0, horizon=100)
    controller.update(current_kl=4.5, n_samples=50)  # error −0.25 clips at −0.2
    assert controller.value == pytest.approx(0.1 * (1 - 0.2 * 50 / 100))

    controller = KLController(0.1, target=6.0, horizon=100)
    controller.update(current_kl=6.6, n_samples=100)  # error +0.1, inside the clip
    assert controller.value == pytest.approx(0.1 * 1.1)

    fixed = KLController(0.1)
    fixed.update(current_kl=100.0, n_samples=1000)
    assert fixed.value == 0.1


def test_policy_loss_clips_the_ratio_only_where_that_is_pessimistic():
    # ratios 1.5, 0.5, 1.1 (and a masked 9) with cliprange 0.2:
    #   1.5, A = +1: min(1.5, 1.2)·A → clipped;  0.5, A = +1: min(0.5, 0.8) → not clipped;  1.1: inside the range
    logprobs = torch.log(torch.tensor([[1.5, 0.5, 1.1, 9.0]]))
    old = torch.zeros(1, 4)
    advantages = torch.tensor([[1.0, 1.0, 1.0, 1.0]])
    mask = torch.tensor([[1, 1, 1, 0]])

    loss, clip_fraction = policy_loss(logprobs, old, advantages, mask, cliprange=0.2)

    assert loss.item() == pytest.approx(-(1.2 + 0.5 + 1.1) / 3)
    assert clip_fraction.item() == pytest.approx(1 / 3)
    # With a negative advantage the clip binds on the other side: ratio 0.5 → 0.8.
    loss, clip_fraction = policy_loss(logprobs[:, 1:2], old[:, :1], -advantages[:, :1], mask[:, :1], cliprange=0.2)
    assert (loss.item(), clip_fraction.item()) == (pytest.approx(0.8), 1.0)


def test_value_loss_clips_moves_away_from_the_rollout_estimate():
    values = torch.tensor([[0.5, 0.1, -0.5]])  # the rollout said 0 everywhere; the return is 1
    old, returns, mask = torch.zeros(1, 3), torch.ones(1, 3), torch.ones(1, 3)

    loss, clip_fraction = value_loss(values, old, returns, mask, cliprange_value=0.2)

    # 0.5 clips to 0.2: max(0.25, 0.64);  0.1 is inside: 0.81;  −0.5 clips to −0.2: max(2.25, 1.44)
    assert loss.item() == pytest.approx(0.5 * (0.64 + 0.81 + 2.25) / 3)
    assert clip_fraction.item() == pytest.approx(1 / 3)


def test_response_mask_ends_at_the_first_eos_and_the_penalty_hits_responses_without_one():
    responses = torch.tensor([[5, 1, 7, 1], [5, 6, 7, 8], [9, 3, 0, 0]])

    mask, has_eos = response_mask(responses, eos_ids=[1, 3])

    assert mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 1, 0, 0]]
    assert has_eos.tolist() == [True, False, True]
    scores = torch.tensor([0.5, 0.5, 0.5])
    assert apply_missing_eos_penalty(scores, has_eos, -1.0).tolist() == [0.5, -0.5, 0.5]
    assert apply_missing_eos_penalty(scores, has_eos, None).tolist() == [0.5, 0.5, 0.5]


def test_rewards_are_the_kl_penalty_per_token_plus_the_score_on_the_last_one(tiny):
    # Two responses of 3 and 2 tokens; the second was cut off without EOS. V = 0, γ = λ = 1 and no whitening,
    # so the returns are the rewards-to-go: R_t = score − β·Σ_{k ≥ t} (log π − log π_ref)_k.
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    logprobs = torch.tensor([[-1.0, -1.0, -1.0], [-2.0, -2.0, 0.0]])
    ref_logprobs = torch.tensor([[-1.5, -1.0, -2.0], [-1.0, -2.0, 0.0]])  # KL per token: (0.5, 0, 1), (−1, 0)
    samples = Samples(
        query_responses=torch.zeros(2, 5, dtype=torch.long),
        attention_mask=torch.ones(2, 5, dtype=torch.long),
        context_length=2,
        mask=mask,
        has_eos=torch.tensor([True, False]),
        logprobs=logprobs,
        ref_logprobs=ref_logprobs,
        values=torch.zeros(2, 3),
        entropy=torch.ones(2, 3),
        scores=torch.tensor([2.0, 3.0]),
    )
    config = quick(tiny, gamma=1.0, lam=1.0, whiten_advantages=False, missing_eos_penalty=-1.0)

    advantages, returns, metrics = ppo_targets(samples, beta=0.1, config=config)

    # Row 2 scores 3 − 1 (no EOS): the penalty lands on its last real token, not on the padding.
    torch.testing.assert_close(returns, torch.tensor([[2.0 - 0.15, 2.0 - 0.1, 2.0 - 0.1], [2.0 + 0.1, 2.0, 0.0]]))
    torch.testing.assert_close(advantages, returns)
    assert metrics["reward"].item() == pytest.approx(2.5)  # the raw score, before the penalty
    assert metrics["score"].item() == pytest.approx(2.0)
    assert metrics["kl"].item() == pytest.approx((1.5 - 1.0) / 2)  # per response
    assert metrics["eos_fraction"].item() == 0.5


def test_batches_walk_through_shuffled_epochs_without_state():
    first_epoch = [i for step in range(3) for i in batch_indices(12, step, 4, seed=0)]
    second_epoch = [i for step in range(3, 6) for i in batch_indices(12, step, 4, seed=0)]

    assert sorted(first_epoch) == sorted(second_epoch) == list(range(12))
    assert first_epoch != second_epoch  # each epoch has its own order
    assert batch_indices(12, 2, 5, seed=0) == first_epoch[10:] + second_epoch[:3]  # a batch may span two epochs


# --- prompts ------------------------------------------------------------------------------------------------


def test_prompts_are_rendered_for_generation_once_each_and_split(tiny, prompts, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny.policy)
    config = quick(tiny, eval_fraction=0.25)

    train, held_out = load_prompts(prompts, tokenizer, config)

    assert len(train) + len(held_out) == len(QUESTIONS)  # each distinct prompt once, though every row is twice
    assert len(held_out) == round(0.25 * len(QUESTIONS))
    rendered = {tokenizer.decode(ids) for ids in train + held_out}
    assert f"<s><|user|>{QUESTIONS[0]}</s><|assistant|>" in rendered

    # Plain strings are one user message; a prompt with no room left for the response is dropped.
    strings = write_jsonl(tmp_path / "strings.jsonl", [{"prompt": "Hi"}, {"prompt": "word " * 200}])
    train, held_out = load_prompts(strings, tokenizer, quick(tiny, eval_fraction=0.0))
    assert [tokenizer.decode(ids) for ids in train] == ["<s><|user|>Hi</s><|assistant|>"]


# --- the loop -----------------------------------------------------------------------------------------------


def test_trains_the_adapter_and_value_head_and_leaves_the_base_alone(tiny, prompts, tmp_path, monkeypatch):
    seen = {}

    class Watched(ppo.PolicyWithValueHead):
        def __init__(self, policy):
            super().__init__(policy)
            seen["model"] = self
            seen["before"] = {name: p.detach().clone() for name, p in self.named_parameters()}

    monkeypatch.setattr(ppo, "PolicyWithValueHead", Watched)
    calls = []
    out = tmp_path / "ppo"

    result = train_ppo(quick(tiny), prompts, tiny.reward, out, lambda *call: calls.append(call) or False)

    model, before = seen["model"], seen["before"]
    changed = {name for name, p in model.named_parameters() if not torch.equal(p.detach(), before[name])}
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert changed == trainable
    assert any("lora_B" in name for name in changed) and {"value_head.weight", "value_head.bias"} <= changed
    assert all("lora_" in name or name.startswith("value_head.") for name in trainable), trainable

    # The reference is the untouched base: the adapter disabled gives the logits the base model had.
    base = AutoModelForCausalLM.from_pretrained(tiny.policy).eval()
    ids = torch.tensor([[0, 4, 45, 78, 1, 5, 10, 20]])
    with torch.no_grad():
        with model.policy.disable_adapter():
            torch.testing.assert_close(model.policy(ids).logits, base(ids).logits)
        assert not torch.allclose(model.policy(ids).logits, base(ids).logits)

    # Saved: the adapter reloads onto the base with the same logits, and the value head beside it.
    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny.policy), out).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, model.policy(ids).logits)
    torch.testing.assert_close(load_file(out / "value_head.safetensors")["weight"], model.value_head.weight.detach())

    assert [step for step, _, _ in calls] == [1, 2, 3] and all(total == 3 for _, total, _ in calls)
    for _, _, metrics in calls:
        assert metrics.keys() >= METRICS, metrics.keys()
        assert all(math.isfinite(value) for value in metrics.values()), metrics
    assert calls[0][2]["kl"] == pytest.approx(0.0, abs=1e-5)  # nothing has moved before the first update
    assert (result.steps, result.stopped) == (3, False)
    assert result.eval_report["samples"] == round(0.25 * len(QUESTIONS)) and math.isfinite(
        result.eval_report["mean_reward"]
    )
    assert math.isfinite(result.eval_report["kl"]) and math.isfinite(result.eval_report["reference_mean_reward"])


# The adapter on lm_head (see below) shares its weight with the embeddings; peft warns about merging and saving.
@pytest.mark.filterwarnings("ignore:Model has `tie_word_embeddings=True`:UserWarning")
@pytest.mark.filterwarnings("ignore:Setting `save_embedding_layers`:UserWarning")
def test_mean_reward_rises_on_an_easy_reward_while_kl_stays_finite(tiny, prompts, tmp_path):
    rewards, kls = [], []

    def progress(step, total, metrics):
        rewards.append(metrics["reward"])
        kls.append(metrics["kl"])
        return False

    # A random tiny model's logits are squashed by its small tied embeddings: an adapter on lm_head lets the
    # policy say what it prefers. A small β, so that the reward, not the KL penalty, dominates this short run.
    config = quick(
        tiny,
        max_steps=30,
        per_device_batch_size=8,
        max_new_tokens=8,
        ppo_epochs=4,
        learning_rate=1e-2,
        kl_coef=0.01,
        kl_target=None,  # a fixed small β, and so no run-away stop: this run is about the reward, not the leash
        missing_eos_penalty=None,
        lora_target_modules="q_proj,v_proj,lm_head",
        seed=0,
    )
    result = train_ppo(config, prompts, None, tmp_path / "ppo", progress, reward_fn=share_of_low_ids)

    first, last = sum(rewards[:5]) / 5, sum(rewards[-5:]) / 5
    assert first < 0.35 and last > first + 0.2, rewards
    assert all(math.isfinite(kl) for kl in kls) and kls[-1] > 0
    assert result.eval_report["mean_reward"] > result.eval_report["reference_mean_reward"], result.eval_report


def test_samples_ignore_the_models_own_generation_defaults(tiny, prompts, tmp_path):
    # A model whose generation_config.json forbids every ordinary token: generate() would apply that unless the
    # stage's own sampling settings replace it, and the log-probs would then describe other samples.
    policy = tmp_path / "policy"
    shutil.copytree(tiny.policy, policy)
    vocabulary = len(AutoTokenizer.from_pretrained(policy))
    (policy / "generation_config.json").write_text(json.dumps({"suppress_tokens": list(range(7, vocabulary))}))
    sampled = []

    def reward(responses, mask):
        sampled.append(responses[mask.bool()])
        return torch.zeros(len(responses))

    config = settings(PPOConfig, policy, max_steps=1, per_device_batch_size=4, max_new_tokens=6, ppo_epochs=1)
    train_ppo(config, prompts, None, tmp_path / "ppo", reward_fn=reward)

    assert (torch.cat(sampled) >= 7).float().mean() > 0.5


def test_stops_within_one_step_when_asked(tiny, prompts, tmp_path):
    calls = []

    def progress(step, total, metrics):
        calls.append(step)
        return step == 2

    out = tmp_path / "ppo"
    result = train_ppo(quick(tiny, max_steps=10), prompts, None, out, progress, reward_fn=share_of_low_ids)

    assert calls == [1, 2]
    assert (result.steps, result.stopped) == (2, True)
    assert (out / "checkpoint-2" / "adapter_model.safetensors").is_file()  # resumable from where it stopped
    assert (out / "adapter_model.safetensors").is_file() and (out / "value_head.safetensors").is_file()
    assert result.eval_report == {}


def test_the_default_config_adapts_beta_toward_its_kl_target(tiny, prompts, tmp_path):
    calls = []
    config = quick(tiny, max_steps=3)  # kl_target, kl_horizon and kl_coef as a round gets them
    train_ppo(config, prompts, None, tmp_path / "ppo", lambda *call: calls.append(call) or False,
              reward_fn=share_of_low_ids)  # fmt: skip

    betas = [metrics["beta"] for _, _, metrics in calls]
    assert config.kl_target is not None and betas[0] == config.kl_coef
    # The first rollouts' KL is ~0, under the target: β falls by up to 0.2 · batch / horizon per step.
    assert betas[2] < betas[1] < betas[0], betas
    assert betas[1] == pytest.approx(betas[0] * (1 - 0.2 * 4 / config.kl_horizon), rel=0.01)


def test_a_kl_runaway_stops_early_and_keeps_the_policy_from_before_it(tiny, prompts, tmp_path):
    calls = []
    # A tiny target and a large step: the first update alone takes the KL past kl_stop × kl_target.
    config = quick(tiny, max_steps=10, learning_rate=5e-2, kl_target=1e-4, kl_stop=2.0, kl_stop_steps=2)
    out = tmp_path / "ppo"
    result = train_ppo(config, prompts, None, out, lambda *call: calls.append(call) or False,
                       reward_fn=share_of_low_ids)  # fmt: skip

    kls = [metrics["kl"] for _, _, metrics in calls]
    assert kls[0] == pytest.approx(0.0, abs=1e-5) and all(kl > 2e-4 for kl in kls[1:]), kls
    assert (result.steps, result.stopped) == (3, False)  # two steps over the limit in a row, then no more
    assert "PPO stopped at step 3" in result.warning and "after step 0" in result.warning, result.warning
    assert result.eval_report["kept_step"] == 0 and result.eval_report["kl_stop_limit"] == pytest.approx(2e-4)
    # What is saved is the policy the first (good) rollout came from: the adapter as initialised, B = 0.
    saved = load_file(out / "adapter_model.safetensors")
    assert all(torch.count_nonzero(t) == 0 for name, t in saved.items() if "lora_B" in name)
    assert result.eval_report["kl"] == pytest.approx(0.0, abs=1e-5)  # evaluated as kept, not as it ran away
    assert not list(out.glob("checkpoint-*"))


def test_the_kl_rules_refuse_bad_values_by_name():
    for values, name in [
        ({"kl_target": "0"}, "kl_target"),
        ({"kl_horizon": "0"}, "kl_horizon"),
        ({"kl_stop": "1"}, "kl_stop"),
        ({"kl_stop_steps": "0"}, "kl_stop_steps"),
        ({"launch": "zero3"}, "kl_stop"),
    ]:
        with pytest.raises(ValueError, match=f"^{name}: "):
            PPOConfig.from_dict(values)
    assert PPOConfig.from_dict({"kl_target": "none"}).kl_limit is None  # a fixed β has no target to multiply
    assert PPOConfig.from_dict({"launch": "zero3", "kl_stop": "none"}).kl_limit is None
    assert PPOConfig().kl_limit == PPOConfig().kl_stop * PPOConfig().kl_target


def test_resumes_from_the_latest_checkpoint_as_if_never_stopped(tiny, prompts, tmp_path):
    # An adaptive β, so that the controller's state has to come back too.
    config = quick(tiny, max_steps=4, save_steps=2, kl_target=0.1, kl_horizon=10, learning_rate=1e-2)
    straight = []
    train_ppo(
        config,
        prompts,
        None,
        tmp_path / "straight",
        lambda *call: straight.append(call) or False,
        reward_fn=share_of_low_ids,
    )

    out = tmp_path / "interrupted"
    first = train_ppo(config, prompts, None, out, lambda step, total, metrics: step == 3, reward_fn=share_of_low_ids)
    assert (first.steps, first.stopped) == (3, True)
    assert sorted(path.name for path in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-3"]

    resumed = []
    config.resume = True
    second = train_ppo(
        config, prompts, None, out, lambda *call: resumed.append(call) or False, reward_fn=share_of_low_ids
    )

    assert [step for step, _, _ in resumed] == [4]
    assert (second.steps, second.stopped) == (4, False)
    # Same weights, optimiser, β, data order and random state: the same step 4 and the same adapter.
    assert resumed[0][2] == pytest.approx(straight[3][2])
    assert straight[3][2]["beta"] != config.kl_coef
    for name, tensor in load_file(tmp_path / "straight" / "adapter_model.safetensors").items():
        torch.testing.assert_close(load_file(out / "adapter_model.safetensors")[name], tensor)


def test_activation_checkpointing_recomputes_only_the_update_and_trains_as_without_it(tiny, prompts, tmp_path):
    runs = {}
    for checkpointing in (False, True):
        calls, mlp = [], []  # each MLP call: (gradients on, tokens it read)

        def seen(module, args, mlp=mlp):
            if type(module).__name__ == "LlamaMLP":
                mlp.append((torch.is_grad_enabled(), args[0].shape[1]))

        hook = register_module_forward_pre_hook(seen)  # a recompute stops once it has what backward needs
        try:
            config = quick(tiny, max_steps=2, activation_checkpointing=checkpointing)
            out = tmp_path / f"checkpointing-{checkpointing}"
            train_ppo(config, prompts, tiny.reward, out, lambda *call, calls=calls: calls.append(call) or False)
        finally:
            hook.remove()
        runs[checkpointing] = calls, mlp, out

    (plain, plain_mlp, plain_out), (calls, mlp, out) = runs[False], runs[True]
    # The backward pass runs each layer of the update again; rollouts, generation and scoring are untouched, and
    # generation still reads one new token per call from the KV cache.
    assert sum(grad for grad, _ in mlp) == 2 * sum(grad for grad, _ in plain_mlp) > 0
    assert [call for call in mlp if not call[0]] == [call for call in plain_mlp if not call[0]]
    assert sum(tokens == 1 for grad, tokens in mlp if not grad) > len(QUESTIONS)
    for (_, _, metrics), (_, _, expected) in zip(calls, plain, strict=True):
        assert all(math.isfinite(value) for value in metrics.values()), metrics
        assert metrics == pytest.approx(expected, rel=1e-4, abs=1e-6)
    # Trained (LoRA's B starts at zero), saved and reloadable, and the same adapter as without checkpointing.
    adapter = load_file(out / "adapter_model.safetensors")
    assert all(tensor.abs().sum() > 0 for name, tensor in adapter.items() if "lora_B" in name)
    for name, tensor in load_file(plain_out / "adapter_model.safetensors").items():
        torch.testing.assert_close(adapter[name], tensor, rtol=1e-4, atol=1e-6)
    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny.policy), out).eval()
    plain_reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny.policy), plain_out).eval()
    ids = torch.tensor([[0, 4, 45, 78, 1, 5, 10, 20]])
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, plain_reloaded(ids).logits, rtol=1e-4, atol=1e-5)


def test_config_refuses_full_fine_tuning_and_reads_none():
    with pytest.raises(ValueError, match="use_lora"):
        PPOConfig(use_lora=False)
    config = PPOConfig.from_dict({"kl_target": "none", "missing_eos_penalty": "-2", "max_new_tokens": "16"})
    assert (config.kl_target, config.missing_eos_penalty, config.max_new_tokens) == (None, -2.0, 16)
    with pytest.raises(ValueError, match="max_new_tokens"):
        PPOConfig(max_new_tokens=1024, max_length=1024)


def test_command_line_runs_ppo_against_a_reward_model(tiny, prompts, tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "training.engine", "ppo", "--prompts", str(prompts), "--out", str(tmp_path / "ppo")]
        + ["--reward-model", str(tiny.reward), "--set", f"model_name_or_path={tiny.policy}"]
        + ["--set", "max_steps=2", "--set", "per_device_batch_size=4", "--set", "max_new_tokens=6"],
        cwd=ROOT,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0].startswith("step 1/2 reward=") and " kl=" in lines[0] and " beta=" in lines[0]
    result = json.loads(lines[-1])
    assert (result["steps"], result["stopped"]) == (2, False)
    assert {"mean_reward", "kl", "reference_mean_reward"} <= result["eval_report"].keys()
    assert (tmp_path / "ppo" / "value_head.safetensors").is_file()


def test_command_line_wants_a_reward_model_for_ppo_only(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit:
        main(["ppo", "--prompts", "x.jsonl", "--out", str(tmp_path)])
    assert exit.value.code == 2
    assert "--reward-model: required by ppo" in capsys.readouterr().err


def test_continuing_a_lora_policy_the_reference_is_that_policy_and_only_the_trained_adapter_is_saved(
    tiny, prompts, tmp_path
):
    # A round's base is usually the previous policy, an adapter: its KL leash is to that policy, not to the base
    # under it, so round 1's drift neither counts against round 2's target nor trips the run-away stop at once.
    parent = save_adapter(tiny.policy, tmp_path / "policy-v1")  # random B: far from the base
    calls = []
    config = quick(tiny, model_name_or_path=str(parent), max_steps=2, kl_target=1e-2, kl_stop=2.0, kl_stop_steps=1)
    out = tmp_path / "ppo"
    result = train_ppo(config, prompts, None, out, lambda *call: calls.append(call) or False,
                       reward_fn=share_of_low_ids)  # fmt: skip

    assert calls[0][2]["kl"] == pytest.approx(0.0, abs=1e-5)
    assert (result.steps, result.warning) == (2, "")
    assert result.eval_report["kl"] < 1e-2, result.eval_report  # to the parent: two small steps away
    # The registry's policy is the trained adapter alone: no frozen reference copy beside it, and it reloads.
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == []
    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny.policy), out)
    assert list(reloaded.peft_config) == ["default"]
    parent_weights = load_file(parent / "adapter_model.safetensors")
    saved = load_file(out / "adapter_model.safetensors")
    assert saved.keys() == parent_weights.keys()
    assert any(not torch.equal(saved[name], parent_weights[name]) for name in saved)  # it trained
