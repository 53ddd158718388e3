"""RLOO and GRPO: online RL with TRL's RLOOTrainer and GRPOTrainer against the project's reward model.

One step, for a batch of per_device_batch_size × gradient_accumulation_steps responses:
  1. sample G = num_generations responses to each of its prompts from the policy (one batched `generate`);
  2. score each as PPO does: the reward model reads prompt + response with the turn closed as the chat template
     closes it, at its last real token (`reward_model_scores`); a response that never emitted EOS gets
     missing_eos_penalty added;
  3. advantages from the group alone, no value head (KL_i = Σ_t log π(y_t) − log π_ref(y_t) over response i):
       RLOO: A_i = (r_i − β·KL_i) − mean_{j≠i} (r_j − β·KL_j)          the leave-one-out baseline
       GRPO: A_i = (r_i − mean_j r_j) / std_j r_j                        (scale_rewards=group); β·KL is in the loss
  4. num_iterations passes of the clipped surrogate loss, min(ρ·A, clip(ρ, 1 − ε, 1 + ε)·A), ρ = π/π_old.

TRL is handed a reward *function* (`reward_function`), not the reward model: given the model it would read
`logits[:, 0]` of its own tokenisation, skipping the last-real-token rule (`score_at_last_real_token`) and however the
reward model's heads combine. The reference is the policy with its LoRA adapter disabled (TRL does that for a PEFT
model; continuing from an adapter it freezes a copy of it as the reference). The eval report is PPO's own
(`ppo.evaluate`), so that rounds of the three methods compare like with like.

vLLM generation is not offered: TRL's server mode needs vLLM installed in the worker and TRL's own `trl vllm-serve`
(which takes weight updates over NCCL), not the OpenAI-compatible server that rounds sample through.
"""

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from peft import PeftModel
from transformers import PreTrainedTokenizerBase, set_seed
from trl import GRPOConfig as TRLGRPOConfig
from trl import GRPOTrainer, RLOOTrainer
from trl import RLOOConfig as TRLRLOOConfig

from training.engine.common import (
    ProgressFn,
    StageResult,
    load_policy,
    load_tokenizer,
    new_adapter,
    pick_device,
    run_training,
    trainer_arguments,
)
from training.engine.config import GRPOConfig, OnlineConfig, PPOConfig, RLOOConfig
from training.engine.generate import encode_prompt, reward_model_scores, with_closed_turns
from training.engine.ppo import (
    PolicyWithValueHead,
    Scorer,
    apply_missing_eos_penalty,
    distinct_prompts,
    generation_config,
    load_matching_reward_model,
)
from training.engine.ppo import evaluate as ppo_evaluate

# TRL's reward function: (prompts, completions, completion_ids, **dataset columns and trainer state) -> a reward each.
RewardFunction = Callable[..., list[float]]


def train_rloo(
    config: RLOOConfig,
    prompts_file: str | Path,
    reward_model_path: str | Path | None,
    output_dir: str | Path,
    progress: ProgressFn | None = None,
) -> StageResult:
    """Train the policy's adapter with RLOO against a reward model; save it and the tokenizer in output_dir."""
    stage = {"normalize_advantages": config.normalize_advantages}
    return _train(RLOOTrainer, TRLRLOOConfig, config, prompts_file, reward_model_path, output_dir, progress, stage)


def train_grpo(
    config: GRPOConfig,
    prompts_file: str | Path,
    reward_model_path: str | Path | None,
    output_dir: str | Path,
    progress: ProgressFn | None = None,
) -> StageResult:
    """Train the policy's adapter with GRPO against a reward model; save it and the tokenizer in output_dir."""
    stage = {"loss_type": config.loss_type, "scale_rewards": config.scale_rewards}
    return _train(GRPOTrainer, TRLGRPOConfig, config, prompts_file, reward_model_path, output_dir, progress, stage)


def _train(
    trainer_class: type,
    args_class: type,
    config: OnlineConfig,
    prompts_file: str | Path,
    reward_model_path: str | Path | None,
    output_dir: str | Path,
    progress: ProgressFn | None,
    stage: dict[str, Any],
) -> StageResult:
    output_dir = str(output_dir)
    set_seed(config.seed)
    tokenizer = load_tokenizer(config.model_name_or_path, padding_side="left")
    train_prompts, eval_prompts = load_prompts(prompts_file, tokenizer, config)
    model = load_policy(config, is_trainable=True)
    # PPO's sampling settings replace the checkpoint's generation defaults (a repetition penalty, suppressed tokens…),
    # which the log-probs would not describe; TRL ends a response at each of their EOS ids, every token ending a turn.
    generation = generation_config(as_ppo(config), tokenizer, model)
    (model.get_base_model() if isinstance(model, PeftModel) else model).generation_config = generation
    eos_ids = generation.eos_token_id
    device = pick_device()
    score = reward_scorer(load_matching_reward_model(reward_model_path, tokenizer, device), tokenizer, eos_ids)
    args = trainer_arguments(
        args_class,
        config,
        output_dir,
        num_generations=config.num_generations,
        max_completion_length=config.max_new_tokens,
        temperature=config.temperature,
        top_p=config.top_p,
        beta=config.beta,
        num_iterations=config.num_iterations,
        epsilon=config.cliprange,
        # No dropout (LoRA's included): π/π_old is exactly 1 before the first update and the KL to π_ref exactly 0,
        # as in PPO's eval-mode rollouts.
        disable_dropout=True,
        **stage,
    )
    trainer = trainer_class(
        model=model,
        reward_funcs=reward_function(score, tokenizer, eos_ids, config.missing_eos_penalty, device),
        args=args,
        train_dataset=train_prompts,
        processing_class=tokenizer,
        peft_config=new_adapter(config, model, "CAUSAL_LM"),
    )

    def report(step: int, total: int, metrics: dict[str, float]) -> bool:
        # TRL repeats reward and reward_std under rewards/<function>/ for each reward function: there is one.
        kept = {name: value for name, value in metrics.items() if not name.startswith("rewards/")}
        return bool(progress and progress(step, total, kept))

    metrics, stopped = run_training(trainer, output_dir, resume=config.resume, progress=report)
    report = {}
    if eval_prompts and not stopped:
        policy = trainer.accelerator.unwrap_model(trainer.model).eval()
        report = ppo_evaluate(
            PolicyWithValueHead(policy),  # its value head is untrained and unused: the report reads none of it
            eval_prompts,
            tokenizer,
            as_ppo(config),
            generation,
            score,
            trainer.accelerator,
        )
    return StageResult(
        output_dir=output_dir, steps=trainer.state.global_step, stopped=stopped, metrics=metrics, eval_report=report
    )


def as_ppo(config: OnlineConfig) -> PPOConfig:
    """PPO's config with this stage's sampling settings and batch, for the pieces of ppo.py both use (sampling
    settings, the eval report)."""
    return PPOConfig(
        model_name_or_path=config.model_name_or_path,
        max_length=config.max_length,
        max_new_tokens=config.max_new_tokens,
        temperature=config.temperature,
        top_p=config.top_p,
        per_device_batch_size=config.per_device_batch_size,
        gradient_accumulation_steps=1,
        eval_fraction=config.eval_fraction,
        seed=config.seed,
    )


def load_prompts(
    prompts_file: str | Path, tokenizer: PreTrainedTokenizerBase, config: OnlineConfig
) -> tuple[Dataset, list[list[int]]]:
    """(train prompts as TRL reads them, held-out prompts as token ids for the eval report), each distinct prompt once.

    As PPO's `load_prompts`: message lists or strings, a pairs export as it is, the same held-out prompts for a seed;
    prompts with no room for max_new_tokens within max_length are dropped. TRL renders a string as plain text: where
    the tokenizer has a chat template a string becomes one user message, which TRL renders as `encode_prompt` does.
    """
    train, held_out = distinct_prompts(prompts_file, tokenizer, config)
    as_chat = bool(tokenizer.chat_template)
    rows = [{"prompt": [{"role": "user", "content": p}] if isinstance(p, str) and as_chat else p} for p, _ in train]
    return Dataset.from_list(rows), [ids for _, ids in held_out]


def reward_scorer(reward_model: Any, tokenizer: PreTrainedTokenizerBase, eos_ids: list[int]) -> Scorer:
    """PPO's scoring of sampled conversations (B, T), left-padded: the turn closed as the chat template closes it,
    then the reward model at the last real token. (query_responses, attention_mask, P) -> (B,)."""

    def score(query_responses: torch.Tensor, attention_mask: torch.Tensor, context_length: int) -> torch.Tensor:
        ids, mask = with_closed_turns(tokenizer, query_responses, attention_mask, eos_ids)
        return reward_model_scores(reward_model, ids, mask)

    return score


def reward_function(
    score: Scorer,
    tokenizer: PreTrainedTokenizerBase,
    eos_ids: list[int],
    missing_eos_penalty: float | None,
    device: torch.device,
) -> RewardFunction:
    """TRL's reward function: each prompt rendered by `encode_prompt` (as TRL rendered it to sample), its response's
    token ids after it (up to and including its EOS, as TRL hands them), scored by `score`; the missing-EOS penalty
    added to a response that ran out of tokens."""

    def reward_model(
        prompts: list[Any],
        completion_ids: list[list[int]],
        log_metric: Callable[[str, float], None] | None = None,
        **_: Any,
    ) -> list[float]:
        rows = [encode_prompt(p, tokenizer) + ids for p, ids in zip(prompts, completion_ids, strict=True)]
        batch = tokenizer.pad({"input_ids": rows}, padding_side="left", return_tensors="pt").to(device)
        scores = score(batch["input_ids"], batch["attention_mask"], 0)  # (B,)
        has_eos = torch.tensor([bool(ids) and ids[-1] in eos_ids for ids in completion_ids], device=scores.device)
        if log_metric is not None:  # TRL's "reward" includes the penalty; "raw_reward" is PPO's "reward"
            log_metric("raw_reward", scores.mean().item())
            log_metric("eos_fraction", has_eos.float().mean().item())
        return apply_missing_eos_penalty(scores, has_eos, missing_eos_penalty).tolist()

    return reward_model
