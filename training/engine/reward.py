"""Reward model: a one-logit sequence classifier trained on preference pairs with TRL's RewardTrainer.

The loss is Bradley-Terry with the export's margin: -log σ(r(x, y_w) - r(x, y_l) - margin), where r is the score
head's logit at the last real token. With LoRA the backbone stays frozen and the adapter and the fresh score head
train; without it everything trains. The report is the share of held-out pairs the model orders correctly.
"""

from typing import Any

import torch
from transformers import AutoModelForSequenceClassification, set_seed
from trl import RewardConfig as TRLRewardConfig
from trl import RewardTrainer

from training.engine.common import (
    ProgressFn,
    StageResult,
    load_model,
    load_rows,
    load_tokenizer,
    new_adapter,
    run_training,
    score_at_last_real_token,
    split_dataset,
    trainer_arguments,
)
from training.engine.config import RewardConfig


def train_reward(
    config: RewardConfig, data_file: str, output_dir: str, progress: ProgressFn | None = None
) -> StageResult:
    """Train a reward model on a pairs export; save it (adapter + head, or the full model) in output_dir."""
    set_seed(config.seed)
    pairs = load_rows(data_file, ["prompt", "chosen", "rejected", *(["margin"] if config.use_margin else [])])
    train_pairs, eval_pairs = split_dataset(pairs, config.eval_fraction, config.seed)

    tokenizer = load_tokenizer(config.model_name_or_path)
    # From a policy checkpoint this adds a fresh score head; from a reward adapter it continues that adapter.
    model = load_model(AutoModelForSequenceClassification, config, is_trainable=True, num_labels=1)
    score_at_last_real_token(model)
    args = trainer_arguments(
        TRLRewardConfig,
        config,
        output_dir,
        center_rewards_coefficient=config.center_rewards_coefficient or None,
    )
    trainer = RewardTrainer(
        model=model,
        args=args,
        train_dataset=train_pairs,
        eval_dataset=eval_pairs,
        processing_class=tokenizer,
        # SEQ_CLS makes PEFT train (and save) the score head in full beside the adapter.
        peft_config=new_adapter(config, model, "SEQ_CLS"),
    )
    metrics, stopped = run_training(trainer, output_dir, resume=config.resume, progress=progress)
    return StageResult(
        output_dir=output_dir,
        steps=trainer.state.global_step,
        stopped=stopped,
        metrics=metrics,
        eval_report=pairwise_accuracy(trainer) if eval_pairs is not None else {},
    )


@torch.no_grad()
def pairwise_accuracy(trainer: RewardTrainer) -> dict[str, Any]:
    """Held-out pairs: the share with r(chosen) > r(rejected), and the mean reward gap r(chosen) - r(rejected)."""
    model = trainer.model.eval()
    gaps = []
    for batch in trainer.get_eval_dataloader():
        # The collator stacks chosen then rejected sequences: (2B, T) → logits (2B, 1)
        rewards = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.squeeze(-1)
        chosen, rejected = rewards.float().chunk(2)
        gaps.append(trainer.accelerator.gather_for_metrics(chosen - rejected))  # (B,) from every process
    if not gaps:  # every held-out pair was longer than max_length
        return {"eval_pairs": 0}
    gap = torch.cat(gaps)
    return {
        "accuracy": (gap > 0).float().mean().item(),
        "mean_margin": gap.mean().item(),
        "eval_pairs": len(gap),
    }
