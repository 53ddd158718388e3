"""PPO for language models (ours: TRL 1.13+ has no PPOTrainer), readable top to bottom.

One PPO step:
  1. rollout: sample a response to each prompt of the batch from the policy (one batched `generate`, KV cache);
  2. score: the reward model reads prompt + response, the turn closed as the chat template closes it (as reward
     training read it), at its last real token; a response that never emitted EOS gets `missing_eos_penalty` added;
  3. per-token rewards: r_t = −β·(log π(y_t) − log π_ref(y_t)), plus the sequence score on the last token;
  4. GAE(γ, λ) on the value head's estimates gives advantages (whitened) and returns;
  5. K epochs over minibatches of the clipped policy loss plus vf_coef × the clipped value loss.

The policy is a causal LM with a LoRA adapter and a value head (one linear layer on the last hidden state,
trained with it); the reference π_ref is the round's starting policy: the same model with the adapter disabled, so
no second copy is held in memory, or, continuing a policy that is itself an adapter, a frozen copy of that adapter
(`as_reference`), as TRL does for DPO, KTO, RLOO and GRPO. `accelerate` places everything: a single process on the CPU
or a GPU, or one per GPU under `accelerate launch` (then each process samples its own share of the batch and
gradients are averaged).
"""

import json
import math
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast, set_seed
from peft import PeftModel, get_peft_model, set_peft_model_state_dict
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase
from transformers.modeling_layers import GradientCheckpointingLayer

from training.engine.common import (
    REFERENCE_ADAPTER,
    ProgressFn,
    StageResult,
    as_reference,
    last_checkpoint,
    load_policy,
    load_reward_model,
    load_rows,
    load_tokenizer,
    new_adapter,
    split_dataset,
)
from training.engine.config import BestOfNConfig, OnlineConfig, PPOConfig
from training.engine.generate import (
    complete,
    encode_prompt,
    position_ids,
    response_mask,
    reward_model_scores,
    stop_token_ids,
    token_logprobs,
    with_closed_turns,
)

# (responses (B, R), mask (B, R)) -> scores (B,): stands in for the reward model (tests use a programmatic reward).
RewardFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# (query_responses (B, T), attention_mask (B, T), prompt length P) -> scores (B,): the reward model or a RewardFn.
Scorer = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]

VALUE_HEAD_FILE = "value_head.safetensors"


# --- the maths: pure tensor functions ---------------------------------------------------------------------


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The mean of `values` where `mask` is 1."""
    return (values * mask).sum() / mask.sum()


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """Scale to unit variance over the masked entries; centre on 0 too unless `shift_mean` is False."""
    mean = masked_mean(values, mask)
    variance = masked_mean((values - mean) ** 2, mask)
    whitened = (values - mean) * torch.rsqrt(variance + 1e-8)
    return whitened if shift_mean else whitened + mean


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016): (advantages, returns), each (B, T).

    rewards, values, mask: (B, T); the episode ends at each row's last masked token (V after it is 0).
        δ_t = r_t + γ·V_{t+1} − V_t
        A_t = δ_t + γλ·A_{t+1}
        R_t = A_t + V_t          (the value head's target)
    """
    rewards, values = rewards * mask, values * mask  # nothing after the end: δ = 0 there, and V_{end+1} = 0
    advantages = torch.zeros_like(rewards)
    next_value = torch.zeros_like(rewards[:, 0])  # (B,)
    next_advantage = torch.zeros_like(rewards[:, 0])  # (B,)
    for t in reversed(range(rewards.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_advantage = delta + gamma * lam * next_advantage
        advantages[:, t] = next_advantage
        next_value = values[:, t]
    return advantages * mask, (advantages + values) * mask


@dataclass
class KLController:
    """β of the KL penalty: fixed when `target` is None, else adapted toward it (Ziegler et al. 2019, §2.2)."""

    value: float
    target: float | None = None
    horizon: int = 10_000

    def update(self, current_kl: float, n_samples: int) -> None:
        """After a batch of `n_samples` sequences whose mean KL was `current_kl`."""
        if self.target is None:
            return
        # e = clip(KL / target − 1, −0.2, 0.2);   β ← β · (1 + e · n / horizon)
        error = min(max(current_kl / self.target - 1, -0.2), 0.2)
        self.value *= 1 + error * n_samples / self.horizon


def policy_loss(
    logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, cliprange: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The clipped surrogate loss and the fraction of tokens where the clip was active; inputs (B, T).

    ρ = π(y_t) / π_old(y_t);   L = mean_t max(−A·ρ, −A·clip(ρ, 1 − ε, 1 + ε))
    """
    ratio = torch.exp(logprobs - old_logprobs)  # (B, T)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1 - cliprange, 1 + cliprange)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    clip_fraction = masked_mean((clipped > unclipped).float(), mask)
    return loss, clip_fraction


def value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, cliprange_value: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The clipped value loss and the fraction of tokens where the clip was active; inputs (B, T).

    V_clip = V_old + clip(V − V_old, −ε_v, ε_v);   L = ½ · mean_t max((V − R)², (V_clip − R)²)
    """
    clipped_values = old_values + torch.clamp(values - old_values, -cliprange_value, cliprange_value)
    unclipped_loss = (values - returns) ** 2
    clipped_loss = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(unclipped_loss, clipped_loss), mask)
    clip_fraction = masked_mean((clipped_loss > unclipped_loss).float(), mask)
    return loss, clip_fraction


def apply_missing_eos_penalty(scores: torch.Tensor, has_eos: torch.Tensor, penalty: float | None) -> torch.Tensor:
    """Add `penalty` (negative) to the score of each response that ended without EOS; scores, has_eos: (B,)."""
    if penalty is None:
        return scores
    return torch.where(has_eos, scores, scores + penalty)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """H = logsumexp(z) − Σ softmax(z)·z per position; logits (B, T, V) -> (B, T)."""
    return torch.logsumexp(logits, dim=-1) - (torch.softmax(logits, dim=-1) * logits).sum(dim=-1)


# --- the model: policy + value head -----------------------------------------------------------------------


class PolicyWithValueHead(nn.Module):
    """The policy (a PEFT causal LM) and V(s), a linear head on its last hidden state; one module, so that
    `accelerate` wraps (and DDP averages) both."""

    def __init__(self, policy: PeftModel) -> None:
        super().__init__()
        self.policy = policy
        self.value_head = nn.Linear(policy.config.get_text_config().hidden_size, 1, device=policy.device)
        # V starts at 0 everywhere: the first advantages are the (γλ-discounted) rewards-to-go themselves.
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits (B, T, V), values (B, T)), both float32."""
        out = self.policy(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids(attention_mask),
            output_hidden_states=True,
            use_cache=False,
        )
        values = self.value_head(out.hidden_states[-1].float()).squeeze(-1)
        return out.logits.float(), values


# --- rollouts ---------------------------------------------------------------------------------------------


def load_prompts(
    prompts_file: str | Path, tokenizer: PreTrainedTokenizerBase, config: PPOConfig
) -> tuple[list[list[int]], list[list[int]]]:
    """(train, held out) prompts as token ids, each distinct prompt once (see `distinct_prompts`)."""
    train, held_out = distinct_prompts(prompts_file, tokenizer, config)
    return [ids for _, ids in train], [ids for _, ids in held_out]


def distinct_prompts(
    prompts_file: str | Path, tokenizer: PreTrainedTokenizerBase, config: PPOConfig | BestOfNConfig | OnlineConfig
) -> tuple[list[tuple[Any, list[int]]], list[tuple[Any, list[int]]]]:
    """(train, held out): each distinct prompt once, in order of first appearance, as (prompt, its token ids).

    The `prompt` column holds message lists (rendered with the chat template and its generation prompt) or
    strings (one user message when the tokenizer has a chat template, plain text otherwise). A pairs export,
    with a row per pair, works as it is. Prompts with no room for max_new_tokens within max_length are dropped.
    """
    train, held_out = split_dataset(load_rows(prompts_file, ["prompt"]), config.eval_fraction, config.seed)
    limit = config.max_length - config.max_new_tokens
    train_prompts = _encode_distinct(train["prompt"], tokenizer, limit)
    if not train_prompts:
        raise ValueError(f"{prompts_file}: no training prompt fits in max_length - max_new_tokens = {limit} tokens")
    return train_prompts, _encode_distinct(held_out["prompt"], tokenizer, limit) if held_out is not None else []


def _encode_distinct(prompts: list[Any], tokenizer: PreTrainedTokenizerBase, limit: int) -> list[tuple[Any, list[int]]]:
    """Each distinct prompt with its token ids, in order of first appearance; those longer than `limit` left out."""
    distinct = {json.dumps(prompt, sort_keys=True): prompt for prompt in prompts}
    encoded = ((prompt, encode_prompt(prompt, tokenizer)) for prompt in distinct.values())
    return [(prompt, ids) for prompt, ids in encoded if len(ids) <= limit]


def batch_indices(n_prompts: int, step: int, batch_size: int, seed: int) -> list[int]:
    """The prompts of PPO step `step` (from 0): the prompts run as an endless sequence of epochs, each shuffled by
    seed + epoch, and step s takes items s·batch_size … (s + 1)·batch_size − 1. A resumed run picks up exactly
    where it stopped, with no sampler state to save."""
    orders: dict[int, list[int]] = {}
    indices = []
    for item in range(step * batch_size, (step + 1) * batch_size):
        epoch, position = divmod(item, n_prompts)
        if epoch not in orders:
            orders[epoch] = random.Random(seed + epoch).sample(range(n_prompts), n_prompts)
        indices.append(orders[epoch][position])
    return indices


def generation_config(
    config: PPOConfig, tokenizer: PreTrainedTokenizerBase, policy: PreTrainedModel | PeftModel
) -> GenerationConfig:
    """Sampling as the config says; every token that ends a turn (see `stop_token_ids`) stops a response."""
    # top_k=0: sample from the whole softmax(z / T), the distribution the log-probs are computed under.
    return GenerationConfig(
        max_new_tokens=config.max_new_tokens,
        do_sample=True,
        temperature=config.temperature,
        top_p=config.top_p,
        top_k=0,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=stop_token_ids(policy, tokenizer),
    )


@torch.no_grad()
def sample_responses(
    policy: PreTrainedModel | PeftModel,
    prompts: list[list[int]],
    tokenizer: PreTrainedTokenizerBase,
    generation: GenerationConfig,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One response per prompt, all in one batched `generate` with a KV cache.

    Returns (queries (B, P) left-padded, query_mask (B, P), responses (B, R)) with R <= max_new_tokens and
    everything after a response's first EOS set to padding.
    """
    batch = complete(policy, tokenizer, prompts, generation.eos_token_id, generation_config=generation)
    responses = batch["response_ids"].masked_fill(batch["response_mask"] == 0, tokenizer.pad_token_id)
    return batch["prompt_ids"], batch["prompt_mask"], responses


def response_logprobs(
    logits: torch.Tensor, query_responses: torch.Tensor, context_length: int, mask: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(log π(y_t) (B, R), the logits they came from (B, R, V)) for the response part of full-sequence logits.

    The logits at position t predict token t + 1, so the response's logits start at P − 1. Dividing by the sampling
    temperature gives the distribution the tokens were drawn from. Log-probs after the end are set to 0, so
    that ratios there are exactly 1.
    """
    logits = logits[:, context_length - 1 : -1] / temperature  # (B, R, V)
    logprobs = token_logprobs(logits, query_responses[:, context_length:])  # (B, R)
    return logprobs.masked_fill(mask == 0, 0.0), logits


@dataclass
class Samples:
    """A batch of prompts with sampled responses, scored, with what the PPO update needs from rollout time."""

    query_responses: torch.Tensor  # (B, T = P + R): left-padded prompt, then the response padded after its EOS
    attention_mask: torch.Tensor  # (B, T)
    context_length: int  # P
    mask: torch.Tensor  # (B, R): 1 on response tokens, up to and including the first EOS
    has_eos: torch.Tensor  # (B,)
    logprobs: torch.Tensor  # (B, R): log π_old(y_t), 0 after the end
    ref_logprobs: torch.Tensor  # (B, R): log π_ref(y_t), 0 after the end
    values: torch.Tensor  # (B, R): V_old of the state before each response token
    entropy: torch.Tensor  # (B, R): of π_old at each response token
    scores: torch.Tensor  # (B,): the raw reward, before clipping, whitening and the EOS penalty


@torch.no_grad()
def sample_and_score(
    model: PolicyWithValueHead,
    prompts: list[list[int]],
    tokenizer: PreTrainedTokenizerBase,
    config: PPOConfig,
    generation: GenerationConfig,
    score: Scorer,
) -> Samples:
    """Sample responses in one batch, then run the policy, the reference and the scorer over them in chunks of
    per_device_batch_size (the full-vocabulary logits are the memory peak)."""
    queries, query_mask, responses = sample_responses(model.policy, prompts, tokenizer, generation)
    mask, has_eos = response_mask(responses, generation.eos_token_id)  # (B, R), (B,)
    query_responses = torch.cat([queries, responses], dim=1)  # (B, T)
    attention_mask = torch.cat([query_mask, mask], dim=1)  # (B, T)
    context_length = queries.shape[1]
    parts: dict[str, list[torch.Tensor]] = {name: [] for name in ("logprobs", "ref", "values", "entropy", "scores")}
    for start in range(0, len(prompts), config.per_device_batch_size):
        rows = slice(start, start + config.per_device_batch_size)
        ids, attention, chunk_mask = query_responses[rows], attention_mask[rows], mask[rows]
        logits, values = model(ids, attention)
        logprobs, response_logits = response_logprobs(logits, ids, context_length, chunk_mask, config.temperature)
        with as_reference(model.policy):
            ref = model.policy(input_ids=ids, attention_mask=attention, position_ids=position_ids(attention))
        ref_logprobs, _ = response_logprobs(ref.logits.float(), ids, context_length, chunk_mask, config.temperature)
        parts["logprobs"].append(logprobs)
        parts["ref"].append(ref_logprobs)
        parts["values"].append(values[:, context_length - 1 : -1].masked_fill(chunk_mask == 0, 0.0))
        parts["entropy"].append(entropy_from_logits(response_logits))
        parts["scores"].append(score(ids, attention, context_length))
    return Samples(
        query_responses=query_responses,
        attention_mask=attention_mask,
        context_length=context_length,
        mask=mask,
        has_eos=has_eos,
        logprobs=torch.cat(parts["logprobs"]),
        ref_logprobs=torch.cat(parts["ref"]),
        values=torch.cat(parts["values"]),
        entropy=torch.cat(parts["entropy"]),
        scores=torch.cat(parts["scores"]),
    )


def ppo_targets(
    samples: Samples, beta: float, config: PPOConfig
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """(advantages (B, R), returns (B, R), rollout metrics) from scored samples and the current β."""
    mask = samples.mask
    scores = samples.scores  # (B,)
    if config.reward_clip is not None:
        scores = scores.clamp(-config.reward_clip, config.reward_clip)
    if config.whiten_rewards:
        scores = masked_whiten(scores, torch.ones_like(scores), shift_mean=False)
    # After whitening, so that the penalty keeps its size against unit-variance scores.
    scores = apply_missing_eos_penalty(scores, samples.has_eos, config.missing_eos_penalty)

    # k1 estimate of the per-token KL: log π(y_t) − log π_ref(y_t), whose sum over t is unbiased for KL(π‖π_ref).
    kl = samples.logprobs - samples.ref_logprobs  # (B, R), 0 after the end
    rewards = -beta * kl  # (B, R)
    non_score_reward = rewards.sum(dim=1).mean()
    last = mask.sum(dim=1) - 1  # (B,): each response's last token (its EOS, or the cut-off)
    rewards[torch.arange(len(last), device=last.device), last] += scores
    advantages, returns = gae(rewards, samples.values, mask, config.gamma, config.lam)
    if config.whiten_advantages:
        advantages = masked_whiten(advantages, mask) * mask
    metrics = {
        "reward": samples.scores.mean(),
        "score": scores.mean(),
        "kl": kl.sum(dim=1).mean(),  # per sequence: the quantity the adaptive controller steers
        "non_score_reward": non_score_reward,
        "entropy": masked_mean(samples.entropy, mask),
        "response_length": mask.sum(dim=1).float().mean(),
        "eos_fraction": samples.has_eos.float().mean(),
    }
    return advantages, returns, metrics


def ppo_update(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    accelerator: Accelerator,
    samples: Samples,
    advantages: torch.Tensor,
    returns: torch.Tensor,
    config: PPOConfig,
) -> dict[str, torch.Tensor]:
    """K epochs over the shuffled batch in micro-batches of per_device_batch_size; `accumulate` makes one
    optimiser step of every gradient_accumulation_steps of them, so num_mini_batches steps per epoch. Returns the
    losses and clip fractions averaged over all micro-batches."""
    batch_size = samples.mask.shape[0]
    context_length = samples.context_length
    stats: dict[str, list[torch.Tensor]] = {
        "policy_loss": [],
        "value_loss": [],
        "clip_fraction": [],
        "value_clip_fraction": [],
    }
    for _ in range(config.ppo_epochs):
        order = torch.randperm(batch_size)
        for start in range(0, batch_size, config.per_device_batch_size):
            rows = order[start : start + config.per_device_batch_size]
            with accelerator.accumulate(model):
                mask = samples.mask[rows]
                ids = samples.query_responses[rows]
                logits, values = model(ids, samples.attention_mask[rows])
                logprobs, _ = response_logprobs(logits, ids, context_length, mask, config.temperature)
                values = values[:, context_length - 1 : -1]  # (b, R)
                pg_loss, clip_fraction = policy_loss(
                    logprobs, samples.logprobs[rows], advantages[rows], mask, config.cliprange
                )
                vf_loss, vf_clip_fraction = value_loss(
                    values, samples.values[rows], returns[rows], mask, config.cliprange_value
                )
                accelerator.backward(pg_loss + config.vf_coef * vf_loss)
                # accumulate() makes these no-ops until the minibatch's last micro-batch.
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad()
            stats["policy_loss"].append(pg_loss.detach())
            stats["value_loss"].append(vf_loss.detach())
            stats["clip_fraction"].append(clip_fraction)
            stats["value_clip_fraction"].append(vf_clip_fraction)
    return {name: torch.stack(values).mean() for name, values in stats.items()}


# --- training ---------------------------------------------------------------------------------------------


def train_ppo(
    config: PPOConfig,
    prompts_file: str | Path,
    reward_model_path: str | Path | None,
    output_dir: str | Path,
    progress: ProgressFn | None = None,
    *,
    reward_fn: RewardFn | None = None,
) -> StageResult:
    """Train the policy's adapter and value head with PPO against a reward model; save both in output_dir.

    `reward_fn` replaces the reward model (then reward_model_path may be None): tests use a programmatic reward.
    """
    output_dir = Path(output_dir)
    accelerator = Accelerator(gradient_accumulation_steps=config.gradient_accumulation_steps)
    device, world = accelerator.device, accelerator.num_processes
    set_seed(config.seed)  # the same LoRA initialisation in every process
    tokenizer = load_tokenizer(config.model_name_or_path, padding_side="left")
    train_prompts, eval_prompts = load_prompts(prompts_file, tokenizer, config)
    policy = load_policy(config, device=device, is_trainable=True)
    if (adapter := new_adapter(config, policy, "CAUSAL_LM")) is not None:
        policy = get_peft_model(policy, adapter)
    else:  # continuing the adapter the round starts from: π_ref is a frozen copy of it
        policy.load_adapter(config.model_name_or_path, adapter_name=REFERENCE_ADAPTER, is_trainable=False)
    if config.activation_checkpointing:
        # Non-reentrant checkpointing: a LoRA model's frozen embeddings give no input that requires grad.
        policy.get_base_model().activation_checkpointing_enable(
            activation_checkpointing_kwargs={"use_reentrant": False}
        )
    generation = generation_config(config, tokenizer, policy)
    # The log-probs assume samples drawn from exactly softmax(z / T) (cut at top_p), but `generate` fills what a
    # config leaves unset from the model's own defaults (a repetition penalty, min-p…): make ours its defaults.
    policy.get_base_model().generation_config = generation
    model = PolicyWithValueHead(policy)
    reward_model = None if reward_fn is not None else load_matching_reward_model(reward_model_path, tokenizer, device)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.learning_rate, eps=1e-5)

    def score(query_responses: torch.Tensor, attention_mask: torch.Tensor, context_length: int) -> torch.Tensor:
        if reward_fn is not None:
            return reward_fn(query_responses[:, context_length:], attention_mask[:, context_length:])
        # Read as reward training read the same answer: with the turn closed as the chat template closes it.
        ids, mask = with_closed_turns(tokenizer, query_responses, attention_mask, generation.eos_token_id)
        return reward_model_scores(reward_model, ids, mask)

    global_batch = config.rollout_batch_size * world
    total = (
        config.max_steps
        if config.max_steps > 0
        else math.ceil(config.num_train_epochs * len(train_prompts) / global_batch)
    )
    kl_controller = KLController(config.kl_coef, config.kl_target, config.kl_horizon)
    set_seed(config.seed, device_specific=True)  # each process samples its own responses
    step = 0
    if checkpoint := last_checkpoint(str(output_dir), config.resume):
        step, kl_controller = load_checkpoint(Path(checkpoint), model, optimizer, accelerator)
    model, optimizer = accelerator.prepare(model, optimizer)
    unwrapped = accelerator.unwrap_model(model)
    # No dropout anywhere (LoRA's included): π/π_old must be exactly 1 before the first update, and the KL to
    # π_ref exactly 0 at the start. Eval mode only switches dropout off; gradients flow as usual.
    model.eval()
    if config.activation_checkpointing:
        # Layers checkpoint only in training mode: flag the decoder layers alone, so that their children (dropout)
        # stay in eval mode. They still skip it without gradients: rollouts and `generate` keep the KV cache.
        for layer in unwrapped.modules():
            if isinstance(layer, GradientCheckpointingLayer):
                layer.training = True

    metrics: dict[str, float] = {}
    stopped = False
    runaway = RunawayWatch(config.kl_limit, config.kl_stop_steps)
    started = time.monotonic()
    while step < total:
        indices = batch_indices(len(train_prompts), step, global_batch, config.seed)
        mine = indices[accelerator.process_index :: world]
        samples = sample_and_score(unwrapped, [train_prompts[i] for i in mine], tokenizer, config, generation, score)
        advantages, returns, rollout_stats = ppo_targets(samples, kl_controller.value, config)
        before_update = runaway.snapshot(unwrapped)  # the policy these samples came from, in case it is the last good
        update_stats = ppo_update(model, optimizer, accelerator, samples, advantages, returns, config)
        step += 1

        stats = {**rollout_stats, **update_stats}
        means = accelerator.reduce(torch.stack(list(stats.values())).float(), reduction="mean")
        metrics = {name: value.item() for name, value in zip(stats, means, strict=True)}
        metrics["beta"] = kl_controller.value  # the β this step's rewards were computed with
        kl_controller.update(metrics["kl"], global_batch)
        ran_away = runaway.observe(metrics["kl"], step - 1, before_update)  # the same on every process (reduced)

        logged = metrics if step % config.logging_steps == 0 or step == total or ran_away else {}
        stop = bool(progress and accelerator.is_main_process and progress(step, total, logged))
        stopped = bool(broadcast(torch.tensor([int(stop)], device=device)).item())  # every process stops together
        if ran_away:
            break  # no checkpoint: resuming would only continue the run-away
        if step % config.save_steps == 0 or stopped:
            save_checkpoint(output_dir / f"checkpoint-{step}", unwrapped, optimizer, kl_controller, step, accelerator)
        if stopped:
            break

    warning = runaway.restore(unwrapped, step) if runaway.ran_away else ""
    if accelerator.is_main_process:
        save_model(unwrapped, tokenizer, output_dir)
    accelerator.wait_for_everyone()
    runtime = time.monotonic() - started
    eval_report = {}
    if eval_prompts and not stopped:
        eval_report = evaluate(unwrapped, eval_prompts, tokenizer, config, generation, score, accelerator)
    if warning:
        eval_report = {**eval_report, **runaway.report(step)}
    return StageResult(
        output_dir=str(output_dir),
        steps=step,
        stopped=stopped,
        metrics={**metrics, "train_runtime": runtime},
        eval_report=eval_report,
        warning=warning,
    )


class RunawayWatch:
    """Stops PPO whose KL to the reference stays above `limit` for `steps` steps in a row, keeping the last policy
    whose own samples were under it (a copy of the trainable weights, LoRA and value head: a few MB)."""

    def __init__(self, limit: float | None, steps: int) -> None:
        self.limit, self.steps = limit, steps
        self.over = 0  # consecutive steps over the limit
        self.last_kl = 0.0
        self.kept: dict[str, torch.Tensor] | None = None
        self.kept_step: int | None = None  # updates the kept policy had had
        self.kept_kl = 0.0
        self.ran_away = False

    def snapshot(self, model: nn.Module) -> dict[str, torch.Tensor] | None:
        if self.limit is None:
            return None
        return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}

    def observe(self, kl: float, updates: int, weights: dict[str, torch.Tensor] | None) -> bool:
        """After a step whose rollout (sampled after `updates` updates, with `weights`) had mean KL `kl`: stop?"""
        if self.limit is None:
            return False
        self.last_kl = kl
        if kl <= self.limit:
            self.over, self.kept, self.kept_step, self.kept_kl = 0, weights, updates, kl
            return False
        self.over += 1
        self.ran_away = self.over >= self.steps
        return self.ran_away

    def restore(self, model: nn.Module, step: int) -> str:
        """Put the kept weights back; the warning the round shows."""
        limit = f"{self.limit:.3g} nats per response"
        what = f"PPO stopped at step {step}: its KL to the reference (the round's base policy) stayed above {limit} "
        what += f"for {self.steps} steps in a row (last {self.last_kl:.3g})."
        if self.kept is None:  # resumed past the limit: nothing earlier to go back to
            return f"{what} No earlier policy was under the limit: the last one is kept."
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name in self.kept:
                    p.copy_(self.kept[name])
        kept = f"after step {self.kept_step} (KL {self.kept_kl:.3g})"
        return f"{what} The policy kept is the one from before the run-away, {kept}."

    def report(self, step: int) -> dict[str, Any]:
        """What the eval report keeps of a run-away stop."""
        return {"kl_stop_step": step, "kl_stop_limit": self.limit, "kept_step": self.kept_step, "kept_kl": self.kept_kl}


def load_matching_reward_model(
    path: str | Path | None, tokenizer: PreTrainedTokenizerBase, device: torch.device
) -> PreTrainedModel:
    """The reward model at `path` (see common.load_reward_model), refused unless it shares the policy's tokenizer."""
    if path is None:
        raise ValueError("reward_model_path: this stage needs a reward model")
    # The reward model reads the policy's token ids as they are: the two must share a tokenizer, as they do when
    # the reward model was trained from the same base.
    reward_tokenizer = load_tokenizer(path)
    if reward_tokenizer.get_vocab() != tokenizer.get_vocab():
        raise ValueError(f"{path}: the reward model's tokenizer differs from the policy's")
    return load_reward_model(path, device)


@torch.no_grad()
def evaluate(
    model: PolicyWithValueHead,
    prompts: list[list[int]],
    tokenizer: PreTrainedTokenizerBase,
    config: PPOConfig,
    generation: GenerationConfig,
    score: Scorer,
    accelerator: Accelerator,
) -> dict[str, Any]:
    """On held-out prompts, one sampled response each: the policy's mean reward, its KL to the reference, and
    the reference's own mean reward on responses it samples itself, for comparison.

    kl is per token (Σ_t log π(y_t) − log π_ref(y_t) over all response tokens / their number), as
    generate.evaluate_policy reports it; kl_per_response is the per-sequence figure the training metric `kl` is.
    """
    mine = prompts[accelerator.process_index :: accelerator.num_processes]
    # Σ reward, Σ reference reward, Σ log π/π_ref, response tokens, responses
    totals = torch.zeros(5, device=accelerator.device)
    for start in range(0, len(mine), config.rollout_batch_size):
        batch = mine[start : start + config.rollout_batch_size]
        samples = sample_and_score(model, batch, tokenizer, config, generation, score)
        with as_reference(model.policy):
            queries, query_mask, responses = sample_responses(model.policy, batch, tokenizer, generation)
        mask, _ = response_mask(responses, generation.eos_token_id)
        reference_scores = score(torch.cat([queries, responses], 1), torch.cat([query_mask, mask], 1), queries.shape[1])
        totals += torch.stack(
            [
                samples.scores.sum(),
                reference_scores.sum(),
                (samples.logprobs - samples.ref_logprobs).sum(),
                samples.mask.sum(),
                torch.tensor(len(batch), device=accelerator.device),
            ]
        ).float()
    reward, reference_reward, log_ratio, tokens, count = accelerator.reduce(totals, reduction="sum").tolist()
    return {
        "mean_reward": reward / count,
        "reference_mean_reward": reference_reward / count,
        "kl": log_ratio / tokens,
        "kl_per_response": log_ratio / count,
        "samples": int(count),
        "mean_response_tokens": tokens / count,
    }


# --- saving and resuming ----------------------------------------------------------------------------------


def save_model(model: PolicyWithValueHead, tokenizer: PreTrainedTokenizerBase, path: Path) -> None:
    """The adapter (loadable with PeftModel.from_pretrained), the value head beside it, and the tokenizer."""
    _save_weights(model, path)
    tokenizer.save_pretrained(path)


def _save_weights(model: PolicyWithValueHead, path: Path) -> None:
    model.policy.save_pretrained(path, selected_adapters=["default"])  # not the frozen reference copy
    save_file({name: tensor.cpu() for name, tensor in model.value_head.state_dict().items()}, path / VALUE_HEAD_FILE)


def save_checkpoint(
    path: Path,
    model: PolicyWithValueHead,
    optimizer: torch.optim.Optimizer,
    kl_controller: KLController,
    step: int,
    accelerator: Accelerator,
) -> None:
    """What a resumed run needs to continue as if never stopped: weights, optimiser, step, β and every RNG."""
    path.mkdir(parents=True, exist_ok=True)
    if accelerator.is_main_process:
        _save_weights(model, path)
        torch.save(optimizer.state_dict(), path / "optimizer.pt")
        (path / "ppo_state.json").write_text(json.dumps({"step": step, "kl_controller": asdict(kl_controller)}))
        # Keep the two newest: enough to resume from, and a large model's checkpoints add up.
        older = sorted(path.parent.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))[:-2]
        for old in older:
            shutil.rmtree(old)
    rng = {"cpu": torch.get_rng_state(), **({"cuda": torch.cuda.get_rng_state()} if torch.cuda.is_available() else {})}
    torch.save(rng, path / f"rng_state_{accelerator.process_index}.pt")
    accelerator.wait_for_everyone()


def load_checkpoint(
    path: Path, model: PolicyWithValueHead, optimizer: torch.optim.Optimizer, accelerator: Accelerator
) -> tuple[int, KLController]:
    """Restore a checkpoint into the (not yet prepared) model and optimiser; (step, KL controller)."""
    set_peft_model_state_dict(model.policy, load_file(path / "adapter_model.safetensors"))
    model.value_head.load_state_dict(load_file(path / VALUE_HEAD_FILE))
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location="cpu"))  # moved to the params
    rng = torch.load(path / f"rng_state_{accelerator.process_index}.pt")
    torch.set_rng_state(rng["cpu"])
    if "cuda" in rng:
        torch.cuda.set_rng_state(rng["cuda"])
    state = json.loads((path / "ppo_state.json").read_text())
    return state["step"], KLController(**state["kl_controller"])
