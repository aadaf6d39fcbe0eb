"""One Prometheus /metrics endpoint per Celery worker (container or pod), adding up all its prefork processes.

The jobs run in child processes, each with its own memory, so prometheus_client runs in multiprocess mode:
every process writes its samples to files in a private folder (PROMETHEUS_MULTIPROC_DIR), and the parent's
HTTP server (MEDIMG_WORKER_METRICS_PORT) reads them all at each scrape. The mode is chosen when
prometheus_client is first imported, so `enable_multiprocess` runs before any metric module is imported.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path

from app.config import Settings

log = logging.getLogger(__name__)


def enable_multiprocess(settings: Settings) -> Path | None:
    """Prepares a fresh sample folder for this worker, or does nothing when no metrics port is configured."""
    if settings.worker_metrics_port is None:
        return None
    if "prometheus_client" in sys.modules:
        raise RuntimeError("prometheus_client was imported before multiprocess mode was enabled")
    folder = Path(tempfile.mkdtemp(prefix="medimg-metrics-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    # prometheus_client's own switch, read by it at import; the children inherit it through the fork.
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(folder)
    return folder


def serve_metrics(settings: Settings) -> None:
    """Starts the /metrics HTTP server in this (the Celery parent) process."""
    if settings.worker_metrics_port is None:
        return
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry)
    start_http_server(settings.worker_metrics_port, addr=settings.worker_metrics_host, registry=registry)
    log.info("worker metrics on http://%s:%d/metrics", settings.worker_metrics_host, settings.worker_metrics_port)
