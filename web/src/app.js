// The videoroom web app's entry: a lobby (room name + display name) and a room page. Each module
// says what it holds; this one only wires them up and must never hold logic of its own.

import { initLobby } from "./lobby.js";
import { current, enterRoom, initRoomControls } from "./join.js";
import { installDebugHook } from "./debug.js";
import "./style.css";

installDebugHook();
initLobby(enterRoom, () => current);
initRoomControls();
