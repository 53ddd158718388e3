"""Run one stage under `accelerate launch` in a child process group, as if it ran in this process.

A round's stage with `launch` other than single goes through `run_launched`: it starts

    python -m accelerate.commands.launch --config_file training/engine/launch/<launch>.yaml --num_processes N
        -m training.engine <stage> --data … --out … --config <the stage's config as JSON> --progress-json …

reads one JSON object per step from the child's stdout (rank 0 prints them) and hands each to the round's progress
callback; when the callback asks to stop, it creates the stop file the child polls, so the stage stops after its
step and saves, as in-process (SIGTERM, then SIGKILL to the whole group if it is still running a grace period
later). The child dies with its parent (Linux's parent-death signal) and each rank when the pipe on its stdin
closes, so a killed worker leaves no process behind. A failing child raises: ValueError or MemoryError with the
child's own message when that is what it died of (the round's failure message shows them as for an in-process
stage), else LaunchFailed with the end of its stderr, which goes to the worker's log.

Imports nothing heavy until a stage runs (the result type, and the GPU count, come from torch).
"""

import collections
import contextlib
import ctypes
import functools
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from training.engine.config import BaseConfig

logger = logging.getLogger(__name__)

PRESETS = Path(__file__).with_name("launch")  # <mode>.yaml for every mode of LAUNCH_MODES but single
ROOT = Path(__file__).resolve().parents[2]  # where `-m training.engine` resolves
SHARDED = ("zero2", "zero3", "fsdp2")  # the modes that split the model: CUDA only
GRACE_SECONDS = 120  # after a stop request, how long a stage may take to finish its step and save
STDERR_LINES = 60  # the end of the child's stderr kept for the error and the log
# An exception line the child died of, which the round's failure message knows how to word for a lead.
_KNOWN_ERROR = re.compile(r"^(?:\w+\.)*(ValueError|OutOfMemoryError|MemoryError): (.*)$")
_PR_SET_PDEATHSIG = 1


class LaunchFailed(RuntimeError):
    """A launched stage exited with an error; the message ends with its stderr's last lines."""


def preset(launch: str) -> Path:
    """The accelerate config file of a launch mode."""
    return PRESETS / f"{launch}.yaml"


def die_with_parent(parent: int) -> None:
    """Have the kernel SIGKILL this process when its parent dies (Linux; elsewhere nothing happens), and exit now if
    its parent is no longer `parent` (it died before the signal was armed). The runner's child calls it.

    The signal follows the thread that started the process: the runner starts the child from the thread that then
    waits for it (a Celery task's own thread does).
    """
    if not sys.platform.startswith("linux"):
        return
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(1)


def exit_with_runner() -> None:
    """SIGKILL this process once its stdin reaches end of file: a rank's stdin is a pipe whose other end the runner
    holds until the launch has ended, so it closes when the runner dies. (The ranks are the launcher's children, each
    in a session of its own, and would outlive it, waiting for a rendezvous that never comes.)"""

    def watch() -> None:
        while os.read(0, 4096):  # the raw descriptor: a daemon thread in sys.stdin's reader aborts the exit
            pass
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="exit-with-runner", daemon=True).start()


def launch_command(
    stage: str,
    config: BaseConfig,
    config_file: str,
    data_file: str,
    output_dir: str,
    *,
    reward_model: str = "",
    ratings: str = "",
    num_processes: int,
    machines: Sequence[str] = (),
    stop_file: str = "",
) -> list[str]:
    """The command that runs a stage under accelerate launch with its mode's preset; machines: accelerate launch's
    multi-machine arguments (--num_machines, --main_process_ip …), num_processes per machine."""
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(preset(config.launch))]
    # Not --cpu, which runs one process whatever --num_processes says: a CPU worker's env asks for gloo instead.
    command += ["--num_processes", str(num_processes * _machine_count(machines)), *machines]
    if "--main_process_port" not in machines:  # accelerate's fixed default would clash with a round beside it
        command += ["--main_process_port", str(free_port())]
    command += ["-m", "training.engine", stage, "--data", data_file, "--out", output_dir, "--config", config_file]
    command += ["--progress-json", "--exit-with-runner"]
    if reward_model:
        command += ["--reward-model", reward_model]
    if ratings:
        command += ["--ratings", ratings]
    if stop_file:
        command += ["--stop-file", stop_file]
    return command


def free_port() -> int:
    """A TCP port free on this machine now, for the ranks' rendezvous."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _machine_count(machines: Sequence[str]) -> int:
    args = list(machines)
    return int(args[args.index("--num_machines") + 1]) if "--num_machines" in args else 1


def run_launched(
    stage: str,
    config: BaseConfig,
    data_file: str,
    output_dir: str,
    progress: Callable[[int, int, dict[str, float]], bool] | None = None,
    *,
    reward_model: str = "",
    ratings: str = "",
    machines: Sequence[str] = (),
    grace_seconds: float = GRACE_SECONDS,
) -> Any:
    """Run the stage under accelerate launch (config.launch's preset, config.num_processes per machine) and return
    its StageResult; progress gets every step as in-process and may ask to stop."""
    import torch

    from training.engine.common import StageResult

    gpus = torch.cuda.device_count()
    if not gpus and config.launch in SHARDED:
        # accelerate drops DeepSpeed and FSDP without CUDA and would run plain data parallel under their name.
        raise ValueError(f"launch: {config.launch} needs CUDA GPUs, and this worker has none (use ddp or single)")
    num_processes = config.num_processes or max(gpus, 1)
    with tempfile.TemporaryDirectory(prefix="arbiter-launch-") as scratch:
        config_file, stop_file = Path(scratch) / "config.json", Path(scratch) / "stop"
        config_file.write_text(json.dumps(config.to_dict()), encoding="utf-8")
        command = launch_command(
            stage, config, str(config_file), data_file, output_dir, reward_model=reward_model, ratings=ratings,
            num_processes=num_processes, machines=machines, stop_file=str(stop_file),
        )  # fmt: skip
        logger.info("Stage %s: %s process(es) under accelerate launch (%s)", stage, num_processes, config.launch)
        child = subprocess.Popen(
            command,
            cwd=ROOT,
            env={**os.environ, **({"ACCELERATE_USE_CPU": "true"} if not gpus else {})},  # gloo between CPU ranks
            stdin=subprocess.PIPE,  # never written: its end of file tells every rank that the runner is gone
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # its own process group: a stop that escalates kills every rank at once
            preexec_fn=functools.partial(die_with_parent, os.getpid()),
        )
        errors: collections.deque[str] = collections.deque(maxlen=STDERR_LINES)
        reader = threading.Thread(target=_read_lines, args=(child.stderr, errors), daemon=True)
        reader.start()
        result, step, stopping = None, 0, None
        try:
            for line in child.stdout:
                message = _message(line)
                if message is None:
                    continue
                if "result" in message:
                    result = message["result"]
                elif "step" in message:
                    step = message["step"]
                    if progress and stopping is None and progress(step, message["total"], message["metrics"]):
                        stop_file.touch()
                        stopping = threading.Thread(target=_escalate, args=(child, grace_seconds), daemon=True)
                        stopping.start()
            child.wait()
        finally:
            if child.poll() is None:  # the callback raised: take the stage down with it
                _kill_group(child, signal.SIGKILL)
                child.wait()
            child.stdin.close()
            reader.join(timeout=5)
    if result is not None and child.returncode == 0:
        return StageResult(**result)
    if stopping is not None:  # stopped, but killed before it reported: what it saved is its last checkpoint
        return StageResult(output_dir=output_dir, steps=step, stopped=True, metrics={}, eval_report={})
    raise _failure(stage, child.returncode, list(errors))


def _read_lines(stream: Any, lines: collections.deque[str]) -> None:
    for line in stream:
        lines.append(line.rstrip("\n"))


def _message(line: str) -> dict[str, Any] | None:
    """A line of the progress protocol, or None for anything else the child printed."""
    if not line.startswith("{"):
        return None
    try:
        message = json.loads(line)
    except json.JSONDecodeError:
        return None
    return message if isinstance(message, dict) else None


def _escalate(child: subprocess.Popen, grace_seconds: float) -> None:
    """After a stop request: SIGTERM to the group when the grace period runs out, SIGKILL after another."""
    for signum in (signal.SIGTERM, signal.SIGKILL):
        try:
            child.wait(timeout=grace_seconds)
            return
        except subprocess.TimeoutExpired:
            logger.warning("Launched stage still running after a stop request: sending %s", signum.name)
            _kill_group(child, signum)


def _kill_group(child: subprocess.Popen, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # already gone
        os.killpg(child.pid, signum)


def _failure(stage: str, returncode: int, errors: list[str]) -> Exception:
    tail = "\n".join(errors)
    logger.error("Launched stage %s exited with code %s; its stderr ends:\n%s", stage, returncode, tail)
    failed = LaunchFailed(f"stage {stage} exited with code {returncode}; its stderr ends:\n{tail}")
    for line in reversed(errors):
        if match := _KNOWN_ERROR.match(line.strip()):
            name, text = match.groups()
            error = ValueError(text) if name == "ValueError" else MemoryError(text)
            error.__cause__ = failed
            return error
    return failed
