"""The GPU check: every stage at Qwen2.5-0.5B-Instruct's full shape (random weights, real tokenizer) in bfloat16 and
with QLoRA, against a bare torch loop doing the same work, and sampling speed; one command, about 8 minutes on one
H200.

    .venv/bin/python benchmarks/gpu_check.py                # a CUDA machine: prints the table, writes the JSON
    .venv/bin/python benchmarks/gpu_check.py --smoke        # any machine: tiny, float32, no QLoRA (a test runs it)

For each stage (reward, DPO, SFT, PPO), in bfloat16 LoRA and in QLoRA (load_in_4bit, NF4), a child process of its
own runs the engine's train_* function (benchmarks/stage_scaling.py's child) and reports the mean step time after the
first step and torch.cuda.max_memory_allocated (the CPU's peak RSS in --smoke). The reward and DPO stages are also
timed against benchmarks/training_bench.py's bare loops: the same model and LoRA adapter (PEFT), the same batches,
a plain forward, backward and AdamW step, alternating with our steps; the check passes when our step takes at most
--target (1.05) × the bare one. Sampling is timed with the engine's `sample` (what `generate` runs after loading)
and with vLLM when it is installed. Writes benchmarks/output/gpu_check.json; exits 1 when a ratio misses the target.
"""

import argparse
import importlib.util
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import stage_scaling  # noqa: E402
import training_bench  # noqa: E402
from _machine import code_version  # noqa: E402
from training_bench import OUTPUT, child_env, run_child  # noqa: E402

TARGET = 1.05  # our step may take at most 5 % more than the bare loop's
# Full: the real 0.5B. Smoke: Qwen2.5's tokenizer on a model small enough for a CPU test (~10 M parameters, most of
# them the 151,936-token embedding).
SHAPES = {
    "full": {"layers": 24, "sizes": {}},
    "smoke": {
        "layers": 2,
        "sizes": {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4, "num_key_value_heads": 2},
    },
}


def child_sampling(spec: dict) -> dict:
    """Tokens per second sampled by the engine (and by vLLM when installed), every response max_new_tokens long."""
    import torch

    from training.engine.common import BaseConfig, load_policy, load_tokenizer, pick_device
    from training.engine.demo import demo_prompts
    from training.engine.generate import sample

    torch.set_num_threads(spec["threads"])
    prompts, new_tokens, batch = demo_prompts(spec["prompts"]), spec["new_tokens"], spec["batch"]
    path = str(Path(spec["models"]) / "policy")
    tokenizer = load_tokenizer(path, padding_side="left")
    model = load_policy(BaseConfig(model_name_or_path=path, dtype=spec["dtype"]), device=pick_device()).eval()
    options = dict(num_samples=1, max_new_tokens=new_tokens, temperature=1.0, top_p=1.0, batch_size=batch, seed=0)
    sample(model, tokenizer, prompts[:batch], **options)  # warm-up
    started = time.perf_counter()
    batches = sample(model, tokenizer, prompts, **options)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    ours = sum(int(b["response_mask"].sum()) for b in batches) / (time.perf_counter() - started)
    result = {"engine_tokens_per_s": ours, "vllm_tokens_per_s": None, "vllm": "not installed"}
    try:
        from vllm import LLM, SamplingParams
    except ImportError:
        return result
    del model
    llm = LLM(model=path, dtype=spec["dtype"], seed=0, gpu_memory_utilization=0.5)
    texts = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in prompts]
    params = SamplingParams(max_tokens=new_tokens, temperature=1.0, ignore_eos=True)
    llm.generate(texts[:batch], params)  # warm-up
    started = time.perf_counter()
    outputs = llm.generate(texts, params)
    tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
    return {**result, "vllm_tokens_per_s": tokens / (time.perf_counter() - started), "vllm": "installed"}


def markdown(report: dict) -> str:
    lines = [
        f"Stages ({report['shape']}, {report['parameters'] / 1e6:.0f} M parameters, batch {report['batch']},"
        f" max_length {report['max_length']}; {report['device']}):",
        "",
        "| variant | stage | mean step (s) | peak memory (MiB) | ours, paired (s) | bare (s) | ours / bare | target |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in report["stages"]:
        bare = r.get("bare")
        compared = "– | – | – | –"
        if bare:
            verdict = "pass" if bare["ratio"] <= report["target"] else "FAIL"
            compared = f"{bare['ours_s']:.4f} | {bare['bare_s']:.4f} | {bare['ratio']:.3f} | {verdict}"
        lines.append(f"| {r['variant']} | {r['stage']} | {r['mean_step_s']:.4f} | {r['peak_mib']:,.0f} | {compared} |")
    s = report["sampling"]
    vllm = f"{s['vllm_tokens_per_s']:,.0f}" if s["vllm_tokens_per_s"] else f"– ({s['vllm']})"
    lines += ["", "| sampling | engine tokens/s | vLLM tokens/s |", "| --- | ---: | ---: |"]
    lines.append(
        f"| {s['prompts']} prompts × {s['new_tokens']} tokens, batch {s['batch']} | "
        f"{s['engine_tokens_per_s']:,.0f} | {vllm} |"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, float32, no QLoRA: runs on a CPU")
    parser.add_argument("--steps", type=int, help="steps per stage, the first untimed (default 20; 3 with --smoke)")
    parser.add_argument("--batch", type=int, default=4, help="pairs, rows or prompts per step (default 4)")
    parser.add_argument("--max-length", type=int, default=512, help="tokens per sequence (default 512)")
    parser.add_argument("--new-tokens", type=int, default=64, help="PPO's and sampling's new tokens (default 64)")
    parser.add_argument("--target", type=float, default=TARGET, help=f"ours / bare at most (default {TARGET})")
    parser.add_argument("--output", type=Path, default=OUTPUT / "gpu_check.json", help="the JSON report")
    parser.add_argument("--threads", type=int, default=1, help="torch threads in each child (default 1)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print("\n" + json.dumps(child_sampling(json.loads(args.child))))
        return 0
    import torch  # only to ask for CUDA; the work is in the children

    if not args.smoke and not torch.cuda.is_available():
        sys.exit("gpu_check: no CUDA device; --smoke runs the same steps on the CPU with tiny shapes")
    shape = SHAPES["smoke" if args.smoke else "full"]
    # Smoke: short enough for a test on a busy CPU (Qwen's 151,936-token head is most of the work there).
    steps = args.steps or (3 if args.smoke else 20)
    if args.smoke:
        args.batch, args.max_length, args.new_tokens = min(args.batch, 2), min(args.max_length, 128), 8
    # bf16 LoRA and QLoRA on a GPU; the CPU has no 4-bit kernels (bitsandbytes) and no fast bfloat16.
    variants = (
        {"float32 LoRA": {"dtype": "float32"}}
        if args.smoke
        else {
            "bfloat16 LoRA": {"dtype": "bfloat16"},
            "QLoRA (4-bit)": {"dtype": "bfloat16", "load_in_4bit": True},
        }
    )
    if not args.smoke and importlib.util.find_spec("bitsandbytes") is None:
        print("QLoRA skipped: bitsandbytes is not installed (pip install '.[qlora]')", file=sys.stderr)
        del variants["QLoRA (4-bit)"]
    device = "CPU (smoke)" if args.smoke else torch.cuda.get_device_name(0)
    report = {
        "shape": "smoke" if args.smoke else "Qwen2.5-0.5B",
        "device": device,
        "batch": args.batch,
        "max_length": args.max_length,
        "steps": steps,
        "target": args.target,
        "engine": code_version("training/engine"),
        "stages": [],
    }
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        tmp = Path(tmp)
        env = child_env(args.threads, tmp / "hf")
        data = stage_scaling.write_data(tmp, rows=max(64, 2 * steps * args.batch))
        models = tmp / "models"
        report |= stage_scaling.build(models, shape["layers"], env, shape["sizes"])
        for variant, settings in variants.items():
            for stage in stage_scaling.STAGES:
                spec = {
                    **data,
                    **settings,
                    "stage": stage,
                    "models": str(models),
                    "out": str(tmp / f"out-{stage}-{len(report['stages'])}"),
                    "steps": steps,
                    "batch": args.batch,
                    "max_length": args.max_length,
                    "new_tokens": args.new_tokens,
                    "threads": args.threads,
                }
                result = stage_scaling.run_stage(spec, env)
                row = {
                    "variant": variant,
                    "stage": stage,
                    "mean_step_s": result["mean_step_s"],
                    "peak_mib": result["cuda_peak_mib"] or result["peak_rss_mib"],
                    "peak_kind": "cuda max_memory_allocated" if result["cuda_peak_mib"] else "peak RSS",
                    "step_s": result["step_s"],
                }
                if stage in ("reward", "dpo") and not settings.get("load_in_4bit"):
                    row["bare"] = bare_comparison(stage, models, data, steps, args, env, tmp)
                report["stages"].append(row)
                print(
                    f"  {variant}, {stage}: {row['mean_step_s']:.4f} s/step, {row['peak_mib']:,.0f} MiB",
                    file=sys.stderr,
                )
        sampling = {
            "models": str(models),
            "prompts": 4 if args.smoke else 32,
            "new_tokens": args.new_tokens,
            "batch": 16,
            "dtype": next(iter(variants.values()))["dtype"],
            "threads": args.threads,
        }
        report["sampling"] = {**sampling, **run_child(sampling, env, __file__)}
        del report["sampling"]["models"]
    report["passed"] = all(r["bare"]["ratio"] <= args.target for r in report["stages"] if "bare" in r)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=1))
    print(markdown(report))
    print(f"\n{'PASS' if report['passed'] else 'FAIL'}: our step ≤ {args.target}× the bare loop's; {args.output}")
    return 0 if report["passed"] or args.smoke else 1  # a busy CPU's ratios are no verdict on the engine


def bare_comparison(
    stage: str, models: Path, data: dict, steps: int, args: argparse.Namespace, env: dict, tmp: Path
) -> dict:
    """Our step against training_bench.py's bare loop on the same batches, alternating in one child (LoRA)."""
    spec = {
        "kind": "pair",
        "stage": "rm" if stage == "reward" else "dpo",
        "variant": "lora",
        "models": str(models),
        "data": data["data"],
        "out": str(tmp / f"pair-{stage}"),
        "warmup": 1,
        "steps": max(1, steps - 1),
        "batch": args.batch,
        "clip": True,  # TRL clips gradients at norm 1: the bare loop does the same work
        "threads": args.threads,
    }
    result = run_child(spec, env, training_bench.__file__)
    ours, bare = statistics.median(result["trl_ms"]) / 1000, statistics.median(result["bare_ms"]) / 1000
    return {"ours_s": ours, "bare_s": bare, "ratio": ours / bare}


if __name__ == "__main__":
    sys.exit(main())
