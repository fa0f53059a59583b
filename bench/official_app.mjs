// The benchmark functions written with the official TypeScript SDK (npm `inngest`), served by its
// connect worker. Mirrors bench/apps.py and bench/official_app.py: `one-step` and `five-steps`
// (event `bench/five`), the latter reporting the event's `k` on the UDP side channel
// (bench/notify.py: one datagram holding the key, to the address in BENCH_NOTIFY) from the
// request that completes the run.
//
// Run with Node (20 needs NODE_OPTIONS=--experimental-websocket, see tests/compat/npm.py) from a
// directory whose node_modules holds the SDK. CONNECT_API_URL names the platform's API;
// BENCH_TS_CHECKPOINTING=false turns the SDK's checkpointing off with its documented client
// option; anything else (or nothing) leaves the SDK's default, checkpointing on.
import dgram from "node:dgram";
import process from "node:process";

import { Inngest } from "inngest";
import { connect } from "inngest/connect";

const APP_ID = "bench-official-ts";
const URL = process.env.CONNECT_API_URL ?? "http://127.0.0.1:8288";
const checkpointingOff = process.env.BENCH_TS_CHECKPOINTING === "false";

const client = new Inngest({
  id: APP_ID,
  isDev: true,
  baseUrl: URL,
  ...(checkpointingOff ? { checkpointing: false } : {}),
});

// The side channel of bench/notify.py, from Node's dgram.
let notifySocket = null;
let notifyTarget = null;
function notify(key) {
  if (key === undefined || key === null) return;
  if (notifyTarget === null) {
    const target = process.env.BENCH_NOTIFY;
    if (!target) return;
    const at = target.lastIndexOf(":");
    notifyTarget = { host: target.slice(0, at), port: Number(target.slice(at + 1)) };
    notifySocket = dgram.createSocket("udp4");
    notifySocket.unref(); // never what keeps the worker alive
    notifySocket.on("error", () => {}); // the driver is gone; nothing to pace any more
  }
  notifySocket.send(String(key), notifyTarget.port, notifyTarget.host);
}

const noop = () => null;

const oneStep = client.createFunction(
  { id: "one-step", triggers: [{ event: "bench/one" }], retries: 0 },
  async ({ step }) => step.run("only", noop),
);

const fiveSteps = client.createFunction(
  { id: "five-steps", triggers: [{ event: "bench/five" }], retries: 0 },
  async ({ event, step }) => {
    await step.run("s1", noop);
    await step.run("s2", noop);
    await step.run("s3", noop);
    await step.run("s4", noop);
    await step.run("s5", noop);
    notify(event.data?.k); // reached only by the request that completes the run
    return null;
  },
);

await connect({
  apps: [{ client, functions: [oneStep, fiveSteps] }],
  instanceId: `bench-official-ts-${process.pid}`,
  // As bench/official_app.py: the benchmark ends the worker with SIGTERM, and Node's default
  // action for it (exit) is what it wants, not a graceful drain.
  handleShutdownSignals: [],
});
