"""The extractor process: ``python -m workers.ingest.extractor``, started by the pool
(``workers/ingest/pool.py``) under resource limits, extracting one file per request.

It imports the parsers and nothing of the worker (no settings, no logging setup), so it starts
fast and is small. Protocol over stdin and stdout: length-prefixed pickles, ``("ready",)``
once, then ``(reply, retire)`` per request, where ``retire`` says the process leaves after
this reply. Its own stdout is pointed at stderr so no library can write into the replies.
"""

from __future__ import annotations

import errno
import os
import pickle
import resource
import struct
import sys
from pathlib import Path
from typing import IO, Any, Final

from haven import limits as child_limits
from workers.ingest.extract import ExtractionError, ExtractLimitError, ExtractTooLarge, extract

HEADER: Final = struct.Struct("!Q")
MiB: Final = 1024 * 1024


def send(stream: IO[bytes], message: object) -> None:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(HEADER.pack(len(data)) + data)
    stream.flush()


def _reply_for(exc: BaseException) -> tuple[Any, ...]:
    if isinstance(exc, ExtractLimitError):
        return ("limit", exc.code, exc.detail)
    if isinstance(exc, OSError) and exc.errno == errno.EFBIG:
        # RLIMIT_FSIZE: Python ignores SIGXFSZ, so the write fails instead.
        mib = resource.getrlimit(resource.RLIMIT_FSIZE)[0] // MiB
        return ("limit", ExtractTooLarge.code, f"extraction wrote a file over {mib} MiB")
    if isinstance(exc, ExtractionError):
        return ("invalid", str(exc))
    return ("error", f"{type(exc).__name__}: {exc}"[:2000])


def serve() -> None:
    requests = sys.stdin.buffer
    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    send(replies, ("ready",))
    while True:
        header = requests.read(HEADER.size)
        if len(header) < HEADER.size:
            return  # the worker closed the pool, or died
        path, mime, limits, cpu_seconds = pickle.loads(  # noqa: S301 - from our own worker
            requests.read(HEADER.unpack(header)[0])
        )
        child_limits.cpu_budget(cpu_seconds)
        reply: tuple[Any, ...]
        try:
            blocks = extract(Path(path), mime, limits)
            reply = ("ok", [(block.text, block.page, block.heading) for block in blocks])
        except Exception as exc:
            if child_limits.out_of_memory(exc):
                # Leave at once: the heap may be in pieces, and sending could fail too.
                os._exit(child_limits.MEMORY_EXIT_CODE)
            reply = _reply_for(exc)
        # A file that took this process close to its memory limit: answer, then leave, so the
        # next file starts with a fresh heap (and a peak that is its own).
        retire = child_limits.near_memory_limit()
        send(replies, (reply, retire))
        if retire:
            return


if __name__ == "__main__":
    serve()
