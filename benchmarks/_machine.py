"""What every benchmark here needs of the machine: how busy its CPUs are, waiting for quiet, the code version, and
for those that run the app in-process with the training engine, Django set up on a database of their own.

The scripts run as `python benchmarks/<script>.py`, so this module is importable as `_machine`.
"""

import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def machine_ticks() -> tuple[int, int]:
    """Busy and total CPU time of the whole machine so far, in clock ticks summed over CPUs (/proc/stat)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return sum(fields) - fields[3] - fields[4], sum(fields)  # less idle and iowait


def process_ticks(pid: int | str = "self") -> int | None:
    """User + system CPU time of one process (all its threads), in clock ticks; None once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(fields[11]) + int(fields[12])  # utime and stime, fields 14 and 15 of proc(5)


class Meter:
    """How much of the machine went to other work between start() and stop(): all busy CPU time less ours."""

    def start(self) -> None:
        self.begin = (*machine_ticks(), process_ticks())

    def stop(self) -> dict[str, float]:
        busy, total, own = (*machine_ticks(), process_ticks())
        span = max(1, total - self.begin[1])
        others = max(0, (busy - self.begin[0]) - (own - self.begin[2]))
        return {"other_pct": 100 * others / span, "own_pct": 100 * (own - self.begin[2]) / span}


def busy_percent(seconds: float = 2.0) -> float:
    """Percent of the machine busy over the next `seconds`."""
    busy1, total1 = machine_ticks()
    time.sleep(seconds)
    busy2, total2 = machine_ticks()
    return 100 * (busy2 - busy1) / max(1, total2 - total1)


def wait_until_quiet(limit: float, patience_s: float) -> float:
    """Wait (at most `patience_s`) until the machine is less than `limit` percent busy; return the last sample."""
    deadline = time.monotonic() + patience_s
    while (busy := busy_percent()) >= limit and time.monotonic() < deadline:
        print(f"  machine {busy:.0f} % busy, waiting for < {limit:.0f} %", file=sys.stderr)
        time.sleep(10)
    return busy


def code_version(*paths: str) -> str:
    """The last commit of `paths` (of the repository when none), marked when the working copy differs from it."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True).stdout.strip()

    commit = git("log", "-1", "--format=%h", "--", *paths) or "unknown"
    edited = git("status", "--porcelain", "--untracked-files=no", "--", *paths)
    return commit + (" with uncommitted changes" if edited else "")


def set_up_app(run_dir: Path, database_url: str | None, threads: int) -> None:
    """The app in this process, its files under run_dir, on database_url (default: a new SQLite file there) migrated,
    with quiet logs and `threads` torch threads: what the benchmarks that simulate annotators and train need."""
    os.environ.update(
        {
            "DJANGO_SETTINGS_MODULE": "arbiter.settings",
            "DATABASE_URL": database_url or f"sqlite:///{run_dir / 'bench.sqlite3'}",
            "ARBITER_VAR_DIR": str(run_dir / "var"),
            "MEDIA_ROOT": str(run_dir / "media"),
            "ARBITER_ARTIFACTS_ROOT": str(run_dir / "artifacts"),
            "ARBITER_THROTTLE_SUBMIT": "100000/min",  # bots answer as fast as the server lets them
            "SECRET_KEY": secrets.token_hex(32),
            "LOG_LEVEL": "WARNING",
            "HF_HUB_OFFLINE": "1",
            "TQDM_DISABLE": "1",  # the trainers' and loaders' progress bars
            "TRANSFORMERS_VERBOSITY": "error",  # a load report for every fresh reward head
            "OMP_NUM_THREADS": str(threads),
            "MKL_NUM_THREADS": str(threads),
        }
    )
    sys.path.insert(0, str(REPO_ROOT))
    import django
    import torch

    torch.set_num_threads(threads)
    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
