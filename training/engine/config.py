"""The stages' config dataclasses: what a round, the admin's launch form and the API read and check.

Imports nothing heavy (no torch, transformers, peft or TRL), so the web process checks a round's settings without
the training stack; each stage module (`reward.py`, `dpo.py`, `kto.py`, `sft.py`, `ppo.py`, `generate.py`) takes its
config from here. `from_dict` turns JSON, `--set key=value` or a form into a config and names the field it refuses.
"""

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Self

DTYPE_NAMES = ("float32", "bfloat16", "float16")
# PEFT methods a stage can train (with use_lora): LoRA, prompt tuning (learned virtual tokens before the input) and
# IA³ (learned scales of the keys, values and feed-forward activations).
ADAPTERS = ("lora", "prompt_tuning", "ia3")
SERVER_KINDS = ("vllm", "transformers")  # inference servers a round can sample through (training/engine/serve.py)
# How a stage runs: single in the worker's own process; the others under `accelerate launch` with a preset from
# training/engine/launch/<name>.yaml (data parallel, DeepSpeed ZeRO-2/3, FSDP2): see training/engine/launcher.py.
LAUNCH_MODES = ("single", "ddp", "zero2", "zero3", "fsdp2")


@dataclass
class Settings:
    """A config dataclass's plumbing: range checks on construction, and from_dict / to_dict."""

    def __post_init__(self) -> None:
        for name, ok, rule in self.rules():
            if not ok:
                raise ValueError(f"{name}: {rule}, got {getattr(self, name)!r}")

    def rules(self) -> list[tuple[str, bool, str]]:
        """(field, holds, what it must be): the range checks; a subclass adds its own."""
        return []

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        """A config from JSON, `--set key=value` or a form: strings become the field's type; errors name the field."""
        hints = typing.get_type_hints(cls)
        known = {f.name for f in dataclasses.fields(cls)}
        values = {}
        for name, value in data.items():
            if name not in known:
                raise ValueError(f"{name}: unknown setting for {cls.__name__} (known: {', '.join(sorted(known))})")
            values[name] = _coerce(name, value, hints[name])
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class BaseConfig(Settings):
    model_name_or_path: str = ""  # a hub id or a local path (a full model or a PEFT adapter directory)
    dtype: str = "auto"  # auto: bfloat16 on a GPU that has it, float32 otherwise; or float32, bfloat16, float16
    use_lora: bool = True  # train a small adapter; the base stays frozen and doubles as the reference model
    adapter: str = "lora"  # with use_lora, which kind: lora, prompt_tuning or ia3 (one of ADAPTERS)
    lora_r: int = 16  # adapter rank: capacity against memory
    lora_alpha: int = 32  # the adapter's scale is alpha / r; 2r is the usual choice
    lora_dropout: float = 0.05  # a little regularisation on small preference sets
    lora_target_modules: str = "all-linear"  # "all-linear" or comma-separated module names (q_proj,v_proj)
    num_virtual_tokens: int = 8  # prompt tuning: learned tokens put before every input (randomly initialised)
    load_in_4bit: bool = False  # QLoRA: the frozen base in 4-bit NF4 (bitsandbytes, CUDA only); needs use_lora
    learning_rate: float = 1e-4  # suits LoRA; full fine-tuning wants about 1e-5
    max_steps: int = -1  # optimisation steps; -1 runs num_train_epochs instead
    num_train_epochs: float = 1.0  # one pass: preference data overfits quickly
    per_device_batch_size: int = 4  # per GPU (or the CPU); multiply by accumulation and GPUs for the real batch
    gradient_accumulation_steps: int = 1  # raises the effective batch without more memory
    max_length: int = 1024  # tokens per sequence (prompt + response): longer ones are truncated (RM: left out)
    eval_fraction: float = 0.1  # share of prompts held out for the eval report; deterministic for a seed
    seed: int = 42  # data split, shuffling, LoRA init and sampling all follow it
    logging_steps: int = 1  # how often metrics reach the progress callback (and the round's charts)
    save_steps: int = 50  # checkpoint interval; a resumed round loses at most this many steps
    resume: bool = False  # continue from the latest checkpoint in the output directory, if there is one
    activation_checkpointing: bool = False  # recompute activations in backward: less memory, about 20% slower
    launch: str = "single"  # one of LAUNCH_MODES: single (in the worker's process) or accelerate launch's preset
    num_processes: int = 0  # launched stages: processes per machine; 0 = every GPU the worker sees (1 without GPU)

    def rules(self) -> list[tuple[str, bool, str]]:
        """(field, holds, what it must be): the range checks; a stage's config adds its own."""
        return [
            *super().rules(),
            ("dtype", self.dtype in ("auto", *DTYPE_NAMES), f"must be one of auto, {', '.join(DTYPE_NAMES)}"),
            ("adapter", self.adapter in ADAPTERS, f"must be one of {', '.join(ADAPTERS)}"),
            ("lora_r", self.lora_r > 0, "must be > 0"),
            ("lora_alpha", self.lora_alpha > 0, "must be > 0"),
            ("lora_dropout", 0 <= self.lora_dropout < 1, "must be in [0, 1)"),
            ("lora_target_modules", bool(self.lora_target_modules.strip()), "must name modules or be all-linear"),
            ("num_virtual_tokens", self.num_virtual_tokens > 0, "must be > 0"),
            # A 4-bit base cannot be trained itself: only an adapter on it.
            ("load_in_4bit", not self.load_in_4bit or self.use_lora, "needs use_lora=true (QLoRA trains an adapter)"),
            ("learning_rate", self.learning_rate > 0, "must be > 0"),
            ("max_steps", self.max_steps == -1 or self.max_steps > 0, "must be > 0, or -1 to use epochs"),
            ("num_train_epochs", self.num_train_epochs > 0, "must be > 0"),
            ("per_device_batch_size", self.per_device_batch_size > 0, "must be > 0"),
            ("gradient_accumulation_steps", self.gradient_accumulation_steps > 0, "must be > 0"),
            ("max_length", self.max_length > 0, "must be > 0"),
            ("eval_fraction", 0 <= self.eval_fraction < 1, "must be in [0, 1)"),
            ("seed", self.seed >= 0, "must be >= 0"),
            ("logging_steps", self.logging_steps > 0, "must be > 0"),
            ("save_steps", self.save_steps > 0, "must be > 0"),
            ("launch", self.launch in LAUNCH_MODES, f"must be one of {', '.join(LAUNCH_MODES)}"),
            ("num_processes", self.num_processes >= 0, "must be >= 0 (0: every GPU the worker sees)"),
            ("num_processes", self.num_processes <= 1 or self.launch != "single", "needs a launch other than single"),
        ]


def _coerce(name: str, value: Any, kind: Any) -> Any:
    if isinstance(kind, types.UnionType):  # `float | None`: null, "" and "none" mean None
        if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none", "null")):
            return None
        (kind,) = [arg for arg in typing.get_args(kind) if arg is not type(None)]
    try:
        return _CONVERT[kind](value)
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"{name}: must be {_EXPECTED[kind]}, got {value!r}") from None


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):  # --set flags and HTML checkboxes ("on")
        return _BOOLEANS[value.strip().lower()]
    raise TypeError


def _to_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise TypeError
    if isinstance(value, float) and not value.is_integer():
        raise ValueError
    return int(value)


def _to_float(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise TypeError
    number = float(value)
    if not math.isfinite(number):
        raise ValueError
    return number


def _to_str(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError
    return value.strip()


_BOOLEANS = {"true": True, "1": True, "yes": True, "on": True, "false": False, "0": False, "no": False, "off": False}
_CONVERT = {bool: _to_bool, int: _to_int, float: _to_float, str: _to_str}
_EXPECTED = {bool: "true or false", int: "an integer", float: "a finite number", str: "a string"}


# What a reward model learns from: preference pairs (Bradley-Terry), rated answers (a regression head per output:
# the score and each label), or both in one model.
OBJECTIVES = ("pairs", "ratings", "both")
SCORE_OUTPUT = "score"  # the name label_weights gives the rating output, beside the project's labels


def parse_weights(text: str) -> dict[str, float]:
    """label_weights as {output: weight}: "unsafe:-2, helpful:1" (score names the rating; others, labels)."""
    weights = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, value = item.rpartition(":")
        if not sep or not name.strip() or name.strip() in weights:
            raise ValueError(f"{item!r}")
        weights[name.strip()] = _to_float(value)
    return weights


def output_weights(label_weights: str, labels: list[str]) -> list[float]:
    """The weight of each output of a rating reward model, [score, *labels]: 1 for the score and 0 for a label
    unless label_weights names it; ValueError names a weight for an output the model does not have."""
    given = parse_weights(label_weights)
    outputs = [SCORE_OUTPUT, *labels]
    if unknown := [name for name in given if name not in outputs]:
        raise ValueError(
            f"label_weights: {unknown[0]!r} is not a label of this project (its outputs: {', '.join(outputs)})"
        )
    return [given.get(SCORE_OUTPUT, 1.0), *(given.get(label, 0.0) for label in labels)]


def _parses(text: str) -> bool:
    try:
        parse_weights(text)
    except (TypeError, ValueError):
        return False
    return True


@dataclass
class RewardConfig(BaseConfig):
    learning_rate: float = 5e-5  # reward models overfit a preference set within an epoch at LoRA's usual 1e-4
    use_margin: bool = True  # pairs that annotators agreed on strongly should be separated by more
    center_rewards_coefficient: float = 0.0  # > 0 pulls rewards towards 0 mean (Eisenstein et al.); PPO likes that
    objective: str = "pairs"  # one of OBJECTIVES: pairs (the pairs export), ratings (the unpaired one) or both
    # ratings/both: the reward is Σ weight × predicted output, the outputs being the score on [0, 1] and each label's
    # share of raters ticking it, e.g. "score:1, unsafe:-2"; the score weighs 1 and a label 0 unless named here
    label_weights: str = ""
    pairs_weight: float = 1.0  # both: the Bradley-Terry loss on pairs counts this much beside the rating losses

    def rules(self) -> list[tuple[str, bool, str]]:
        return [
            *super().rules(),
            ("center_rewards_coefficient", self.center_rewards_coefficient >= 0, "must be >= 0"),
            ("objective", self.objective in OBJECTIVES, f"must be one of {', '.join(OBJECTIVES)}"),
            (
                "label_weights",
                _parses(self.label_weights),
                "must be name:weight pairs separated by commas, each name once (score:1, unsafe:-2)",
            ),
            (
                "label_weights",
                self.objective != "pairs" or not self.label_weights,
                "needs objective=ratings or both (a model trained on pairs alone has no label outputs)",
            ),
            ("pairs_weight", self.pairs_weight > 0, "must be > 0"),
            # PEFT feeds a prompt-tuned model embeddings, not token ids, so the classifier cannot find the last real
            # token and scores the last position, padding included.
            (
                "adapter",
                self.adapter != "prompt_tuning",
                "cannot be prompt_tuning for a reward model (use lora or ia3)",
            ),
        ]


# TRL's DPO losses a round offers (sigmoid is the paper's; ipo, hinge and robust are common variants). All take
# beta; robust and exo_pair also take label_smoothing, the others ignore it.
LOSS_TYPES = (
    "sigmoid", "hinge", "ipo", "robust", "exo_pair", "nca_pair", "bco_pair", "sppo_hard", "apo_zero", "apo_down",
)  # fmt: skip
SMOOTHED_LOSS_TYPES = ("robust", "exo_pair")


@dataclass
class DPOConfig(BaseConfig):
    learning_rate: float = 5e-5  # DPO drifts easily; lower than SFT's LoRA rate
    beta: float = 0.1  # the KL leash to the reference: smaller lets the policy move further
    loss_type: str = "sigmoid"  # one of LOSS_TYPES
    # robust and exo_pair only: ε, the share of preference labels taken to be flipped (their papers: 0.1, 1e-3)
    label_smoothing: float = 0.0
    precompute_ref_log_probs: bool = False  # score the reference once before training: faster steps, one more pass

    def rules(self) -> list[tuple[str, bool, str]]:
        return [
            *super().rules(),
            ("beta", self.beta > 0, "must be > 0"),
            ("loss_type", self.loss_type in LOSS_TYPES, f"must be one of {', '.join(LOSS_TYPES)}"),
            # Past 0.5 the flipped labels would be the majority: the loss would prefer the rejected answers.
            ("label_smoothing", 0 <= self.label_smoothing < 0.5, "must be in [0, 0.5)"),
            # EXO's target distribution is (1 - ε, ε) and its loss takes log ε: TRL refuses ε = 0.
            (
                "label_smoothing",
                self.loss_type != "exo_pair" or self.label_smoothing > 0,
                "must be > 0 for loss_type=exo_pair (the EXO paper uses 1e-3)",
            ),
            (
                "label_smoothing",
                self.loss_type != "robust" or self.label_smoothing > 0,
                "must be > 0 for loss_type=robust (at 0 it is exactly sigmoid; the robust DPO paper uses 0.1)",
            ),
            (
                "label_smoothing",
                self.loss_type in SMOOTHED_LOSS_TYPES or self.label_smoothing == 0,
                f"must be 0 for loss_type={self.loss_type}, which ignores it (only robust and exo_pair read it)",
            ),
        ]


@dataclass
class KTOConfig(BaseConfig):
    learning_rate: float = 5e-5  # as DPO's: the same implicit reward, the same drift
    beta: float = 0.1  # the KL leash to the reference: smaller lets the policy move further
    # λ_D and λ_U: with unequal counts, weigh so that λ_D·desirable / (λ_U·undesirable) lies in [1, 4/3] (the paper's).
    desirable_weight: float = 1.0
    undesirable_weight: float = 1.0

    def rules(self) -> list[tuple[str, bool, str]]:
        return [
            *super().rules(),
            ("beta", self.beta > 0, "must be > 0"),
            ("desirable_weight", self.desirable_weight > 0, "must be > 0"),
            ("undesirable_weight", self.undesirable_weight > 0, "must be > 0"),
        ]


@dataclass
class SFTConfig(BaseConfig):
    assistant_only_loss: bool = True  # learn the answers, not the users' prompts; off trains on whole transcripts


@dataclass
class PPOConfig(BaseConfig):
    # One PPO step samples per_device_batch_size × gradient_accumulation_steps × num_mini_batches prompts per
    # process, then makes ppo_epochs passes over them, one optimiser step per minibatch.
    max_new_tokens: int = 64  # response length cap; a response cut off here has no EOS and is penalised
    temperature: float = 1.0  # sampling temperature; the log-probs use the same one, so 1 samples π itself
    top_p: float = 1.0  # < 1 samples from the nucleus only, which the log-probs ignore: keep 1 unless text derails
    num_mini_batches: int = 1  # optimiser steps per PPO epoch over one rollout batch
    ppo_epochs: int = 4  # K: passes over each rollout batch; more reuses samples, but drifts off-policy
    cliprange: float = 0.2  # ε: how far π/π_old may move per rollout before the surrogate stops rewarding it
    cliprange_value: float = 0.2  # ε_v: the same for the value head, around its rollout-time estimates
    vf_coef: float = 0.1  # weight of the value loss beside the policy loss
    gamma: float = 1.0  # discount; 1 because the reward comes once, at the end of a short episode
    lam: float = 0.95  # GAE λ: lower trusts the value head more (less variance, more bias)
    whiten_advantages: bool = True  # zero mean, unit variance per batch: the step size stops tracking reward scale
    kl_coef: float = 0.05  # β of the per-token KL penalty (the starting β when adaptive)
    # The KL to the reference (this policy with its adapter off: the model under the adapter) that β is steered
    # toward, in nats per response (Σ_t log π(y_t) − log π_ref(y_t), the `kl` metric). 1 nat kept the loop
    # benchmark's ~13-token answers at 0.25 per token and varied (3 nats let them collapse onto one short answer:
    # BENCHMARKS.md); on longer answers it is a tight leash, loosen it there. None keeps β fixed at kl_coef.
    kl_target: float | None = 1.0
    # Samples over which the adaptive β moves by at most 20%. Ziegler et al.'s 10,000 barely moves β in a round of a
    # few hundred samples; 200 lets β move up to ×2.2 (or ÷2.2) over 800 samples, under 1% per step of 8 prompts.
    kl_horizon: int = 200
    missing_eos_penalty: float | None = -1.0  # added to the score of a response cut off without EOS; None: none
    reward_clip: float | None = None  # clip scores to ±this before anything else: reward models have outliers
    whiten_rewards: bool = False  # scale scores to unit variance per batch (mean kept): for badly scaled rewards
    max_grad_norm: float = 1.0  # gradient clipping: one bad batch must not wreck the adapter
    # Runaway: when a batch's KL stays above kl_stop × kl_target for kl_stop_steps steps in a row, the stage stops
    # and keeps the policy from before the run-away (the last one whose samples were under the limit); the round
    # succeeds with a warning. None never stops on KL; nor does a fixed β (kl_target none), having no target. 2, not
    # 3: on the loop benchmark 3 let round 2 sit at 2-3.7 nats for tens of steps and collapse (BENCHMARKS.md).
    kl_stop: float | None = 2.0
    kl_stop_steps: int = 3  # consecutive steps over the limit: one noisy batch of 8 is not a run-away

    @property
    def kl_limit(self) -> float | None:
        """The KL per response above which a step counts toward a run-away stop; None when there is none."""
        return None if self.kl_stop is None or self.kl_target is None else self.kl_stop * self.kl_target

    def rules(self) -> list[tuple[str, bool, str]]:
        return [
            *super().rules(),
            ("use_lora", self.use_lora, "must be true: the reference model is the policy with its adapter disabled"),
            # The virtual tokens lengthen the policy's logits and hidden states past the sampled tokens they score.
            ("adapter", self.adapter != "prompt_tuning", "cannot be prompt_tuning for PPO (use lora or ia3)"),
            ("max_new_tokens", 0 < self.max_new_tokens < self.max_length, "must be > 0 and < max_length"),
            ("temperature", self.temperature > 0, "must be > 0"),
            ("top_p", 0 < self.top_p <= 1, "must be in (0, 1]"),
            ("num_mini_batches", self.num_mini_batches > 0, "must be > 0"),
            ("ppo_epochs", self.ppo_epochs > 0, "must be > 0"),
            ("cliprange", self.cliprange > 0, "must be > 0"),
            ("cliprange_value", self.cliprange_value > 0, "must be > 0"),
            ("vf_coef", self.vf_coef >= 0, "must be >= 0"),
            ("gamma", 0 <= self.gamma <= 1, "must be in [0, 1]"),
            ("lam", 0 <= self.lam <= 1, "must be in [0, 1]"),
            ("kl_coef", self.kl_coef >= 0, "must be >= 0"),
            ("kl_target", self.kl_target is None or self.kl_target > 0, "must be > 0, or none for a fixed β"),
            ("kl_horizon", self.kl_horizon > 0, "must be > 0"),
            ("kl_stop", self.kl_stop is None or self.kl_stop > 1, "must be > 1 (a multiple of kl_target), or none"),
            ("kl_stop_steps", self.kl_stop_steps > 0, "must be > 0"),
            # ZeRO-3 keeps each parameter partitioned outside forward: a process's copy of its weights is empty, and
            # putting back the policy from before a run-away would silently keep the current one.
            (
                "kl_stop",
                self.kl_stop is None or self.launch != "zero3",
                "must be none with launch=zero3 (it cannot put back the policy from before a run-away)",
            ),
            ("reward_clip", self.reward_clip is None or self.reward_clip > 0, "must be > 0, or none"),
            ("max_grad_norm", self.max_grad_norm > 0, "must be > 0"),
        ]

    @property
    def rollout_batch_size(self) -> int:
        """Prompts each process samples per PPO step."""
        return self.per_device_batch_size * self.gradient_accumulation_steps * self.num_mini_batches


@dataclass
class SampleConfig(Settings):
    """How a round samples its new policy for the annotation queue."""

    max_new_tokens: int = 128  # response length cap
    temperature: float = 1.0  # 1 samples the policy as it is; 0 decodes greedily (no variety between samples)
    top_p: float = 1.0  # < 1 keeps to the nucleus: fewer derailed answers, less variety
    batch_size: int = 8  # sequences generated together
    seed: int = 0  # the same seed, batch size and device give the same samples
    # An OpenAI-compatible inference server to sample through (training/engine/serve.py), its base URL ending in
    # /v1; empty samples in the worker with `generate`. The server names the policy by its path, which it must see.
    server_url: str = ""
    server_kind: str = "vllm"  # vllm or transformers (transformers serve): how prompts, stop ids and adapters travel
    server_api_key_env: str = ""  # the environment variable holding the server's API key (the key is never stored)
    server_concurrency: int = 8  # requests in flight at once: vLLM batches them; more than its batch only queues
    server_timeout: float = 600.0  # seconds one request may take before it counts as failed (and is retried)

    def rules(self) -> list[tuple[str, bool, str]]:
        return [
            ("max_new_tokens", self.max_new_tokens > 0, "must be > 0"),
            ("temperature", self.temperature >= 0, "must be >= 0"),
            ("top_p", 0 < self.top_p <= 1, "must be in (0, 1]"),
            ("batch_size", self.batch_size > 0, "must be > 0"),
            ("seed", self.seed >= 0, "must be >= 0"),
            (
                "server_url",
                not self.server_url or self.server_url.startswith(("http://", "https://")),
                "must be http(s)://…",
            ),
            ("server_kind", self.server_kind in SERVER_KINDS, f"must be one of {', '.join(SERVER_KINDS)}"),
            ("server_concurrency", self.server_concurrency > 0, "must be > 0"),
            ("server_timeout", self.server_timeout > 0, "must be > 0"),
        ]


# Online RL on TRL's trainers (online.py) -------------------------------------------------------------------------
# GRPO's losses a round offers: how token losses are averaged (dapo: over the tokens of the whole accumulated batch,
# no length bias; grpo: per sequence first, the paper's; dr_grpo: by a constant; bnpo: over the local batch's tokens).
GRPO_LOSS_TYPES = ("dapo", "grpo", "dr_grpo", "bnpo")
SCALE_REWARDS = ("group", "batch", "none")  # GRPO divides advantages by the std of the group, the batch, or nothing


@dataclass
class OnlineConfig(BaseConfig):
    """What RLOO and GRPO share: each step samples num_generations responses to every prompt of the batch from the
    policy, scores them with the reward model, and compares each with its siblings (the group is the baseline: no
    value head). per_device_batch_size × gradient_accumulation_steps counts responses, not prompts."""

    num_generations: int = 4  # G: responses per prompt; the group each response's advantage is measured against
    gradient_accumulation_steps: int = 4  # with the batch of 4: 16 responses, 4 prompts per step (PPO's 4 prompts)
    max_new_tokens: int = 64  # response length cap; a response cut off here has no EOS and is penalised
    temperature: float = 1.0  # sampling temperature; the log-probs use the same one
    top_p: float = 1.0  # < 1 samples from the nucleus only: keep 1 unless text derails
    beta: float = 0.05  # the KL leash to the reference (the policy with its adapter off); 0 drops the reference
    num_iterations: int = 1  # μ: optimisation passes over each batch of samples; more reuses them, off-policy
    cliprange: float = 0.2  # ε: how far π/π_old may move per batch of samples before the clip stops rewarding it
    missing_eos_penalty: float | None = -1.0  # added to the score of a response cut off without EOS; None: none

    def rules(self) -> list[tuple[str, bool, str]]:
        responses = self.per_device_batch_size * self.gradient_accumulation_steps
        return [
            *super().rules(),
            # A full fine-tune would need a second copy of the model as its reference, and the eval report's KL
            # compares with the adapter off, as PPO's does.
            ("use_lora", self.use_lora, "must be true: the reference model is the policy with its adapter disabled"),
            # The virtual tokens lengthen the logits past the sampled tokens they score (as for PPO).
            ("adapter", self.adapter != "prompt_tuning", "cannot be prompt_tuning for online RL (use lora or ia3)"),
            ("num_generations", self.num_generations >= 2, "must be >= 2 (the other responses are the baseline)"),
            (
                "num_generations",
                responses % self.num_generations == 0,
                f"must divide per_device_batch_size × gradient_accumulation_steps = {responses} (whole groups per "
                "batch)",
            ),
            ("max_new_tokens", 0 < self.max_new_tokens < self.max_length, "must be > 0 and < max_length"),
            ("temperature", self.temperature > 0, "must be > 0"),
            ("top_p", 0 < self.top_p <= 1, "must be in (0, 1]"),
            ("beta", self.beta >= 0, "must be >= 0 (0: no KL term, no reference passes)"),
            ("num_iterations", self.num_iterations > 0, "must be > 0"),
            ("cliprange", self.cliprange > 0, "must be > 0"),
        ]


@dataclass
class RLOOConfig(OnlineConfig):
    """REINFORCE Leave-One-Out (Ahmadian et al., 2024): a response's advantage is its reward minus the mean of its
    G − 1 siblings'; the KL to the reference is taken out of the reward, per sequence."""

    normalize_advantages: bool = False  # scale the batch's advantages to unit variance: for badly scaled rewards


@dataclass
class GRPOConfig(OnlineConfig):
    """Group Relative Policy Optimization (Shao et al., 2024): a response's advantage is its reward minus its group's
    mean, scaled by scale_rewards; the KL to the reference is a term of the per-token loss."""

    beta: float = 0.04  # DeepSeekMath's; TRL's own default is 0 (no reference), which leaves a reward model free rein
    loss_type: str = "dapo"  # one of GRPO_LOSS_TYPES
    scale_rewards: str = "group"  # one of SCALE_REWARDS; none (Dr. GRPO) avoids favouring easy or hopeless prompts

    def rules(self) -> list[tuple[str, bool, str]]:
        return [
            *super().rules(),
            ("loss_type", self.loss_type in GRPO_LOSS_TYPES, f"must be one of {', '.join(GRPO_LOSS_TYPES)}"),
            ("scale_rewards", self.scale_rewards in SCALE_REWARDS, f"must be one of {', '.join(SCALE_REWARDS)}"),
        ]


@dataclass
class BestOfNConfig(SFTConfig):
    """Best-of-N (rejection-sampling fine-tuning): K samples per train prompt, SFT on the reward model's best.

    The SFT settings are the SFT stage's; its eval_fraction holds prompts out of sampling and training alike, and
    measures the result (mean reward and KL to the base policy on them)."""

    k: int = 4  # samples per prompt: the best of more is better (Llama 2 sampled up to tens), at K× the sampling
    max_new_tokens: int = 128  # answer length cap; an answer cut off here can still be the best
    temperature: float = 1.0  # 1 samples the policy as it is; variety between the K is what there is to choose from
    top_p: float = 1.0  # < 1 keeps to the nucleus: fewer derailed answers, less variety
    sample_batch_size: int = 16  # sequences generated (and scored) together; each prompt's K stay in one batch

    def rules(self) -> list[tuple[str, bool, str]]:
        return [
            *super().rules(),
            ("k", self.k >= 2, "must be >= 2 (one sample leaves nothing to choose from)"),
            ("max_new_tokens", 0 < self.max_new_tokens < self.max_length, "must be > 0 and < max_length"),
            # Greedy decoding would give K copies of one answer.
            ("temperature", self.temperature > 0, "must be > 0"),
            ("top_p", 0 < self.top_p <= 1, "must be in (0, 1]"),
            ("sample_batch_size", self.sample_batch_size > 0, "must be > 0"),
            ("launch", self.launch == "single", "must be single: best_of_n samples and trains in the worker's process"),
        ]

    def sft_config(self) -> SFTConfig:
        """The SFT stage's config from the same settings; it trains on every chosen answer (the prompts were split
        before sampling)."""
        fields = {f.name for f in dataclasses.fields(SFTConfig)}
        return SFTConfig(**{**{k: v for k, v in asdict(self).items() if k in fields}, "eval_fraction": 0.0})
