// The page's shell: a hash router over one module per view (js/views/NAME.js, each exporting
// `render(root, params, ctx)`, which may return a function that stops its updates), the key
// prompt when the server asks for one, and the live-update indicator.

import { keys } from "./api.js";
import { setIndicator } from "./poll.js";

// "#/runs/ID" -> view "run" with params ["ID"]. A new view is a module and a line here.
const ROUTES = [
  [/^#\/runs\/([^/]+)$/, "run"],
  [/^#\/runs\/?$/, "runs"],
  [/^#\/events\/([^/]+)$/, "event"],
  [/^#\/events\/?$/, "events"],
  [/^#\/functions\/([^/]+)\/runs$/, "runs"],
  [/^#\/functions\/?$/, "functions"],
  [/^#\/apps\/?$/, "apps"],
  [/^#\/workers\/?$/, "workers"],
  [/^#\/send\/?$/, "send"],
];
const DEFAULT = "#/runs";

const root = document.getElementById("view");
const signout = document.getElementById("signout");
let cleanup = null;
let generation = 0;

function route() {
  const hash = location.hash || DEFAULT;
  for (const [pattern, name] of ROUTES) {
    const match = hash.match(pattern);
    if (match) return { name, params: match.slice(1).map(decodeURIComponent) };
  }
  return { name: "runs", params: [] };
}

function stop() {
  if (cleanup) cleanup();
  cleanup = null;
}

async function show(name, params) {
  stop();
  const mine = ++generation;
  for (const link of document.querySelectorAll("#nav a")) {
    const view = link.dataset.view;
    link.classList.toggle("active", view === name || view === `${name}s`);
  }
  signout.hidden = !keys.signing();
  const ctx = { onAuth: askForKey, onElsewhere: pointElsewhere, go: (hash) => (location.hash = hash) };
  try {
    const view = await import(`./views/${name}.js`);
    if (mine !== generation) return;
    const done = await view.render(root, params, ctx);
    if (mine !== generation) {
      if (typeof done === "function") done();
      return;
    }
    cleanup = typeof done === "function" ? done : null;
  } catch (err) {
    if (err && err.name === "AuthError") askForKey(err);
    else if (err && err.elsewhere) pointElsewhere(err);
    else {
      root.replaceChildren();
      const p = document.createElement("p");
      p.className = "error";
      p.textContent = `Could not show this view: ${err && err.message ? err.message : err}`;
      root.append(p);
    }
  }
}

// This process serves no API: say so, with links to the API processes that do.
async function pointElsewhere(err) {
  stop();
  const mine = ++generation;
  const elsewhere = await import("./views/elsewhere.js");
  if (mine === generation) elsewhere.render(root, [err]);
}

async function askForKey(err) {
  stop();
  generation++;
  const signin = await import("./views/signin.js");
  signin.render(root, [err && err.message], {
    done: () => {
      const { name, params } = route();
      show(name, params);
    },
  });
}

signout.addEventListener("click", () => {
  keys.forget();
  signout.hidden = true;
  const { name, params } = route();
  show(name, params);
});

setIndicator(document.getElementById("live"));
window.addEventListener("hashchange", () => {
  const { name, params } = route();
  show(name, params);
});
const { name, params } = route();
show(name, params);
