"""What the embedding service holds for its lifetime: the served models and their state.

Models load in the background after start, so ``/healthz`` answers at once and ``/readyz``
tells why the service is not ready yet (loading, object store unreachable, a file whose
checksum failed). A model that failed verification is never loaded.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Literal

import structlog

from emb.batching import MicroBatcher
from emb.encoder import DenseEncoder
from emb.metrics import EmbMetrics
from emb.settings import EmbSettings
from models.loader import ModelCache, ModelIntegrityError
from models.registry import RegistryError
from models.store import registry_from_settings

log = structlog.get_logger("haven.emb")

State = Literal["loading", "ready", "failed"]


@dataclass
class ServedModel:
    alias: str
    encoder: DenseEncoder
    batcher: MicroBatcher


@dataclass
class EmbRuntime:
    settings: EmbSettings
    metrics: EmbMetrics = field(default_factory=EmbMetrics)
    models: dict[str, ServedModel] = field(default_factory=dict)
    state: State = "loading"
    reason: str | None = "models are loading"

    @property
    def ready(self) -> bool:
        return self.state == "ready"

    async def load(self) -> None:
        """Fetch, verify and load every alias, then start serving; on failure stay not ready
        with the reason logged and shown by /readyz."""
        try:
            encoders = await asyncio.to_thread(self._load_encoders)
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
        for alias, encoder in encoders.items():
            batcher = MicroBatcher(
                alias,
                encoder.encode,
                max_batch_size=settings.emb_max_batch_size,
                max_wait_s=settings.emb_max_wait_ms / 1000,
                max_queue=settings.emb_max_queue,
                metrics=self.metrics,
            )
            batcher.start()
            self.models[alias] = ServedModel(alias, encoder, batcher)
        self.state, self.reason = "ready", None
        self.metrics.ready.set(1)
        log.info(
            "emb.ready",
            models={a: m.encoder.local.manifest.ref for a, m in self.models.items()},
        )

    def _load_encoders(self) -> dict[str, DenseEncoder]:
        settings = self.settings
        registry = registry_from_settings(settings)
        cache = ModelCache(registry, settings.model_cache_dir)
        encoders = {}
        for alias in settings.emb_aliases:
            local = cache.fetch(alias)
            log.info("emb.model.loading", alias=alias, model=local.manifest.ref)
            encoders[alias] = DenseEncoder(
                local,
                device=settings.emb_device,
                encode_batch_size=settings.emb_encode_batch_size,
                torch_threads=settings.emb_torch_threads,
            )
        return encoders

    def _fail(self, event: str, reason: str, **fields: str) -> None:
        self.state, self.reason = "failed", reason
        self.metrics.ready.set(0)
        log.error(event, reason=reason, **fields)

    async def close(self) -> None:
        for model in self.models.values():
            await model.batcher.stop()
