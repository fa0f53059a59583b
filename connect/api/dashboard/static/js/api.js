// Calls to the REST API, with the key this tab was given (see the dashboard's module doc in
// connect/api/dashboard/__init__.py): the signing key as a bearer token on `/v1`, the event key
// in the path of `POST /e/{key}`. Both live in sessionStorage, so they end with the tab.

const SIGNING = "connect.signingKey";
const EVENT = "connect.eventKey";

export class AuthError extends Error {
  constructor(message) {
    super(message);
    this.name = "AuthError";
  }
}

export class ApiError extends Error {
  constructor(status, message, body = null) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.body = body;
  }
  // The server has no such route (an older server): the view that needs it says so.
  get noRoute() {
    return this.status === 404 && this.message.startsWith("no route");
  }
  // This process serves no API (a gateway on its own): the addresses of the API processes its
  // store's registry lists (maybe none), or null for any other error. The page then points there.
  get elsewhere() {
    const urls = this.body && this.body.api_urls;
    return this.status === 503 && Array.isArray(urls) ? urls : null;
  }
}

export const keys = {
  signing: () => sessionStorage.getItem(SIGNING) || "",
  event: () => sessionStorage.getItem(EVENT) || "dev",
  set(signing, event) {
    sessionStorage.setItem(SIGNING, signing.trim());
    if (event && event.trim()) sessionStorage.setItem(EVENT, event.trim());
  },
  forget() {
    sessionStorage.removeItem(SIGNING);
    sessionStorage.removeItem(EVENT);
  },
};

async function call(path, options = {}) {
  const headers = { Accept: "application/json", ...(options.headers || {}) };
  const key = keys.signing();
  if (key && path.startsWith("/v1/")) headers.Authorization = `Bearer ${key}`;
  const resp = await fetch(path, { ...options, headers });
  let body = null;
  try {
    body = await resp.json();
  } catch {
    body = null;
  }
  if (resp.status === 401) throw new AuthError((body && body.error) || "authentication failed");
  if (!resp.ok && resp.status !== 202) {
    throw new ApiError(resp.status, (body && body.error) || `${resp.status} ${resp.statusText}`, body);
  }
  return body;
}

export const api = {
  get: (path) => call(path),
  post: (path, payload) =>
    call(path, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: payload === undefined ? undefined : JSON.stringify(payload),
    }),
  // POST /e/{event key}: answers the new event ids.
  async send(events) {
    const body = await call(`/e/${encodeURIComponent(keys.event())}`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(events),
    });
    return body.ids;
  },
};

// The events this tab sent, newest first (at most MAX_SENT): the runs view follows their runs
// when the server has no `GET /v1/runs` to list them all.
const SENT = "connect.sentEvents";
export const MAX_SENT = 50;
export const sent = {
  list() {
    try {
      return JSON.parse(sessionStorage.getItem(SENT) || "[]");
    } catch {
      return [];
    }
  },
  add(ids) {
    const all = [...ids, ...sent.list().filter((id) => !ids.includes(id))].slice(0, MAX_SENT);
    sessionStorage.setItem(SENT, JSON.stringify(all));
  },
};
