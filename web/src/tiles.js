// The tiles and the participants list: building a peer's or a screen share's tile and entry, and
// drawing a peer's state on them (name, mute, missing devices, connection health). Owns the tile
// DOM; it must never decide where a tile goes (layout.js) or judge the connection (health.js).

const QUALITY_TEXT = { weak: "Weak connection", bad: "Poor connection" };

function initials(name) {
  const parts = name.split(" ").filter(Boolean);
  const letters = parts.length > 1 ? [parts[0], parts[parts.length - 1]] : [name];
  return letters.map((p) => [...p][0] || "").join("").toUpperCase();
}

/**
 * What every tile is made of: a toggle button (it pins that tile large, see layout.js) holding a
 * silent video, the initials for when there is no video, and a label.
 */
function tileSkeleton(className, id) {
  const tile = document.createElement("div");
  tile.className = className;
  tile.dataset.peerId = id;
  tile.tabIndex = 0;
  tile.setAttribute("role", "button");
  tile.setAttribute("aria-pressed", "false");
  const video = document.createElement("video");
  video.autoplay = true;
  video.playsInline = true;
  video.muted = true; // sound, where there is any, goes through the <audio> element
  const avatar = document.createElement("div");
  avatar.className = "avatar";
  avatar.setAttribute("aria-hidden", "true"); // the initials only repeat the name
  const label = document.createElement("div");
  label.className = "label";
  return { tile, video, avatar, label };
}

export function makeTile(id, name, local) {
  const { tile, video, avatar, label } = tileSkeleton(`tile no-video${local ? " local" : ""}`, id);
  const audio = document.createElement("audio");
  audio.autoplay = true;
  const devices = document.createElement("div");
  devices.className = "devices";
  // The name shrinks (ellipsis); "(you)" and "muted" never do, so they stay readable.
  label.innerHTML = '<span class="name"></span> <span class="you">(you)</span> <span class="badge">muted</span>';
  label.querySelector(".you").hidden = !local;
  // Over the video when the peer's media stopped arriving; a live region, so it is heard too.
  const interrupted = document.createElement("div");
  interrupted.className = "interrupted";
  interrupted.setAttribute("aria-live", "polite");
  // Network quality, shown only when it is not good: bars, with words for screen readers.
  const quality = document.createElement("div");
  quality.className = "quality";
  quality.hidden = true;
  quality.innerHTML = '<span class="bars" aria-hidden="true"><i></i><i></i><i></i></span><span class="visually-hidden"></span>';
  // The spaces keep the label's and the markers' words apart in the tile's text, which is in the
  // order the aria-label says it (see renderPeer).
  tile.append(video, audio, avatar, label, " ", devices, " ", interrupted, quality);
  const entry = document.createElement("li");
  entry.dataset.peerId = id;
  entry.innerHTML = '<span class="dot"></span><span class="who"><span class="name"><span class="text"></span></span><span class="flags"></span></span>';
  // As on the tile, a long name is ellipsised but "(you)" is not.
  if (local) entry.querySelector(".name").insertAdjacentHTML("beforeend", '<span class="you"> (you)</span>');
  return { id, name, local, tile, video, audio, avatar, devices, label, entry, interruptedBox: interrupted, qualityEl: quality };
}

/** A tile for `owner`'s screen share: pinnable like the others, no sound, no markers. */
export function makeScreenTile(owner) {
  const { tile, video, avatar, label } = tileSkeleton("tile screen no-video", `screen:${owner.id}`);
  label.innerHTML = '<span class="name"></span>';
  tile.append(video, avatar, label);
  const s = { id: tile.dataset.peerId, owner, screen: true, tile, video, avatar, label, hasVideo: false };
  renderScreen(s);
  return s;
}

export function renderScreen(s) {
  const text = s.owner.local ? "Your screen" : `${s.owner.name}'s screen`;
  const nameEl = s.label.querySelector(".name");
  nameEl.textContent = text;
  nameEl.title = text;
  s.avatar.dataset.initials = initials(s.owner.name);
  s.tile.title = text;
  s.tile.setAttribute("aria-label", text);
  s.tile.classList.toggle("no-video", !s.hasVideo);
}

/** Devices a peer has none of ("no camera", "no mic"): from its endpoint metadata. */
function missingDevices(p) {
  const missing = [];
  if (p.hasCamera === false) missing.push("no camera");
  if (p.hasMic === false) missing.push("no mic");
  return missing;
}

export function renderPeer(p) {
  const you = p.local ? " (you)" : "";
  // Drawn by CSS (::before), so the tile's text is what its aria-label starts with.
  p.avatar.dataset.initials = initials(p.name);
  const nameEl = p.label.querySelector(".name");
  nameEl.textContent = p.name;
  nameEl.title = p.name;
  const micOff = p.audioActive === false;
  const camOff = p.videoActive === false || !p.hasVideo;
  p.tile.classList.toggle("no-video", camOff);
  p.label.querySelector(".badge").hidden = !micOff;
  const missing = missingDevices(p);
  p.devices.textContent = missing.join(" · ");
  p.devices.hidden = missing.length === 0;
  p.entry.querySelector(".name .text").textContent = p.name;
  const flags = [...missing];
  if (micOff) flags.push("muted");
  if (p.videoActive === false) flags.push("camera off");
  if (p.sharing) flags.push("sharing screen");
  if (p.interrupted) flags.push("connection interrupted");
  const flagsEl = p.entry.querySelector(".flags");
  flagsEl.textContent = flags.join(", ");
  flagsEl.hidden = flags.length === 0;
  p.tile.title = p.name;
  renderHealth(p);
  // The visible text first, in order (so speech input can say what it sees), then what only
  // shows as pictures: the quality bars, "camera off" (the avatar). Whether it is pinned is the
  // button's aria-pressed.
  const said = [p.name + you + (micOff ? " muted" : ""), missing.join(" · ")];
  if (p.interrupted) said.push("connection interrupted");
  else if (p.quality && p.quality !== "good") said.push(QUALITY_TEXT[p.quality].toLowerCase());
  if (p.videoActive === false && p.hasCamera !== false) said.push("camera off");
  p.tile.setAttribute("aria-label", said.filter(Boolean).join(", "));
}

/** The "Connection interrupted" overlay and the quality bars of a peer's tile. */
function renderHealth(p) {
  const on = !!p.interrupted;
  if (p.tile.classList.contains("is-interrupted") !== on) {
    p.tile.classList.toggle("is-interrupted", on);
    if (on) {
      // The name is for screen readers only: the overlay sits on the tile that shows it.
      const who = document.createElement("span");
      who.className = "visually-hidden";
      who.textContent = `${p.name}: `;
      const text = document.createElement("span");
      text.className = "pill";
      text.textContent = "Connection interrupted";
      p.interruptedBox.replaceChildren(who, text);
    } else {
      p.interruptedBox.replaceChildren();
    }
  }
  const level = !on && p.quality && p.quality !== "good" ? p.quality : null;
  p.qualityEl.hidden = !level;
  p.tile.classList.toggle("has-quality", !!level);
  if (level) {
    p.qualityEl.dataset.level = level;
    p.qualityEl.title = QUALITY_TEXT[level];
    p.qualityEl.querySelector(".visually-hidden").textContent = QUALITY_TEXT[level];
  }
}
