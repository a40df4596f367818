"""pgqueuer peer driver (public API only).

run.sh runs it with the venv it made in its temp directory; each mode runs in
its own process:

  python pgqueuer_driver.py enqueue --url URL --items N --concurrency C
      Queries.install() (untimed), then ONE Queries.enqueue() call with lists
      (entrypoints, payloads, priorities) for the N jobs; prints
      {"enqueue_seconds": ...}
  python pgqueuer_driver.py work --url URL --items N --concurrency C --enqueue-seconds S
      QueueManager.run(batch_size=C // 2, max_concurrent_tasks=C) with a no-op
      entrypoint until pgqueuer_log has N 'successful' rows; prints the result
      JSON line.

In flight: max_concurrent_tasks is pgqueuer's hard cap on a worker's picked
jobs, and it must be at least twice batch_size, so C=16 gives batch_size 8.
Completions go through pgqueuer's JobStatusLogBuffer as usual (flushed every
batch_size completions or on its timeout): one statement deletes the jobs
from the queue table and writes their 'successful' rows to pgqueuer_log.

Both modes run on uvloop when it is installed (pgqueuer depends on it), as
pgqueuer's own `pgq run` does.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import time
from importlib.metadata import version

import asyncpg
from pgqueuer import AsyncpgDriver, Job, QueueManager, Queries

ENTRYPOINT = "noop"


def peak_rss_mib() -> float | None:
    with open("/proc/self/status") as f:
        m = re.search(r"^VmHWM:\s+(\d+)\s+kB", f.read(), re.M)
    return int(m.group(1)) / 1024 if m else None


def result_line(**fields) -> str:
    run_seconds = fields.pop("run_seconds")
    items = fields["items"]
    line = {
        "system": fields.pop("system"),
        "items": items,
        "concurrency": fields.pop("concurrency"),
        "enqueue_seconds": round(fields.pop("enqueue_seconds"), 3),
        "run_seconds": None if run_seconds is None else round(run_seconds, 3),
        "items_per_second": None if not run_seconds else round(items / run_seconds, 1),
        "rss_mib": round(fields.pop("rss_mib"), 1),
    }
    fields.pop("items")
    if fields.get("note"):
        line["note"] = fields.pop("note")
    line.update(fields)
    return json.dumps(line)


async def enqueue(args) -> bool:
    conn = await asyncpg.connect(args.url)
    try:
        queries = Queries(AsyncpgDriver(conn))
        await queries.install()
        n = args.items
        payloads = [str(i).encode() for i in range(n)]
        t0 = time.perf_counter()
        ids = await queries.enqueue([ENTRYPOINT] * n, payloads, [0] * n)
        seconds = time.perf_counter() - t0
        if len(ids) != n:
            raise RuntimeError(f"enqueue returned {len(ids)} ids")
        print(json.dumps({"enqueue_seconds": seconds, "bulk_api": "Queries.enqueue(lists)"}))
        return True
    finally:
        await conn.close()


async def work(args) -> bool:
    n, c = args.items, args.concurrency
    batch_size = max(1, c // 2)
    counts = bytearray(n)
    executed = 0
    all_executed = asyncio.Event()

    conn = await asyncpg.connect(args.url)
    probe = await asyncpg.connect(args.url)
    qm = QueueManager(Queries(AsyncpgDriver(conn)))

    @qm.entrypoint(ENTRYPOINT)
    async def noop(job: Job) -> None:
        nonlocal executed
        i = int(job.payload)
        if counts[i] == 0:
            executed += 1
            if executed == n:
                all_executed.set()
        counts[i] = min(counts[i] + 1, 255)

    async def count_completed() -> int:
        return await probe.fetchval(
            "select count(*) from pgqueuer_log where entrypoint = $1 and status = 'successful'",
            ENTRYPOINT,
        )

    t0 = time.perf_counter()
    runner = asyncio.create_task(qm.run(batch_size=batch_size, max_concurrent_tasks=c))
    waiter = asyncio.create_task(all_executed.wait())
    # Give up after 10 minutes; the checks below then report what is missing.
    await asyncio.wait({runner, waiter}, timeout=600, return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    if runner.done():
        runner.result()  # raises what stopped the worker
        raise RuntimeError("QueueManager.run() returned before the jobs ran")
    deadline = time.perf_counter() + 120
    completed = 0
    end = None
    while True:
        completed = await count_completed()
        if completed >= n:
            end = time.perf_counter()
            break
        if time.perf_counter() > deadline:
            break
        await asyncio.sleep(0.002)
    rss = peak_rss_mib()
    duplicates = sum(1 for x in counts if x > 1)
    missing = sum(1 for x in counts if x == 0)
    left = await probe.fetchval("select count(*) from pgqueuer")
    distinct = await probe.fetchval(
        "select count(distinct job_id) from pgqueuer_log where entrypoint = $1 and status = 'successful'",
        ENTRYPOINT,
    )

    note = (
        f"QueueManager.run(batch_size={batch_size}, max_concurrent_tasks={c}); "
        "completions via pgqueuer's buffered status log; "
        f"event loop {'uvloop' if 'uvloop' in sys.modules else 'asyncio'}"
    )
    if end is None:
        note += f"; TIMED OUT with {completed} completed"
    verified = (
        completed == n and distinct == n and left == 0 and duplicates == 0 and missing == 0
    )
    print(
        result_line(
            system="pgqueuer",
            items=n,
            concurrency=c,
            enqueue_seconds=args.enqueue_seconds,
            run_seconds=None if end is None else end - t0,
            rss_mib=rss,
            note=note,
            version=f"pgqueuer {version('pgqueuer')}, asyncpg {version('asyncpg')}, "
            f"python {sys.version.split()[0]}"
            + (f", uvloop {version('uvloop')}" if "uvloop" in sys.modules else ""),
            bulk_enqueue="Queries.enqueue with lists (one call)",
            completed=completed,
            completed_distinct=distinct,
            executed=executed,
            duplicates=duplicates,
            missing=missing,
            queue_rows_left=left,
            verified=verified,
        ),
        flush=True,
    )
    if not verified:
        print(
            f"ERROR: pgqueuer: not every job ran exactly once and was completed: "
            f"{completed} of {n} completed in the database, {executed} ran, "
            f"{missing} never ran, {duplicates} ran more than once, {left} left in the queue",
            file=sys.stderr,
        )
    qm.shutdown.set()
    try:
        await asyncio.wait_for(runner, timeout=10)
    except (asyncio.TimeoutError, Exception) as e:  # shutting down; the result is out
        print(f"[pgqueuer] shutdown: {e!r}", file=sys.stderr)
    await probe.close()
    await conn.close()
    return verified


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["enqueue", "work"])
    p.add_argument("--url", required=True)
    p.add_argument("--items", type=int, required=True)
    p.add_argument("--concurrency", type=int, required=True)
    p.add_argument("--enqueue-seconds", type=float, default=0.0)
    args = p.parse_args()
    coro = enqueue(args) if args.mode == "enqueue" else work(args)
    try:
        import uvloop
    except ImportError:
        ok = asyncio.run(coro)
    else:
        ok = uvloop.run(coro)
    sys.exit(0 if ok else 3)


if __name__ == "__main__":
    main()
