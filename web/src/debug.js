// The debug hook, `window.__videoroom`: read-only views of the page's state and the peer
// connection's inbound RTP statistics, for the end-to-end tests and for poking around in the
// console. It must never change anything on the page.

import { current } from "./join.js";
import { qualityLevel } from "./health.js";
import { tileRects } from "./layout.js";

/** The room session's state as plain data. */
function snapshot(session) {
  const view = (p) => ({
    id: p.id,
    name: p.name,
    hasVideo: !!p.hasVideo,
    hasAudio: !!(p.local ? p.meter : p.audio.srcObject),
    audioActive: p.audioActive,
    videoActive: p.videoActive,
    speaking: !!p.speaking,
    // What the server last said of the peer's voice (remote peers only).
    voice: p.local ? null : !!p.voice,
    level: p.lastLevel || 0,
    hasCamera: p.hasCamera !== false,
    hasMic: p.hasMic !== false,
    pinned: p.id === session.pinnedId,
    activeSpeaker: p.id === session.speakerId,
    sharing: !!p.sharing,
    interrupted: !!p.interrupted,
    quality: p.quality || "good",
    // How many statistics samples the quality is judged on (full at QUALITY_WINDOW + 1).
    healthSamples: p.local ? session.uplink.length : p.health ? p.health.samples.length : 0,
    healthFigures: (p.local ? session.uplinkFigures : p.health && p.health.figures) || null,
  });
  return {
    room: session.room,
    phase: session.phase,
    reconnects: session.reconnects,
    audioContext: session.audioCtx.state,
    selfId: session.selfId,
    self: view(session.local),
    peers: [...session.peers.values()].map(view),
    sharingScreen: !!session.screenShare,
    speakerView: session.speakerView,
    screens: [...session.screens.values()].map((x) => ({
      id: x.id,
      owner: x.owner.local ? "local" : x.owner.id,
      name: x.tile.title,
      hasVideo: x.hasVideo,
      pinned: x.id === session.pinnedId,
    })),
  };
}

export function installDebugHook() {
  window.__videoroom = {
    state: () => (current ? snapshot(current) : { phase: "lobby" }),
    peerConnection: () => (current && current.endpoint ? current.endpoint.connection || null : null),
    /** The layout for n tiles on a w x h stage (see tileRects), to check it for any n. */
    tileRects,
    /** The network quality level for given figures (see qualityLevel). */
    qualityLevel,
    /** The local camera track's readyState ("ended" after Stop camera), or null without one. */
    localVideoState() {
      const track = current && current.stream && current.stream.getVideoTracks()[0];
      return track ? track.readyState : null;
    },
    /** Inbound RTP streams of the peer connection: kind, framesDecoded, audio energy and level. */
    async inboundStats() {
      const pc = this.peerConnection();
      if (!pc) return [];
      const report = await pc.getStats();
      const out = [];
      report.forEach((s) => {
        if (s.type !== "inbound-rtp") return;
        out.push({
          kind: s.kind,
          mid: s.mid,
          trackIdentifier: s.trackIdentifier,
          packetsReceived: s.packetsReceived || 0,
          bytesReceived: s.bytesReceived || 0,
          framesDecoded: s.framesDecoded || 0,
          frameWidth: s.frameWidth || 0,
          totalAudioEnergy: s.totalAudioEnergy || 0,
          audioLevel: s.audioLevel || 0,
        });
      });
      return out;
    },
  };
}
