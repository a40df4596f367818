"""The worker: one ``WorkerService.Work`` stream to a jobvisor server, the
items it is assigned, and their handlers.

Everything about the session (the items held, checkpoints in flight,
credits) lives on one asyncio event loop; plain handlers run in a pool of
``slots`` threads and reach the loop through ``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import inspect
import logging
import os
import queue
import signal
import socket
import threading
from collections import deque
from typing import (
    Any,
    Callable,
    Deque,
    Dict,
    List,
    Optional,
    Sequence,
    Set,
    Tuple,
    Union,
)

import grpc
from grpc import aio

from . import _outcome
from ._errors import CheckpointRefused, ItemRevoked, WorkerError
from ._item import AsyncItem, BaseItem, Item, StopReason, interrupt_reason
from ._version import __version__
from .v1 import worker_pb2 as pb
from .v1 import worker_pb2_grpc as rpc

__all__ = ["Worker"]

log = logging.getLogger("jobvisor")

#: The protocol version this library speaks.
PROTOCOL_VERSION = 1
#: The most slots one worker may have (the protocol's limit).
MAX_SLOTS = 1024
#: How long to wait for the server's welcome before counting the stream broken.
WELCOME_WITHIN = 15.0
#: At most this many bytes of messages go in one batch (a larger message
#: goes alone), far below any server's limit on a request.
MAX_BATCH_BYTES = 256 * 1024

Handler = Callable[[Any], Any]
PathOrPem = Union[bytes, str, "os.PathLike[str]", None]
Waiter = Union["concurrent.futures.Future[None]", "asyncio.Future[None]"]

# Stream errors that reconnecting does not fix, when they answer a hello.
_FATAL = {
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.UNIMPLEMENTED,
}


class _Broken(Exception):
    """The stream is to be given up (and the session resumed on a new one)."""


class _Fatal(Exception):
    """The session cannot go on."""


class _Task:
    """One assignment this worker holds: its slot is in use until credited."""

    __slots__ = ("token", "item", "done", "outcome", "revoked", "checkpoints")

    def __init__(self, token: int, item: Optional[BaseItem]) -> None:
        #: The assignment's fencing token.
        self.token = token
        #: What the handler got (None for an item never run: sent back at once).
        self.item = item
        #: Whether the handler has returned.
        self.done = False
        #: The report to send once the handler returned (None: nothing to
        #: send, the item was revoked).
        self.outcome: Optional[pb.WorkRequest] = None
        #: The item is no longer this worker's.
        self.revoked = False
        #: Checkpoints sent and not yet answered, by id: their data (sent
        #: again on a resumed stream) and who waits for the answer.
        self.checkpoints: Dict[int, Tuple[bytes, Waiter]] = {}


def _resolve(waiter: Waiter, error: Optional[BaseException] = None) -> None:
    """Completes a checkpoint's waiter (unless its caller gave up)."""
    if waiter.done():
        return
    if error is None:
        waiter.set_result(None)
    else:
        waiter.set_exception(error)


def _from_handler(e: BaseException) -> BaseException:
    """The handler's exception, its traceback starting in the handler (not
    in the library frame that called it)."""
    tb = e.__traceback__
    if tb is not None and tb.tb_next is not None:
        e.__traceback__ = tb.tb_next
    return e


def _read_pem(value: PathOrPem, what: str) -> Optional[bytes]:
    """PEM bytes as given, or read from a path."""
    if value is None:
        return None
    if isinstance(value, bytes):
        return value
    text = os.fspath(value)
    if text.lstrip().startswith("-----BEGIN"):
        return text.encode()
    try:
        with open(text, "rb") as f:
            return f.read()
    except OSError as e:
        raise ValueError(f"cannot read the {what} {text!r}: {e}") from None


class _Pool:
    """A pool of at most ``size`` daemon threads (started as needed) running
    the plain handlers: daemon, so that a handler stuck for good does not
    keep the process alive once the worker has given up."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._jobs: "queue.SimpleQueue[Optional[Callable[[], None]]]" = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads: List[threading.Thread] = []
        self._idle = 0

    def submit(self, job: Callable[[], None]) -> None:
        with self._lock:
            if self._idle == 0 and len(self._threads) < self._size:
                t = threading.Thread(target=self._run, name=f"jobvisor-handler-{len(self._threads) + 1}", daemon=True)
                self._threads.append(t)
                t.start()
            else:
                self._idle -= 1
        self._jobs.put(job)

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            job()
            with self._lock:
                self._idle += 1

    def shutdown(self) -> None:
        for _ in self._threads:
            self._jobs.put(None)


class Worker:
    """A worker process's connection to a jobvisor server: it takes the
    items of jobs whose executor it serves and runs them in its handler.

    ::

        worker = jobvisor.Worker("127.0.0.1:50051", executor="ocr", slots=8)

        @worker.handler
        def handle(item):
            ...
            return "result"

        worker.run()

    ``target`` is ``host:port`` (plain text, or TLS when a certificate is
    given), ``http://host:port`` or ``https://host:port`` (TLS, the
    system's roots unless ``root_cert`` is given). ``executor`` names one
    executor or several. ``slots`` is how many items run at once (1 to
    1024). ``token`` is a bearer token with the ``work`` permission.
    ``root_cert``, ``client_cert`` and ``client_key`` are PEM bytes or
    file paths (a client certificate for mutual TLS). ``name`` is shown
    in the server's logs (default ``host:pid``). ``reconnect_initial`` and
    ``reconnect_max`` bound the wait between reconnects (seconds).
    """

    def __init__(
        self,
        target: str,
        executor: Union[str, Sequence[str]],
        slots: int = 1,
        token: Optional[str] = None,
        *,
        root_cert: PathOrPem = None,
        client_cert: PathOrPem = None,
        client_key: PathOrPem = None,
        name: Optional[str] = None,
        build_id: Optional[str] = None,
        reconnect_initial: float = 0.1,
        reconnect_max: float = 10.0,
        handler: Optional[Handler] = None,
    ) -> None:
        executors = [executor] if isinstance(executor, str) else list(executor)
        if not 1 <= len(executors) <= 16:
            raise ValueError(f"a worker serves 1 to 16 executors, not {len(executors)}")
        for e in executors:
            if not isinstance(e, str) or not 1 <= len(e) <= 128:
                raise ValueError(f"an executor name is 1 to 128 characters: {e!r}")
        if isinstance(slots, bool) or not isinstance(slots, int) or not 1 <= slots <= MAX_SLOTS:
            raise ValueError(f"slots must be an integer from 1 to {MAX_SLOTS}, not {slots!r}")
        if name is None:
            name = f"{socket.gethostname()}:{os.getpid()}"[:128]
        if not 1 <= len(name) <= 128:
            raise ValueError(f"the worker's name is 1 to 128 characters: {name!r}")
        if build_id is None:
            build_id = f"jobvisor-python/{__version__}"
        if len(build_id) > 128:
            raise ValueError("the build id is at most 128 characters")
        if not 0 < reconnect_initial <= reconnect_max:
            raise ValueError("reconnect waits: 0 < reconnect_initial <= reconnect_max")
        if (client_cert is None) != (client_key is None):
            raise ValueError("client_cert and client_key come together (mutual TLS)")

        tls = root_cert is not None or client_cert is not None
        address = target
        if target.startswith("https://"):
            address, tls = target[len("https://") :], True
        elif target.startswith("http://"):
            if tls:
                raise ValueError(f"{target!r} says plain text, but certificates were given: use https:// or host:port")
            address = target[len("http://") :]
        address = address.rstrip("/")
        if not address:
            raise ValueError(f"no server address in {target!r} (host:port)")

        #: Where the server is (host:port).
        self.target: str = address
        #: The executors served.
        self.executors: List[str] = executors
        #: Items at most at once.
        self.slots: int = slots
        #: Shown in the server's logs.
        self.name: str = name
        #: Sent in the hello, shown in the server's logs.
        self.build_id: str = build_id
        self._tls = tls
        self._credentials: Optional[grpc.ChannelCredentials] = None
        if tls:
            self._credentials = grpc.ssl_channel_credentials(
                root_certificates=_read_pem(root_cert, "root certificate"),
                private_key=_read_pem(client_key, "client key"),
                certificate_chain=_read_pem(client_cert, "client certificate"),
            )
        self._metadata: Tuple[Tuple[str, str], ...] = (("authorization", f"Bearer {token}"),) if token else ()
        self._reconnect = (float(reconnect_initial), float(reconnect_max))
        self._handler: Optional[Handler] = None
        self._is_async = False
        if handler is not None:
            self.handler(handler)

        # The session's state: touched on the event loop only.
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._stop_requested = False
        self._draining = False
        self._session_id = ""
        self._connected = False
        self._out: Optional["asyncio.Queue[pb.WorkRequest]"] = None
        #: The server takes batches of messages (its welcome says).
        self._batches = False
        #: How often to ping (from the welcome).
        self._heartbeat = 1.0
        #: The server's lease time (from the welcome): how long it keeps a
        #: disconnected worker's items.
        self._lease_time = 5.0
        #: How long the current stream may stay silent: the welcome's wait,
        #: then the lease time.
        self._lease = WELCOME_WITHIN
        self._last_received = 0.0
        self._disconnected_at: Optional[float] = None
        self._tasks: Dict[int, _Task] = {}
        self._unconfirmed: Dict[int, pb.WorkRequest] = {}
        self._fallback_sent: Set[int] = set()
        self._since_ping: List[int] = []
        self._ping_marks: Deque[List[int]] = deque()
        #: Slots freed and not yet credited: one credit for all the slots
        #: freed in one turn of the loop.
        self._credits = 0
        #: Handlers' returns on their way from the pool's threads to the
        #: loop: one wake-up of the loop for all that came meanwhile.
        self._returns: Deque[Tuple[_Task, Any, Optional[BaseException], bool]] = deque()
        self._returns_lock = threading.Lock()
        self._returns_called = False
        #: Pings sent and answered on the current stream (answers come in order).
        self._pings = 0
        self._pongs = 0
        self._next_checkpoint = 0
        self._changed: Optional[asyncio.Event] = None
        self._async_runs: Set["asyncio.Task[None]"] = set()
        self._pool: Optional[_Pool] = None
        #: Whether the current stream got its welcome.
        self._session_live = False
        #: Set when a drain starts (cuts a reconnect's wait short).
        self._drain_started: Optional[asyncio.Event] = None

    # -- the public API -------------------------------------------------

    def handler(self, fn: Handler) -> Handler:
        """Sets the handler (use as a decorator): ``def handle(item)`` runs
        in a thread of the worker's pool and gets an :class:`Item`;
        ``async def handle(item)`` runs on the worker's event loop and gets
        an :class:`AsyncItem`."""
        if not callable(fn):
            raise TypeError(f"the handler must be callable, not {type(fn).__name__}")
        self._handler = fn
        self._is_async = inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
            getattr(fn, "__call__", None)
        )
        return fn

    def run(self) -> None:
        """Runs the worker until it has drained: SIGTERM or Ctrl-C (or
        :meth:`stop`) starts the drain; a second signal exits at once.

        Returns normally after a drain; raises :class:`WorkerError` if the
        server refuses the session for good (bad token, unknown executor).
        """
        asyncio.run(self._main())

    def stop(self) -> None:
        """Starts a drain, from any thread: the server is sent
        ``WorkerDrain`` (no new items), in-flight items get ``stopping``
        (reason :attr:`StopReason.DRAIN`), and :meth:`run` returns once
        each has been reported."""
        loop = self._loop
        if loop is None:
            self._stop_requested = True
            return
        try:
            loop.call_soon_threadsafe(self._begin_drain)
        except RuntimeError:
            pass  # the loop has ended

    async def serve(self) -> None:
        """The worker as a coroutine, for a program with an event loop of
        its own (which then handles signals itself and calls :meth:`stop`)."""
        if self._handler is None:
            raise ValueError("no handler: decorate a function with @worker.handler before running")
        if self._loop is not None or self._session_id:
            raise RuntimeError("a Worker runs once: make a new one")
        self._loop = asyncio.get_running_loop()
        self._changed = asyncio.Event()
        self._drain_started = asyncio.Event()
        self._pool = None if self._is_async else _Pool(self.slots)
        if self._stop_requested:
            self._draining = True
            self._drain_started.set()
        attempt = 0
        try:
            while True:
                if self._draining and (self._session_id == "" or not self._tasks):
                    break
                if self._draining and self._disconnected_at is not None:
                    gone = self._loop.time() - self._disconnected_at
                    if gone > self._lease_time and all(t.done for t in self._tasks.values()):
                        log.warning(
                            "drained, but the outcomes of %d item(s) could not be delivered: "
                            "the server gives them back after its lease time",
                            len(self._tasks),
                        )
                        break
                welcomed = await self._session_once()
                if welcomed is None:
                    break
                if welcomed:
                    attempt = 0
                delay = _outcome.backoff(attempt, *self._reconnect)
                attempt += 1
                log.info("reconnecting to %s in %.2f s", self.target, delay)
                await self._wait(delay)
        finally:
            if self._pool is not None:
                self._pool.shutdown()
            for run in list(self._async_runs):
                run.cancel()
            self._loop = None

    # -- the session ----------------------------------------------------

    async def _main(self) -> None:
        loop = asyncio.get_running_loop()
        installed: List[signal.Signals] = []
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                try:
                    loop.add_signal_handler(sig, self._on_signal, sig)
                    installed.append(sig)
                except (NotImplementedError, RuntimeError):
                    pass
        try:
            await self.serve()
        finally:
            for installed_sig in installed:
                loop.remove_signal_handler(installed_sig)

    def _on_signal(self, sig: int) -> None:
        name = signal.Signals(sig).name
        if self._draining:
            log.warning("%s again: exiting now, without waiting for the items in flight", name)
            logging.shutdown()
            os._exit(128 + sig)
        log.info("%s: draining (no new items; items in flight stop at their next checkpoint)", name)
        self._begin_drain()

    def _begin_drain(self) -> None:
        if self._draining:
            return
        self._draining = True
        if self._drain_started is not None:
            self._drain_started.set()
        if self._connected:
            self._send(pb.WorkRequest(drain=pb.WorkerDrain()))
        for task in self._tasks.values():
            if task.item is not None and not task.done and not task.item.stopping.is_set():
                task.item._stop(StopReason.DRAIN)
        self._wake()

    async def _wait(self, seconds: float) -> None:
        """Sleeps, or less if a drain starts."""
        assert self._drain_started is not None
        if self._draining:
            await asyncio.sleep(seconds)
            return
        try:
            await asyncio.wait_for(self._drain_started.wait(), seconds)
        except asyncio.TimeoutError:
            pass

    def _channel(self) -> aio.Channel:
        options = [("grpc.max_receive_message_length", -1), ("grpc.primary_user_agent", self.build_id)]
        if self._credentials is not None:
            return aio.secure_channel(self.target, self._credentials, options=options)
        return aio.insecure_channel(self.target, options=options)

    def _hello(self) -> pb.WorkRequest:
        held = list(self._tasks)
        free = 0 if self._draining else self.slots - len(held)
        hello = pb.WorkerHello(
            worker_name=self.name,
            executors=self.executors,
            slots=free,
            protocol_version=PROTOCOL_VERSION,
            build_id=self.build_id,
            resume_session_id=self._session_id,
            held_tokens=held,
        )
        return pb.WorkRequest(hello=hello)

    async def _session_once(self) -> Optional[bool]:
        """One stream: None once drained (the worker is done), else whether
        the server welcomed it before it broke. Raises :class:`WorkerError`
        when the server refuses the session for good."""
        try:
            outcome = await self._stream()
        except _Fatal as e:
            self._give_up(str(e))
            raise WorkerError(str(e)) from None
        if isinstance(outcome, str):
            if self._session_live:
                log.warning("the stream to %s broke: %s", self.target, outcome)
            else:
                log.warning("cannot reach %s: %s", self.target, outcome)
            return self._session_live
        return None

    async def _stream(self) -> Optional[str]:
        """Runs one stream: None once drained, else why it broke."""
        assert self._loop is not None
        channel = self._channel()
        call = rpc.WorkerServiceStub(channel).Work(metadata=self._metadata)
        out: "asyncio.Queue[pb.WorkRequest]" = asyncio.Queue()
        welcomed = asyncio.Event()
        self._session_live = False
        self._lease = WELCOME_WITHIN
        self._last_received = self._loop.time()
        helpers: List["asyncio.Future[Any]"] = []
        try:
            hello = self._hello()
            log.debug(
                "hello: slots=%d held=%s resume=%r",
                hello.hello.slots,
                list(hello.hello.held_tokens),
                self._session_id,
            )
            reader = asyncio.ensure_future(self._read(call, out, welcomed))
            writer = asyncio.ensure_future(self._write(call, out, hello))
            watchdog = asyncio.ensure_future(self._watchdog())
            heartbeat = asyncio.ensure_future(self._beat(welcomed))
            closer = asyncio.ensure_future(self._close_when_drained(call, out, welcomed))
            helpers = [reader, writer, watchdog, heartbeat, closer]
            done, _ = await asyncio.wait(helpers, return_when=asyncio.FIRST_COMPLETED)
            if closer in done and closer.exception() is None:
                log.info("drained: every item reported")
                return None
            if reader not in done:
                # Something else ended the stream: let the reader say why.
                await asyncio.wait([reader], timeout=1.0)
            why = self._why(reader, watchdog, writer)
            if isinstance(why, _Fatal):
                raise why
            return why
        finally:
            for h in helpers:
                h.cancel()
            call.cancel()
            await channel.close()
            self._disconnect()

    def _why(self, reader: "asyncio.Future[Any]", watchdog: "asyncio.Future[Any]", writer: "asyncio.Future[Any]") -> Union[str, _Fatal]:
        if watchdog.done() and not watchdog.cancelled() and watchdog.exception() is not None:
            return str(watchdog.exception())
        if reader.done() and not reader.cancelled():
            e = reader.exception()
            if e is None:
                return "the server ended the stream"
            if isinstance(e, grpc.RpcError):
                return self._status_reason(e, self._session_live)
            return f"{type(e).__name__}: {e}"
        if writer.done() and not writer.cancelled() and writer.exception() is not None:
            return f"sending failed: {writer.exception()}"
        return "the stream ended"

    def _status_reason(self, e: grpc.RpcError, welcomed: bool) -> Union[str, _Fatal]:
        code = e.code() if hasattr(e, "code") else None
        details = e.details() if hasattr(e, "details") else str(e)
        text = f"{code.name if code else 'error'}: {details}"
        if not welcomed and code in _FATAL:
            if code is grpc.StatusCode.UNIMPLEMENTED:
                text += " (is this a jobvisor server with the worker protocol?)"
            return _Fatal(f"the server refused the worker's session: {text}")
        return text

    def _give_up(self, why: str) -> None:
        log.error("%s", why)
        for task in self._tasks.values():
            self._revoke(task, why)

    async def _read(self, call: Any, out: "asyncio.Queue[pb.WorkRequest]", welcomed: asyncio.Event) -> None:
        assert self._loop is not None
        while True:
            msg = await call.read()
            if msg is aio.EOF:
                return
            self._last_received = self._loop.time()
            kind = msg.WhichOneof("kind")
            if not welcomed.is_set():
                if kind != "welcome":
                    raise _Broken(f"the server's first message was {kind}, not a welcome")
                self._welcome(msg.welcome, out)
                self._session_live = True
                welcomed.set()
                continue
            if kind == "assignments":
                self._assigned(msg.assignments.items)
            elif kind == "checkpoint_saved":
                self._saved(msg.checkpoint_saved)
            elif kind == "interrupt":
                self._interrupted(msg.interrupt)
            elif kind == "revoked":
                task = self._tasks.get(msg.revoked.token)
                if task is None or task.revoked:
                    log.debug("revoked: item %d (no longer held here): %s", msg.revoked.token, msg.revoked.reason)
                else:
                    self._revoke(task, msg.revoked.reason)
            elif kind == "refused":
                self._refused(msg.refused)
            elif kind == "ping":
                self._pong()
            elif kind == "welcome":
                log.warning("a second welcome on one stream: ignored")
            else:
                log.warning("a message this library does not know (%s): ignored", kind)

    async def _write(self, call: Any, out: "asyncio.Queue[pb.WorkRequest]", hello: pb.WorkRequest) -> None:
        await call.write(hello)
        carried: Optional[pb.WorkRequest] = None
        while True:
            msg = carried if carried is not None else await out.get()
            carried = None
            batch = [msg]
            # What queued up meanwhile goes in one message, if the server
            # takes batches (its welcome, read before anything but the
            # hello is queued, says): a write costs the same whatever it
            # carries.
            taken = 1
            if self._batches:
                size = msg.ByteSize()
                while not out.empty():
                    nxt = out.get_nowait()
                    size += nxt.ByteSize()
                    if size > MAX_BATCH_BYTES:
                        carried = nxt
                        break
                    batch.append(nxt)
                taken = len(batch)
                # The slots freed so far, after every outcome queued
                # before them (none is left behind in the queue).
                if carried is None and self._credits:
                    batch.append(pb.WorkRequest(credit=pb.WorkerCredit(slots=self._credits)))
                    self._credits = 0
            try:
                if len(batch) == 1:
                    await call.write(msg)
                else:
                    await call.write(pb.WorkRequest(batch=pb.WorkerBatch(messages=batch)))
            finally:
                for _ in range(taken):
                    out.task_done()

    async def _watchdog(self) -> None:
        """Gives the stream up when nothing came from the server for the
        lease time (its answers to our pings included)."""
        assert self._loop is not None
        while True:
            silent = self._loop.time() - self._last_received
            if silent > self._lease:
                raise _Broken(f"nothing came from the server for {silent:.1f} s")
            await asyncio.sleep(max(0.05, min(1.0, self._lease / 10)))

    async def _beat(self, welcomed: asyncio.Event) -> None:
        await welcomed.wait()
        while True:
            await asyncio.sleep(self._heartbeat)
            self._ping()

    async def _close_when_drained(self, call: Any, out: "asyncio.Queue[pb.WorkRequest]", welcomed: asyncio.Event) -> None:
        """Once drained and every item reported: makes sure the server read
        every report and the drain (a ping answered after them: an item it
        sent before it read the drain comes before the answer, and goes
        back unstarted), then ends the stream."""
        assert self._loop is not None and self._drain_started is not None
        await welcomed.wait()
        # Nothing to do before a drain: waiting on the session's changes
        # before it would wake this task at every item.
        await self._drain_started.wait()
        deadline: Optional[float] = None
        while True:
            await self._until(lambda: self._draining and not self._tasks)
            if deadline is None:
                deadline = self._loop.time() + self._lease
            self._ping()
            asked = self._pings
            if not await self._until(lambda: self._pongs >= asked, deadline):
                log.warning("the server did not answer within %.1f s; ending the stream anyway", self._lease)
                break
            if not self._tasks and not self._unconfirmed:
                break
        await out.join()
        await call.done_writing()

    async def _until(self, condition: Callable[[], bool], deadline: Optional[float] = None) -> bool:
        """Waits until ``condition`` holds (re-checked at each change of the
        session's state), or until ``deadline`` (loop time): whether it
        holds."""
        assert self._changed is not None and self._loop is not None
        while not condition():
            self._changed.clear()
            if deadline is None:
                await self._changed.wait()
                continue
            left = deadline - self._loop.time()
            if left <= 0:
                return False
            try:
                await asyncio.wait_for(self._changed.wait(), left)
            except asyncio.TimeoutError:
                return condition()
        return True

    # -- the server's messages ------------------------------------------

    def _welcome(self, w: pb.WorkerWelcome, out: "asyncio.Queue[pb.WorkRequest]") -> None:
        resumed = set(w.resumed_tokens)
        first = self._session_id == ""
        if self._session_id and w.session_id != self._session_id:
            log.warning("session %s was not resumed (the server lost it): new session %s", self._session_id, w.session_id)
        self._session_id = w.session_id
        self._heartbeat = max(0.05, w.heartbeat_interval.ToTimedelta().total_seconds()) if w.HasField("heartbeat_interval") else 1.0
        if w.HasField("lease_time"):
            self._lease_time = w.lease_time.ToTimedelta().total_seconds()
        self._lease = self._lease_time
        # A little less than the interval asked for, so that a late timer
        # never makes a ping late.
        self._heartbeat *= 0.9
        self._out = out
        self._batches = w.batches
        self._connected = True
        self._disconnected_at = None
        log.info(
            "%s %s as session %s (server %s, executors %s, %d slots; heartbeat %.2f s, lease %.1f s)",
            "connected to" if first else "reconnected to",
            self.target,
            w.session_id,
            w.server or "-",
            ",".join(self.executors),
            self.slots,
            self._heartbeat,
            self._lease,
        )
        if self._draining:
            self._send(pb.WorkRequest(drain=pb.WorkerDrain()))
        for task in list(self._tasks.values()):
            if task.token not in resumed:
                if not task.revoked:
                    self._revoke(task, "the session did not keep it across the reconnect")
                elif task.done:
                    self._settle(task)
                continue
            if task.done:
                self._settle(task)
            else:
                for cid, (data, _) in sorted(task.checkpoints.items()):
                    self._send(pb.WorkRequest(checkpoint=pb.WorkerCheckpoint(token=task.token, checkpoint_id=cid, data=data)))
        if resumed:
            log.info("resumed %d item(s) in flight", len(resumed))
        self._wake()

    def _assigned(self, items: Sequence[pb.Assignment]) -> None:
        assert self._loop is not None
        for a in items:
            if a.token in self._tasks:
                log.warning("item %d assigned twice: ignored", a.token)
                continue
            if len(self._tasks) >= self.slots:
                log.error(
                    "the server sent more items than this worker's %d slots (item %d of job %s): "
                    "given back unstarted",
                    self.slots,
                    a.index,
                    a.job_id,
                )
                self._send(_outcome.stopped(a.token))
                continue
            if self._draining:
                # Sent before the server read our drain: back, unstarted.
                task = _Task(a.token, None)
                task.done = True
                task.outcome = _outcome.stopped(a.token)
                self._tasks[a.token] = task
                self._settle(task)
                continue
            item: BaseItem = AsyncItem(self, a) if self._is_async else Item(self, a)
            task = _Task(a.token, item)
            self._tasks[a.token] = task
            log.debug("item %d of job %s (attempt %d, token %d) starts", a.index, a.job_id, a.attempt, a.token)
            if self._is_async:
                run = self._loop.create_task(self._run_async(task))
                self._async_runs.add(run)
                run.add_done_callback(self._async_runs.discard)
            else:
                assert self._pool is not None
                self._pool.submit(functools.partial(self._run_sync, task))

    def _saved(self, s: pb.CheckpointSaved) -> None:
        task = self._tasks.get(s.token)
        entry = task.checkpoints.pop(s.checkpoint_id, None) if task else None
        if task is None or entry is None:
            log.debug("checkpoint %d of item %d saved (no one waits for it)", s.checkpoint_id, s.token)
            return
        data, waiter = entry
        if task.item is not None:
            task.item.checkpoint = data
        _resolve(waiter)

    def _interrupted(self, i: pb.WorkerInterrupt) -> None:
        reason = interrupt_reason(i.reason)
        for token in i.tokens:
            task = self._tasks.get(token)
            if task is None or task.done or task.item is None or task.revoked:
                log.debug("interrupt (%s) for item %d, which is not running here", reason.value, token)
                continue
            log.info("item %d of job %s interrupted: %s", task.item.index, task.item.job_id, reason.value)
            task.item._stop(reason)

    def _revoke(self, task: _Task, why: str) -> None:
        task.revoked = True
        task.outcome = None
        if task.item is not None and not task.done:
            log.warning("item %d of job %s revoked: %s", task.item.index, task.item.job_id, why)
            task.item._stop(StopReason.REVOKED)
        for _, waiter in task.checkpoints.values():
            _resolve(waiter, ItemRevoked(task.token, why))
        task.checkpoints.clear()
        if task.done and self._connected:
            self._settle(task)

    def _refused(self, r: pb.WorkerRefused) -> None:
        task = self._tasks.get(r.token)
        entry = task.checkpoints.pop(r.checkpoint_id, None) if task and r.checkpoint_id else None
        if entry is not None:
            log.warning("checkpoint of item %d refused: %s: %s", r.token, r.reason, r.message)
            _resolve(entry[1], CheckpointRefused(r.reason, r.message))
            return
        log.warning("the server refused a message about item %d: %s: %s", r.token, r.reason, r.message)
        if r.reason == "INVALID" and r.token in self._unconfirmed and r.token not in self._fallback_sent:
            # An outcome out of the server's bounds: fail the attempt
            # plainly rather than leave the item hanging.
            self._fallback_sent.add(r.token)
            report = _outcome.failed(r.token, f"the worker's report was refused: {r.message}")
            self._unconfirmed[r.token] = report
            self._since_ping.append(r.token)
            self._send(report)

    def _pong(self) -> None:
        self._pongs += 1
        self._wake()
        if self._ping_marks:
            for token in self._ping_marks.popleft():
                self._unconfirmed.pop(token, None)
                self._fallback_sent.discard(token)
            self._wake()

    # -- the worker's side ----------------------------------------------

    def _threadsafe(self, fn: Callable[..., None], *args: Any) -> None:
        loop = self._loop
        if loop is None:
            raise RuntimeError("the worker is not running")
        loop.call_soon_threadsafe(fn, *args)

    def _send(self, msg: pb.WorkRequest) -> None:
        if self._connected and self._out is not None:
            self._out.put_nowait(msg)

    def _ping(self) -> None:
        if not self._connected:
            return
        self._ping_marks.append(self._since_ping)
        self._since_ping = []
        self._pings += 1
        self._send(pb.WorkRequest(ping=pb.WorkerPing()))

    def _wake(self) -> None:
        if self._changed is not None:
            self._changed.set()

    def _progress(self, token: int, fraction: float) -> None:
        task = self._tasks.get(token)
        if task is not None and not task.done and not task.revoked:
            self._send(pb.WorkRequest(progress=pb.WorkerProgress(token=token, fraction=fraction)))

    def _checkpoint(self, item: BaseItem, data: bytes, waiter: Waiter) -> None:
        task = self._tasks.get(item.token)
        if task is None or task.revoked or task.done:
            _resolve(waiter, ItemRevoked(item.token, "the item is no longer this worker's"))
            return
        self._next_checkpoint += 1
        cid = self._next_checkpoint
        task.checkpoints[cid] = (data, waiter)
        self._send(pb.WorkRequest(checkpoint=pb.WorkerCheckpoint(token=item.token, checkpoint_id=cid, data=data)))

    def _run_sync(self, task: _Task) -> None:
        """In a pool thread: the handler, then its outcome to the loop."""
        item = task.item
        assert item is not None and self._handler is not None
        returned: Any = None
        raised: Optional[BaseException] = None
        try:
            returned = self._handler(item)
            if inspect.isawaitable(returned):
                close = getattr(returned, "close", None)
                if close is not None:
                    close()
                raise TypeError("the handler returned an awaitable: register an `async def` handler instead")
        except BaseException as e:  # noqa: B036 (SystemExit in a handler thread fails the item too)
            raised = _from_handler(e)
        stopping = item.stopping.is_set()
        loop = self._loop
        if loop is None:
            return
        with self._returns_lock:
            self._returns.append((task, returned, raised, stopping))
            if self._returns_called:
                return  # the loop has been called for them already
            self._returns_called = True
        try:
            loop.call_soon_threadsafe(self._take_returns)
        except RuntimeError:
            pass  # the worker has ended

    def _take_returns(self) -> None:
        """On the loop: the handlers' returns that came from the pool."""
        with self._returns_lock:
            returns = list(self._returns)
            self._returns.clear()
            self._returns_called = False
        for task, returned, raised, stopping in returns:
            self._finished(task, returned, raised, stopping)

    async def _run_async(self, task: _Task) -> None:
        item = task.item
        assert item is not None and self._handler is not None
        returned: Any = None
        raised: Optional[BaseException] = None
        try:
            returned = await self._handler(item)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            raised = _from_handler(e)
        self._finished(task, returned, raised, item.stopping.is_set())

    def _finished(self, task: _Task, returned: Any, raised: Optional[BaseException], stopping: bool) -> None:
        """On the loop: the handler has returned."""
        task.done = True
        item = task.item
        assert item is not None
        if task.revoked:
            log.info("item %d of job %s: handler returned after its revocation", item.index, item.job_id)
        else:
            task.outcome = _outcome.outcome(
                task.token,
                returned=returned,
                raised=raised,
                stopping=stopping,
                skip_reason=item.skip_reason,
                counters=item.counters,
            )
            kind = task.outcome.WhichOneof("kind")
            if kind == "failed":
                log.warning("item %d of job %s failed: %s", item.index, item.job_id, task.outcome.failed.error)
            else:
                log.debug("item %d of job %s: %s", item.index, item.job_id, kind)
        if self._connected:
            self._settle(task)
        self._wake()

    def _settle(self, task: _Task) -> None:
        """Sends the item's outcome (if any) and frees its slot."""
        if task.outcome is not None:
            self._send(task.outcome)
            self._unconfirmed[task.token] = task.outcome
            self._since_ping.append(task.token)
        self._tasks.pop(task.token, None)
        self._credit()
        self._wake()

    def _credit(self) -> None:
        """Frees a slot. The credit goes at the end of the loop's turn,
        after the outcomes queued in it, in one message for every slot
        freed meanwhile."""
        assert self._loop is not None
        self._credits += 1
        if self._credits == 1:
            self._loop.call_soon(self._send_credits)

    def _send_credits(self) -> None:
        slots, self._credits = self._credits, 0
        if slots:
            self._send(pb.WorkRequest(credit=pb.WorkerCredit(slots=slots)))

    def _disconnect(self) -> None:
        """The stream is gone: reports it may not have read come back into
        the books, to be sent again on the resumed session."""
        if self._loop is None:
            return
        if self._connected:
            self._disconnected_at = self._loop.time()
        self._connected = False
        self._out = None
        for token, report in self._unconfirmed.items():
            task = _Task(token, None)
            task.done = True
            task.outcome = report
            self._tasks.setdefault(token, task)
        self._unconfirmed.clear()
        self._fallback_sent.clear()
        self._since_ping = []
        self._ping_marks.clear()
        self._pings = self._pongs = 0
        # The next hello counts the free slots itself.
        self._credits = 0
        self._wake()

