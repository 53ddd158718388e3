"""An estimate of a stage's peak GPU memory per device, from the base's config.json and the stage's config alone.

No torch and no weights: the launch page calls it in the web process before a round is queued, to show what a round
needs and to refuse one that cannot fit the GPUs the workers have reported. It is an estimate in the spirit of
"weights + gradients + optimiser state + activations + logits", good to a few tens of percent, not a profiler:

- weights in the dtype they load in (the frozen base under LoRA in `dtype`, bfloat16 for auto since it runs on a
  GPU; a full fine-tune in float32 master weights; load_in_4bit ~0.5 byte per linear weight plus its quant state);
- the trainable parameters (LoRA r·(in + out) per targeted linear, all of them when use_lora is false) with their
  float32 gradients and AdamW's two float32 moments;
- activations kept for backward, per layer, for batch × length (only each layer's input under activation
  checkpointing, plus one layer recomputed at a time), with SDPA / flash attention (no length² scores);
- the logits, batch × length × vocab in float32 with their gradient, which dominate at Qwen's 152k vocabulary;
- per stage: the reward model's pairs (2 × batch, one score each); DPO's pairs and its reference pass (LoRA: the
  same weights with the adapter off; full fine-tune: a second copy of the model); PPO's frozen reward model (its
  own config), value head and rollout KV cache; RLOO's and GRPO's the same without the value head, their reference
  being the adapter off (LoRA is required), the KV cache of a generation batch of every response of the step. A
  LoRA stage continuing a policy that is an adapter adds a frozen float32 copy of it: its reference.

`shards` divides weights, gradients and optimiser state (ZeRO-3 / FSDP over that many GPUs); activations and logits
stay per device.
"""

import json
from dataclasses import dataclass, fields
from pathlib import Path

from training.engine.config import (
    BaseConfig,
    BestOfNConfig,
    DPOConfig,
    KTOConfig,
    OnlineConfig,
    PPOConfig,
    RewardConfig,
    SFTConfig,
)
from training.engine.model_files import adapter_base, is_adapter

GIB = 1024**3
# What the CUDA context, cuBLAS workspaces and the caching allocator's fragmentation take before any tensor.
CUDA_OVERHEAD_BYTES = int(0.8 * GIB)
BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "auto": 2}  # auto is bfloat16 on the GPUs that run rounds
# NF4: 4 bits a weight, plus a float32 absmax per block of 64, itself quantised to 8 bits (double quantisation).
FOUR_BIT_BYTES = 0.5 + 1 / 64 + 4 / (64 * 256)
ADAM_BYTES = 4 + 4 + 4  # float32 gradient and AdamW's two float32 moments, per trainable parameter
# Elements a decoder layer keeps for backward per token, in units of hidden and intermediate size: the norms' inputs
# (and their float32 copies), q, k, v, the attention output, gate, up, act(gate), act·up, and LoRA's dropout copies
# of every targeted input. Fitted to what torch's saved-tensor hooks count for a LoRA (all-linear, dropout 0.05)
# Llama under SDPA on the CPU: 24 h + 6 i is within 20% of it at i = 2.7 h (tests/training/test_memory.py).
HIDDEN_PER_LAYER, INTERMEDIATE_PER_LAYER = 24, 6
# The modules IA³ scales where PEFT's default is not Llama's k_proj, v_proj, down_proj.
IA3_SCALED = {
    "qwen2": ["q_proj", "v_proj", "down_proj"],
    "qwen3": ["q_proj", "v_proj", "down_proj"],
    "gemma": ["q_proj", "v_proj", "down_proj"],
    "phi3": ["qkv_proj", "down_proj"],
}


@dataclass(frozen=True)
class Architecture:
    """The sizes that set a decoder's parameter count and memory, from config.json."""

    model_type: str
    vocab: int
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    tied: bool
    qkv_bias: bool  # Qwen2's q, k, v projections have biases
    mlp_bias: bool

    @classmethod
    def from_config(cls, config: dict) -> "Architecture":
        config = config.get("text_config", config)  # a multimodal config's language model
        hidden, heads = config["hidden_size"], config["num_attention_heads"]
        return cls(
            model_type=config.get("model_type", ""),
            vocab=config["vocab_size"],
            hidden=hidden,
            intermediate=config["intermediate_size"],
            layers=config["num_hidden_layers"],
            heads=heads,
            kv_heads=config.get("num_key_value_heads") or heads,
            head_dim=config.get("head_dim") or hidden // heads,
            tied=config.get("tie_word_embeddings", True),
            qkv_bias=config.get("model_type") == "qwen2" or bool(config.get("attention_bias")),
            mlp_bias=bool(config.get("mlp_bias")),
        )

    def linears(self) -> dict[str, tuple[int, int]]:
        """Each decoder layer's linears by name: (in features, out features). Phi-3 fuses q, k, v and gate, up."""
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        h, i = self.hidden, self.intermediate
        if self.model_type == "phi3":
            return {"qkv_proj": (h, q + 2 * kv), "o_proj": (q, h), "gate_up_proj": (h, 2 * i), "down_proj": (i, h)}
        return {
            "q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
            "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h),
        }  # fmt: skip

    def linear_params(self) -> int:
        """The decoder layers' linear weights (what 4-bit loading quantises)."""
        return self.layers * sum(n_in * n_out for n_in, n_out in self.linears().values())

    def parameters(self, *, head: int | None = None) -> int:
        """All parameters of the causal LM; head: outputs of a classifier's score head instead of the LM head."""
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        biases = (q + 2 * kv if self.qkv_bias else 0) + (2 * self.intermediate + self.hidden if self.mlp_bias else 0)
        per_layer = biases + 2 * self.hidden  # two RMSNorms
        embeddings = self.vocab * self.hidden
        lm_head = 0 if self.tied else self.vocab * self.hidden
        output = self.hidden * head if head is not None else lm_head
        return self.linear_params() + self.layers * per_layer + embeddings + output + self.hidden  # final norm

    def adapter_parameters(self, config: BaseConfig) -> int:
        """What an adapter trains (LoRA, prompt tuning or IA³), as PEFT counts it."""
        if config.adapter == "prompt_tuning":
            return config.num_virtual_tokens * self.hidden
        linears = self.linears()
        if config.adapter == "ia3":  # PEFT's defaults (common.IA3_MODULES for Phi-3): scale down_proj's input too
            scaled = IA3_SCALED.get(self.model_type, ["k_proj", "v_proj", "down_proj"])
            return self.layers * sum(linears[n][0] if n == "down_proj" else linears[n][1] for n in scaled)
        names = config.lora_target_modules.strip()
        targets = linears if names == "all-linear" else [n.strip() for n in names.split(",")]
        return self.layers * sum(config.lora_r * sum(linears[n]) for n in targets if n in linears)


def read_architecture(model: str | Path) -> Architecture:
    """The architecture of a local model folder, or of an adapter folder's base; OSError when there is none to read."""
    path = Path(model)
    if is_adapter(path):
        path = Path(adapter_base(path))
    try:
        config = json.loads((path / "config.json").read_text())
        return Architecture.from_config(config)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise OSError(f"{model}: no config.json with a decoder's sizes to estimate memory from ({error})") from None


@dataclass(frozen=True)
class MemoryEstimate:
    """Peak bytes per device, by part; `total` is their sum."""

    weights: int
    trainable: int  # gradients and optimiser state of what trains (and the adapter's own weights)
    activations: int
    logits: int
    extra_models: int  # DPO's full-fine-tune reference, PPO's reward model and rollout KV cache
    cuda_overhead: int = CUDA_OVERHEAD_BYTES

    @property
    def total(self) -> int:
        return sum(getattr(self, f.name) for f in fields(self))

    def parts(self) -> list[tuple[str, int]]:
        """(part, bytes) for the page, the largest first, leaving out what is zero."""
        named = [(PART_NAMES[f.name], getattr(self, f.name)) for f in fields(self)]
        return sorted(((name, size) for name, size in named if size), key=lambda part: -part[1])


PART_NAMES = {
    "weights": "Weights",
    "trainable": "Trained weights' gradients and AdamW state",
    "activations": "Activations (batch × length)",
    "logits": "Logits (batch × length × vocabulary)",
    "extra_models": "Reference or reward model, value head, rollout cache",
    "cuda_overhead": "CUDA context and allocator",
}


def estimate_memory(
    config: BaseConfig, arch: Architecture, *, reward_arch: Architecture | None = None, shards: int = 1
) -> MemoryEstimate:
    """Peak GPU bytes per device to train `config`'s stage on a model of `arch` (PPO: with a reward model of
    `reward_arch`, the policy's own when not given), its model state split over `shards` GPUs (ZeRO-3 / FSDP)."""
    compute_bytes = BYTES[config.dtype]
    params = arch.parameters(head=1 if isinstance(config, RewardConfig) else None)
    if config.use_lora:
        weights = _frozen_weights(arch, params, config)
        trainable = arch.adapter_parameters(config)
        if isinstance(config, RewardConfig):
            trainable += arch.hidden  # the score head, which PEFT trains beside the adapter (modules_to_save)
        trainable_bytes = trainable * (4 + ADAM_BYTES)  # PEFT keeps the adapter in float32 under a half base
    else:
        weights = params * 4  # float32 master weights: AdamW's updates would vanish in bfloat16
        trainable_bytes = params * ADAM_BYTES

    # Sequences through the trained model per step: pairs for the reward model and DPO; KTO scores each answer
    # and a mismatched one (for its KL estimate); a reward model on ratings alone, one answer per row.
    single = isinstance(config, SFTConfig | PPOConfig | OnlineConfig) or getattr(config, "objective", "") == "ratings"
    sequences = config.per_device_batch_size * (1 if single else 2)
    tokens = sequences * config.max_length
    per_token = HIDDEN_PER_LAYER * arch.hidden + INTERMEDIATE_PER_LAYER * arch.intermediate
    if config.activation_checkpointing:  # each layer's input, and one layer's tensors while it is recomputed
        activations = tokens * compute_bytes * (arch.layers * arch.hidden + per_token)
    else:
        activations = tokens * compute_bytes * arch.layers * per_token
    vocab = 1 if isinstance(config, RewardConfig) else arch.vocab
    logits = tokens * vocab * (compute_bytes + 4 + 4)  # the head's output, its float32 upcast, and their gradient

    # Keys and values of every layer, per token, for the stages that sample while they train.
    kv_cache = 2 * arch.layers * arch.kv_heads * arch.head_dim * compute_bytes
    extra = 0
    if isinstance(config, DPOConfig | KTOConfig) and not config.use_lora:
        extra = arch.parameters() * compute_bytes  # the reference: a frozen second copy in the compute dtype
    if isinstance(config, PPOConfig):
        reward = reward_arch or arch
        extra = reward.parameters(head=1) * compute_bytes + (arch.hidden + 1) * (4 + ADAM_BYTES)  # + value head
        # The rollout samples rollout_batch_size prompts at once: keys and values of every layer, whole length.
        extra += config.rollout_batch_size * config.max_length * kv_cache
        if config.kl_limit is not None:  # the run-away watch's two float32 copies of the adapter (and value head)
            extra += 2 * (arch.adapter_parameters(config) + arch.hidden + 1) * 4
    if isinstance(config, OnlineConfig):
        reward = reward_arch or arch
        # TRL samples every response of the step at once (per_device_batch_size × gradient_accumulation_steps, whole
        # groups of num_generations), keys and values of every layer, whole length.
        responses = config.per_device_batch_size * config.gradient_accumulation_steps
        extra = reward.parameters(head=1) * compute_bytes + responses * config.max_length * kv_cache
    if isinstance(config, BestOfNConfig):
        # Sampling holds the policy, the reward model and the KV cache of sample_batch_size sequences before SFT
        # loads its own copy; counted on top of SFT's peak, an upper bound.
        reward = reward_arch or arch
        extra = reward.parameters(head=1) * compute_bytes + config.sample_batch_size * config.max_length * kv_cache
    stages_with_reference = DPOConfig | KTOConfig | PPOConfig | OnlineConfig
    if config.use_lora and isinstance(config, stages_with_reference) and is_adapter(config.model_name_or_path):
        # Continuing a policy that is an adapter, the reference is a frozen float32 copy of it beside the trained one.
        extra += arch.adapter_parameters(config) * 4
    return MemoryEstimate(
        weights=int(weights / shards),
        trainable=int(trainable_bytes / shards),
        activations=int(activations),
        logits=int(logits),
        extra_models=int(extra),
    )


def _frozen_weights(arch: Architecture, params: int, config: BaseConfig) -> float:
    compute_bytes = BYTES[config.dtype]
    if not config.load_in_4bit:
        return params * compute_bytes
    # bitsandbytes quantises the decoder's linears; embeddings, norms and the head stay in the compute dtype.
    linear = arch.linear_params()
    return linear * FOUR_BIT_BYTES + (params - linear) * compute_bytes


def size_text(size: int) -> str:
    """Bytes for people: GiB with one decimal, MiB below one GiB."""
    return f"{size / GIB:.1f} GiB" if size >= GIB else f"{size / 2**20:.0f} MiB"
