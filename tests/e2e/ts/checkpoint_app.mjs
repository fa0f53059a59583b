// Functions of the official TypeScript SDK, unmodified, for tests/e2e/test_ts_checkpoints.py.
// Env: CONNECT_API_URL (connect dev), ENTRY_LOG (a JSON line per handler entry and per step run),
// CHECKPOINT ("on": the SDK's defaults; "off": checkpointing: false; "buffered": two steps per checkpoint).
import { appendFileSync } from "node:fs";
import { Inngest, NonRetriableError, referenceFunction } from "inngest";
import { connect } from "inngest/connect";

const mode = process.env.CHECKPOINT ?? "on";
const checkpointing = { on: undefined, off: false, buffered: { bufferedSteps: 2 } }[mode];
const inngest = new Inngest({
  id: `ts-cp-${mode}`,
  isDev: true,
  baseUrl: process.env.CONNECT_API_URL,
  ...(checkpointing === undefined ? {} : { checkpointing }),
});

function log(kind, runId, fields = {}) {
  appendFileSync(process.env.ENTRY_LOG, JSON.stringify({ kind, run: runId, ...fields }) + "\n");
}

const steps = inngest.createFunction(
  { id: "steps", triggers: [{ event: "ts/steps" }] },
  async ({ event, step, runId }) => {
    log("enter", runId);
    const values = [];
    for (let i = 0; i < event.data.count; i++) {
      values.push(await step.run(`s${i}`, () => {
        log("step", runId, { step: i });
        return i * 10;
      }));
    }
    return { values };
  },
);

const slow = inngest.createFunction(
  { id: "slow", triggers: [{ event: "ts/slow" }] },
  async ({ event, step, runId }) => {
    for (let i = 0; i < event.data.count; i++) {
      await step.run(`slow-${i}`, async () => {
        log("step", runId, { step: i });
        await new Promise((resolve) => setTimeout(resolve, 300));
        return i;
      });
    }
    return "all done";
  },
);

const refused = inngest.createFunction(
  { id: "refused", retries: 3, triggers: [{ event: "ts/refused" }] },
  async ({ step, runId }) => {
    log("enter", runId);
    await step.run("first", () => "ok");
    throw new NonRetriableError("refused for good");
  },
);

const lastAttempt = inngest.createFunction(
  { id: "last-attempt", retries: 1, triggers: [{ event: "ts/last-attempt" }] },
  async ({ attempt, runId }) => {
    log("enter", runId, { attempt });
    throw new Error(`failed on attempt ${attempt}`);
  },
);

const missing = inngest.createFunction(
  { id: "invokes-missing", triggers: [{ event: "ts/invoke-missing" }] },
  async ({ step }) => {
    try {
      await step.invoke("call", {
        function: referenceFunction({ appId: "nobody", functionId: "nothing" }),
        data: {},
      });
      return { caught: null };
    } catch (err) {
      return { caught: { name: err.name, message: err.message } };
    }
  },
);

await connect({
  apps: [{ client: inngest, functions: [steps, slow, refused, lastAttempt, missing] }],
  instanceId: `ts-checkpoints-${mode}`,
});
