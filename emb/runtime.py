"""What the embedding service holds for its lifetime: the served models and their state.

Models load in the background after start, so ``/healthz`` answers at once and ``/readyz``
tells why the service is not ready yet (loading, object store unreachable, a file whose
checksum failed). A model that failed verification is never loaded. Each model runs in
``emb_replicas`` processes of its own (``emb.replica``); one that exits takes the service
out of readiness with the reason.
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
    # Every replica process started, including those of a load that did not finish.
    _processes: list[ModelReplica] = field(default_factory=list)

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
            batcher = MicroBatcher(
                alias,
                [replica.encode for replica in copies],
                max_batch_size=settings.emb_max_batch_size,
                max_wait_s=settings.emb_max_wait_ms / 1000,
                max_queue=settings.emb_max_queue,
                metrics=self.metrics,
            )
            batcher.start()
            self.models[alias] = ServedModel(alias, copies, batcher)
        self.state, self.reason = "ready", None
        self.metrics.ready.set(1)
        log.info(
            "emb.ready",
            models={a: m.local.manifest.ref for a, m in self.models.items()},
            replicas=settings.emb_replicas,
        )

    def _load_replicas(self) -> dict[str, list[ModelReplica]]:
        settings = self.settings
        registry = registry_from_settings(settings)
        cache = ModelCache(registry, settings.model_cache_dir)
        replicas: dict[str, list[ModelReplica]] = {}
        for alias in settings.emb_aliases:
            local = cache.fetch(alias)
            log.info(
                "emb.model.loading",
                alias=alias,
                model=local.manifest.ref,
                replicas=settings.emb_replicas,
            )
            replicas[alias] = [
                ModelReplica(
                    local,
                    name=f"emb-{alias}-{i}",
                    device=settings.emb_device,
                    encode_batch_size=settings.emb_encode_batch_size,
                    torch_threads=settings.emb_torch_threads,
                    replicas=settings.emb_replicas,
                )
                for i in range(settings.emb_replicas)
            ]
            self._processes.extend(replicas[alias])
            for replica in replicas[alias]:  # they load side by side
                replica.wait_ready()
        return replicas

    def replica_exited(self, reason: str) -> None:
        if self.state != "failed":
            self._fail("emb.replica.exited", reason)

    def _fail(self, event: str, reason: str, **fields: str) -> None:
        self.state, self.reason = "failed", reason
        self.metrics.ready.set(0)
        log.error(event, reason=reason, **fields)

    async def close(self) -> None:
        for model in self.models.values():
            await model.batcher.stop()
        await asyncio.gather(*(asyncio.to_thread(p.close) for p in self._processes))
