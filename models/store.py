"""Building the registry from settings, waiting for the object store when it is starting."""

from __future__ import annotations

import time
from collections.abc import Callable

import structlog

from haven.settings import StoreSettings
from haven.storage import ensure_bucket, make_client
from models.registry import ModelRegistry, RegistryError

log = structlog.get_logger("haven.models")


class StoreUnavailable(RegistryError):
    pass


def registry_from_settings(
    settings: StoreSettings,
    *,
    attempts: int | None = None,
    backoff_seconds: float | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> ModelRegistry:
    """A registry on ``settings.models_bucket``, creating the bucket if needed.

    The object store often starts next to the services; retry with exponential backoff,
    then fail with a message naming the endpoint instead of a stack of connection errors.
    """
    attempts = attempts or int(getattr(settings, "model_store_attempts", 5))
    delay = backoff_seconds or float(getattr(settings, "model_store_backoff_seconds", 0.5))
    client = make_client(settings)
    for attempt in range(1, attempts + 1):
        try:
            ensure_bucket(client, settings.models_bucket)
            return ModelRegistry(client, settings.models_bucket)
        except Exception as exc:  # any failure to reach the store is retried the same way
            if attempt == attempts:
                raise StoreUnavailable(
                    f"object store at {settings.s3_endpoint} unreachable after {attempts}"
                    f" attempts (bucket {settings.models_bucket!r}): {type(exc).__name__}: {exc}"
                ) from exc
            log.warning(
                "models.store.unreachable",
                endpoint=settings.s3_endpoint,
                attempt=attempt,
                retry_in_s=delay,
                error=str(exc)[:200],
            )
            sleep(delay)
            delay *= 2
    raise AssertionError("unreachable")  # the loop returns or raises
