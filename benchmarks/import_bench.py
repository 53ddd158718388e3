"""Import benchmark: N prompt + 2-response rows (JSONL) into a fresh project, timed in a child process per run.

    .venv/bin/python benchmarks/import_bench.py                 # SQLite (a migrated temp file per run)
    .venv/bin/python benchmarks/import_bench.py --postgres      # PostgreSQL on a throwaway tests/postgres.sh cluster
    DATABASE_URL=postgres://… .venv/bin/python benchmarks/import_bench.py   # PostgreSQL you already run

Each run imports into a database that was just migrated and holds nothing else, in a child process of its own,
so the peak RSS (os.wait4's rusage for that child) is the run's alone. Prints each run, the median of the runs,
and a Markdown table row for BENCHMARKS.md. `--profile` writes a cProfile of one run and prints its top 15.
"""

import argparse
import json
import os
import random
import secrets
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from _machine import code_version

REPO_ROOT = Path(__file__).resolve().parent.parent
OUTPUT = REPO_ROOT / "benchmarks" / "output"
SEED = 20241124

VOCABULARY = (
    "the a model answer question because which would could should data reward policy human preference helpful "
    "harmless honest response prompt token training gradient loss batch step learning rate evaluation sample "
    "language assistant user system message context window summary explain example detail reason careful clear "
    "short long better worse first second finally however therefore also although python function return value"
)
WORDS = VOCABULARY.split()


def generate(path: Path, rows: int) -> None:
    """Write `rows` JSONL rows: an id, a prompt and two responses of varied length (deterministic)."""
    rng = random.Random(SEED)

    def text(median_words: int) -> str:
        # Log-normal lengths: mostly short, a long tail, like real chat data.
        n = max(1, int(rng.lognormvariate(0, 0.8) * median_words))
        return " ".join(rng.choices(WORDS, k=n)).capitalize() + "."

    tmp = path.with_suffix(".tmp")
    with tmp.open("w", encoding="utf-8") as out:
        for i in range(rows):
            row = {"id": f"bench-{i}", "prompt": text(25) + "?", "responses": [text(120), text(120)]}
            out.write(json.dumps(row) + "\n")
    tmp.rename(path)


def child_env(database_url: str) -> dict[str, str]:
    # Production settings: with DEBUG on, Django would also format and keep every query it runs.
    return {
        **os.environ,
        "DATABASE_URL": database_url,
        "DEBUG": "false",
        "SECRET_KEY": secrets.token_hex(32),
        "LOG_LEVEL": "WARNING",
        "PYTHONPATH": str(REPO_ROOT),
        "DJANGO_SETTINGS_MODULE": "arbiter.settings",
    }


def run_child(args: list[str], database_url: str) -> tuple[dict, float]:
    """Run this script as a child; return the JSON it prints and its peak RSS in MiB."""
    proc = subprocess.Popen(
        [sys.executable, __file__, *args], env=child_env(database_url), stdout=subprocess.PIPE, cwd=REPO_ROOT
    )
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        sys.exit(f"benchmark child failed with exit code {proc.returncode}")
    return json.loads(out), usage.ru_maxrss / 1024  # Linux reports KiB


def migrate(database_url: str) -> None:
    subprocess.run(
        [sys.executable, str(REPO_ROOT / "manage.py"), "migrate", "-v0"],
        env=child_env(database_url),
        check=True,
        cwd=REPO_ROOT,
    )


class SQLiteDatabases:
    """A migrated template file, copied fresh for each run."""

    name = "SQLite"

    def __init__(self) -> None:
        self.template = OUTPUT / "bench-template.sqlite3"
        self.template.unlink(missing_ok=True)
        migrate(f"sqlite:///{self.template}")

    def fresh(self, run: int) -> str:
        path = OUTPUT / f"bench-run-{run}.sqlite3"
        shutil.copyfile(self.template, path)
        return f"sqlite:///{path}"

    def drop(self, url: str) -> None:
        Path(urlsplit(url).path[1:]).unlink(missing_ok=True)

    def version(self) -> str:
        import sqlite3

        return f"SQLite {sqlite3.sqlite_version}"


class PostgresDatabases:
    """A migrated template database on the server DATABASE_URL names; each run gets a copy of it."""

    name = "PostgreSQL"

    def __init__(self, url: str) -> None:
        import psycopg

        self.url = url
        self.admin = psycopg.connect(self._url_for("postgres"), autocommit=True)
        self.template = "arbiter_bench_template"
        self.admin.execute(f"DROP DATABASE IF EXISTS {self.template}")
        self.admin.execute(f"CREATE DATABASE {self.template}")
        migrate(self._url_for(self.template))

    def _url_for(self, database: str) -> str:
        parts = urlsplit(self.url)
        return urlunsplit(parts._replace(path=f"/{database}"))

    def fresh(self, run: int) -> str:
        name = f"arbiter_bench_run_{run}"
        self.admin.execute(f"DROP DATABASE IF EXISTS {name}")
        self.admin.execute(f"CREATE DATABASE {name} TEMPLATE {self.template}")
        return self._url_for(name)

    def drop(self, url: str) -> None:
        self.admin.execute(f"DROP DATABASE IF EXISTS {urlsplit(url).path[1:]}")

    def version(self) -> str:
        return "PostgreSQL " + self.admin.execute("SHOW server_version").fetchone()[0].split()[0]


def child_import(path: Path, profile: Path | None) -> None:
    """In the child: import the file into a new project and print what happened as JSON."""
    import django

    django.setup()
    from annotate.importing import import_file
    from annotate.models import Project

    project = Project.objects.create(name="Benchmark", slug="benchmark")
    profiler = None
    if profile:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    start = time.perf_counter()
    result = import_file(project, path)
    seconds = time.perf_counter() - start
    if profiler:
        profiler.disable()
        profiler.dump_stats(profile)
    print(
        json.dumps(
            {
                "seconds": seconds,
                "rows": result.rows,
                "prompts": result.prompts_created,
                "responses": result.responses_created,
                "tasks": result.tasks_created,
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000, help="rows to generate and import (default 100000)")
    parser.add_argument("--runs", type=int, default=3, help="runs; the median is reported (default 3)")
    parser.add_argument("--postgres", action="store_true", help="run on a throwaway cluster from tests/postgres.sh")
    parser.add_argument("--profile", action="store_true", help="cProfile the first run and print the top 15")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--child-profile", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        child_import(args.child, args.child_profile)
        return
    if args.postgres and "DATABASE_URL" not in os.environ:
        # Re-run under the throwaway cluster, which sets DATABASE_URL for us.
        forwarded = [a for a in sys.argv[1:] if a != "--postgres"]
        script = REPO_ROOT / "tests" / "postgres.sh"
        sys.exit(subprocess.run([str(script), sys.executable, __file__, *forwarded]).returncode)

    OUTPUT.mkdir(parents=True, exist_ok=True)
    data = OUTPUT / f"import-{args.rows}.jsonl"
    if not data.exists():
        print(f"generating {data.relative_to(REPO_ROOT)} …", file=sys.stderr)
        generate(data, args.rows)
    size_mb = data.stat().st_size / 2**20

    url = os.environ.get("DATABASE_URL", "")
    databases = PostgresDatabases(url) if urlsplit(url).scheme.startswith("postg") else SQLiteDatabases()
    runs = []
    for run in range(1, args.runs + 1):
        db_url = databases.fresh(run)
        child_args = ["--child", str(data)]
        profile = OUTPUT / f"import-{databases.name.lower()}.prof"
        if args.profile and run == 1:
            child_args += ["--child-profile", str(profile)]
        try:
            report, peak_mb = run_child(child_args, db_url)
        finally:
            databases.drop(db_url)
        runs.append((report["seconds"], peak_mb))
        rate = report["rows"] / report["seconds"]
        print(
            f"run {run}: {report['rows']:,} rows in {report['seconds']:.2f} s = {rate:,.0f}"
            f" rows/s, peak RSS {peak_mb:,.0f} MiB ({report['prompts']:,} prompts, {report['responses']:,} responses,"
            f" {report['tasks']:,} tasks)",
            file=sys.stderr,
        )
        if args.profile and run == 1:
            import pstats

            pstats.Stats(str(profile), stream=sys.stderr).sort_stats("cumulative").print_stats(15)

    seconds = statistics.median(s for s, _ in runs)
    peak = statistics.median(p for _, p in runs)
    print(f"\n{databases.version()}, {args.rows:,} rows ({size_mb:.0f} MB), median of {len(runs)} runs:")
    print("| Database | Importer | Rows | File | Import time | Rows/s | Peak RSS |")
    print("|---|---|---:|---:|---:|---:|---:|")
    importer = code_version("annotate/importing.py")
    print(
        f"| {databases.version()} | {importer} | {args.rows:,} | {size_mb:.0f} MB | {seconds:.1f} s"
        f" | {args.rows / seconds:,.0f} | {peak:,.0f} MiB |"
    )


if __name__ == "__main__":
    main()
