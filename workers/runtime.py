"""What a worker process holds: connections, the emb client and the chunking tokenizer.

Built lazily once per process (after the prefork pool forks), from the settings the worker
app was created with.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import redis
from celery import Celery
from minio import Minio
from sqlalchemy.orm import Session, sessionmaker

from haven.budget import BudgetKeeper, TokenBudget
from haven.db.engine import make_engine, make_session_factory, transaction
from haven.emb_client import EmbClient
from haven.index import ChunkIndex
from haven.index_pointer import IndexPointers, PointerCache, recorded_models
from haven.language import Detector
from haven.read_only import ReadOnlySwitch
from haven.sandbox import Sandbox
from haven.storage import make_client
from haven.vectors import make_index, make_qdrant
from haven.vectorstore import VectorStore
from models.loader import ModelCache
from models.store import registry_from_settings
from workers.jobs.cancel_watch import CancelWatch
from workers.jobs.keeper import LeaseKeeper
from workers.settings import WorkerSettings


@dataclass
class WorkerRuntime:
    settings: WorkerSettings
    celery: Celery
    _index_ensured: bool = field(default=False, init=False)
    _ensure_lock: threading.Lock = field(default_factory=threading.Lock, init=False)

    @cached_property
    def session_factory(self) -> sessionmaker[Session]:
        return make_session_factory(make_engine(self.settings))

    @cached_property
    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.settings.redis_url, socket_timeout=10)

    @cached_property
    def cancels(self) -> CancelWatch:
        """Cancels published for running jobs, heard on one subscriber thread."""
        watch = CancelWatch(self.redis)
        watch.start()
        return watch

    @cached_property
    def keeper(self) -> LeaseKeeper:
        """Renews the leases of this process's running jobs, on one thread."""
        s = self.settings
        tick = max(0.1, min(1.0, s.job_heartbeat_seconds / 2, s.job_lease_seconds / 6))
        return LeaseKeeper(tick)

    @cached_property
    def read_only(self) -> ReadOnlySwitch:
        """Read-only mode: while on, this worker takes no new job (``haven.read_only``)."""
        return ReadOnlySwitch(self.session_factory, self.settings.read_only_cache_seconds)

    @cached_property
    def s3(self) -> Minio:
        return make_client(self.settings)

    @cached_property
    def store(self) -> VectorStore:
        return make_qdrant(self.settings)

    @cached_property
    def pointer(self) -> PointerCache:
        """The live collection and, during a re-index, the one being built
        (``haven.index_pointer``)."""
        return PointerCache(
            self.session_factory,
            self.settings.qdrant_collection,
            self.settings.index_pointer_cache_seconds,
        )

    @property
    def index(self) -> ChunkIndex:
        """The live collection (deletes reach the others of the index too)."""
        return make_index(self.settings, self.store, self.pointer.get())

    def ensured_index(self) -> ChunkIndex:
        """The index, its collection created (or checked) once per process. The first
        time, the index pointer is recorded too, with the model versions the collection's
        vectors come from, so that queries keep being embedded with them after the alias
        moves (``haven.index_pointer``)."""
        index = self.index
        with self._ensure_lock:
            if not self._index_ensured:
                if self.pointer.get().generation == 0:  # no pointer yet: an early install
                    index.ensure(self.dimensions)
                    models = recorded_models(index) or {
                        m.alias: f"{m.name}/{m.version}"
                        for m in self.emb.models()
                        if m.alias in self.settings.emb_aliases
                    }
                    with transaction(self.session_factory) as session:
                        IndexPointers(session, self.settings.qdrant_collection).ensure(models)
                    self.pointer.invalidate()
                    index = self.index
                elif not index.exists():
                    # Gone (a restore without vectors, a lost store): created again for the
                    # model versions the pointer names, with their manifests' dimensions.
                    from haven.reindex import manifest_dimensions

                    live = self.pointer.get().live.models
                    index.ensure(
                        manifest_dimensions(registry_from_settings(self.settings), live)
                        if live
                        else self.dimensions
                    )
                self._index_ensured = True
        return index

    @cached_property
    def detector(self) -> Detector:
        """The chunks' language detection, its models loaded once per process."""
        detector = Detector(self.settings.languages)
        detector.warm()
        return detector

    @cached_property
    def emb(self) -> EmbClient:
        return EmbClient(self.settings.emb_url, timeout=self.settings.emb_timeout_seconds)

    @cached_property
    def tokenizer(self) -> Any:
        """The tokenizer of the first embedding alias: chunks are cut in its tokens."""
        from transformers import AutoTokenizer

        cache = ModelCache(registry_from_settings(self.settings), self.settings.model_cache_dir)
        local = cache.fetch(self.settings.emb_aliases[0])
        return AutoTokenizer.from_pretrained(str(local.path))

    @cached_property
    def budget(self) -> TokenBudget:
        """Tenants' token budgets, for the pipelines that call llm (reviews): each call
        reserves first; this process's leases are renewed, dead ones swept, by a keeper."""
        budget = TokenBudget(
            self.session_factory,
            period_seconds=self.settings.budget_period_seconds,
            lease_seconds=self.settings.budget_lease_seconds,
        )
        BudgetKeeper(budget).start()
        return budget

    @cached_property
    def sandbox(self) -> Sandbox:
        """Code runs' sandbox (workers/runs), with its readiness cache."""
        return Sandbox(self.settings.sandbox)

    def warm(self) -> None:
        """Load what the first job would otherwise wait for (the chunking tokenizer, the
        language models), and start hearing cancels."""
        _ = self.cancels
        _ = self.tokenizer
        _ = self.detector

    @cached_property
    def dimensions(self) -> dict[str, int]:
        served = {m.alias: m.dimension for m in self.emb.models()}
        missing = [a for a in self.settings.emb_aliases if a not in served]
        if missing:
            raise RuntimeError(f"the embedding service does not serve {missing}")
        return {alias: served[alias] for alias in self.settings.emb_aliases}


_runtimes: dict[int, WorkerRuntime] = {}
_lock = threading.Lock()


def runtime_for(app: Celery) -> WorkerRuntime:
    with _lock:
        found = _runtimes.get(id(app))
        if found is None:
            settings: WorkerSettings = app.conf.haven_settings
            found = WorkerRuntime(settings=settings, celery=app)
            _runtimes[id(app)] = found
        return found
