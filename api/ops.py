"""Operations endpoints: liveness, readiness of every dependency, version, metrics."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from kombu.connection import Connection
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from api.deps import RuntimeDep
from api.runtime import ApiRuntime
from haven import __version__

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
        raise RuntimeError("vector store client is not open")
    rt.qdrant.check()


CHECKS: dict[str, Callable[[ApiRuntime], None]] = {
    "postgres": _check_postgres,
    "redis": _check_redis,
    "broker": _check_broker,
    "s3": _check_s3,
    "vector_store": _check_vector_store,
}


def _ignore_runtime(check: Callable[[], None]) -> Callable[[ApiRuntime], None]:
    return lambda _rt: check()


async def _run_check(rt: ApiRuntime, check: Callable[[ApiRuntime], None]) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        await asyncio.wait_for(
            asyncio.to_thread(check, rt), timeout=rt.settings.readiness_timeout_seconds
        )
    except TimeoutError:
        return {"ok": False, "error": "timed out"}
    except Exception as exc:  # any failure means "not ready"; the reason is reported
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:300]}
    return {"ok": True, "ms": round((time.perf_counter() - started) * 1000, 1)}


@router.get("/readyz")
async def readyz(runtime: RuntimeDep) -> JSONResponse:
    checks_to_run: dict[str, Callable[[ApiRuntime], None]] = {
        **CHECKS,
        **{name: _ignore_runtime(check) for name, check in runtime.readiness_checks.items()},
    }
    names = list(checks_to_run)
    results = await asyncio.gather(*(_run_check(runtime, checks_to_run[n]) for n in names))
    checks = dict(zip(names, results, strict=True))
    failed = [name for name, result in checks.items() if not result["ok"]]
    body = {"status": "not ready" if failed else "ready", "failed": failed, "checks": checks}
    return JSONResponse(body, status_code=503 if failed else 200)


@router.get("/api/version")
async def version(runtime: RuntimeDep) -> dict[str, str]:
    return {
        "service": "api",
        "version": __version__,
        "build": runtime.settings.build_version,
        "commit": runtime.settings.git_commit,
    }


@router.get("/metrics")
async def metrics(runtime: RuntimeDep) -> Response:
    return Response(generate_latest(runtime.registry), media_type=CONTENT_TYPE_LATEST)
