"""The ``warmup`` task: every embedding alias's target and every generation alias's is
downloaded into the model caches ahead of need, so that moving an alias, a re-index pinning
the new version or a restart of a service does not wait for the object store.

The worker's own cache gets the embedding models (the ingest tokenizer is read from it); emb
is asked to fetch them into its cache and llm the generation models into its own (``POST
/warm`` on each: downloaded and verified, not loaded). llm serves one alias and loads it at
start, so after its alias moves the restart finds the new version local.
"""

from __future__ import annotations

from typing import Any

import httpx
import structlog

from haven.emb_client import EmbeddingRejected, EmbeddingUnavailable
from models.loader import ModelCache
from models.store import registry_from_settings
from workers.maintenance.tasks import TaskContext, maintenance_task

log = structlog.get_logger("haven.warmup")


@maintenance_task(
    "warmup",
    cron="0 * * * *",
    description="Download the embedding aliases' targets into the worker's and emb's model "
    "caches, so an alias switch does not stall.",
)
def warmup(ctx: TaskContext) -> dict[str, Any]:
    rt = ctx.rt
    registry = registry_from_settings(rt.settings)
    cache = ModelCache(registry, rt.settings.model_cache_dir)
    records = [r for r in registry.aliases() if r.alias in rt.settings.emb_aliases]
    refs = []
    for i, record in enumerate(records):
        ctx.check_cancel()
        manifest = registry.manifest(record.name, record.version)
        cache.fetch_version(manifest, alias=record.alias)
        refs.append(manifest.ref)
        ctx.progress(i + 1, len(records), "worker cache")
    report: dict[str, Any] = {"worker_cache": refs}
    try:
        report["emb_cache"] = rt.emb.warm(refs) if refs else []
    except (EmbeddingUnavailable, EmbeddingRejected) as exc:
        log.warning("warmup.emb_failed", error=str(exc))
        report["emb_cache"] = {"error": str(exc)}
    generation = sorted(
        {
            manifest.ref
            for record in registry.aliases()
            if (manifest := registry.manifest(record.name, record.version)).type == "llm"
        }
    )
    report["llm_cache"] = _warm_llm(rt.settings.llm_url, generation) if generation else []
    return report


def _warm_llm(llm_url: str, refs: list[str]) -> list[str] | dict[str, str]:
    """llm's ``POST /warm``; a generation service that is down or refuses is reported, not
    fatal (the next run tries again)."""
    try:
        # Downloading a model of a few GB from the object store takes a while.
        response = httpx.post(f"{llm_url}/warm", json={"models": refs}, timeout=1800.0)
        response.raise_for_status()
    except httpx.HTTPError as exc:
        log.warning("warmup.llm_failed", error=str(exc))
        return {"error": str(exc)}
    return [str(ref) for ref in response.json()["cached"]]
