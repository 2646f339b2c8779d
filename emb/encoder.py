"""An embedding model loaded from a verified local copy, through the backend its manifest
declares: PyTorch (``sentence-transformers`` format) or ONNX Runtime (``onnx`` format, made by
``haven models optimize``).

Everything here blocks and runs in a replica process of its own (see ``emb.replica``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from models.formats import (
    ONNX_CONFIG,
    PoolingConfig,
    pooling_mode,
    sentence_transformers_parameters,
)
from models.loader import LocalModel

if TYPE_CHECKING:
    import onnxruntime
    from sentence_transformers import SentenceTransformer
    from tokenizers import Tokenizer


# ONNX Runtime's graph rewrites that make an encoder slower on CPU, left out of every session
# (and of the export's offline fusions): its fused SkipLayerNormalization kernel runs a
# residual add + layer norm 3.5-4.5x slower than the two plain ops it replaces (38 vs 8.5 ms on
# 64x256x384 floats, one thread, onnxruntime 1.32), a fifth of the int8 encoder's time.
UNFUSED_OPTIMIZERS = ["SkipLayerNormFusion"]


@dataclass(frozen=True)
class Encoded:
    vectors: npt.NDArray[np.float32]  # one row per text
    tokens: list[int]  # tokens embedded per text (after truncation)
    truncated: list[bool]

    def slice(self, start: int, stop: int) -> Encoded:
        return Encoded(
            self.vectors[start:stop], self.tokens[start:stop], self.truncated[start:stop]
        )


def set_torch_threads(threads: int | None, replicas: int) -> None:
    """Set torch's intra-op threads (process-wide): ``threads``, or torch's default (one per
    core) shared out among the replicas that run side by side."""
    # Imported here: torch and transformers take seconds to import, and only the replica
    # processes need them (the offline flags are set by the ``emb`` package).
    import torch

    if threads is None:
        threads = max(1, torch.get_num_threads() // replicas)
    torch.set_num_threads(threads)


def default_threads(replicas: int) -> int:
    """Intra-op threads per replica when none are set: the cores shared out among replicas."""
    return max(1, (os.cpu_count() or 1) // replicas)


def load_encoder(
    local: LocalModel,
    *,
    device: str,
    encode_batch_size: int,
    threads: int | None,
    replicas: int,
) -> DenseEncoder | OnnxEncoder:
    """The encoder of the backend the model's manifest declares (its format)."""
    if local.manifest.format == "onnx":
        return OnnxEncoder(
            local.path,
            ref=local.manifest.ref,
            encode_batch_size=encode_batch_size,
            threads=threads or default_threads(replicas),
        )
    set_torch_threads(threads, replicas)
    return DenseEncoder(local, device=device, encode_batch_size=encode_batch_size)


class DenseEncoder:
    backend = "pytorch"

    def __init__(self, local: LocalModel, *, device: str, encode_batch_size: int) -> None:
        from sentence_transformers import SentenceTransformer

        if local.manifest.format != "sentence-transformers":
            raise ValueError(f"{local.manifest.ref} is {local.manifest.format}, not an embedder")
        self.local = local
        self.model: SentenceTransformer = SentenceTransformer(
            str(local.path), device=device, local_files_only=True
        )
        dimension = self.model.get_embedding_dimension()
        if dimension is None:
            raise ValueError(f"{local.manifest.ref} does not declare its embedding dimension")
        self.dimension = int(dimension)
        window = self.model.max_seq_length
        if window is None:
            raise ValueError(f"{local.manifest.ref} does not declare its maximum sequence length")
        self.max_seq_length = int(window)
        self.encode_batch_size = encode_batch_size

    def encode(self, texts: list[str]) -> Encoded:
        vectors = self.model.encode(texts, batch_size=self.encode_batch_size, convert_to_numpy=True)
        tokens, truncated = self._token_counts(texts)
        # C-contiguous rows: the endpoints serialise them straight from the array (orjson).
        return Encoded(np.ascontiguousarray(vectors, dtype=np.float32), tokens, truncated)

    def _token_counts(self, texts: list[str]) -> tuple[list[int], list[bool]]:
        # Tokenizing without truncation is the only exact way to know a text was cut; it
        # costs about 1% of the forward pass.
        ids = self.model.tokenizer(texts, add_special_tokens=True, truncation=False, verbose=False)[
            "input_ids"
        ]
        lengths = [len(row) for row in ids]
        return (
            [min(n, self.max_seq_length) for n in lengths],
            [n > self.max_seq_length for n in lengths],
        )


class OnnxEncoder:
    """The direct ONNX Runtime path: the model's own tokenizer (``tokenizer.json``), one
    inference session over the exported encoder, then the model's pooling and normalisation
    as its sentence-transformers configuration declares them. No torch, no transformers.

    Texts are sorted by length and run in passes of ``encode_batch_size`` padded to the
    longest text of the pass, as sentence-transformers does.
    """

    backend = "onnxruntime"

    def __init__(self, folder: Path, *, ref: str, encode_batch_size: int, threads: int) -> None:
        import onnxruntime
        from tokenizers import Tokenizer

        params = sentence_transformers_parameters(folder)
        onnx_config = json.loads((folder / ONNX_CONFIG).read_text(encoding="utf-8"))
        for key in ("max_seq_length", "dimension"):
            if key not in params:
                raise ValueError(f"{ref} does not declare its {key}")
        pooling = pooling_mode(folder)
        if pooling is None:
            raise ValueError(f"{ref} declares no mean, CLS or max pooling")
        self.dimension = int(params["dimension"])
        self.max_seq_length = int(params["max_seq_length"])
        self.normalized = bool(params.get("normalized"))
        self.pooling: PoolingConfig = pooling
        self.encode_batch_size = encode_batch_size
        self.tokenizer: Tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.tokenizer.no_truncation()
        self.tokenizer.no_padding()
        self._pad_id = int(onnx_config.get("pad_token_id", 0))
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session: onnxruntime.InferenceSession = onnxruntime.InferenceSession(
            str(folder / onnx_config["file"]),
            options,
            providers=["CPUExecutionProvider"],
            disabled_optimizers=UNFUSED_OPTIMIZERS,
        )
        self._inputs = {i.name for i in self.session.get_inputs()}
        self._output = self.session.get_outputs()[0].name

    def encode(self, texts: list[str]) -> Encoded:
        encodings = self.tokenizer.encode_batch(texts, add_special_tokens=True)
        lengths = [len(e.ids) for e in encodings]
        window = self.max_seq_length
        vectors = np.empty((len(texts), self.dimension), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: -lengths[i])
        for start in range(0, len(order), self.encode_batch_size):
            batch = order[start : start + self.encode_batch_size]
            vectors[batch] = self._forward([encodings[i] for i in batch])
        return Encoded(vectors, [min(n, window) for n in lengths], [n > window for n in lengths])

    def _forward(self, encodings: list[Any]) -> npt.NDArray[np.float32]:
        feed = token_feed(encodings, self.max_seq_length, self._pad_id, self._inputs)
        hidden = self.session.run([self._output], feed)[0]
        pooled = pool(np.asarray(hidden, dtype=np.float32), feed["attention_mask"], self.pooling)
        if self.normalized:
            norms = np.linalg.norm(pooled, axis=1, keepdims=True)
            pooled = pooled / np.maximum(norms, 1e-12)
        return pooled


def token_feed(
    encodings: list[Any], window: int, pad_id: int, inputs: set[str]
) -> dict[str, npt.NDArray[np.int64]]:
    """An exported encoder's inputs for one pass: the tokenizer's ``encodings`` cut to the
    window and padded to the longest of them (ids, attention mask, token types if taken)."""
    rows = [_truncated(e.ids, window) for e in encodings]
    types = [_truncated(e.type_ids, window) for e in encodings]
    width = max(len(r) for r in rows)
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    type_ids = np.zeros((len(rows), width), dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for n, (row, type_row) in enumerate(zip(rows, types, strict=True)):
        ids[n, : len(row)] = row
        type_ids[n, : len(row)] = type_row
        mask[n, : len(row)] = 1
    feed = {"input_ids": ids, "attention_mask": mask}
    if "token_type_ids" in inputs:
        feed["token_type_ids"] = type_ids
    return feed


def _truncated(values: list[int], window: int) -> list[int]:
    """A token row cut to the window keeping its closing special token ([SEP], </s>), as
    the tokenizer's own truncation does for a single sequence."""
    if len(values) <= window:
        return values
    return [*values[: window - 1], values[-1]]


def pool(
    hidden: npt.NDArray[np.float32], mask: npt.NDArray[np.int64], config: PoolingConfig
) -> npt.NDArray[np.float32]:
    """sentence-transformers' pooling of token vectors (mean, CLS, max) over real tokens."""
    if config == "cls":
        return np.ascontiguousarray(hidden[:, 0, :])
    weights = mask[:, :, None].astype(np.float32)
    if config == "max":
        masked = np.where(weights > 0, hidden, np.float32(-1e9))
        return np.ascontiguousarray(masked.max(axis=1))
    summed = (hidden * weights).sum(axis=1)
    counts = np.maximum(weights.sum(axis=1), 1e-9)
    return np.ascontiguousarray(summed / counts, dtype=np.float32)
