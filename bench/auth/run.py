"""Benchmark: what checking a token against its caller's current state costs per request.

Every authenticated request reads the caller's state: one Redis ``MGET`` when Redis has the
copy, a PostgreSQL transaction (two primary-key reads) when it does not. This measures both
on a fresh database, one caller at a time, and one argon2 password check for scale (the cost
sign-in throttling bounds). Appends a section to ``bench/RESULTS.md``.

    .venv/bin/python -m bench.auth.run [--calls 3000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
import uuid
from datetime import UTC, datetime

import redis
import redis.asyncio as aredis

from bench.common import machine, record
from haven.auth import accounts, state
from haven.auth.passwords import hash_password, verify_password
from haven.auth.principal import Principal
from haven.db.engine import make_engine, make_session_factory, transaction
from haven.db.repositories import AuditLog
from haven.db.tables import Role
from haven.settings import StoreSettings
from tests.fixtures.services import drop_database, migrated_database

REDIS_URL = f"redis://127.0.0.1:6379/{os.environ.get('HAVEN_TEST_REDIS_DB', '15')}"


def per_call_us(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered) * 1e6, ordered[int(len(ordered) * 0.99)] * 1e6


async def redis_checks(principal: Principal, calls: int) -> list[float]:
    client = aredis.Redis.from_url(REDIS_URL)
    states = state.AuthStates(client, redis.Redis.from_url(REDIS_URL), ttl_seconds=60)
    await states.remember(principal, state.CallerState(True, "viewer", 0), True)
    samples = []
    for _ in range(calls):
        started = time.perf_counter()
        found = await states.cached(principal)
        samples.append(time.perf_counter() - started)
        assert found is not None
    await client.aclose()
    return samples


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=3000)
    args = parser.parse_args()
    name = f"haven_bench_auth_{os.getpid()}"
    url = migrated_database(name)
    try:
        factory = make_session_factory(make_engine(StoreSettings(database_url=url)))
        with transaction(factory) as session:
            audit = AuditLog(session, None, None)
            tenant = accounts.create_tenant(session, audit, slug="bench", name="bench")
            user = accounts.create_user(
                session,
                audit,
                tenant_id=tenant.id,
                username=f"bench-{uuid.uuid4().hex[:8]}",
                password="bench-password",
                role=Role.VIEWER,
                actor=None,
            )
            principal = Principal(subject_id=user.id, tenant_id=tenant.id, role=Role.VIEWER)
        cached = asyncio.run(redis_checks(principal, args.calls))
        from_pg = []
        for _ in range(args.calls):
            started = time.perf_counter()
            with transaction(factory) as session:
                state.load(session, principal)
            from_pg.append(time.perf_counter() - started)
        hashed = hash_password("bench-password")
        argon = []
        for _ in range(5):
            started = time.perf_counter()
            verify_password(hashed, "wrong-password")
            argon.append(time.perf_counter() - started)
    finally:
        drop_database(name)

    redis_p50, redis_p99 = per_call_us(cached)
    pg_p50, pg_p99 = per_call_us(from_pg)
    section = f"""
## auth: a token's current-state check per request ({datetime.now(UTC):%Y-%m-%d %H:%M} UTC)

- machine: {machine()}
- command: `.venv/bin/python -m bench.auth.run --calls {args.calls}`; one caller at a time
- Redis copy (`MGET`, the usual case): p50 {redis_p50:.0f} µs, p99 {redis_p99:.0f} µs
- PostgreSQL (no copy in Redis, or Redis down): p50 {pg_p50:.0f} µs, p99 {pg_p99:.0f} µs
- **PostgreSQL / Redis: {pg_p50 / redis_p50:.1f}x** per request
- one argon2 password check (for scale): {statistics.median(argon) * 1000:.0f} ms
"""
    record(section)


if __name__ == "__main__":
    main()
