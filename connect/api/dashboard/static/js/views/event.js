// One event (GET /v1/events/{id}): its name, data and times, the debounces and batches that
// held it (which function, why, until when, and then its run), the runs it started (or that it
// matched no function), and a Replay button (POST /v1/events/{id}/replay: the same name and data
// sent again as a new event).

import { api } from "../api.js";
import { badge, h, json, replace, time } from "../dom.js";
import { missing } from "../pager.js";
import { poll } from "../poll.js";
import { table } from "./runs.js";

const HOLD_STATUS = {
  held: "Held",
  started: "Started",
  replaced: "Replaced",
};

function holdNote(hold) {
  if (hold.status === "held") return hold.kind === "batch" ? "until the batch fills, or at most until " : "its run starts at ";
  if (hold.status === "replaced") return "a later event started the debounced run instead";
  return "";
}

// The functions whose debounce or batch held the event (empty: none did).
function holds(list) {
  if (!list || !list.length) return null;
  return h(
    "div",
    {},
    h("h2", {}, "Held"),
    h(
      "table",
      { id: "holds" },
      h("thead", {}, h("tr", {}, ["Function", "Why", "Key", "Status", "Held at", "Run"].map((t) => h("th", {}, t)))),
      h(
        "tbody",
        {},
        list.map((hold) =>
          h(
            "tr",
            { "data-function": hold.function_id, "data-status": hold.status },
            h("td", { class: "mono" }, hold.function_id),
            h("td", {}, hold.kind),
            h("td", { class: "mono" }, hold.key ?? h("span", { class: "muted" }, "(none)")),
            h("td", {}, badge(HOLD_STATUS[hold.status] || hold.status), h("div", { class: "muted" }, holdNote(hold), hold.due_at ? time(hold.due_at) : "")),
            h("td", {}, time(hold.held_at)),
            h("td", {}, hold.run_id ? h("a", { class: "mono", href: `#/runs/${encodeURIComponent(hold.run_id)}` }, hold.run_id) : "—"),
          ),
        ),
      ),
    ),
  );
}

export async function render(root, [eventId], ctx) {
  const path = `/v1/events/${encodeURIComponent(eventId)}`;
  const head = h("div");
  const held = h("div");
  const runs = h("div");
  const message = h("div", { id: "replay-result" });
  replace(root, h("p", {}, h("a", { href: "#/events" }, "← Events")), h("h1", {}, "Event ", h("span", { class: "mono" }, eventId)), message, head, held, h("h2", {}, "Runs"), runs);
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
    replace(held, holds(ev.held));
    const waiting = (ev.held || []).some((hold) => hold.status === "held");
    replace(
      runs,
      ev.matched === false
        ? h("p", { class: "notice", id: "unmatched" }, "This event matched no function: it started no run.")
        : !(ev.runs || []).length && waiting
          ? h("p", { class: "muted", id: "no-runs-yet" }, "No run yet: the event is held (above).")
          : table(ev.runs || []),
    );
    return waiting || (ev.runs || []).some((run) => run.status === "Running");
  }, ctx);
  return () => poller.stop();
}
