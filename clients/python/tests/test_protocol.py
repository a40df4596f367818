"""The worker against a scripted WorkerService (tests/fake_server.py): the
protocol as worker.proto states it, message by message: hello, slots and
credits, checkpoints answered, interrupts, resumed sessions, the drain."""

from __future__ import annotations

import asyncio
import threading
import unittest

import grpc

import jobvisor
from fake_server import FakeServer, Stream, assignment, welcome
from jobvisor.v1 import worker_pb2 as pb


class ProtocolTest(unittest.IsolatedAsyncioTestCase):
    async def asyncSetUp(self) -> None:
        self.fake = FakeServer()
        self.target = await self.fake.start()
        self.runs: list = []

    async def asyncTearDown(self) -> None:
        for worker, run in self.runs:
            worker.stop()
            run.cancel()
            try:
                await run
            except (asyncio.CancelledError, Exception):
                pass
        await self.fake.stop()

    def start(self, worker: jobvisor.Worker) -> "asyncio.Task[None]":
        run = asyncio.ensure_future(worker.serve())
        self.runs.append((worker, run))
        return run

    async def connect(self, worker: jobvisor.Worker, session: str = "7") -> Stream:
        self.start(worker)
        s = await self.fake.stream()
        hello = (await s.expect("hello")).hello
        self.assertEqual(hello.protocol_version, 1)
        s.send(welcome=welcome(session))
        return s

    async def test_hello_slots_checkpoint_outcome_then_credit(self) -> None:
        worker = jobvisor.Worker(self.target, executor=["ocr", "pdf"], slots=2, name="w1")
        seen = []

        @worker.handler
        def handle(item: jobvisor.Item) -> str:
            seen.append((item.index, item.payload, item.checkpoint, dict(item.params), item.job_id))
            item.progress(0.5)
            item.save_checkpoint(b"frame=1")
            seen.append(item.checkpoint)
            return "done " + item.payload

        self.start(worker)
        s = await self.fake.stream()
        hello = (await s.expect("hello")).hello
        self.assertEqual((hello.worker_name, list(hello.executors), hello.slots), ("w1", ["ocr", "pdf"], 2))
        self.assertEqual((hello.resume_session_id, list(hello.held_tokens)), ("", []))
        self.assertTrue(hello.build_id.startswith("jobvisor-python/"))
        s.send(welcome=welcome())
        s.send(assignments=pb.WorkerAssignments(items=[assignment(11, index=3, payload="a", checkpoint=b"frame=0")]))
        progress = await s.expect("progress")
        self.assertEqual((progress.progress.token, progress.progress.fraction), (11, 0.5))
        cp = (await s.expect("checkpoint")).checkpoint
        self.assertEqual((cp.token, cp.data), (11, b"frame=1"))
        # The handler waits for the answer: nothing else comes meanwhile.
        with self.assertRaises(asyncio.TimeoutError):
            await asyncio.wait_for(s.next(), 0.3)
        s.send(checkpoint_saved=pb.CheckpointSaved(token=11, checkpoint_id=cp.checkpoint_id))
        done = (await s.expect("succeeded")).succeeded
        self.assertEqual((done.token, done.result), (11, "done a"))
        credit = (await s.expect("credit")).credit
        self.assertEqual(credit.slots, 1)
        self.assertEqual(seen, [(3, "a", b"frame=0", {"k": "v"}, "job-1"), b"frame=1"])

    async def test_never_more_items_than_slots_and_credit_after_the_handler_returned(self) -> None:
        worker = jobvisor.Worker(self.target, executor="ocr", slots=2)
        release = threading.Event()
        running = []

        @worker.handler
        def handle(item: jobvisor.Item) -> None:
            running.append(item.token)
            release.wait(10)

        s = await self.connect(worker)
        s.send(assignments=pb.WorkerAssignments(items=[assignment(1), assignment(2), assignment(3)]))
        # The third is over the slots: given back unstarted, no credit.
        stopped = await s.expect("stopped")
        self.assertEqual(stopped.stopped.token, 3)
        with self.assertRaises(asyncio.TimeoutError):
            await asyncio.wait_for(s.next(), 0.3)
        self.assertEqual(sorted(running), [1, 2])
        release.set()
        # Each credit after the outcomes it frees slots for (slots freed
        # together may share one credit).
        outcomes = credits = 0
        for msg in await s.until_credited(2, "succeeded"):
            if msg.WhichOneof("kind") == "succeeded":
                outcomes += 1
            else:
                credits += msg.credit.slots
                self.assertLessEqual(credits, outcomes)
        self.assertEqual(outcomes, 2)

    async def test_what_queued_up_goes_in_one_batch_when_the_server_takes_batches(self) -> None:
        worker = jobvisor.Worker(self.target, executor="ocr", slots=8)
        go = asyncio.Event()

        @worker.handler
        async def handle(item: jobvisor.AsyncItem) -> str:
            await go.wait()
            return f"r{item.token}"

        self.start(worker)
        s = await self.fake.stream()
        await s.expect("hello")
        w = welcome()
        w.batches = True
        s.send(welcome=w)
        s.send(assignments=pb.WorkerAssignments(items=[assignment(t, index=t) for t in range(1, 9)]))
        await asyncio.sleep(0.2)
        go.set()
        # The eight outcomes come in one turn of the loop: one message
        # carries them and the one credit for their slots, in order.
        msg = await s.expect("batch", "ping")
        inner = list(msg.batch.messages)
        self.assertEqual([m.WhichOneof("kind") for m in inner], ["succeeded"] * 8 + ["credit"])
        self.assertEqual({m.succeeded.token: m.succeeded.result for m in inner[:8]}, {t: f"r{t}" for t in range(1, 9)})
        self.assertEqual(inner[8].credit.slots, 8)

    async def test_failures_retries_and_permanent_failures(self) -> None:
        worker = jobvisor.Worker(self.target, executor="ocr", slots=3)

        @worker.handler
        async def handle(item: jobvisor.AsyncItem) -> None:
            if item.payload == "crash":
                raise ValueError("frame 7 is corrupt")
            if item.payload == "later":
                raise jobvisor.Retry("rate limited", after=30)
            raise jobvisor.Fail("not a video")

        s = await self.connect(worker)
        s.send(assignments=pb.WorkerAssignments(items=[assignment(1, payload="crash")]))
        f = (await s.expect("failed")).failed
        self.assertFalse(f.permanent)
        self.assertIn("ValueError: frame 7 is corrupt", f.error)
        self.assertIn("in handle", f.error)
        self.assertFalse(f.HasField("retry_after"))
        await s.expect("credit")
        s.send(assignments=pb.WorkerAssignments(items=[assignment(2, payload="later")]))
        f = (await s.expect("failed")).failed
        self.assertEqual((f.error, f.permanent, f.retry_after.seconds), ("rate limited", False, 30))
        await s.expect("credit")
        s.send(assignments=pb.WorkerAssignments(items=[assignment(3, payload="x")]))
        f = (await s.expect("failed")).failed
        self.assertEqual((f.error, f.permanent), ("not a video", True))

    async def test_a_skip_and_counters_ride_on_the_success_only(self) -> None:
        worker = jobvisor.Worker(self.target, executor="ocr", slots=1)

        @worker.handler
        def handle(item: jobvisor.Item) -> None:
            item.count("pages", 3)
            if item.payload == "old":
                item.skip("already scanned")
                return None
            raise ValueError("torn page")

        s = await self.connect(worker)
        s.send(assignments=pb.WorkerAssignments(items=[assignment(1, payload="old")]))
        done = (await s.expect("succeeded")).succeeded
        self.assertEqual((done.skip_reason, dict(done.counters)), ("already scanned", {"pages": 3}))
        await s.expect("credit")
        # A failure reports no counters: the protocol's failure has none.
        s.send(assignments=pb.WorkerAssignments(items=[assignment(2, payload="new")]))
        f = (await s.expect("failed")).failed
        self.assertIn("torn page", f.error)

    async def test_an_interrupt_sets_stopping_and_the_item_is_reported_stopped(self) -> None:
        worker = jobvisor.Worker(self.target, executor="ocr", slots=1)
        reasons = []

        @worker.handler
        async def handle(item: jobvisor.AsyncItem) -> str:
            self.assertTrue(await item.wait_stopping(10))
            reasons.append(item.stop_reason)
            await item.save_checkpoint(b"frame=9")
            return "partial"  # a plain return after an interrupt: stopped

        s = await self.connect(worker)
        s.send(assignments=pb.WorkerAssignments(items=[assignment(5)]))
        await asyncio.sleep(0.1)
        s.send(interrupt=pb.WorkerInterrupt(tokens=[5], reason=pb.INTERRUPT_REASON_CANCEL))
        cp = (await s.expect("checkpoint")).checkpoint
        s.send(checkpoint_saved=pb.CheckpointSaved(token=5, checkpoint_id=cp.checkpoint_id))
        self.assertEqual((await s.expect("stopped")).stopped.token, 5)
        await s.expect("credit")
        self.assertEqual(reasons, [jobvisor.StopReason.CANCEL])

    async def test_done_reports_success_even_after_an_interrupt(self) -> None:
        worker = jobvisor.Worker(self.target, executor="ocr", slots=1)

        @worker.handler
        def handle(item: jobvisor.Item) -> jobvisor.Done:
            item.stopping.wait(10)
            return jobvisor.Done(b"finished anyway")

        s = await self.connect(worker)
        s.send(assignments=pb.WorkerAssignments(items=[assignment(5)]))
        await asyncio.sleep(0.1)
        s.send(interrupt=pb.WorkerInterrupt(tokens=[5], reason=pb.INTERRUPT_REASON_PAUSE))
        self.assertEqual((await s.expect("succeeded")).succeeded.result, "finished anyway")

    async def test_a_refused_checkpoint_and_a_revoked_item_raise_in_the_handler(self) -> None:
        worker = jobvisor.Worker(self.target, executor="ocr", slots=1)
        raised = []

        @worker.handler
        def handle(item: jobvisor.Item) -> None:
            for _ in range(2):
                try:
                    item.save_checkpoint(b"x" * 10)
                except (jobvisor.CheckpointRefused, jobvisor.ItemRevoked) as e:
                    raised.append(e)
            raised.append(item.stop_reason)

        s = await self.connect(worker)
        s.send(assignments=pb.WorkerAssignments(items=[assignment(8)]))
        cp = (await s.expect("checkpoint")).checkpoint
        s.send(refused=pb.WorkerRefused(token=8, checkpoint_id=cp.checkpoint_id, reason="NOT_SAVED", message="disk full"))
        await s.expect("checkpoint")
        s.send(revoked=pb.WorkerRevoked(token=8, reason="it did not stop in time"))
        # A revoked item is not reported; its slot is credited once the
        # handler returned.
        await s.expect("credit")
        self.assertIsInstance(raised[0], jobvisor.CheckpointRefused)
        self.assertEqual((raised[0].reason, raised[0].message), ("NOT_SAVED", "disk full"))
        self.assertIsInstance(raised[1], jobvisor.ItemRevoked)
        self.assertEqual(raised[2], jobvisor.StopReason.REVOKED)
        self.assertFalse([m for m in s.seen if m.WhichOneof("kind") in ("succeeded", "failed", "stopped")])

    async def test_a_broken_stream_resumes_the_session_with_the_items_in_flight(self) -> None:
        worker = jobvisor.Worker(self.target, executor="ocr", slots=3, reconnect_initial=0.05)
        release = threading.Event()

        @worker.handler
        def handle(item: jobvisor.Item) -> str:
            if item.payload == "quick":
                return "quick"
            item.save_checkpoint(b"half")
            release.wait(10)
            return "slow"

        s = await self.connect(worker, session="42")
        s.send(assignments=pb.WorkerAssignments(items=[assignment(1, payload="slow"), assignment(2, payload="slow")]))
        cps = [(await s.expect("checkpoint")).checkpoint for _ in range(2)]
        # The stream breaks before the checkpoints are answered.
        s.end(grpc.StatusCode.UNAVAILABLE)
        s2 = await self.fake.stream()
        hello = (await s2.expect("hello")).hello
        self.assertEqual(hello.resume_session_id, "42")
        self.assertEqual(sorted(hello.held_tokens), [1, 2])
        self.assertEqual(hello.slots, 1, "only the free slots")
        # Item 2 was lost meanwhile: revoked; item 1 continues, its
        # checkpoint sent again.
        s2.send(welcome=welcome("42", resumed=[1]))
        again = (await s2.expect("checkpoint")).checkpoint
        self.assertEqual((again.token, again.data), (1, b"half"))
        s2.send(checkpoint_saved=pb.CheckpointSaved(token=1, checkpoint_id=again.checkpoint_id))
        release.set()
        # Item 1's success, and both slots credited (in one credit or two).
        got = await s2.until_credited(2, "succeeded")
        succeeded = [m.succeeded.token for m in got if m.WhichOneof("kind") == "succeeded"]
        credits = sum(m.credit.slots for m in got if m.WhichOneof("kind") == "credit")
        self.assertEqual((succeeded, credits), ([1], 2))
        self.assertTrue(cps)

    async def test_an_outcome_the_server_may_not_have_read_is_sent_again_after_a_resume(self) -> None:
        worker = jobvisor.Worker(self.target, executor="ocr", slots=2, reconnect_initial=0.05)

        @worker.handler
        def handle(item: jobvisor.Item) -> str:
            return "r" + str(item.token)

        s = await self.connect(worker, session="9")
        s.send(assignments=pb.WorkerAssignments(items=[assignment(4)]))
        await s.expect("succeeded")
        await s.expect("credit")
        # No ping answered since: the server may not have read it.
        s.end(grpc.StatusCode.UNAVAILABLE)
        s2 = await self.fake.stream()
        hello = (await s2.expect("hello")).hello
        self.assertEqual((list(hello.held_tokens), hello.slots), ([4], 1))
        s2.send(welcome=welcome("9", resumed=[4]))
        self.assertEqual((await s2.expect("succeeded")).succeeded.result, "r4")
        await s2.expect("credit")

    async def test_silence_for_the_lease_time_breaks_the_stream(self) -> None:
        worker = jobvisor.Worker(self.target, executor="ocr", slots=1, reconnect_initial=0.05)
        worker.handler(lambda item: None)
        self.start(worker)
        s = await self.fake.stream()
        await s.expect("hello")
        s.send(welcome=welcome(lease=0.6))
        # Pings unanswered: the worker gives the stream up and resumes.
        msg = await asyncio.wait_for(s.inbox.get(), 2)
        self.assertEqual(msg.WhichOneof("kind"), "ping")
        s2 = await self.fake.stream()
        self.assertEqual((await s2.expect("hello")).hello.resume_session_id, "7")

    async def test_drain_stops_items_reports_them_and_ends(self) -> None:
        worker = jobvisor.Worker(self.target, executor="ocr", slots=2)
        reasons = []

        @worker.handler
        def handle(item: jobvisor.Item) -> None:
            item.stopping.wait(10)
            reasons.append(item.stop_reason)

        run = self.start(worker)
        s = await self.fake.stream()
        await s.expect("hello")
        s.send(welcome=welcome())
        s.send(assignments=pb.WorkerAssignments(items=[assignment(1)]))
        await asyncio.sleep(0.1)
        worker.stop()
        await s.expect("drain")
        # An item the server sent before it read the drain goes back unstarted.
        s.send(assignments=pb.WorkerAssignments(items=[assignment(2)]))
        # Both reported stopped, both slots credited (in one credit or two).
        got = await s.until_credited(2, "stopped", reports=2)
        stopped = [m.stopped.token for m in got if m.WhichOneof("kind") == "stopped"]
        credits = sum(m.credit.slots for m in got if m.WhichOneof("kind") == "credit")
        self.assertEqual((sorted(stopped), credits), ([1, 2], 2))
        self.assertIsNone(await s.next("ping"), "the worker ends its side once the server read everything")
        s.end()
        await asyncio.wait_for(run, 5)
        self.assertEqual(reasons, [jobvisor.StopReason.DRAIN])

    async def test_a_refused_session_is_an_error(self) -> None:
        worker = jobvisor.Worker(self.target, executor="ocr", slots=1)
        worker.handler(lambda item: None)
        run = self.start(worker)
        s = await self.fake.stream()
        await s.expect("hello")
        s.end(grpc.StatusCode.FAILED_PRECONDITION)
        with self.assertRaises(jobvisor.WorkerError) as caught:
            await asyncio.wait_for(run, 5)
        self.assertIn("FAILED_PRECONDITION", str(caught.exception))

    async def test_an_unreachable_server_is_retried(self) -> None:
        await self.fake.stop()
        port = self.fake.port
        worker = jobvisor.Worker(f"127.0.0.1:{port}", executor="ocr", slots=1, reconnect_initial=0.05, reconnect_max=0.2)
        worker.handler(lambda item: None)
        self.start(worker)
        await asyncio.sleep(0.5)
        self.fake = FakeServer()
        self.fake.server = None
        from grpc import aio

        from jobvisor.v1 import worker_pb2_grpc as rpc

        server = aio.server()
        rpc.add_WorkerServiceServicer_to_server(self.fake, server)
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        self.fake.server = server
        s = await self.fake.stream()
        self.assertEqual((await s.expect("hello")).hello.slots, 1)


if __name__ == "__main__":
    unittest.main()
