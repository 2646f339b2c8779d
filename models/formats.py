"""What Haven knows about each model format: how to recognise it and its parameters."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from models.manifest import ModelFormat


def detect_format(path: Path) -> ModelFormat:
    if path.is_file() and path.suffix == ".gguf":
        return "gguf"
    if path.is_dir() and (path / "modules.json").is_file():
        return "sentence-transformers"
    raise ValueError(
        f"cannot tell the format of {path}: expected a .gguf file or a sentence-transformers"
        " folder (with modules.json); pass --format"
    )


def describe(path: Path, model_format: ModelFormat) -> dict[str, Any]:
    """Parameters read from the model's own files; values given by the publisher win."""
    if model_format == "sentence-transformers":
        return _sentence_transformers_parameters(path)
    return {}


def _sentence_transformers_parameters(folder: Path) -> dict[str, Any]:
    params: dict[str, Any] = {}
    st_config = _read_json(folder / "sentence_bert_config.json")
    if "max_seq_length" in st_config:
        params["max_seq_length"] = st_config["max_seq_length"]
    for pooling in sorted(folder.glob("*_Pooling/config.json")):
        if "word_embedding_dimension" in (config := _read_json(pooling)):
            params["dimension"] = config["word_embedding_dimension"]
    if "dimension" not in params and "hidden_size" in (hf := _read_json(folder / "config.json")):
        params["dimension"] = hf["hidden_size"]
    # Query and passage prefixes, where the model declares them as sentence-transformers
    # prompts (E5-style models: {"query": "query: ", "passage": "passage: "}).
    prompts = _read_json(folder / "config_sentence_transformers.json").get("prompts") or {}
    for kind in ("query", "passage"):
        if isinstance(prompts.get(kind), str) and prompts[kind]:
            params[f"{kind}_prefix"] = prompts[kind]
    modules = _read_json(folder / "modules.json")
    if isinstance(modules, list):
        params["normalized"] = any(str(m.get("type", "")).endswith(".Normalize") for m in modules)
    return params


def _read_json(path: Path) -> Any:
    if not path.is_file():
        return {}
    return json.loads(path.read_text(encoding="utf-8"))
