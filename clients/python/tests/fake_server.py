"""A scripted WorkerService on a loopback port, for the library's tests
that need no jobvisor server: each stream the worker opens is handed to
the test, which reads what the worker sent and says what the server
answers."""

from __future__ import annotations

import asyncio
from typing import AsyncIterator, List, Optional, Union

import grpc
from grpc import aio

from jobvisor.v1 import worker_pb2 as pb
from jobvisor.v1 import worker_pb2_grpc as rpc

WAIT = 10.0


class Stream:
    """One ``Work`` stream, as the test sees it."""

    def __init__(self) -> None:
        #: What the worker sent, in order.
        self.inbox: "asyncio.Queue[Optional[pb.WorkRequest]]" = asyncio.Queue()
        #: What the server sends: a message, or a status code to end the
        #: stream with, or None to end it OK.
        self.out: "asyncio.Queue[Union[pb.WorkResponse, grpc.StatusCode, None]]" = asyncio.Queue()
        #: Every message received so far.
        self.seen: List[pb.WorkRequest] = []

    async def next(self, *skip: str) -> Optional[pb.WorkRequest]:
        """The worker's next message (None once it ended its side), leaving
        out the kinds in ``skip``; answers its pings on the way."""
        while True:
            msg = await asyncio.wait_for(self.inbox.get(), WAIT)
            if msg is not None and msg.WhichOneof("kind") == "ping":
                self.send(ping=pb.WorkerPing())
            if msg is None or msg.WhichOneof("kind") not in skip:
                return msg

    async def expect(self, kind: str, *skip: str) -> pb.WorkRequest:
        msg = await self.next(*skip)
        assert msg is not None, f"the worker ended its stream; expected {kind}"
        got = msg.WhichOneof("kind")
        assert got == kind, f"expected {kind}, got {got}: {msg}"
        return msg

    async def until_credited(self, slots: int, kind: str, reports: int = 0) -> List[pb.WorkRequest]:
        """The worker's messages (pings answered and left out) until
        ``slots`` slots are credited and ``reports`` messages of ``kind``
        came; every other message must be a credit (slots freed together
        may share one)."""
        got: List[pb.WorkRequest] = []
        credited = seen = 0
        while credited < slots or seen < reports:
            msg = await self.next("ping")
            assert msg is not None, "the worker ended its stream"
            got_kind = msg.WhichOneof("kind")
            if got_kind == kind:
                seen += 1
            else:
                assert got_kind == "credit", f"expected {kind} or a credit, got {msg}"
                credited += msg.credit.slots
            got.append(msg)
        return got

    def send(self, **kind: object) -> None:
        self.out.put_nowait(pb.WorkResponse(**kind))  # type: ignore[arg-type]

    def end(self, code: Optional[grpc.StatusCode] = None) -> None:
        self.out.put_nowait(code)


class FakeServer(rpc.WorkerServiceServicer):
    """The service: hands each new stream to the test."""

    def __init__(self) -> None:
        self.streams: "asyncio.Queue[Stream]" = asyncio.Queue()
        self.server: Optional[aio.Server] = None
        self.port = 0

    async def start(self) -> str:
        self.server = aio.server()
        rpc.add_WorkerServiceServicer_to_server(self, self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        await self.server.start()
        return f"127.0.0.1:{self.port}"

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop(0)

    async def stream(self) -> Stream:
        """The next stream the worker opens."""
        return await asyncio.wait_for(self.streams.get(), WAIT)

    async def Work(self, request_iterator: AsyncIterator[pb.WorkRequest], context: aio.ServicerContext) -> AsyncIterator[pb.WorkResponse]:  # type: ignore[override]
        s = Stream()

        async def pump() -> None:
            try:
                async for msg in request_iterator:
                    s.seen.append(msg)
                    await s.inbox.put(msg)
            except Exception:
                pass
            await s.inbox.put(None)

        reader = asyncio.ensure_future(pump())
        await self.streams.put(s)
        try:
            while True:
                msg = await s.out.get()
                if msg is None:
                    return
                if isinstance(msg, grpc.StatusCode):
                    await context.abort(msg, f"the test ends the stream with {msg.name}")
                    return
                yield msg
        finally:
            reader.cancel()


def welcome(session: str = "7", resumed: Optional[List[int]] = None, lease: float = 5.0) -> pb.WorkerWelcome:
    w = pb.WorkerWelcome(session_id=session, protocol_version=1, server="fake", resumed_tokens=resumed or [])
    w.heartbeat_interval.FromMilliseconds(int(lease * 1000 / 3))
    w.lease_time.FromMilliseconds(int(lease * 1000))
    w.interrupt_grace.FromSeconds(10)
    return w


def assignment(token: int, index: int = 0, payload: str = "p", checkpoint: Optional[bytes] = None) -> pb.Assignment:
    a = pb.Assignment(
        token=token, job_id="job-1", index=index, payload=payload, attempt=1, params={"k": "v"}, job_name="j", executor="ocr"
    )
    if checkpoint is not None:
        a.checkpoint = checkpoint
    return a
