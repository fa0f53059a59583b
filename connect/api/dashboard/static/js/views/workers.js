// Workers (GET /v1/workers): each connection with its instance, gateway, apps, state, requests
// in flight against the instance's capacity, and last heartbeat.

import { api } from "../api.js";
import { badge, h, replace, time } from "../dom.js";
import { missing } from "../pager.js";
import { poll } from "../poll.js";

// No view lists more rows than this; the count of the others is said.
export const MAX_ROWS = 200;

// A table of worker connections as GET /v1/workers lists them.
export function workerTable(list) {
  return h(
    "table",
    { class: "workers" },
    h("thead", {}, h("tr", {}, ["Instance", "Connection", "Gateway", "Apps", "State", "In flight", "Last heartbeat"].map((t) => h("th", {}, t)))),
    h(
      "tbody",
      {},
      list.map((w) =>
        h(
          "tr",
          { "data-connection-id": w.connection_id },
          h("td", { class: "mono" }, w.instance_id || "—"),
          h("td", { class: "mono" }, w.connection_id),
          h("td", { class: "mono" }, w.gateway || "—"),
          h("td", {}, (w.apps || []).join(", ")),
          h("td", {}, badge(w.state)),
          h("td", {}, `${w.in_flight ?? 0} / ${w.capacity ?? "∞"}`),
          h("td", {}, time(w.last_heartbeat)),
        ),
      ),
    ),
  );
}

export function render(root, _params, ctx) {
  const body = h("div", {}, h("p", { class: "muted" }, "Loading…"));
  replace(root, h("h1", {}, "Workers"), body);
  let last = "";
  const poller = poll(async () => {
    let list;
    try {
      list = (await api.get("/v1/workers")).data;
    } catch (err) {
      if (err.name === "ApiError" && err.noRoute) {
        replace(body, missing("workers"));
        poller.stop();
        return false;
      }
      throw err;
    }
    const now = JSON.stringify(list);
    if (now === last) return false;
    last = now;
    if (!list.length) {
      replace(body, h("p", { class: "muted", id: "no-workers" }, "No worker is connected."));
      return true;
    }
    const table = workerTable(list.slice(0, MAX_ROWS));
    table.id = "workers";
    replace(
      body,
      table,
      list.length > MAX_ROWS ? h("p", { class: "muted" }, `and ${list.length - MAX_ROWS} more`) : null,
    );
    return true;
  }, ctx);
  return () => poller.stop();
}
