"""Rendering model text: the worst inputs for the Markdown renderer, formatted in full against shown plain.

    .venv/bin/python benchmarks/markdown_bench.py                   # 2 MB of each, as in the issue
    .venv/bin/python benchmarks/markdown_bench.py --size 200000     # a quick look

For each kind of text, `--size` characters of it are rendered three ways, in this process:

- **formatted**: markdown-it then nh3, what `render_markdown` did for any length before the limit (one run; at
  2 MB the slow kinds take most of a minute);
- **shown**: `render_markdown` as it is, with the configured ARBITER_MARKDOWN_MAX_CHARS: over the limit that is
  the plain `<pre>`;
- **at the limit**: the first ARBITER_MARKDOWN_MAX_CHARS characters of the same text, formatted: the most a
  task page's texts can cost together, since a task over the limit is shown plain.

Wall and CPU seconds are printed per kind (on a shared machine the CPU time is the steadier figure), then Markdown
rows for BENCHMARKS.md.
"""

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import REPO_ROOT, Meter, code_version  # noqa: E402

sys.path.insert(0, str(REPO_ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "arbiter.settings")


def repeat(row: str, size: int) -> str:
    return (row * (size // len(row) + 1))[:size]


# The table, the slowest kinds found (rows of a narrow table, list items, unclosed brackets), emphasis,
# nesting (markdown-it stops at 20 levels) and one long line.
KINDS = {
    "table, 4 columns": lambda n: "| a | b | c | d |\n|---|---|---|---|\n" + repeat("| 1 | cell | **x** | `y` |\n", n),
    "table, 2 short columns": lambda n: "|a|b|\n|-|-|\n" + repeat("|x|y|\n", n),
    "list items": lambda n: repeat("- a\n", n),
    "`*a*` emphasis": lambda n: repeat("*a* ", n),
    "`[` brackets": lambda n: "[" * n,
    "`>` nested quotes": lambda n: ">" * n,
    "one long line": lambda n: "a" * n,
    "prose with links and code": lambda n: repeat(
        "The **answer** is [here](https://example.com/a) and `code` too; more words follow.\n\n", n
    ),
}


def timed(render, text: str, runs: int) -> tuple[float, float]:
    """Median wall and CPU seconds of `runs` renders."""
    walls, cpus = [], []
    for _ in range(runs):
        wall, cpu = time.perf_counter(), time.process_time()
        render(text)
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return statistics.median(walls), statistics.median(cpus)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=2_000_000, help="characters of each kind (default 2,000,000)")
    parser.add_argument("--runs", type=int, default=5, help="runs of the fast renders, the median reported")
    args = parser.parse_args()

    import django

    django.setup()
    from django.conf import settings

    from annotate.templatetags.arbiter_markdown import _cleaner, _markdown, render_markdown

    limit = settings.ARBITER_MARKDOWN_MAX_CHARS
    rows = []
    meter = Meter()
    meter.start()
    for name, make in KINDS.items():
        text = make(args.size)
        formatted = timed(lambda t: _cleaner.clean(_markdown.render(t)), text, 1)
        shown = timed(render_markdown, text, args.runs)
        at_limit = timed(render_markdown, text[:limit], args.runs)
        print(f"{name:26} formatted {formatted[0]:7.2f} s  shown {shown[0] * 1000:7.1f} ms  "
              f"at the limit {at_limit[0] * 1000:7.1f} ms  (CPU {formatted[1]:.2f} / {shown[1] * 1000:.1f} / "
              f"{at_limit[1] * 1000:.1f})", flush=True)  # fmt: skip
        rows.append((name, formatted, shown, at_limit))
    load = meter.stop()

    print(f"\nOther work took {load['other_pct']:.0f} % of the machine during the runs; limit {limit:,} characters;")
    print(f"renderer {code_version('annotate/templatetags/arbiter_markdown.py')}.\n")
    print(f"| Text ({args.size:,} characters) | Formatted in full | Shown now | Formatted at the limit ({limit:,}) |")
    print("|---|---:|---:|---:|")
    for name, (wall, cpu), shown, (limit_wall, limit_cpu) in rows:
        print(
            f"| {name} | {wall:.1f} s ({cpu:.1f} s CPU) | {shown[0] * 1000:.1f} ms "
            f"| {limit_wall * 1000:.0f} ms ({limit_cpu * 1000:.0f} ms CPU) |"
        )


if __name__ == "__main__":
    main()
