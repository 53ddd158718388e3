"""Export benchmark: N preference pairs imported with import_file, then exported as a snapshot, each run in a child.

    .venv/bin/python benchmarks/export_bench.py --postgres       # PostgreSQL on a throwaway tests/postgres.sh cluster
    DATABASE_URL=postgres://… .venv/bin/python benchmarks/export_bench.py   # PostgreSQL you already run
    .venv/bin/python benchmarks/export_bench.py --postgres --rows 100000 --runs 1   # a quick look

Generates N TRL-standard preference rows (prompt, chosen, rejected), imports them with `import_file` into a fresh
database (timed: the import figure), then exports them as pairs with `create_snapshot` + `run_snapshot`, each run
in a child process of its own, measuring wall time, peak RSS (os.wait4's rusage for that child) and time to first
byte (until the export's output file first holds data). Prints each run, the medians and Markdown rows for
BENCHMARKS.md. `--profile` writes a cProfile of the first export run and prints its top 20.
"""

import argparse
import contextlib
import json
import os
import random
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import busy_percent, code_version, wait_until_quiet
from import_bench import OUTPUT, REPO_ROOT, WORDS, child_env  # noqa: E402  (the same texts)

SEED = 20261124
DATABASE = "arbiter_export_bench"


def generate(path: Path, rows: int) -> None:
    """Write `rows` JSONL preference rows: an id, a prompt, a chosen and a rejected reply (deterministic)."""
    rng = random.Random(SEED)

    def text(median_words: int) -> str:
        # Log-normal lengths, as in import_bench.py: prompts around 25 words, replies around 120.
        n = max(1, int(rng.lognormvariate(0, 0.8) * median_words))
        return " ".join(rng.choices(WORDS, k=n)).capitalize() + "."

    tmp = path.with_suffix(".tmp")
    with tmp.open("w", encoding="utf-8") as out:
        for i in range(rows):
            chosen, rejected = text(120), text(120)
            while rejected == chosen:
                rejected = text(120)
            out.write(json.dumps({"id": f"pair-{i}", "prompt": text(25) + "?", "chosen": chosen, "rejected": rejected}))
            out.write("\n")
    tmp.rename(path)


def run_child(args: list[str], database_url: str, **env: str) -> tuple[dict, float, float]:
    """Run this script as a child; return the JSON it prints last, its peak RSS in MiB and its CPU seconds."""
    proc = subprocess.Popen(
        [sys.executable, __file__, *args],
        env={**child_env(database_url), **env},
        stdout=subprocess.PIPE,
        cwd=REPO_ROOT,
    )
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"benchmark child failed with exit code {os.waitstatus_to_exitcode(status)}")
    return json.loads(out.splitlines()[-1]), usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime  # KiB


# Children -----------------------------------------------------------------------------------------


def child_import(path: Path) -> None:
    """In the child: import the file into a new project; print what happened as JSON."""
    import django

    django.setup()
    from annotate.importing import import_file
    from annotate.models import Project

    project = Project.objects.create(name="Benchmark", slug="benchmark")
    start = time.perf_counter()
    result = import_file(project, path)
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "rows": result.rows, "annotations": result.annotations_created}))


def child_export(format: str, profile: Path | None) -> None:
    """In the child: export the project's pairs; print the time, the time to first byte and the snapshot as JSON.

    Time to first byte is when the file the export writes (its part file) first holds data, seen by a thread that
    looks every millisecond.
    """
    import django

    django.setup()
    from annotate.exports import create_snapshot, run_snapshot
    from annotate.models import Project

    first_byte: list[float] = []
    done = threading.Event()

    project = Project.objects.get(slug="benchmark")
    snapshot = create_snapshot(project, kind="pairs", format=format, style="conversational")
    part = snapshot.part_path

    def watch() -> None:
        while not done.is_set() and not first_byte:
            with contextlib.suppress(FileNotFoundError):
                if part.stat().st_size > 0:
                    first_byte.append(time.perf_counter())
            time.sleep(0.001)

    profiler = None
    if profile:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    start = time.perf_counter()
    snapshot = run_snapshot(snapshot)
    seconds = time.perf_counter() - start
    done.set()
    if profiler:
        profiler.disable()
        profiler.dump_stats(profile)
    if snapshot.status != "ready":
        sys.exit(f"export failed: {snapshot.error}")
    size = snapshot.file.size
    snapshot.file.delete(save=False)  # gigabytes: keep the disk for the next run
    print(
        json.dumps(
            {
                "seconds": seconds,
                "first_byte": first_byte[0] - start if first_byte else None,
                "rows": snapshot.row_count,
                "bytes": size,
                "sha256": snapshot.sha256,
            }
        )
    )


# Parent -------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000, help="preference pairs (default 1000000)")
    parser.add_argument("--runs", type=int, default=3, help="export runs per format; medians reported (default 3)")
    parser.add_argument("--formats", default="jsonl,parquet", help="formats to export (default jsonl,parquet)")
    parser.add_argument("--postgres", action="store_true", help="run on a throwaway cluster from tests/postgres.sh")
    parser.add_argument("--reuse", action="store_true", help=f"export from an existing {DATABASE}_N, no import")
    parser.add_argument("--profile", action="store_true", help="cProfile the first export run and print the top 20")
    parser.add_argument("--quiet-below", type=float, help="before each run, wait until the machine is less busy (%%)")
    parser.add_argument("--quiet-wait", type=float, default=600, help="wait at most this long for quiet (600 s)")
    parser.add_argument("--child-import", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--child-export", help=argparse.SUPPRESS)
    parser.add_argument("--child-profile", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child_import:
        child_import(args.child_import)
        return
    if args.child_export:
        child_export(args.child_export, args.child_profile)
        return
    if args.postgres and "DATABASE_URL" not in os.environ:
        # Re-run under the throwaway cluster, which sets DATABASE_URL for us.
        forwarded = [a for a in sys.argv[1:] if a != "--postgres"]
        script = REPO_ROOT / "tests" / "postgres.sh"
        sys.exit(subprocess.run([str(script), sys.executable, __file__, *forwarded]).returncode)
    url = os.environ.get("DATABASE_URL", "")
    if not urlsplit(url).scheme.startswith("postg"):
        sys.exit("PostgreSQL only: pass --postgres, or set DATABASE_URL=postgres://…")

    import psycopg

    OUTPUT.mkdir(parents=True, exist_ok=True)
    data = OUTPUT / f"export-pairs-{args.rows}.jsonl"
    if not data.exists():
        print(f"generating {data.relative_to(REPO_ROOT)} …", file=sys.stderr)
        generate(data, args.rows)
    size_mb = data.stat().st_size / 2**20

    admin = psycopg.connect(urlunsplit(urlsplit(url)._replace(path="/postgres")), autocommit=True)
    version = "PostgreSQL " + admin.execute("SHOW server_version").fetchone()[0].split()[0]
    name = f"{DATABASE}_{args.rows}"
    db_url = urlunsplit(urlsplit(url)._replace(path=f"/{name}"))
    media = OUTPUT / "export-media"
    # The file is far over the default import limit, which protects a server from uploads, not this script.
    env = {"MEDIA_ROOT": str(media), "ARBITER_IMPORT_MAX_BYTES": str(2**40)}
    imported = None
    if not args.reuse:
        admin.execute(f"DROP DATABASE IF EXISTS {name}")
        admin.execute(f"CREATE DATABASE {name}")
        subprocess.run(
            [sys.executable, str(REPO_ROOT / "manage.py"), "migrate", "-v0"],
            env={**child_env(db_url), **env},
            check=True,
            cwd=REPO_ROOT,
        )
        print(f"importing {args.rows:,} pairs ({size_mb:,.0f} MB) …", file=sys.stderr)
        report, peak, _ = run_child(["--child-import", str(data)], db_url, **env)
        imported = (report["seconds"], peak)
        print(
            f"import: {report['rows']:,} rows in {report['seconds']:.1f} s = {report['rows'] / report['seconds']:,.0f}"
            f" rows/s, peak RSS {peak:,.0f} MiB ({report['annotations']:,} imported annotations)",
            file=sys.stderr,
        )
        with psycopg.connect(db_url, autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE")  # what autovacuum will have done by the time anyone exports

    results: dict[str, list[dict]] = {}
    for format in args.formats.split(","):
        for run in range(1, args.runs + 1):
            busy = wait_until_quiet(args.quiet_below, args.quiet_wait) if args.quiet_below else busy_percent()
            child_args = ["--child-export", format]
            profile = OUTPUT / f"export-{format}.prof"
            if args.profile and run == 1:
                child_args += ["--child-profile", str(profile)]
            report, report["peak"], report["cpu"] = run_child(child_args, db_url, **env)
            report["busy"] = busy
            results.setdefault(format, []).append(report)
            print(
                f"{format} run {run}: {report['rows']:,} rows, {report['bytes'] / 2**20:,.0f} MiB in"
                f" {report['seconds']:.1f} s ({report['cpu']:.1f} s CPU), first byte after"
                f" {report['first_byte']:.3f} s, peak RSS {report['peak']:,.0f} MiB,"
                f" sha256 {report['sha256'][:16]}… (machine {busy:.0f} % busy before)",
                file=sys.stderr,
            )
            if args.profile and run == 1:
                import pstats

                pstats.Stats(str(profile), stream=sys.stderr).sort_stats("cumulative").print_stats(20)
        if len({r["sha256"] for r in results[format]}) != 1:
            sys.exit(f"{format}: the runs wrote different files (sha256 differs)")

    print(f"\n{version}, {args.rows:,} pairs ({size_mb:,.0f} MB of JSONL), medians of {args.runs} runs:")
    if imported:
        print("| Database | Importer | Pairs | File | Import time | Rows/s | Peak RSS |")
        print("|---|---|---:|---:|---:|---:|---:|")
        importer = code_version("annotate/importing.py")
        print(
            f"| {version} | {importer} | {args.rows:,} | {size_mb:,.0f} MB | {imported[0]:.1f} s"
            f" | {args.rows / imported[0]:,.0f} | {imported[1]:,.0f} MiB |"
        )
    print("| Database | Exporter | Pairs | Format | Output | Wall time | CPU | Rows/s | First byte | Peak RSS | Busy |")
    print("|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    exporter = code_version("annotate/exports.py")
    for format, runs in results.items():
        seconds = statistics.median(r["seconds"] for r in runs)
        print(
            f"| {version} | {exporter} | {runs[0]['rows']:,} | {format} | {runs[0]['bytes'] / 2**20:,.0f} MiB"
            f" | {seconds:.1f} s | {statistics.median(r['cpu'] for r in runs):.1f} s | {runs[0]['rows'] / seconds:,.0f}"
            f" | {statistics.median(r['first_byte'] for r in runs):.2f} s"
            f" | {statistics.median(r['peak'] for r in runs):,.0f} MiB | {max(r['busy'] for r in runs):.0f} % |"
        )


if __name__ == "__main__":
    main()
