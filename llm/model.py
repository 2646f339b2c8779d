"""Loading the served model: resolve the alias, fetch and verify, open one context per slot."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import llama_cpp
import structlog

from llm.chat_template import ChatTemplate
from llm.engine import Slot
from llm.settings import LlmSettings
from models.loader import ModelCache
from models.manifest import Manifest
from models.store import registry_from_settings

log = structlog.get_logger("haven.llm")


@dataclass(frozen=True)
class LoadedModel:
    alias: str
    manifest: Manifest
    path: Path
    sha256: str
    context_length: int
    slots: tuple[Slot, ...]
    template: ChatTemplate
    bos_token: str
    adds_bos: bool
    n_vocab: int

    @property
    def tokenizer(self) -> llama_cpp.Llama:
        # Tokenizing reads only the model's vocabulary, never a context, so it is safe beside
        # generation on any slot's thread (llama.cpp's own server tokenizes the same way).
        return self.slots[0].llama

    def tokenize(self, text: str) -> list[int]:
        # special=True: control tokens written by the chat template (<start_of_turn>, <s>)
        # become those tokens, not their spelling. A BOS the template already wrote is not
        # added twice.
        add_bos = self.adds_bos and not (self.bos_token and text.startswith(self.bos_token))
        return self.tokenizer.tokenize(text.encode("utf-8"), add_bos=add_bos, special=True)

    def close(self) -> None:
        for slot in self.slots:
            slot.close()


def warm_cache(settings: LlmSettings, refs: list[str]) -> list[str]:
    """Download (and verify) these generation model versions into the local cache without
    loading them, so a restart after an alias switch does not wait for the object store;
    returns the refs. ``ValueError`` for a version that is not a generation model."""
    registry = registry_from_settings(settings)
    cache = ModelCache(registry, settings.cache_dir)
    done = []
    for ref in refs:
        name, _, version = ref.partition("/")
        manifest = registry.manifest(name, version)
        if manifest.type != "llm":
            raise ValueError(f"{ref} is a {manifest.type} model, not a generation model")
        cache.fetch_version(manifest)
        done.append(ref)
    return done


def load_model(settings: LlmSettings) -> LoadedModel:
    """Blocking: download (or reuse the cache), verify every checksum, then load.

    Raises ``models.loader.ModelIntegrityError`` naming the damaged file; nothing is loaded
    from a file that did not match its manifest.
    """
    registry = registry_from_settings(settings)
    local = ModelCache(registry, settings.cache_dir).fetch(settings.llm_alias)
    manifest = local.manifest
    if manifest.type != "llm" or manifest.format != "gguf":
        raise ValueError(
            f"alias {settings.llm_alias!r} points at {manifest.ref}, a {manifest.type}"
            f" model in {manifest.format} format; the generation service needs an llm gguf"
        )
    path = local.main_file
    slots: list[Slot] = []
    try:
        for index in range(settings.llm_slots):
            slots.append(
                Slot.load(
                    index,
                    path,
                    n_ctx=settings.llm_ctx,
                    n_threads=settings.llm_threads,
                    n_batch=settings.llm_batch,
                )
            )
    except BaseException:
        for slot in slots:
            slot.close()
        raise
    first = slots[0]
    bos_token = _token_text(first.llama, first.llama.token_bos())
    eos_token = _token_text(first.llama, first.llama.token_eos())
    template = ChatTemplate.from_metadata(first.llama.metadata, bos_token, eos_token)
    if template.origin == "fallback":
        # A GGUF without a chat template is usually a base model: its answers to ChatML
        # prompts are often empty or fragments, so the operator should hear about it.
        log.warning(
            "llm.chat_template.fallback",
            alias=settings.llm_alias,
            model=manifest.ref,
            template="chatml",
        )
    log.info(
        "llm.model.loaded",
        alias=settings.llm_alias,
        model=manifest.ref,
        path=str(path),
        slots=len(slots),
        threads=settings.llm_threads,
        context_length=first.llama.n_ctx(),
        chat_template=template.origin,
    )
    return LoadedModel(
        alias=settings.llm_alias,
        manifest=manifest,
        path=path,
        sha256=manifest.files[0].sha256,
        context_length=first.llama.n_ctx(),
        slots=tuple(slots),
        template=template,
        bos_token=bos_token,
        adds_bos=first.adds_bos,
        n_vocab=first.llama.n_vocab(),
    )


def _token_text(llama: llama_cpp.Llama, token: int) -> str:
    if token < 0:
        return ""
    return llama.detokenize([token], special=True).decode("utf-8", errors="replace")
