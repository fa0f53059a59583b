// Apps: each registered app (GET /v1/apps) with its functions (served, or refused with the
// reason, and the options not honoured) and the worker connections that serve it now
// (GET /v1/workers, the connections whose `apps` name it). Updated live.

import { api } from "../api.js";
import { h, replace } from "../dom.js";
import { poll } from "../poll.js";
import { functionTable } from "./functions.js";
import { MAX_ROWS, workerTable } from "./workers.js";

// GET /v1/workers, or null when this server does not list workers (an older one, or one that
// cannot know them): the view then says so under each app.
async function workers() {
  try {
    return (await api.get("/v1/workers")).data;
  } catch (err) {
    if (err.name === "ApiError" && (err.noRoute || err.status === 503) && !err.elsewhere) return null;
    throw err;
  }
}

function appCard(app, connections) {
  const mine = connections === null ? null : connections.filter((w) => (w.apps || []).includes(app.name));
  const refused = app.functions.filter((fn) => fn.status !== "active").length;
  let served;
  if (mine === null) served = h("p", { class: "muted" }, "This server does not list workers.");
  else if (!mine.length) served = h("p", { class: "muted no-app-workers" }, "No worker of this app is connected.");
  else {
    const table = workerTable(mine.slice(0, MAX_ROWS));
    served = [table, mine.length > MAX_ROWS ? h("p", { class: "muted" }, `and ${mine.length - MAX_ROWS} more`) : null];
  }
  return h(
    "section",
    { class: "app card", "data-app": app.name },
    h(
      "h2",
      {},
      h("span", { class: "mono" }, app.name),
      app.version ? h("span", { class: "muted" }, `version ${app.version}`) : null,
      h("span", { class: "muted" }, `${app.functions.length} function${app.functions.length === 1 ? "" : "s"}`),
      refused ? h("span", { class: "badge refused" }, `${refused} refused`) : null,
      mine === null ? null : h("span", { class: "muted app-workers-count" }, `${mine.length} connection${mine.length === 1 ? "" : "s"}`),
    ),
    app.functions.length ? functionTable(app.functions, { withApp: false }) : h("p", { class: "muted" }, "No functions."),
    h("h3", {}, "Workers"),
    served,
  );
}

export function render(root, _params, ctx) {
  const body = h("div", {}, h("p", { class: "muted" }, "Loading…"));
  replace(root, h("h1", {}, "Apps"), body);
  let last = "";
  const poller = poll(async () => {
    const [apps, connections] = await Promise.all([api.get("/v1/apps").then((r) => r.data), workers()]);
    const now = JSON.stringify([apps, connections]);
    if (now === last) return false;
    last = now;
    replace(
      body,
      apps.length
        ? h("div", { id: "apps" }, apps.map((app) => appCard(app, connections)))
        : h("p", { class: "muted", id: "no-apps" }, "No app has registered yet: start a worker."),
    );
    return true;
  }, ctx);
  return () => poller.stop();
}
