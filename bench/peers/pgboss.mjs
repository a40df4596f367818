// pg-boss peer driver (public API only). run.sh copies it into its temp
// directory next to the installed node_modules; each mode runs in its own
// process:
//
//   node pgboss.mjs enqueue --url URL --items N --concurrency C
//     start() installs the schema and createQueue() the queue (untimed), then
//     ONE insert(name, jobs) call enqueues the N jobs; prints {"enqueue_seconds": …}
//   node pgboss.mjs work --url URL --items N --concurrency C --enqueue-seconds S
//     work() with a no-op handler until every job is in state 'completed',
//     then prints the result JSON line.
//
// C jobs in flight, pg-boss style: work(name, {batchSize: C,
// burstWhenBatchFull: true}) — one worker fetches C jobs at a time, the
// handler gets the batch, and pg-boss completes the batch when the handler
// resolves. (With the default batchSize 1 a worker waits
// pollingIntervalSeconds, 2 s by default and 0.5 s at least, after every
// fetch: localConcurrency 16 × batchSize 1 would do ~8 jobs/s. burst mode
// only engages for batchSize > 1 or from the 60 s-stale ready-count cache.)

import pg from "pg";
import { PgBoss } from "pg-boss";
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
const QUEUE = "noop";

function newBoss() {
  const boss = new PgBoss({ connectionString: opts.url });
  boss.on("error", (e) => console.error(`[pg-boss error] ${e.message ?? e}`));
  return boss;
}

async function enqueue() {
  const boss = newBoss();
  await boss.start();
  try {
    await boss.createQueue(QUEUE);
    const jobs = Array.from({ length: opts.items }, (_, i) => ({ data: { i } }));
    const t0 = now();
    await boss.insert(QUEUE, jobs);
    const seconds = now() - t0;
    console.log(JSON.stringify({ enqueue_seconds: seconds, bulk_api: "insert" }));
  } finally {
    await boss.stop({ graceful: false });
  }
}

async function work() {
  const boss = newBoss();
  await boss.start(); // connects and checks the schema; not timed
  const probe = new pg.Client({ connectionString: opts.url });
  await probe.connect();
  const countCompleted = async () => {
    const { rows } = await probe.query(
      "select count(*)::int as n from pgboss.job where name = $1 and state = 'completed'",
      [QUEUE],
    );
    return rows[0].n;
  };

  const tracker = executionTracker(opts.items);
  const t0 = now();
  await boss.work(
    QUEUE,
    { batchSize: opts.concurrency, burstWhenBatchFull: true },
    async (jobs) => {
      await Promise.all(jobs.map(async (job) => tracker.hit(job.data.i)));
    },
  );
  await untilAllExecuted(tracker);
  const done = await waitCommitted(countCompleted, opts.items);
  const rss = peakRssMib();
  const s = tracker.summary();
  const { rows } = await probe.query(
    `select count(*)::int as total,
            count(*) filter (where retry_count > 0)::int as retried
       from pgboss.job where name = $1`,
    [QUEUE],
  );

  const noteParts = [
    `work({batchSize: ${opts.concurrency}, burstWhenBatchFull: true}): ${opts.concurrency} jobs per fetch, completed per batch when the handler resolves`,
  ];
  if (done.at === null) noteParts.push(`TIMED OUT with ${done.completed} completed`);
  report({
    system: "pg-boss",
    items: opts.items,
    concurrency: opts.concurrency,
    enqueue_seconds: Number(opts["enqueue-seconds"]),
    run_seconds: done.at === null ? null : done.at - t0,
    rss_mib: rss,
    note: noteParts.join("; "),
    version: `pg-boss ${packageVersion("pg-boss")}, node ${process.versions.node}`,
    bulk_enqueue: "insert (one call)",
    completed: done.completed,
    ...s,
    job_rows: rows[0].total,
    retried: rows[0].retried,
    verified:
      done.completed === opts.items &&
      rows[0].total === opts.items &&
      rows[0].retried === 0 &&
      s.duplicates === 0 &&
      s.missing === 0,
  });
  await probe.end();
  await Promise.race([
    boss.stop({ graceful: true, timeout: 5000 }),
    new Promise((r) => setTimeout(r, 10_000)),
  ]);
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
