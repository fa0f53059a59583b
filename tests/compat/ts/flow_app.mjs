// Functions with flow control at run start, written with the unmodified
// official TypeScript SDK: the same ids, events and outputs as
// tests/compat/official_flow_app.py (this SDK sends no burst unless given
// one, so the burst variant names it). Run with `node` next to a node_modules
// holding the SDK (tests/compat/npm.py `prepare_script`), CONNECT_API_URL
// pointing at `connect dev`.
import { Inngest } from "inngest";
import { connect } from "inngest/connect";

const URL = process.env.CONNECT_API_URL;
if (!URL) throw new Error("CONNECT_API_URL must point at connect dev");
const client = new Inngest({ id: "ts-flow-start", isDev: true, baseUrl: URL });

const throttled = client.createFunction(
  { id: "throttled", triggers: [{ event: "flow/throttled" }], throttle: { limit: 1, period: "2s" } },
  async () => Date.now() / 1000,
);

// Throttled runs held back take their turns in priority order (event.data.p seconds).
const throttledPriority = client.createFunction(
  {
    id: "throttled-priority",
    triggers: [{ event: "flow/throttled-priority" }],
    throttle: { limit: 1, period: "2s" },
    priority: { run: "event.data.p" },
  },
  async () => Date.now() / 1000,
);

const throttledBurst = client.createFunction(
  {
    id: "throttled-burst",
    triggers: [{ event: "flow/throttled-burst" }],
    throttle: { limit: 1, period: "2s", burst: 1 },
  },
  async () => Date.now() / 1000,
);

const rated = client.createFunction(
  {
    id: "rated",
    triggers: [{ event: "flow/rated" }],
    rateLimit: { limit: 2, period: "1m", key: "event.data.k" },
  },
  async ({ event }) => event.data.n ?? null,
);

const idempotent = client.createFunction(
  { id: "idempotent", triggers: [{ event: "flow/idempotent" }], idempotency: "event.data.order" },
  async ({ event }) => event.data.order,
);

async function nap({ event, step }) {
  const seconds = Number(event.data.sleep || 0);
  if (seconds) await step.sleep("nap", seconds * 1000);
  return event.data.n ?? null;
}

const singleSkip = client.createFunction(
  { id: "single-skip", triggers: [{ event: "flow/single-skip" }], singleton: { key: "event.data.k", mode: "skip" } },
  nap,
);

const singleCancel = client.createFunction(
  { id: "single-cancel", triggers: [{ event: "flow/single-cancel" }], singleton: { mode: "cancel" } },
  nap,
);

// Invokes `idempotent` with the order of the event, twice: "ran", or the error the invoke threw.
const invoker = client.createFunction(
  { id: "invoker", triggers: [{ event: "flow/invoke" }], retries: 0 },
  async ({ event, step }) => {
    const outcomes = [];
    for (const i of [0, 1]) {
      try {
        await step.invoke(`call-${i}`, { function: idempotent, data: { order: event.data.order }, timeout: "5m" });
        outcomes.push("ran");
      } catch (err) {
        outcomes.push(`${err.name}: ${err.message}`);
      }
    }
    return outcomes;
  },
);

await connect({
  apps: [{ client, functions: [throttled, throttledPriority, throttledBurst, rated, idempotent, singleSkip, singleCancel, invoker] }],
  instanceId: process.env.WORKER_NAME || "ts-flow-start",
});
