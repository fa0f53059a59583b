// Shown when this process serves the page but not the API it reads (a gateway on its own: its
// `/v1` routes answer 503 with `api_urls`, the API processes its store's registry lists). Each
// address links to the same view there.

import { h, replace } from "../dom.js";

export function render(root, [err]) {
  const urls = err.elsewhere || [];
  const here = location.hash || "#/runs";
  replace(
    root,
    h(
      "div",
      { class: "card narrow", id: "elsewhere" },
      h("h1", {}, "This process serves no API"),
      h("p", {}, `It answered: ${err.message}.`),
      urls.length
        ? [
            h("p", {}, urls.length === 1 ? "The API process registered now:" : "The API processes registered now:"),
            h(
              "ul",
              { id: "api-urls" },
              urls.map((url) => h("li", {}, h("a", { class: "mono", href: `${url.replace(/\/+$/, "")}/${here}` }, url))),
            ),
          ]
        : h(
            "p",
            { class: "notice", id: "no-api" },
            "No API process is registered in this process's store now. Start one (connect serve --role api, on the same database) and load this page again, or open the dashboard on the port of a process that runs the API.",
          ),
    ),
  );
}
