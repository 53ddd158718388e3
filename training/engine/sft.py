"""SFT: supervised fine-tuning on the SFT export (preferred and human-written answers) with TRL's SFTTrainer.

The loss is the next-token cross-entropy on the assistant's tokens only, so the policy learns to write answers (and
to end them), not prompts. Which tokens those are comes from rendering prefixes of each conversation with the
model's own chat template (`assistant_tokens`), so any template works, with or without `{% generation %}` markers.
A standard-style export (prompt / completion strings) gets the same through TRL's completion-only loss.
"""

import math

from datasets import Dataset
from transformers import set_seed
from trl import SFTConfig as TRLSFTConfig
from trl import SFTTrainer

from training.engine.common import (
    ProgressFn,
    StageResult,
    assistant_tokens,
    evaluate,
    load_policy,
    load_rows,
    load_tokenizer,
    read_export,
    split_dataset,
    train_policy_with,
    trainer_arguments,
)
from training.engine.config import SFTConfig


def train_sft(config: SFTConfig, data_file: str, output_dir: str, progress: ProgressFn | None = None) -> StageResult:
    """Fine-tune the policy on an SFT export; save the adapter (or full model) and tokenizer in output_dir."""
    set_seed(config.seed)
    export = read_export(data_file)
    conversational = "messages" in export.column_names  # else the standard style's prompt / completion strings
    rows = load_rows(data_file, ["messages"] if conversational else ["prompt", "completion"], export)
    train_rows, eval_rows = split_dataset(rows, config.eval_fraction, config.seed)

    tokenizer = load_tokenizer(config.model_name_or_path)
    if config.assistant_only_loss and conversational:  # tokenized here, with the mask TRL turns into labels
        # A list, not Dataset.map: map fingerprints its function by pickling it, tokenizer included (seconds for a
        # 150k-token vocabulary, every round).
        train_rows, eval_rows = (
            None if part is None else Dataset.from_list([assistant_tokens(tokenizer, m) for m in part["messages"]])
            for part in (train_rows, eval_rows)
        )
    model = load_policy(config, is_trainable=True)
    args = trainer_arguments(
        TRLSFTConfig, config, output_dir, completion_only_loss=config.assistant_only_loss and not conversational
    )
    trainer, metrics, stopped = train_policy_with(
        SFTTrainer, args, config, model, tokenizer, train_rows, eval_rows, output_dir, progress
    )
    report = {}
    if eval_rows is not None:
        evaluation = evaluate(trainer)
        report = {
            "loss": evaluation["loss"],  # mean cross-entropy per trained token on held-out conversations
            "perplexity": math.exp(min(evaluation["loss"], 50.0)),
            "mean_token_accuracy": evaluation.get("mean_token_accuracy"),
            "eval_examples": len(trainer.eval_dataset),
        }
    return StageResult(
        output_dir=output_dir, steps=trainer.state.global_step, stopped=stopped, metrics=metrics, eval_report=report
    )
