// Debounced and batched functions written with the unmodified official
// TypeScript SDK: the same functions as tests/compat/official_held_app.py
// (app `ts-held`). Run with `node` next to a node_modules holding the SDK
// (tests/compat/npm.py `prepare_script`), CONNECT_API_URL pointing at `connect dev`.
import { Inngest } from "inngest";
import { connect } from "inngest/connect";

const URL = process.env.CONNECT_API_URL;
if (!URL) throw new Error("CONNECT_API_URL must point at connect dev");
const client = new Inngest({ id: "ts-held", isDev: true, baseUrl: URL });

const seen = (event, events) => ({ event: event.data, events: events.map((e) => e.data) });

const digest = client.createFunction(
  {
    id: "digest",
    triggers: [{ event: "held/debounce" }],
    debounce: { period: "2s", key: "event.data.user", timeout: "10s" },
  },
  async ({ event, events, step }) => step.run("seen", () => seen(event, events)),
);

const bulk = client.createFunction(
  {
    id: "bulk",
    triggers: [{ event: "held/batch" }],
    batchEvents: { maxSize: 3, timeout: "2s", key: "event.data.team", if: "event.data.batch == true" },
  },
  async ({ event, events, step }) => step.run("seen", () => seen(event, events)),
);

// The same debounce and batch with the start gates Inngest applies around them.
const seenAt = (event, events) => ({ ...seen(event, events), at: Date.now() / 1000 });

const digestThrottled = client.createFunction(
  {
    id: "digest-throttled",
    triggers: [{ event: "held/debounce-throttle" }],
    debounce: { period: "1s" },
    throttle: { limit: 1, period: "4s" },
  },
  async ({ event, events, step }) => step.run("seen", () => seenAt(event, events)),
);

const digestRated = client.createFunction(
  {
    id: "digest-rated",
    triggers: [{ event: "held/debounce-rate" }],
    debounce: { period: "2s", key: "event.data.user" },
    rateLimit: { limit: 1, period: "1m", key: "event.data.user" },
  },
  async ({ event, events, step }) => step.run("seen", () => seenAt(event, events)),
);

const digestSingle = client.createFunction(
  {
    id: "digest-single",
    triggers: [{ event: "held/debounce-single" }],
    debounce: { period: "1s" },
    singleton: { mode: "skip" },
  },
  async ({ event, events, step }) => {
    const seconds = Number(event.data.sleep || 0);
    if (seconds) await step.run("hold", () => new Promise((resolve) => setTimeout(() => resolve(null), seconds * 1000)));
    return step.run("seen", () => seenAt(event, events));
  },
);

const bulkThrottled = client.createFunction(
  {
    id: "bulk-throttled",
    triggers: [{ event: "held/batch-throttle" }],
    batchEvents: { maxSize: 2, timeout: "10s" },
    throttle: { limit: 1, period: "4s" },
  },
  async ({ event, events, step }) => step.run("seen", () => seenAt(event, events)),
);

await connect({
  apps: [{ client, functions: [digest, bulk, digestThrottled, digestRated, digestSingle, bulkThrottled] }],
  instanceId: process.env.WORKER_NAME || "ts-held",
});
