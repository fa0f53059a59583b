// Send an event (POST /e/{event key}) with a name and JSON data, then follow the runs it started
// (GET /v1/events/{id}/runs) live.

import { api, sent } from "../api.js";
import { badge, h, replace, time } from "../dom.js";
import { poll } from "../poll.js";

// How long the page keeps looking for the first run of an event that started none yet.
const FIRST_RUN_MS = 15000;

export function render(root, _params, ctx) {
  const name = h("input", { id: "event-name", required: true, size: 50, placeholder: "app/user.signed-up" });
  const data = h("textarea", { id: "event-data", spellcheck: "false" }, "{}");
  const message = h("div");
  const result = h("div", { id: "send-result" });
  let poller = null;

  async function submit(e) {
    e.preventDefault();
    replace(message);
    let payload;
    try {
      payload = JSON.parse(data.value || "{}");
    } catch (err) {
      replace(message, h("p", { class: "error" }, `The data is not JSON: ${err.message}`));
      return;
    }
    if (payload === null || typeof payload !== "object" || Array.isArray(payload)) {
      replace(message, h("p", { class: "error" }, "The data must be a JSON object."));
      return;
    }
    let ids;
    try {
      ids = await api.send([{ name: name.value.trim(), data: payload }]);
    } catch (err) {
      if (err.name === "AuthError") return ctx.onAuth(err);
      if (err.elsewhere) return ctx.onElsewhere(err);
      replace(message, h("p", { class: "error" }, `Not sent: ${err.message}`));
      return;
    }
    sent.add(ids);
    follow(ids[0]);
  }

  function follow(eventId) {
    if (poller) poller.stop();
    const since = Date.now();
    const list = h("div", {}, h("p", { class: "muted" }, "Waiting for runs…"));
    replace(result, h("div", { class: "card" }, h("p", {}, "Sent event ", h("a", { href: `#/events/${encodeURIComponent(eventId)}` }, h("code", { id: "sent-event-id" }, eventId))), list));
    poller = poll(async () => {
      const runs = (await api.get(`/v1/events/${encodeURIComponent(eventId)}/runs`)).data;
      if (!runs.length) {
        const waiting = Date.now() - since < FIRST_RUN_MS;
        replace(list, h("p", { class: waiting ? "muted" : "" }, waiting ? "Waiting for runs…" : "No function started a run for this event."));
        return waiting;
      }
      replace(
        list,
        h(
          "table",
          { id: "sent-runs" },
          h("thead", {}, h("tr", {}, ["Run", "Function", "Status", "Started"].map((t) => h("th", {}, t)))),
          h(
            "tbody",
            {},
            runs.map((run) =>
              h(
                "tr",
                { "data-run-id": run.run_id },
                h("td", {}, h("a", { class: "mono", href: `#/runs/${encodeURIComponent(run.run_id)}` }, run.run_id)),
                h("td", { class: "mono" }, run.function_id),
                h("td", {}, badge(run.status), run.skip_reason ? h("div", { class: "muted" }, run.skip_reason) : null),
                h("td", {}, time(run.run_started_at)),
              ),
            ),
          ),
        ),
      );
      return runs.some((run) => run.status === "Running");
    }, ctx);
  }

  replace(
    root,
    h("h1", {}, "Send an event"),
    h(
      "form",
      { class: "card narrow", id: "send-form", onsubmit: submit },
      h("label", { for: "event-name" }, "Name"),
      name,
      h("label", { for: "event-data" }, "Data (a JSON object)"),
      data,
      message,
      h("p", {}, h("button", { type: "submit", id: "send" }, "Send")),
    ),
    result,
  );
  return () => poller && poller.stop();
}
