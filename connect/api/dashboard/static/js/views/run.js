// One run (GET /v1/runs/{id}): status, function, event, times, output or error; its step
// timeline when the server keeps one (GET /v1/runs/{id}/steps); a Cancel button while it runs
// (POST /v1/runs/{id}/cancel) and a Rerun button (POST /v1/runs/{id}/rerun: a new run of its
// function for a copy of its event, linked once started). Looked at again every second while it
// runs.

import { api } from "../api.js";
import { badge, h, json, replace, time } from "../dom.js";
import { poll } from "../poll.js";

function steps(list) {
  if (list === null) return h("p", { class: "muted", id: "no-timeline" }, "This server keeps no step timeline.");
  if (!list.length) return h("p", { class: "muted", id: "steps" }, "No steps yet.");
  return h(
    "table",
    { id: "steps" },
    h("thead", {}, h("tr", {}, ["Step", "Kind", "Status", "Attempts", "Started", "Ended", "Output or error"].map((t) => h("th", {}, t)))),
    h(
      "tbody",
      {},
      list.map((step) =>
        h(
          "tr",
          { "data-step": step.name || step.id },
          h("td", {}, h("div", {}, step.name || h("span", { class: "muted" }, "(unnamed)")), h("div", { class: "muted mono" }, step.id)),
          h("td", {}, step.kind || "—"),
          h("td", {}, step.status ? badge(step.status) : "—", step.ended_by ? h("div", { class: "muted" }, step.ended_by) : null),
          h("td", {}, step.attempts ?? "—"),
          h("td", {}, time(step.started_at), step.due_at ? h("div", { class: "muted" }, "due ", time(step.due_at)) : null),
          h("td", {}, time(step.ended_at)),
          h("td", {}, step.error != null ? h("div", { class: "error" }, json(step.error)) : step.output !== undefined && step.output !== null ? json(step.output) : "—"),
        ),
      ),
    ),
  );
}

export async function render(root, [runId], ctx) {
  const path = `/v1/runs/${encodeURIComponent(runId)}`;
  const head = h("div");
  const timeline = h("div");
  const message = h("div");
  replace(root, h("p", {}, h("a", { href: "#/runs" }, "← Runs")), h("h1", {}, "Run ", h("span", { class: "mono" }, runId)), message, head, h("h2", {}, "Steps"), timeline);
  let hasTimeline = true;
  let last = "";

  async function cancel(button) {
    button.disabled = true;
    try {
      const resp = await api.post(`${path}/cancel`);
      replace(message, h("p", { class: "notice" }, resp.data.status === "Cancelled" ? "Cancelled." : "Cancelling: the step under way finishes first."));
    } catch (err) {
      if (err.name === "AuthError") return ctx.onAuth(err);
      replace(message, h("p", { class: "error" }, `Not cancelled: ${err.message}`));
    }
    poller.now();
  }

  async function rerun(button) {
    button.disabled = true;
    try {
      const started = (await api.post(`${path}/rerun`)).data;
      const link = h("a", { class: "mono", id: "rerun-link", href: `#/runs/${encodeURIComponent(started.run_id)}` }, started.run_id);
      replace(
        message,
        started.status === "Skipped"
          ? h("p", { class: "notice", id: "rerun-result" }, "Rerun skipped by the function's flow control: ", link)
          : h("p", { class: "notice", id: "rerun-result" }, "Rerun as ", link),
      );
    } catch (err) {
      if (err.name === "AuthError") return ctx.onAuth(err);
      replace(message, h("p", { class: "error", id: "rerun-result" }, `Not rerun: ${err.message}`));
    } finally {
      button.disabled = false;
    }
  }

  function draw(run, list) {
    const cancelButton = h("button", { class: "danger", id: "cancel", onclick: (e) => cancel(e.target) }, "Cancel run");
    const rerunButton = h(
      "button",
      { class: "secondary", id: "rerun", title: "Start a new run of this function with a copy of its event", onclick: (e) => rerun(e.target) },
      "Rerun",
    );
    const result =
      run.status === "Failed"
        ? [h("h2", {}, "Error"), h("div", { class: "error", id: "run-error" }, json(run.output))]
        : run.status === "Completed"
          ? [h("h2", {}, "Output"), h("div", { id: "run-output" }, json(run.output))]
          : [];
    replace(
      head,
      h(
        "div",
        { class: "card" },
        h(
          "dl",
          { class: "facts" },
          h("dt", {}, "Status"),
          h("dd", { id: "run-status", "data-status": run.status }, badge(run.status), run.skip_reason ? ` ${run.skip_reason}` : ""),
          h("dt", {}, "Function"),
          h("dd", { class: "mono" }, run.function_id),
          h("dt", {}, "Event"),
          h("dd", { class: "mono" }, run.event_id),
          h("dt", {}, "Started"),
          h("dd", {}, time(run.run_started_at)),
          h("dt", {}, "Ended"),
          h("dd", {}, time(run.ended_at)),
        ),
        h("p", { class: "actions" }, run.status === "Running" ? cancelButton : null, run.status === "Skipped" ? null : rerunButton),
      ),
      result,
    );
    replace(timeline, steps(list));
  }

  await api.get(path); // an unknown run is said at once, not retried
  const poller = poll(async () => {
    const run = (await api.get(path)).data;
    let list = null;
    if (hasTimeline) {
      try {
        list = (await api.get(`${path}/steps`)).data;
      } catch (err) {
        if (!(err.name === "ApiError" && err.noRoute)) throw err;
        hasTimeline = false;
      }
    }
    const now = JSON.stringify([run, list]);
    if (now !== last) draw(run, list);
    last = now;
    return run.status === "Running";
  }, ctx);
  return () => poller.stop();
}
