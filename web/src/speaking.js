// Who is speaking: the local microphone's loudness from a WebAudio level meter, everyone else's
// from the server's voice activity (`vadNotification`, which the client library turns into
// `voiceActivityChanged` on the track), and the "speaking" marker on tiles and list entries. Owns
// the local speaking thresholds; it must never open or stop a track (the meter only listens to
// one it is given), and never judge a remote peer's sound itself (the server does, once for all).

// RMS level (0..1) above which the local microphone counts as speaking, and how long the marker
// stays on.
const SPEAKING_LEVEL = 0.02;
const SPEAKING_HOLD_MS = 400;
export const METER_EVERY_MS = 80;

/** Samples a track's loudness with WebAudio; `level()` is the RMS of the last window (0..1). */
export class LevelMeter {
  constructor(ctx, track) {
    this.source = ctx.createMediaStreamSource(new MediaStream([track]));
    this.analyser = ctx.createAnalyser();
    // ~85 ms at 48 kHz, sampled about as often (METER_EVERY_MS): short sounds are not missed.
    this.analyser.fftSize = 4096;
    this.buf = new Float32Array(this.analyser.fftSize);
    this.source.connect(this.analyser);
  }

  level() {
    this.analyser.getFloatTimeDomainData(this.buf);
    let sum = 0;
    for (const v of this.buf) sum += v * v;
    return Math.sqrt(sum / this.buf.length);
  }

  close() {
    this.source.disconnect();
  }
}

function setSpeaking(p, on, now) {
  if (p.speaking === on) return;
  p.speaking = on;
  p.speakingSince = on ? now : 0; // for the speaker view (speaker.js)
  p.tile.classList.toggle("speaking", on);
  p.entry.classList.toggle("speaking", on);
}

/** RoomSession methods (mixed into its prototype). */
export const speakingMethods = {
  /** The server says whether a remote audio track (`ctx`) carries voice. */
  onVoiceActivity(ctx) {
    const p = this.peers.get(ctx.endpoint && ctx.endpoint.id);
    if (!p) return;
    p.voice = ctx.vadStatus === "speech";
    const now = performance.now();
    setSpeaking(p, p.voice, now);
    this.followSpeaker(now);
  },

  sampleLevels() {
    const now = performance.now();
    const self = this.local;
    let loud = false;
    if (self.meter && self.audioActive !== false) {
      self.lastLevel = self.meter.level();
      loud = self.lastLevel > SPEAKING_LEVEL;
    }
    if (loud) self.loudAt = now;
    setSpeaking(self, !!self.loudAt && now - self.loudAt < SPEAKING_HOLD_MS, now);
    this.followSpeaker(now);
  },
};
