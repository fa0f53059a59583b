// Runs, newest first, PAGE at a time, updating live.
//
// A server with `GET /v1/runs` lists every run, filtered by status, function and start time, a
// page at a time by its cursor (the page shown is looked at again; older pages are asked for when
// the user goes to them). With a function chosen, *Cancel runs…* cancels its Running runs in the
// chosen time range (js/cancel_many.js: the number is said, then confirmed). `#/functions/ID/runs`
// opens the view with that function chosen. A server without `GET /v1/runs`: the runs of the
// events sent from this tab (at most MAX_SENT events; an event's runs are not asked for again once
// they all ended).

import { api, MAX_SENT, sent } from "../api.js";
import { cancelPanel, isoTime } from "../cancel_many.js";
import { badge, h, replace, time } from "../dom.js";
import { poll } from "../poll.js";

export const PAGE = 50;
const STATUSES = ["", "Running", "Completed", "Failed", "Cancelled", "Skipped"];

export function table(runs) {
  if (!runs.length) return h("p", { class: "muted", id: "no-runs" }, "No runs yet.");
  return h(
    "table",
    { id: "runs" },
    h("thead", {}, h("tr", {}, ["Run", "Function", "Status", "Started", "Ended"].map((t) => h("th", {}, t)))),
    h(
      "tbody",
      {},
      runs.map((run) =>
        h(
          "tr",
          { "data-run-id": run.run_id, "data-status": run.status },
          h("td", {}, h("a", { class: "mono", href: `#/runs/${encodeURIComponent(run.run_id)}` }, run.run_id)),
          h("td", { class: "mono" }, run.function_id),
          h("td", {}, badge(run.status), run.skip_reason ? h("div", { class: "muted" }, run.skip_reason) : null),
          h("td", {}, time(run.run_started_at)),
          h("td", {}, time(run.ended_at)),
        ),
      ),
    ),
  );
}

export async function render(root, [functionId], ctx) {
  const body = h("div", {}, h("p", { class: "muted" }, "Loading…"));
  const toolbar = h("div", { class: "toolbar" });
  const extra = h("div");
  replace(root, h("h1", {}, "Runs"), toolbar, extra, body);
  let probe;
  try {
    probe = await api.get(`/v1/runs?limit=${PAGE}`);
  } catch (err) {
    if (!(err.name === "ApiError" && err.noRoute)) throw err;
    return sentRuns(body, ctx);
  }
  return allRuns(toolbar, extra, body, ctx, functionId ? null : probe, functionId || "");
}

function allRuns(toolbar, extra, body, ctx, first, initialFunction) {
  let status = "";
  let fn = initialFunction;
  let from = "";
  let to = "";
  // cursors[i] is the cursor of page i (page 0 has none).
  let cursors = [null];
  let page = 0;
  let last = "";
  let data = first;

  const statusSelect = h(
    "select",
    { id: "status-filter", onchange: (e) => reset({ status: e.target.value }) },
    STATUSES.map((s) => h("option", { value: s }, s || "Any status")),
  );
  const fnInput = h("input", {
    id: "function-filter",
    placeholder: "Function id",
    value: fn || undefined,
    onchange: (e) => reset({ fn: e.target.value.trim() }),
  });
  const fromInput = h("input", { id: "from-filter", type: "datetime-local", step: 1, title: "started at or after", onchange: (e) => reset({ from: isoTime(e.target.value) || "" }) });
  const toInput = h("input", { id: "to-filter", type: "datetime-local", step: 1, title: "started before", onchange: (e) => reset({ to: isoTime(e.target.value) || "" }) });
  const bulk = cancelPanel(() => ({ function_id: fn, started_after: from, started_before: to }), ctx, () => poller.now());
  const bulkButton = h(
    "button",
    { class: "danger", id: "bulk-cancel", disabled: !fn, title: "Choose a function to cancel its Running runs", onclick: () => bulk.open() },
    "Cancel runs…",
  );
  replace(toolbar, statusSelect, fnInput, h("span", { class: "muted" }, "from"), fromInput, h("span", { class: "muted" }, "to"), toInput, bulkButton);
  replace(extra, bulk.panel);

  function reset(change) {
    if ("status" in change) status = change.status;
    if ("fn" in change) fn = change.fn;
    if ("from" in change) from = change.from;
    if ("to" in change) to = change.to;
    bulkButton.disabled = !fn;
    bulk.panel.hidden = true;
    cursors = [null];
    page = 0;
    last = "";
    poller.now();
  }

  function url() {
    const q = new URLSearchParams({ limit: String(PAGE) });
    if (status) q.set("status", status);
    if (fn) q.set("function", fn);
    if (from) q.set("from", from);
    if (to) q.set("to", to);
    if (cursors[page]) q.set("cursor", cursors[page]);
    return `/v1/runs?${q}`;
  }

  function draw() {
    cursors[page + 1] = data.cursor || null;
    replace(
      body,
      table(data.data),
      h(
        "div",
        { class: "pager" },
        h("button", { class: "secondary", disabled: page === 0, onclick: () => go(page - 1) }, "Newer"),
        h("span", { class: "muted" }, `Page ${page + 1}`),
        h("button", { class: "secondary", id: "older", disabled: !data.cursor, onclick: () => go(page + 1) }, "Older"),
      ),
    );
  }

  function go(target) {
    page = target;
    last = "";
    poller.now();
  }

  const poller = poll(async () => {
    if (data === null) {
      try {
        data = await api.get(url());
      } catch (err) {
        if (err.name !== "ApiError" || err.status !== 400) throw err;
        replace(body, h("p", { class: "error", id: "runs-error" }, err.message)); // a filter refused
        last = "";
        return false;
      }
    }
    const now = JSON.stringify(data);
    const changed = now !== last;
    if (changed) draw();
    last = now;
    const busy = changed || data.data.some((run) => run.status === "Running");
    data = null;
    return busy;
  }, ctx);
  return () => poller.stop();
}

function sentRuns(body, ctx) {
  // Runs by event id; an event whose runs all ended is not asked for again.
  const runs = new Map();
  let last = "";
  const poller = poll(async () => {
    const ids = sent.list();
    const open = ids.filter((id) => {
      const known = runs.get(id);
      return !known || !known.length || known.some((run) => run.status === "Running");
    });
    await Promise.all(
      open.map(async (id) => runs.set(id, (await api.get(`/v1/events/${encodeURIComponent(id)}/runs`)).data)),
    );
    const shown = ids.flatMap((id) => runs.get(id) || []).slice(0, PAGE);
    const now = JSON.stringify(shown);
    if (now !== last) {
      replace(
        body,
        h(
          "p",
          { class: "notice" },
          `This server does not list runs: shown are the runs of the last ${MAX_SENT} events sent from this tab. `,
          h("a", { href: "#/send" }, "Send an event"),
        ),
        table(shown),
      );
    }
    const changed = now !== last;
    last = now;
    return changed || open.length > 0;
  }, ctx);
  return () => poller.stop();
}
