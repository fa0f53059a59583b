// Cancelling many runs of one function at once (POST /v1/cancellations), in two moves: the panel
// first asks the server how many Running runs the cancellation would touch (`"dry_run": true`),
// says so, and cancels only once the user confirms that number. Runs that start or end in
// between change it: the answer to the real cancellation says how many were cancelled.

import { api } from "./api.js";
import { h, replace } from "./dom.js";

// A `datetime-local` value (the browser's local time) as ISO-8601 UTC, or undefined when empty.
export function isoTime(local) {
  if (!local) return undefined;
  const d = new Date(local);
  return isNaN(d) ? undefined : d.toISOString();
}

// `scope()` answers {function_id, started_after, started_before} as the runs view filters them;
// `done()` is called once runs were cancelled (the view looks again); `ctx.onAuth` on a 401.
export function cancelPanel(scope, ctx, done) {
  const panel = h("div", { class: "card", id: "bulk-panel", hidden: true });
  const condition = h("input", { id: "bulk-if", size: 50, placeholder: "event.data.plan == 'free' (optional)" });
  const answer = h("div", { id: "bulk-answer" });

  function body() {
    const { function_id, started_after, started_before } = scope();
    const wanted = { function_id };
    if (started_after) wanted.started_after = started_after;
    if (started_before) wanted.started_before = started_before;
    if (condition.value.trim()) wanted.if = condition.value.trim();
    return wanted;
  }

  function describe(wanted) {
    const parts = [`of ${wanted.function_id}`];
    if (wanted.started_after) parts.push(`started at or after ${new Date(wanted.started_after).toLocaleString()}`);
    if (wanted.started_before) parts.push(`started before ${new Date(wanted.started_before).toLocaleString()}`);
    if (wanted.if) parts.push(`whose event satisfies ${wanted.if}`);
    return parts.join(", ");
  }

  async function send(wanted, button) {
    if (button) button.disabled = true;
    try {
      return (await api.post("/v1/cancellations", wanted)).data;
    } catch (err) {
      if (err.name === "AuthError") ctx.onAuth(err);
      else replace(answer, h("p", { class: "error", id: "bulk-error" }, err.message));
      return null;
    } finally {
      if (button) button.disabled = false;
    }
  }

  async function count() {
    const wanted = body();
    replace(answer, h("p", { class: "muted" }, "Counting…"));
    const counted = await send({ ...wanted, dry_run: true });
    if (counted === null) return;
    const n = counted.matching;
    if (!n) {
      replace(answer, h("p", { class: "notice", id: "bulk-count", "data-count": 0 }, `No Running run ${describe(wanted)}: nothing to cancel.`));
      return;
    }
    const runs = n === 1 ? "1 Running run" : `${n} Running runs`;
    replace(
      answer,
      h("p", { class: "notice", id: "bulk-count", "data-count": n }, `This cancels ${runs} ${describe(wanted)}. A step already on a worker finishes; nothing after it runs.`),
      h(
        "p",
        { class: "actions" },
        h("button", { class: "danger", id: "bulk-confirm", onclick: (e) => confirm(wanted, e.target) }, n === 1 ? "Cancel 1 run" : `Cancel ${n} runs`),
        h("button", { class: "secondary", onclick: close }, "Keep them"),
      ),
    );
  }

  async function confirm(wanted, button) {
    const result = await send(wanted, button);
    if (result === null) return;
    const n = result.cancelled;
    replace(answer, h("p", { class: "notice", id: "bulk-result", "data-cancelled": n }, n === 1 ? "Cancelled 1 run." : `Cancelled ${n} runs.`));
    done();
  }

  function close() {
    panel.hidden = true;
    replace(answer);
  }

  replace(
    panel,
    h("h2", {}, "Cancel many runs"),
    h("label", { for: "bulk-if" }, "Only runs whose event satisfies (CEL, optional)"),
    condition,
    h("p", { class: "actions" }, h("button", { class: "secondary", id: "bulk-count-button", onclick: count }, "Count runs"), h("button", { class: "link", onclick: close }, "Close")),
    answer,
  );

  return {
    panel,
    // Show the panel for the runs the view filters now, and count them at once.
    open() {
      panel.hidden = false;
      count();
    },
  };
}
