// Joining and leaving: the current room session (one at a time), entering a room from the lobby
// (taking over the preview's stream) and the room page's buttons. Owns `current`; it must never
// reach into a session's media (it calls the session's methods).

import { $, remember, roomQuery } from "./page.js";
import { mediaErrorText, missingDeviceText, openLocalMedia } from "./devices.js";
import { STORE_NAME, STORE_ROOM, showLobby } from "./lobby.js";
import { preview } from "./preview.js";
import { RoomSession } from "./session.js";

export let current = null;

/** A session has closed: back to the lobby (with why, if it says). */
function onClosed(session, lobbyError) {
  if (current === session) current = null;
  showLobby(lobbyError);
}

export async function enterRoom(room, name, withMedia) {
  remember(STORE_ROOM, room);
  remember(STORE_NAME, name);
  if (current) current.close();
  // Made inside the click that joins, so the browser lets it (and the sound) run.
  const audioCtx = new (window.AudioContext || window.webkitAudioContext)();
  audioCtx.resume().catch(() => {});
  const joinButton = $("join");
  joinButton.disabled = true;
  let media = { stream: null, cameraError: null, micError: null };
  // The lobby's preview already holds both devices (the ones picked there): it becomes the stream.
  const previewed = await preview.take();
  const live = (t) => t.readyState === "live";
  if (withMedia && previewed && previewed.getAudioTracks().some(live) && previewed.getVideoTracks().some(live)) {
    media.stream = previewed;
  } else {
    if (previewed) for (const t of previewed.getTracks()) t.stop();
    if (withMedia) {
      try {
        media = await openLocalMedia();
      } catch (err) {
        joinButton.disabled = false;
        audioCtx.close().catch(() => {});
        showLobby(mediaErrorText(err), true);
        return;
      }
    }
  }
  const { stream } = media;
  joinButton.disabled = false;
  $("lobby").hidden = true;
  $("room").hidden = false;
  $("room-title").textContent = room;
  document.title = `${room} · videoroom`;
  history.replaceState(null, "", roomQuery(room));
  for (const [id, label] of [["toggle-mic", "Mute"], ["toggle-camera", "Stop camera"]]) {
    $(id).setAttribute("aria-pressed", "false");
    $(id).textContent = label;
  }
  $("toggle-mic").disabled = !(stream && stream.getAudioTracks().length);
  $("toggle-camera").disabled = !(stream && stream.getVideoTracks().length);
  current = new RoomSession(room, name, stream, audioCtx, onClosed);
  current.start();
  const notice = missingDeviceText(media);
  if (notice) current.setMediaNotice(notice);
  else focusFirstControl();
}

/** After joining: the first control that does something (Mute, unless there is no mic). */
function focusFirstControl() {
  const first = ["toggle-mic", "toggle-camera", "copy-link"].map($).find((b) => !b.disabled);
  first.focus();
}

export function initRoomControls() {
  $("toggle-mic").addEventListener("click", () => current && current.toggleMic());
  $("toggle-camera").addEventListener("click", () => current && current.toggleCamera());
  $("leave").addEventListener("click", () => current && current.close());
  $("copy-link").addEventListener("click", () => current && current.copyInvite());
  $("copy-invite").addEventListener("click", () => current && current.copyInvite());
  // Phones have no getDisplayMedia: no button that cannot work.
  $("share-screen").hidden = !(navigator.mediaDevices && navigator.mediaDevices.getDisplayMedia);
  $("share-screen").addEventListener("click", () => current && current.toggleScreenShare());
  $("speaker-view").addEventListener("click", () => current && current.toggleSpeakerView());
  $("open-settings").addEventListener("click", () => current && current.openSettings());
  // Back to the button that opened it (the room may have closed meanwhile).
  $("settings").addEventListener("close", () => {
    if (current && !$("room").hidden) $("open-settings").focus();
  });
  $("room-camera").addEventListener("change", (e) => current && current.switchDevice("videoinput", e.target.value));
  $("room-mic").addEventListener("change", (e) => current && current.switchDevice("audioinput", e.target.value));
  $("room-speaker").addEventListener("change", (e) => current && current.setSpeaker(e.target.value));
  // Trying the devices again is a fresh join: the new tracks need a fresh media session anyway.
  $("retry-media").addEventListener("click", () => {
    if (current) enterRoom(current.room, current.name, true);
  });
  const grid = $("grid");
  grid.addEventListener("click", (e) => {
    const tile = e.target.closest(".tile");
    if (tile && current) current.togglePin(tile.dataset.peerId);
  });
  grid.addEventListener("keydown", (e) => {
    if ((e.key !== "Enter" && e.key !== " ") || !e.target.classList.contains("tile")) return;
    e.preventDefault();
    if (current) current.togglePin(e.target.dataset.peerId);
  });
  new ResizeObserver(() => current && current.layout()).observe(grid);
  window.addEventListener("pagehide", () => {
    preview.stop();
    if (current) current.close();
  });
}
