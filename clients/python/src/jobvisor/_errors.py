"""What a handler raises or returns to choose its item's outcome, and what
the library raises."""

from __future__ import annotations

import datetime
from typing import Optional, Union

__all__ = [
    "Retry",
    "Fail",
    "Done",
    "CheckpointRefused",
    "ItemRevoked",
    "WorkerError",
]


class Retry(Exception):
    """Raised by a handler: this attempt failed, try the item again.

    ``after`` (seconds, or a :class:`datetime.timedelta`) is the least wait
    before the next attempt (a rate limit's Retry-After), reported as
    ``WorkerFailed.retry_after``; the job's own retry delay applies too.
    The attempt counts: the item fails for good once the job's
    ``max_attempts`` are spent.
    """

    def __init__(
        self,
        message: str = "",
        *,
        after: Union[float, datetime.timedelta, None] = None,
    ) -> None:
        if isinstance(after, datetime.timedelta):
            after = after.total_seconds()
        if after is not None:
            after = float(after)
            if not after >= 0:  # also catches NaN
                raise ValueError(f"Retry(after=...) must be 0 or more seconds, not {after}")
        super().__init__(message)
        #: What went wrong (stored with the item); empty: a generic text.
        self.message: str = message
        #: Seconds to wait at least before the next attempt, if any.
        self.after: Optional[float] = after


class Fail(Exception):
    """Raised by a handler: the item failed for good (no further attempt,
    whatever ``max_attempts`` says): ``WorkerFailed`` with ``permanent``."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        #: What went wrong (stored with the item).
        self.message: str = message


class Done:
    """Returned by a handler: the item succeeded, even if ``stopping`` was
    set before the handler returned.

    A plain return after ``stopping`` was set reports the item ``stopped``
    (it keeps its last checkpoint and runs again later, or ends CANCELLED
    after a cancel); ``return jobvisor.Done(result)`` says the work really
    is finished, so it is reported ``succeeded`` with ``result``.
    """

    __slots__ = ("result",)

    def __init__(self, result: Union[str, bytes, None] = None) -> None:
        #: The item's result: str, UTF-8 bytes, or None for none.
        self.result = result

    def __repr__(self) -> str:
        return f"Done({self.result!r})"


class CheckpointRefused(Exception):
    """The server did not save a checkpoint (``WorkerRefused``): the item's
    previous checkpoint still stands."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"checkpoint refused ({reason}): {message}")
        #: The server's stable code: NOT_SAVED, INVALID, UNKNOWN_TOKEN, ...
        self.reason: str = reason
        #: What was wrong, for people.
        self.message: str = message


class ItemRevoked(Exception):
    """The item is no longer this worker's (``WorkerRevoked``: it ignored an
    interrupt past the grace time, or its session was lost): nothing more
    sent about it counts. Stop working on it; the library reports nothing
    for it and frees its slot when the handler returns."""

    def __init__(self, token: int, reason: str) -> None:
        super().__init__(f"item {token} was revoked: {reason}")
        #: The item's fencing token.
        self.token: int = token
        #: Why, as the server (or the library) said.
        self.reason: str = reason


class WorkerError(Exception):
    """The worker cannot go on: the server refused its session for a reason
    that reconnecting does not fix (a bad or missing token, an executor the
    server does not run remotely, an invalid hello)."""
