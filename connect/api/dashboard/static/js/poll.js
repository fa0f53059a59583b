// Live updates by polling with backoff. A view's `tick` returns true while something it shows
// may still change (a run is Running, or the last look found a change): the next look is then
// FAST_MS away. Each look that finds nothing doubles the pause up to IDLE_MS; a failed look
// doubles it up to ERROR_MS. Nothing is asked while the tab is hidden; showing it looks at once.

export const FAST_MS = 1000;
export const IDLE_MS = 10000;
export const ERROR_MS = 30000;

let indicator = null;
export function setIndicator(el) {
  indicator = el;
}

// `onAuth(err)` is called (and polling stops) when the server refuses the key.
export function poll(tick, { onAuth } = {}) {
  let pause = FAST_MS;
  let timer = null;
  let stopped = false;
  let running = false;

  async function look() {
    timer = null;
    if (stopped || running) return;
    if (document.hidden) return; // resumed by visibilitychange
    running = true;
    try {
      const busy = await tick();
      pause = busy ? FAST_MS : Math.min(pause * 2, IDLE_MS);
      if (indicator) indicator.className = "live on";
    } catch (err) {
      pause = Math.min(Math.max(pause, FAST_MS) * 2, ERROR_MS);
      if (indicator) indicator.className = "live off";
      if (err && err.name === "AuthError") {
        stopped = true;
        if (onAuth) onAuth(err);
      } else {
        console.warn("dashboard: a live update failed; retrying in", pause, "ms", err);
      }
    } finally {
      running = false;
    }
    if (!stopped) timer = setTimeout(look, pause);
  }

  function visible() {
    if (!document.hidden && !stopped) {
      if (timer) clearTimeout(timer);
      pause = FAST_MS;
      look();
    }
  }

  document.addEventListener("visibilitychange", visible);
  look();
  return {
    // Look again now (after the user did something), at the fast pace.
    now() {
      pause = FAST_MS;
      if (timer) clearTimeout(timer);
      look();
    },
    stop() {
      stopped = true;
      if (timer) clearTimeout(timer);
      document.removeEventListener("visibilitychange", visible);
    },
  };
}
