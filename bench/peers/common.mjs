// Helpers shared by the Node.js peer drivers (graphile.mjs, pgboss.mjs).
// run.sh copies this file next to the drivers in its temp directory, where
// the peers' node_modules live; nothing here is imported from the repo.

import { readFileSync } from "node:fs";

/** `--items 20000 --concurrency 16 --url postgres://…` → {items: "20000", …} */
export function parseArgs(argv) {
  const [mode, ...rest] = argv;
  const opts = { mode };
  for (let i = 0; i < rest.length; i += 2) {
    if (!rest[i].startsWith("--")) throw new Error(`unexpected argument ${rest[i]}`);
    opts[rest[i].slice(2)] = rest[i + 1];
  }
  for (const k of ["url", "items", "concurrency"]) {
    if (opts[k] === undefined) throw new Error(`--${k} is required`);
  }
  opts.items = Number(opts.items);
  opts.concurrency = Number(opts.concurrency);
  return opts;
}

/** The version of an installed npm package (node_modules beside this file). */
export function packageVersion(name) {
  const path = new URL(`./node_modules/${name}/package.json`, import.meta.url);
  return JSON.parse(readFileSync(path, "utf8")).version;
}

export const now = () => performance.now() / 1000;

/** Peak RSS of this process (VmHWM) in MiB. */
export function peakRssMib() {
  const m = /^VmHWM:\s+(\d+)\s+kB/m.exec(readFileSync("/proc/self/status", "utf8"));
  return m ? Number(m[1]) / 1024 : null;
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/**
 * Per-item execution counts: the task bodies call `hit(i)`; `summary()`
 * tells how many items ran, how many ran more than once and how many never
 * ran.
 */
export function executionTracker(items) {
  const counts = new Uint16Array(items);
  let executed = 0;
  let onAllExecuted = null;
  const allExecuted = new Promise((r) => (onAllExecuted = r));
  return {
    allExecuted,
    hit(i) {
      if (counts[i]++ === 0) {
        executed += 1;
        if (executed === items) onAllExecuted();
      }
    },
    summary() {
      let duplicates = 0;
      let missing = 0;
      for (const c of counts) {
        if (c === 0) missing += 1;
        else if (c > 1) duplicates += 1;
      }
      return { executed, duplicates, missing };
    },
  };
}

/**
 * Resolves once every item has run, or after `timeoutSeconds` (the caller's
 * checks then report what is missing).
 */
export async function untilAllExecuted(tracker, timeoutSeconds = 600) {
  let timer;
  await Promise.race([
    tracker.allExecuted,
    new Promise((r) => (timer = setTimeout(r, timeoutSeconds * 1000))),
  ]);
  clearTimeout(timer);
}

/**
 * Once every task body has run, poll the library's own tables (through
 * `countCompleted`, on a connection opened before the clock started) until
 * the library has committed all `items` completions; returns that moment.
 * Gives up after `timeoutSeconds`.
 */
export async function waitCommitted(countCompleted, items, timeoutSeconds = 120) {
  const deadline = now() + timeoutSeconds;
  for (;;) {
    const completed = await countCompleted();
    if (completed >= items) return { at: now(), completed };
    if (now() > deadline) return { at: null, completed };
    await sleep(2);
  }
}

/**
 * Prints the result line; if the driver could not verify that every job ran
 * exactly once and was completed by the library, also prints an error on
 * stderr and makes the process exit with status 3.
 */
export function report(fields) {
  console.log(resultLine(fields));
  if (!fields.verified) {
    console.error(
      `ERROR: ${fields.system}: not every job ran exactly once and was completed: ` +
        `${fields.completed} of ${fields.items} completed in the database, ` +
        `${fields.executed} ran, ${fields.missing} never ran, ${fields.duplicates} ran more than once`,
    );
    process.exitCode = 3;
  }
}

/** The one JSON line a driver prints for its system (keys as jobvisor's). */
export function resultLine(fields) {
  const {
    system, items, concurrency, enqueue_seconds, run_seconds, rss_mib, note, ...extra
  } = fields;
  const line = {
    system,
    items,
    concurrency,
    enqueue_seconds: round(enqueue_seconds, 3),
    run_seconds: round(run_seconds, 3),
    items_per_second: run_seconds ? round(items / run_seconds, 1) : null,
    rss_mib: round(rss_mib, 1),
  };
  if (note) line.note = note;
  return JSON.stringify({ ...line, ...extra });
}

function round(x, digits) {
  if (x === null || x === undefined || Number.isNaN(x)) return null;
  const f = 10 ** digits;
  return Math.round(x * f) / f;
}
