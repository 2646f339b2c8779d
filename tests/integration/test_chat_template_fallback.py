"""The chat template comes from the GGUF; a model without one is served with ChatML, and the
operator is warned (such a file is usually a base model, whose answers may come out empty)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import structlog
from structlog.testing import capture_logs

import llm.model
from llm.model import LoadedModel, load_model
from models.store import registry_from_settings
from tests.fixtures.llm_service import ALIAS, make_settings
from tests.fixtures.tiny_gguf import build_tiny_gguf, publish_tiny_gguf


def _load(settings: Any, monkeypatch: pytest.MonkeyPatch) -> tuple[LoadedModel, list[Any]]:
    with capture_logs() as logs:
        # A logger of its own: the module's may be cached with the processors of an
        # earlier configuration, which capture_logs cannot replace.
        monkeypatch.setattr(llm.model, "log", structlog.get_logger("haven.llm"))
        model = load_model(settings)
    model.close()
    return model, logs


def test_a_gguf_without_a_chat_template_is_served_with_chatml_and_a_warning(
    s3_endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = make_settings(s3_endpoint, tmp_path / "cache")
    registry = registry_from_settings(settings)

    publish_tiny_gguf(registry, build_tiny_gguf(tmp_path / "with"), alias=ALIAS)
    model, logs = _load(settings, monkeypatch)
    assert model.template.origin == "gguf"
    assert "llm.model.loaded" in [e["event"] for e in logs]
    assert not [e for e in logs if e["event"] == "llm.chat_template.fallback"]

    bare = build_tiny_gguf(tmp_path / "without", chat_template=None)
    publish_tiny_gguf(registry, bare, alias=ALIAS, version="2")
    model, logs = _load(settings, monkeypatch)
    assert model.template.origin == "fallback"
    warnings = [e for e in logs if e["event"] == "llm.chat_template.fallback"]
    assert len(warnings) == 1
    assert warnings[0]["log_level"] == "warning"
    assert warnings[0]["model"] == "tiny-llama/2"
