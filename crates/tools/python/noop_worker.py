#!/usr/bin/env python3
"""The Python worker of `jobvisor-bench python-worker`: a `jobvisor.Worker`
with a plain handler that does nothing (returns b"") for the executor's
items, or, for a job with the param `hold=1`, holds the item until its
`stopping` is set.

Usage: noop_worker.py SERVER EXECUTOR --slots N (with the library on
PYTHONPATH, e.g. PYTHONPATH=clients/python/src). It prints, one line each:

- `connected` once the server welcomed its session (the bench waits for
  it before starting a job);
- `started <job id>` as a held item starts;
- `stopping <time.monotonic_ns()> <reason>` as soon as a held item's
  `stopping` is set (the bench compares it with CLOCK_MONOTONIC read just
  before its PauseJob / CancelJob call: time.monotonic_ns() reads the same
  clock on Linux).

It drains and exits on SIGTERM.
"""
import argparse
import logging
import sys
import threading
import time

import jobvisor

_print = threading.Lock()


def say(line):
    """Prints one whole line at once (handlers run in several threads)."""
    with _print:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


class _Connected(logging.Handler):
    """Says `connected` when the library logs its session's welcome."""

    def emit(self, record):
        if record.getMessage().startswith("connected to"):
            say("connected")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("server")
    parser.add_argument("executor")
    parser.add_argument("--slots", type=int, default=1)
    args = parser.parse_args()
    logger = logging.getLogger("jobvisor")
    logger.setLevel(logging.INFO)
    logger.addHandler(_Connected())
    # The library's warnings and errors still reach stderr.
    errors = logging.StreamHandler(sys.stderr)
    errors.setLevel(logging.WARNING)
    logger.addHandler(errors)

    worker = jobvisor.Worker(args.server, executor=args.executor, slots=args.slots)

    @worker.handler
    def handle(item):
        if item.params.get("hold") != "1":
            return b""
        say(f"started {item.job_id}")
        item.stopping.wait()
        at = time.monotonic_ns()
        say(f"stopping {at} {item.stop_reason.value}")
        return None

    worker.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
