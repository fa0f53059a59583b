// The key prompt, shown when a `/v1` call is refused (under `connect serve`).

import { keys } from "../api.js";
import { h, replace } from "../dom.js";

export function render(root, [reason], ctx) {
  const signing = h("input", { id: "signing-key", type: "password", autocomplete: "off", required: true, size: 60 });
  const event = h("input", { id: "event-key", type: "password", autocomplete: "off", size: 60 });
  const form = h(
    "form",
    {
      class: "card narrow",
      onsubmit: (e) => {
        e.preventDefault();
        keys.set(signing.value, event.value);
        ctx.done();
      },
    },
    h("h1", {}, "This server needs its signing key"),
    h(
      "p",
      { class: "muted" },
      "The key is kept in this tab only (sessionStorage) and sent with each API call as a bearer token. ",
      "The event key is used to send events from the page.",
    ),
    reason && keys.signing() ? h("p", { class: "error" }, reason) : null,
    h("label", { for: "signing-key" }, "Signing key"),
    signing,
    h("label", { for: "event-key" }, "Event key (to send events)"),
    event,
    h("p", {}, h("button", { type: "submit", id: "sign-in" }, "Use these keys")),
  );
  replace(root, form);
  signing.focus();
}
