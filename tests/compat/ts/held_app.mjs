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

await connect({ apps: [{ client, functions: [digest, bulk] }], instanceId: process.env.WORKER_NAME || "ts-held" });
