"""What a handler's return or exception reports: pure functions, so the
rules are in one place and testable without a server."""

from __future__ import annotations

import random
import traceback
from typing import Callable, Mapping, Optional

from google.protobuf.duration_pb2 import Duration

from ._errors import Done, Fail, Retry
from .v1 import worker_pb2 as pb

#: The longest result the server stores (``WorkerSucceeded.result``).
MAX_RESULT_BYTES = 64 * 1024
#: How many of a traceback's last lines make a failed attempt's error.
ERROR_LINES = 8
#: The longest error text sent (the server cuts at 4096 characters).
MAX_ERROR_CHARS = 2000


def error_text(exc: BaseException) -> str:
    """A failed attempt's error: the last lines of the exception's
    traceback (the innermost frames and the exception itself), at most
    :data:`MAX_ERROR_CHARS` characters."""
    lines = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)).splitlines()
    # Blank lines and the markers under the failing expression say nothing.
    lines = [line for line in lines if line.strip() and line.strip().strip("^~") != ""]
    text = "\n".join(lines[-ERROR_LINES:])
    if len(text) > MAX_ERROR_CHARS:
        text = "…" + text[-(MAX_ERROR_CHARS - 1) :]
    return text or type(exc).__name__


def failed(token: int, error: str, *, permanent: bool = False, retry_after: Optional[float] = None) -> pb.WorkRequest:
    """A ``WorkerFailed`` for item ``token``."""
    msg = pb.WorkerFailed(token=token, error=error, permanent=permanent)
    if retry_after is not None:
        d = Duration()
        d.FromNanoseconds(int(retry_after * 1e9))
        msg.retry_after.CopyFrom(d)
    return pb.WorkRequest(failed=msg)


def stopped(token: int) -> pb.WorkRequest:
    """A ``WorkerStopped`` for item ``token``."""
    return pb.WorkRequest(stopped=pb.WorkerStopped(token=token))


def succeeded(
    token: int,
    result: object,
    *,
    skip_reason: Optional[str] = None,
    counters: Optional[Mapping[str, int]] = None,
) -> pb.WorkRequest:
    """A ``WorkerSucceeded`` carrying ``result`` (None, str or UTF-8
    bytes), the skip reason and the attempt's counters; a result that
    cannot be sent fails the attempt instead, saying why."""
    if result is None:
        text = ""
    elif isinstance(result, str):
        text = result
    elif isinstance(result, (bytes, bytearray, memoryview)):
        try:
            text = bytes(result).decode("utf-8")
        except UnicodeDecodeError as e:
            return failed(token, f"the handler's result is bytes that are not UTF-8 ({e}); return str or UTF-8 bytes")
    else:
        return failed(
            token,
            f"the handler returned a {type(result).__name__}; return str, UTF-8 bytes or None "
            "(or raise jobvisor.Retry / jobvisor.Fail)",
        )
    size = len(text.encode("utf-8"))
    if size > MAX_RESULT_BYTES:
        return failed(token, f"the handler's result is {size} bytes; at most {MAX_RESULT_BYTES}")
    return pb.WorkRequest(
        succeeded=pb.WorkerSucceeded(
            token=token,
            result=text,
            skip_reason=skip_reason or "",
            counters=dict(counters or {}),
        )
    )


def outcome(
    token: int,
    *,
    returned: object = None,
    raised: Optional[BaseException] = None,
    stopping: bool = False,
    skip_reason: Optional[str] = None,
    counters: Optional[Mapping[str, int]] = None,
) -> pb.WorkRequest:
    """The message reporting item ``token`` once its handler is over.

    - raised :class:`Fail`: failed, permanent;
    - raised :class:`Retry`: failed, with ``retry_after`` when given;
    - raised anything else: failed (not permanent), the traceback's last
      lines as the error;
    - returned :class:`Done`: succeeded, whatever ``stopping`` says;
    - returned anything else after ``stopping`` was set (an interrupt, a
      drain or a revocation): stopped;
    - returned a result: succeeded with it.

    A success carries ``skip_reason`` and ``counters`` (the item's
    :meth:`~jobvisor.Item.skip` and :meth:`~jobvisor.Item.count`); the
    other outcomes drop them.
    """
    if raised is not None:
        if isinstance(raised, Fail):
            return failed(token, raised.message or "the handler failed the item", permanent=True)
        if isinstance(raised, Retry):
            return failed(token, raised.message or "the handler asked for a retry", retry_after=raised.after)
        return failed(token, error_text(raised))
    if isinstance(returned, Done):
        return succeeded(token, returned.result, skip_reason=skip_reason, counters=counters)
    if stopping:
        return stopped(token)
    return succeeded(token, returned, skip_reason=skip_reason, counters=counters)


def backoff(attempt: int, initial: float, cap: float, rand: Callable[[], float] = random.random) -> float:
    """Seconds to wait before reconnect number ``attempt`` (from 0):
    exponential from ``initial``, at most ``cap``, with jitter (between
    half and all of it, so that many workers cut off at once do not come
    back at once)."""
    ceiling = min(cap, initial * (2 ** min(attempt, 62)))
    return ceiling / 2 + rand() * ceiling / 2
