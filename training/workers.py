"""Workers on the gpu queue report their GPUs: at start, every ARBITER_WORKER_REPORT_SECONDS, and gone at shutdown.

The launch (training/rounds.py) checks a round's memory estimate against the largest GPU that has reported recently,
and refuses load_in_4bit while none has. The signal handlers are connected when Celery loads training.tasks; only a
worker that consumes the gpu queue reports, and only it imports torch to find its devices.
"""

import logging
from typing import Any

from celery.signals import worker_ready, worker_shutdown
from django.conf import settings

from annotate.jobs import Heartbeat
from training.models import Worker

logger = logging.getLogger(__name__)
GPU_QUEUE = "gpu"

_reporting: dict[str, Any] = {}  # this process's hostname and report thread, between ready and shutdown


def discover_devices() -> list[dict[str, Any]]:
    """This machine's CUDA GPUs as {name, total_memory (bytes)}; none without CUDA."""
    import torch  # only in the worker: the web process never imports it

    if not torch.cuda.is_available():
        return []
    properties = [torch.cuda.get_device_properties(index) for index in range(torch.cuda.device_count())]
    return [{"name": each.name, "total_memory": each.total_memory} for each in properties]


def report_devices(hostname: str, queues: list[str]) -> Worker:
    """Record this worker and its devices now."""
    return Worker.report(hostname, queues=queues, devices=discover_devices())


@worker_ready.connect
def _start_reporting(sender: Any, **kwargs: Any) -> None:
    queues = sorted(sender.app.amqp.queues.consume_from)
    if GPU_QUEUE not in queues:
        return
    hostname = sender.hostname
    worker = report_devices(hostname, queues)
    logger.info("Reported %s GPU(s) of %s: %s", len(worker.devices), hostname, worker.devices)
    thread = Heartbeat(
        lambda: report_devices(hostname, queues), settings.ARBITER_WORKER_REPORT_SECONDS, name="worker-report"
    )
    thread.start()
    _reporting.update(hostname=hostname, thread=thread)


@worker_shutdown.connect
def _stop_reporting(**kwargs: Any) -> None:
    if not _reporting:
        return
    _reporting["thread"].stop()
    Worker.gone(_reporting.pop("hostname"))
    _reporting.clear()
