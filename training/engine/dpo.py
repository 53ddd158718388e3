"""DPO: train the policy directly on preference pairs with TRL's DPOTrainer, no reward model in between.

With π the policy and π_ref the reference, the implicit reward of a response is r(x, y) = β (log π(y|x) -
log π_ref(y|x)), and the sigmoid loss is -log σ(r(x, y_w) - r(x, y_l)): ln 2 while π = π_ref, falling as the
policy moves probability from rejected to chosen responses. With LoRA the reference is the same model with the
adapter disabled, so no second copy sits in memory (continuing an adapter, TRL freezes a copy of it instead).
"""

from transformers import set_seed
from trl import DPOConfig as TRLDPOConfig
from trl import DPOTrainer

from training.engine.common import (
    ProgressFn,
    StageResult,
    evaluate,
    load_policy,
    load_rows,
    load_tokenizer,
    split_dataset,
    train_policy_with,
    trainer_arguments,
)
from training.engine.config import DPOConfig


def train_dpo(config: DPOConfig, data_file: str, output_dir: str, progress: ProgressFn | None = None) -> StageResult:
    """Train the policy on a pairs export with DPO; save the adapter (or full model) and tokenizer in output_dir."""
    set_seed(config.seed)
    pairs = load_rows(data_file, ["prompt", "chosen", "rejected"])
    train_pairs, eval_pairs = split_dataset(pairs, config.eval_fraction, config.seed)

    tokenizer = load_tokenizer(config.model_name_or_path)
    model = load_policy(config, is_trainable=True)
    args = trainer_arguments(
        TRLDPOConfig,
        config,
        output_dir,
        beta=config.beta,
        loss_type=[config.loss_type],
        label_smoothing=config.label_smoothing,
        precompute_ref_log_probs=config.precompute_ref_log_probs,
    )
    trainer, metrics, stopped = train_policy_with(
        DPOTrainer, args, config, model, tokenizer, train_pairs, eval_pairs, output_dir, progress
    )
    report = {}
    if eval_pairs is not None:
        # rewards/accuracies: share of held-out pairs with r(x, y_w) > r(x, y_l); rewards/margins: their mean gap.
        evaluation = evaluate(trainer)
        report = {
            "accuracy": evaluation["rewards/accuracies"],
            "margin": evaluation["rewards/margins"],
            "loss": evaluation["loss"],
            "eval_pairs": len(trainer.eval_dataset),
            "trl": evaluation,
        }
    return StageResult(
        output_dir=output_dir, steps=trainer.state.global_step, stopped=stopped, metrics=metrics, eval_report=report
    )
