// Live updates by polling with backoff. A view's `tick` returns true while something it shows
// may still change (a run is Running, or the last look found a change): the next look is then
// FAST_MS away. Each look that finds nothing doubles the pause up to IDLE_MS; a failed look
// doubles it up to ERROR_MS (backoff.js). Nothing is asked while the tab is hidden; showing it
// looks at once.

import { FAST_MS, nextPause } from "./backoff.js";

let indicator = null;
export function setIndicator(el) {
  indicator = el;
}

// `onAuth(err)` is called (and polling stops) when the server refuses the key;
// `onElsewhere(err)` when this process serves no API (`err.elsewhere`: where it is served).
export function poll(tick, { onAuth, onElsewhere } = {}) {
  let pause = FAST_MS;
  let timer = null;
  let stopped = false;
  let running = false;
  // Asked to look again while a look was under way: look once more as soon as it ends.
  let again = false;

  async function look() {
    timer = null;
    if (stopped) return;
    if (running) {
      again = true;
      return;
    }
    if (document.hidden) return; // resumed by visibilitychange
    running = true;
    try {
      const busy = await tick();
      pause = nextPause(pause, busy ? "busy" : "idle");
      if (indicator) indicator.className = "live on";
    } catch (err) {
      pause = nextPause(pause, "error");
      if (indicator) indicator.className = "live off";
      if (err && err.name === "AuthError") {
        stopped = true;
        if (onAuth) onAuth(err);
      } else if (err && err.elsewhere && onElsewhere) {
        stopped = true;
        onElsewhere(err);
      } else {
        console.warn("dashboard: a live update failed; retrying in", pause, "ms", err);
      }
    } finally {
      running = false;
    }
    if (!stopped) timer = setTimeout(look, again ? 0 : pause);
    again = false;
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
