#!/usr/bin/env node
// A jobvisor client in Node.js. No generated code: @grpc/proto-loader reads
// the repository's proto/ at run time (the well-known types, Duration and
// Timestamp, come with protobufjs).
//
//   npm ci --prefix examples/node
//   node examples/node/client.js 127.0.0.1:50051
//
// The address is the first argument, else JOBVISOR_SERVER (as for the
// jobvisor CLI: host:port or http://host:port), else 127.0.0.1:50051. This
// example speaks plain-text gRPC only.
//
// It starts a job of 20 sleep items, watches it, pauses it once some items
// have succeeded, resumes it once it is PAUSED, and follows it to its end;
// then it shows that a finished job refuses a pause. Exit code 0 when the
// job succeeded after one pause and one resume.
'use strict';

const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const PROTO_DIR = path.join(__dirname, '..', '..', 'proto');
const DEADLINE_MS = 10_000;

// Both files of the contract load, though this client only calls
// JobService. keepCase keeps the proto's field names (job_id, not jobId);
// 64-bit integers come as strings, enums as their names, a oneof's set
// field's name in its own property (event.kind).
const definition = protoLoader.loadSync(
  ['jobvisor/v1/jobvisor.proto', 'jobvisor/v1/worker.proto'],
  {
    includeDirs: [PROTO_DIR],
    keepCase: true,
    longs: String,
    enums: String,
    defaults: true,
    oneofs: true,
  },
);
const { JobService } = grpc.loadPackageDefinition(definition).jobvisor.v1;

// The address to dial, from the argument or JOBVISOR_SERVER.
function serverAddress() {
  const given = process.argv[2] || process.env.JOBVISOR_SERVER || '127.0.0.1:50051';
  if (given.startsWith('https://')) {
    throw new Error(`${given}: this example speaks plain-text gRPC only; give host:port or http://host:port`);
  }
  const address = given.replace(/^http:\/\//, '').replace(/\/+$/, '');
  if (!/^[^\s/]+:\d+$/.test(address)) {
    throw new Error(`${given}: not a server address; give host:port or http://host:port`);
  }
  return address;
}

// A unary call as a promise, with a deadline.
function call(client, method, request) {
  return new Promise((resolve, reject) => {
    const deadline = new Date(Date.now() + DEADLINE_MS);
    client[method](request, { deadline }, (err, response) => (err ? reject(err) : resolve(response)));
  });
}

// The gRPC status code's name (FAILED_PRECONDITION), or the error's message.
function codeName(err) {
  return err.code !== undefined ? grpc.status[err.code] : String(err);
}

async function main() {
  const client = new JobService(serverAddress(), grpc.credentials.createInsecure());
  try {
    const job = await call(client, 'StartJob', {
      name: 'node-example',
      executor: 'sleep',
      items: Array.from({ length: 20 }, (_, i) => `item-${i}`),
      concurrency: 4,
      params: { duration_ms: '300', steps: '5' },
      labels: { example: 'node' },
    });
    console.log(`started ${job.id}: ${job.counts.total} items`);

    let paused = false;
    let resumed = false;
    // The stream ends after the event that moves the job to a terminal state.
    for await (const event of client.WatchJob({ job_id: job.id })) {
      switch (event.kind) {
        case 'snapshot':
          console.log(`  #${event.sequence} snapshot: ${event.snapshot.state}`);
          break;
        case 'progress': {
          const c = event.progress.counts;
          console.log(`  ${c.succeeded}/${c.total} done, ${event.progress.items_per_second.toFixed(1)} items/s`);
          if (!paused && Number(c.succeeded) >= 4) {
            // Once this returns, no new item starts; items in flight finish.
            const p = await call(client, 'PauseJob', { job_id: job.id, reason: 'demo' });
            console.log(`  paused: ${p.state}`);
            paused = true;
          }
          break;
        }
        case 'state_changed': {
          const change = event.state_changed;
          console.log(`  #${event.sequence} ${change.from} -> ${change.to} ${change.reason}`);
          if (change.to === 'JOB_STATE_PAUSED' && !resumed) {
            const r = await call(client, 'ResumeJob', { job_id: job.id });
            console.log(`  resumed: ${r.state}`);
            resumed = true;
          }
          break;
        }
        case 'item_failed': {
          const f = event.item_failed;
          console.log(`  #${event.sequence} item ${f.index} attempt ${f.attempt} failed: ${f.error}`);
          break;
        }
        default:
          console.log(`  #${event.sequence} ${event.kind}`);
      }
    }

    const final = await call(client, 'GetJob', { job_id: job.id });
    console.log(`ended ${final.state}: ${final.counts.succeeded} succeeded, ${final.pauses.length} pause(s)`);
    try {
      await call(client, 'PauseJob', { job_id: job.id });
      console.log('pausing a finished job: accepted');
    } catch (err) {
      console.log(`pausing a finished job: ${codeName(err)} (${err.details})`);
    }
    if (!paused) {
      console.log('the job ended before it could be paused');
    }
    return final.state === 'JOB_STATE_SUCCEEDED' && paused && resumed ? 0 : 1;
  } finally {
    client.close();
  }
}

main().then(
  (code) => {
    process.exitCode = code;
  },
  (err) => {
    console.error(`error: ${err.code !== undefined ? `${codeName(err)}: ${err.details}` : err.message}`);
    process.exitCode = 1;
  },
);
