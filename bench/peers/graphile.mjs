// graphile-worker peer driver (public API only). run.sh copies it into its
// temp directory next to the installed node_modules and runs it twice per
// configuration, each time in its own process:
//
//   node graphile.mjs enqueue --url URL --items N --concurrency C
//     installs the schema (untimed), then enqueues N jobs with ONE
//     WorkerUtils.addJobs() call (graphile_worker.add_jobs) and prints
//     {"enqueue_seconds": …}
//   node graphile.mjs work --url URL --items N --concurrency C
//                          --config default|perf --enqueue-seconds S
//     runs a worker with concurrentJobs=C and a no-op task until the
//     database has no job left, and prints the result JSON line.
//
// --config default: graphile-worker's defaults, except concurrentJobs = C and
//                   maxPoolSize = max(10, C + 1) (the default pool of 10 is
//                   smaller than C = 16, and graphile-worker warns that this
//                   "may lead to non-optimal performance"; C + 1 is how its
//                   perf test sizes the pool). No local queue, unbatched
//                   completion (one complete_jobs call per job).
// --config perf:    the settings of graphile-worker's own perfTest/graphile.config.js:
//                   maxPoolSize C + 1, localQueue {size: 500, refetchDelay
//                   {durationMs: 10}}, completeJobBatchDelay 0,
//                   failJobBatchDelay 0 (batched completion, no delay), and
//                   preparedStatements true (the default, set explicitly).
//
// run.sh sets NO_LOG_SUCCESS=1 for both, as graphile-worker's perf test does
// (it is read when the module loads; the logger here drops info lines anyway).

import pg from "pg";
import { Logger, makeWorkerUtils, run, runMigrations } from "graphile-worker";
import {
  executionTracker,
  now,
  packageVersion,
  parseArgs,
  peakRssMib,
  report,
  untilAllExecuted,
  waitCommitted,
} from "./common.mjs";

const opts = parseArgs(process.argv.slice(2));
const TASK = "noop";

// Warnings and errors to stderr; stdout carries only the JSON line.
const logger = new Logger(() => (level, message) => {
  if (level === "error" || level === "warning") console.error(`[graphile-worker ${level}] ${message}`);
});

function workerPreset(config, concurrency) {
  const worker = { connectionString: opts.url, concurrentJobs: concurrency };
  if (config === "perf") {
    Object.assign(worker, {
      maxPoolSize: concurrency + 1,
      preparedStatements: true,
      localQueue: { size: 500, refetchDelay: { durationMs: 10 } },
      completeJobBatchDelay: 0,
      failJobBatchDelay: 0,
    });
  } else if (config === "default") {
    if (concurrency + 1 > 10) worker.maxPoolSize = concurrency + 1;
  } else {
    throw new Error(`--config must be default or perf, not ${config}`);
  }
  return { worker };
}

async function enqueue() {
  const utils = await makeWorkerUtils({ connectionString: opts.url, logger });
  try {
    await utils.migrate();
    const specs = Array.from({ length: opts.items }, (_, i) => ({
      identifier: TASK,
      payload: { i },
    }));
    const t0 = now();
    const jobs = await utils.addJobs(specs);
    const seconds = now() - t0;
    if (jobs.length !== opts.items) throw new Error(`addJobs returned ${jobs.length} jobs`);
    console.log(JSON.stringify({ enqueue_seconds: seconds, bulk_api: "WorkerUtils.addJobs" }));
  } finally {
    await utils.release();
  }
}

async function work() {
  const config = opts.config ?? "default";
  const preset = workerPreset(config, opts.concurrency);
  // Schema is already there (enqueue did it); this is a no-op check done
  // before the clock starts so that run() only has to connect.
  await runMigrations({ connectionString: opts.url, logger });
  const probe = new pg.Client({ connectionString: opts.url });
  await probe.connect();
  // graphile-worker deletes a job's row when it completes successfully.
  const countCompleted = async () => {
    const { rows } = await probe.query(
      "select count(*)::int as left from graphile_worker._private_jobs",
    );
    return opts.items - rows[0].left;
  };

  const tracker = executionTracker(opts.items);
  const taskList = {
    [TASK]: async (payload) => {
      tracker.hit(payload.i);
    },
  };

  const t0 = now();
  const runner = await run({ preset, taskList, logger, noHandleSignals: true });
  await untilAllExecuted(tracker);
  const done = await waitCommitted(countCompleted, opts.items);
  const rss = peakRssMib();
  const s = tracker.summary();
  // Retries leave attempts > 1 on a row; a job that completed is gone.
  const { rows } = await probe.query(
    "select count(*)::int as n from graphile_worker._private_jobs where attempts > 1",
  );

  const label = config === "perf" ? "graphile-worker (perf config)" : "graphile-worker (defaults)";
  const noteParts = [];
  if (config === "perf") {
    noteParts.push(
      `perfTest settings: concurrentJobs=${opts.concurrency} maxPoolSize=${preset.worker.maxPoolSize} preparedStatements=true localQueue.size=500 refetchDelay=10ms completeJobBatchDelay=0 failJobBatchDelay=0`,
    );
  } else {
    noteParts.push(
      `defaults + concurrentJobs=${opts.concurrency} maxPoolSize=${preset.worker.maxPoolSize ?? 10} (no localQueue, unbatched completion)`,
    );
  }
  if (done.at === null) noteParts.push(`TIMED OUT with ${done.completed} completed`);
  report({
    system: label,
    items: opts.items,
    concurrency: opts.concurrency,
    enqueue_seconds: Number(opts["enqueue-seconds"]),
    run_seconds: done.at === null ? null : done.at - t0,
    rss_mib: rss,
    note: noteParts.join("; "),
    version: `graphile-worker ${packageVersion("graphile-worker")}, node ${process.versions.node}`,
    bulk_enqueue: "WorkerUtils.addJobs (one call)",
    completed: done.completed,
    ...s,
    retried_rows_left: rows[0].n,
    verified:
      done.completed === opts.items && s.duplicates === 0 && s.missing === 0,
  });
  await probe.end();
  await Promise.race([runner.stop(), new Promise((r) => setTimeout(r, 10_000))]);
}

try {
  if (opts.mode === "enqueue") await enqueue();
  else if (opts.mode === "work") await work();
  else throw new Error(`mode must be enqueue or work, not ${opts.mode}`);
  process.exit(process.exitCode ?? 0);
} catch (e) {
  console.error(e);
  process.exit(1);
}
