"""A sentence-transformers model loaded from a verified local copy.

Everything here blocks and runs in a replica process of its own (see ``emb.replica``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from models.loader import LocalModel

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer


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


class DenseEncoder:
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
