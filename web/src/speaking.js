// Who is speaking: a WebAudio level meter per microphone track and the "speaking" marker on tiles
// and list entries. Owns the speaking thresholds; it must never open or stop a track (the meter
// only listens to one it is given).

// RMS level (0..1) above which a peer counts as speaking, and how long the marker stays on.
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
  sampleLevels() {
    const now = performance.now();
    for (const p of [this.local, ...this.peers.values()]) {
      let loud = false;
      if (p.meter && p.audioActive !== false) {
        p.lastLevel = p.meter.level();
        loud = p.lastLevel > SPEAKING_LEVEL;
      }
      if (loud) p.loudAt = now;
      setSpeaking(p, !!p.loudAt && now - p.loudAt < SPEAKING_HOLD_MS, now);
    }
    this.followSpeaker(now);
  },
};
