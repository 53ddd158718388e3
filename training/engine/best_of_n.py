"""Best-of-N, or rejection-sampling fine-tuning (Touvron et al. 2023, Llama 2 §3.2.3), readable top to bottom.

  1. sample: K answers to each train prompt from the round's base policy (batched `generate`, each prompt's K in
     one batch, stopping at every token that ends a turn);
  2. score: the reward model reads each prompt + answer as text, rendered with its chat template as reward training
     read it (`generate.score`: `load_reward_model` and `reward_model_scores`, the one scoring rule). Text, not the
     sampled ids: the text is what SFT trains on, and the reward model may have a tokenizer of its own;
  3. choose: per prompt, the answer with the highest reward, argmax_k r(x, y_k);
  4. SFT: the chosen answers, written as an SFT export in TRL's conversational format (`messages`), train the
     policy with the SFT stage (training/engine/sft.py) as it trains on people's answers.

The report says what choosing bought: the mean reward of the chosen answers against the mean over all K samples
(the base policy's own mean reward), so the gain is ≥ 0 by construction; and, on held-out prompts, the trained
policy's mean reward and KL to its reference, the keys PPO reports, so that rounds of either method compare.
Progress runs through sampling (in sequences) and then SFT (in steps); a stop request is honoured in both.
"""

import json
from pathlib import Path
from typing import Any

import torch

from training.engine.common import ProgressFn, StageResult, load_policy, load_tokenizer, pick_device
from training.engine.config import BestOfNConfig
from training.engine.generate import GenerationStopped, Messages, evaluate_policy, response_texts, sample, score
from training.engine.ppo import distinct_prompts
from training.engine.sft import train_sft

SAMPLES_FILE = "best_of_n_samples.jsonl"  # every prompt's K answers and rewards, and which was chosen
SFT_FILE = "best_of_n_sft.jsonl"  # the chosen answers as an SFT export: what the policy trained on


def train_best_of_n(
    config: BestOfNConfig,
    prompts_file: str | Path,
    reward_model_path: str | Path | None,
    output_dir: str | Path,
    progress: ProgressFn | None = None,
) -> StageResult:
    """Sample K answers per train prompt, keep the reward model's best, SFT the policy on them into output_dir."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    device = pick_device()
    tokenizer = load_tokenizer(config.model_name_or_path, padding_side="left")
    train, held_out = distinct_prompts(prompts_file, tokenizer, config)
    prompts = [as_messages(prompt) for prompt, _ in train]

    if reward_model_path is None:
        raise ValueError("reward_model_path: best_of_n needs a reward model")
    policy = load_policy(config, device=device).eval()
    try:
        batches = sample(
            policy,
            tokenizer,
            prompts,
            num_samples=config.k,
            max_new_tokens=config.max_new_tokens,
            temperature=config.temperature,
            top_p=config.top_p,
            batch_size=config.sample_batch_size,
            seed=config.seed,
            progress=(lambda done, total: progress(done, total, {})) if progress else None,
        )
    except GenerationStopped:
        return StageResult(output_dir=str(output_dir), steps=0, stopped=True, metrics={}, eval_report={})
    del policy  # the reward model and then SFT's own copy of the policy need the room
    texts = response_texts(tokenizer, batches)
    answers = [texts[i * config.k : (i + 1) * config.k] for i in range(len(prompts))]  # (N, K)
    conversations = [
        [*prompt, {"role": "assistant", "content": text}]
        for prompt, texts_k in zip(prompts, answers, strict=True)
        for text in texts_k
    ]
    rewards = score(str(reward_model_path), conversations, batch_size=config.sample_batch_size, device=device)
    rewards = rewards.view(len(prompts), config.k)  # (N, K)
    best = choose_best(rewards)  # (N,)

    with (output_dir / SAMPLES_FILE).open("w", encoding="utf-8") as file:
        for prompt, texts_k, rewards_k, chosen in zip(prompts, answers, rewards.tolist(), best.tolist(), strict=True):
            file.write(json.dumps({"prompt": prompt, "answers": texts_k, "rewards": rewards_k, "best": chosen}) + "\n")
    sft_file = write_sft_rows(
        output_dir / SFT_FILE, prompts, [a[i] for a, i in zip(answers, best.tolist(), strict=True)]
    )

    result = train_sft(config.sft_config(), str(sft_file), str(output_dir), progress)
    report = {**sampling_report(rewards), **result.eval_report}
    if held_out and not result.stopped:
        report.update(_evaluate(config, output_dir, [as_messages(prompt) for prompt, _ in held_out], reward_model_path))
    return StageResult(
        output_dir=str(output_dir), steps=result.steps, stopped=result.stopped, metrics=result.metrics,
        eval_report=report,
    )  # fmt: skip


def as_messages(prompt: str | Messages) -> Messages:
    """A prompt as the SFT export has it: a string is one user message (as `encode_prompt` renders it)."""
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt


def choose_best(rewards: torch.Tensor) -> torch.Tensor:
    """The chosen answer per prompt: argmax_k r(x, y_k); rewards (N, K) -> indices (N,). A tie takes the first."""
    return rewards.argmax(dim=1)


def sampling_report(rewards: torch.Tensor) -> dict[str, Any]:
    """What choosing bought on the train prompts; rewards (N, K)."""
    best = rewards.max(dim=1).values  # (N,)
    mean = rewards.mean(dim=1)  # (N,): the base policy's expected reward on the prompt, estimated from K samples
    spread = best - rewards.min(dim=1).values
    return {
        "k": rewards.shape[1],
        "prompts": rewards.shape[0],
        "mean_best_reward": best.mean().item(),
        "mean_sample_reward": mean.mean().item(),
        # E[max_k r] − E[r]: ≥ 0 by construction; near 0 when the K answers score alike (nothing to choose from).
        "reward_gain": (best - mean).mean().item(),
        "mean_reward_spread": spread.mean().item(),  # per prompt: best − worst of its K
        "tied_prompts": int((spread == 0).sum().item()),  # all K scored alike: the chosen one is the first
    }


def write_sft_rows(path: Path, prompts: list[Messages], answers: list[str]) -> Path:
    """One SFT row per prompt, TRL's conversational format: the prompt's messages, then the chosen answer."""
    with path.open("w", encoding="utf-8") as file:
        for number, (prompt, answer) in enumerate(zip(prompts, answers, strict=True)):
            messages = [*prompt, {"role": "assistant", "content": answer}]
            file.write(json.dumps({"messages": messages, "prompt_id": f"best-of-n-{number}"}) + "\n")
    return path


def _evaluate(
    config: BestOfNConfig, policy_path: Path, prompts: list[Messages], reward_model_path: str | Path | None
) -> dict[str, Any]:
    """PPO's eval keys on held-out prompts: the trained policy's mean reward and KL to its reference (the round's
    base policy, which SFT started from), and the base policy's own mean reward on the same prompts."""
    settings = {
        "max_new_tokens": config.max_new_tokens, "temperature": config.temperature, "top_p": config.top_p,
        "batch_size": config.sample_batch_size, "seed": config.seed,
    }  # fmt: skip
    reward = str(reward_model_path)
    trained = evaluate_policy(
        str(policy_path), prompts, reward_model_path=reward, reference_path=config.model_name_or_path, **settings
    )
    reference = evaluate_policy(config.model_name_or_path, prompts, reward_model_path=reward, **settings)
    report = {
        "mean_reward": trained["mean_reward"],
        "reference_mean_reward": reference["mean_reward"],
        "samples": trained["samples"],
        "mean_response_tokens": trained["mean_response_tokens"],
    }
    if "kl" in trained:  # per token, as PPO's; and per response, as PPO's training metric
        report["kl"] = trained["kl"]
        report["kl_per_response"] = trained["kl"] * trained["mean_response_tokens"]
    return report
