"""Training engine benchmark: our reward-model and DPO stages (TRL's trainers) against bare torch loops doing the
same work on the same model and batches, and PPO rollouts sampled in batches against one prompt at a time.

    .venv/bin/python benchmarks/training_bench.py                         # everything, 3 runs each (~15 minutes)
    .venv/bin/python benchmarks/training_bench.py --only rm --runs 1      # a quick look at one part
    .venv/bin/python benchmarks/training_bench.py --profile               # and cProfile one run of each, untimed

No Django and nothing downloaded: a Llama-style policy and reward model (hidden 256, 4 layers by default) are built
with training/engine/tiny.py into a temporary directory, saved and loaded with from_pretrained as real checkpoints
are. Each run is a child process with one torch thread (--threads) in which the two sides being compared alternate
(a TRL step, then a bare step on the same batch; a batched rollout, then the same prompts one by one), so both see
the same machine. Each run also measures how much of the machine other work took while it timed (/proc/stat less
its own CPU time); a run over --max-interference is repeated, and the least disturbed attempt kept. Prints each
run, where the time of a step goes, the medians, and Markdown tables for BENCHMARKS.md.
"""

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import Meter, busy_percent, wait_until_quiet
from import_bench import OUTPUT, REPO_ROOT, WORDS  # noqa: E402  (the same texts)

SEED = 20261125
# The engine stages' own defaults, except what a benchmark must fix; see benchmarks/README.md.
LORA_LR, FULL_LR, BETA = 5e-5, 1e-5, 0.1


# Machine ----------------------------------------------------------------------------------------------------------


# Data -------------------------------------------------------------------------------------------------------------


def generate_pairs(path: Path, rows: int) -> list[str]:
    """Write `rows` pairs in the conversational form our exports write (prompt, chosen, rejected as message lists,
    plus margin and prompt_id), one prompt each; return some of the texts for the tokenizer to learn."""
    rng = random.Random(SEED)

    def text(median_words: int) -> str:
        # Log-normal lengths around the median, with a shorter tail than import_bench.py's: padding to the longest
        # sequence of a batch would otherwise dominate a batch of 8.
        n = max(1, round(rng.lognormvariate(0, 0.4) * median_words))
        return " ".join(rng.choices(WORDS, k=n)).capitalize()

    texts = []
    with path.open("w", encoding="utf-8") as out:
        for i in range(rows):
            prompt, chosen, rejected = text(15) + "?", text(40) + ".", text(40) + "."
            texts += [prompt, chosen, rejected]
            row = {
                "prompt": [{"role": "user", "content": prompt}],
                "chosen": [{"role": "assistant", "content": chosen}],
                "rejected": [{"role": "assistant", "content": rejected}],
                "margin": 1.0,
                "prompt_id": f"p{i}",
            }
            out.write(json.dumps(row) + "\n")
    return texts[:3000]


# Children ---------------------------------------------------------------------------------------------------------
# Each measurement is a child process: `--child '<json spec>'`; it prints one JSON line as its last output.


def child_setup(spec: dict) -> None:
    import torch

    torch.set_num_threads(spec["threads"])
    torch.set_num_interop_threads(1)


def child_build(spec: dict) -> dict:
    """Build the tokenizer and both models the way build_tiny_models does, larger; count their parameters."""
    from training.engine.tiny import TinyConfig, build_tiny_models

    config = TinyConfig(
        vocab_size=spec["vocab"],
        hidden_size=spec["hidden"],
        intermediate_size=spec["intermediate"],
        num_hidden_layers=spec["layers"],
        num_attention_heads=spec["heads"],
        num_key_value_heads=max(1, spec["heads"] // 2),
        max_position_embeddings=1024,
    )
    corpus = Path(spec["corpus"]).read_text(encoding="utf-8").splitlines()
    paths = build_tiny_models(Path(spec["models"]), corpus=corpus, config=config)
    from transformers import AutoModelForCausalLM

    policy = AutoModelForCausalLM.from_pretrained(paths.policy)
    return {
        "parameters": sum(p.numel() for p in policy.parameters()),
        "vocab": policy.config.vocab_size,
    }


def stage_config(spec: dict) -> Any:
    """The stage's config as a round would make it, with the benchmark's model, steps and batch."""
    from training.engine.config import DPOConfig, RewardConfig

    total = spec["warmup"] + spec["steps"]
    common = dict(
        max_steps=total,
        per_device_batch_size=spec["batch"],
        eval_fraction=0.0,  # no held-out report at the end: it is not a training step
        save_steps=total + 1,  # no checkpoint inside the timed steps (the final save_model is after them)
        seed=SEED % 1000,
    )
    models = Path(spec["models"])
    if spec["stage"] == "rm":
        lora = spec["variant"] == "lora"
        return RewardConfig(
            model_name_or_path=str(models / "reward"),
            use_lora=lora,
            learning_rate=LORA_LR if lora else FULL_LR,
            **common,
        )
    return DPOConfig(
        model_name_or_path=str(models / "policy"),
        beta=BETA,
        precompute_ref_log_probs=spec["variant"] == "precomputed",
        learning_rate=LORA_LR,
        **common,
    )


class BareLoop:
    """The engine's step written out in plain torch: the same model (our loader, PEFT's LoRA from our config),
    the loss by hand, backward, and AdamW as the Trainer makes it (adamw_torch_fused, no weight decay)."""

    def __init__(self, spec: dict) -> None:
        import torch
        from peft import get_peft_model
        from transformers import AutoModelForSequenceClassification, set_seed

        from training.engine.common import load_model, load_policy, load_tokenizer, lora_config, pick_device

        self.torch, self.stage, self.clip = torch, spec["stage"], spec["clip"]
        config = stage_config(spec)
        set_seed(config.seed)
        if self.stage == "rm":
            model = load_model(AutoModelForSequenceClassification, config, is_trainable=True, num_labels=1)
            model.config.pad_token_id = load_tokenizer(config.model_name_or_path).pad_token_id
        else:
            model = load_policy(config, is_trainable=True)
        if config.use_lora:
            model = get_peft_model(model, lora_config(config, "SEQ_CLS" if self.stage == "rm" else "CAUSAL_LM"))
        # RewardConfig and DPOConfig default to disable_dropout=True: TRL sets every nn.Dropout's p to 0, LoRA's
        # included (so lora_dropout has no effect in these stages). Do the same; train mode as in the Trainer.
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
        self.model = model.to(pick_device()).train()  # where the Trainer puts its model
        self.trainable = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.trainable, lr=config.learning_rate, weight_decay=0.0, fused=True)

    def synchronize(self) -> None:
        """Wait for the GPU's queued work, so that a step's clock covers its kernels (nothing on the CPU)."""
        if self.torch.cuda.is_available():
            self.torch.cuda.synchronize()

    def completion_logps(self, batch: dict) -> Any:
        """Σ log p(completion token) per sequence, (2B,): the LM head at the completion positions only (the ones
        with a label, as TRL's head scores them), log-softmax, read at the labels."""
        ids, labelled = batch["input_ids"], batch["completion_mask"][:, 1:].bool()
        causal_lm = self.model.get_base_model()  # under the adapter; PEFT's LoRA layers (or their disabling) apply
        hidden = causal_lm.model(input_ids=ids, attention_mask=batch["attention_mask"], use_cache=False)
        logits = causal_lm.lm_head(hidden.last_hidden_state[:, :-1][labelled]).float()
        per_token = logits.log_softmax(-1).gather(-1, ids[:, 1:][labelled].unsqueeze(-1)).squeeze(-1)
        return per_token.new_zeros(labelled.shape).masked_scatter(labelled, per_token).sum(dim=1)

    def step(self, batch: dict) -> dict[str, float]:
        """One optimisation step on a batch as TRL's collator made it; the time of its parts in ms."""
        torch, logsigmoid = self.torch, self.torch.nn.functional.logsigmoid
        self.synchronize()
        start = time.perf_counter()
        if self.stage == "rm":
            # use_cache=False as TRL passes it: a model left to its config would build a KV cache in training.
            out = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
            chosen, rejected = out.logits.squeeze(-1).chunk(2)  # the collator stacks chosen, then rejected
            loss = -logsigmoid(chosen - rejected - batch.get("margin", 0.0)).mean()  # Bradley-Terry, with margin
        else:
            policy_chosen, policy_rejected = self.completion_logps(batch).chunk(2)
            if "ref_chosen_logps" in batch:  # precomputed by TRL before training
                ref_chosen, ref_rejected = batch["ref_chosen_logps"], batch["ref_rejected_logps"]
            else:
                with torch.no_grad(), self.model.disable_adapter():  # the reference: the base without the adapter
                    ref_chosen, ref_rejected = self.completion_logps(batch).chunk(2)
            logits = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)
            loss = -logsigmoid(BETA * logits).mean()  # DPO's sigmoid loss
        forward = time.perf_counter()
        loss.backward()
        backward = time.perf_counter()
        if self.clip:
            torch.nn.utils.clip_grad_norm_(self.trainable, 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.synchronize()
        end = time.perf_counter()
        return {
            "total": 1000 * (end - start),
            "forward + loss": 1000 * (forward - start),
            "backward": 1000 * (backward - forward),
            "optimizer": 1000 * (end - backward),
        }


def child_pair(spec: dict) -> dict:
    """Our train_reward / train_dpo as a round calls it, and after each of its steps one bare-loop step on the
    same batch, so that both see the same machine; the bare step's time is taken out of the TRL step's. The parts
    of both steps are timed too (the Trainer's methods wrapped on the instance), to show where a difference is."""
    from collections import defaultdict

    from transformers import TrainerCallback

    from training.engine import common, dpo, reward

    bare = BareLoop(spec)
    meter, warmup = Meter(), spec["warmup"]
    seen: dict[str, Any] = {"begin": [], "end": [], "bare": [], "shapes": []}
    parts: dict[str, list[float]] = defaultdict(list)  # TRL's, one entry per step

    def timed(name: str, function: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                parts[name].append(1000 * (time.perf_counter() - start))

        return wrapper

    class StepTimer(TrainerCallback):
        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            seen["train_begin"] = time.perf_counter()

        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            seen["begin"].append(time.perf_counter())

        def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            seen["optimizer"] = time.perf_counter()

        def on_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            parts["optimizer"].append(1000 * (time.perf_counter() - seen["optimizer"]))

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            seen["end"].append(time.perf_counter())
            seen["bare"].append(bare.step(seen.pop("inputs")))
            if state.global_step == warmup:
                meter.start()
            elif state.global_step == state.max_steps:
                seen["meter"] = meter.stop()

    module = reward if spec["stage"] == "rm" else common  # dpo runs its trainer through common.train_policy_with
    run_training = module.run_training

    def instrumented(trainer: Any, output_dir: str, **kwargs: Any) -> Any:
        trainer.add_callback(StepTimer())  # before run_training adds the progress callback: ours runs first
        training_step = trainer.training_step

        def keep_inputs(model: Any, inputs: dict, *args: Any, **kwargs: Any) -> Any:
            seen["inputs"] = inputs  # the collated batch, for the bare step after this one
            seen["shapes"].append(list(inputs["input_ids"].shape))
            return training_step(model, inputs, *args, **kwargs)

        trainer.training_step = timed("training_step", keep_inputs)
        trainer.compute_loss = timed("forward + loss", trainer.compute_loss)  # TRL's metrics included
        trainer.floating_point_ops = timed("flos count", trainer.floating_point_ops)
        trainer._clip_grad_norm = timed("gradient clipping", trainer._clip_grad_norm)
        trainer._maybe_log_save_evaluate = timed("logging", trainer._maybe_log_save_evaluate)
        trainer.get_batch_samples = timed("data", trainer.get_batch_samples)
        seen["trainer"] = trainer
        return run_training(trainer, output_dir, **kwargs)

    module.run_training = instrumented
    train = reward.train_reward if spec["stage"] == "rm" else dpo.train_dpo
    started = time.perf_counter()
    train(stage_config(spec), spec["data"], spec["out"])

    optimizer = seen["trainer"].optimizer
    optimizer = getattr(optimizer, "optimizer", optimizer)  # accelerate's wrapper
    begin, end, bare_ms = seen["begin"], seen["end"], [b["total"] for b in seen["bare"]]
    # end → end less the bare step in between: all a step costs, data loading, logging and callbacks included
    trl_ms = [1000 * (end[i] - end[i - 1]) - bare_ms[i - 1] for i in range(warmup, len(end))]
    inside_ms = [1000 * (end[i] - begin[i]) for i in range(warmup, len(end))]  # forward … scheduler, zero_grad
    steps = slice(warmup, len(end))
    median = statistics.median
    trl_parts = {name: median(times[steps]) for name, times in parts.items()}
    trl_parts["backward"] = trl_parts.pop("training_step") - trl_parts["forward + loss"]
    trl_parts["rest of the step"] = median(inside_ms) - sum(
        trl_parts[name] for name in ("forward + loss", "backward", "flos count", "gradient clipping", "optimizer")
    )
    return {
        "trl_ms": trl_ms,
        "inside_ms": inside_ms,
        "bare_ms": bare_ms[warmup:],
        "trl_parts": trl_parts,
        "bare_parts": {name: median(b[name] for b in seen["bare"][steps]) for name in seen["bare"][0]},
        "setup_s": seen["train_begin"] - started,
        "shapes": seen["shapes"],
        "optimizer": f"{type(optimizer).__name__} fused={optimizer.defaults.get('fused')}",
        **seen["meter"],
    }


def child_rollout(spec: dict) -> dict:
    """PPO's rollout (ppo.sample_responses with PPO's generation config, LoRA policy), `batch` prompts at once and
    the same prompts one at a time, alternately, every response forced to max_new_tokens."""
    import torch
    from peft import get_peft_model
    from transformers import set_seed

    from training.engine.common import load_policy, load_tokenizer, lora_config
    from training.engine.config import PPOConfig
    from training.engine.ppo import generation_config, load_prompts, sample_responses

    path = str(Path(spec["models"]) / "policy")
    config = PPOConfig(model_name_or_path=path, max_new_tokens=spec["new_tokens"], eval_fraction=0.0, seed=SEED % 1000)
    tokenizer = load_tokenizer(path, padding_side="left")
    prompts = load_prompts(spec["data"], tokenizer, config)[0][: spec["batch"]]
    set_seed(config.seed)
    policy = load_policy(config, device=torch.device("cpu"), is_trainable=True)
    policy = get_peft_model(policy, lora_config(config, "CAUSAL_LM"))  # as train_ppo does
    generation = generation_config(config, tokenizer, policy)
    generation.min_new_tokens = config.max_new_tokens  # no early EOS: both ways generate the same tokens
    policy.get_base_model().generation_config = generation
    policy.eval()
    eos = torch.tensor(generation.eos_token_id)
    ways = {"batched": [prompts], "single": [[prompt] for prompt in prompts]}

    def rollout(groups: list) -> float:
        start, tokens = time.perf_counter(), 0
        for group in groups:
            _, _, responses = sample_responses(policy, group, tokenizer, generation)
            if responses.shape[1] != config.max_new_tokens or torch.isin(responses, eos).any():
                raise RuntimeError(f"a response of other than {config.max_new_tokens} tokens")
            tokens += responses.numel()
        return tokens / (time.perf_counter() - start)

    rollout(ways["batched"][:1])  # warm-up, both shapes
    rollout(ways["single"][:1])
    meter, rates = Meter(), {"batched": [], "single": []}
    meter.start()
    for repeat in range(spec["repeats"]):
        for way in ("batched", "single") if repeat % 2 == 0 else ("single", "batched"):
            rates[way].append(rollout(ways[way]))
    return {**rates, "prompt_tokens": [len(p) for p in prompts], **meter.stop()}


def child_main(spec: dict) -> None:
    child_setup(spec)
    kinds = {"build": child_build, "pair": child_pair, "rollout": child_rollout}
    profiler = None
    if spec.get("profile"):
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    result = kinds[spec["kind"]](spec)
    if profiler:
        profiler.disable()
        profiler.dump_stats(spec["profile"])
    print("\n" + json.dumps(result))


# Parent -----------------------------------------------------------------------------------------------------------


def child_env(threads: int, hf_home: Path) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": str(REPO_ROOT),
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HOME": str(hf_home),  # the datasets cache TRL's precompute writes, and no hub access
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
        "TQDM_DISABLE": "1",
        "TRANSFORMERS_VERBOSITY": "error",
        "PYTHONWARNINGS": "ignore",
    }


def run_child(spec: dict, env: dict[str, str], script: str = __file__) -> dict:
    """Run `script --child <spec>` and return the JSON line it prints last; exit with its output if it fails."""
    proc = subprocess.run(
        [sys.executable, script, "--child", json.dumps(spec)], env=env, cwd=REPO_ROOT, capture_output=True, text=True
    )
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-8000:])
        sys.exit(f"benchmark child {spec['kind']} failed with exit code {proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def engine_version() -> str:
    """The last commit of training/engine/, marked when the working copy differs from it."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True).stdout.strip()

    commit = git("log", "-1", "--format=%h", "--", "training/engine") or "uncommitted"
    return commit + ("+edits" if git("status", "--porcelain", "--", "training/engine") else "")


def measure(spec: dict, env: dict[str, str], args: argparse.Namespace, label: str) -> dict:
    """One run, repeated while other work took more than --max-interference of the machine as it measured; the
    least disturbed attempt if none was clean."""
    attempts = []
    for attempt in range(1 + args.retries):
        before = wait_until_quiet(args.quiet_below, args.quiet_wait) if args.quiet_below else busy_percent()
        result = run_child(spec, env)
        result["busy_before"] = before
        attempts.append(result)
        clean = result["other_pct"] <= args.max_interference
        print(
            f"  {label}: {summary(result)}; machine {before:.0f} % busy before, others took"
            f" {result['other_pct']:.0f} % during{'' if clean else ' (disturbed)'}",
            file=sys.stderr,
        )
        if clean:
            break
        if attempt < args.retries:
            time.sleep(args.retry_pause)
    return min(attempts, key=lambda r: r["other_pct"])


def summary(result: dict) -> str:
    median = statistics.median
    if "batched" in result:
        batched, single = median(result["batched"]), median(result["single"])
        return f"batched {batched:,.0f} tokens/s, one at a time {single:,.0f} tokens/s: {batched / single:.1f}×"
    trl, inside, bare = median(result["trl_ms"]), median(result["inside_ms"]), median(result["bare_ms"])
    return f"TRL {trl:.1f} ms/step ({inside:.1f} inside the step), bare {bare:.1f} ms/step: {trl / bare:.3f}×"


def spread(values: list[float], digits: int = 3) -> str:
    return f"{min(values):.{digits}f}–{max(values):.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="rm,dpo,rollout", help="parts to run (default rm,dpo,rollout)")
    parser.add_argument("--runs", type=int, default=3, help="runs of each measurement; medians reported (default 3)")
    parser.add_argument("--steps", type=int, default=20, help="timed optimisation steps per run (default 20)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (default 5)")
    parser.add_argument("--batch", type=int, default=8, help="pairs per step (default 8: 16 sequences)")
    parser.add_argument("--hidden", type=int, default=256, help="model width (default 256)")
    parser.add_argument("--layers", type=int, default=4, help="decoder layers (default 4)")
    parser.add_argument("--vocab", type=int, default=1024, help="BPE vocabulary target (default 1024)")
    parser.add_argument("--rollout-batches", default="8,32", help="rollout batch sizes (default 8,32)")
    parser.add_argument("--new-tokens", type=int, default=64, help="tokens each rollout response gets (default 64)")
    parser.add_argument("--repeats", type=int, default=3, help="timed rollouts per run (default 3)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads in each child (default 1)")
    parser.add_argument("--bare-clip", action="store_true", help="bare loops also clip gradients (norm 1, as TRL)")
    parser.add_argument("--profile", action="store_true", help="cProfile one TRL and one bare run of each, untimed")
    parser.add_argument("--max-interference", type=float, default=10, help="discard runs others took more of (%%)")
    parser.add_argument("--retries", type=int, default=3, help="extra attempts per disturbed measurement (default 3)")
    parser.add_argument("--retry-pause", type=float, default=20, help="seconds between attempts (default 20)")
    parser.add_argument("--quiet-below", type=float, help="before each run, wait until the machine is less busy (%%)")
    parser.add_argument("--quiet-wait", type=float, default=600, help="wait at most this long for quiet (600 s)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        child_main(json.loads(args.child))
        return
    parts = set(args.only.split(","))
    OUTPUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="training-bench-") as tmp:
        tmp = Path(tmp)
        env = child_env(args.threads, tmp / "hf")
        data = tmp / "pairs.jsonl"
        total = args.warmup + args.steps
        corpus = tmp / "corpus.txt"
        corpus.write_text("\n".join(generate_pairs(data, max(total * args.batch, 64))), encoding="utf-8")
        heads = max(1, args.hidden // 32)  # head_dim 32, half as many key/value heads (grouped-query attention)
        base = {"threads": args.threads, "models": str(tmp / "models"), "data": str(data)}
        print(f"building the models in {tmp} …", file=sys.stderr)
        shape = {"vocab": args.vocab, "hidden": args.hidden, "intermediate": round(args.hidden * 2.6875)}
        shape |= {"layers": args.layers, "heads": heads}
        built = run_child({**base, **shape, "kind": "build", "corpus": str(corpus)}, env)
        model_name = (
            f"Llama {args.hidden}×{args.layers} ({built['parameters'] / 1e6:.1f} M params, vocab {built['vocab']})"
        )
        print(f"{model_name}; {args.threads} torch thread(s)", file=sys.stderr)

        step_rows, rollout_rows = [], []
        comparisons = []
        if "rm" in parts:
            comparisons += [("rm", "lora", "Reward model, LoRA r=16"), ("rm", "full", "Reward model, full fine-tuning")]
        if "dpo" in parts:
            comparisons += [
                ("dpo", "reference", "DPO, LoRA, reference forward each step"),
                ("dpo", "precomputed", "DPO, LoRA, precomputed reference log-probs"),
            ]
        for stage, variant, title in comparisons:
            print(f"{title}:", file=sys.stderr)
            spec = {
                **base,
                "kind": "pair",
                "stage": stage,
                "variant": variant,
                "warmup": args.warmup,
                "steps": args.steps,
                "batch": args.batch,
                "out": str(tmp / "out"),
                "clip": args.bare_clip,
            }
            runs = [measure(spec, env, args, f"run {run}") for run in range(1, args.runs + 1)]
            if any(r["shapes"] != runs[0]["shapes"] for r in runs):
                print("  warning: the runs did not all see the same batches", file=sys.stderr)
            median = statistics.median
            row = {
                "title": title,
                "trl": median(median(r["trl_ms"]) for r in runs),
                "inside": median(median(r["inside_ms"]) for r in runs),
                "bare": median(median(r["bare_ms"]) for r in runs),
                "ratios": [median(r["trl_ms"]) / median(r["bare_ms"]) for r in runs],
                "setup": median(r["setup_s"] for r in runs),
                "tokens": sum(rows * length for rows, length in runs[0]["shapes"][args.warmup :]) / args.steps,
                "other": max(r["other_pct"] for r in runs),
            }
            row["ratio"] = median(row["ratios"])  # each run's TRL and bare steps alternated: a paired ratio
            step_rows.append(row)
            print(
                f"  median of {len(runs)}: TRL {row['trl']:.1f} ms/step ({row['inside']:.1f} inside), bare"
                f" {row['bare']:.1f} ms/step: {row['ratio']:.3f}× (runs {spread(row['ratios'])});"
                f" TRL set-up {row['setup']:.1f} s; {runs[0]['optimizer']}",
                file=sys.stderr,
            )
            for side in ("trl", "bare"):
                names = runs[0][f"{side}_parts"]
                times = ", ".join(f"{n} {median(r[f'{side}_parts'][n] for r in runs):.1f}" for n in names)
                print(f"    {'TRL' if side == 'trl' else 'bare'} step, median ms: {times}", file=sys.stderr)
            if args.profile:
                profile = OUTPUT / f"training-{stage}-{variant}.prof"
                run_child({**spec, "profile": str(profile)}, env)
                print_profile(profile, title)

        if "rollout" in parts:
            for batch in (int(b) for b in args.rollout_batches.split(",")):
                print(f"PPO rollout, {batch} prompts × {args.new_tokens} tokens:", file=sys.stderr)
                spec = {**base, "kind": "rollout", "batch": batch, "new_tokens": args.new_tokens}
                spec["repeats"] = args.repeats
                runs = [measure(spec, env, args, f"run {run}") for run in range(1, args.runs + 1)]
                median = statistics.median
                prompt_tokens = runs[0]["prompt_tokens"]
                row = {
                    "batch": batch,
                    "batched": median(median(r["batched"]) for r in runs),
                    "single": median(median(r["single"]) for r in runs),
                    "ratios": [median(r["batched"]) / median(r["single"]) for r in runs],
                    "prompts": f"{min(prompt_tokens)}–{max(prompt_tokens)}",
                    "other": max(r["other_pct"] for r in runs),
                }
                row["ratio"] = median(row["ratios"])  # each run alternated the two ways: a paired ratio
                rollout_rows.append(row)
                print(
                    f"  median of {len(runs)}: batched {row['batched']:,.0f} tokens/s, one at a time"
                    f" {row['single']:,.0f} tokens/s: {row['ratio']:.1f}×"
                    f" (runs {spread(row['ratios'], 1)})",
                    file=sys.stderr,
                )
                if args.profile:
                    profile = OUTPUT / f"training-rollout-{batch}.prof"
                    run_child({**spec, "profile": str(profile)}, env)
                    print_profile(profile, f"rollout, {batch} prompts")

    import torch
    import transformers
    import trl

    versions = f"torch {torch.__version__}, transformers {transformers.__version__}, TRL {trl.__version__}"
    print(f"\n{model_name}; {versions}; {args.threads} torch thread(s); engine {engine_version()}")
    print(f"median of {args.runs} runs; per run the median over {args.steps} steps after {args.warmup} warm-up steps")
    if step_rows:
        print(
            f"\n| Step ({args.batch} pairs) | Tokens/step | TRL (ours) | Bare loop | Ratio | Runs | TRL inside the step"
            " | TRL set-up | Others |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for row in step_rows:
            print(
                f"| {row['title']} | {row['tokens']:,.0f} | {row['trl']:.1f} ms | {row['bare']:.1f} ms"
                f" | {row['ratio']:.3f}× | {spread(row['ratios'])} | {row['inside']:.1f} ms | {row['setup']:.1f} s"
                f" | ≤ {row['other']:.0f} % |"
            )
    if rollout_rows:
        print(
            f"\n| Rollout ({args.new_tokens} new tokens) | Prompt tokens | Batched | One at a time | Speed-up"
            " | Runs | Others |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|")
        for row in rollout_rows:
            print(
                f"| {row['batch']} prompts | {row['prompts']} | {row['batched']:,.0f} tokens/s"
                f" | {row['single']:,.0f} tokens/s | {row['ratio']:.1f}× | {spread(row['ratios'], 1)}"
                f" | ≤ {row['other']:.0f} % |"
            )


def print_profile(path: Path, title: str) -> None:
    import pstats

    print(f"\n=== cProfile: {title} ({path.relative_to(REPO_ROOT)}) ===", file=sys.stderr)
    pstats.Stats(str(path), stream=sys.stderr).sort_stats("cumulative").print_stats(45)


if __name__ == "__main__":
    main()
