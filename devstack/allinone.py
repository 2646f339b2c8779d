"""The embedded default's single process: the API and a Celery worker (with beat) together.

Qdrant's embedded mode lets one process open its folder, so without ``QDRANT_URL`` the API
and the workers share this process and one vector-store client. With a Qdrant server they run
as separate processes (``uvicorn api.main`` and ``celery -A workers.main worker``) instead.
"""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path

import typer
import uvicorn
from celery.signals import worker_ready as worker_ready_signal

from api.main import create_app
from api.settings import ApiSettings
from haven.ops_metrics import WORKER_METRICS
from haven.queueing import QUEUES
from workers.app import create_worker_app
from workers.settings import WorkerSettings

WEB_EXPORT = Path(__file__).resolve().parents[1] / "web" / "out"


def main(
    host: str = "127.0.0.1",
    port: int = 8080,
    concurrency: int | None = None,
) -> None:
    api_settings = ApiSettings()
    if api_settings.web_dir is None and WEB_EXPORT.is_dir():
        # The checkout's web app, once built (make up builds it): served at /.
        api_settings.web_dir = WEB_EXPORT
    worker_settings = WorkerSettings()
    app = create_app(api_settings)
    # The worker's job metrics on the API's /metrics (one process, one port).
    WORKER_METRICS.serve_in(app.state.runtime.registry)
    # Ready means ready to ingest too: the worker consumes (and has loaded its tokenizer).
    worker_ready = threading.Event()
    worker_ready_signal.connect(lambda **_: worker_ready.set(), weak=False)

    def check_worker() -> None:
        if not worker_ready.is_set():
            raise RuntimeError("the worker is starting")

    app.state.runtime.readiness_checks["worker"] = check_worker
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=host,
            port=port,
            log_config=None,
            timeout_graceful_shutdown=10,
        )
    )
    api_thread = threading.Thread(target=server.run, name="api", daemon=True)
    api_thread.start()

    celery = create_worker_app(worker_settings)
    worker = celery.Worker(
        pool="threads",
        concurrency=concurrency or worker_settings.worker_concurrency,
        queues=list(QUEUES),
        beat=True,
        without_mingle=True,
        without_gossip=True,
        # A node name of its own: two Havens on one broker (a second checkout, a benchmark
        # beside the dev instance) would otherwise fight over the same control queue.
        hostname=f"allinone-{os.getpid()}@{socket.gethostname()}",
        loglevel=worker_settings.log_level,
    )
    try:
        worker.start()
    finally:
        server.should_exit = True
        api_thread.join(timeout=15)


if __name__ == "__main__":
    typer.run(main)
