"""Every stage on every real model family (../shared/data/tokenizers): the tiny random models built like Qwen2.5,
SmolLM2, TinyLlama and Phi-3 run reward, DPO, SFT, PPO, sampling and the policy evaluation, and each sees the
same prompt tokens, attends to every real token when pad = eos, stops on every end-of-turn id and scores at the
last real token. No database: these run once, not once per database."""

import json

import pytest
import torch
from transformers import LogitsProcessor

from tests.training.conftest import marker_pairs, settings, write_jsonl
from training.engine import dpo, generate, ppo, reward, sft
from training.engine.common import BaseConfig, load_policy, load_reward_model, load_tokenizer
from training.engine.dpo import DPOConfig, train_dpo
from training.engine.generate import (
    complete,
    encode_prompt,
    evaluate_policy,
    reward_model_scores,
    sample,
    stop_token_ids,
    with_closed_turns,
)
from training.engine.ppo import PPOConfig, train_ppo
from training.engine.reward import RewardConfig, train_reward
from training.engine.sft import SFTConfig, train_sft

pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")

CPU = torch.device("cpu")
PROMPT = [{"role": "user", "content": "What is two plus two?"}]
ANSWER = {"role": "assistant", "content": "Four."}
# The tokens that end an assistant turn, by family: the generation config's eos ids and the template's own.
STOPS = {
    "qwen2.5-instruct": ["<|im_end|>", "<|endoftext|>"],
    "smollm2-instruct": ["<|im_end|>"],
    "tinyllama-chat": ["</s>"],
    "phi3-mini-instruct": ["<|end|>", "<|endoftext|>"],
}


def quick(config_class, path, **overrides):
    """Two steps on batches of two, short sequences, nothing held out."""
    defaults = dict(max_steps=2, per_device_batch_size=2, max_length=96, eval_fraction=0)
    return settings(config_class, path, **{**defaults, **overrides})


def record(monkeypatch, module, name) -> list:
    """Calls of module.name, as they pass: their arguments."""
    calls, original = [], getattr(module, name)

    def recorded(*args, **kwargs):
        calls.append(args)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, recorded)
    return calls


def unpadded(ids: torch.Tensor, mask: torch.Tensor) -> list[int]:
    return ids[mask.bool()].tolist()


@torch.no_grad()
def at_last_token(model, ids: list[int]) -> torch.Tensor:
    """The score head of a (PEFT-wrapped) classifier at the sequence's very last token: (1,)."""
    classifier = model.get_base_model() if hasattr(model, "get_base_model") else model
    hidden = getattr(classifier, classifier.base_model_prefix)(torch.tensor([ids])).last_hidden_state
    return classifier.score(hidden[:, -1])[:, 0].float()


def attends_to_every_real_token(trainer, lengths: set[int]) -> bool:
    """A training batch's attention masks cover whole sequences (of these lengths): pad = eos must not hide an eos
    that ends a turn."""
    batch = next(iter(trainer.get_train_dataloader()))
    return set(batch["attention_mask"].sum(1).tolist()) <= lengths


def test_the_prompt_is_what_the_template_writes_with_at_most_one_bos(family):
    tokenizer = load_tokenizer(family.policy)
    ids = encode_prompt(PROMPT, tokenizer)

    text = tokenizer.apply_chat_template(PROMPT, tokenize=False, add_generation_prompt=True)
    assert ids == tokenizer(text, add_special_tokens=False)["input_ids"]
    assert ids[:2] != [tokenizer.bos_token_id] * 2
    if family.like.name == "qwen2.5-instruct":  # the default system prompt is part of every prompt
        assert "You are Qwen, created by Alibaba Cloud." in tokenizer.decode(ids)


def test_every_stage_sees_the_same_prompt_tokens_and_attends_to_every_real_token(family, tmp_path, spy, monkeypatch):
    tokenizer = load_tokenizer(family.policy)
    prompt = encode_prompt(PROMPT, tokenizer)
    pairs = [{**row, "prompt": PROMPT} for row in marker_pairs(4)]
    data = write_jsonl(tmp_path / "pairs.jsonl", pairs)
    sft_data = write_jsonl(tmp_path / "sft.jsonl", [{"messages": [*PROMPT, ANSWER], "prompt_id": "p"}] * 4)

    seen = spy(reward)
    train_reward(quick(RewardConfig, family.reward), data, str(tmp_path / "rm"))
    rows = seen["trainer"].train_dataset
    assert rows[0]["chosen_ids"][: len(prompt)] == prompt
    assert attends_to_every_real_token(
        seen["trainer"], {len(r[k]) for r in rows for k in ("chosen_ids", "rejected_ids")}
    )
    batch = next(iter(seen["trainer"].get_train_dataloader()))  # right-padded, as TRL's collator pads
    model = seen["trainer"].model.eval()
    with torch.no_grad():  # the rewards that training's loss is made of: each at its sequence's last real token
        rewards = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, 0]
    last = [
        at_last_token(model, unpadded(i, m)) for i, m in zip(batch["input_ids"], batch["attention_mask"], strict=True)
    ]
    torch.testing.assert_close(rewards, torch.cat(last))

    seen = spy(dpo)
    train_dpo(quick(DPOConfig, family.policy), data, str(tmp_path / "dpo"))
    rows = seen["trainer"].train_dataset
    assert rows[0]["prompt_ids"] == prompt
    end_of_turn = tokenizer.convert_tokens_to_ids(STOPS[family.like.name][0])
    assert all(end_of_turn in row["chosen_ids"] for row in rows)  # the answers end their turn: DPO learns to stop
    lengths = {len(r["prompt_ids"]) + len(r[k]) for r in rows for k in ("chosen_ids", "rejected_ids")}
    assert attends_to_every_real_token(seen["trainer"], lengths)

    seen = spy(sft)
    train_sft(quick(SFTConfig, family.policy), sft_data, str(tmp_path / "sft"))
    rows = seen["trainer"].train_dataset
    assert rows[0]["input_ids"][: len(prompt)] == prompt
    assert attends_to_every_real_token(seen["trainer"], {len(row["input_ids"]) for row in rows})

    scored = record(monkeypatch, ppo, "reward_model_scores")
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": PROMPT, "prompt_id": "p"}] * 2)
    config = quick(PPOConfig, family.policy, max_steps=1, max_new_tokens=4, ppo_epochs=1, eval_fraction=0)
    train_ppo(config, prompts, family.reward, tmp_path / "ppo")
    _, ids, attention = scored[0]
    assert unpadded(ids[0], attention[0])[: len(prompt)] == prompt

    completed = record(monkeypatch, generate, "complete")
    scored = record(monkeypatch, generate, "reward_model_scores")
    report = evaluate_policy(
        str(tmp_path / "dpo"), [PROMPT], reward_model_path=family.reward, max_new_tokens=4, device=CPU
    )
    assert completed[0][2] == [prompt]
    _, ids, attention = scored[0]
    assert unpadded(ids[0], attention[0])[: len(prompt)] == prompt
    assert report["samples"] == 1 and "kl" in report and "mean_reward" in report


class ForceAt(LogitsProcessor):
    """Makes the model say `token` as its `step`-th new token (from 0), whatever it would have said."""

    def __init__(self, token: int, step: int):
        self.token, self.step, self.start = token, step, None

    def __call__(self, input_ids, scores):
        self.start = self.start or input_ids.shape[1]
        if input_ids.shape[1] - self.start == self.step:
            scores = torch.full_like(scores, -float("inf"))
            scores[:, self.token] = 0.0
        return scores


def test_every_end_of_turn_id_stops_sampling(family):
    tokenizer = load_tokenizer(family.policy, padding_side="left")
    model = load_policy(BaseConfig(model_name_or_path=str(family.policy)), device=CPU).eval()
    stops = stop_token_ids(model, tokenizer)
    folder = family.like / "generation_config.json"
    configured = json.loads(folder.read_text())["eos_token_id"] if folder.is_file() else []
    expected = {tokenizer.convert_tokens_to_ids(token) for token in STOPS[family.like.name]}

    assert expected | set(configured if isinstance(configured, list) else [configured]) <= set(stops)
    prompts = [encode_prompt(PROMPT, tokenizer), encode_prompt([{"role": "user", "content": "Hi"}], tokenizer)]
    for stop in stops:
        generation = dict(max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.pad_token_id, eos_token_id=stops)
        batch = complete(model, tokenizer, prompts, stops, logits_processor=[ForceAt(stop, 2)], **generation)
        assert batch["response_ids"].shape[1] == 3, tokenizer.convert_ids_to_tokens(stop)
        assert batch["response_mask"].tolist() == [[1, 1, 1], [1, 1, 1]]


def test_the_reward_model_scores_at_the_last_real_token_whichever_side_pads(family):
    tokenizer = load_tokenizer(family.reward)
    model = load_reward_model(family.reward, CPU)
    long = {"role": "assistant", "content": "A much longer answer than the first, so that the other one is padded."}
    conversations = [[*PROMPT, ANSWER], [*PROMPT, long]]
    ids = [tokenizer.apply_chat_template(conversation)["input_ids"] for conversation in conversations]

    alone = torch.cat(
        [reward_model_scores(model, torch.tensor([row]), torch.ones(1, len(row), dtype=torch.long)) for row in ids]
    )
    for side in ("left", "right"):
        batch = tokenizer.pad({"input_ids": ids}, padding_side=side, return_tensors="pt")
        scores = reward_model_scores(model, batch["input_ids"], batch["attention_mask"])
        torch.testing.assert_close(scores, alone, msg=side)
    torch.testing.assert_close(alone, torch.cat([at_last_token(model, row) for row in ids]))


def test_ppo_scores_a_response_where_reward_training_scored_the_same_answer(family):
    tokenizer = load_tokenizer(family.reward)
    model = load_reward_model(family.reward, CPU)
    rendered = tokenizer.apply_chat_template([*PROMPT, ANSWER])["input_ids"]  # as RewardTrainer tokenizes a pair
    prompt = encode_prompt(PROMPT, tokenizer)
    end_of_turn = tokenizer.convert_tokens_to_ids(STOPS[family.like.name][0])
    text = rendered[len(prompt) : rendered.index(end_of_turn, len(prompt))]
    stops = stop_token_ids(load_policy(BaseConfig(model_name_or_path=str(family.policy))), tokenizer)
    as_trained = reward_model_scores(model, torch.tensor([rendered]), torch.ones(1, len(rendered), dtype=torch.long))

    for stop in STOPS[family.like.name]:  # what PPO's rollout holds: up to the token that stopped it, padded after
        pad = tokenizer.pad_token_id
        sampled = torch.tensor([[pad, *prompt, *text, tokenizer.convert_tokens_to_ids(stop), pad, pad]])
        mask = torch.tensor([[0] + [1] * (len(prompt) + len(text) + 1) + [0, 0]])

        ids, attention = with_closed_turns(tokenizer, sampled, mask, stops)
        assert unpadded(ids[0], attention[0]) == rendered, stop
        torch.testing.assert_close(reward_model_scores(model, ids, attention), as_trained)


@pytest.mark.parametrize("family", ["tinyllama-chat"], indirect=True)
def test_a_policy_whose_pad_is_eos_learns_to_stop(family, tmp_path):
    # pad = eos = </s>, which also ends TinyLlama's turns: an SFT that hid it as padding would never teach the stop.
    data = write_jsonl(tmp_path / "sft.jsonl", [{"messages": [*PROMPT, ANSWER], "prompt_id": "p"}] * 4)
    config = quick(SFTConfig, family.policy, max_steps=16, per_device_batch_size=4, use_lora=False, learning_rate=3e-3)
    train_sft(config, data, str(tmp_path / "sft"))

    tokenizer = load_tokenizer(tmp_path / "sft", padding_side="left")
    model = load_policy(BaseConfig(model_name_or_path=str(tmp_path / "sft")), device=CPU).eval()
    (batch,) = sample(
        model, tokenizer, [PROMPT], num_samples=1, max_new_tokens=8, temperature=0, top_p=1, batch_size=1, seed=0
    )
    rendered = tokenizer.apply_chat_template([*PROMPT, ANSWER])["input_ids"]
    prompt = encode_prompt(PROMPT, tokenizer)
    answer = rendered[len(prompt) : rendered.index(tokenizer.eos_token_id, len(prompt)) + 1]  # "Four." and </s>
    assert unpadded(batch["response_ids"][0], batch["response_mask"][0]) == answer
