"""Sampling from a policy, and the numbers the registry keeps about one: mean reward and KL to its reference.

Prompts are chat message lists, rendered with the model's chat template and `add_generation_prompt`, left-padded
so that every row's last prompt token sits at the same position, and sampled in batches with the KV cache
(`generate` keeps it by default). The same seed, batch size and device give the same samples.

The pieces at the end (batched completion, the EOS mask, log-probs, reward-model scores) are PPO's too.
"""

from collections.abc import Callable
from typing import Any

import torch
from peft import PeftModel
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase, set_seed

from training.engine.common import (
    REFERENCE_ADAPTER,
    WeightedOutputs,
    adapter_base,
    as_reference,
    end_of_turn_id,
    is_adapter,
    load_policy,
    load_reward_model,
    load_tokenizer,
    pick_device,
    turn_closing,
)
from training.engine.config import BaseConfig

Messages = list[dict[str, str]]


class GenerationStopped(Exception):
    """Sampling stopped because its progress callback asked it to."""


def generate(
    model_path: str,
    prompts: list[Messages],
    *,
    num_samples: int = 1,
    max_new_tokens: int = 128,
    temperature: float = 1.0,
    top_p: float = 1.0,
    batch_size: int = 8,
    seed: int = 0,
    device: torch.device | None = None,
    progress: Callable[[int, int], bool] | None = None,
) -> list[list[str]]:
    """num_samples responses per prompt, in prompt order; temperature 0 decodes greedily.

    progress(done, total) is called after each batch (in sequences); if it returns True, sampling stops and
    GenerationStopped is raised.
    """
    device = device or pick_device()
    tokenizer = load_tokenizer(model_path, padding_side="left")
    model = load_policy(BaseConfig(model_name_or_path=model_path), device=device).eval()
    samples = sample(
        model,
        tokenizer,
        prompts,
        num_samples=num_samples,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        batch_size=batch_size,
        seed=seed,
        progress=progress,
    )
    texts = response_texts(tokenizer, samples)
    return [texts[i : i + num_samples] for i in range(0, len(texts), num_samples)]


@torch.no_grad()
def sample(
    model: PreTrainedModel | PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[Messages],
    *,
    num_samples: int,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    batch_size: int,
    seed: int,
    progress: Callable[[int, int], bool] | None = None,
) -> list[dict[str, torch.Tensor]]:
    """Sample in batches of batch_size sequences, each prompt's num_samples together; per batch, what `complete`
    returns."""
    set_seed(seed)
    conversations = [prompt for prompt in prompts for _ in range(num_samples)]
    eos = stop_token_ids(model, tokenizer)
    batches = []
    for start in range(0, len(conversations), batch_size):
        batch = [encode_prompt(messages, tokenizer) for messages in conversations[start : start + batch_size]]
        batches.append(
            complete(
                model,
                tokenizer,
                batch,
                eos,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=eos,
                do_sample=temperature > 0,
                temperature=temperature if temperature > 0 else None,
                top_p=top_p if temperature > 0 else None,
                top_k=None,
                max_new_tokens=max_new_tokens,
            )
        )
        done = min(start + batch_size, len(conversations))
        if progress is not None and progress(done, len(conversations)):
            raise GenerationStopped(f"stopped after {done} of {len(conversations)} sequences")
    return batches


def evaluate_policy(
    policy_path: str,
    prompts: list[Messages],
    *,
    reward_model_path: str | None = None,
    reference_path: str | None = None,
    num_samples: int = 1,
    max_new_tokens: int = 128,
    temperature: float = 1.0,
    top_p: float = 1.0,
    batch_size: int = 8,
    seed: int = 0,
    device: torch.device | None = None,
) -> dict[str, Any]:
    """Sample from the policy and report its mean reward (given a reward model) and its mean per-token KL to the
    reference: reference_path, the model the policy was trained from. For an adapter policy that is its adapter off
    when reference_path is its base (or none is given), or the adapter it continued, loaded beside it on the same base;
    a fully fine-tuned policy has KL only given reference_path, loaded as a second model.

    KL(π ‖ π_ref) per token is estimated on the policy's own samples as the mean of log π(y_t) − log π_ref(y_t)
    over response tokens; it is an unbiased estimate only at temperature 1 and top_p 1 (the defaults).
    """
    device = device or pick_device()
    tokenizer = load_tokenizer(policy_path, padding_side="left")
    # Keep an adapter unmerged: disabling it gives the reference without a second copy of the base.
    policy = _load_unmerged(policy_path, device)
    batches = sample(
        policy,
        tokenizer,
        prompts,
        num_samples=num_samples,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        batch_size=batch_size,
        seed=seed,
    )
    count = len(prompts) * num_samples
    report: dict[str, Any] = {
        "samples": count,
        "mean_response_tokens": sum(b["response_mask"].sum().item() for b in batches) / count,
    }

    reference = None
    if isinstance(policy, PeftModel) and reference_path is not None and is_adapter(reference_path):
        policy.load_adapter(reference_path, adapter_name=REFERENCE_ADAPTER, is_trainable=False)
    elif reference_path is not None and not isinstance(policy, PeftModel):
        reference = load_policy(BaseConfig(model_name_or_path=reference_path), device=device).eval()
    if reference is not None or isinstance(policy, PeftModel):
        log_ratio, tokens = 0.0, 0
        for batch in batches:
            logps = _response_logps(policy, batch)  # (B, R)
            if reference is not None:
                ref_logps = _response_logps(reference, batch)
            else:
                with as_reference(policy):
                    ref_logps = _response_logps(policy, batch)
            mask = batch["response_mask"]
            log_ratio += ((logps - ref_logps) * mask).sum().item()  # Σ_t log π(y_t) − log π_ref(y_t)
            tokens += mask.sum().item()
        report["kl"] = log_ratio / max(tokens, 1)

    if reward_model_path is not None:
        texts = response_texts(tokenizer, batches)
        conversations = [
            [*prompt, {"role": "assistant", "content": text}]
            for prompt, text in zip([p for p in prompts for _ in range(num_samples)], texts, strict=True)
        ]
        rewards = score(reward_model_path, conversations, batch_size=batch_size, device=device)
        report["mean_reward"] = rewards.mean().item()
        report["reward_std"] = rewards.std().item() if len(rewards) > 1 else 0.0
    return report


@torch.no_grad()
def load_scorer(
    reward_model_path: str, device: torch.device | None = None
) -> tuple[PreTrainedTokenizerBase, PreTrainedModel]:
    """The reward model and its tokenizer as `score` reads them, to load once for many calls."""
    return load_tokenizer(reward_model_path, padding_side="right"), load_reward_model(reward_model_path, device)


def score(
    reward_model_path: str,
    conversations: list[Messages],
    *,
    batch_size: int = 8,
    device: torch.device | None = None,
    outputs: bool = False,
    loaded: tuple[PreTrainedTokenizerBase, PreTrainedModel] | None = None,
) -> torch.Tensor:
    """The reward model's scalar for each whole conversation (prompt and answer), read at its last real token: (N,).
    outputs: a rating reward model's outputs each instead, σ(z_k) (the score on [0, 1], then each label's share of
    raters), before the head file's weights sum them into the reward: (N, K). loaded: load_scorer's, not loaded
    again."""
    tokenizer, model = loaded or load_scorer(reward_model_path, device)
    head = model.score
    if outputs and isinstance(head, WeightedOutputs):
        model.score = head.head  # for this call: a loaded model stays as it came
    rewards = []
    try:
        for start in range(0, len(conversations), batch_size):
            chats = conversations[start : start + batch_size]
            texts = [tokenizer.apply_chat_template(c, tokenize=False) for c in chats]
            inputs = tokenizer(texts, add_special_tokens=False, padding=True, return_tensors="pt").to(model.device)
            ids, attention = inputs["input_ids"], inputs["attention_mask"]
            if outputs:
                rewards.append(torch.sigmoid(reward_model_logits(model, ids, attention)).cpu())
            else:
                rewards.append(reward_model_scores(model, ids, attention).cpu())
    finally:
        model.score = head
    return torch.cat(rewards)


@torch.no_grad()
def _response_logps(model: PreTrainedModel | PeftModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """log p(response token | everything before it) under model: (B, R)."""
    ids = torch.cat([batch["prompt_ids"], batch["response_ids"]], dim=1)  # (B, P + R)
    mask = torch.cat([batch["prompt_mask"], batch["response_mask"]], dim=1)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask)).logits  # (B, [N +] P + R, V)
    response_length = batch["response_ids"].shape[1]
    # The logits at position t predict token t + 1: those of the response tokens are the R before the last. Counted
    # from the end, as prompt tuning puts N virtual tokens' positions first. (B, R, V)
    return token_logprobs(logits[:, -response_length - 1 : -1].float(), batch["response_ids"])


def _load_unmerged(path: str, device: torch.device) -> PreTrainedModel | PeftModel:
    if not is_adapter(path):
        return load_policy(BaseConfig(model_name_or_path=path), device=device).eval()
    base = load_policy(BaseConfig(model_name_or_path=adapter_base(path)), device=device)
    return PeftModel.from_pretrained(base, path).to(device).eval()


def response_texts(tokenizer: PreTrainedTokenizerBase, batches: list[dict[str, torch.Tensor]]) -> list[str]:
    """Each sampled response as text, in order, up to its first end-of-sequence token."""
    return [
        tokenizer.decode(ids[mask.bool()], skip_special_tokens=True)
        for batch in batches
        for ids, mask in zip(batch["response_ids"], batch["response_mask"], strict=True)
    ]


# Pieces that PPO's rollouts use too -------------------------------------------------------------------------------


@torch.no_grad()
def complete(
    model: PreTrainedModel | PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[list[int]],
    eos_ids: list[int],
    **generation: Any,
) -> dict[str, torch.Tensor]:
    """One response to each prompt (token ids), all in one batched `generate` called with `generation` (settings,
    or a generation_config) whose stop tokens are eos_ids.

    Returns prompt_ids / prompt_mask (B, P) left-padded, and response_ids / response_mask (B, R), the mask covering
    each response up to and including its first end-of-sequence token.
    """
    inputs = tokenizer.pad({"input_ids": prompts}, padding_side="left", return_tensors="pt").to(model.device)
    output = model.generate(**inputs, **generation)
    responses = output[:, inputs["input_ids"].shape[1] :]  # (B, R)
    mask, _ = response_mask(responses, eos_ids)
    return {
        "prompt_ids": inputs["input_ids"],
        "prompt_mask": inputs["attention_mask"],
        "response_ids": responses,
        "response_mask": mask,
    }


def encode_prompt(prompt: str | Messages, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """A prompt's token ids, ready for the answer: messages rendered with the chat template and its generation
    prompt; a string is one user message (plain text when the tokenizer has no chat template)."""
    if isinstance(prompt, str) and not tokenizer.chat_template:
        return tokenizer(prompt)["input_ids"]
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    # The template writes its own BOS token, and apply_chat_template adds no other.
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True)["input_ids"]


def stop_token_ids(
    model: PreTrainedModel | PeftModel | GenerationConfig, tokenizer: PreTrainedTokenizerBase
) -> list[int]:
    """Every token that ends a turn: the tokenizer's EOS, whatever the model's generation config (or the one given)
    adds, and the token the chat template ends an answer with (chat models often end turns with a token of their
    own, and a checkpoint's generation config may not name it: Phi-3's <|end|>)."""
    configured = getattr(model, "generation_config", model).eos_token_id
    configured = configured if isinstance(configured, list) else [configured] if configured is not None else []
    return sorted({tokenizer.eos_token_id, *configured, end_of_turn_id(tokenizer)} - {None})


def response_mask(responses: torch.Tensor, eos_ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask (B, R): 1 up to and including the first EOS, has_eos (B,)) for sampled responses (B, R); any of
    eos_ids ends a response."""
    is_eos = torch.isin(responses, torch.tensor(eos_ids, device=responses.device))  # (B, R)
    # The response runs up to and including the first EOS: the tokens with no EOS strictly before them.
    eos_before = torch.cumsum(is_eos, dim=1) - is_eos.long()  # (B, R)
    return (eos_before == 0).long(), is_eos.any(dim=1)


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip left padding, as `generate` counts them; (B, T)."""
    return (attention_mask.cumsum(-1) - 1).clamp(min=0)


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log p(token) at each position; logits (B, T, V), tokens (B, T) -> (B, T)."""
    # log softmax at the token only: logit(y_t) − logsumexp(logits), without a second (B, T, V) tensor
    return logits.gather(-1, tokens.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(dim=-1)


def with_closed_turns(
    tokenizer: PreTrainedTokenizerBase, input_ids: torch.Tensor, attention_mask: torch.Tensor, eos_ids: list[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sampled conversations (B, T) as the chat template writes them, which is how reward training (and `score`)
    read a conversation: a response that stopped on one of eos_ids ends with the template's closing instead
    (ChatML's newline after <|im_end|>, Phi-3's <|endoftext|> after <|end|>); one that ran out of tokens stays as it
    is. (input_ids, attention_mask) left-padded, (B, T')."""
    closing = turn_closing(tokenizer)
    rows = []
    for ids, mask in zip(input_ids.tolist(), attention_mask.tolist(), strict=True):
        tokens = [token for token, real in zip(ids, mask, strict=True) if real]
        rows.append(tokens[:-1] + closing if closing and tokens[-1] in eos_ids else tokens)
    batch = tokenizer.pad({"input_ids": rows}, padding_side="left", return_tensors="pt").to(input_ids.device)
    return batch["input_ids"], batch["attention_mask"]


@torch.no_grad()
def reward_model_scores(
    reward_model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """The reward model's logit for each sequence, which the model reads at its last token that is not padding (as
    in training), whichever side the padding is on; positions skip left padding as `generate`'s do. (B, T) -> (B,)."""
    return reward_model_logits(reward_model, input_ids, attention_mask)[:, 0]


def reward_model_logits(
    reward_model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """reward_model_scores' every output, in float32: (B, T) -> (B, K)."""
    return reward_model(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids(attention_mask)
    ).logits.float()
