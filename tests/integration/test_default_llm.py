"""The bundled generation models in the registry: both are published, alias ``chat`` points
at the default on a new installation, follows it on an installation that still has the old
default the installer put there, and stays where an operator put it."""

from __future__ import annotations

import pytest

from haven.settings import StoreSettings
from models.defaults import (
    DEFAULT_LLM,
    DEFAULT_LLM_ALIAS,
    GEMMA3,
    SMOLLM2,
    publish_default_llm,
)
from models.registry import ModelRegistry
from models.store import registry_from_settings

pytestmark = pytest.mark.slow  # publishes 350 MB of model files


def _as_an_earlier_release_wrote_it(registry: ModelRegistry, alias: str) -> None:
    """Alias records of earlier releases do not say who set them."""
    record = registry.alias(alias).model_dump(mode="json")
    record.pop("set_by")
    registry._put_json(registry._alias_key(alias), record)


def test_default_llm_is_published_moved_to_and_never_over_an_operator(
    store_settings: StoreSettings,
) -> None:
    registry = registry_from_settings(store_settings)

    # A new installation: both bundled models, chat on the default (the instruct model).
    default = publish_default_llm(registry)
    assert DEFAULT_LLM is SMOLLM2
    assert (default.name, default.version) == (SMOLLM2.name, SMOLLM2.version)
    assert registry.resolve(DEFAULT_LLM_ALIAS) == default
    gemma = registry.manifest(GEMMA3.name, GEMMA3.version)
    assert gemma.type == "llm" and gemma.format == "gguf"
    assert publish_default_llm(registry) == default  # repeating changes nothing

    # An operator points chat at Gemma: the next start leaves it there.
    registry.set_alias(DEFAULT_LLM_ALIAS, GEMMA3.name, GEMMA3.version)
    publish_default_llm(registry)
    assert registry.alias(DEFAULT_LLM_ALIAS).name == GEMMA3.name

    # An operator who rolls back to Gemma is not overruled either.
    registry.set_alias(DEFAULT_LLM_ALIAS, SMOLLM2.name, SMOLLM2.version)
    registry.rollback(DEFAULT_LLM_ALIAS)
    publish_default_llm(registry)
    assert registry.alias(DEFAULT_LLM_ALIAS).name == GEMMA3.name

    # An installation from before: chat on Gemma where the old installer put it, never
    # moved since. It follows the new default, and the old one stays a rollback away.
    other_alias = "chat-old-install"
    registry.set_alias(other_alias, GEMMA3.name, GEMMA3.version)
    _as_an_earlier_release_wrote_it(registry, other_alias)
    publish_default_llm(registry, other_alias)
    moved = registry.alias(other_alias)
    assert (moved.name, moved.version) == (SMOLLM2.name, SMOLLM2.version)
    assert [p.name for p in moved.previous] == [GEMMA3.name]
    assert registry.rollback(other_alias).name == GEMMA3.name
