"""What the API holds for its lifetime: connections to the stores and the token service.

Built once in ``create_app``; connections open lazily, except the embedded vector store,
which opens its folder at start-up (see ``haven.vectors``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, TypeVar

import redis
import redis.asyncio as aredis
from celery import Celery
from minio import Minio
from prometheus_client import CollectorRegistry
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from api.quotas import Quotas
from api.settings import ApiSettings
from haven.answer_cache import AnswerCache
from haven.auth.passwords import hash_password, verify_password
from haven.auth.state import AuthStates
from haven.auth.throttle import SignInThrottle
from haven.auth.tokens import TokenService
from haven.db.engine import make_engine, make_session_factory
from haven.emb_client import AsyncEmbClient
from haven.index import ChunkIndex
from haven.index_pointer import PointerCache
from haven.job_metrics import JobPipelineCollector
from haven.language import Detector
from haven.llm_client import AsyncLlmClient
from haven.ops_metrics import (
    ApiOpsMetrics,
    JobStateCollector,
    MaintenanceCollector,
    tenant_in_context,
)
from haven.queueing import create_celery
from haven.read_only import ReadOnlySwitch
from haven.storage import Presigner, make_client, make_presigner
from haven.telemetry import RequestMetrics
from haven.vectors import make_index, release_qdrant
from haven.vectorstore import VectorStore

T = TypeVar("T")

# Connections kept out of the request budget: readiness checks and metrics scrapes.
RESERVED_CONNECTIONS = 2
# Connections for reading a caller's state when Redis has no copy (see ``auth_slots``).
AUTH_CONNECTIONS = 2


@dataclass
class ApiRuntime:
    settings: ApiSettings
    engine: Engine
    session_factory: sessionmaker[Session]
    redis: redis.Redis
    s3: Minio
    tokens: TokenService
    metrics: RequestMetrics
    registry: CollectorRegistry
    celery: Celery
    emb: AsyncEmbClient
    llm: AsyncLlmClient
    answers: AnswerCache
    # Signs the URLs clients use to reach the object store (for its public address).
    presigner: Presigner
    # The callers' current state (tokens checked against it) and sign-in throttling.
    auth: AuthStates
    signin: SignInThrottle
    # Password checks (argon2, 64 MiB each) at once; they never hold a database slot.
    password_checks: asyncio.Semaphore
    # Read-only mode as this replica last read it, and the operators' metrics.
    read_only: ReadOnlySwitch
    ops: ApiOpsMetrics
    # Token budgets, rate limits and stream caps (api.quotas).
    quotas: Quotas
    # Requests that may hold a database session at once. Every session is opened under a
    # slot and a slot never waits in a thread, so a thread never waits for a connection:
    # with more concurrent requests than connections, the rest wait here, on the event loop,
    # instead of filling the thread pool with threads blocked on the pool (a deadlock: the
    # connections are released by teardowns that need those threads).
    db_slots: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(1))
    # Slots of their own for the caller checks (a token's current state, an API key): a
    # request may already hold its session's slot when its caller is checked, and waiting
    # for a second slot of the same kind would deadlock once every slot is held that way.
    # A caller check waits for nothing else, so these always come free.
    auth_slots: asyncio.Semaphore = field(
        default_factory=lambda: asyncio.Semaphore(AUTH_CONNECTIONS)
    )
    qdrant: VectorStore | None = None
    # Readiness checks added by a process that runs more than this API (the all-in-one's
    # worker): name -> a call that raises while that part is not ready.
    readiness_checks: dict[str, Callable[[], None]] = field(default_factory=dict)

    @cached_property
    def detector(self) -> Detector:
        """The queries' language detection (its models load on the first query)."""
        return Detector(self.settings.languages)

    @classmethod
    def build(cls, settings: ApiSettings) -> ApiRuntime:
        engine = make_engine(settings)
        registry = CollectorRegistry()
        session_factory = make_session_factory(engine)
        celery = create_celery(settings)
        sync_redis = redis.Redis.from_url(
            settings.redis_url, socket_connect_timeout=2, socket_timeout=5
        )
        async_redis = aredis.Redis.from_url(
            settings.redis_url, socket_connect_timeout=2, socket_timeout=5
        )
        registry.register(JobPipelineCollector(celery, session_factory, settings.job_lease_seconds))
        read_only = ReadOnlySwitch(session_factory, settings.read_only_cache_seconds)
        registry.register(JobStateCollector(session_factory, read_only))
        registry.register(MaintenanceCollector(session_factory))
        ops = ApiOpsMetrics(registry)
        llm = AsyncLlmClient(settings.llm_url)
        llm.on_completed = lambda done: ops.count_tokens(
            tenant_in_context(), done.completion_tokens
        )
        answers = AnswerCache(
            aredis.Redis.from_url(settings.redis_url, socket_connect_timeout=2, socket_timeout=5),
            settings.answer_cache_ttl_seconds,
        )
        answers.on_lookup = ops.count_lookup
        return cls(
            settings=settings,
            engine=engine,
            session_factory=session_factory,
            db_slots=asyncio.Semaphore(
                max(
                    1,
                    settings.database_pool_size
                    + settings.database_max_overflow
                    - RESERVED_CONNECTIONS
                    - AUTH_CONNECTIONS,
                )
            ),
            redis=sync_redis,
            s3=make_client(settings),
            presigner=make_presigner(settings, settings.s3_public_url),
            tokens=TokenService(settings),
            metrics=RequestMetrics("api", registry),
            registry=registry,
            celery=celery,
            emb=AsyncEmbClient(settings.emb_url),
            llm=llm,
            answers=answers,
            auth=AuthStates(async_redis, sync_redis, settings.auth_state_ttl_seconds),
            signin=SignInThrottle(
                async_redis,
                per_username=settings.signin_failures_per_username,
                per_address=settings.signin_attempts_per_address,
                window_seconds=settings.signin_window_seconds,
            ),
            password_checks=asyncio.Semaphore(settings.password_check_concurrency),
            read_only=read_only,
            ops=ops,
            quotas=Quotas.build(settings, session_factory, async_redis, registry),
        )

    async def in_db_thread(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn`` (which opens its own session) in a thread, under a database slot."""
        async with self.db_slots:
            return await run_in_threadpool(fn, *args)

    async def in_auth_thread(self, fn: Callable[..., T], *args: Any) -> T:
        """Like ``in_db_thread``, for the caller checks and refusal audits: one short
        transaction that waits for nothing else, so it may run while the request holds
        its session's slot."""
        async with self.auth_slots:
            return await run_in_threadpool(fn, *args)

    async def check_password(self, password_hash: str | None, password: str) -> bool:
        """argon2 in a thread, a few at a time, holding no database slot."""
        async with self.password_checks:
            return await asyncio.to_thread(verify_password, password_hash, password)

    async def hash_password(self, password: str) -> str:
        async with self.password_checks:
            return await asyncio.to_thread(hash_password, password)

    @cached_property
    def pointer(self) -> PointerCache:
        """The live collection and its models (blue/green re-index, haven.index_pointer)."""
        return PointerCache(
            self.session_factory,
            self.settings.qdrant_collection,
            self.settings.index_pointer_cache_seconds,
        )

    @property
    def qdrant_store(self) -> VectorStore:
        if self.qdrant is None:
            raise RuntimeError("the vector store is not open yet")
        return self.qdrant

    @property
    def index(self) -> ChunkIndex:
        if self.qdrant is None:
            raise RuntimeError("the vector store is not open yet")
        return make_index(self.settings, self.qdrant, self.pointer.get())

    async def aclose(self) -> None:
        await self.quotas.stop()
        await self.emb.aclose()
        await self.llm.aclose()
        await self.answers.client.aclose()
        await self.auth.client.aclose()
        self.close()

    def close(self) -> None:
        if self.qdrant is not None:
            release_qdrant(self.settings, self.qdrant)
        self.redis.close()
        self.engine.dispose()
