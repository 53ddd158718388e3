"""Launching and running training rounds: database rows in, engine calls, registry entries out.

`launch_round` checks a lead's request (method, base, settings, dataset filters) and saves a queued round with
a pending dataset snapshot, while the project has fewer than ARBITER_MAX_ACTIVE_ROUNDS under way and its largest
stage's memory estimate fits the largest GPU a worker has reported (`check_memory`); the Celery
task calls `run_round`, which claims the round once, writes the snapshot, runs the method's stages from
training/engine/ with a progress callback (heartbeat, metrics, cancel), and registers what they trained. A failure
is stored in the words of `failure_message`, written for leads; the traceback stays in the worker's log.
`fail_stale_rounds` (Celery beat) fails rounds whose worker stopped beating, and the pending snapshots of rounds
that ended without writing them.

A base (`resolve_base`) is the project's own registered policy, a hub id, or a folder under ARBITER_MODEL_ROOTS;
anything else is refused with one message, so that a lead learns nothing of other projects' adapters or the
server's files (the operator's `manage.py launch_round` may name any path).

Stages per method: reward = [reward]; ppo = [reward, ppo, sample] ([ppo, sample] with a given reward model);
dpo = [dpo, sample]; kto = [kto, sample]; sft = [sft, sample]; sample = [sample] (training/sampling.py); rloo,
grpo (online RL on TRL's trainers, training/engine/online.py) and best_of_n as ppo. Settings:
`key=value` applies to every stage of the method that has the key, `stage.key=value` to that stage only; anything
else is refused, naming the key.
"""

import collections
import errno
import json
import logging
import math
import os
import re
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction

from annotate.exports import EXPORT_OPTIONS, Votes, create_snapshot, run_snapshot, with_votes
from annotate.jobs import Heartbeat, fail_stale, hide_paths
from annotate.models import Annotation, DatasetSnapshot, Project, Prompt, QuotaReached, TaskKind
from models_registry.models import ModelVersion
from training.engine.config import (
    BaseConfig,
    BestOfNConfig,
    DPOConfig,
    GRPOConfig,
    KTOConfig,
    PPOConfig,
    RewardConfig,
    RLOOConfig,
    SampleConfig,
    SFTConfig,
    output_weights,
)
from training.engine.launcher import SHARDED, run_launched
from training.engine.memory import MemoryEstimate, estimate_memory, read_architecture, size_text
from training.engine.model_files import is_adapter, missing_files, models_inside
from training.models import RoundMetric, TrainingRound, Worker, end_unwritten_snapshots

logger = logging.getLogger(__name__)

Method = TrainingRound.Method
STAGES = {
    Method.REWARD: ["reward"],
    Method.PPO: ["reward", "ppo", "sample"],
    Method.DPO: ["dpo", "sample"],
    Method.KTO: ["kto", "sample"],  # on the unpaired export: rated answers, desirable above the scale's midpoint
    Method.SFT: ["sft", "sample"],
    Method.SAMPLE: ["sample"],  # a registered policy's samples into the queue, on demand
    Method.RLOO: ["reward", "rloo", "sample"],  # as PPO: [rloo, sample] with a given reward model
    Method.GRPO: ["reward", "grpo", "sample"],
    # K samples per prompt of the pairs snapshot, SFT on the reward model's best (training/engine/best_of_n.py)
    Method.BEST_OF_N: ["reward", "best_of_n", "sample"],
}
# The stages that score with a reward model: the round's own, or the one given at launch.
SCORED_STAGES = ("ppo", "rloo", "grpo", "best_of_n")
# The export each method trains on; the others train on pairs (see snapshot_kind for a reward model on ratings).
SNAPSHOT_KINDS = {Method.SFT: DatasetSnapshot.Kind.SFT, Method.KTO: DatasetSnapshot.Kind.UNPAIRED}
LOG_TAIL_LINES = 200
BASE_HELP = (
    "A policy version of this project (policy-v3), a hub id (org/name) or a folder under the server's allowed model "
    "roots; empty: the project's active policy."
)
# A Hugging Face hub id, org/name: starting each part with a letter or digit, it spells no path (no leading /, ~
# or ., no ..), so it reaches no file on the server. (transformers would load a folder of that name under the
# worker's working directory if one existed; the app's folder has no model two levels down.)
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}", re.ASCII)
VERSION_NAME = re.compile(r"(policy-)?v?\d+")
EVAL_PROMPTS = 16  # prompts sampled for a policy's eval report (mean reward, KL to the reference)


def stage_configs() -> dict[str, type]:
    """Stage name → its config dataclass."""
    return {
        "reward": RewardConfig,
        "ppo": PPOConfig,
        "dpo": DPOConfig,
        "kto": KTOConfig,
        "sft": SFTConfig,
        "sample": SampleConfig,
        "rloo": RLOOConfig,
        "grpo": GRPOConfig,
        "best_of_n": BestOfNConfig,
    }


# Launching -----------------------------------------------------------------------------------------------


def launch_round(
    project: Project,
    *,
    method: str,
    user: Any = None,
    base: str = "",
    reward_model: str = "",
    settings_: Mapping[str, Any] | None = None,
    filters: Mapping[str, Any] | None = None,
    trusted: bool = False,
) -> TrainingRound:
    """Check the request and queue a round (and its pending snapshot); ValidationError names what is wrong,
    QuotaReached says the project has ARBITER_MAX_ACTIVE_ROUNDS under way. trusted: see resolve_base."""
    filters = dict(filters or {})
    fields = plan_round(
        project,
        method=method,
        base=base,
        reward_model=reward_model,
        settings_=settings_,
        trusted=trusted,
        votes=filters.get("votes") or Votes.HUMAN,
    )
    if method != Method.SAMPLE and not filters.get("split"):
        filters["split"] = "train"  # eval prompts measure the rounds: no round trains on them unless asked
    return _queue(project, filters=filters, user=user, **fields)


def plan_round(
    project: Project,
    *,
    method: str,
    base: str = "",
    reward_model: str = "",
    settings_: Mapping[str, Any] | None = None,
    trusted: bool = False,
    votes: str = Votes.HUMAN,
) -> dict[str, Any]:
    """A round's method, base, reward model and per-stage config as `launch_round` would queue them, checked
    (ValidationError names what is wrong) but not saved: the launch page's memory check reads it too. `votes`: whose
    answers the round's data takes (the export option), for the checks that there are some."""
    if method not in Method.values:
        raise ValidationError({"method": f"Must be one of {', '.join(Method.values)}, not {method!r}."})
    rated = with_votes(Annotation.objects.filter(task__project=project, task__kind=TaskKind.RATING), votes)
    if method == Method.KTO and not rated.exists():
        raise ValidationError(
            {"method": "KTO trains on rated answers, and this project has none: rate some answers, or train with dpo."}
        )
    base_version, base_model = resolve_base(project, base, trusted=trusted)
    if method == Method.SAMPLE and base_version is None:
        raise ValidationError({"base": "New samples come from a registered policy version (e.g. policy-v2)."})
    reward_version = _resolve_reward(project, method, reward_model)
    stages = [s for s in STAGES[method] if not (s == "reward" and reward_version is not None)]
    config = build_config(stages, base_model=base_model, policy_path=base_version.path if base_version else base_model,
                          settings_=settings_ or {})  # fmt: skip
    if "reward" in config:
        _check_rating_objective(project, config["reward"], rated)
    return {
        "method": method,
        "base_model": base_model,
        "base_version": base_version,
        "reward_version": reward_version,
        "config": config,
    }


def _check_rating_objective(project: Project, reward: Mapping[str, Any], rated: Any) -> None:
    """A reward model on ratings needs rated answers, and weights only for the project's labels."""
    if reward["objective"] != "pairs" and not rated.exists():
        raise ValidationError(
            {
                "reward.objective": f"objective={reward['objective']} trains on rated answers, and this project has "
                "none: rate some answers, or train on pairs (objective=pairs)."
            }
        )
    try:
        output_weights(reward["label_weights"], project.labels)
    except ValueError as error:
        raise ValidationError({"reward.label_weights": str(error)}) from None


def snapshot_kind(method: str, config: Mapping[str, Mapping[str, Any]]) -> str:
    """The export a round trains on: its method's, or the unpaired one for a reward model on ratings alone (a
    reward model on both reads the pairs, and an unpaired snapshot written as its stage starts: `_ratings_file`)."""
    if config.get("reward", {}).get("objective") == "ratings":
        return DatasetSnapshot.Kind.UNPAIRED
    return SNAPSHOT_KINDS.get(method, DatasetSnapshot.Kind.PAIRS)


def relaunch(training_round: TrainingRound, *, user: Any = None) -> TrainingRound:
    """A new queued round with the same method, base, settings and filters (after a failure or a cancel).

    A base given by name or path is checked again as a lead's would be: what the settings allowed then (or the
    operator's command line allowed) may be refused now. A registered version is the project's own.
    """
    base_model = training_round.base_model
    if training_round.base_version is None and base_model != settings.ARBITER_DEFAULT_BASE_MODEL:
        resolve_base(training_round.project, base_model)
    return _queue(
        training_round.project,
        method=training_round.method,
        base_model=training_round.base_model,
        base_version=training_round.base_version,
        reward_version=training_round.reward_version,
        config=training_round.config,
        filters=training_round.filters,
        user=user,
    )


def _queue(project: Project, *, method: str, filters: Mapping[str, Any], user: Any, **fields: Any) -> TrainingRound:
    """Save the round with a pending snapshot of its data and send it to a worker once committed."""
    _refuse_what_cannot_fit(fields)
    _refuse_unservable(fields)
    with transaction.atomic():
        project.lock()  # concurrent launches count the rounds under way and take numbers one at a time
        under_way = project.training_rounds.filter(
            status__in=[TrainingRound.Status.QUEUED, TrainingRound.Status.RUNNING]
        )
        if (active := under_way.count()) >= settings.ARBITER_MAX_ACTIVE_ROUNDS:
            raise QuotaReached(
                f"{project.slug} has {active} rounds queued or running, the most allowed "
                "(ARBITER_MAX_ACTIVE_ROUNDS): wait for one to finish, or cancel one."
            )
        kind = snapshot_kind(method, fields["config"])
        snapshot = None
        if method != Method.SAMPLE:
            snapshot = create_snapshot(project, kind=kind, filters=filters, user=user)
        elif any(value not in (None, "", False) for value in filters.values()):
            raise ValidationError({"filters": "A round that only samples trains on no data: give no filters."})
        number = (project.training_rounds.order_by("-number").values_list("number", flat=True).first() or 0) + 1
        training_round = TrainingRound.objects.create(
            project=project,
            number=number,
            method=method,
            filters=snapshot.filters if snapshot else {},
            snapshot=snapshot,
            created_by=user if getattr(user, "is_authenticated", False) else None,
            **fields,
        )
        transaction.on_commit(lambda: _enqueue(training_round))
    return training_round


@dataclass
class MemoryCheck:
    """A round's largest training stage's memory estimate against the largest GPU a worker has reported."""

    stage: str
    config: BaseConfig  # the stage's, for the settings that would lower it
    estimate: MemoryEstimate
    gpu: dict[str, Any] | None  # {name, total_memory, hostname}; None while no GPU worker has reported in

    @property
    def fits(self) -> bool:
        return self.gpu is None or self.estimate.total <= self.gpu["total_memory"]

    def message(self) -> str:
        needs = f"The {self.stage} stage needs about {size_text(self.estimate.total)} of GPU memory per device"
        if self.gpu is None:
            return f"{needs} (for information: no GPU worker has reported in)."
        gpu = f"{self.gpu['name']}, has {size_text(self.gpu['total_memory'])}"
        largest = f"the largest GPU the workers have reported, {gpu}"
        if self.fits:
            return f"{needs}; {largest}."
        return f"{needs}, more than {largest}. To lower it: {'; '.join(self.savings())}."

    def rows(self) -> list[tuple[str, str]]:
        """(part, size) for the launch page, the largest first, and the total last."""
        return [(part, size_text(size)) for part, size in self.estimate.parts()] + [
            ("Total", size_text(self.estimate.total))
        ]

    def savings(self) -> list[str]:
        """The settings that would lower the estimate, from the stage's own values."""
        config, ways = self.config, []
        if config.per_device_batch_size > 1:
            ways.append("a smaller per_device_batch_size (raise gradient_accumulation_steps to keep the batch)")
        ways.append(f"a shorter max_length (now {config.max_length})")
        if not config.activation_checkpointing:
            ways.append("activation_checkpointing=true")
        if not config.use_lora:
            ways.append("use_lora=true")
        elif not config.load_in_4bit:
            ways.append("load_in_4bit=true")
        return ways


def check_memory(config: Mapping[str, Mapping[str, Any]], reward_version: ModelVersion | None) -> MemoryCheck | None:
    """The training stage that needs the most GPU memory, against the reporting workers' largest GPU; None when
    nothing trains or the base's config.json is not on this server (a hub id)."""
    classes = stage_configs()
    reward_path = config["reward"]["model_name_or_path"] if "reward" in config else ""
    reward_path = reward_path or (reward_version.path if reward_version else "")
    gpu = Worker.objects.largest_gpu()
    estimates = []
    try:
        for stage, values in config.items():
            if stage == "sample":
                continue
            stage_config = classes[stage].from_dict(values)
            reward_arch = read_architecture(reward_path) if stage in SCORED_STAGES and reward_path else None
            arch = read_architecture(stage_config.model_name_or_path)
            estimate = estimate_memory(stage_config, arch, reward_arch=reward_arch, shards=_shards(stage_config, gpu))
            estimates.append(MemoryCheck(stage, stage_config, estimate, gpu=gpu))
    except OSError:
        return None
    return max(estimates, key=lambda check: check.estimate.total, default=None)


def _shards(config: BaseConfig, gpu: dict[str, Any] | None) -> int:
    """How many GPUs split the model state: ZeRO-3 and FSDP2 split weights, gradients and optimiser state over every
    process (ZeRO-2 splits only the last two, which LoRA keeps small: counted whole, erring high)."""
    if config.launch not in ("zero3", "fsdp2"):
        return 1
    per_machine = config.num_processes or (gpu["gpus"] if gpu else 1)
    machines = settings.ARBITER_LAUNCH_MACHINES if config.launch == "zero3" else 1
    return per_machine * machines


def _refuse_what_cannot_fit(fields: Mapping[str, Any]) -> None:
    """Sharded launches and 4-bit loading without a GPU worker; a round whose estimate exceeds the largest
    reported GPU."""
    gpu = Worker.objects.largest_gpu()
    for stage, values in fields["config"].items():
        if values.get("launch") in SHARDED and gpu is None:
            raise ValidationError(
                {
                    f"{stage}.launch": f"{values['launch']} splits the model across CUDA GPUs, and no worker with one "
                    "has reported in (a `celery worker -Q gpu` reports its GPUs when it starts): use ddp or single."
                }
            )
        if values.get("load_in_4bit") and gpu is None:
            raise ValidationError(
                {
                    f"{stage}.load_in_4bit": "4-bit loading (QLoRA, bitsandbytes) needs a CUDA GPU, and no worker with "
                    "one has reported in (a `celery worker -Q gpu` reports its GPUs when it starts): train with "
                    "load_in_4bit=false."
                }
            )
    check = check_memory(fields["config"], fields["reward_version"])
    if check is not None and not check.fits:
        raise ValidationError({"settings": check.message()})


def _refuse_unservable(fields: Mapping[str, Any]) -> None:
    """`transformers serve` loads whole models only: a round that would sample an adapter through it is refused."""
    config = fields["config"]
    sample = config.get("sample", {})
    if not sample.get("server_url") or sample.get("server_kind") != "transformers":
        return
    trained = [stage for stage in config if stage not in ("sample", "reward") and config[stage].get("use_lora", True)]
    base = fields["base_version"]
    if trained or (not any(stage != "sample" for stage in config) and base is not None and is_adapter(base.path)):
        what = f"the {trained[0]} stage trains an adapter" if trained else f"{base} is an adapter"
        raise ValidationError(
            {
                "sample.server_kind": f"transformers serve loads whole models, not PEFT adapters, and {what}: sample "
                "through vLLM (server_kind=vllm, `vllm serve --enable-lora`), or without a server_url."
            }
        )


def _enqueue(training_round: TrainingRound) -> None:
    from training.tasks import run_training_round  # training.tasks imports this module

    result = run_training_round.delay(training_round.pk)
    TrainingRound.objects.filter(pk=training_round.pk).update(celery_task_id=result.id or "")


def resolve_base(project: Project, base: str, *, trusted: bool = False) -> tuple[ModelVersion | None, str]:
    """(registered version or None, root base model) for what a lead typed: "", "v3", "policy-v3", a hub id or a
    folder under ARBITER_MODEL_ROOTS (the real path, symlinks followed, is what the round loads).

    Empty means the project's active policy, else ARBITER_DEFAULT_BASE_MODEL (the operator's). Anything else is
    refused with one message whether or not it exists, so a refusal tells nothing about the server's files; the
    artifacts root is refused too, as it holds every project's adapters. trusted (the operator's command line,
    run with the server's own file access): any hub id or local path. A folder that is not a model (or an adapter
    on one) is refused, naming what it lacks, before anything is queued; a hub id cannot be checked offline.
    """
    base = (base or "").strip()
    if not base:
        if active := ModelVersion.objects.active_policy(project):
            return active, active.base_model
        if settings.ARBITER_DEFAULT_BASE_MODEL:
            return None, settings.ARBITER_DEFAULT_BASE_MODEL
        raise ValidationError(
            {"base": "The project has no active policy: give a registered version, a hub id or an allowed path."}
        )
    if version := _version_named(project, ModelVersion.Kind.POLICY, base):
        return version, version.base_model
    if VERSION_NAME.fullmatch(base):
        raise ValidationError({"base": f"This project has no {base} (its policies: the Models page)."})
    if HUB_ID.fullmatch(base) and (trusted or settings.ARBITER_ALLOW_HUB_MODELS):
        return None, base
    if base.startswith(("/", "~", ".")) and (path := _allowed_path(base, trusted=trusted)):
        if not os.path.exists(path):  # under a root the operator opened to leads: saying so tells nothing new
            raise ValidationError({"base": f"No model at {base}."})
        if missing := missing_files(path):
            raise ValidationError({"base": _not_a_model(base, path, missing)})
        return None, path
    raise ValidationError({"base": _refused_base()})


def _allowed_path(base: str, *, trusted: bool) -> str | None:
    """The real path of `base` if a round may load it: under a model root and not under the artifacts root."""
    path = Path(os.path.realpath(os.path.expanduser(base)))
    if trusted:
        return str(path)
    if path.is_relative_to(os.path.realpath(settings.ARBITER_ARTIFACTS_ROOT)):
        return None
    roots = [os.path.realpath(root) for root in settings.ARBITER_MODEL_ROOTS]
    return str(path) if any(path.is_relative_to(root) for root in roots) else None


def _not_a_model(base: str, path: str, missing: list[str]) -> str:
    """Names the folder as the lead gave it (not its real path) and what a round would fail to load."""
    message = f"{base} is not a model a round can load: it has no {'; no '.join(missing)}."
    if inside := models_inside(path):  # e.g. the folder make_tiny_model wrote, which holds policy/ and reward/
        subfolders = " and ".join(f"{name}/" for name in inside)
        message += f" It holds models in {subfolders}: give {base.rstrip('/')}/{inside[0]}, for instance."
    return message


def _refused_base() -> str:
    allowed = ["a policy version of this project (policy-v3)"]
    if settings.ARBITER_ALLOW_HUB_MODELS:
        allowed.append("a hub id (org/name)")
    if settings.ARBITER_MODEL_ROOTS:
        allowed.append(f"a folder under {', '.join(map(str, settings.ARBITER_MODEL_ROOTS))}")
    return f"Not a base this server allows: give {' or '.join(allowed)}."


def _resolve_reward(project: Project, method: str, reward_model: str) -> ModelVersion | None:
    reward_model = (reward_model or "").strip()
    if not reward_model:
        return None
    if method not in SCORED_STAGES:
        raise ValidationError({"reward_model": "Only a PPO, RLOO, GRPO or best_of_n round scores with a reward model."})
    if version := _version_named(project, ModelVersion.Kind.REWARD, reward_model):
        return version
    raise ValidationError({"reward_model": f"No reward model {reward_model!r} in this project (e.g. reward-v2)."})


def _version_named(project: Project, kind: str, name: str) -> ModelVersion | None:
    return ModelVersion.objects.named(project, kind, name)


def build_config(
    stages: list[str], *, base_model: str, policy_path: str, settings_: Mapping[str, Any]
) -> dict[str, dict[str, Any]]:
    """Each stage's config as a dict (asdict of its dataclass), from the defaults and the lead's settings."""
    classes = stage_configs()
    per_stage: dict[str, dict[str, Any]] = {stage: {} for stage in stages}
    for key, value in settings_.items():
        stage, _, name = key.rpartition(".")
        targets = [stage] if stage else [s for s in stages if name in _field_names(classes[s])]
        if stage and stage not in stages:
            raise ValidationError({key: f"This round has no {stage} stage (its stages: {', '.join(stages)})."})
        if not targets or name not in _field_names(classes[targets[0]]):
            raise ValidationError({key: f"Not a setting of {' or '.join(stages)}."})
        if name == "model_name_or_path":
            raise ValidationError({key: "Set the model with the round's base, not a setting."})
        for target in targets:
            per_stage[target][name] = value
    config = {}
    for stage in stages:
        # A reward model starts from the base model (with a fresh head); a policy from the base policy.
        model = base_model if stage == "reward" else policy_path
        given = per_stage[stage] if stage == "sample" else {"model_name_or_path": model, **per_stage[stage]}
        try:
            config[stage] = classes[stage].from_dict(given).to_dict()
        except ValueError as error:
            name = str(error).split(":", 1)[0]
            raise ValidationError({f"{stage}.{name}": str(error)}) from None
    return config


def _field_names(config_class: type) -> set[str]:
    return set(config_class.__dataclass_fields__)


# Running -------------------------------------------------------------------------------------------------


class _Cancelled(Exception):
    pass


class RoundFailed(Exception):
    """A failure already worded for the lead: its message is the round's error as it stands."""


def failure_message(error: Exception, training_round: TrainingRound) -> str:
    """A failed round's error as leads see it (API, pages, admin): the problem without server paths or the
    traceback, which the worker's log has."""
    if isinstance(error, RoundFailed):
        return str(error)
    # torch.OutOfMemoryError (CUDA or CPU) by name: torch may be what failed to import.
    if type(error).__name__ == "OutOfMemoryError" or isinstance(error, MemoryError):
        return (
            "Out of memory: lower per_device_batch_size or max_length (or raise gradient_accumulation_steps), "
            "or train a LoRA adapter (use_lora=true)."
        )
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
        return "The worker's disk is full: free space for its artifacts and model cache, then relaunch."
    if isinstance(error, OSError):
        return (
            f"{type(error).__name__}: the worker could not read or write a model's files. Check that the base is a "
            "complete model (a hub id needs the worker to reach the hub); the worker log names the file."
        )
    if isinstance(error, ValueError):  # how the engine and its libraries say what is wrong with a config or data
        return f"{type(error).__name__}: {hide_paths(' '.join(str(error).split()))[:400]}"
    return f"{type(error).__name__}: the worker failed; see the worker log for {training_round}."


class _LogTail(logging.Handler):
    """The last lines logged while a round runs, for the round page."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: collections.deque[str] = collections.deque(maxlen=LOG_TAIL_LINES)
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))

    def emit(self, record: logging.LogRecord) -> None:
        # Leads read the tail: a traceback (server paths, code) stays in the worker's own log.
        self.lines.append(self.format(logging.makeLogRecord({**record.__dict__, "exc_info": None, "exc_text": None})))

    def text(self) -> str:
        return "\n".join(self.lines)


def run_round(round_id: int) -> TrainingRound:
    """Run a queued round to its end; a round that is not queued (a redelivered message) is left as it is."""
    training_round = TrainingRound.objects.select_related("project", "snapshot", "base_version").get(pk=round_id)
    if not training_round.claim():
        logger.info("Round %s is %s, not queued: not running it again", round_id, training_round.status)
        training_round.refresh_from_db()
        return training_round
    log = _LogTail()
    watched = [logging.getLogger(name) for name in ("training", "transformers", "trl", "peft")]
    for each in watched:
        each.addHandler(log)
    # Beats while the worker loads models or writes files between progress reports, and carries the log tail.
    heartbeat = Heartbeat(
        lambda: training_round.beat(log_tail=log.text()),
        settings.ARBITER_ROUND_HEARTBEAT_SECONDS,
        name=f"heartbeat-round-{round_id}",
    )
    heartbeat.start()
    try:
        _run_stages(training_round)
    except _Cancelled:
        logger.info("Round %s cancelled", round_id)
        training_round.finish(TrainingRound.Status.CANCELLED)
    except Exception as error:
        logger.exception("Round %s failed (%s)", round_id, training_round)
        training_round.finish(TrainingRound.Status.FAILED, error=failure_message(error, training_round))
    else:
        training_round.finish(TrainingRound.Status.SUCCEEDED)
    finally:
        heartbeat.stop()
        for each in watched:
            each.removeHandler(log)
        TrainingRound.objects.filter(pk=round_id).update(log_tail=log.text())
    training_round.refresh_from_db()
    return training_round


def _run_stages(training_round: TrainingRound) -> None:
    from training.engine.best_of_n import train_best_of_n
    from training.engine.dpo import train_dpo
    from training.engine.generate import GenerationStopped
    from training.engine.kto import train_kto
    from training.engine.online import train_grpo, train_rloo
    from training.engine.ppo import train_ppo
    from training.engine.reward import train_reward
    from training.engine.sft import train_sft
    from training.sampling import sample_into_queue

    classes = stage_configs()
    # In STAGES' order: PostgreSQL's jsonb keeps an object's keys sorted, not in the order they were written.
    stages = [stage for stage in STAGES[training_round.method] if stage in training_round.config]
    training = [stage for stage in stages if stage != "sample"]
    reward_path = training_round.reward_version.path if training_round.reward_version else ""
    policy = training_round.base_version
    if training:
        snapshot = run_snapshot(training_round.snapshot)
        if snapshot.status != DatasetSnapshot.Status.READY:
            raise RoundFailed(f"The dataset snapshot (export {snapshot.pk}) failed: {hide_paths(snapshot.error)}")
        if not snapshot.row_count:
            raise RoundFailed("The dataset snapshot has no rows: annotate more, or loosen the round's filters.")
        logger.info("Snapshot %s: %s rows, sha256 %s", snapshot.pk, snapshot.row_count, snapshot.sha256)
        data_file = snapshot.file.path
        out_root = Path(settings.ARBITER_ARTIFACTS_ROOT) / training_round.project.slug
        out_root = out_root / f"round-{training_round.number}"
        results = {}
        for index, stage in enumerate(training):
            config = classes[stage].from_dict(training_round.config[stage])
            output_dir = str(out_root / stage)
            progress = _progress_callback(training_round, stage, index, len(stages))
            training_round.beat(stage=stage, step=0, total_steps=0)
            logger.info("Stage %s: training from %s into %s", stage, config.model_name_or_path, output_dir)
            ratings = _ratings_file(training_round) if stage == "reward" and config.objective == "both" else None
            if config.launch != "single":  # every GPU of the worker (or more machines) under accelerate launch
                reward_model = reward_path if stage in SCORED_STAGES else ""
                result = run_launched(stage, config, data_file, output_dir, progress, reward_model=reward_model,
                                      ratings=ratings.file.path if ratings else "",
                                      machines=_launch_machines(config.launch))  # fmt: skip
            elif stage == "reward":
                result = train_reward(config, data_file, output_dir, progress, ratings.file.path if ratings else None)
            elif stage == "ppo":
                result = train_ppo(config, data_file, reward_path, output_dir, progress)
            elif stage == "best_of_n":
                result = train_best_of_n(config, data_file, reward_path, output_dir, progress)
            elif stage == "dpo":
                result = train_dpo(config, data_file, output_dir, progress)
            elif stage == "kto":
                result = train_kto(config, data_file, output_dir, progress)
            elif stage == "rloo":
                result = train_rloo(config, data_file, reward_path, output_dir, progress)
            elif stage == "grpo":
                result = train_grpo(config, data_file, reward_path, output_dir, progress)
            else:
                result = train_sft(config, data_file, output_dir, progress)
            if stage == "reward":
                reward_path = result.output_dir
                if ratings:
                    result.eval_report["ratings_snapshot_sha256"] = ratings.sha256
            if result.stopped:
                raise _Cancelled
            if result.warning:  # the stage ended on its own terms (PPO's KL run-away stop): the round goes on
                logger.warning("Stage %s: %s", stage, result.warning)
                training_round.warn(result.warning)
            logger.info("Stage %s done: %s steps, eval %s", stage, result.steps, result.eval_report)
            results[stage] = (config, result)
    if not reward_path and (latest := ModelVersion.objects.latest_reward(training_round.project)):
        reward_path = latest.path  # scores the new policy's eval samples and, for uncertainty, its pairs
    if training:
        policy = _register(training_round, snapshot, results, reward_path) or policy
    if "sample" in stages:
        report = _progress_callback(training_round, "sample", len(stages) - 1, len(stages))
        training_round.beat(stage="sample", step=0, total_steps=0)  # the page says "sampling" before the first batch
        try:
            made = sample_into_queue(
                training_round.project,
                policy,
                round_number=training_round.number,
                config=classes["sample"].from_dict(training_round.config["sample"]),
                previous=training_round.base_version if policy != training_round.base_version else policy.parent,
                base_model=training_round.base_model,
                reward_path=reward_path,
                progress=lambda done, total: report(done, total, {}),
            )
        except GenerationStopped:
            raise _Cancelled from None
        logger.info(
            "New samples in the queue: %s responses, %s tasks; %s eval pairs of the same text recorded as ties",
            made["responses"], made["tasks"], made["automatic_ties"],
        )  # fmt: skip


def _ratings_file(training_round: TrainingRound) -> DatasetSnapshot:
    """The rated answers a reward model on both pairs and ratings reads beside the round's pairs snapshot: an
    unpaired snapshot of the same filters (those that apply to it), written now."""
    unpaired = DatasetSnapshot.Kind.UNPAIRED
    options = {name: value for name, value in training_round.filters.items() if unpaired in EXPORT_OPTIONS[name].kinds}
    snapshot = run_snapshot(create_snapshot(training_round.project, kind=unpaired, filters=options))
    if snapshot.status != DatasetSnapshot.Status.READY:
        raise RoundFailed(f"The ratings snapshot (export {snapshot.pk}) failed: {hide_paths(snapshot.error)}")
    if not snapshot.row_count:
        raise RoundFailed("The ratings snapshot has no rows: rate some answers, or train on pairs (objective=pairs).")
    logger.info("Ratings snapshot %s: %s rows, sha256 %s", snapshot.pk, snapshot.row_count, snapshot.sha256)
    return snapshot


def _launch_machines(launch: str) -> list[str]:
    """accelerate launch's multi-machine arguments from the settings: DeepSpeed presets only, which start the other
    machines themselves (see ARBITER_LAUNCH_MACHINES)."""
    if settings.ARBITER_LAUNCH_MACHINES == 1 or launch not in ("zero2", "zero3"):
        return []
    host, port = settings.ARBITER_LAUNCH_MAIN_ADDRESS.split(":")
    return [
        "--num_machines", str(settings.ARBITER_LAUNCH_MACHINES), "--machine_rank", "0",
        "--main_process_ip", host, "--main_process_port", port,
        "--deepspeed_hostfile", settings.ARBITER_LAUNCH_HOSTFILE, "--deepspeed_multinode_launcher", "pdsh",
    ]  # fmt: skip


def _progress_callback(training_round: TrainingRound, stage: str, index: int, stages: int) -> Any:
    def progress(step: int, total: int, metrics: dict[str, float]) -> bool:
        if metrics:
            shown = ", ".join(f"{name} {value:.4g}" for name, value in sorted(metrics.items()))
            logger.info("%s step %s/%s: %s", stage, step, total, shown)
            # JSON has no NaN or infinity: a diverged value is stored as null (and is in the log line above).
            values = {name: value if math.isfinite(value) else None for name, value in metrics.items()}
            RoundMetric.objects.create(training_round=training_round, stage=stage, step=step, values=values)
        done = (index + (step / total if total else 0)) / stages
        still_running = training_round.beat(stage=stage, step=step, total_steps=total, progress=min(done, 1.0))
        # Stop when the lead cancelled, or when the round was failed under us (its worker was thought dead).
        return not still_running or training_round.cancel_is_requested()

    return progress


def _register(
    training_round: TrainingRound, snapshot: DatasetSnapshot, results: dict, reward_path: str
) -> ModelVersion | None:
    """Registry entries for what the round trained, each pointing at the snapshot, config and code; the policy."""
    common = {
        "project": training_round.project,
        "training_round": training_round,
        "snapshot_sha256": snapshot.sha256,
        "code_version": code_version(),
    }
    if "reward" in results:
        config, result = results["reward"]
        ModelVersion.register(
            kind=ModelVersion.Kind.REWARD,
            base_model=training_round.base_model,
            adapter_path=result.output_dir,
            config=config.to_dict(),
            eval_report={**result.eval_report, **_human_eval_accuracy(training_round, result.output_dir)},
            **common,
        )
    policy_stage = next((s for s in ("ppo", "dpo", "kto", "sft", "rloo", "grpo", "best_of_n") if s in results), None)
    if policy_stage is None:
        return None
    config, result = results[policy_stage]
    report = {**result.eval_report, **_evaluate_policy(training_round, result.output_dir, reward_path, config)}
    return ModelVersion.register(
        kind=ModelVersion.Kind.POLICY,
        base_model=training_round.base_model,
        adapter_path=result.output_dir,
        parent=training_round.base_version,
        config=config.to_dict(),
        eval_report=report,
        **common,
    )


def _human_eval_accuracy(training_round: TrainingRound, reward_path: str) -> dict[str, Any]:
    """How often the reward model prefers what people preferred on eval prompts, which no round trains on."""
    from training.engine.generate import score

    if training_round.filters.get("split") == "eval":
        return {}  # it trained on the eval split: nothing is held out
    training_round.beat(stage="eval_reward", step=0, total_steps=0)
    filters = {**training_round.filters, "split": "eval"}
    snapshot = run_snapshot(create_snapshot(training_round.project, kind=DatasetSnapshot.Kind.PAIRS, filters=filters))
    if snapshot.status != DatasetSnapshot.Status.READY or not snapshot.row_count:
        return {}
    with open(snapshot.file.path) as rows:
        pairs = [json.loads(line) for line in rows]
    conversations = [row["prompt"] + row[side] for side in ("chosen", "rejected") for row in pairs]
    rewards = score(reward_path, conversations).tolist()
    chosen, rejected = rewards[: len(pairs)], rewards[len(pairs) :]
    wins = sum(c > r for c, r in zip(chosen, rejected, strict=True))
    logger.info("Reward model on %s held-out human pairs: %s agree", len(pairs), wins)
    return {
        "human_eval_accuracy": wins / len(pairs),
        "human_eval_pairs": len(pairs),
        "human_eval_snapshot_sha256": snapshot.sha256,
    }


def _evaluate_policy(training_round: TrainingRound, policy_path: str, reward_path: str, config: Any) -> dict:
    """Mean reward (given a reward model) and KL to the reference, on the project's first eval prompts (which no
    round trains on by default), else its first prompts."""
    from training.engine.generate import evaluate_policy

    prompts = training_round.project.prompts.order_by("id")
    held_out = prompts.filter(split=Prompt.Split.EVAL)
    prompts = [p.messages for p in (held_out if held_out.exists() else prompts)[:EVAL_PROMPTS]]
    training_round.beat(stage="eval", step=0, total_steps=0)  # the training stage's steps are over
    logger.info("Evaluating the policy on %s prompts", len(prompts))
    return evaluate_policy(
        policy_path,
        prompts,
        reward_model_path=reward_path or None,
        reference_path=config.model_name_or_path,  # the round's parent: KL to where this round started
        max_new_tokens=getattr(config, "max_new_tokens", 64),
        seed=config.seed,
    )


def code_version() -> str:
    """The git commit of the running code (ARBITER_CODE_VERSION where the image has no .git)."""
    if settings.ARBITER_CODE_VERSION:
        return settings.ARBITER_CODE_VERSION
    try:
        found = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=settings.BASE_DIR, capture_output=True, text=True, timeout=10
        )
    except OSError:
        return ""
    return found.stdout.strip() if found.returncode == 0 else ""


# Watching ------------------------------------------------------------------------------------------------


def fail_stale_rounds() -> int:
    """Fail running rounds whose worker stopped sending heartbeats (killed, out of memory, machine lost), then the
    pending snapshots of rounds that ended without writing them; returns how many rounds it failed."""
    failed = fail_stale(
        TrainingRound.objects.all(),
        timeout=settings.ARBITER_ROUND_HEARTBEAT_TIMEOUT,
        message="The worker stopped sending heartbeats (last at {seen}): it was killed or lost its machine. "
        "Relaunch the round to train again.",
    )
    end_unwritten_snapshots()
    return len(failed)
