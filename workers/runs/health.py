"""The runner's ``/healthz`` and ``/readyz``, on a small HTTP server beside the Celery worker
that consumes the ``run`` queue (``HAVEN_RUNNER_HEALTH_PORT``).

``/readyz`` answers 200 only when a no-op sandbox run starts and ends on this host (reused
for ``HAVEN_SANDBOX_READINESS_TTL_SECONDS``), and 503 with bubblewrap's reason otherwise, so
a host or container that cannot create namespaces is visible to the orchestrator rather
than as failing jobs.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from haven.sandbox import Sandbox


def make_server(sandbox: Sandbox, host: str, port: int) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/healthz":
                self._answer(200, {"status": "ok"})
            elif self.path == "/readyz":
                ready = sandbox.readiness()
                self._answer(
                    200 if ready.ok else 503,
                    {
                        "status": "ready" if ready.ok else "unavailable",
                        "checks": {"sandbox": {"ok": ready.ok, "reason": ready.reason}},
                        "sandbox": sandbox.describe(),
                        "languages": sorted(sandbox.settings.languages),
                        "limits": sandbox.settings.limits.model_dump(),
                    },
                )
            else:
                self._answer(404, {"detail": "not found"})

        def _answer(self, status: int, body: dict[str, object]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:
            return  # probes every few seconds: not worth a log line each

    return ThreadingHTTPServer((host, port), Handler)


def serve_in_thread(sandbox: Sandbox, host: str, port: int) -> ThreadingHTTPServer:
    server = make_server(sandbox, host, port)
    threading.Thread(target=server.serve_forever, name="runner-health", daemon=True).start()
    return server
