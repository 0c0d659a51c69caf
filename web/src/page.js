// The page's shared plumbing: element lookup, the polite live region, remembered values and the
// room link (with the join token a link may carry). Owns nothing of the lobby or the room; it
// must never import another module of the app, so that every module can use it.

export const $ = (id) => document.getElementById(id);

// A link minted with `videoroom token` carries `?room=<name>&token=<token>`. The token admits to
// that room only; it is sent with the join (the server ignores it unless it has a join secret).
export const link = (() => {
  const params = new URLSearchParams(location.search);
  const room = params.get("room");
  const token = params.get("token");
  return room && token ? { room, token } : null;
})();

export function tokenFor(room) {
  return link && link.room === room ? link.token : null;
}

export function roomQuery(room) {
  const token = tokenFor(room);
  const q = `?room=${encodeURIComponent(room)}`;
  return token ? `${q}&token=${encodeURIComponent(token)}` : q;
}

export function inviteUrl(room) {
  return `${location.origin}${location.pathname}${roomQuery(room)}`;
}

/** Says `text` through the polite live region (cleared first, so a repeat is announced too). */
export function announce(text) {
  const region = $("announce");
  region.textContent = "";
  requestAnimationFrame(() => {
    region.textContent = text;
  });
}

export function remember(key, value) {
  try {
    localStorage.setItem(key, value);
  } catch (_) {
    // Storage may be disabled (private mode); remembering is a convenience only.
  }
}

export function recall(key) {
  try {
    return localStorage.getItem(key) || "";
  } catch (_) {
    return "";
  }
}
