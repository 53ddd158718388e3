"""The reward stage: learns a rule that holds out of sample, trains only what it should, saves, stops and resumes."""

import json

import pytest
import torch
from safetensors.torch import load_file

from tests.training.conftest import marker_pairs, settings, write_jsonl
from training.engine import reward
from training.engine.common import load_reward_model
from training.engine.config import RewardConfig
from training.engine.reward import train_reward

pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")


@pytest.fixture
def pairs(tmp_path):
    return write_jsonl(tmp_path / "pairs.jsonl", marker_pairs(64))


def test_learns_the_marker_rule_on_held_out_pairs(tiny, pairs, tmp_path, spy):
    seen = spy(reward)
    config = settings(RewardConfig, tiny.reward, max_steps=40, learning_rate=2e-3, use_margin=False)

    result = train_reward(config, pairs, str(tmp_path / "rm"))

    # 16 held-out pairs (a quarter of the prompts) the model never trained on; chance is 0.5.
    assert result.eval_report["eval_pairs"] == 16
    assert result.eval_report["accuracy"] >= 0.85, result.eval_report
    assert result.eval_report["mean_margin"] > 0
    assert (result.steps, result.stopped) == (40, False)
    assert result.metrics["train_loss"] < 0.6931  # below -log σ(0): better than a reward that says nothing

    # LoRA: the adapters and the fresh score head trained; the backbone did not move.
    model, before = seen["trainer"].model, seen["before"]
    changed = {name for name, p in model.named_parameters() if not torch.equal(p.detach(), before[name])}
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert changed == trainable
    assert any("lora_B" in name for name in changed) and any("score" in name for name in changed)
    assert all("lora_" in name or ".score." in name for name in trainable), trainable


def test_saved_adapter_reloads_with_the_same_rewards(tiny, pairs, tmp_path, spy):
    seen = spy(reward)
    out = tmp_path / "rm"
    train_reward(settings(RewardConfig, tiny.reward, max_steps=5), pairs, str(out))

    saved = load_file(out / "adapter_model.safetensors")
    assert all("lora_" in name or ".score." in name for name in saved)  # the adapter and head, not the backbone
    assert json.loads((out / "adapter_config.json").read_text())["task_type"] == "SEQ_CLS"
    ids = torch.tensor([[1, 10, 20, 30, 40, 2]])
    trained = seen["trainer"].model.eval()
    with torch.no_grad():
        torch.testing.assert_close(load_reward_model(out, torch.device("cpu"))(ids).logits, trained(ids).logits)


def test_uses_the_margin_only_when_asked(tiny, pairs, tmp_path, spy):
    seen = spy(reward)
    train_reward(settings(RewardConfig, tiny.reward, max_steps=1, use_margin=True), pairs, str(tmp_path / "a"))
    assert "margin" in seen["trainer"].train_dataset.column_names

    train_reward(settings(RewardConfig, tiny.reward, max_steps=1, use_margin=False), pairs, str(tmp_path / "b"))
    assert "margin" not in seen["trainer"].train_dataset.column_names
    assert {"votes", "task_id", "agreement"}.isdisjoint(seen["trainer"].train_dataset.column_names)


def test_full_fine_tuning_trains_the_backbone_and_saves_the_whole_model(tiny, tmp_path, spy):
    seen = spy(reward)
    pairs = write_jsonl(tmp_path / "pairs.jsonl", marker_pairs(16, style="standard"))
    out = tmp_path / "rm"
    config = settings(RewardConfig, tiny.reward, max_steps=2, use_lora=False, learning_rate=1e-4)

    train_reward(config, pairs, str(out))

    q_proj = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(seen["trainer"].model.get_parameter(q_proj), seen["before"][q_proj])
    assert (out / "model.safetensors").is_file() and not (out / "adapter_config.json").exists()


def test_reports_each_step_and_stops_when_asked(tiny, pairs, tmp_path):
    calls = []

    def progress(step, total, metrics):
        calls.append((step, total, metrics))
        return step == 3

    out = tmp_path / "rm"
    result = train_reward(settings(RewardConfig, tiny.reward, max_steps=10, logging_steps=2), pairs, str(out), progress)

    assert [step for step, _, _ in calls] == [1, 2, 3]
    assert all(total == 10 for _, total, _ in calls)
    assert "loss" in calls[1][2] and "accuracy" in calls[1][2]  # a logging step brings its metrics
    assert calls[0][2] == {}
    assert (result.steps, result.stopped) == (3, True)
    assert (out / "checkpoint-3").is_dir()  # saved where it stopped, so it can resume
    assert (out / "adapter_model.safetensors").is_file()


def test_resumes_from_the_latest_checkpoint(tiny, pairs, tmp_path):
    out = str(tmp_path / "rm")
    config = settings(RewardConfig, tiny.reward, max_steps=8, save_steps=2)
    first = train_reward(config, pairs, out, lambda step, total, metrics: step == 5)
    assert (first.steps, first.stopped) == (5, True)

    steps = []
    resumed = settings(RewardConfig, tiny.reward, max_steps=8, save_steps=2, resume=True)
    second = train_reward(resumed, pairs, out, lambda step, total, metrics: steps.append(step) or False)

    assert steps == [6, 7, 8]
    assert (second.steps, second.stopped) == (8, False)
