"""Import memory benchmark: peak RSS of import_file on gzip bombs and on a big ordinary file, each in a child process.

    .venv/bin/python benchmarks/import_memory.py                         # every case, this checkout's code
    .venv/bin/python benchmarks/import_memory.py --cases bomb-line,bomb-lines
    .venv/bin/python benchmarks/import_memory.py --code /tmp/arbiter-old --label fc78b31   # another commit's code

Cases (files generated once into benchmarks/output/):
- baseline:   Django set up and a project created, nothing imported: what every other figure includes.
- bomb-line:  a gzip file of one 1.2 GB JSONL line (`{"prompt": "aaa…"}`), 1.2 MB compressed.
- bomb-lines: a gzip file of 1.2 GB of 1 MB lines (each a prompt of 1,000,000 "a"), 1.2 MB compressed: every row
              is under every per-row limit; the file is over ARBITER_IMPORT_MAX_BYTES once decompressed.
- rows:       import_bench.py's file of N prompts with 2 responses each (N = --rows, default 1,000,000: 2.5 GB),
              imported for real, with ARBITER_IMPORT_MAX_BYTES raised to let it in.
The bombs run with the default limits, as a server would. Each run imports into a fresh copy of a migrated SQLite
database in a child process of its own; its peak RSS is os.wait4's for that child. `--code DIR` runs the children
on the app in DIR (a `git worktree add` of another commit), so the same cases measure the code before a change.
"""

import argparse
import gzip
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from _machine import busy_percent, code_version
from import_bench import OUTPUT, REPO_ROOT, SQLiteDatabases, child_env, generate

CASES = ("baseline", "bomb-line", "bomb-lines", "rows")
BOMB_BYTES = 1_200_000_000
CHUNK = b"a" * 2**20


def bomb_line(path: Path) -> None:
    """One line of BOMB_BYTES: a prompt of "a" that gzip shrinks a thousandfold."""
    with gzip.open(path.with_suffix(".tmp"), "wb", compresslevel=9) as out:
        out.write(b'{"prompt": "')
        for _ in range(BOMB_BYTES // len(CHUNK)):
            out.write(CHUNK)
        out.write(b'"}\n')
    path.with_suffix(".tmp").rename(path)


def bomb_lines(path: Path) -> None:
    """BOMB_BYTES of lines of about 1 MB, each a distinct prompt of 1,000,000 "a"."""
    prompt = b"a" * 1_000_000
    with gzip.open(path.with_suffix(".tmp"), "wb", compresslevel=9) as out:
        for n in range(BOMB_BYTES // len(prompt)):
            out.write(b'{"id": "bomb-%d", "prompt": "%s"}\n' % (n, prompt))
    path.with_suffix(".tmp").rename(path)


def data_file(case: str, rows: int) -> Path | None:
    if case == "baseline":
        return None
    path = OUTPUT / (f"import-{rows}.jsonl" if case == "rows" else f"{case}.jsonl.gz")
    if not path.exists():
        print(f"generating {path.relative_to(REPO_ROOT)} …", file=sys.stderr)
        {"bomb-line": bomb_line, "bomb-lines": bomb_lines, "rows": lambda p: generate(p, rows)}[case](path)
    return path


def child(path: str) -> None:
    """In the child: import the file (if any) into a new project; print the outcome as JSON."""
    import django

    django.setup()
    from annotate.importing import ImportFailed, import_file
    from annotate.models import Project

    project = Project.objects.create(name="Benchmark", slug="benchmark")
    start = time.perf_counter()
    outcome = {}
    if path:
        try:
            outcome["rows"] = import_file(project, path).rows
        except ImportFailed as error:
            outcome["refused"] = str(error)
    outcome["seconds"] = time.perf_counter() - start
    print(json.dumps(outcome))


def run(case: str, path: Path | None, code: Path, database_url: str) -> tuple[dict, float, float]:
    """One child on `code`'s app; its outcome, peak RSS in MiB, and CPU seconds (start-up included)."""
    env = {**child_env(database_url), "PYTHONPATH": str(code)}
    if case == "rows":
        # The file is far over the default limit, which protects a server from uploads, not this measurement.
        env["ARBITER_IMPORT_MAX_BYTES"] = str(2**40)
    proc = subprocess.Popen(
        [sys.executable, __file__, "--child", str(path or "")], env=env, stdout=subprocess.PIPE, cwd=code
    )
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{case}: the child failed with exit status {os.waitstatus_to_exitcode(status)}")
    return json.loads(out), usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime  # Linux reports KiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, of {', '.join(CASES)}")
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows of the `rows` case (default 1000000)")
    parser.add_argument("--code", type=Path, default=REPO_ROOT, help="checkout whose app the children run")
    parser.add_argument("--label", help="the Importer column (default: the last commit of annotate/importing.py)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        child(args.child)
        return

    cases = [case.strip() for case in args.cases.split(",")]
    if unknown := set(cases) - set(CASES):
        parser.error(f"unknown cases: {', '.join(sorted(unknown))}")
    OUTPUT.mkdir(parents=True, exist_ok=True)
    code = args.code.resolve()
    if args.label:
        label = args.label
    elif code == REPO_ROOT:
        label = code_version("annotate/importing.py")
    else:
        label = subprocess.run(["git", "log", "-1", "--format=%h"], cwd=code, capture_output=True, text=True).stdout
        label = label.strip() or code.name
    databases = SQLiteDatabases()
    table = []
    for number, case in enumerate(cases, start=1):
        path = data_file(case, args.rows)
        busy = busy_percent()
        url = databases.fresh(number)
        try:
            outcome, peak, cpu = run(case, path, code, url)
        finally:
            databases.drop(url)
        what = f"{outcome['rows']:,} rows imported" if "rows" in outcome else outcome.get("refused", "-")
        seconds = outcome["seconds"]
        print(f"{case}: peak RSS {peak:,.0f} MiB, {seconds:.1f} s, CPU {cpu:.1f} s, busy {busy:.0f} %: {what}")
        size = f"{path.stat().st_size / 2**20:,.1f} MiB" if path else "-"
        table.append(f"| {case} | {label} | {size} | {peak:,.0f} MiB | {seconds:.1f} s | {cpu:.1f} s | {busy:.0f} % |")
    print("\n| Case | Importer | File | Peak RSS | Time | CPU | Busy |\n|---|---|---:|---:|---:|---:|---:|")
    print("\n".join(table))


if __name__ == "__main__":
    main()
