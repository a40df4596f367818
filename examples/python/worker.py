#!/usr/bin/env python3
"""A jobvisor worker in Python: it "processes the frames" of each item,
saving a checkpoint after every frame, and stops at a frame boundary when
told to (an immediate pause, a cancel, a server shutdown, or its own
SIGTERM / Ctrl-C drain).

Install the library (from the repository root) and run it against a server
that declares the executor remote:

    pip install ./clients/python
    jobvisor serve --remote-executor frames &
    python3 examples/python/worker.py 127.0.0.1:50051 frames

then start a job of that executor (each item is a clip; the job's params say
how many frames a clip has and how long a frame takes):

    jobvisor start --name clips --executor frames --concurrency 3 \
        --param frames=20 --param frame_ms=100 --item clip-1 --item clip-2 --item clip-3

Arguments: the server's address (or JOBVISOR_SERVER, default
127.0.0.1:50051) and the executor's name (or JOBVISOR_EXECUTOR, default
frames). Options: --slots N (items at once, default 2), --async (an
`async def` handler instead of a plain one), --token (or JOBVISOR_TOKEN),
--ca-cert (or JOBVISOR_CA_CERT: TLS, verifying the server with this CA),
--client-cert and --client-key (or JOBVISOR_CLIENT_CERT / _KEY: mTLS).

A clip whose name starts with `done:` was processed before: it is skipped
(it succeeds, marked skipped, without the work). Each finished clip adds its
frames to the job's `frames` counter.

It prints one line per event (started, stopping, done, skipped), for people
and for the tests that run it.
"""
import argparse
import asyncio
import logging
import os
import sys
import threading
import time

import jobvisor


_print = threading.Lock()


def say(line):
    """Prints one whole line, in one write: handlers run in several threads,
    and the library's log lines may go to the same file (print writes the
    line and its end apart when the output is unbuffered)."""
    with _print:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def start_frame(item):
    """The frame to continue from: the checkpoint's, or the first."""
    if item.checkpoint:
        return int(item.checkpoint.decode().split("=", 1)[1])
    return 0


def params(item):
    return int(item.params.get("frames", "10")), float(item.params.get("frame_ms", "100")) / 1000


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("address", nargs="?", default=os.environ.get("JOBVISOR_SERVER", "127.0.0.1:50051"))
    parser.add_argument("executor", nargs="?", default=os.environ.get("JOBVISOR_EXECUTOR", "frames"))
    parser.add_argument("--slots", type=int, default=2)
    parser.add_argument("--async", dest="use_async", action="store_true")
    parser.add_argument("--token", default=os.environ.get("JOBVISOR_TOKEN"))
    parser.add_argument("--ca-cert", default=os.environ.get("JOBVISOR_CA_CERT"))
    parser.add_argument("--client-cert", default=os.environ.get("JOBVISOR_CLIENT_CERT"))
    parser.add_argument("--client-key", default=os.environ.get("JOBVISOR_CLIENT_KEY"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    worker = jobvisor.Worker(
        args.address,
        executor=args.executor,
        slots=args.slots,
        token=args.token,
        root_cert=args.ca_cert,
        client_cert=args.client_cert,
        client_key=args.client_key,
    )

    if args.use_async:

        @worker.handler
        async def handle(item):
            frames, pause = params(item)
            frame = start_frame(item)
            say(f"started item={item.index} attempt={item.attempt} frame={frame} job={item.job_id}")
            if item.payload.startswith("done:"):
                # Processed before (its output exists): succeeds, marked
                # skipped, without doing the work again.
                item.skip("the clip's output exists")
                say(f"skipped item={item.index}")
                return None
            while frame < frames:
                if await item.wait_stopping(pause):
                    say(f"stopping item={item.index} frame={frame} reason={item.stop_reason.value}")
                    return None
                frame += 1
                try:
                    await item.save_checkpoint(f"frame={frame}".encode())
                except jobvisor.ItemRevoked:
                    # No longer ours (we were gone past the lease): stop.
                    say(f"stopping item={item.index} frame={frame - 1} reason=revoked")
                    return None
                item.progress(frame / frames)
            say(f"done item={item.index} frames={frames}")
            # Counted once per clip, by the attempt that finishes it,
            # whatever attempts came before (counters of attempts that do
            # not succeed are dropped).
            item.count("frames", frames)
            return f"{item.payload}: {frames} frames"

    else:

        @worker.handler
        def handle(item):
            frames, pause = params(item)
            frame = start_frame(item)
            say(f"started item={item.index} attempt={item.attempt} frame={frame} job={item.job_id}")
            if item.payload.startswith("done:"):
                # Processed before (its output exists): succeeds, marked
                # skipped, without doing the work again.
                item.skip("the clip's output exists")
                say(f"skipped item={item.index}")
                return None
            while frame < frames:
                if item.stopping.wait(pause):
                    say(f"stopping item={item.index} frame={frame} reason={item.stop_reason.value}")
                    return None
                frame += 1
                try:
                    item.save_checkpoint(f"frame={frame}".encode())
                except jobvisor.ItemRevoked:
                    # No longer ours (we were gone past the lease): stop.
                    say(f"stopping item={item.index} frame={frame - 1} reason=revoked")
                    return None
                item.progress(frame / frames)
            say(f"done item={item.index} frames={frames}")
            # Counted once per clip, by the attempt that finishes it,
            # whatever attempts came before (counters of attempts that do
            # not succeed are dropped).
            item.count("frames", frames)
            return f"{item.payload}: {frames} frames"

    say(f"worker pid={os.getpid()} serves {args.executor!r} at {args.address} ({'async' if args.use_async else 'threads'})")
    started = time.monotonic()
    try:
        worker.run()
    except jobvisor.WorkerError as e:
        say(f"worker refused: {e}")
        return 2
    say(f"worker exits after {time.monotonic() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
