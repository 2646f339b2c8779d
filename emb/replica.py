"""A copy of a model in a process of its own.

The service's request handling and the Python between torch's operations in a forward pass
both need the interpreter lock; in one process each waits for the other. Profiled with 64
concurrent clients on 2 cores, the event loop held the lock a quarter of the time and the
model threads stalled on it while a core sat idle (see bench/RESULTS.md). A replica process
has an interpreter of its own: the service sends it the texts of a batch over a pipe and gets
the vectors back (1.5 kB per text), and only the model runs there.
"""

from __future__ import annotations

import multiprocessing
import signal
from multiprocessing.connection import Connection
from typing import Any

from emb.encoder import Encoded, load_encoder
from models.loader import LocalModel

# spawn, not fork: the service has an event loop and threads running when replicas start.
_CONTEXT = multiprocessing.get_context("spawn")


class ReplicaError(Exception):
    """The replica failed to load the model or to encode a batch; it carries on serving."""


class ReplicaExited(Exception):
    """The replica process is gone (killed, out of memory): it will not answer again."""


class ModelReplica:
    """The parent's handle on one replica process. ``encode`` blocks until the replica
    answers, so each replica is driven by one thread at a time (its batcher's)."""

    def __init__(
        self,
        local: LocalModel,
        *,
        name: str,
        device: str,
        encode_batch_size: int,
        torch_threads: int | None,
        replicas: int,
    ) -> None:
        self.local = local
        self.name = name
        self._conn, child = _CONTEXT.Pipe()
        self._process = _CONTEXT.Process(
            target=_serve,
            args=(child, local, device, encode_batch_size, torch_threads, replicas),
            name=name,
            daemon=True,  # never outlives the service
        )
        self._process.start()
        child.close()
        self.dimension = 0
        self.max_seq_length = 0

    @property
    def pid(self) -> int | None:
        return self._process.pid

    def wait_ready(self) -> None:
        """Block until the replica has loaded the model; raise if it could not."""
        self.dimension, self.max_seq_length = self._answer()

    def encode(self, texts: list[str]) -> Encoded:
        try:
            self._conn.send(texts)
        except OSError as exc:  # the pipe broke: the process is gone
            raise self._exited() from exc
        encoded: Encoded = self._answer()
        return encoded

    def close(self) -> None:
        self._conn.close()  # the replica reads end-of-file and returns
        self._process.join(timeout=10)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()

    def _answer(self) -> Any:
        try:
            answer = self._conn.recv()
        except (EOFError, OSError) as exc:
            raise self._exited() from exc
        if isinstance(answer, ReplicaError):
            raise answer
        return answer

    def _exited(self) -> ReplicaExited:
        self._process.join(timeout=5)
        return ReplicaExited(f"model replica {self.name} exited (code {self._process.exitcode})")


def _serve(
    conn: Connection,
    local: LocalModel,
    device: str,
    encode_batch_size: int,
    torch_threads: int | None,
    replicas: int,
) -> None:
    """The replica process: load the model, then encode batches until the pipe closes."""
    # Ctrl-C reaches the whole process group; the service shuts its replicas down itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        # The backend is the one the model's manifest declares (PyTorch or ONNX Runtime).
        encoder = load_encoder(
            local,
            device=device,
            encode_batch_size=encode_batch_size,
            threads=torch_threads,
            replicas=replicas,
        )
    except Exception as exc:  # sent as text: not every exception survives pickling
        conn.send(ReplicaError(f"{type(exc).__name__}: {exc}"))
        return
    conn.send((encoder.dimension, encoder.max_seq_length))
    while True:
        try:
            texts = conn.recv()
        except EOFError:
            return
        answer: Encoded | ReplicaError
        try:
            answer = encoder.encode(texts)
        except Exception as exc:
            answer = ReplicaError(f"{type(exc).__name__}: {exc}")
        try:
            conn.send(answer)
        except OSError:  # the service is gone
            return
