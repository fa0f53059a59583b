// Runs, newest first, PAGE at a time, updating live.
//
// A server with `GET /v1/runs` lists every run, filtered by status and function, a page at a
// time by its cursor (the page shown is looked at again; older pages are asked for when the user
// goes to them). A server without it: the runs of the events sent from this tab (at most
// MAX_SENT events; an event's runs are not asked for again once they all ended).

import { api, MAX_SENT, sent } from "../api.js";
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

export async function render(root, _params, ctx) {
  const body = h("div", {}, h("p", { class: "muted" }, "Loading…"));
  const toolbar = h("div", { class: "toolbar" });
  replace(root, h("h1", {}, "Runs"), toolbar, body);
  let probe;
  try {
    probe = await api.get(`/v1/runs?limit=${PAGE}`);
  } catch (err) {
    if (!(err.name === "ApiError" && err.noRoute)) throw err;
    return sentRuns(body, ctx);
  }
  return allRuns(toolbar, body, ctx, probe);
}

function allRuns(toolbar, body, ctx, first) {
  let status = "";
  let fn = "";
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
    onchange: (e) => reset({ fn: e.target.value.trim() }),
  });
  replace(toolbar, statusSelect, fnInput);

  function reset(change) {
    if ("status" in change) status = change.status;
    if ("fn" in change) fn = change.fn;
    cursors = [null];
    page = 0;
    last = "";
    poller.now();
  }

  function url() {
    const q = new URLSearchParams({ limit: String(PAGE) });
    if (status) q.set("status", status);
    if (fn) q.set("function", fn);
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

  function go(to) {
    page = to;
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
