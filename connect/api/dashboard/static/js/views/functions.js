// Functions: every function the apps registered (GET /v1/functions), served or refused with the
// reason, its triggers and the options it registered that are not honoured. A page of PAGE rows
// at a time, filtered in the page.

import { api } from "../api.js";
import { badge, h, replace } from "../dom.js";
import { poll } from "../poll.js";

export const PAGE = 50;

function trigger(t) {
  if (t.cron) return `cron ${t.cron}`;
  return t.expression ? `${t.event} if ${t.expression}` : t.event;
}

// A table of functions as GET /v1/functions lists them; `withApp`: an App column. Each id links
// to the runs of that function (where they can be cancelled many at once).
export function functionTable(list, { withApp = true } = {}) {
  const rows = list.map((fn) => {
    const skipped = Object.keys(fn.not_honoured || {});
    return h(
      "tr",
      { "data-function-id": fn.id },
      h(
        "td",
        {},
        h("a", { class: "mono", href: `#/functions/${encodeURIComponent(fn.id)}/runs`, title: "Runs of this function" }, fn.id),
        fn.name && fn.name !== fn.id ? h("div", { class: "muted" }, fn.name) : null,
      ),
      withApp ? h("td", {}, fn.app) : null,
      h("td", { class: "mono" }, (fn.triggers || []).map((t) => h("div", {}, trigger(t)))),
      h("td", {}, badge(fn.status), fn.reason ? h("div", { class: "error" }, fn.reason) : null),
      h("td", {}, skipped.length ? h("span", { class: "mono", title: JSON.stringify(fn.not_honoured) }, skipped.join(", ")) : h("span", { class: "muted" }, "—")),
    );
  });
  const heads = ["Function", withApp ? "App" : null, "Triggers", "Status", "Options not honoured"].filter(Boolean);
  return h("table", { class: "functions" }, h("thead", {}, h("tr", {}, heads.map((t) => h("th", {}, t)))), h("tbody", {}, rows));
}

export async function render(root, _params, ctx) {
  let all = [];
  let seen = "";
  let page = 0;
  let filter = "";
  const body = h("div", {}, h("p", { class: "muted" }, "Loading…"));
  const search = h("input", {
    type: "search",
    placeholder: "Filter by id, app or trigger",
    size: 40,
    oninput: (e) => {
      filter = e.target.value.toLowerCase();
      page = 0;
      draw();
    },
  });
  replace(root, h("h1", {}, "Functions"), h("div", { class: "toolbar" }, search), body);

  function draw() {
    const shown = all.filter((fn) =>
      !filter ? true : JSON.stringify([fn.id, fn.app, fn.name, fn.triggers]).toLowerCase().includes(filter),
    );
    if (!all.length) {
      replace(body, h("p", { class: "muted" }, "No app has registered a function yet: start a worker."));
      return;
    }
    const pages = Math.max(1, Math.ceil(shown.length / PAGE));
    page = Math.min(page, pages - 1);
    const table = functionTable(shown.slice(page * PAGE, (page + 1) * PAGE));
    table.id = "functions";
    replace(
      body,
      table,
      pages > 1
        ? h(
            "div",
            { class: "pager" },
            h("button", { class: "secondary", disabled: page === 0, onclick: () => { page--; draw(); } }, "Previous"),
            h("span", { class: "muted" }, `Page ${page + 1} of ${pages} (${shown.length} functions)`),
            h("button", { class: "secondary", disabled: page >= pages - 1, onclick: () => { page++; draw(); } }, "Next"),
          )
        : null,
    );
  }

  await api.get("/v1/functions").then((resp) => {
    all = resp.data;
    seen = JSON.stringify(all);
    draw();
  });
  const poller = poll(async () => {
    const resp = await api.get("/v1/functions");
    const now = JSON.stringify(resp.data);
    if (now === seen) return false;
    all = resp.data;
    seen = now;
    draw();
    return true;
  }, ctx);
  return () => poller.stop();
}
