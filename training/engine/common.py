"""What every stage shares: the device and dtype, model loading, LoRA, data and progress.

A stage (`reward.py`, `dpo.py`, `sft.py`, `ppo.py`) takes a config dataclass built on `BaseConfig` (`config.py`), a
data file, an output directory and a `ProgressFn`, and returns a `StageResult`. Nothing here knows about Django: the
Celery task turns a database row into a config with `from_dict` and reads the result back.
"""

import json
import os
import random
import shutil
import types
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from peft import (
    IA3Config,
    LoraConfig,
    PeftConfig,
    PeftModel,
    PromptTuningConfig,
    TaskType,
    prepare_model_for_kbit_training,
)
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PrinterCallback,
    Trainer,
    TrainerCallback,
    TrainerControl,
    TrainerState,
    TrainingArguments,
)
from transformers.modeling_outputs import SequenceClassifierOutputWithPast
from transformers.trainer_utils import get_last_checkpoint
from transformers.utils import is_triton_available
from trl.trainer.utils import FusedCausalLMOutput, use_adapter

from training.engine.config import DTYPE_NAMES, BaseConfig
from training.engine.model_files import adapter_base, is_adapter, read_reward_head

# Called with (step, total_steps, metrics); returning True asks the stage to stop after the current step.
ProgressFn = Callable[[int, int, dict[str, float]], bool]

DTYPES = {name: getattr(torch, name) for name in DTYPE_NAMES}


@dataclass
class StageResult:
    output_dir: str  # the adapter (or full model) and tokenizer, loadable with from_pretrained
    steps: int  # optimisation steps done, counting those before a resume
    stopped: bool  # the progress callback asked to stop before the planned end
    metrics: dict[str, float]  # the final training metrics (train_loss, train_runtime, …)
    eval_report: dict[str, Any]  # what the held-out data says about the result; stage-specific keys
    warning: str = ""  # what the lead should know of a stage that ended on its own terms (PPO's KL run-away stop)


# Device and dtype -------------------------------------------------------------------------------------------------


def pick_device() -> torch.device:
    """CUDA if there is one (this process's GPU under `accelerate launch`), else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """auto: bfloat16 on a GPU that supports it (half the memory, no loss scaling), float32 everywhere else."""
    if name != "auto":
        return DTYPES[name]
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


# Loading ----------------------------------------------------------------------------------------------------------


def load_tokenizer(path: str | Path, *, padding_side: str = "right") -> PreTrainedTokenizerBase:
    """The tokenizer saved with a model or adapter; pad = eos when the model has none. Generation wants "left"."""
    if is_adapter(path) and not (Path(path) / "tokenizer_config.json").is_file():
        path = adapter_base(path)
    tokenizer = AutoTokenizer.from_pretrained(path, padding_side=padding_side)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(
    auto_class: type,
    config: BaseConfig,
    *,
    device: torch.device | None = None,
    is_trainable: bool = False,
    **kwargs: Any,
) -> PreTrainedModel | PeftModel:
    """The model at config.model_name_or_path as `auto_class`: a full model, or base + adapter for an adapter dir.

    An adapter loaded to train with LoRA stays an adapter and keeps training; loaded for anything else (full
    fine-tuning, inference) it is merged into its base, except prompt tuning, whose virtual tokens have no weights
    to merge into. Left on the CPU when no device is given: a Trainer places the model itself. load_in_4bit loads
    the base in 4-bit NF4 on the GPU (QLoRA), and refuses without one.
    """
    path = config.model_name_or_path
    device_for_dtype = device or pick_device()
    dtype = _load_dtype(config, device_for_dtype, is_trainable)
    if config.load_in_4bit:
        kwargs["quantization_config"] = _four_bit(device_for_dtype)
        kwargs["device_map"] = {"": device_for_dtype.index or 0}  # bitsandbytes places the weights itself
    base = auto_class.from_pretrained(adapter_base(path) if is_adapter(path) else path, dtype=dtype, **kwargs)
    if config.load_in_4bit and is_trainable:
        # Norms in float32, inputs that require grad (for checkpointing through frozen 4-bit layers).
        base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=config.activation_checkpointing)
    if not is_adapter(path):
        model = base
    else:
        if is_trainable and config.use_lora and PeftConfig.from_pretrained(path).is_prompt_learning:
            raise ValueError(
                f"model_name_or_path: {path} is a prompt-tuning adapter, which PEFT loads frozen and cannot train "
                "further: start the round from its base model"
            )
        model = PeftModel.from_pretrained(base, path, is_trainable=is_trainable and config.use_lora)
        if not (is_trainable and config.use_lora) and not model.peft_config["default"].is_prompt_learning:
            model = model.merge_and_unload()
    return model.to(device) if device is not None and not config.load_in_4bit else model


def _four_bit(device: torch.device) -> Any:
    """QLoRA's quantisation: NF4 weights, double quantisation, bfloat16 compute (Dettmers et al., 2023)."""
    if device.type != "cuda":
        raise ValueError("load_in_4bit: 4-bit weights (bitsandbytes) need a CUDA GPU, and this worker has none")
    from transformers import BitsAndBytesConfig  # imports bitsandbytes lazily: only GPU workers need it

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )


def load_policy(
    config: BaseConfig, *, device: torch.device | None = None, is_trainable: bool = False
) -> PreTrainedModel | PeftModel:
    """The causal LM to train or sample from (see load_model)."""
    return load_model(AutoModelForCausalLM, config, device=device, is_trainable=is_trainable)


# The name TRL gives the frozen copy of the adapter a stage continues (DPO, KTO, RLOO, GRPO); PPO names its own copy
# the same, so that `as_reference` (and PPO's eval report, which the online stages share) finds either.
REFERENCE_ADAPTER = "ref"


def as_reference(policy: PeftModel) -> AbstractContextManager:
    """π_ref for the forward passes inside: the round's starting policy. Continuing an adapter, the frozen copy of it
    (REFERENCE_ADAPTER); else the policy with its adapter off, which is the base it started from."""
    return use_adapter(policy, REFERENCE_ADAPTER if REFERENCE_ADAPTER in policy.peft_config else None)


def load_reward_model(path: str | Path, device: torch.device | None = None) -> PreTrainedModel:
    """A sequence classifier whose logit is the reward, read at each sequence's last real token (see
    `score_at_last_real_token`), frozen and in eval mode; an adapter is merged into its base. A model trained on
    ratings has an output per aspect (REWARD_HEAD_FILE): its head then returns their weighted sum (`WeightedOutputs`),
    so every consumer of `.logits[:, 0]` gets the one reward."""
    config = BaseConfig(model_name_or_path=str(path))
    head = read_reward_head(path)
    # With a head file, the base of an adapter may have a head of another size: the adapter carries the trained one.
    shape = {"num_labels": 1}
    if head is not None:
        shape = {"id2label": dict(enumerate(head["outputs"])), "ignore_mismatched_sizes": True}
    model = load_model(AutoModelForSequenceClassification, config, device=device or pick_device(), **shape)
    if head is not None:
        model.score = WeightedOutputs(model.score, head["weights"])
    return score_at_last_real_token(model).eval().requires_grad_(False)


class WeightedOutputs(torch.nn.Module):
    """A rating reward model's outputs as one reward: Σ_k w_k σ(z_k), σ(z_k) being the predicted score on [0, 1] or a
    label's predicted share of raters ticking it (the scale they were trained on, so that a weight reads as "a whole
    scale's worth"). (B, K) logits -> (B, 1)."""

    def __init__(self, head: torch.nn.Module, weights: list[float]) -> None:
        super().__init__()
        self.head = head
        self.register_buffer("weights", torch.tensor(weights, dtype=torch.float32, device=head.weight.device))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return (torch.sigmoid(self.head(hidden).float()) @ self.weights).unsqueeze(-1)


def score_at_last_real_token(model: PreTrainedModel | PeftModel) -> PreTrainedModel | PeftModel:
    """Make a sequence classifier read each sequence at the last position its attention mask covers, whichever side
    pads; reward training, scoring, PPO and evaluation all go through it.

    Transformers' classifiers read the last token that is not the pad id: where pad = eos and the chat template ends
    the conversation with eos (Phi-3's <|end|><|endoftext|>), or PPO's response ends on it, that is the token before.
    The patch is on the instance, so a PEFT wrapper (and DDP around it) still calls it through the model's forward.
    """
    classifier = model.get_base_model() if isinstance(model, PeftModel) else model
    classifier.forward = types.MethodType(_forward_at_last_real_token, classifier)
    return model


def _forward_at_last_real_token(
    self: PreTrainedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    **kwargs: Any,
) -> SequenceClassifierOutputWithPast:
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    kwargs.pop("labels", None)  # the trainers compute their own loss from the logits
    hidden = getattr(self, self.base_model_prefix)(input_ids, attention_mask=attention_mask, **kwargs)
    positions = torch.arange(input_ids.shape[1], device=input_ids.device)
    last = (positions * attention_mask).argmax(-1)  # (B,): the rightmost position with mask 1
    rows = torch.arange(input_ids.shape[0], device=input_ids.device)
    return SequenceClassifierOutputWithPast(logits=self.score(hidden.last_hidden_state[rows, last]))  # (B, 1)


def _load_dtype(config: BaseConfig, device: torch.device, is_trainable: bool) -> torch.dtype:
    # Full fine-tuning keeps float32 master weights (AdamW updates vanish in bfloat16) and trains under autocast;
    # a frozen base under LoRA, or a model that only runs forward, can sit in the half-precision dtype.
    if is_trainable and not config.use_lora:
        return torch.float32
    return resolve_dtype(config.dtype, device)


# IA³'s modules (scaled, of which feed-forward) for architectures that PEFT has no default for: Phi-3 fuses q, k, v.
IA3_MODULES = {"phi3": (["qkv_proj", "down_proj"], ["down_proj"])}


def lora_config(config: BaseConfig, task_type: TaskType | str, model_type: str = "") -> PeftConfig:
    """The adapter for a stage (config.adapter: LoRA, prompt tuning or IA³): CAUSAL_LM for policies, SEQ_CLS for
    reward models (whose score head PEFT trains beside it); model_type picks IA³'s modules where PEFT has none."""
    if config.adapter == "prompt_tuning":  # random virtual tokens: a text init would tie it to one tokenizer's words
        return PromptTuningConfig(task_type=task_type, num_virtual_tokens=config.num_virtual_tokens)
    if config.adapter == "ia3":  # PEFT's per-architecture defaults: keys (or queries) and values, the MLP's input
        targets, feedforward = IA3_MODULES.get(model_type, (None, None))
        return IA3Config(task_type=task_type, target_modules=targets, feedforward_modules=feedforward)
    targets = config.lora_target_modules.strip()
    return LoraConfig(
        task_type=task_type,
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=targets if targets == "all-linear" else [name.strip() for name in targets.split(",")],
    )


def new_adapter(config: BaseConfig, model: Any, task_type: TaskType | str) -> PeftConfig | None:
    """The adapter for TRL to add to `model`: none when training whole, or when the model carries one already
    (a stage continuing from an adapter directory)."""
    if not config.use_lora or isinstance(model, PeftModel):
        return None
    return lora_config(config, task_type, model.config.model_type)


# Data -------------------------------------------------------------------------------------------------------------


def read_export(data_file: str | Path) -> Dataset:
    """An export file (JSONL or Parquet) as a Dataset, every column included."""
    data_file = Path(data_file)
    if data_file.suffix == ".parquet":
        return Dataset.from_parquet(str(data_file), keep_in_memory=True)
    with data_file.open(encoding="utf-8") as lines:
        rows = [json.loads(line) for line in lines if line.strip()]
    if not rows:
        raise ValueError(f"{data_file}: no rows")
    return Dataset.from_list(rows)


def load_rows(data_file: str | Path, columns: list[str], dataset: Dataset | None = None) -> Dataset:
    """The export with only `columns`, plus prompt_id when present (the held-out split groups by it).

    Extra export columns (votes, ids, model versions, often null) are dropped: the trainers need none of them.
    """
    dataset = dataset if dataset is not None else read_export(data_file)
    missing = [name for name in columns if name not in dataset.column_names]
    if missing:
        raise ValueError(f"{data_file}: missing column(s) {', '.join(missing)}")
    return dataset.select_columns([*columns, *(["prompt_id"] if "prompt_id" in dataset.column_names else [])])


def split_dataset(dataset: Dataset, eval_fraction: float, seed: int) -> tuple[Dataset, Dataset | None]:
    """(train, held out): a share of the prompts, drawn by seed, so no prompt is on both sides (a ranking makes
    several pairs per prompt, and a held-out pair that shares its prompt with training pairs flatters the model)."""
    drop = [name for name in ["prompt_id"] if name in dataset.column_names]  # the trainers have no use for it
    if eval_fraction == 0:
        return dataset.remove_columns(drop), None
    groups = dataset["prompt_id"] if "prompt_id" in dataset.column_names else list(range(len(dataset)))
    keys = sorted(set(map(str, groups)))
    random.Random(seed).shuffle(keys)
    held = set(keys[: max(1, round(eval_fraction * len(keys)))])
    if len(held) == len(keys):
        raise ValueError(f"eval_fraction: {eval_fraction} of {len(keys)} prompt(s) leaves nothing to train on")
    eval_rows = [i for i, group in enumerate(groups) if str(group) in held]
    train_rows = [i for i, group in enumerate(groups) if str(group) not in held]
    return dataset.select(train_rows).remove_columns(drop), dataset.select(eval_rows).remove_columns(drop)


# Chat templates ---------------------------------------------------------------------------------------------------


def assistant_tokens(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, Any]]) -> dict[str, list[int]]:
    """The conversation's token ids, and a mask that is 1 on the tokens each assistant turn adds (end of turn too).

    A turn's tokens are those after the conversation before it with the generation prompt, up to the end of the
    conversation up to and including it. Only tokens that a prefix shares with the whole count: a template may close
    a rendering differently from a turn in the middle (Phi-3 appends eos after the last message).
    """

    def render(part: list[dict], prompt: bool = False) -> list[int]:
        return tokenizer.apply_chat_template(part, add_generation_prompt=prompt)["input_ids"]

    def shared(prefix: list[int]) -> int:  # how many leading tokens prefix has in common with the whole
        pairs = enumerate(zip(prefix, ids, strict=False))
        return next((i for i, (a, b) in pairs if a != b), min(len(prefix), len(ids)))

    ids = render(messages)
    mask = [0] * len(ids)
    for turn, message in enumerate(messages):
        if message["role"] == "assistant":
            start, end = shared(render(messages[:turn], prompt=True)), shared(render(messages[: turn + 1]))
            mask[start:end] = [1] * (end - start)
    return {"input_ids": ids, "assistant_masks": mask}


_EXCHANGE = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]


def end_of_turn_id(tokenizer: PreTrainedTokenizerBase) -> int | None:
    """The token the chat template ends an assistant turn with (<|im_end|>, <|end|>, </s>): the first special or
    added token that an answer's turn adds; None without a chat template."""
    if not tokenizer.chat_template:
        return None
    turn = assistant_tokens(tokenizer, _EXCHANGE)
    added = set(tokenizer.added_tokens_decoder)
    pairs = zip(turn["input_ids"], turn["assistant_masks"], strict=True)
    return next((token for token, trained in pairs if trained and token in added), None)


def turn_closing(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The tokens a rendered conversation ends with after its last answer's text, from the end-of-turn token on
    (ChatML's <|im_end|> and newline, Phi-3's <|end|><|endoftext|>); [] without a chat template."""
    end = end_of_turn_id(tokenizer)
    if end is None:
        return []
    ids = tokenizer.apply_chat_template(_EXCHANGE)["input_ids"]
    return ids[len(ids) - 1 - ids[::-1].index(end) :]


# Trainers ---------------------------------------------------------------------------------------------------------


def trainer_arguments(args_class: type[TrainingArguments], config: BaseConfig, output_dir: str, **stage: Any) -> Any:
    """A TRL trainer config (RewardConfig, DPOConfig, SFTConfig) from ours, plus the stage's own fields."""
    device = pick_device()
    dtype = resolve_dtype(config.dtype, device)
    return args_class(
        output_dir=output_dir,
        learning_rate=config.learning_rate,
        max_steps=config.max_steps,
        num_train_epochs=config.num_train_epochs,
        per_device_train_batch_size=config.per_device_batch_size,
        per_device_eval_batch_size=config.per_device_batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        seed=config.seed,
        logging_steps=config.logging_steps,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=2,  # enough to resume from; checkpoints of a large model are large
        eval_strategy="no",  # the stage evaluates once at the end, for the report
        report_to=[],  # progress goes through the callback, to our own tables
        disable_tqdm=True,
        # Mixed precision only on a GPU; TRL's default (bf16 everywhere) only blurs the numbers on a CPU.
        bf16=device.type == "cuda" and dtype == torch.bfloat16,
        fp16=device.type == "cuda" and dtype == torch.float16,
        use_cpu=device.type == "cpu",
        activation_checkpointing=config.activation_checkpointing,
        # The online trainers have no max_length: their prompts are cut to fit it beforehand (online.py).
        **({"max_length": config.max_length} if "max_length" in args_class.__dataclass_fields__ else {}),
        **stage,
    )


def last_checkpoint(output_dir: str, resume: bool) -> str | None:
    """The checkpoint to resume from: the latest in output_dir when resuming and there is one."""
    return get_last_checkpoint(output_dir) if resume and os.path.isdir(output_dir) else None


def train_policy_with(
    trainer_class: type[Trainer],
    args: TrainingArguments,
    config: BaseConfig,
    model: PreTrainedModel | PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    train_rows: Dataset,
    eval_rows: Dataset | None,
    output_dir: str,
    progress: ProgressFn | None,
) -> tuple[Trainer, dict[str, float], bool]:
    """DPO, KTO and SFT: TRL's trainer on the policy, a new LoRA adapter where the config asks for one (with LoRA the
    reference is the adapter disabled; full fine-tuning: TRL loads a frozen copy), run by run_training;
    (trainer, final metrics, stopped)."""
    trainer = trainer_class(
        model=model,
        args=args,
        train_dataset=train_rows,
        eval_dataset=eval_rows,
        processing_class=tokenizer,
        peft_config=new_adapter(config, model, "CAUSAL_LM"),
    )
    metrics, stopped = run_training(trainer, output_dir, resume=config.resume, progress=progress)
    return trainer, metrics, stopped


def run_training(
    trainer: Trainer, output_dir: str, *, resume: bool, progress: ProgressFn | None
) -> tuple[dict[str, float], bool]:
    """Train (from the latest checkpoint when resuming), save the model and tokenizer; (final metrics, stopped)."""
    for module in trainer.model.modules():
        # Trainable weights in float32 (a bf16/fp16 base stays as it is): AdamW updates vanish in half precision,
        # and fp16's gradient scaler refuses half-precision gradients (PEFT upcasts LoRA, not a saved score head).
        upcast = [p for p in module.parameters(recurse=False) if p.requires_grad and p.dtype != torch.float32]
        for parameter in upcast:
            parameter.data = parameter.data.float()
        if upcast:  # it now meets half-precision hidden states, with no autocast to match them on a CPU
            module.register_forward_pre_hook(_inputs_to_float32)
    use_plain_lm_head(trainer)  # DPO and SFT off CUDA: TRL's fused LM head is slower there than the plain one
    callback = ProgressCallback(progress or _keep_going)
    trainer.add_callback(callback)
    trainer.remove_callback(PrinterCallback)  # it prints every log dict; progress goes through the callback
    output = trainer.train(resume_from_checkpoint=last_checkpoint(output_dir, resume))
    trainer.save_model(output_dir)  # the adapter (or full model) and the tokenizer, ready for from_pretrained
    if trainer.args.should_save and REFERENCE_ADAPTER in getattr(trainer.model, "peft_config", {}):
        # PEFT saves every adapter, TRL's frozen reference in a subfolder: the registry's policy is the trained one.
        shutil.rmtree(Path(output_dir) / REFERENCE_ADAPTER)
    last_step = next((log for log in reversed(trainer.state.log_history) if "loss" in log), {})
    return {**numbers(last_step), **numbers(output.metrics)}, callback.stopped


def _inputs_to_float32(module: torch.nn.Module, inputs: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(x.float() if isinstance(x, torch.Tensor) and x.is_floating_point() else x for x in inputs)


# TRL's fused LM head where it has no kernel ------------------------------------------------------------------------

# Config fields with which a model scales or caps its logits after the LM head (Gemma 2, Cohere, Granite, Falcon-H1,
# MiniCPM3, Muse Glimmer …): TRL's fused head applies them, the plain head below does not, so such models keep TRL's.
_LOGIT_TRANSFORMS = (
    "final_logit_softcapping",
    "logit_scale",
    "output_multiplier",
    "lm_head_multiplier",
    "logits_scaling",
)


def use_plain_lm_head(trainer: Trainer) -> None:
    """Where TRL has no Triton kernel for its fused LM head (the CPU), score the labelled tokens with the plain head.

    run_training calls it for every stage; trainers that do not patch the model (RewardTrainer) are left as they are.

    DPOTrainer and SFTTrainer patch the policy (and a separate reference) so that `model(..., labels=labels,
    fused_lm_head=True)` returns per-token log-probabilities without building the logits. On CUDA that is a Triton
    kernel over the labelled positions only; elsewhere TRL folds vocabulary tiles in torch at every position, prompt
    and padding included, with about ten passes over each tile (log-probs, entropy, mean logit, top-1 for its
    metrics) and recomputes them in the backward: a DPO step 13 % slower than a bare torch loop on a CPU
    (BENCHMARKS.md). Off Triton this replaces that call with the labelled positions' logits, a log-softmax and a
    gather, the metrics' fields computed from the same logits without gradient; the outputs are TRL's
    (tests/training/test_dpo.py compares them and their gradients). Memory is labelled tokens ×
    vocabulary floats, which is what a CPU-sized model can afford. Models whose logits are scaled or capped after the
    head, or that add a router loss, keep TRL's head. RLOO and GRPO divide the logits by their sampling temperature,
    as TRL's head does for them (tests/training/test_online.py compares the two).
    """
    if is_triton_available() and trainer.args.device.type in ("cuda", "xpu"):
        return
    policy = trainer.model.get_base_model() if isinstance(trainer.model, PeftModel) else trainer.model
    # The policy's fields feed the trainers' metrics (and WPO's weights); a separate reference gives log-probs only.
    fields = ("entropy", "mean_logits", "is_top1") + (
        ("log_sum_sq_probs",) if getattr(trainer, "use_weighting", False) else ()
    )
    # RLOO and GRPO score their samples at the sampling temperature, which TRL's head divides the logits by.
    temperature = getattr(trainer, "temperature", 1.0)
    for model, wanted in ((policy, fields), (getattr(trainer, "ref_model", None), ())):
        text = model.config.get_text_config() if model is not None else None
        if (
            model is None
            or "forward" not in vars(model)  # not patched by TRL (a version without the fused head)
            or any(getattr(text, name, None) not in (None, 1.0) for name in _LOGIT_TRANSFORMS)
            or getattr(text, "output_router_logits", False)
        ):
            continue
        model.forward = types.MethodType(_plain_head_forward(model.forward, wanted, temperature), model)


def _plain_head_forward(
    fused_forward: Callable[..., Any], fields: tuple[str, ...], temperature: float = 1.0
) -> Callable[..., Any]:
    def forward(
        self: PreTrainedModel,
        *args: Any,
        fused_lm_head: bool = False,
        labels: torch.Tensor | None = None,
        shift_labels: torch.Tensor | None = None,
        num_items_in_batch: torch.Tensor | int | None = None,
        **kwargs: Any,
    ) -> Any:
        if not fused_lm_head:  # generation, or a trainer asking for the logits: TRL's forward passes it through
            return fused_forward(
                *args, labels=labels, shift_labels=shift_labels, num_items_in_batch=num_items_in_batch, **kwargs
            )
        hidden = self.base_model(*args, **{**kwargs, "use_cache": False}).last_hidden_state
        if shift_labels is None:  # label t is the token after position t
            hidden, labels = hidden[:, :-1], labels[:, 1:]
        else:  # already shifted (context or sequence parallelism)
            labels = shift_labels
        head = self.get_output_embeddings()
        labels = labels.to(head.weight.device)
        mask = labels != -100
        targets = labels[mask]
        logits = head(hidden.to(head.weight.device)[mask]).float() / temperature  # (labelled tokens, vocabulary)
        log_softmax = logits.log_softmax(-1)
        log_probs = log_softmax.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        extra = {}
        with torch.no_grad():  # as TRL computes them (the trainers detach entropy before use)
            if "entropy" in fields:
                extra["entropy"] = -(log_softmax.exp() * log_softmax).sum(-1)
            if "log_sum_sq_probs" in fields:
                extra["log_sum_sq_probs"] = torch.logsumexp(2 * log_softmax, -1)
            if "mean_logits" in fields:
                extra["mean_logits"] = logits.mean(-1)
            if "is_top1" in fields:
                extra["is_top1"] = logits.argmax(-1) == targets  # the first maximum, as TRL's kernel breaks ties

        def per_token(values: torch.Tensor) -> torch.Tensor:  # back to (batch, positions), zero where unlabelled
            return values.new_zeros(mask.shape).masked_scatter(mask, values)

        denominator = mask.sum().clamp(min=1) if num_items_in_batch is None else num_items_in_batch
        return FusedCausalLMOutput(
            loss=-log_probs.sum() / denominator,
            log_probs=per_token(log_probs),
            label_mask=mask,
            **{name: per_token(values) for name, values in extra.items()},
        )

    return forward


def numbers(logs: Mapping[str, Any]) -> dict[str, float]:
    return {key: float(value) for key, value in logs.items() if isinstance(value, int | float)}


def evaluate(trainer: Any) -> dict[str, float]:
    """The trainer's metrics on its eval dataset, without the "eval_" prefix."""
    return {key.removeprefix("eval_"): value for key, value in numbers(trainer.evaluate()).items()}


def _keep_going(step: int, total: int, metrics: dict[str, float]) -> bool:
    return False


@dataclass
class ProgressCallback(TrainerCallback):
    """Reports each optimisation step to a ProgressFn (with its metrics on logging steps) and stops when it asks.

    A stop requested at step n ends training after step n, with a checkpoint saved there.
    """

    fn: ProgressFn
    stopped: bool = False
    _reported: int = field(default=-1, repr=False)

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> TrainerControl:
        if not control.should_log:  # otherwise the step is reported with its metrics, from on_log just after
            self._report(state, control, {})
        return control

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> TrainerControl:
        if state.global_step > self._reported:  # not the end-of-training summary of a step already reported
            self._report(state, control, numbers(logs or {}))
        return control

    def _report(self, state: TrainerState, control: TrainerControl, metrics: dict[str, float]) -> None:
        self._reported = state.global_step
        # The main process decides for all (as PPO does): processes that stopped at different steps would hang.
        stop = state.is_world_process_zero and self.fn(state.global_step, state.max_steps, metrics)
        if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
            flag = torch.tensor([int(stop)], device=pick_device())
            torch.distributed.broadcast(flag, src=0)
            stop = bool(flag.item())
        if stop and not control.should_training_stop:
            self.stopped = True
            control.should_training_stop = True
            control.should_save = True
