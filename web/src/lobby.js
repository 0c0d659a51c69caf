// The lobby: the room and display name form (validated, remembered), its device preview, and the
// error shown after leaving or failing to join. Owns the lobby's form; it must never start a room
// session itself (it calls the `join` it is given).

import { $, link, recall, roomQuery } from "./page.js";
import { listDevices, saveDevice } from "./devices.js";
import { preview } from "./preview.js";

const ROOM_NAME_MAX = 64;
const DISPLAY_NAME_MAX = 32;
export const STORE_NAME = "videoroom.displayName";
export const STORE_ROOM = "videoroom.lastRoom";

export function validateRoomName(raw) {
  const name = raw.trim();
  if (name === "") return [null, "Enter a room name."];
  if (name.length > ROOM_NAME_MAX) return [null, `At most ${ROOM_NAME_MAX} characters.`];
  if (!/^[A-Za-z0-9._-]+$/.test(name)) {
    return [null, "Use letters, digits, '.', '_' or '-' (no spaces)."];
  }
  return [name, null];
}

export function validateDisplayName(raw) {
  const name = raw.trim().replace(/\s+/g, " ");
  if (name === "") return [null, "Enter your name."];
  if ([...name].length > DISPLAY_NAME_MAX) return [null, `At most ${DISPLAY_NAME_MAX} characters.`];
  // eslint-disable-next-line no-control-regex
  if (/[\u0000-\u001f\u007f]/.test(name)) return [null, "No control characters."];
  return [name, null];
}

export function showLobby(error, offerWithoutMedia = false) {
  $("room").hidden = true;
  $("lobby").hidden = false;
  document.title = "videoroom";
  // A token link stays in the address bar, so a reload can still join.
  const keep = link ? roomQuery(link.room) : "";
  if (location.search !== keep) history.replaceState(null, "", location.pathname + keep);
  const box = $("lobby-error");
  box.hidden = !error;
  $("lobby-error-text").textContent = error || "";
  $("join-without-media").hidden = !offerWithoutMedia;
  preview.start();
  // Keyboard and screen-reader users land where they can act next.
  if (offerWithoutMedia) $("join-without-media").focus();
  else if (error) $("lobby-error-text").focus();
  else focusFirstLobbyField();
}

function focusFirstLobbyField() {
  if ($("room-name").value && !$("display-name").value) $("display-name").focus();
  else $("room-name").focus();
}

function fieldError(inputId, message) {
  const input = $(inputId);
  const out = $(`${inputId}-error`);
  input.setAttribute("aria-invalid", message ? "true" : "false");
  out.hidden = !message;
  out.textContent = message || "";
}

function readLobby() {
  const [room, roomErr] = validateRoomName($("room-name").value);
  const [name, nameErr] = validateDisplayName($("display-name").value);
  fieldError("room-name", roomErr);
  fieldError("display-name", nameErr);
  if (roomErr) $("room-name").focus();
  else if (nameErr) $("display-name").focus();
  return room && name ? { room, name } : null;
}

/** `join(room, name, withMedia)` enters a room; `session()` is the room session, if there is one. */
export function initLobby(join, session) {
  const params = new URLSearchParams(location.search);
  $("room-name").value = params.get("room") || recall(STORE_ROOM);
  $("display-name").value = recall(STORE_NAME);
  $("lobby-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const wanted = readLobby();
    if (wanted) join(wanted.room, wanted.name, true);
  });
  $("join-without-media").addEventListener("click", () => {
    const wanted = readLobby();
    if (wanted) join(wanted.room, wanted.name, false);
  });
  for (const id of ["room-name", "display-name"]) {
    $(id).addEventListener("input", () => fieldError(id, null));
  }
  $("camera-select").addEventListener("change", (e) => preview.pick("videoinput", e.target.value));
  $("mic-select").addEventListener("change", (e) => preview.pick("audioinput", e.target.value));
  $("speaker-select").addEventListener("change", (e) => saveDevice("audiooutput", e.target.value));
  if (preview.supported()) {
    navigator.mediaDevices.addEventListener("devicechange", async () => {
      await listDevices();
      const current = session();
      if (current) current.fillSettings();
      else if (preview.stream) preview.fill();
    });
  }
  preview.start();
  focusFirstLobbyField();
}
