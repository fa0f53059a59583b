// The pause before a view's next look at the server, in milliseconds (see poll.js): FAST_MS
// after a look that found something running or changed, doubled (up to IDLE_MS) after one that
// found nothing new, doubled (up to ERROR_MS) after one that failed. Pure: poll.js keeps the
// state and the timers.

export const FAST_MS = 1000;
export const IDLE_MS = 10000;
export const ERROR_MS = 30000;

// outcome: "busy", "idle" or "error".
export function nextPause(pause, outcome) {
  if (outcome === "busy") return FAST_MS;
  if (outcome === "idle") return Math.min(Math.max(pause, FAST_MS) * 2, IDLE_MS);
  return Math.min(Math.max(pause, FAST_MS) * 2, ERROR_MS);
}
