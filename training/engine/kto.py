"""KTO: train the policy on single rated answers with TRL's KTOTrainer, desirable or not, no pairs needed.

With r(x, y) = log π(y|x) - log π_ref(y|x) and z the batch's estimate of KL(π || π_ref) (from mismatched prompt and
completion pairs, clamped at 0), a desirable answer's loss is λ_D (1 - σ(β (r - z))) and an undesirable one's
λ_U (1 - σ(β (z - r))): 0.5 while π = π_ref, falling as the policy raises desirable answers above the reference and
lowers undesirable ones below it. The unpaired export labels an answer desirable when its mean rating is above the
scale's midpoint. With LoRA the reference is the same model with the adapter disabled, as in dpo.py.
"""

from transformers import set_seed
from trl import KTOConfig as TRLKTOConfig
from trl import KTOTrainer

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
from training.engine.config import KTOConfig


def train_kto(config: KTOConfig, data_file: str, output_dir: str, progress: ProgressFn | None = None) -> StageResult:
    """Train the policy on an unpaired export with KTO; save the adapter (or full model) and tokenizer in output_dir."""
    set_seed(config.seed)
    rows = load_rows(data_file, ["prompt", "completion", "label"])
    train_rows, eval_rows = split_dataset(rows, config.eval_fraction, config.seed)

    tokenizer = load_tokenizer(config.model_name_or_path)
    model = load_policy(config, is_trainable=True)
    args = trainer_arguments(
        TRLKTOConfig,
        config,
        output_dir,
        beta=config.beta,
        desirable_weight=config.desirable_weight,
        undesirable_weight=config.undesirable_weight,
    )
    trainer, metrics, stopped = train_policy_with(
        KTOTrainer, args, config, model, tokenizer, train_rows, eval_rows, output_dir, progress
    )
    report = {}
    if eval_rows is not None:
        # rewards/chosen and rewards/rejected: mean β r(x, y) of held-out desirable and undesirable answers.
        evaluation = evaluate(trainer)
        report = {
            "loss": evaluation["loss"],
            "reward_desirable": evaluation.get("rewards/chosen"),  # absent when the held-out rows have none
            "reward_undesirable": evaluation.get("rewards/rejected"),
            "kl": evaluation["kl"],
            "eval_rows": len(trainer.eval_dataset),
            "trl": evaluation,
        }
    return StageResult(
        output_dir=output_dir, steps=trainer.state.global_step, stopped=stopped, metrics=metrics, eval_report=report
    )
