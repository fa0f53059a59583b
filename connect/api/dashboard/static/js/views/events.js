// Events (GET /v1/events), newest first, PAGE at a time, filtered by name; each links to its view.

import { api } from "../api.js";
import { h, replace, time } from "../dom.js";
import { missing, Pages } from "../pager.js";
import { poll } from "../poll.js";

export const PAGE = 50;

export function render(root, _params, ctx) {
  const body = h("div", {}, h("p", { class: "muted" }, "Loading…"));
  let name = "";
  let last = "";
  const pages = new Pages(() => {
    last = "";
    poller.now();
  });
  const filter = h("input", {
    id: "event-filter",
    placeholder: "Event name",
    onchange: (e) => {
      name = e.target.value.trim();
      pages.reset();
    },
  });
  replace(root, h("h1", {}, "Events"), h("div", { class: "toolbar" }, filter), body);

  const poller = poll(async () => {
    const q = new URLSearchParams({ limit: String(PAGE) });
    if (name) q.set("name", name);
    if (pages.cursor()) q.set("cursor", pages.cursor());
    let resp;
    try {
      resp = await api.get(`/v1/events?${q}`);
    } catch (err) {
      if (err.name === "ApiError" && err.noRoute) {
        replace(body, missing("events"));
        poller.stop();
        return false;
      }
      throw err;
    }
    const now = JSON.stringify(resp);
    if (now === last) return false;
    last = now;
    pages.answered(resp.cursor);
    replace(
      body,
      resp.data.length
        ? h(
            "table",
            { id: "events" },
            h("thead", {}, h("tr", {}, ["Event", "Name", "Received"].map((t) => h("th", {}, t)))),
            h(
              "tbody",
              {},
              resp.data.map((ev) =>
                h(
                  "tr",
                  { "data-event-id": ev.id },
                  h("td", {}, h("a", { class: "mono", href: `#/events/${encodeURIComponent(ev.id)}` }, ev.id)),
                  h("td", { class: "mono" }, ev.name),
                  h("td", {}, time(ev.received_at)),
                ),
              ),
            ),
          )
        : h("p", { class: "muted", id: "no-events" }, "No events yet."),
      pages.controls(Boolean(resp.cursor)),
    );
    return true;
  }, ctx);
  return () => poller.stop();
}
