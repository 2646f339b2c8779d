"""What Haven knows about each model format: how to recognise it and its parameters."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from models.manifest import ModelFormat

# How a sentence-transformers model pools its token vectors into one (its *_Pooling config).
PoolingConfig = Literal["mean", "cls", "max"]
# The ONNX Runtime variant of a sentence-transformers folder (``haven models optimize``)
# holds this file, naming the exported graph and how it was made.
ONNX_CONFIG = "onnx_config.json"


def detect_format(path: Path) -> ModelFormat:
    if path.is_file() and path.suffix == ".gguf":
        return "gguf"
    if path.is_dir() and (path / "modules.json").is_file():
        return "onnx" if (path / ONNX_CONFIG).is_file() else "sentence-transformers"
    raise ValueError(
        f"cannot tell the format of {path}: expected a .gguf file, a sentence-transformers"
        f" folder (with modules.json) or its ONNX export (with {ONNX_CONFIG}); pass --format"
    )


def describe(path: Path, model_format: ModelFormat) -> dict[str, Any]:
    """Parameters read from the model's own files; values given by the publisher win."""
    if model_format == "sentence-transformers":
        return sentence_transformers_parameters(path)
    if model_format == "onnx":
        params = sentence_transformers_parameters(path)
        onnx = _read_json(path / ONNX_CONFIG)
        return {**params, "backend": "onnxruntime", **onnx.get("manifest", {})}
    return {}


def sentence_transformers_parameters(folder: Path) -> dict[str, Any]:
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


def pooling_mode(folder: Path) -> PoolingConfig | None:
    """The pooling of a sentence-transformers folder: mean, CLS or max (None: another)."""
    for pooling in sorted(folder.glob("*_Pooling/config.json")):
        config = _read_json(pooling)
        modes: dict[str, PoolingConfig] = {"mean": "mean", "cls": "cls", "max": "max"}
        if (mode := config.get("pooling_mode")) in modes:
            return modes[mode]
        for name, value in modes.items():
            if config.get(f"pooling_mode_{name}_tokens") is True:
                return value
    return None


def _read_json(path: Path) -> Any:
    if not path.is_file():
        return {}
    return json.loads(path.read_text(encoding="utf-8"))
