"""An item as its handler sees it."""

from __future__ import annotations

import asyncio
import concurrent.futures
import enum
import math
import re
import threading
from typing import TYPE_CHECKING, Dict, Mapping, Optional, Union

from .v1 import worker_pb2 as pb

if TYPE_CHECKING:
    from ._worker import Worker

__all__ = ["StopReason", "Item", "AsyncItem", "BaseItem"]

CheckpointData = Union[bytes, bytearray, memoryview]


class StopReason(str, enum.Enum):
    """Why an item's ``stopping`` was set."""

    #: The job was paused at once (or a graceful pause ran past its drain
    #: deadline): a ``stopped`` item goes back to pending, the attempt not
    #: counted, and continues from its last checkpoint after the resume.
    PAUSE = "pause"
    #: The job was cancelled: a ``stopped`` item ends CANCELLED.
    CANCEL = "cancel"
    #: The server is shutting down: a ``stopped`` item goes back to pending,
    #: the attempt not counted.
    SHUTDOWN = "shutdown"
    #: This worker is draining (SIGTERM, Ctrl-C, :meth:`Worker.stop`): a
    #: ``stopped`` item goes back to pending, the attempt not counted.
    DRAIN = "drain"
    #: The item is no longer this worker's (it ignored an interrupt past
    #: the grace time, or its session was lost): nothing sent about it
    #: counts any more.
    REVOKED = "revoked"


_REASONS: Dict[int, StopReason] = {
    pb.INTERRUPT_REASON_PAUSE: StopReason.PAUSE,
    pb.INTERRUPT_REASON_CANCEL: StopReason.CANCEL,
    pb.INTERRUPT_REASON_SHUTDOWN: StopReason.SHUTDOWN,
}


def interrupt_reason(code: int) -> StopReason:
    """The stop reason of a ``WorkerInterrupt`` (an unknown one counts as a
    pause: the item is to stop either way)."""
    return _REASONS.get(code, StopReason.PAUSE)


#: A counter's name: 1 to 64 of a-z, 0-9 and _, from a letter.
_COUNTER_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")
#: Distinct counters one attempt may report.
MAX_ATTEMPT_COUNTERS = 32
#: The longest skip reason the server takes, in characters.
MAX_SKIP_REASON = 1000


def _as_bytes(data: object) -> bytes:
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    raise TypeError(f"a checkpoint is bytes, not {type(data).__name__} (encode text first)")


class BaseItem:
    """One attempt of one item: what to do, and how to report along the way.

    Given to the handler; its fields come from the server's ``Assignment``.
    """

    def __init__(self, worker: "Worker", a: pb.Assignment) -> None:
        self._worker = worker
        #: The fencing token of this attempt (named in every message about it).
        self.token: int = a.token
        #: The job's id (a UUID).
        self.job_id: str = a.job_id
        #: The job's name.
        self.job_name: str = a.job_name
        #: The executor the job runs under (one of the worker's).
        self.executor: str = a.executor
        #: The item's position in its job, from 0.
        self.index: int = a.index
        #: The item itself, as given when the job started.
        self.payload: str = a.payload
        #: This attempt's number, from 1.
        self.attempt: int = a.attempt
        #: The item's last committed checkpoint (None: start from the
        #: beginning); updated by each saved checkpoint.
        self.checkpoint: Optional[bytes] = a.checkpoint if a.HasField("checkpoint") else None
        #: The job's params.
        self.params: Mapping[str, str] = dict(a.params)
        #: The item's trace context when the server traces (``traceparent``
        #: and ``tracestate``, or B3's headers): give it to your tracer's
        #: propagator to start the item's spans under the server's item span.
        #: Empty otherwise.
        self.trace_context: Mapping[str, str] = dict(a.trace_context)
        #: Set when the item should stop: an interrupt (immediate pause,
        #: cancel, server shutdown), this worker draining, or a revocation.
        #: Save a checkpoint and return; see :attr:`stop_reason`.
        self.stopping: threading.Event = threading.Event()
        #: Why :attr:`stopping` was set (None while it is not).
        self.stop_reason: Optional[StopReason] = None
        #: Set by :meth:`skip`: the item was done already, and why.
        self.skip_reason: Optional[str] = None
        #: This attempt's counters so far (see :meth:`count`).
        self.counters: Dict[str, int] = {}

    def skip(self, reason: str) -> None:
        """Says the item was done already (its output exists, say): if the
        handler then returns, the item ends SUCCEEDED, marked skipped with
        ``reason`` (``Item.skip_reason``). The last call counts."""
        text = str(reason)
        if not text:
            raise ValueError("a skip needs a reason")
        if len(text) > MAX_SKIP_REASON:
            raise ValueError(f"a skip reason is at most {MAX_SKIP_REASON} characters, not {len(text)}")
        self.skip_reason = text

    def count(self, name: str, n: int = 1) -> None:
        """Adds ``n`` to this attempt's counter ``name`` (frames processed,
        detections found). The job's counters (``Job.counters``) grow by an
        attempt's counts if, and only if, it succeeds, in the commit of its
        success: a retried item counts once.

        Raises :class:`ValueError` for a bad name (1 to 64 of a-z, 0-9 and
        _, from a letter), a negative or non-integer ``n``, or a 33rd name.
        """
        if not isinstance(name, str) or not _COUNTER_NAME.fullmatch(name):
            raise ValueError(f"counter name {name!r} must start with a-z and hold only a-z, 0-9 and _ (at most 64)")
        if isinstance(n, bool) or not isinstance(n, int):
            raise ValueError(f"counter {name!r}: {n!r} is not a whole number")
        if n < 0:
            raise ValueError(f"counter {name!r}: {n} is negative; counters only grow")
        if name not in self.counters and len(self.counters) >= MAX_ATTEMPT_COUNTERS:
            raise ValueError(f"counter {name!r}: an item may report at most {MAX_ATTEMPT_COUNTERS} counters")
        self.counters[name] = min(self.counters.get(name, 0) + n, 2**63 - 1)

    def progress(self, fraction: float) -> None:
        """Reports how much of the item is done, 0.0 to 1.0 (shown live, not
        stored). Returns at once; never blocks."""
        f = float(fraction)
        if math.isnan(f) or not 0.0 <= f <= 1.0:
            raise ValueError(f"progress is a fraction from 0.0 to 1.0, not {fraction!r}")
        self._worker._threadsafe(self._worker._progress, self.token, f)

    def _stop(self, reason: StopReason) -> None:
        """Sets :attr:`stopping` (on the worker's event loop)."""
        if self.stop_reason is not StopReason.REVOKED:
            self.stop_reason = reason
        self.stopping.set()

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} job={self.job_id} index={self.index} "
            f"attempt={self.attempt} token={self.token}>"
        )


class Item(BaseItem):
    """The item of a plain (``def``) handler, which runs in a thread of the
    worker's pool."""

    def save_checkpoint(self, data: CheckpointData, timeout: Optional[float] = None) -> None:
        """Saves the item's checkpoint and returns once it is committed (a
        later attempt starts from it, as :attr:`checkpoint`).

        Raises :class:`jobvisor.CheckpointRefused` if the server refused it,
        :class:`jobvisor.ItemRevoked` if the item is no longer this
        worker's, :class:`TimeoutError` after ``timeout`` seconds (if
        given: while the stream is broken the save waits for the worker to
        reconnect).
        """
        payload = _as_bytes(data)
        done: "concurrent.futures.Future[None]" = concurrent.futures.Future()
        self._worker._threadsafe(self._worker._checkpoint, self, payload, done)
        try:
            done.result(timeout)
        except concurrent.futures.TimeoutError:
            raise TimeoutError(f"the checkpoint was not confirmed within {timeout} s") from None


class AsyncItem(BaseItem):
    """The item of an ``async def`` handler, which runs on the worker's
    event loop."""

    def __init__(self, worker: "Worker", a: pb.Assignment) -> None:
        super().__init__(worker, a)
        self._stopping_async = asyncio.Event()

    async def save_checkpoint(self, data: CheckpointData, timeout: Optional[float] = None) -> None:
        """Saves the item's checkpoint; returns once it is committed. Raises
        as :meth:`Item.save_checkpoint` does."""
        payload = _as_bytes(data)
        done: "asyncio.Future[None]" = asyncio.get_running_loop().create_future()
        self._worker._checkpoint(self, payload, done)
        try:
            await asyncio.wait_for(done, timeout)
        except asyncio.TimeoutError:
            raise TimeoutError(f"the checkpoint was not confirmed within {timeout} s") from None

    async def wait_stopping(self, timeout: Optional[float] = None) -> bool:
        """Waits until :attr:`stopping` is set (at most ``timeout``
        seconds); whether it is."""
        try:
            await asyncio.wait_for(self._stopping_async.wait(), timeout)
        except asyncio.TimeoutError:
            pass
        return self.stopping.is_set()

    def _stop(self, reason: StopReason) -> None:
        super()._stop(reason)
        self._stopping_async.set()
