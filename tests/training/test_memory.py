"""The GPU memory estimate: parameter counts as torch counts them, LoRA's as PEFT does, and parts that grow as they
should with batch, length, dtype and the settings that save memory."""

import json
from dataclasses import replace

import pytest
import torch
from peft import IA3Config, LoraConfig, PromptTuningConfig, get_peft_model
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

from tests.training.conftest import TOKENIZERS
from training.engine.config import BestOfNConfig, DPOConfig, KTOConfig, PPOConfig, RewardConfig, SFTConfig
from training.engine.memory import GIB, Architecture, estimate_memory, read_architecture

# Published configs of two families whose config.json is not among the shared tokenizers.
PHI3_MINI = {
    "model_type": "phi3", "vocab_size": 32064, "hidden_size": 3072, "intermediate_size": 8192,
    "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32, "tie_word_embeddings": False,
}  # fmt: skip
MISTRAL_7B = {
    "model_type": "mistral", "vocab_size": 32768, "hidden_size": 4096, "intermediate_size": 14336,
    "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128,
    "tie_word_embeddings": False,
}  # fmt: skip


def real_configs() -> list:
    shared = [TOKENIZERS / name / "config.json" for name in ("qwen2.5-instruct", "smollm2-instruct", "tinyllama-chat")]
    found = [pytest.param(json.loads(path.read_text()), id=path.parent.name) for path in shared if path.is_file()]
    return [*found, pytest.param(PHI3_MINI, id="phi3-mini"), pytest.param(MISTRAL_7B, id="mistral-7b")]


def on_meta(config: dict, auto_class=AutoModelForCausalLM, **overrides):
    """The real model with the config's sizes, on the meta device: shapes without memory."""
    model_config = AutoConfig.for_model(**{**config, **overrides})
    with torch.device("meta"):
        return auto_class.from_config(model_config)


def count(model) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("config", real_configs())
def test_parameter_count_is_torchs_for_real_architectures(config):
    arch = Architecture.from_config(config)
    assert arch.parameters() == count(on_meta(config))
    reward = on_meta(config, AutoModelForSequenceClassification, num_labels=1)
    assert arch.parameters(head=1) == count(reward)


@pytest.mark.parametrize("config", real_configs())
@pytest.mark.parametrize("targets", ["all-linear", "q_proj,v_proj", "qkv_proj,o_proj"])
def test_lora_count_is_pefts(config, targets):
    arch = Architecture.from_config(config)
    stage = SFTConfig(lora_r=8, lora_target_modules=targets)
    names = [name for name in targets.split(",") if name in arch.linears()] if targets != "all-linear" else targets
    if not names:
        pytest.skip(f"{config['model_type']} has no {targets}")
    model = get_peft_model(on_meta(config), LoraConfig(r=8, target_modules=names))
    trainable, _ = model.get_nb_trainable_parameters()
    assert arch.adapter_parameters(stage) == trainable


@pytest.mark.parametrize("config", real_configs())
def test_ia3_and_prompt_tuning_counts_are_pefts(config):
    arch = Architecture.from_config(config)
    modules = (["qkv_proj", "down_proj"], ["down_proj"]) if config["model_type"] == "phi3" else (None, None)
    ia3 = get_peft_model(
        on_meta(config), IA3Config(task_type="CAUSAL_LM", target_modules=modules[0], feedforward_modules=modules[1])
    )
    assert arch.adapter_parameters(SFTConfig(adapter="ia3")) == ia3.get_nb_trainable_parameters()[0]
    prompt = get_peft_model(on_meta(config), PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=8))
    assert arch.adapter_parameters(SFTConfig(adapter="prompt_tuning")) == prompt.get_nb_trainable_parameters()[0]


def test_reads_the_tiny_models_and_an_adapters_base(tiny, tmp_path):
    from tests.training.conftest import save_adapter

    policy = AutoModelForCausalLM.from_pretrained(tiny.policy)
    assert read_architecture(tiny.policy).parameters() == count(policy)
    reward = AutoModelForSequenceClassification.from_pretrained(tiny.reward)
    assert read_architecture(tiny.reward).parameters(head=1) == count(reward)
    save_adapter(tiny.policy, tmp_path / "adapter")
    assert read_architecture(tmp_path / "adapter") == read_architecture(tiny.policy)
    with pytest.raises(OSError, match="config.json"):
        read_architecture(tmp_path)


QWEN = Architecture(
    model_type="qwen2", vocab=151936, hidden=896, intermediate=4864, layers=24, heads=14, kv_heads=2, head_dim=64,
    tied=True, qkv_bias=True, mlp_bias=False,
)  # fmt: skip


def test_parts_grow_with_batch_length_and_dtype():
    base = SFTConfig(per_device_batch_size=2, max_length=512, dtype="bfloat16")
    small = estimate_memory(base, QWEN)
    doubled_batch = estimate_memory(replace(base, per_device_batch_size=4), QWEN)
    doubled_length = estimate_memory(replace(base, max_length=1024), QWEN)
    for bigger in (doubled_batch, doubled_length):
        assert bigger.activations == 2 * small.activations and bigger.logits == 2 * small.logits
        assert (bigger.weights, bigger.trainable) == (small.weights, small.trainable)
    wide = estimate_memory(replace(base, dtype="float32"), QWEN)
    assert wide.weights == 2 * small.weights and wide.activations == 2 * small.activations
    assert small.logits > small.weights  # Qwen's 152k vocabulary: the logits outweigh a 0.5B model at 2 × 512 tokens


def test_settings_that_save_memory_lower_the_estimate():
    base = DPOConfig(per_device_batch_size=4, max_length=1024, dtype="bfloat16")
    full = estimate_memory(base, QWEN)
    assert estimate_memory(replace(base, activation_checkpointing=True), QWEN).activations < full.activations / 5
    four_bit = estimate_memory(replace(base, load_in_4bit=True), QWEN)
    assert four_bit.weights < full.weights / 2
    whole = estimate_memory(replace(base, use_lora=False), QWEN)
    # Full fine-tuning: float32 master weights, 12 bytes of gradient and moments each, and a reference copy.
    assert whole.weights == QWEN.parameters() * 4 and whole.trainable == QWEN.parameters() * 12
    assert whole.extra_models == QWEN.parameters() * 2 and whole.total > full.total
    sharded = estimate_memory(replace(base, use_lora=False), QWEN, shards=4)
    assert sharded.weights == whole.weights // 4 and sharded.activations == whole.activations


def test_ppo_adds_the_reward_model_and_rollout_cache_and_reward_scores_pairs():
    ppo = estimate_memory(PPOConfig(dtype="bfloat16"), QWEN)
    assert ppo.extra_models > QWEN.parameters(head=1) * 2
    bigger_reward = replace(QWEN, layers=48)
    assert estimate_memory(PPOConfig(dtype="bfloat16"), QWEN, reward_arch=bigger_reward).extra_models > ppo.extra_models
    # The KL run-away watch keeps two copies of the adapter: none without a stop.
    unwatched = estimate_memory(PPOConfig(dtype="bfloat16", kl_stop=None), QWEN)
    adapter = QWEN.adapter_parameters(PPOConfig()) + QWEN.hidden + 1
    assert ppo.extra_models - unwatched.extra_models == 2 * adapter * 4
    reward = estimate_memory(RewardConfig(dtype="bfloat16"), QWEN)
    assert reward.logits < GIB / 1000  # one score per sequence, no vocabulary
    assert reward.parts()[0][1] == max(size for _, size in reward.parts())


@pytest.mark.parametrize(
    "sizes", [{"hidden_size": 256, "intermediate_size": 688}, {"hidden_size": 512, "intermediate_size": 1376}]
)
def test_activations_are_near_what_torch_saves_for_backward(sizes):
    """The estimate's activations against the bytes autograd keeps for a LoRA Llama's backward (CPU, float32)."""
    config = {"model_type": "llama", "vocab_size": 256, "num_hidden_layers": 2, "num_attention_heads": 8,
              "num_key_value_heads": 4, "tie_word_embeddings": True, **sizes}  # fmt: skip
    batch, length = 2, 128
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**config), attn_implementation="sdpa")
    model = get_peft_model(model, LoraConfig(r=8, target_modules="all-linear", lora_dropout=0.05)).train()
    ids = torch.randint(0, config["vocab_size"], (batch, length))
    storages = {}

    def keep(tensor):
        storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor):
        model(input_ids=ids, labels=ids)
    logits = batch * length * config["vocab_size"] * 4 * 2  # the logits and their log-softmax
    saved = sum(storages.values()) - logits
    stage = SFTConfig(dtype="float32", per_device_batch_size=batch, max_length=length)
    estimate = estimate_memory(stage, Architecture.from_config(config)).activations
    assert 0.75 < estimate / saved < 1.25, (estimate, saved)


def test_kto_counts_each_answer_with_its_mismatched_one_and_a_whole_models_reference_as_dpo_does():
    settings = {"per_device_batch_size": 4, "max_length": 1024, "dtype": "bfloat16"}
    for use_lora in (True, False):
        kto = estimate_memory(KTOConfig(use_lora=use_lora, **settings), QWEN)
        assert kto == estimate_memory(DPOConfig(use_lora=use_lora, **settings), QWEN)
    assert kto.extra_models == QWEN.parameters() * 2  # full fine-tuning: the frozen reference copy


def test_best_of_n_counts_sfts_training_and_the_reward_model_and_cache_of_its_sampling():
    best_of_n = estimate_memory(BestOfNConfig(dtype="bfloat16"), QWEN)
    sft = estimate_memory(SFTConfig(dtype="bfloat16"), QWEN)
    assert (best_of_n.weights, best_of_n.activations, best_of_n.logits) == (sft.weights, sft.activations, sft.logits)
    assert best_of_n.extra_models > QWEN.parameters(head=1) * 2 and sft.extra_models == 0
    more = estimate_memory(BestOfNConfig(dtype="bfloat16", sample_batch_size=64), QWEN)
    assert more.extra_models > best_of_n.extra_models


def test_a_lora_stage_continuing_an_adapter_adds_the_frozen_copy_it_keeps_as_its_reference(tiny, tmp_path):
    from tests.training.conftest import save_adapter

    adapter = str(save_adapter(tiny.policy, tmp_path / "adapter"))
    arch = read_architecture(tiny.policy)
    for stage in (DPOConfig, KTOConfig, PPOConfig):
        from_base, from_adapter = (
            estimate_memory(stage(model_name_or_path=path), arch) for path in (tiny.policy, adapter)
        )
        assert from_adapter.extra_models - from_base.extra_models == arch.adapter_parameters(stage()) * 4
    # SFT has no reference; a full fine-tune merges the adapter into its base (and copies the whole model).
    assert estimate_memory(SFTConfig(model_name_or_path=adapter), arch) == estimate_memory(SFTConfig(), arch)
    whole = DPOConfig(model_name_or_path=adapter, use_lora=False)
    assert estimate_memory(whole, arch) == estimate_memory(replace(whole, model_name_or_path=str(tiny.policy)), arch)
