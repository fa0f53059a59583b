// The concurrency test functions, written with the unmodified official
// TypeScript SDK: the same ids, events and limits as tests/e2e/concurrency_app.py,
// each limit in one of the forms the SDK registers (a number, an object, an array).
//
// Environment: CONNECT_API_URL (the `connect dev` API), CONC_DIR (where
// `starts.log` gets `<name> <in progress> <tag> <unix time>` per body begun,
// the format of tests/e2e/conc_counter.py; one worker process, so the counts
// are kept here), TS_CHECKPOINTING=off (the SDK's `checkpointing: false`).
import { appendFileSync } from "node:fs";
import { join } from "node:path";
import { Inngest } from "inngest";
import { connect } from "inngest/connect";

const checkpointing = process.env.TS_CHECKPOINTING === "off" ? { checkpointing: false } : {};
const client = new Inngest({ id: "conc", isDev: true, baseUrl: process.env.CONNECT_API_URL, ...checkpointing });

const counts = new Map();
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function body(name, tag, seconds) {
  const count = (counts.get(name) ?? 0) + 1;
  counts.set(name, count);
  appendFileSync(join(process.env.CONC_DIR, "starts.log"), `${name} ${count} ${tag} ${(Date.now() / 1000).toFixed(3)}\n`);
  try {
    await sleep(seconds * 1000);
  } finally {
    counts.set(name, counts.get(name) - 1);
  }
  return tag;
}

const perKey = client.createFunction(
  { id: "per-key", triggers: [{ event: "conc/key" }], concurrency: { limit: 2, key: "event.data.key" } },
  async ({ event, step }) =>
    step.run("work", () => body(`key-${event.data.key}`, String(event.data.key), event.data.seconds ?? 0.05)),
);

const oneAtATime = client.createFunction(
  { id: "one-at-a-time", triggers: [{ event: "conc/parallel" }], concurrency: 1 },
  async ({ event, step }) =>
    Promise.all([0, 1, 2, 3].map((i) => step.run(`branch-${i}`, () => body("parallel", String(i), event.data.seconds ?? 0.3)))),
);

const shared = (id, tag) =>
  client.createFunction(
    { id, triggers: [{ event: `conc/${id}` }], concurrency: [{ limit: 1, key: "event.data.k", scope: "env" }] },
    async ({ event, step }) => step.run("work", () => body(`shared-${event.data.k}`, tag, event.data.seconds ?? 0.2)),
  );

const ordered = client.createFunction(
  { id: "ordered", triggers: [{ event: "conc/ordered" }], concurrency: { limit: 1 }, priority: { run: "event.data.prio" } },
  async ({ event, step }) => step.run("work", () => body("ordered", String(event.data.n), event.data.seconds ?? 0.2)),
);

const durable = client.createFunction(
  { id: "durable", triggers: [{ event: "conc/durable" }], concurrency: 1 },
  async ({ event, step }) => {
    const seconds = event.data.seconds ?? 0.3;
    const first = await step.run("one", () => body("durable", String(event.data.n), seconds));
    await step.run("two", () => body("durable", String(event.data.n), seconds));
    return first;
  },
);

const functions = [perKey, oneAtATime, shared("shared-a", "a"), shared("shared-b", "b"), ordered, durable];
await connect({ apps: [{ client, functions }], instanceId: process.env.WORKER_NAME || "ts-conc" });
