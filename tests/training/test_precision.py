"""Every stage in bfloat16 and float16, with activation checkpointing on and off, on the CPU: the frozen base sits in
the half-precision dtype while what trains (LoRA, the reward model's score head, PPO's value head) stays float32 (AdamW
updates vanish in half precision), two steps train with finite losses, the layers are recomputed exactly when
checkpointing is on, and the output saves and reloads. Sampling and scoring run in both dtypes close to float32.

float16 runs on the CPU without loss scaling or autocast (accelerate has neither there): the float32 adapter meets
the half-precision base through PEFT's casts. No database: these run once, not once per database."""

import math

import pytest
import torch
from peft import PeftModel, get_peft_model_state_dict
from safetensors.torch import load_file
from torch.nn.modules.module import register_module_forward_pre_hook
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from tests.training.conftest import QUESTIONS, marker_pairs, settings, sft_rows, write_jsonl
from training.engine import dpo, ppo, reward, sft
from training.engine.common import load_model, load_policy, load_tokenizer
from training.engine.config import BaseConfig, DPOConfig, PPOConfig, RewardConfig, SFTConfig
from training.engine.generate import _response_logps, reward_model_scores, sample

# TRL's trainers still call transformers' deprecated names for activation checkpointing.
pytestmark = [
    pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning"),
    pytest.mark.filterwarnings("ignore:`gradient_checkpointing_enable` is deprecated:FutureWarning"),
    pytest.mark.filterwarnings("ignore:`gradient_checkpointing_disable` is deprecated:FutureWarning"),
]

CPU = torch.device("cpu")
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}
IDS = torch.tensor([[1, 4, 30, 31, 32, 2, 5, 40, 41, 42]])
PROMPTS = [[{"role": "user", "content": question}] for question in QUESTIONS[:2]]


def quick(config_class, path, dtype, checkpointing, **overrides):
    """Two steps on batches of two, short sequences, nothing held out."""
    return settings(
        config_class,
        path,
        **{
            "dtype": dtype,
            "activation_checkpointing": checkpointing,
            "max_steps": 2,
            "per_device_batch_size": 2,
            "max_length": 64,
            "eval_fraction": 0,
            **overrides,
        },
    )


class Recomputed:
    """With gradients on, counts the decoder layers' calls and their MLPs' calls: a checkpointed layer runs its MLP
    again in the backward pass, calling its forward without the hooks of a call (a recompute that stops once it has
    what backward needs would miss a hook after the forward)."""

    def __init__(self):
        self.layers = self.mlps = 0

    def __enter__(self):
        self.hook = register_module_forward_pre_hook(self.count)
        return self

    def __exit__(self, *exc):
        self.hook.remove()

    def count(self, module, args):
        if torch.is_grad_enabled():
            name = type(module).__name__
            self.layers += name == "LlamaDecoderLayer"
            self.mlps += name == "LlamaMLP"

    @property
    def runs_per_call(self) -> float:
        return self.mlps / self.layers


def assert_mixed_precision(model, dtype):
    """The frozen weights in dtype, the trained ones in float32."""
    frozen = {p.dtype for p in model.parameters() if not p.requires_grad}
    trained = {p.dtype for p in model.parameters() if p.requires_grad}
    assert (frozen, trained) == ({dtype}, {torch.float32})


def assert_reloads(trained: PeftModel, base_class, base_path, out, dtype, **kwargs):
    """The saved adapter loads onto the base in dtype with the weights it trained, and runs."""
    base = base_class.from_pretrained(base_path, dtype=dtype, **kwargs)
    reloaded = PeftModel.from_pretrained(base, out).eval()
    saved, expected = get_peft_model_state_dict(reloaded), get_peft_model_state_dict(trained)
    assert saved.keys() == expected.keys()
    for name, tensor in saved.items():  # a score head goes back into the base's dtype
        torch.testing.assert_close(tensor, expected[name].to(tensor.dtype), rtol=0, atol=0)
    with torch.no_grad():
        assert torch.isfinite(reloaded(IDS).logits).all()


@pytest.fixture(params=DTYPES)
def dtype(request):
    return request.param


@pytest.fixture(params=[False, True], ids=["plain", "checkpointing"])
def checkpointing(request):
    return request.param


@pytest.mark.parametrize(
    ("stage", "train", "model_class"),
    [
        ("reward", reward.train_reward, AutoModelForSequenceClassification),
        ("dpo", dpo.train_dpo, AutoModelForCausalLM),
        ("sft", sft.train_sft, AutoModelForCausalLM),
    ],
)
def test_trl_stages_train_in_half_precision(tiny, tmp_path, spy, stage, train, model_class, dtype, checkpointing):
    module = {"reward": reward, "dpo": dpo, "sft": sft}[stage]
    config_class, path = {
        "reward": (RewardConfig, tiny.reward),
        "dpo": (DPOConfig, tiny.policy),
        "sft": (SFTConfig, tiny.policy),
    }[stage]
    rows = sft_rows(4) if stage == "sft" else marker_pairs(4)
    data = write_jsonl(tmp_path / "data.jsonl", rows)
    out = tmp_path / stage
    seen = spy(module)

    with Recomputed() as recomputed:
        result = train(quick(config_class, path, dtype, checkpointing), str(data), str(out))

    model = seen["trainer"].model
    assert_mixed_precision(model, DTYPES[dtype])
    assert result.steps == 2 and math.isfinite(result.metrics["train_loss"]), result.metrics
    assert recomputed.runs_per_call == (2 if checkpointing else 1)
    kwargs = {"num_labels": 1} if stage == "reward" else {}
    assert_reloads(model, model_class, path, out, DTYPES[dtype], **kwargs)


def test_ppo_trains_in_half_precision(tiny, tmp_path, monkeypatch, dtype, checkpointing):
    seen = {}

    class Watched(ppo.PolicyWithValueHead):
        def __init__(self, policy):
            super().__init__(policy)
            seen["model"] = self

    monkeypatch.setattr(ppo, "PolicyWithValueHead", Watched)
    rows = [{"prompt": prompt, "prompt_id": f"p{i}"} for i, prompt in enumerate(PROMPTS)]
    prompts = write_jsonl(tmp_path / "prompts.jsonl", rows)
    config = quick(PPOConfig, tiny.policy, dtype, checkpointing, max_new_tokens=4, ppo_epochs=1)
    out = tmp_path / "ppo"
    calls = []

    with Recomputed() as recomputed:
        ppo.train_ppo(config, prompts, tiny.reward, out, lambda *call: calls.append(call) or False)

    model = seen["model"]
    assert_mixed_precision(model, DTYPES[dtype])
    assert len(calls) == 2 and all(math.isfinite(value) for _, _, metrics in calls for value in metrics.values())
    assert recomputed.runs_per_call == (2 if checkpointing else 1)
    assert_reloads(model.policy, AutoModelForCausalLM, tiny.policy, out, DTYPES[dtype])
    torch.testing.assert_close(load_file(out / "value_head.safetensors")["weight"], model.value_head.weight.detach())


def test_sampling_and_scoring_in_half_precision_stay_close_to_float32(tiny, dtype):
    tokenizer = load_tokenizer(tiny.policy, padding_side="left")
    policies = {
        name: load_policy(BaseConfig(str(tiny.policy), dtype=name), device=CPU).eval() for name in ("float32", dtype)
    }
    scorers = {
        name: load_model(
            AutoModelForSequenceClassification, BaseConfig(str(tiny.reward), dtype=name), device=CPU, num_labels=1
        ).eval()
        for name in ("float32", dtype)
    }
    assert (
        {p.dtype for p in policies[dtype].parameters()}
        == {p.dtype for p in scorers[dtype].parameters()}
        == {DTYPES[dtype]}
    )

    batches = sample(
        policies[dtype],
        tokenizer,
        PROMPTS,
        num_samples=2,
        max_new_tokens=6,
        temperature=1.0,
        top_p=1.0,
        batch_size=4,
        seed=0,
    )
    (batch,) = batches
    assert batch["response_mask"].sum() > 0
    logps = {name: _response_logps(policy, batch) for name, policy in policies.items()}
    mask = batch["response_mask"].bool()
    assert logps[dtype].dtype == torch.float32 and torch.isfinite(logps[dtype][mask]).all()
    torch.testing.assert_close(logps[dtype][mask], logps["float32"][mask], rtol=0, atol=0.1)

    ids = torch.cat([batch["prompt_ids"], batch["response_ids"]], 1)
    attention = torch.cat([batch["prompt_mask"], batch["response_mask"]], 1)
    scores = {name: reward_model_scores(model, ids, attention) for name, model in scorers.items()}
    assert scores[dtype].dtype == torch.float32
    torch.testing.assert_close(scores[dtype], scores["float32"], rtol=0, atol=0.05)


def test_full_fine_tuning_keeps_float32_master_weights(tiny, tmp_path, spy):
    seen = spy(sft)
    data = write_jsonl(tmp_path / "sft.jsonl", sft_rows(4))

    result = sft.train_sft(quick(SFTConfig, tiny.policy, "bfloat16", True, use_lora=False), str(data), str(tmp_path))

    assert {p.dtype for p in seen["trainer"].model.parameters()} == {torch.float32}
    assert math.isfinite(result.metrics["train_loss"])
