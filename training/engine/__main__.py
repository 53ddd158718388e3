"""Run one stage from the command line, single process or under `accelerate launch -m training.engine …`.

    python -m training.engine reward --data pairs.jsonl --out out/rm --set model_name_or_path=out/tiny/reward
    python -m training.engine reward --data unpaired.jsonl --out out/rm --set objective=ratings
    python -m training.engine reward --data pairs.jsonl --ratings unpaired.jsonl --out out/rm --set objective=both
    python -m training.engine dpo --data pairs.jsonl --out out/dpo --config dpo.json --set beta=0.2
    python -m training.engine kto --data unpaired.jsonl --out out/kto --set desirable_weight=1.2
    python -m training.engine ppo --prompts pairs.jsonl --reward-model out/rm --out out/ppo --set model_name_or_path=…
    python -m training.engine rloo --prompts pairs.jsonl --reward-model out/rm --out out/rloo --set num_generations=4
    python -m training.engine best_of_n --prompts pairs.jsonl --reward-model out/rm --out out/bon --set k=8

Settings come from the stage's config defaults, then --config (a JSON object), then each --set key=value.
Progress is printed one line per step; the first Ctrl-C (or SIGTERM) stops the stage cleanly after the current
step, with what it has saved; the result is printed as JSON at the end.
"""

import argparse
import json
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import asdict

import datasets
import torch
import transformers

from training.engine.best_of_n import train_best_of_n
from training.engine.common import ProgressFn, StageResult
from training.engine.config import (
    BaseConfig,
    BestOfNConfig,
    DPOConfig,
    GRPOConfig,
    KTOConfig,
    PPOConfig,
    RewardConfig,
    RLOOConfig,
    SFTConfig,
)
from training.engine.dpo import train_dpo
from training.engine.kto import train_kto
from training.engine.launcher import exit_with_runner
from training.engine.online import train_grpo, train_rloo
from training.engine.ppo import train_ppo
from training.engine.reward import train_reward
from training.engine.sft import train_sft

# stage name: (its config class, its function(config, data_file, output_dir, progress) -> StageResult)
STAGES: dict[str, tuple[type[BaseConfig], Callable[..., StageResult]]] = {
    "reward": (RewardConfig, train_reward),
    "dpo": (DPOConfig, train_dpo),
    "kto": (KTOConfig, train_kto),
    "sft": (SFTConfig, train_sft),
    "ppo": (PPOConfig, train_ppo),  # takes the reward model too: (config, prompts, reward_model, output_dir, progress)
    "rloo": (RLOOConfig, train_rloo),  # as ppo
    "grpo": (GRPOConfig, train_grpo),  # as ppo
    "best_of_n": (BestOfNConfig, train_best_of_n),  # as ppo: prompts and a reward model
}
# The stages that take the reward model that scores them, given with --reward-model.
SCORED = ("ppo", "rloo", "grpo", "best_of_n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.engine", description=__doc__.splitlines()[0])
    parser.add_argument("stage", choices=sorted(STAGES))
    parser.add_argument(
        "--data", "--prompts", required=True, help="the export to train on (JSONL or Parquet); scored stages: prompts"
    )
    parser.add_argument("--reward-model", help=f"{', '.join(SCORED)}: the reward model that scores (its directory)")
    parser.add_argument("--ratings", help="reward with objective=both: the unpaired export beside the pairs")
    parser.add_argument("--out", required=True, help="output directory: checkpoints and the final model")
    parser.add_argument("--config", help="a JSON file with settings")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="one setting; repeatable")
    # The protocol of training/engine/launcher.py, which runs a round's stage under accelerate launch.
    parser.add_argument("--progress-json", action="store_true", help="print each step and the result as JSON lines")
    parser.add_argument("--stop-file", help="stop after the current step once this file exists")
    parser.add_argument("--exit-with-runner", action="store_true", help="exit when stdin closes (the runner is gone)")
    args = parser.parse_args(argv)
    if (args.stage in SCORED) != (args.reward_model is not None):
        parser.error(f"--reward-model: required by {', '.join(SCORED)}, and by them only")

    if args.exit_with_runner:
        exit_with_runner()
    config_class, train = STAGES[args.stage]
    settings = {}
    if args.config:
        with open(args.config, encoding="utf-8") as file:
            settings = json.load(file)
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--set {item}: expected KEY=VALUE")
        settings[key.strip()] = value
    try:
        config = config_class.from_dict(settings)
    except ValueError as error:
        parser.error(str(error))

    # One line per step is the progress report; the libraries' own bars would only interleave with it.
    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    progress = _printer(as_json=args.progress_json, stop_file=args.stop_file)
    if args.stage in SCORED:
        result = train(config, args.data, args.reward_model, args.out, progress)
    elif args.stage == "reward":
        result = train(config, args.data, args.out, progress, args.ratings)
    else:
        result = train(config, args.data, args.out, progress)
    if _is_main_process():
        print(json.dumps({"result": asdict(result)} if args.progress_json else asdict(result), default=str), flush=True)
    if torch.distributed.is_initialized():  # left to the interpreter's exit, gloo's threads may abort the process
        torch.distributed.destroy_process_group()
    return 0


def _printer(*, as_json: bool = False, stop_file: str | None = None) -> ProgressFn:
    """Print each step (on the main process only) and ask to stop once a SIGINT or SIGTERM has arrived, or the stop
    file exists. Under accelerate launch the stages follow the main process's answer on every process."""
    stop = {"asked": False}

    def ask_to_stop(signum: int, frame: object) -> None:
        if stop["asked"]:  # a second signal: stop now, not after the step
            raise KeyboardInterrupt
        stop["asked"] = True
        print("stopping after this step…", file=sys.stderr, flush=True)

    signal.signal(signal.SIGINT, ask_to_stop)
    signal.signal(signal.SIGTERM, ask_to_stop)

    def progress(step: int, total: int, metrics: dict[str, float]) -> bool:
        if _is_main_process() and as_json:
            print(json.dumps({"step": step, "total": total, "metrics": metrics}), flush=True)
        elif _is_main_process():
            shown = " ".join(f"{key}={value:.4g}" for key, value in metrics.items())
            print(f"step {step}/{total} {shown}".rstrip(), flush=True)
        return stop["asked"] or bool(stop_file and os.path.exists(stop_file))

    return progress


def _is_main_process() -> bool:
    return os.environ.get("RANK", "0") == "0"  # accelerate launch sets RANK per process


if __name__ == "__main__":
    sys.exit(main())
