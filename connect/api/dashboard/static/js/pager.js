// Pages of a `{"data": [...], "cursor": ...}` listing, newest first: the page shown is asked
// for again at each look; older pages when the user goes to them (by the cursor the page before
// answered).

import { h } from "./dom.js";

export class Pages {
  constructor(onChange) {
    this.cursors = [null]; // cursors[i] is the cursor of page i (page 0 has none)
    this.page = 0;
    this.onChange = onChange;
  }
  reset() {
    this.cursors = [null];
    this.page = 0;
    this.onChange();
  }
  cursor() {
    return this.cursors[this.page];
  }
  // Record the cursor the page shown answered (that of the next page).
  answered(cursor) {
    this.cursors[this.page + 1] = cursor || null;
  }
  controls(hasOlder) {
    const go = (to) => {
      this.page = to;
      this.onChange();
    };
    return h(
      "div",
      { class: "pager" },
      h("button", { class: "secondary", disabled: this.page === 0, onclick: () => go(this.page - 1) }, "Newer"),
      h("span", { class: "muted" }, `Page ${this.page + 1}`),
      h("button", { class: "secondary", id: "older", disabled: !hasOlder, onclick: () => go(this.page + 1) }, "Older"),
    );
  }
}

// The message a view shows when the server has no route for it (an older server).
export function missing(what) {
  return h("p", { class: "notice", id: "not-available" }, `This server does not list ${what}.`);
}
