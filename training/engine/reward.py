"""Reward model: a sequence classifier read at the last real token, trained on pairs, ratings or both.

objective=pairs (TRL's RewardTrainer): one logit r, and Bradley-Terry with the export's margin,
-log σ(r(x, y_w) - r(x, y_l) - margin). The report is the share of held-out pairs the model orders correctly.

objective=ratings (the unpaired export; RatingRewardTrainer, a plain Trainer, as TRL's RewardTrainer allows one
output only): K = 1 + labels logits z, σ(z_0) regressing the answer's mean rating on [0, 1] (scaled_score) and σ(z_k)
the share of its raters who ticked label k (label_shares), each with binary cross-entropy against that soft target:
score loss + mean label loss. objective=both adds pairs_weight × Bradley-Terry on z_0 over a pairs export in the same
batches, so σ(z_0) is the score and z_0 differences the preference log-odds. The reward is Σ_k w_k σ(z_k) with the
lead's label_weights (score 1, labels 0 unless named), written beside the model (model_files.REWARD_HEAD_FILE) for
load_reward_model. The report: Spearman's ρ between z_0 and the held-out mean ratings, the share of held-out answer
pairs with different mean ratings that z_0 orders as people did, the labels' mean absolute error, and (both) pairwise
accuracy on held-out pairs.

With LoRA the backbone stays frozen and the adapter and the fresh score head train; without it everything trains.
"""

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import torch
from datasets import Dataset, Features, Sequence, Value
from peft import PeftModel, get_peft_model
from torch.nn.functional import binary_cross_entropy_with_logits, logsigmoid
from torch.nn.utils.rnn import pad_sequence
from transformers import AutoModelForSequenceClassification, PreTrainedTokenizerBase, Trainer, set_seed
from trl import RewardConfig as TRLRewardConfig
from trl import RewardTrainer
from trl.trainer.utils import disable_dropout_in_model

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
from training.engine.config import SCORE_OUTPUT, RewardConfig, output_weights
from training.engine.model_files import save_reward_head


def train_reward(
    config: RewardConfig,
    data_file: str,
    output_dir: str,
    progress: ProgressFn | None = None,
    ratings_file: str | None = None,
) -> StageResult:
    """Train a reward model on a pairs export (objective=pairs), an unpaired export (ratings) or a pairs export and
    an unpaired one, ratings_file (both); save it (adapter + head, or the full model) in output_dir."""
    if config.objective != "pairs":
        return train_rating_reward(config, data_file, output_dir, progress, ratings_file)
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


# Ratings ----------------------------------------------------------------------------------------------------------

ROWS = Features(
    {
        "chosen_ids": Sequence(Value("int64")),  # the rated answer, or a pair's chosen one
        "rejected_ids": Sequence(Value("int64")),  # empty for a rated answer
        "margin": Value("float64"),
        "targets": Sequence(Value("float64")),  # [scaled score, *label shares] of a rated answer; empty for a pair
    }
)


def train_rating_reward(
    config: RewardConfig,
    data_file: str,
    output_dir: str,
    progress: ProgressFn | None = None,
    ratings_file: str | None = None,
) -> StageResult:
    """objective=ratings: data_file is an unpaired export; both: data_file a pairs export, ratings_file unpaired."""
    set_seed(config.seed)
    if config.objective == "both" and not ratings_file:
        raise ValueError("ratings_file: objective=both trains on an unpaired export beside the pairs; none given")
    rated = load_rows(ratings_file or data_file, ["prompt", "completion", "scaled_score", "label_shares"])
    if not len(rated):
        raise ValueError(f"{ratings_file or data_file}: no rows")
    labels = [share["label"] for share in rated[0]["label_shares"]]
    weights = output_weights(config.label_weights, labels)
    train_rated, eval_rated = split_dataset(rated, config.eval_fraction, config.seed)
    tokenizer = load_tokenizer(config.model_name_or_path)
    train_rows, eval_sets = _rated_rows(train_rated, tokenizer, config.max_length), {}
    if eval_rated is not None:
        eval_sets["ratings"] = Dataset.from_list(_rated_rows(eval_rated, tokenizer, config.max_length), features=ROWS)
    if config.objective == "both":
        pairs = load_rows(data_file, ["prompt", "chosen", "rejected", *(["margin"] if config.use_margin else [])])
        train_pairs, eval_pairs = split_dataset(pairs, config.eval_fraction, config.seed)
        train_rows += _pair_rows(train_pairs, tokenizer, config.max_length)
        if eval_pairs is not None:
            eval_sets["pairs"] = Dataset.from_list(_pair_rows(eval_pairs, tokenizer, config.max_length), features=ROWS)
    if not train_rows:
        raise ValueError(f"max_length: every training answer is longer than {config.max_length} tokens")

    outputs = [SCORE_OUTPUT, *labels]
    # A fresh head of K outputs, whatever head the base has (a reward model's one output is reinitialised too).
    names = {"id2label": dict(enumerate(outputs)), "label2id": {name: i for i, name in enumerate(outputs)}}
    model = load_model(
        AutoModelForSequenceClassification, config, is_trainable=True, ignore_mismatched_sizes=True, **names
    )
    score_at_last_real_token(model)
    # What RewardTrainer does for its one-output models: the adapter (SEQ_CLS: PEFT trains and saves the head in
    # full beside it), input gradients for checkpointing through a frozen base, and no dropout.
    if (adapter := new_adapter(config, model, "SEQ_CLS")) is not None:
        model = get_peft_model(model, adapter)
    if config.activation_checkpointing and isinstance(model, PeftModel):
        model.enable_input_require_grads()
    disable_dropout_in_model(model)
    args = trainer_arguments(
        TRLRewardConfig,  # TrainingArguments with max_length
        config,
        output_dir,
        center_rewards_coefficient=config.center_rewards_coefficient or None,
        remove_unused_columns=False,  # the model's forward names none of the collator's inputs
    )
    trainer = RatingRewardTrainer(
        model=model,
        args=args,
        data_collator=RatedCollator(tokenizer.pad_token_id, len(outputs)),
        train_dataset=Dataset.from_list(train_rows, features=ROWS),
        eval_dataset=eval_sets or None,
        processing_class=tokenizer,
        pairs_weight=config.pairs_weight,
    )
    metrics, stopped = run_training(trainer, output_dir, resume=config.resume, progress=progress)
    if trainer.is_world_process_zero():
        save_reward_head(output_dir, outputs, weights, config.objective)
    return StageResult(
        output_dir=output_dir,
        steps=trainer.state.global_step,
        stopped=stopped,
        metrics=metrics,
        eval_report=rating_report(trainer, labels) if eval_sets else {},
    )


def _tokenize(tokenizer: PreTrainedTokenizerBase, prompt: Any, completion: Any) -> list[int]:
    """Prompt and answer as RewardTrainer tokenizes a pair's side (and `generate.score` a conversation): messages
    through the chat template, text as it is with EOS after it."""
    if isinstance(prompt, list):
        return tokenizer.apply_chat_template(prompt + completion)["input_ids"]
    text = prompt + completion
    return tokenizer(text if text.endswith(tokenizer.eos_token) else text + tokenizer.eos_token)["input_ids"]


def _rated_rows(rows: Dataset, tokenizer: PreTrainedTokenizerBase, max_length: int) -> list[dict[str, Any]]:
    """Rated answers as ROWS; those longer than max_length are left out (as RewardTrainer leaves out pairs)."""
    tokenized = [
        {
            "chosen_ids": _tokenize(tokenizer, row["prompt"], row["completion"]),
            "rejected_ids": [],
            "margin": 0.0,
            "targets": [row["scaled_score"], *(share["share"] for share in row["label_shares"])],
        }
        for row in rows
    ]
    return [row for row in tokenized if len(row["chosen_ids"]) <= max_length]


def _pair_rows(rows: Dataset, tokenizer: PreTrainedTokenizerBase, max_length: int) -> list[dict[str, Any]]:
    tokenized = [
        {
            "chosen_ids": _tokenize(tokenizer, row["prompt"], row["chosen"]),
            "rejected_ids": _tokenize(tokenizer, row["prompt"], row["rejected"]),
            "margin": row.get("margin", 0.0),
            "targets": [],
        }
        for row in rows
    ]
    return [row for row in tokenized if max(len(row["chosen_ids"]), len(row["rejected_ids"])) <= max_length]


@dataclass
class RatedCollator:
    """A batch of rated answers and pairs as one right-padded batch: the rated answers, then the pairs' chosen, then
    their rejected answers; targets (R, K) and margin (P,) say how many of each."""

    pad_token_id: int
    outputs: int  # K

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        rated = [e for e in examples if not e["rejected_ids"]]
        pairs = [e for e in examples if e["rejected_ids"]]
        sequences = [torch.tensor(e["chosen_ids"]) for e in rated + pairs]
        sequences += [torch.tensor(e["rejected_ids"]) for e in pairs]
        return {
            "input_ids": pad_sequence(sequences, batch_first=True, padding_value=self.pad_token_id),
            "attention_mask": pad_sequence([torch.ones_like(s) for s in sequences], batch_first=True),
            "targets": torch.tensor([e["targets"] for e in rated], dtype=torch.float).view(len(rated), self.outputs),
            "margin": torch.tensor([e["margin"] for e in pairs], dtype=torch.float),
        }


def _outputs(model: Any, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(rated answers' logits (R, K), chosen (P,), rejected (P,)): the pairs read the score output z_0."""
    logits = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], use_cache=False).logits
    pairs = len(inputs["margin"])
    rated, chosen, rejected = logits.float().split([len(inputs["targets"]), pairs, pairs])  # (R + 2P, K) in three
    return rated, chosen[:, 0], rejected[:, 0]


class RatingRewardTrainer(Trainer):
    """The rating losses of the module doc, and their parts in the logged metrics."""

    def __init__(self, *args: Any, pairs_weight: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pairs_weight = pairs_weight
        # The loss is a mean over the batch: Trainer divides it over accumulation steps itself only when told so.
        self.model_accepts_loss_kwargs = False
        self._metrics: dict[str, defaultdict[str, list[float]]] = {
            "train": defaultdict(list),
            "eval": defaultdict(list),
        }

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "train" if self.model.training else "eval"
        logs.update({key: sum(values) / len(values) for key, values in self._metrics[mode].items()})
        self._metrics[mode].clear()
        super().log(logs, start_time)

    def compute_loss(
        self, model: Any, inputs: dict[str, torch.Tensor], return_outputs: bool = False, num_items_in_batch: Any = None
    ) -> Any:
        mode = "train" if self.model.training else "eval"
        rated, chosen, rejected = _outputs(model, inputs)
        losses = []
        if len(rated):
            # BCE against soft targets: least where σ(z) equals the rated share or scaled score
            bce = binary_cross_entropy_with_logits(rated, inputs["targets"], reduction="none")  # (R, K)
            losses.append(bce[:, 0].mean())
            self._metrics[mode]["rating_loss"].append(bce[:, 0].mean().item())
            if bce.shape[1] > 1:
                losses.append(bce[:, 1:].mean())
                self._metrics[mode]["label_loss"].append(bce[:, 1:].mean().item())
        if len(chosen):
            pair_loss = -logsigmoid(chosen - rejected - inputs["margin"]).mean()  # -log σ(r_w - r_l - margin)
            if self.args.center_rewards_coefficient is not None:
                pair_loss = pair_loss + self.args.center_rewards_coefficient * ((chosen + rejected) ** 2).mean()
            losses.append(self.pairs_weight * pair_loss)
            self._metrics[mode]["pairs_loss"].append(pair_loss.item())
            self._metrics[mode]["accuracy"].append((chosen > rejected).float().mean().item())
        loss = torch.stack(losses).sum()
        return (loss, rated) if return_outputs else loss


@torch.no_grad()
def rating_report(trainer: Trainer, labels: list[str]) -> dict[str, Any]:
    """Held-out answers: the score output's rank correlation with their mean ratings and how it orders pairs of them
    that people rated differently, the label outputs' mean absolute error; held-out pairs (both): accuracy."""
    model, report = trainer.model.eval(), {}
    if "ratings" in trainer.eval_dataset:
        rows = []
        for batch in trainer.get_eval_dataloader("ratings"):
            predicted = torch.sigmoid(_outputs(model, batch)[0])  # (B, K)
            rows.append(trainer.accelerator.gather_for_metrics(torch.cat([predicted, batch["targets"]], dim=1)))
        if rows:  # none when every held-out answer was longer than max_length
            predicted, actual = torch.cat(rows).cpu().chunk(2, dim=1)  # (N, K) each
            correct, rating_pairs = _ordered_pairs(predicted[:, 0], actual[:, 0])
            report |= {
                "rating_spearman": spearman(predicted[:, 0], actual[:, 0]),
                "rating_pair_accuracy": correct / rating_pairs if rating_pairs else None,
                "rating_pairs": rating_pairs,
                **({"label_mae": (predicted[:, 1:] - actual[:, 1:]).abs().mean().item()} if labels else {}),
            }
        report["eval_ratings"] = sum(len(row) for row in rows)
    if "pairs" in trainer.eval_dataset:
        gaps = []
        for batch in trainer.get_eval_dataloader("pairs"):
            _, chosen, rejected = _outputs(model, batch)
            gaps.append(trainer.accelerator.gather_for_metrics(chosen - rejected))
        gap = torch.cat(gaps) if gaps else torch.zeros(0)
        if len(gap):
            report |= {"accuracy": (gap > 0).float().mean().item(), "mean_margin": gap.mean().item()}
        report["eval_pairs"] = len(gap)
    return report


def spearman(x: torch.Tensor, y: torch.Tensor) -> float | None:
    """Spearman's ρ: the Pearson correlation of the ranks (ties share their mean rank); None when either is
    constant."""
    rx, ry = _ranks(x), _ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    norm = (rx.norm() * ry.norm()).item()
    return (rx @ ry).item() / norm if norm > 0 else None


def _ranks(values: torch.Tensor) -> torch.Tensor:
    _, inverse, counts = torch.unique(values.double(), return_inverse=True, return_counts=True)
    first = counts.cumsum(0) - counts  # the rank (from 0) each distinct value's run starts at
    return (first + (counts - 1) / 2)[inverse]


def _ordered_pairs(predicted: torch.Tensor, actual: torch.Tensor) -> tuple[int, int]:
    """(pairs the prediction orders as the ratings do, pairs whose ratings differ) over every two answers."""
    rated = torch.sign(actual[:, None] - actual[None, :])  # (N, N)
    said = torch.sign(predicted[:, None] - predicted[None, :])
    differ = rated > 0  # each differing pair once, from its higher-rated side
    return int((said[differ] > 0).sum()), int(differ.sum())
