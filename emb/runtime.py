"""What the embedding service holds for its lifetime: the served models and their state.

Models load in the background after start, so ``/healthz`` answers at once and ``/readyz``
tells why the service is not ready yet (loading, object store unreachable, a file whose
checksum failed). A model that failed verification is never loaded. Each model runs in
``emb_replicas`` processes of its own (``emb.replica``); one that exits takes the service
out of readiness with the reason.

Besides what its aliases point at, the service embeds with a pinned version when a request
asks for one (``pins``: alias -> ``name/version``): the version a collection was built with
while the alias has moved on (a blue/green re-index, ``haven.index_pointer``). A pinned
version is fetched and loaded on first use (that request waits for it; others asking for
it wait on the same load) and stays loaded until the service restarts.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Literal

import structlog

from emb.batching import MicroBatcher
from emb.metrics import EmbMetrics
from emb.replica import ModelReplica
from emb.settings import EmbSettings
from models.loader import LocalModel, ModelCache, ModelIntegrityError
from models.registry import RegistryError
from models.store import registry_from_settings

log = structlog.get_logger("haven.emb")

State = Literal["loading", "ready", "failed"]


@dataclass
class ServedModel:
    alias: str
    replicas: list[ModelReplica]  # the same verified model, each copy in its own process
    batcher: MicroBatcher

    @property
    def local(self) -> LocalModel:
        return self.replicas[0].local

    @property
    def dimension(self) -> int:
        return self.replicas[0].dimension

    @property
    def max_seq_length(self) -> int:
        return self.replicas[0].max_seq_length


@dataclass
class EmbRuntime:
    settings: EmbSettings
    metrics: EmbMetrics = field(default_factory=EmbMetrics)
    models: dict[str, ServedModel] = field(default_factory=dict)
    state: State = "loading"
    reason: str | None = "models are loading"
    # Pinned versions loaded on demand: "alias=name/version" -> model (see ``pinned``).
    extra: dict[str, ServedModel] = field(default_factory=dict)
    # Every replica process started, including those of a load that did not finish.
    _processes: list[ModelReplica] = field(default_factory=list)
    _loading: dict[str, asyncio.Task[ServedModel]] = field(default_factory=dict)
    _cache: ModelCache | None = None

    @property
    def ready(self) -> bool:
        return self.state == "ready"

    async def load(self) -> None:
        """Fetch, verify and load every alias, then start serving; on failure stay not ready
        with the reason logged and shown by /readyz."""
        try:
            replicas = await asyncio.to_thread(self._load_replicas)
        except ModelIntegrityError as exc:
            self._fail("emb.model.integrity_failed", str(exc), file=exc.path)
            return
        except RegistryError as exc:  # store unreachable, unknown alias, missing version
            self._fail("emb.model.unavailable", str(exc))
            return
        except Exception as exc:  # a model that does not load is reported like the rest
            self._fail("emb.model.load_failed", f"{type(exc).__name__}: {exc}")
            return
        settings = self.settings
        for alias, copies in replicas.items():
            self.models[alias] = self._serve(alias, copies)
        self.state, self.reason = "ready", None
        self.metrics.ready.set(1)
        log.info(
            "emb.ready",
            models={a: m.local.manifest.ref for a, m in self.models.items()},
            replicas=settings.emb_replicas,
        )

    def _serve(self, alias: str, copies: list[ModelReplica]) -> ServedModel:
        settings = self.settings
        batcher = MicroBatcher(
            alias,
            [replica.encode for replica in copies],
            max_batch_size=settings.emb_max_batch_size,
            max_wait_s=settings.emb_max_wait_ms / 1000,
            max_queue=settings.emb_max_queue,
            metrics=self.metrics,
        )
        batcher.start()
        return ServedModel(alias, copies, batcher)

    @property
    def cache(self) -> ModelCache:
        if self._cache is None:
            self._cache = ModelCache(
                registry_from_settings(self.settings), self.settings.model_cache_dir
            )
        return self._cache

    def _load_replicas(self) -> dict[str, list[ModelReplica]]:
        replicas: dict[str, list[ModelReplica]] = {}
        for alias in self.settings.emb_aliases:
            replicas[alias] = self._start_replicas(alias, self.cache.fetch(alias))
        return replicas

    def _start_replicas(self, alias: str, local: LocalModel) -> list[ModelReplica]:
        settings = self.settings
        log.info(
            "emb.model.loading",
            alias=alias,
            model=local.manifest.ref,
            replicas=settings.emb_replicas,
        )
        copies = [
            ModelReplica(
                local,
                name=f"emb-{alias}-{local.manifest.name}-{i}",
                device=settings.emb_device,
                encode_batch_size=settings.emb_encode_batch_size,
                torch_threads=settings.emb_torch_threads,
                replicas=settings.emb_replicas,
            )
            for i in range(settings.emb_replicas)
        ]
        self._processes.extend(copies)
        for replica in copies:  # they load side by side
            replica.wait_ready()
        return copies

    def served(self, alias: str, pin: str | None) -> ServedModel | None:
        """The model of ``alias``, or of the pinned version if it is another one and loaded;
        None when the pinned version must be loaded first (``pinned``)."""
        model = self.models[alias]
        if pin is None or model.local.manifest.ref == pin:
            return model
        return self.extra.get(f"{alias}={pin}")

    async def pinned(self, alias: str, pin: str) -> ServedModel:
        """Load the version ``pin`` (``name/version``) to serve under ``alias``; concurrent
        callers share one load, which goes on if a caller goes away. Raises
        ``RegistryError`` for a version that is not published, ``ValueError`` for a
        malformed one or one that is not an embedding model."""
        key = f"{alias}={pin}"
        if key in self.extra:
            return self.extra[key]
        task = self._loading.get(key)
        if task is None:
            task = asyncio.create_task(self._load_pinned_task(alias, pin, key))
            self._loading[key] = task
        return await asyncio.shield(task)

    async def _load_pinned_task(self, alias: str, pin: str, key: str) -> ServedModel:
        try:
            copies = await asyncio.to_thread(self._load_pinned, alias, pin)
            model = self._serve(alias, copies)
            self.extra[key] = model
            log.info("emb.model.pinned", alias=alias, model=pin)
            return model
        finally:
            self._loading.pop(key, None)

    def _load_pinned(self, alias: str, pin: str) -> list[ModelReplica]:
        name, _, version = pin.partition("/")
        manifest = self.cache.registry.manifest(name, version)
        if manifest.type != "embed":
            raise ValueError(f"{pin} is a {manifest.type} model, not an embedding model")
        return self._start_replicas(alias, self.cache.fetch_version(manifest, alias=alias))

    def warm(self, refs: list[str]) -> list[str]:
        """Download (and verify) these versions into the local cache without loading them,
        so a later switch to them does not wait for the object store; returns the refs."""
        done = []
        for ref in refs:
            name, _, version = ref.partition("/")
            self.cache.fetch_version(self.cache.registry.manifest(name, version))
            done.append(ref)
        return done

    def replica_exited(self, reason: str) -> None:
        if self.state != "failed":
            self._fail("emb.replica.exited", reason)

    def _fail(self, event: str, reason: str, **fields: str) -> None:
        self.state, self.reason = "failed", reason
        self.metrics.ready.set(0)
        log.error(event, reason=reason, **fields)

    async def close(self) -> None:
        for model in [*self.models.values(), *self.extra.values()]:
            await model.batcher.stop()
        await asyncio.gather(*(asyncio.to_thread(p.close) for p in self._processes))
