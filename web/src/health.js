// Connection health, from the peer connection's statistics: which remote peers are
// "interrupted" (their media stopped) and how good each connection is (loss, jitter, round trip).
// Owns the thresholds and the judging; it must never draw (it sets a peer's state and asks
// renderPeer to show it).

import { renderPeer } from "./tiles.js";

// Connection health, from the peer connection's statistics sampled this often: a remote peer
// whose expected media has not moved for STALL_MS is "interrupted"; network quality is judged on
// the last QUALITY_WINDOW samples.
export const STATS_EVERY_MS = 1000;
const STALL_MS = 3000;
const QUALITY_WINDOW = 5;
// Every track added or removed in the room renegotiates (with an ICE restart in the client
// library), which loses a burst of packets: the quality is not judged for this long after.
const RENEGOTIATION_SETTLE_MS = 4000;

/**
 * The network quality for loss (fraction of packets), audio jitter and round-trip time (seconds);
 * `freezes` (video freezes in the window) only make weak network figures bad, since a busy CPU
 * freezes video too.
 */
export function qualityLevel({ loss = 0, jitter = 0, rtt = 0, freezes = 0 }) {
  let level = "good";
  if (loss >= 0.03 || jitter >= 0.06 || rtt >= 0.4) level = "weak";
  if (loss >= 0.1 || jitter >= 0.12 || rtt >= 1 || (level === "weak" && freezes >= 3)) level = "bad";
  return level;
}

/**
 * The figures of a window of cumulative samples (null until the window is full, or when the
 * counters went back: another stream took the receiver).
 */
function windowFigures(samples) {
  if (samples.length < QUALITY_WINDOW + 1) return null;
  const first = samples[0];
  const last = samples[samples.length - 1];
  const lost = last.lost - first.lost;
  const received = last.received - first.received;
  if (lost < 0 || received < 0) return null;
  const total = lost + received;
  return {
    loss: total >= 50 ? lost / total : 0,
    jitter: samples.slice(1).reduce((a, x) => a + x.jitter, 0) / (samples.length - 1),
    freezes: Math.max(0, last.freezes - first.freezes),
  };
}

/** RoomSession methods (mixed into its prototype). */
export const healthMethods = {
  /** The room's tracks changed: a renegotiation follows, whose packet loss says nothing. */
  renegotiated() {
    this.settleUntil = performance.now() + RENEGOTIATION_SETTLE_MS;
  },

  async pollStats() {
    const pc = this.endpoint && this.endpoint.connection;
    if (!pc || this.statsBusy || this.closed) return;
    this.statsBusy = true;
    let report;
    try {
      report = await pc.getStats();
    } catch (_) {
      return;
    } finally {
      this.statsBusy = false;
    }
    if (this.closed || !this.endpoint || this.endpoint.connection !== pc) return;
    const now = performance.now();
    const byPeer = new Map();
    const up = { lost: [], rtt: [] };
    report.forEach((st) => {
      if (st.type === "inbound-rtp") {
        const owner = this.mediaOwner.get(st.trackIdentifier);
        if (!owner) return;
        let m = byPeer.get(owner.peer);
        if (!m) byPeer.set(owner.peer, (m = { audio: null, video: null, lost: 0, received: 0, jitter: 0, freezes: 0 }));
        // Progress is decoded frames for video, bytes for audio (concealment makes up samples).
        const moved = owner.kind === "video" ? st.framesDecoded || 0 : st.bytesReceived || 0;
        m[owner.kind] = (m[owner.kind] || 0) + moved;
        m.lost += Math.max(0, st.packetsLost || 0);
        m.received += st.packetsReceived || 0;
        if (owner.kind === "audio") m.jitter = Math.max(m.jitter, st.jitter || 0);
        m.freezes += st.freezeCount || 0;
      } else if (st.type === "remote-inbound-rtp") {
        if (typeof st.fractionLost === "number") up.lost.push(st.fractionLost);
        if (typeof st.roundTripTime === "number") up.rtt.push(st.roundTripTime);
      }
    });
    for (const p of this.peers.values()) this.judgePeer(p, byPeer.get(p.id), now);
    this.judgeUplink(up);
  },

  /**
   * A peer is "interrupted" when none of the media it should be sending (by its metadata: not a
   * stopped camera, not a muted microphone) has moved for STALL_MS; only media that moved once
   * counts (a track still connecting is not judged), and media that just became expected (a
   * camera started again) gets STALL_MS of grace.
   */
  judgePeer(p, m, now) {
    const h = p.health || (p.health = { audio: {}, video: {}, samples: [], warmup: 3 });
    const expected = {
      video: !!p.hasVideo && p.videoActive !== false,
      audio: !!p.audio.srcObject && p.audioActive !== false,
    };
    let watched = 0;
    let stalled = 0;
    for (const kind of ["audio", "video"]) {
      const st = h[kind];
      const value = m ? m[kind] : null;
      if (!expected[kind] || value === null) {
        st.expected = false;
        continue;
      }
      if (!st.expected) Object.assign(st, { expected: true, value, at: now });
      else if (value !== st.value) Object.assign(st, { value, at: now, seen: true });
      if (!st.seen) continue;
      watched += 1;
      if (now - st.at >= STALL_MS) stalled += 1;
    }
    const interrupted = watched > 0 && stalled === watched;
    if (interrupted || !m || now < this.settleUntil) {
      // The window restarts after an outage, so the outage is not judged as the network's quality.
      h.samples = [];
    } else if (h.warmup > 0) {
      // A stream's first seconds (ICE, the first key frame) lose packets that say nothing.
      h.warmup -= 1;
    } else {
      h.samples.push({ at: now, lost: m.lost, received: m.received, jitter: m.jitter, freezes: m.freezes });
      if (h.samples.length > QUALITY_WINDOW + 1) h.samples.shift();
    }
    h.figures = windowFigures(h.samples);
    const quality = h.figures ? qualityLevel(h.figures) : "good";
    if (interrupted !== !!p.interrupted || quality !== (p.quality || "good")) {
      p.interrupted = interrupted;
      p.quality = quality;
      renderPeer(p);
    }
  },

  /** This page's sending side, from what the server reports receiving (RTCP receiver reports). */
  judgeUplink(up) {
    if ((up.lost.length || up.rtt.length) && performance.now() >= this.settleUntil) {
      const avg = (v) => (v.length ? v.reduce((a, x) => a + x, 0) / v.length : 0);
      this.uplink.push({ loss: Math.max(0, ...up.lost), rtt: avg(up.rtt) });
      if (this.uplink.length > QUALITY_WINDOW) this.uplink.shift();
    } else {
      this.uplink = [];
    }
    const n = this.uplink.length;
    this.uplinkFigures = n >= 3
      ? { loss: this.uplink.reduce((a, x) => a + x.loss, 0) / n, rtt: this.uplink.reduce((a, x) => a + x.rtt, 0) / n }
      : null;
    const quality = this.uplinkFigures ? qualityLevel(this.uplinkFigures) : "good";
    if (quality !== (this.local.quality || "good")) {
      this.local.quality = quality;
      renderPeer(this.local);
    }
  },
};
