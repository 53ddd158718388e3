"""Sampling and policy evaluation: shapes, seeds, left padding, KL to the reference and mean reward."""

import math

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from tests.training.conftest import save_adapter
from training.engine.generate import evaluate_policy, generate, reward_model_scores, score

pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")

CPU = torch.device("cpu")
PROMPTS = [
    [{"role": "user", "content": "What is two plus two?"}],
    [
        {"role": "system", "content": "Answer in one word."},
        {"role": "user", "content": "Translate hello into Spanish."},
    ],
    [{"role": "user", "content": "Hi"}],
]


def sampled(model_path, **options):
    defaults = dict(num_samples=2, max_new_tokens=8, temperature=1.0, top_p=1.0, batch_size=4, seed=0, device=CPU)
    return generate(str(model_path), PROMPTS, **{**defaults, **options})


def test_gives_num_samples_per_prompt_and_repeats_for_a_seed(tiny):
    first = sampled(tiny.policy)

    assert [len(samples) for samples in first] == [2, 2, 2]
    assert all(isinstance(text, str) and text for samples in first for text in samples)
    assert sampled(tiny.policy) == first
    assert sampled(tiny.policy, seed=1) != first
    assert first[0][0] != first[0][1]  # two samples of one prompt are two draws


def test_batched_greedy_decoding_matches_one_prompt_at_a_time(tiny):
    # The prompts differ in length, so a batch left-pads them; padding must not change what the model says.
    batched = sampled(tiny.policy, temperature=0.0, num_samples=1, batch_size=3)
    alone = sampled(tiny.policy, temperature=0.0, num_samples=1, batch_size=1)

    assert batched == alone


def test_kl_to_the_reference_is_zero_for_an_untrained_adapter(tiny, tmp_path):
    identity = save_adapter(tiny.policy, tmp_path / "identity", zero=True)
    changed = save_adapter(tiny.policy, tmp_path / "changed")
    options = dict(num_samples=2, max_new_tokens=8, batch_size=4, device=CPU)

    same = evaluate_policy(str(identity), PROMPTS, **options)
    moved = evaluate_policy(str(changed), PROMPTS, **options)

    assert same["kl"] == pytest.approx(0.0, abs=1e-6)
    assert math.isfinite(moved["kl"]) and moved["kl"] > 0.01
    assert same["samples"] == 6 and 0 < same["mean_response_tokens"] <= 8
    # A fully fine-tuned policy has no adapter to disable: KL needs an explicit reference.
    assert "kl" not in evaluate_policy(str(tiny.policy), PROMPTS, **options)
    assert evaluate_policy(str(tiny.policy), PROMPTS, reference_path=str(tiny.policy), **options)["kl"] == 0
    # A LoRA policy that continued an adapter is measured against that adapter (its round's parent), not the base.
    assert evaluate_policy(str(changed), PROMPTS, reference_path=str(changed), **options)["kl"] == 0
    assert evaluate_policy(str(changed), PROMPTS, reference_path=str(tiny.policy), **options)["kl"] == moved["kl"]


def test_mean_reward_is_the_reward_model_on_the_policy_samples(tiny):
    report = evaluate_policy(
        str(tiny.policy), PROMPTS, reward_model_path=str(tiny.reward), num_samples=2, max_new_tokens=8, device=CPU
    )

    samples = sampled(tiny.policy, batch_size=8)  # the same seed and batching as evaluate_policy's defaults
    conversations = [
        [*prompt, {"role": "assistant", "content": text}]
        for prompt, texts in zip(PROMPTS, samples, strict=True)
        for text in texts
    ]
    rewards = score(str(tiny.reward), conversations, device=CPU)
    assert report["mean_reward"] == pytest.approx(rewards.mean().item(), abs=1e-5)
    assert report["reward_std"] > 0


def test_reward_model_scores_the_last_real_token_whatever_the_padding(tiny):
    tokenizer = AutoTokenizer.from_pretrained(tiny.reward)
    reward_model = AutoModelForSequenceClassification.from_pretrained(tiny.reward).eval()
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True)["input_ids"]
    answer = tokenizer("Hello there.", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    alone = torch.tensor([prompt + answer])
    pad = tokenizer.pad_token_id
    # The same sequence in a batch: two pads on the left of the prompt, two after the response.
    padded = torch.tensor([[pad, pad, *prompt, *answer, pad, pad]])
    padded_mask = (padded != pad).long()

    scores = reward_model_scores(reward_model, padded, padded_mask)

    torch.testing.assert_close(scores, reward_model_scores(reward_model, alone, torch.ones_like(alone)))
    with torch.no_grad():
        torch.testing.assert_close(scores, reward_model(alone).logits[:, 0])
