"""Extraction in pre-started child processes, each under memory, CPU and wall-time limits.

Parsers run on untrusted bytes, and a pathological file can make one spin or allocate without
end. In the worker's own process that would freeze every job thread (and in the all-in-one, the
API) holding the GIL, or kill them all with the process. Here each file is parsed in a child
process limited by ``haven.limits``: past its deadline the child is killed, past its address
space its allocations fail, and the job fails with the limit's code (``extract.timeout``,
``extract.memory``, ``extract.too_large``) instead of being retried.

Starting a Python with the parsers imported takes longer than extracting a typical document, so
the pool keeps ``size`` children running and hands each file to an idle one; a child is replaced
after ``recycle_after`` files (so a slow leak in a parser cannot grow without end) and whenever
a limit ended it. The children are started with ``subprocess`` and ``exec`` — never ``fork`` of
a process that has threads — and lazily, on the first file a worker process extracts.

The children are shared fairly between tenants (``TenantSlots``): while a file of one tenant
runs into its limits, another tenant's file must not wait for it. A tenant may hold at most
``size - reserved_slots`` children at once; the reserved ones go only to a tenant with nothing
being extracted, and a freed child goes to the waiting tenant holding the fewest. A job thread
that cannot get a child for its tenant within ``wait_seconds`` gives up (``ExtractorBusy``) so
the job runner defers its job instead of holding one of the worker's job threads for minutes.

The child's program and its protocol are in ``workers/ingest/extractor.py``.
"""

from __future__ import annotations

import atexit
import contextlib
import math
import os
import pickle
import select
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import structlog

from haven import limits as child_limits
from workers.ingest.extract import (
    SUPPORTED_TYPES,
    ExtractCrashed,
    ExtractionError,
    ExtractLimitError,
    ExtractLimits,
    ExtractMemory,
    ExtractTimeout,
    ExtractTooLarge,
    TextBlock,
    UnsupportedType,
)
from workers.ingest.extractor import HEADER, send

if TYPE_CHECKING:  # the child imports this module: it needs the parsers, not the settings
    from workers.settings import WorkerSettings

log = structlog.get_logger("haven.ingest.pool")

MiB: Final = 1024 * 1024
_PROJECT_ROOT: Final = Path(__file__).resolve().parents[2]
_LIMIT_ERRORS: Final[dict[str, type[ExtractLimitError]]] = {
    cls.code: cls for cls in (ExtractTooLarge, ExtractTimeout, ExtractMemory, ExtractCrashed)
}


class ExtractorUnavailable(RuntimeError):
    """The extractor process could not be started or answered nonsense: not the file's fault,
    so the job is retried like any other transient failure."""


class ExtractorBusy(RuntimeError):
    """This tenant's share of the extractor processes stayed busy past the wait: the file was
    not looked at. Not the file's fault and not a failed attempt: the job is deferred."""


@dataclass(frozen=True)
class PoolConfig:
    size: int = 2
    recycle_after: int = 1000
    timeout_seconds: float = 300.0
    memory_bytes: int = 1024 * MiB
    file_size_bytes: int = 500 * MiB
    # A fresh child imports the parsers before its first file; not counted in a file's time.
    start_timeout_seconds: float = 60.0
    # Children no single tenant may take while it already holds one (kept for the others).
    reserved_slots: int = 1
    # How long a file waits for a child its tenant may take before ``ExtractorBusy``; None:
    # as long as it takes.
    wait_seconds: float | None = None

    @classmethod
    def from_settings(cls, settings: WorkerSettings) -> PoolConfig:
        return cls(
            size=settings.extract_pool_size,
            recycle_after=settings.extract_recycle_after,
            timeout_seconds=settings.extract_timeout_seconds,
            memory_bytes=settings.extract_memory_mb * MiB,
            file_size_bytes=settings.extract_max_uncompressed_mb * MiB,
            reserved_slots=settings.extract_reserved_slots,
            wait_seconds=settings.extract_wait_seconds,
        )


def limits_from_settings(settings: WorkerSettings) -> ExtractLimits:
    uncompressed = settings.extract_max_uncompressed_mb * MiB
    return ExtractLimits(
        ocr=settings.ocr_enabled,
        max_pages=settings.extract_max_pages,
        max_uncompressed_bytes=uncompressed,
        max_xml_part_bytes=min(ExtractLimits.max_xml_part_bytes, uncompressed),
    )


# --------------------------------------------------------------------------- parent side


class _Child:
    """One extractor process, used by one caller at a time."""

    def __init__(self, config: PoolConfig) -> None:
        self.config = config
        self.files = 0
        self.ready = False
        self.retiring = False  # it said it leaves after this file
        self.process = child_limits.start(
            [sys.executable, "-m", "workers.ingest.extractor"],
            child_limits.Limits(
                memory_bytes=config.memory_bytes, file_size_bytes=config.file_size_bytes
            ),
            env={**os.environ, "PYTHONPATH": _python_path()},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert self.process.stdin is not None and self.process.stdout is not None
        self._requests = self.process.stdin
        self._replies = self.process.stdout.fileno()
        # poll, not select: a busy worker process can hold file descriptors past 1024.
        self._poller = select.poll()
        self._poller.register(self._replies, select.POLLIN)

    def _read(self, size: int, deadline: float) -> bytes | None:
        """``size`` bytes of reply, or None if the child ended first; TimeoutError at the
        deadline."""
        data = bytearray()
        while len(data) < size:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            if not self._poller.poll(math.ceil(remaining * 1000)):
                raise TimeoutError
            chunk = os.read(self._replies, min(size - len(data), 4 * MiB))
            if not chunk:
                return None
            data += chunk
        return bytes(data)

    def _receive(self, deadline: float) -> Any:
        header = self._read(HEADER.size, deadline)
        if header is None:
            return None
        body = self._read(HEADER.unpack(header)[0], deadline)
        return None if body is None else pickle.loads(body)  # noqa: S301 - our own child

    def wait_ready(self) -> None:
        if self.ready:
            return
        try:
            reply = self._receive(time.monotonic() + self.config.start_timeout_seconds)
        except TimeoutError:
            reply = None
        if reply != ("ready",):
            self.kill()
            raise ExtractorUnavailable(
                f"the extractor process did not start (exit status {self.process.returncode}); "
                "is HAVEN_EXTRACT_MEMORY_MB too small for the parsers to load?"
            )
        self.ready = True

    def extract(self, path: Path, mime: str, limits: ExtractLimits) -> list[TextBlock]:
        self.wait_ready()
        self.files += 1
        timeout = self.config.timeout_seconds
        try:
            send(self._requests, (str(path), mime, limits, math.ceil(timeout) + 1))
            message = self._receive(time.monotonic() + timeout)
        except TimeoutError:
            self.kill()
            raise ExtractTimeout(
                f"extraction took longer than the limit of {timeout:g} s"
            ) from None
        except (BrokenPipeError, pickle.UnpicklingError, EOFError):
            message = None
        if message is None:
            raise self._ended()
        reply, self.retiring = message
        match reply:
            case ("ok", blocks):
                return [TextBlock(text, page, heading) for text, page, heading in blocks]
            case ("limit", code, detail) if code in _LIMIT_ERRORS:
                raise _LIMIT_ERRORS[code](detail)
            case ("invalid", message):
                raise ExtractionError(message)
            case ("error", message):
                raise ExtractorUnavailable(f"the extractor failed: {message}")
        self.kill()
        raise ExtractorUnavailable(f"the extractor answered {type(reply).__name__}")

    def _ended(self) -> Exception:
        """The error for a child that stopped in the middle of a file."""
        returncode = self.process.wait()
        hit = child_limits.hit_by(returncode)
        if hit is child_limits.Hit.MEMORY:
            mib = self.config.memory_bytes // MiB
            return ExtractMemory(f"extraction needed more than the limit of {mib} MiB of memory")
        if hit is child_limits.Hit.CPU:
            return ExtractTimeout(
                f"extraction used more than the limit of {self.config.timeout_seconds:g} s of CPU"
            )
        if hit is child_limits.Hit.FILE_SIZE:
            mib = self.config.file_size_bytes // MiB
            return ExtractTooLarge(f"extraction wrote a file over the limit of {mib} MiB")
        how = (
            f"signal {signal.Signals(-returncode).name}"
            if returncode < 0
            else f"exit status {returncode}"
        )
        return ExtractCrashed(f"the extractor process stopped on this file ({how})")

    @property
    def alive(self) -> bool:
        return self.process.returncode is None and self.process.poll() is None

    def kill(self) -> None:
        child_limits.kill_group(self.process)
        self._close_pipes()

    def _close_pipes(self) -> None:
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()


def _python_path() -> str:
    existing = os.environ.get("PYTHONPATH")
    return os.pathsep.join([str(_PROJECT_ROOT), *([existing] if existing else [])])


class _Waiter:
    __slots__ = ("granted", "item", "seq", "tenant")

    def __init__(self, tenant: str, seq: int) -> None:
        self.tenant = tenant
        self.seq = seq
        self.granted = False
        self.item: Any = None


class TenantSlots:
    """``size`` interchangeable slots (here: idle extractor processes) shared fairly between
    tenants by the threads of one process.

    - A tenant holding nothing may take any free slot. A tenant already holding some may
      take one only while it holds fewer than ``size - reserved`` (at least one): the last
      ``reserved`` slots stay for tenants with nothing in flight, so one tenant's slow files
      never hold every slot.
    - A freed slot goes to the waiter whose tenant holds the fewest slots, the earliest
      first among equals.
    - ``acquire`` gives up after ``wait_seconds`` (``ExtractorBusy``).
    """

    def __init__(self, size: int, reserved: int) -> None:
        self.size = size
        self.cap = max(1, size - max(reserved, 0))
        self._cond = threading.Condition()
        self._free: list[Any] = []
        self._held: dict[str, list[float]] = {}  # tenant -> when each of its slots was taken
        self._waiting: list[_Waiter] = []
        self._seq = 0

    def put(self, item: Any) -> None:
        """Add a free slot (at start, and when a holder gives its slot back)."""
        with self._cond:
            self._free.append(item)
            self._dispatch()

    def acquire(self, tenant: str, wait_seconds: float | None = None) -> Any:
        with self._cond:
            self._seq += 1
            waiter = _Waiter(tenant, self._seq)
            self._waiting.append(waiter)
            self._dispatch()
            deadline = None if wait_seconds is None else time.monotonic() + wait_seconds
            while not waiter.granted:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    self._waiting.remove(waiter)
                    raise ExtractorBusy(
                        f"every extractor process this tenant may use stayed busy for "
                        f"{wait_seconds:g} s"
                    )
                self._cond.wait(remaining)
            return waiter.item

    def release(self, tenant: str, item: Any) -> None:
        """``tenant`` gives its slot back, as ``item`` (its child, or None to start one)."""
        with self._cond:
            held = self._held.get(tenant, [])
            if held:
                held.pop(0)
            if not held:
                self._held.pop(tenant, None)
            self._free.append(item)
            self._dispatch()

    def backlogged(self, tenant: str, wait_seconds: float) -> bool:
        """Whether a file of ``tenant`` would wait now behind its own tenant's files, all of
        which have held their slots for ``wait_seconds`` or longer (slow files: a new one
        would give up waiting anyway)."""
        with self._cond:
            held = self._held.get(tenant)
            if not held or (self._may_take(tenant) and self._free):
                return False
            return time.monotonic() - max(held) >= wait_seconds

    def holding(self) -> dict[str, int]:
        """Slots held per tenant now (for tests and operators)."""
        with self._cond:
            return {tenant: len(held) for tenant, held in self._held.items()}

    def waiting(self) -> int:
        """Callers waiting for a slot now."""
        with self._cond:
            return len(self._waiting)

    def _may_take(self, tenant: str) -> bool:
        return len(self._held.get(tenant, ())) < self.cap

    def _dispatch(self) -> None:
        """Hand free slots to the waiters entitled to them (the condition is held)."""
        while self._free and self._waiting:
            eligible = [w for w in self._waiting if self._may_take(w.tenant)]
            if not eligible:
                return
            waiter = min(eligible, key=lambda w: (len(self._held.get(w.tenant, ())), w.seq))
            self._waiting.remove(waiter)
            waiter.item = self._free.pop(0)
            waiter.granted = True
            self._held.setdefault(waiter.tenant, []).append(time.monotonic())
            self._cond.notify_all()


class ExtractorPool:
    """``size`` extractor processes shared by the job threads of one worker process."""

    def __init__(self, config: PoolConfig) -> None:
        self.config = config
        # An idle slot holds a running child, or None when its child is yet to be started.
        self._idle = TenantSlots(config.size, config.reserved_slots)
        self._children: set[_Child] = set()
        self._lock = threading.Lock()
        self._started = False
        self._closed = False

    def extract(
        self, path: Path, mime: str, limits: ExtractLimits, *, tenant: str = ""
    ) -> list[TextBlock]:
        """Extract ``path`` for ``tenant`` in one of the children, waiting for one it may
        take (``ExtractorBusy`` past the pool's ``wait_seconds``)."""
        if mime not in SUPPORTED_TYPES:
            raise UnsupportedType(repr(mime))
        self._start()
        child: _Child | None = self._idle.acquire(tenant, self.config.wait_seconds)
        # Whether the exchange with the child completed: if not (an interrupt halfway through
        # a reply), the child cannot be trusted with another file. A child that a limit ended
        # is not alive, and is replaced either way.
        completed = False
        try:
            if child is None:
                child = self._spawn()
            blocks = child.extract(path, mime, limits)
            completed = True
            return blocks
        except ExtractLimitError as exc:
            completed = True
            log.warning("extract.limit", code=exc.code, mime=mime, error=exc.detail)
            raise
        except (ExtractionError, ExtractorUnavailable):
            completed = True
            raise
        finally:
            self._give_back(tenant, child, keep=completed)

    def backlogged(self, tenant: str) -> bool:
        """Whether a file of ``tenant`` would only wait now (see ``TenantSlots.backlogged``);
        False when the pool has no ``wait_seconds``."""
        wait = self.config.wait_seconds
        return wait is not None and self._idle.backlogged(tenant, wait)

    def holding(self) -> dict[str, int]:
        """Children busy per tenant now."""
        return self._idle.holding()

    def _start(self) -> None:
        """Start every child on first use, so they import the parsers in parallel."""
        with self._lock:
            if self._closed:
                raise ExtractorUnavailable("the extractor pool is closed")
            if self._started:
                return
            self._started = True
        for _ in range(self.config.size):
            self._idle.put(self._spawn_or_none())

    def _spawn(self) -> _Child:
        child = _Child(self.config)
        with self._lock:
            self._children.add(child)
            closed = self._closed
        if closed:
            child.kill()
            raise ExtractorUnavailable("the extractor pool is closed")
        return child

    def _spawn_or_none(self) -> _Child | None:
        try:
            return self._spawn()
        except (OSError, ExtractorUnavailable) as exc:
            log.warning("extract.pool.spawn_failed", error=str(exc))
            return None  # started by the next caller that needs it

    def _give_back(self, tenant: str, child: _Child | None, *, keep: bool) -> None:
        if (
            child is not None
            and keep
            and child.alive
            and child.files < self.config.recycle_after
            and not child.retiring
        ):
            self._idle.release(tenant, child)
            return
        if child is not None:
            child.kill()  # idle or stopped: it holds nothing worth a graceful exit
        if child is not None:
            with self._lock:
                self._children.discard(child)
        # The replacement starts now, so it has imported the parsers by the time it is needed.
        self._idle.release(tenant, None if self._closed else self._spawn_or_none())

    def pids(self) -> list[int]:
        """The process ids of the children running now (for tests and operators)."""
        with self._lock:
            return sorted(child.process.pid for child in self._children if child.alive)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            children = list(self._children)
            self._children.clear()
        for child in children:
            child.kill()


_pools: dict[PoolConfig, ExtractorPool] = {}
_pools_lock = threading.Lock()


def pool_for(config: PoolConfig) -> ExtractorPool:
    """The pool of this process for ``config``, created on first use."""
    with _pools_lock:
        pool = _pools.get(config)
        if pool is None:
            pool = _pools[config] = ExtractorPool(config)
        return pool


def extract_isolated(
    path: Path, mime: str, settings: WorkerSettings, *, tenant: str = ""
) -> list[TextBlock]:
    """``extract`` under the worker's limits, in this process's extractor pool, within
    ``tenant``'s share of it."""
    return pool_for(PoolConfig.from_settings(settings)).extract(
        path, mime, limits_from_settings(settings), tenant=tenant
    )


def extraction_backlogged(settings: WorkerSettings, tenant: str) -> bool:
    """Whether ``tenant``'s files would only wait for this process's extractors now."""
    return pool_for(PoolConfig.from_settings(settings)).backlogged(tenant)


@atexit.register
def close_pools() -> None:
    """Stop every child of this process (also run at interpreter exit)."""
    with _pools_lock:
        pools = list(_pools.values())
        _pools.clear()
    for pool in pools:
        pool.close()
