"""Prompt tuning and IA³ beside LoRA: each trains only its own weights, saves, reloads through the engine's loaders
with the same outputs, samples and scores, and passes the launch's file check; what a stage cannot use, and 4-bit
loading off CUDA, is refused naming the setting."""

import json
import math

import pytest
import torch

from tests.training.conftest import marker_pairs, settings, sft_rows, write_jsonl
from training.engine import dpo, reward, sft
from training.engine.common import load_policy, load_reward_model
from training.engine.config import BaseConfig, DPOConfig, PPOConfig, RewardConfig, SFTConfig
from training.engine.dpo import train_dpo
from training.engine.generate import evaluate_policy, generate, score
from training.engine.model_files import missing_files
from training.engine.ppo import train_ppo
from training.engine.reward import train_reward
from training.engine.sft import train_sft

pytestmark = pytest.mark.filterwarnings(
    "ignore:`is_gradient_checkpointing` is deprecated:FutureWarning",
    "ignore:Position ids are not supported:UserWarning",  # PEFT's prompt tuning numbers positions itself
)

IDS = torch.tensor([[1, 4, 30, 31, 32, 2, 5, 40, 41, 42]])
PEFT_TYPES = {"ia3": "IA3", "prompt_tuning": "PROMPT_TUNING"}
# The trainable weights each method adds (the reward model's fresh score head trains beside them).
OWN_WEIGHTS = {"ia3": ("ia3_l",), "prompt_tuning": ("prompt_encoder",)}
PROMPT = [[{"role": "user", "content": "Why is the sky blue?"}]]


def trained_changed_only_its_own_weights(seen, adapter: str, extra: tuple[str, ...] = ()) -> None:
    model, before = seen["trainer"].model, seen["before"]
    changed = {name for name, p in model.named_parameters() if not torch.equal(p.detach(), before[name])}
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert changed == trainable and changed
    assert all(any(part in name for part in OWN_WEIGHTS[adapter] + extra) for name in changed), changed
    assert any(any(part in name for part in OWN_WEIGHTS[adapter]) for name in changed)


def saved_as(out, adapter: str) -> None:
    assert json.loads((out / "adapter_config.json").read_text())["peft_type"] == PEFT_TYPES[adapter]
    assert missing_files(out) == []  # a round may launch from it, and the registry's checks take it


@pytest.mark.parametrize("adapter", ["ia3", "prompt_tuning"])
@pytest.mark.parametrize("stage", ["dpo", "sft"])
def test_a_policy_adapter_trains_saves_reloads_and_samples(tiny, tmp_path, spy, adapter, stage):
    module, train, config_class = {"dpo": (dpo, train_dpo, DPOConfig), "sft": (sft, train_sft, SFTConfig)}[stage]
    seen = spy(module)
    rows = marker_pairs(16) if stage == "dpo" else sft_rows(16)
    data = write_jsonl(tmp_path / "data.jsonl", rows)
    out = tmp_path / stage

    result = train(settings(config_class, tiny.policy, max_steps=3, adapter=adapter), data, str(out))

    assert result.steps == 3 and math.isfinite(result.metrics["train_loss"])
    trained_changed_only_its_own_weights(seen, adapter)
    saved_as(out, adapter)
    model = seen["trainer"].model.eval()
    with torch.no_grad():
        reloaded = load_policy(BaseConfig(model_name_or_path=str(out))).eval()
        torch.testing.assert_close(reloaded(IDS).logits, model(IDS).logits)
        with model.disable_adapter():  # the reference: the base as it was
            assert not torch.allclose(reloaded(IDS).logits[:, -IDS.shape[1] :], model(IDS).logits)
    [[text]] = generate(str(out), PROMPT, max_new_tokens=6)
    assert isinstance(text, str)
    report = evaluate_policy(str(out), PROMPT * 2, max_new_tokens=6)
    assert math.isfinite(report["kl"]) and report["samples"] == 2  # π against the base, virtual tokens and all


def test_an_ia3_reward_model_trains_saves_reloads_and_scores(tiny, tmp_path, spy):
    seen = spy(reward)
    out = tmp_path / "rm"

    train_reward(
        settings(RewardConfig, tiny.reward, max_steps=3, adapter="ia3"),
        write_jsonl(tmp_path / "pairs.jsonl", marker_pairs(16)),
        str(out),
    )

    trained_changed_only_its_own_weights(seen, "ia3", extra=(".score.",))
    saved_as(out, "ia3")
    with torch.no_grad():
        trained = seen["trainer"].model.eval()(IDS).logits
        torch.testing.assert_close(load_reward_model(out, torch.device("cpu"))(IDS).logits, trained)
    conversation = [*PROMPT[0], {"role": "assistant", "content": "Because of scattering."}]
    assert score(str(out), [conversation]).shape == (1,)


def test_ppo_trains_an_ia3_adapter_against_its_disabled_self(tiny, tmp_path):
    rows = [{"prompt": [{"role": "user", "content": q}], "prompt_id": f"p{i}"} for i, q in enumerate(["Hi?", "Why?"])]
    out = tmp_path / "ppo"
    config = settings(
        PPOConfig, tiny.policy, max_steps=2, per_device_batch_size=2, max_new_tokens=6, adapter="ia3", eval_fraction=0
    )

    result = train_ppo(
        config, write_jsonl(tmp_path / "prompts.jsonl", rows), None, out, reward_fn=lambda r, m: m.sum(1).float()
    )

    assert result.steps == 2 and math.isfinite(result.metrics["kl"])
    saved_as(out, "ia3")
    base = load_policy(BaseConfig(model_name_or_path=str(tiny.policy))).eval()
    with torch.no_grad():  # IA³ starts as the identity (scales of 1): the steps moved it
        assert not torch.allclose(load_policy(BaseConfig(model_name_or_path=str(out)))(IDS).logits, base(IDS).logits)
    assert len(generate(str(out), PROMPT, max_new_tokens=4)) == 1


@pytest.mark.parametrize("architecture", ["llama", "qwen2", "mistral", "phi3"])
def test_ia3_scales_attention_and_the_mlp_in_each_architecture(architecture):
    """PEFT's defaults where it has them (k or q, v, down_proj), ours for Phi-3 (fused qkv_proj), which it lacks."""
    from peft import get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    from training.engine.common import new_adapter

    sizes = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, vocab_size=64)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(architecture, **sizes, pad_token_id=0))
    adapted = get_peft_model(model, new_adapter(BaseConfig(adapter="ia3"), model, "CAUSAL_LM"))
    scaled = {name.split(".")[-3] for name, p in adapted.named_parameters() if p.requires_grad}
    assert "down_proj" in scaled and scaled & {"k_proj", "q_proj", "qkv_proj"}, scaled


@pytest.mark.parametrize(
    ("config_class", "values", "message"),
    [
        (DPOConfig, {"adapter": "adapters"}, "adapter: must be one of lora, prompt_tuning, ia3"),
        (RewardConfig, {"adapter": "prompt_tuning"}, "adapter: cannot be prompt_tuning for a reward model"),
        (PPOConfig, {"adapter": "prompt_tuning"}, "adapter: cannot be prompt_tuning for PPO"),
        (DPOConfig, {"num_virtual_tokens": "0"}, "num_virtual_tokens: must be > 0"),
        (SFTConfig, {"load_in_4bit": "true", "use_lora": "false"}, "load_in_4bit: needs use_lora=true"),
    ],
)
def test_settings_a_stage_cannot_use_are_refused_naming_them(config_class, values, message):
    with pytest.raises(ValueError, match=message):
        config_class.from_dict(values)


def test_lora_stays_the_default():
    assert BaseConfig().adapter == "lora" and not BaseConfig().load_in_4bit


def test_loading_in_4bit_off_cuda_is_refused_naming_the_setting(tiny):
    config = BaseConfig(model_name_or_path=str(tiny.policy), load_in_4bit=True)
    with pytest.raises(ValueError, match="load_in_4bit: .*need a CUDA GPU"):
        load_policy(config, device=torch.device("cpu"), is_trainable=True)
