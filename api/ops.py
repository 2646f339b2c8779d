"""Operations endpoints: liveness, readiness of every dependency, version, metrics.

``/readyz`` is public, so a failed check shows a reason code (``timeout``, ``unreachable``,
``refused_credentials`` ...), never the dependency's own error text, which can name hosts,
users or paths; that goes to the log, with the request id.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import httpx
import structlog
from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from kombu.connection import Connection
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from api.deps import RuntimeDep
from api.runtime import ApiRuntime
from haven import __version__
from haven.errors import DomainError

log = structlog.get_logger("haven.api")

router = APIRouter(tags=["ops"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


def _check_postgres(rt: ApiRuntime) -> None:
    with rt.engine.connect() as conn:
        conn.execute(text("SELECT 1"))


def _check_redis(rt: ApiRuntime) -> None:
    rt.redis.ping()


def _check_broker(rt: ApiRuntime) -> None:
    url = rt.settings.broker_url.get_secret_value()
    timeout = rt.settings.readiness_timeout_seconds
    with Connection(url, connect_timeout=timeout) as conn:  # type: ignore[no-untyped-call]
        conn.ensure_connection(max_retries=1)


def _check_s3(rt: ApiRuntime) -> None:
    rt.s3.bucket_exists(rt.settings.s3_bucket)


def _check_vector_store(rt: ApiRuntime) -> None:
    if rt.qdrant is None:
        raise DomainError("the vector store client is not open", code="not_open")
    rt.qdrant.check()


CHECKS: dict[str, Callable[[ApiRuntime], None]] = {
    "postgres": _check_postgres,
    "redis": _check_redis,
    "broker": _check_broker,
    "s3": _check_s3,
    "vector_store": _check_vector_store,
}


# One client for every probe: a new client loads the CA certificates into an SSL context
# (37 ms of CPU here), twice per readiness check (emb, llm). No keep-alive, so a restarted
# service is never probed over a dead connection.
_PROBES = httpx.Client(limits=httpx.Limits(max_keepalive_connections=0))


def _check_service(url: str, timeout: float) -> None:
    response = _PROBES.get(f"{url.rstrip('/')}/readyz", timeout=timeout)
    if response.status_code != 200:
        raise DomainError("the service is not ready", code=f"not_ready_{response.status_code}")


# The model services: while one is down the API still signs in, lists and serves files (and
# searches without llm), so it stays ready (a load balancer keeps it) and names them degraded.
SERVICES: dict[str, Callable[[ApiRuntime], None]] = {
    "emb": lambda rt: _check_service(rt.settings.emb_url, rt.settings.readiness_timeout_seconds),
    "llm": lambda rt: _check_service(rt.settings.llm_url, rt.settings.readiness_timeout_seconds),
}


def _ignore_runtime(check: Callable[[], None]) -> Callable[[ApiRuntime], None]:
    return lambda _rt: check()


def reason_code(exc: BaseException) -> str:
    """A stable, safe name for why a check failed. A check that knows better raises a
    ``DomainError`` with its own code (``worker.starting``)."""
    if isinstance(exc, DomainError):
        return exc.code
    if isinstance(exc, TimeoutError):
        return "timeout"
    names = {cls.__name__ for cls in type(exc).__mro__}
    text = str(exc).lower()
    if names & {"AuthenticationError", "AccessRefused"} or "authentication" in text:
        return "refused_credentials"
    if names & {"ConnectionError", "OperationalError", "OSError", "MaxRetryError"}:
        return "unreachable"
    if "S3Error" in names:
        return "store_error"
    return "check_failed"


async def _run_check(
    name: str, rt: ApiRuntime, check: Callable[[ApiRuntime], None]
) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        await asyncio.wait_for(
            asyncio.to_thread(check, rt), timeout=rt.settings.readiness_timeout_seconds
        )
    except Exception as exc:  # any failure means "not ready"; its code is reported
        reason = reason_code(exc)
        # The full text only in the log (the request id is bound to every line).
        log.warning("readyz.check_failed", check=name, reason=reason, error=repr(exc)[:1000])
        return {"ok": False, "reason": reason}
    return {"ok": True, "ms": round((time.perf_counter() - started) * 1000, 1)}


@router.get("/readyz")
async def readyz(runtime: RuntimeDep) -> JSONResponse:
    checks_to_run: dict[str, Callable[[ApiRuntime], None]] = {
        **CHECKS,
        **{name: _ignore_runtime(check) for name, check in runtime.readiness_checks.items()},
    }
    names = list(checks_to_run)
    results = await asyncio.gather(
        *(_run_check(n, runtime, checks_to_run[n]) for n in names),
        *(_run_check(n, runtime, SERVICES[n]) for n in SERVICES),
    )
    checks = dict(zip(names, results[: len(names)], strict=True))
    services = dict(zip(SERVICES, results[len(names) :], strict=True))
    failed = [name for name, result in checks.items() if not result["ok"]]
    body = {
        "status": "not ready" if failed else "ready",
        "failed": failed,
        "checks": checks,
        "degraded": [name for name, result in services.items() if not result["ok"]],
        "services": services,
    }
    return JSONResponse(body, status_code=503 if failed else 200)


@router.get("/api/version")
async def version(runtime: RuntimeDep) -> dict[str, Any]:
    """The build, and read-only mode (``read_only.on`` and its reason: the web app's
    banner)."""
    state = await asyncio.to_thread(runtime.read_only.current)
    return {
        "service": "api",
        "version": __version__,
        "build": runtime.settings.build_version,
        "commit": runtime.settings.git_commit,
        "read_only": state.to_json(),
    }


@router.get("/metrics")
async def metrics(runtime: RuntimeDep) -> Response:
    return Response(generate_latest(runtime.registry), media_type=CONTENT_TYPE_LATEST)
