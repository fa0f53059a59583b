// One event (GET /v1/events/{id}): its name, data and times, the runs it started (or that it
// matched no function), and a Replay button (POST /v1/events/{id}/replay: the same name and data
// sent again as a new event).

import { api } from "../api.js";
import { h, json, replace, time } from "../dom.js";
import { missing } from "../pager.js";
import { poll } from "../poll.js";
import { table } from "./runs.js";

export async function render(root, [eventId], ctx) {
  const path = `/v1/events/${encodeURIComponent(eventId)}`;
  const head = h("div");
  const runs = h("div");
  const message = h("div", { id: "replay-result" });
  replace(root, h("p", {}, h("a", { href: "#/events" }, "← Events")), h("h1", {}, "Event ", h("span", { class: "mono" }, eventId)), message, head, h("h2", {}, "Runs"), runs);
  try {
    await api.get(path);
  } catch (err) {
    if (err.name === "ApiError" && err.noRoute) {
      replace(head, missing("events"));
      return undefined;
    }
    throw err;
  }
  let last = "";

  async function replay(button) {
    button.disabled = true;
    try {
      const resp = await api.post(`${path}/replay`);
      const id = resp.data.id;
      replace(message, h("p", { class: "notice" }, "Replayed as ", h("a", { class: "mono", id: "replayed-event", href: `#/events/${encodeURIComponent(id)}` }, id)));
    } catch (err) {
      if (err.name === "AuthError") return ctx.onAuth(err);
      replace(message, h("p", { class: "error" }, `Not replayed: ${err.message}`));
    } finally {
      button.disabled = false;
    }
  }

  const poller = poll(async () => {
    const ev = (await api.get(path)).data;
    const now = JSON.stringify(ev);
    if (now === last) return false;
    last = now;
    replace(
      head,
      h(
        "div",
        { class: "card" },
        h(
          "dl",
          { class: "facts" },
          h("dt", {}, "Name"),
          h("dd", { class: "mono", id: "event-name" }, ev.name),
          h("dt", {}, "Received"),
          h("dd", {}, time(ev.received_at)),
        ),
        h("p", {}, h("button", { class: "secondary", id: "replay", onclick: (e) => replay(e.target) }, "Replay")),
      ),
      h("h2", {}, "Data"),
      h("div", { id: "event-data" }, json(ev.data)),
    );
    replace(
      runs,
      ev.matched === false
        ? h("p", { class: "notice", id: "unmatched" }, "This event matched no function: it started no run.")
        : table(ev.runs || []),
    );
    return (ev.runs || []).some((run) => run.status === "Running");
  }, ctx);
  return () => poller.stop();
}
