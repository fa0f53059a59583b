// Building DOM nodes from data. Text always goes in as text (never as HTML), so nothing a
// function, event or step returns can run as script in the page.

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "class") el.className = value;
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

export function badge(text) {
  return h("span", { class: `badge ${text}` }, text);
}

export function json(value) {
  return h("pre", {}, JSON.stringify(value, null, 2));
}

// An ISO-8601 time as the browser's local time, with the ISO text on hover.
export function time(iso) {
  if (!iso) return h("span", { class: "muted" }, "—");
  const d = new Date(iso);
  return h("span", { title: iso }, isNaN(d) ? iso : d.toLocaleString());
}

export function replace(root, ...children) {
  root.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
}
