"""Sampling benchmark: tokens/s of in-process `generate` (training/engine/generate.py) against inference servers
(training/engine/serve.py) on the same prompts, at a few concurrency levels (the batch size in-process).

    .venv/bin/python benchmarks/sampling_bench.py --model DIR \\
        --server http://127.0.0.1:8000/v1=vllm --server http://127.0.0.1:8001/v1=transformers

The servers are started beforehand, serving DIR under its path as the model name:

    transformers serve --port 8001 --device cpu
    VLLM_CPU_KVCACHE_SPACE=1 python -m vllm.entrypoints.openai.api_server --model DIR --port 8000 --dtype float32

Without --model, a random Qwen2.5-shaped model (the real tokenizer and chat template from ../shared/data/tokenizers,
hidden 256, 2 layers, head_dim 64: vLLM's CPU attention takes no head_dim under 32) is built into --build-dir, and
the script stops after printing where, so the servers can be started on it. Temperature 1 on a random model rarely
stops early: nearly every sequence runs to --max-new-tokens, so the sides generate the same amount. Tokens are what
each side counts: the response mask in-process, the server's usage.completion_tokens. Prints one Markdown row per
side and level, with the load average before and after (the machine is shared).
"""

import argparse
import os
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

QUESTIONS = [
    "What is the capital of France?",
    "Write a haiku about rain.",
    "Explain photosynthesis to a child.",
    "Give three tips for sleeping better.",
    "Why is the sky blue?",
    "Summarise the plot of Hamlet in two sentences.",
    "How do I boil an egg?",
    "What is a prime number?",
]


def build_model(out_dir: Path) -> Path:
    from training.engine.tiny import TinyConfig, build_tiny_models_like

    family = REPO_ROOT.parent / "shared" / "data" / "tokenizers" / "qwen2.5-instruct"
    config = TinyConfig(hidden_size=256, intermediate_size=512, num_attention_heads=4, num_key_value_heads=2)
    return build_tiny_models_like(out_dir, family, config=config).policy


def in_process(model_path: str, prompts: list, max_new_tokens: int, batch_size: int) -> tuple[int, float]:
    """(tokens generated, seconds) for `sample` on the loaded model; loading is not timed."""
    from training.engine.common import load_policy, load_tokenizer
    from training.engine.config import BaseConfig
    from training.engine.generate import sample

    tokenizer = load_tokenizer(model_path, padding_side="left")
    model = load_policy(BaseConfig(model_name_or_path=model_path)).eval()
    start = time.perf_counter()
    batches = sample(
        model,
        tokenizer,
        prompts,
        num_samples=1,
        max_new_tokens=max_new_tokens,
        temperature=1.0,
        top_p=1.0,
        batch_size=batch_size,
        seed=0,
    )
    return sum(int(b["response_mask"].sum()) for b in batches), time.perf_counter() - start


def through_server(
    url: str, kind: str, model_path: str, prompts: list, max_new_tokens: int, concurrency: int
) -> tuple[int, float]:
    from training.engine import serve

    server = serve.Server(url=url, kind=kind, concurrency=concurrency)
    start = time.perf_counter()
    answers = serve.sample(
        server, model_path, prompts, max_new_tokens=max_new_tokens, temperature=1.0, top_p=1.0, seed=0
    )
    return sum(tokens for _, tokens in answers), time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a local model folder; without it, one is built into --build-dir")
    parser.add_argument("--build-dir", default="/tmp/sampling-bench")
    parser.add_argument("--server", action="append", default=[], help="URL=KIND (vllm or transformers), repeatable")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--concurrency", default="1,8", help="comma-separated levels (batch sizes in-process)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads in-process; 0 keeps torch's default")
    args = parser.parse_args()
    if not args.model:
        print(f"Built {build_model(Path(args.build_dir))}: start the servers on it, then pass it as --model")
        return

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    prompts = [[{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}] for i in range(args.prompts)]
    sides = [("generate (in-process)", None, None)] + [
        (kind, url, kind) for url, kind in (s.rsplit("=", 1) for s in args.server)
    ]
    print(f"{args.prompts} prompts, {args.max_new_tokens} new tokens at most, torch threads {torch.get_num_threads()}")
    print("| side | concurrency | tokens | seconds | tokens/s | load avg before → after |")
    print("|---|---|---|---|---|---|")
    for name, url, kind in sides:
        for level in (int(x) for x in args.concurrency.split(",")):
            before = os.getloadavg()[0]
            if url is None:
                tokens, seconds = in_process(args.model, prompts, args.max_new_tokens, level)
            else:
                tokens, seconds = through_server(url, kind, args.model, prompts, args.max_new_tokens, level)
            after = os.getloadavg()[0]
            print(
                f"| {name} | {level} | {tokens} | {seconds:.1f} | {tokens / seconds:.0f} | {before:.2f} → {after:.2f} |"
            )


if __name__ == "__main__":
    main()
