"""Step time and peak memory of each training stage as the model grows: random weights at Qwen2.5-0.5B-Instruct's
shape (hidden 896, 14 heads over 2 KV heads, vocabulary 151,936, tied embeddings) with its real tokenizer and chat
template, from a few layers up to the full 24 (the real 0.5B), on the CPU.

    .venv/bin/python benchmarks/stage_scaling.py                  # 2, 6, 12 and 24 layers, every stage (~15 minutes)
    .venv/bin/python benchmarks/stage_scaling.py --quick          # 2 and 6 layers, fewer steps (~3 minutes)
    .venv/bin/python benchmarks/stage_scaling.py --layers 24 --stages dpo --steps 5
    .venv/bin/python benchmarks/stage_scaling.py --tiny --stages ppo,rloo,grpo   # the tests' 0.1 M Llama instead

The models are built with training/engine/tiny.py's build_tiny_models_like from ../shared/data/tokenizers/
qwen2.5-instruct (its config.json with the layer count changed), saved, and loaded by the stages with
from_pretrained as real checkpoints are. Each stage (reward, DPO, SFT, PPO) runs through the engine's train_*
function with its config's defaults (LoRA, dtype auto) except a fixed batch, max_length and step count, each in a
child process of its own so that one stage's peak does not carry into the next. A step's time is the time between
two progress reports (data, forward, backward, optimiser and logging: all a step costs); the first step is left
out. Peak memory is the child's peak resident set size (getrusage), loading and saving included; on CUDA also
torch.cuda.max_memory_allocated. The machine's 1-minute load average is recorded before each stage.
"""

import argparse
import json
import math
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import Meter, code_version  # noqa: E402
from training_bench import OUTPUT, REPO_ROOT, child_env, generate_pairs, run_child  # noqa: E402

QWEN = REPO_ROOT.parent / "shared" / "data" / "tokenizers" / "qwen2.5-instruct"
STAGES = ("reward", "dpo", "sft", "ppo", "rloo", "grpo")
SEED = 20261204


# Children (each prints one JSON line last) ---------------------------------------------------------------------


def child_build(spec: dict) -> dict:
    """The policy and reward model like spec["like"], its config.json's sizes unless spec["sizes"] shrinks them,
    with spec["layers"] layers; their parameter count (read from the saved files)."""
    from safetensors import safe_open
    from transformers import AutoConfig, AutoModelForCausalLM

    from training.engine.tiny import TinyConfig, build_tiny_models, build_tiny_models_like

    if spec.get("tiny"):  # the tests' model (training/engine/tiny.py), 0.1 M parameters
        paths = build_tiny_models(Path(spec["out"]))
        return {"parameters": sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(paths.policy).parameters())}
    real = AutoConfig.from_pretrained(spec["like"])
    sizes = {
        "hidden_size": real.hidden_size,
        "intermediate_size": real.intermediate_size,
        "num_attention_heads": real.num_attention_heads,
        "num_key_value_heads": real.num_key_value_heads,
        "max_position_embeddings": real.max_position_embeddings,
        "tie_word_embeddings": real.tie_word_embeddings,
        **spec.get("sizes", {}),
    }
    paths = build_tiny_models_like(
        Path(spec["out"]), Path(spec["like"]), config=TinyConfig(**sizes, num_hidden_layers=spec["layers"])
    )
    with safe_open(paths.policy / "model.safetensors", "pt") as weights:
        names = weights.keys()  # a list, not a mapping
        parameters = sum(math.prod(weights.get_slice(name).get_shape()) for name in names)
    return {"parameters": parameters}


def stage_config(spec: dict) -> Any:
    """The stage's config as a round makes it, with the benchmark's model, steps, batch and length."""
    from training.engine.config import DPOConfig, GRPOConfig, PPOConfig, RewardConfig, RLOOConfig, SFTConfig

    models = Path(spec["models"])
    common = dict(
        max_steps=spec["steps"],
        per_device_batch_size=spec["batch"],
        max_length=spec["max_length"],
        eval_fraction=0.0,  # no held-out report at the end: it is not a training step
        save_steps=spec["steps"] + 1,  # no checkpoint between the timed steps
        seed=SEED % 1000,
        dtype=spec.get("dtype", "auto"),
        load_in_4bit=spec.get("load_in_4bit", False),
    )
    stage = spec["stage"]
    if stage == "reward":
        return RewardConfig(model_name_or_path=str(models / "reward"), **common)
    if stage == "ppo":
        return PPOConfig(model_name_or_path=str(models / "policy"), max_new_tokens=spec["new_tokens"], **common)
    if stage in (
        "rloo",
        "grpo",
    ):  # the same prompts a step as PPO, 4 responses each: 2 micro-batches of 2 prompts' worth
        online = {**common, "per_device_batch_size": 2 * spec["batch"], "gradient_accumulation_steps": 2}
        config_class = RLOOConfig if stage == "rloo" else GRPOConfig
        return config_class(model_name_or_path=str(models / "policy"), max_new_tokens=spec["new_tokens"],
                            num_generations=4, **online)  # fmt: skip
    return {"dpo": DPOConfig, "sft": SFTConfig}[stage](model_name_or_path=str(models / "policy"), **common)


def child_stage(spec: dict) -> dict:
    """One stage through the engine's train_* function; the time of each step after the first, and the peaks."""
    import torch

    from training.engine.dpo import train_dpo
    from training.engine.online import train_grpo, train_rloo
    from training.engine.ppo import train_ppo
    from training.engine.reward import train_reward
    from training.engine.sft import train_sft

    torch.set_num_threads(spec["threads"])
    reports: list[float] = []
    cpu: list[float] = []  # this process's CPU time: on a busy machine, closer than wall time to a quiet step's

    def progress(step: int, total: int, metrics: dict[str, float]) -> bool:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        reports.append(time.perf_counter())
        cpu.append(time.process_time())
        return False

    config, out, data = stage_config(spec), spec["out"], spec["data"]
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    meter = Meter()
    meter.start()
    started = time.perf_counter()
    if spec["stage"] == "reward":
        train_reward(config, data, out, progress)
    elif spec["stage"] == "dpo":
        train_dpo(config, data, out, progress)
    elif spec["stage"] == "sft":
        train_sft(config, spec["sft_data"], out, progress)
    else:
        train = {"ppo": train_ppo, "rloo": train_rloo, "grpo": train_grpo}[spec["stage"]]
        train(config, data, str(Path(spec["models"]) / "reward"), out, progress)
    total = time.perf_counter() - started
    step_s = [after - before for before, after in zip(reports, reports[1:], strict=False)]
    return {
        "step_s": step_s,
        "mean_step_s": statistics.mean(step_s) if step_s else None,
        "mean_cpu_step_s": (cpu[-1] - cpu[0]) / (len(cpu) - 1) if len(cpu) > 1 else None,
        "first_step_s": reports[0] - started if reports else None,  # loading, data preparation and step 1
        "total_s": total,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # KiB on Linux
        "cuda_peak_mib": torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None,
        **meter.stop(),
    }


# Parent ----------------------------------------------------------------------------------------------------------


def write_data(folder: Path, rows: int) -> dict[str, str]:
    """A pairs export (reward, DPO and PPO's prompts) and an SFT export of the same conversations."""
    pairs = folder / "pairs.jsonl"
    generate_pairs(pairs, rows)
    sft = folder / "sft.jsonl"
    with pairs.open(encoding="utf-8") as lines, sft.open("w", encoding="utf-8") as out:
        for line in lines:
            row = json.loads(line)
            out.write(json.dumps({"messages": row["prompt"] + row["chosen"]}) + "\n")
    return {"data": str(pairs), "sft_data": str(sft)}


def build(out: Path, layers: int | str, env: dict[str, str], sizes: dict | None = None) -> dict:
    spec = {"kind": "build", "like": str(QWEN), "out": str(out), "layers": layers, "sizes": sizes or {}}
    return run_child({**spec, "tiny": layers == "tiny"}, env, __file__)


def run_stage(spec: dict, env: dict[str, str]) -> dict:
    """One stage in a fresh child, with the machine's load average just before."""
    load = os.getloadavg()[0]
    result = run_child({**spec, "kind": "stage"}, env, __file__)
    return {**result, "load_1min": load}


def table(rows: list[dict]) -> str:
    lines = [
        "| layers | parameters | stage | steps timed | mean step (s) | peak RSS (MiB) | load (1 min) | others (%) |",
        "| ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        mean = "–" if r["mean_step_s"] is None else f"{r['mean_step_s']:.2f}"
        lines.append(
            f"| {r['layers']} | {r['parameters'] / 1e6:.3g} M | {r['stage']} | {len(r['step_s'])} | {mean}"
            f" | {r['peak_rss_mib']:,.0f} | {r['load_1min']:.2f} | {r['other_pct']:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2 and 6 layers, 3 steps (2 timed)")
    parser.add_argument("--layers", default="2,6,12,24", help="layer counts (default 2,6,12,24; 24 is the real 0.5B)")
    parser.add_argument("--stages", default=",".join(STAGES), help=f"stages (default {','.join(STAGES)})")
    parser.add_argument("--steps", type=int, default=4, help="steps per stage below 12 layers, first untimed (4)")
    parser.add_argument("--big-steps", type=int, default=3, help="steps per stage from 12 layers on (default 3)")
    parser.add_argument(
        "--batch", type=int, default=2, help="pairs (reward, DPO), rows (SFT), prompts (PPO; RLOO, GRPO ×4 answers): 2"
    )
    parser.add_argument("--max-length", type=int, default=192, help="tokens per sequence (default 192)")
    parser.add_argument("--new-tokens", type=int, default=32, help="PPO's max_new_tokens (default 32)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads (default: all CPUs)")
    parser.add_argument("--tiny", action="store_true", help="training/engine/tiny.py's model instead of Qwen's shapes")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        spec = json.loads(args.child)
        result = {"build": child_build, "stage": child_stage}[spec["kind"]](spec)
        print("\n" + json.dumps(result))
        return
    if not args.tiny and not (QWEN / "config.json").is_file():
        sys.exit(f"{QWEN}: no config.json; the real Qwen2.5 files live in ../shared/data/tokenizers/")
    layer_counts = [2, 6] if args.quick else [int(n) for n in args.layers.split(",")]
    layer_counts = ["tiny"] if args.tiny else layer_counts
    stages = [s for s in args.stages.split(",") if s]
    if unknown := set(stages) - set(STAGES):
        sys.exit(f"--stages: unknown {', '.join(sorted(unknown))} (known: {', '.join(STAGES)})")

    OUTPUT.mkdir(parents=True, exist_ok=True)
    print(f"uptime before: {os.getloadavg()}; engine {code_version('training/engine')}", file=sys.stderr)
    rows = []
    with tempfile.TemporaryDirectory(prefix="stage-scaling-") as tmp:
        tmp = Path(tmp)
        env = child_env(args.threads, tmp / "hf")
        data = write_data(tmp, rows=64)
        for layers in layer_counts:
            models = tmp / f"qwen-{layers}"
            built = build(models, layers, env)
            steps = 3 if args.quick else (args.steps if layers == "tiny" or layers < 12 else args.big_steps)
            for stage in stages:
                spec = {
                    **data,
                    "stage": stage,
                    "models": str(models),
                    "out": str(tmp / f"out-{layers}-{stage}"),
                    "steps": steps,
                    "batch": args.batch,
                    "max_length": args.max_length,
                    "new_tokens": args.new_tokens,
                    "threads": args.threads,
                }
                result = {**run_stage(spec, env), "layers": layers, "stage": stage, **built}
                rows.append(result)
                print(
                    f"  {layers} layers, {stage}: {result['mean_step_s'] or 0:.2f} s/step"
                    f" ({result['mean_cpu_step_s'] or 0:.2f} s of CPU),"
                    f" peak RSS {result['peak_rss_mib']:,.0f} MiB, load {result['load_1min']:.2f}",
                    file=sys.stderr,
                )
            for child in models.iterdir():  # a 24-layer pair is 4 GB: not kept past its rows
                for file in child.iterdir():
                    file.unlink()
    (OUTPUT / "stage_scaling.json").write_text(json.dumps(rows, indent=1))
    print(
        f"\nCPU: {os.cpu_count()} cores, {args.threads} torch threads; batch {args.batch}, max_length "
        f"{args.max_length}, PPO max_new_tokens {args.new_tokens}; engine {code_version('training/engine')}"
    )
    print(f"load average after: {', '.join(f'{x:.2f}' for x in os.getloadavg())}\n")
    print(table(rows))


if __name__ == "__main__":
    main()
