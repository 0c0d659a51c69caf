// Cameras, microphones and speakers: opening them (the remembered ones first), listing them,
// filling the pickers, and the words for what went wrong. Owns the remembered device choices; it
// must never touch a room session or the lobby's form (callers put its answers on the page).

import { recall, remember } from "./page.js";

// The chosen devices ({id, label} as JSON), used as the defaults next time.
const STORE_DEVICE = { videoinput: "videoroom.camera", audioinput: "videoroom.mic", audiooutput: "videoroom.speaker" };
export const DEVICE_NOUN = { videoinput: "camera", audioinput: "microphone", audiooutput: "speaker" };
const VIDEO_CONSTRAINTS = { width: { ideal: 640 }, height: { ideal: 480 }, frameRate: { ideal: 24 } };
// getUserMedia errors after which asking for each device on its own may still get the other.
const RETRY_DEVICES_ALONE = new Set(["NotAllowedError", "NotFoundError", "NotReadableError", "OverconstrainedError"]);

export function mediaErrorText(err) {
  if (!navigator.mediaDevices) {
    return "This page cannot use the camera: open it over https or on localhost.";
  }
  return `Cannot open the camera or microphone: ${err && err.message ? err.message : err}`;
}

/** Why one device could not be opened, in words a person can act on. */
export function deviceReason(err) {
  switch (err && err.name) {
    case "NotAllowedError":
    case "SecurityError":
      return "Access was denied: allow it in the browser's site settings, then press Try again.";
    case "NotFoundError":
    case "OverconstrainedError":
      return "None was found.";
    case "NotReadableError":
      return "It is in use by another program.";
    default:
      return err && err.message ? err.message : String(err);
  }
}

/**
 * Opens the camera and the microphone. When asking for both fails, asks for each on its own, so
 * a denied camera does not cost the microphone. Returns `{stream, cameraError, micError}`
 * (`stream` null when neither opened); throws only when getUserMedia cannot be used at all.
 */
export async function openLocalMedia() {
  const media = navigator.mediaDevices;
  if (!media || !media.getUserMedia) {
    throw Object.assign(new Error("getUserMedia unavailable"), { name: "Unavailable" });
  }
  try {
    const stream = await openRemembered({ audio: true, video: true });
    return { stream, cameraError: null, micError: null };
  } catch (err) {
    if (!RETRY_DEVICES_ALONE.has(err && err.name)) throw err;
  }
  // One after the other: a browser shows one permission prompt at a time.
  const mic = await openRemembered({ audio: true }).then((s) => [s, null], (e) => [null, e]);
  const cam = await openRemembered({ video: true }).then((s) => [s, null], (e) => [null, e]);
  const tracks = [mic[0], cam[0]].filter(Boolean).flatMap((s) => s.getTracks());
  return { stream: tracks.length ? new MediaStream(tracks) : null, cameraError: cam[1], micError: mic[1] };
}

/** The notice for a join that lacks a device (null when both opened). */
export function missingDeviceText({ cameraError, micError }) {
  if (cameraError && micError) {
    return `Camera and microphone unavailable: you joined without them, so the others can neither see nor hear you. ${deviceReason(cameraError)}`;
  }
  if (cameraError) return `Camera unavailable: you joined with your microphone only. ${deviceReason(cameraError)}`;
  if (micError) return `Microphone unavailable: you joined with your camera only. ${deviceReason(micError)}`;
  return null;
}

/** The devices last listed (labels only once camera or microphone access was granted). */
let knownDevices = [];

function savedDevice(kind) {
  try {
    const v = JSON.parse(recall(STORE_DEVICE[kind]));
    return v && typeof v.id === "string" ? v : null;
  } catch (_) {
    return null;
  }
}

export function saveDevice(kind, id) {
  const d = knownDevices.find((x) => x.kind === kind && x.deviceId === id);
  remember(STORE_DEVICE[kind], JSON.stringify({ id, label: d ? d.label : "" }));
}

/**
 * The remembered device of `kind` while it is there (before the devices are listed: the
 * remembered one; see openRemembered for one that is gone). Undefined: the browser's default.
 */
export function preferredId(kind) {
  const saved = savedDevice(kind);
  if (!saved) return undefined;
  const same = knownDevices.filter((d) => d.kind === kind && d.deviceId);
  return !same.length || same.some((d) => d.deviceId === saved.id) ? saved.id : undefined;
}

/**
 * getUserMedia for the kinds in `want` ({audio, video}) on the remembered devices, asked for
 * exactly (browsers may ignore an `ideal` device); when one is gone (OverconstrainedError,
 * NotFoundError), without the camera's choice, then without the microphone's too.
 */
export async function openRemembered(want) {
  const ids = {
    audio: want.audio ? preferredId("audioinput") : undefined,
    video: want.video ? preferredId("videoinput") : undefined,
  };
  let last;
  for (const drop of [[], ["video"], ["video", "audio"]]) {
    if (drop.length && !ids[drop[drop.length - 1]]) continue; // dropping it changes nothing
    const c = {};
    if (want.audio) c.audio = ids.audio && !drop.includes("audio") ? { deviceId: { exact: ids.audio } } : true;
    if (want.video) {
      c.video = ids.video && !drop.includes("video") ? { ...VIDEO_CONSTRAINTS, deviceId: { exact: ids.video } } : VIDEO_CONSTRAINTS;
    }
    try {
      return await navigator.mediaDevices.getUserMedia(c);
    } catch (err) {
      last = err;
      if (!err || (err.name !== "OverconstrainedError" && err.name !== "NotFoundError")) throw err;
    }
  }
  throw last;
}

export async function listDevices() {
  try {
    knownDevices = await navigator.mediaDevices.enumerateDevices();
  } catch (_) {
    knownDevices = [];
  }
  return knownDevices;
}

export const canPickSpeaker = () => typeof HTMLMediaElement !== "undefined" && "setSinkId" in HTMLMediaElement.prototype;

/** The device a track comes from (its id), or "" for none. */
export function deviceOf(track) {
  return track && track.readyState === "live" ? track.getSettings().deviceId || "" : "";
}

/**
 * Fills a device select with the devices of `kind`, `current` selected (else the first).
 * Disabled with a single explaining option when there is none to pick (or no access yet).
 */
export function fillDeviceSelect(select, kind, current, unavailable) {
  const list = knownDevices.filter((d) => d.kind === kind && d.deviceId);
  const noun = DEVICE_NOUN[kind];
  if (unavailable || !list.length) {
    select.replaceChildren(new Option(unavailable || `No ${noun} found`, ""));
    select.disabled = true;
    return;
  }
  select.replaceChildren(...list.map((d, i) => new Option(d.label || `${noun[0].toUpperCase()}${noun.slice(1)} ${i + 1}`, d.deviceId)));
  select.disabled = false;
  select.value = list.some((d) => d.deviceId === current) ? current : list[0].deviceId;
}

/**
 * Opens the device `id` of `kind` (exactly that one) and returns its track. A camera that cannot
 * be open twice at once (phones: front and back) gets `old` stopped first and a second try.
 */
export async function openDevice(kind, id, old) {
  const c = kind === "videoinput"
    ? { video: { ...VIDEO_CONSTRAINTS, deviceId: { exact: id } } }
    : { audio: { deviceId: { exact: id } } };
  try {
    return (await navigator.mediaDevices.getUserMedia(c)).getTracks()[0];
  } catch (err) {
    if (!old || !err || err.name !== "NotReadableError") throw err;
    old.stop();
    return (await navigator.mediaDevices.getUserMedia(c)).getTracks()[0];
  }
}

/** Plays `el` on the remembered speaker (where the browser can choose one); best effort. */
export function applySpeaker(el, id = preferredId("audiooutput")) {
  if (!canPickSpeaker() || el.sinkId === (id || "")) return;
  el.setSinkId(id || "").catch(() => {
    // The speaker went away: the default one plays.
  });
}

/** Says which remembered devices are not there (so another one is used). */
export function missingSavedText(stream) {
  const gone = [];
  for (const [kind, track] of [["videoinput", stream && stream.getVideoTracks()[0]], ["audioinput", stream && stream.getAudioTracks()[0]]]) {
    const saved = savedDevice(kind);
    if (!saved || !track || preferredId(kind)) continue;
    const using = track.label ? ` "${track.label}"` : " the default one";
    gone.push(`Your ${DEVICE_NOUN[kind]}${saved.label ? ` "${saved.label}"` : ""} is not connected: using${using}.`);
  }
  return gone.join(" ");
}
