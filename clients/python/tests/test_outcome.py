"""How a handler's return or exception becomes its item's report, and the
reconnect waits: pure rules, no server."""

from __future__ import annotations

import datetime
import unittest

import jobvisor
from jobvisor import _outcome


def crash(depth: int) -> None:
    if depth == 0:
        raise KeyError("frame-7")
    crash(depth - 1)


class ErrorTextTest(unittest.TestCase):
    def test_the_last_lines_of_the_traceback_end_with_the_exception(self) -> None:
        try:
            crash(20)
        except KeyError as e:
            text = _outcome.error_text(e)
        lines = text.splitlines()
        self.assertEqual(lines[-1], "KeyError: 'frame-7'")
        self.assertLessEqual(len(lines), _outcome.ERROR_LINES)
        self.assertIn("in crash", text)
        self.assertIn('raise KeyError("frame-7")', text)
        # The outermost frames are cut, and no caret markers are kept.
        self.assertNotIn("Traceback (most recent call last)", text)
        self.assertFalse([line for line in lines if set(line.strip()) <= set("^~")])

    def test_a_long_message_is_cut_from_the_front(self) -> None:
        try:
            raise ValueError("x" * 5000 + " the end")
        except ValueError as e:
            text = _outcome.error_text(e)
        self.assertEqual(len(text), _outcome.MAX_ERROR_CHARS)
        self.assertTrue(text.startswith("…"))
        self.assertTrue(text.endswith(" the end"))

    def test_chained_exceptions_keep_the_last(self) -> None:
        try:
            try:
                raise OSError("disk")
            except OSError as inner:
                raise RuntimeError("could not write frame") from inner
        except RuntimeError as e:
            text = _outcome.error_text(e)
        self.assertTrue(text.endswith("RuntimeError: could not write frame"))


class OutcomeTest(unittest.TestCase):
    def kind(self, msg: object) -> str:
        return msg.WhichOneof("kind")  # type: ignore[attr-defined]

    def test_a_result_succeeds(self) -> None:
        for returned, text in [("ok", "ok"), (b"caf\xc3\xa9", "café"), (None, ""), (bytearray(b"x"), "x")]:
            msg = _outcome.outcome(3, returned=returned)
            self.assertEqual((self.kind(msg), msg.succeeded.token, msg.succeeded.result), ("succeeded", 3, text))

    def test_a_return_after_stopping_is_stopped_unless_done(self) -> None:
        self.assertEqual(self.kind(_outcome.outcome(3, returned="partial", stopping=True)), "stopped")
        self.assertEqual(self.kind(_outcome.outcome(3, returned=None, stopping=True)), "stopped")
        done = _outcome.outcome(3, returned=jobvisor.Done("all"), stopping=True)
        self.assertEqual((self.kind(done), done.succeeded.result), ("succeeded", "all"))

    def test_exceptions_fail_the_attempt(self) -> None:
        f = _outcome.outcome(3, raised=ValueError("bad"), stopping=True).failed
        self.assertEqual((f.error, f.permanent, f.HasField("retry_after")), ("ValueError: bad", False, False))
        f = _outcome.outcome(3, raised=jobvisor.Fail("not a video")).failed
        self.assertEqual((f.error, f.permanent), ("not a video", True))
        f = _outcome.outcome(3, raised=jobvisor.Retry("429", after=1.5)).failed
        self.assertEqual((f.error, f.permanent, f.retry_after.seconds, f.retry_after.nanos), ("429", False, 1, 500_000_000))
        f = _outcome.outcome(3, raised=jobvisor.Retry(after=datetime.timedelta(minutes=2))).failed
        self.assertEqual((f.error, f.retry_after.seconds), ("the handler asked for a retry", 120))

    def test_a_result_that_cannot_be_sent_fails_saying_why(self) -> None:
        f = _outcome.outcome(3, returned=b"\xff\xfe").failed
        self.assertIn("not UTF-8", f.error)
        f = _outcome.outcome(3, returned={"a": 1}).failed
        self.assertIn("returned a dict", f.error)
        f = _outcome.outcome(3, returned="x" * (64 * 1024 + 1)).failed
        self.assertIn("65537 bytes; at most 65536", f.error)

    def test_a_success_carries_its_skip_and_counters_and_other_outcomes_drop_them(self) -> None:
        done = _outcome.outcome(3, returned=None, skip_reason="exists", counters={"frames": 7}).succeeded
        self.assertEqual((done.skip_reason, dict(done.counters)), ("exists", {"frames": 7}))
        plain = _outcome.outcome(3, returned="ok").succeeded
        self.assertEqual((plain.skip_reason, dict(plain.counters)), ("", {}))
        failed = _outcome.outcome(3, raised=ValueError("x"), counters={"frames": 7})
        self.assertEqual(self.kind(failed), "failed")
        stopped = _outcome.outcome(3, returned=None, stopping=True, counters={"frames": 7})
        self.assertEqual(self.kind(stopped), "stopped")

    def test_counts_and_skips_are_checked_where_they_are_made(self) -> None:
        from jobvisor import _item
        from jobvisor.v1 import worker_pb2 as pb

        item = _item.Item(None, pb.Assignment(token=1, index=0))  # type: ignore[arg-type]
        item.count("frames", 120)
        item.count("frames")
        item.count("faces_2", 0)
        self.assertEqual(item.counters, {"frames": 121, "faces_2": 0})
        for bad in ["", "Frames", "2x", "a-b", "x" * 65]:
            with self.assertRaisesRegex(ValueError, "must start with a-z"):
                item.count(bad)
        with self.assertRaisesRegex(ValueError, "negative"):
            item.count("frames", -1)
        with self.assertRaisesRegex(ValueError, "not a whole number"):
            item.count("frames", 1.5)  # type: ignore[arg-type]
        for i in range(30):
            item.count(f"c{i}")
        with self.assertRaisesRegex(ValueError, "at most 32 counters"):
            item.count("one_more")
        self.assertEqual(len(item.counters), 32)
        with self.assertRaisesRegex(ValueError, "needs a reason"):
            item.skip("")
        item.skip("exists")
        self.assertEqual(item.skip_reason, "exists")

    def test_bad_arguments_are_named(self) -> None:
        with self.assertRaisesRegex(ValueError, "0 or more seconds"):
            jobvisor.Retry(after=-1)
        with self.assertRaisesRegex(ValueError, "slots must be an integer from 1 to 1024"):
            jobvisor.Worker("127.0.0.1:1", executor="x", slots=0)
        with self.assertRaisesRegex(ValueError, "1 to 16 executors"):
            jobvisor.Worker("127.0.0.1:1", executor=[])
        with self.assertRaisesRegex(ValueError, "come together"):
            jobvisor.Worker("127.0.0.1:1", executor="x", client_cert=b"-----BEGIN")
        with self.assertRaisesRegex(ValueError, "cannot read the root certificate"):
            jobvisor.Worker("127.0.0.1:1", executor="x", root_cert="/nonexistent/ca.pem")


class BackoffTest(unittest.TestCase):
    def test_doubles_with_jitter_up_to_the_cap(self) -> None:
        low = [_outcome.backoff(n, 0.1, 10.0, rand=lambda: 0.0) for n in range(10)]
        high = [_outcome.backoff(n, 0.1, 10.0, rand=lambda: 1.0) for n in range(10)]
        self.assertEqual(high[:4], [0.1, 0.2, 0.4, 0.8])
        self.assertEqual(low[:2], [0.05, 0.1])
        self.assertEqual(high[-1], 10.0)
        self.assertEqual(low[-1], 5.0)
        self.assertEqual(_outcome.backoff(10_000, 0.1, 10.0, rand=lambda: 1.0), 10.0)


if __name__ == "__main__":
    unittest.main()
