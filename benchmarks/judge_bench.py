"""LLM judge throughput: pairwise tasks judged a second through an OpenAI-compatible server (annotate/llm_judge.py's
judge_items, both orders per task, so two requests a task), at a few concurrency levels (Judge.concurrency).

    .venv/bin/python benchmarks/judge_bench.py                      # builds and teaches the model, says where
    transformers serve --port 8001 --device cpu [--continuous-batching]
    .venv/bin/python benchmarks/judge_bench.py --model DIR --server http://127.0.0.1:8001/v1

Without --model, a tiny model (training/engine/tiny.py, with room for a judge's prompt) is built into --build-dir and
taught (tiny.teach_answer) to answer every judge prompt with a valid verdict, "A much better", and the script stops
after printing where, so the server can be started. The judge's prompt is some 380 tokens (the project's guidelines,
the format, a question and two short answers), its reply 41. A first run warms the server (loading the model) before
the timed ones. Prints one Markdown row per level, with the load average before and after (the machine is shared).
No database: the judge and its project are unsaved objects.
"""

import argparse
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "arbiter.settings")

VERDICT = json.dumps({"choice": "A", "strength": 2, "both_bad": False})
QUESTIONS = [
    ("What is the capital of France?", "The capital of France is Paris.", "Paris, I think."),
    ("How many legs does a spider have?", "A spider has eight legs.", "Six."),
    ("How do I boil an egg?", "Put the egg in boiling water for seven minutes.", "Boil it."),
    ("Why is the sky blue?", "Sunlight is scattered by the air, blue the most.", "Because it is."),
    ("Tell me a joke.", "Why did the scarecrow win an award? He was outstanding in his field.", "No."),
    ("What is two plus two?", "Two plus two is four.", "Five."),
    ("Translate hello into Spanish.", "Hello in Spanish is hola.", "Bonjour."),
    ("Give me three tips for sleeping well.", "Keep a regular schedule, avoid screens, keep cool.", "Sleep."),
]


def judge_and_items(model: str, server: str, n: int):
    from annotate.judges import Item
    from annotate.models import Judge, Project

    project = Project(name="Helpfulness", guidelines="Prefer the **helpful** answer.")
    judge = Judge(project=project, name="bench", kind="llm", endpoint=server, model_name=model, max_retries=0)
    items = []
    for i in range(n):
        question, good, bad = QUESTIONS[i % len(QUESTIONS)]
        items.append(Item(i, "pairwise", [{"role": "user", "content": question}], [(2 * i, good), (2 * i + 1, bad)]))
    return judge, items


def build_model(out_dir: Path) -> Path:
    from annotate.llm_judge import judge_messages
    from training.engine.tiny import TinyConfig, build_tiny_models, teach_answer

    paths = build_tiny_models(out_dir, config=TinyConfig(max_position_embeddings=1024))
    taught = out_dir / "judge"
    shutil.rmtree(taught, ignore_errors=True)
    shutil.copytree(paths.policy, taught)
    judge, items = judge_and_items(str(taught), "", len(QUESTIONS))
    conversations = [judge_messages(judge, judge.project, item, order) for item in items for order in ([0, 1], [1, 0])]
    teach_answer(taught, conversations, VERDICT)
    return taught


def run(judge, items) -> tuple[int, int, float]:
    """(answered, failed, seconds) for judge_items over the items."""
    from annotate.llm_judge import judge_items

    start = time.perf_counter()
    verdicts = list(judge_items(judge, items, should_stop=lambda: False))
    seconds = time.perf_counter() - start
    answered = sum(verdict.answer is not None for verdict in verdicts)
    return answered, len(verdicts) - answered, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="the taught model's folder; without it, one is built into --build-dir")
    parser.add_argument("--build-dir", default="/tmp/judge-bench")
    parser.add_argument("--server", default="http://127.0.0.1:8001/v1")
    parser.add_argument("--tasks", type=int, default=64)
    parser.add_argument("--concurrency", default="1,8,32", help="comma-separated levels")
    parser.add_argument("--label", default="transformers serve", help="the server, as the table names it")
    args = parser.parse_args()

    import django

    django.setup()
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request otherwise
    if not args.model:
        print(f"Built {build_model(Path(args.build_dir))}: start the server, then pass it as --model")
        return
    judge, items = judge_and_items(args.model, args.server, args.tasks)
    judge.concurrency = 8
    run(judge, items[:8])  # the server loads the model on its first request
    print(f"{args.tasks} pairwise tasks, 2 requests each (both orders), replies of 41 tokens")
    print("| server | concurrency | answered | failed | seconds | tasks/s | load avg before → after |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for level in (int(x) for x in args.concurrency.split(",")):
        judge.concurrency = level
        before = os.getloadavg()[0]
        answered, failed, seconds = run(judge, items)
        after = os.getloadavg()[0]
        print(
            f"| {args.label} | {level} | {answered} | {failed} | {seconds:.1f} | {args.tasks / seconds:.2f} "
            f"| {before:.2f} → {after:.2f} |"
        )


if __name__ == "__main__":
    main()
