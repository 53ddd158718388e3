"""Best-of-N on the tiny model: the chosen answer is the reward model's argmax, the report's gain is what choosing
bought, the SFT data is one chosen answer per prompt, SFT trains the adapter on it, and a stop is honoured."""

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from tests.training.conftest import QUESTIONS, settings, write_jsonl
from training.engine.best_of_n import SAMPLES_FILE, SFT_FILE, choose_best, sampling_report, train_best_of_n
from training.engine.config import BestOfNConfig
from training.engine.generate import score

pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")


@pytest.fixture
def prompts(tmp_path):
    # As a pairs export has them: message lists, each prompt on two rows (two pairs).
    rows = [{"prompt": [{"role": "user", "content": q}], "prompt_id": f"p{i}"} for i, q in enumerate(QUESTIONS)]
    return write_jsonl(tmp_path / "prompts.jsonl", rows + rows)


def quick(tiny, **overrides):
    return settings(BestOfNConfig, tiny.policy, **{"k": 4, "max_new_tokens": 8, "sample_batch_size": 8, **overrides})


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_sft_on_the_reward_models_best_of_k_answers(tiny, prompts, tmp_path):
    calls = []
    out = tmp_path / "bon"
    result = train_best_of_n(quick(tiny), prompts, tiny.reward, out, lambda *call: calls.append(call) or False)

    sampled = read_jsonl(out / SAMPLES_FILE)
    train_prompts = len(QUESTIONS) - round(0.25 * len(QUESTIONS))  # each distinct prompt once, a quarter held out
    assert len(sampled) == train_prompts and all(len(row["answers"]) == len(row["rewards"]) == 4 for row in sampled)
    # The rewards are the reward model's own scores of prompt + answer, and the chosen one is their argmax.
    conversations = [[*row["prompt"], {"role": "assistant", "content": a}] for row in sampled for a in row["answers"]]
    rescored = score(str(tiny.reward), conversations).view(len(sampled), 4)
    torch.testing.assert_close(torch.tensor([row["rewards"] for row in sampled]), rescored, atol=1e-4, rtol=1e-4)
    assert [row["best"] for row in sampled] == rescored.argmax(dim=1).tolist()

    # One SFT row per prompt: its messages, then the chosen answer.
    rows = read_jsonl(out / SFT_FILE)
    assert [row["messages"] for row in rows] == [
        [*row["prompt"], {"role": "assistant", "content": row["answers"][row["best"]]}] for row in sampled
    ]

    report = result.eval_report
    best = [max(row["rewards"]) for row in sampled]
    mean = [sum(row["rewards"]) / 4 for row in sampled]
    assert report["mean_best_reward"] == pytest.approx(sum(best) / len(best), rel=1e-5)
    assert report["mean_sample_reward"] == pytest.approx(sum(mean) / len(mean), rel=1e-5)
    assert report["reward_gain"] == pytest.approx(report["mean_best_reward"] - report["mean_sample_reward"], abs=1e-6)
    assert report["reward_gain"] > 0 and (report["k"], report["prompts"]) == (4, train_prompts)
    # PPO's eval keys on the held-out prompts, so that rounds of both methods compare.
    for key in ("mean_reward", "reference_mean_reward", "kl", "kl_per_response", "samples"):
        assert math.isfinite(report[key]), report
    assert report["samples"] == round(0.25 * len(QUESTIONS))

    # Progress ran through sampling (in sequences: K per prompt), then SFT's steps; SFT trained the adapter.
    assert (calls[0][0], calls[0][1]) == (8, 4 * train_prompts)
    assert [(step, total) for step, total, _ in calls][3:] == [(step, 10) for step in range(1, 11)]
    assert result.steps == 10 and not result.stopped
    assert any(torch.count_nonzero(t) for name, t in load_file(out / "adapter_model.safetensors").items()
               if "lora_B" in name)  # fmt: skip


def test_the_best_is_the_argmax_and_the_gain_is_best_minus_mean():
    rewards = torch.tensor([[0.1, 0.9, -0.5], [2.0, 2.0, 2.0], [-1.0, -3.0, -2.0]])
    assert choose_best(rewards).tolist() == [1, 0, 0]
    report = sampling_report(rewards)
    assert report["mean_best_reward"] == pytest.approx((0.9 + 2.0 - 1.0) / 3)
    assert report["mean_sample_reward"] == pytest.approx((0.5 / 3 + 2.0 - 2.0) / 3)
    assert report["reward_gain"] == pytest.approx(report["mean_best_reward"] - report["mean_sample_reward"])
    assert report["reward_gain"] >= 0 and report["tied_prompts"] == 1


def test_stops_while_sampling_when_asked_and_trains_nothing(tiny, prompts, tmp_path):
    calls = []
    out = tmp_path / "bon"
    result = train_best_of_n(quick(tiny), prompts, tiny.reward, out, lambda *call: calls.append(call) or True)

    assert len(calls) == 1 and result.stopped and result.steps == 0
    assert not (out / "adapter_model.safetensors").exists() and not (out / SFT_FILE).exists()


@pytest.mark.parametrize(
    ("values", "name"),
    [({"k": "1"}, "k"), ({"temperature": "0"}, "temperature"), ({"max_new_tokens": "2000"}, "max_new_tokens"),
     ({"top_p": "0"}, "top_p"), ({"sample_batch_size": "0"}, "sample_batch_size"), ({"launch": "ddp"}, "launch")],
)  # fmt: skip
def test_config_refuses_bad_values_by_name(values, name):
    with pytest.raises(ValueError, match=f"^{name}: "):
        BestOfNConfig.from_dict(values)


def test_the_sft_settings_are_the_sft_stages_and_it_trains_on_every_chosen_answer():
    config = BestOfNConfig.from_dict({"learning_rate": "3e-4", "assistant_only_loss": "false", "k": "8"})
    sft = config.sft_config()
    assert (sft.learning_rate, sft.assistant_only_loss, sft.eval_fraction) == (3e-4, False, 0.0)
