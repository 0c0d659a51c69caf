//! Voice activity of one published audio track, from the audio levels its packets carry
//! (RFC 6464 `ssrc-audio-level`: 0 is the loudest, 127 silence, in -dBov).
//!
//! It owns the speech/silence decision and its hysteresis: a level threshold with a gap
//! between "loud" and "quiet", speech only after the voice has been loud for [`ONSET_MS`], and
//! silence only after it has been quiet for [`HOLD_MS`], so the pauses between words keep a
//! speaker marked and a cough does not flap the marker. The media plane feeds it each packet's
//! level and arrival time and reports its changes; the negotiation core turns them into
//! `vadNotification`.
//!
//! It must never read a clock, allocate, or do IO: times come in as milliseconds from the
//! caller, so it is stepped in unit tests as it runs in the plane.

/// A level at or below this (−45 dBov or louder), smoothed, counts as voice.
pub const SPEECH_LEVEL: u8 = 45;
/// A level above this (quieter than −55 dBov), smoothed, counts as quiet. Between the two the
/// current status holds.
pub const SILENCE_LEVEL: u8 = 55;
/// Loud this long before the track is speaking: a short knock or click is not speech.
pub const ONSET_MS: u64 = 100;
/// Quiet this long before a speaking track is silent: the gaps between words are shorter.
pub const HOLD_MS: u64 = 600;
/// No packet this long while speaking is silence (the sender paused or replaced its track).
pub const IDLE_MS: u64 = 500;
/// Time constant of the level smoothing: one loud or quiet packet moves it only partly.
const SMOOTHING_MS: u64 = 40;
/// Packet spacing assumed for the first packet (Opus sends one per 20 ms by default).
const FIRST_GAP_MS: u64 = 20;

/// Levels are smoothed in 1/256 dB steps, so integer smoothing does not stall on rounding.
const SCALE: u64 = 256;

/// See the module documentation.
#[derive(Debug, Clone)]
pub struct VoiceActivity {
    speech: bool,
    /// The smoothed level, times [`SCALE`].
    smoothed: u64,
    last_at: Option<u64>,
    /// Since when the smoothed level has been on the other side of the current status.
    crossing_since: Option<u64>,
}

impl Default for VoiceActivity {
    fn default() -> Self {
        Self::new()
    }
}

impl VoiceActivity {
    /// Silent, until voice arrives.
    pub fn new() -> Self {
        VoiceActivity {
            speech: false,
            smoothed: 127 * SCALE,
            last_at: None,
            crossing_since: None,
        }
    }

    pub fn is_speech(&self) -> bool {
        self.speech
    }

    /// A packet with audio `level` arrived at `now_ms`. Returns the new status if it changed
    /// (`true`: speech). Times before the previous packet's count as that instant.
    pub fn packet(&mut self, now_ms: u64, level: u8) -> Option<bool> {
        let level = u64::from(level.min(127)) * SCALE;
        let now = self.last_at.map_or(now_ms, |last| now_ms.max(last));
        let gap = self.last_at.map_or(FIRST_GAP_MS, |last| now - last);
        self.last_at = Some(now);
        // An exponential average stepped by the real gap: a late packet weighs more.
        let step = gap * level.abs_diff(self.smoothed) / (gap + SMOOTHING_MS);
        if level > self.smoothed {
            self.smoothed += step;
        } else {
            self.smoothed -= step;
        }
        let (crossed, after) = if self.speech {
            (self.smoothed > u64::from(SILENCE_LEVEL) * SCALE, HOLD_MS)
        } else {
            (self.smoothed <= u64::from(SPEECH_LEVEL) * SCALE, ONSET_MS)
        };
        if !crossed {
            self.crossing_since = None;
            return None;
        }
        let since = *self.crossing_since.get_or_insert(now);
        if now - since < after {
            return None;
        }
        self.speech = !self.speech;
        self.crossing_since = None;
        Some(self.speech)
    }

    /// No packet arrived by `now_ms`: a speaking track that has sent nothing for
    /// [`IDLE_MS`] falls silent. Returns `Some(false)` when it does.
    pub fn idle(&mut self, now_ms: u64) -> Option<bool> {
        let last = self.last_at?;
        if !self.speech || now_ms.saturating_sub(last) < IDLE_MS {
            return None;
        }
        *self = VoiceActivity {
            last_at: Some(now_ms),
            ..VoiceActivity::new()
        };
        Some(false)
    }

    /// When [`Self::idle`] should next be asked (while speaking), in the caller's milliseconds.
    pub fn idle_deadline(&self) -> Option<u64> {
        self.speech
            .then_some(self.last_at)
            .flatten()
            .map(|t| t + IDLE_MS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Feeds `ms` of packets every 20 ms at `level` from `*t`; returns the changes with times.
    fn run(vad: &mut VoiceActivity, t: &mut u64, ms: u64, level: u8) -> Vec<(u64, bool)> {
        let mut changes = Vec::new();
        let end = *t + ms;
        while *t < end {
            *t += 20;
            if let Some(s) = vad.packet(*t, level) {
                changes.push((*t, s));
            }
        }
        changes
    }

    #[test]
    fn silence_and_a_muted_track_are_never_speech() {
        let mut vad = VoiceActivity::new();
        let mut t = 0;
        assert!(run(&mut vad, &mut t, 10_000, 127).is_empty());
        // Room noise around −70 dBov.
        assert!(run(&mut vad, &mut t, 10_000, 70).is_empty());
        assert!(!vad.is_speech());
    }

    #[test]
    fn a_voice_is_speech_after_the_onset_and_silence_after_the_hold() {
        let mut vad = VoiceActivity::new();
        let mut t = 1_000;
        let on = run(&mut vad, &mut t, 1_000, 20);
        assert_eq!(on.len(), 1, "{on:?}");
        let (at, speech) = on[0];
        assert!(speech);
        let after = at - 1_000;
        assert!(
            (ONSET_MS..ONSET_MS + 120).contains(&after),
            "speech {after} ms after the voice started"
        );
        let start = t;
        let off = run(&mut vad, &mut t, 2_000, 127);
        assert_eq!(off.len(), 1, "{off:?}");
        let after = off[0].0 - start;
        assert!(!off[0].1);
        assert!(
            (HOLD_MS..HOLD_MS + 150).contains(&after),
            "silence {after} ms after the voice stopped"
        );
    }

    #[test]
    fn the_pauses_between_words_keep_a_speaker_speaking() {
        let mut vad = VoiceActivity::new();
        let mut t = 0;
        let mut changes = Vec::new();
        for _ in 0..20 {
            changes.extend(run(&mut vad, &mut t, 240, 15)); // a word
            changes.extend(run(&mut vad, &mut t, 300, 127)); // a pause
        }
        assert_eq!(changes.len(), 1, "{changes:?}");
        assert!(changes[0].1);
    }

    #[test]
    fn a_click_is_not_speech_and_a_cough_is_one_episode() {
        let mut vad = VoiceActivity::new();
        let mut t = 0;
        run(&mut vad, &mut t, 1_000, 127);
        assert!(run(&mut vad, &mut t, 80, 5).is_empty(), "a click");
        run(&mut vad, &mut t, 1_000, 127);
        let mut cough = run(&mut vad, &mut t, 300, 5);
        cough.extend(run(&mut vad, &mut t, 2_000, 127));
        assert_eq!(
            cough.iter().map(|c| c.1).collect::<Vec<_>>(),
            [true, false],
            "{cough:?}"
        );
    }

    #[test]
    fn levels_between_the_thresholds_hold_the_status() {
        let mut vad = VoiceActivity::new();
        let mut t = 0;
        assert!(run(&mut vad, &mut t, 2_000, 50).is_empty());
        let on = run(&mut vad, &mut t, 1_000, 30);
        assert_eq!(on.iter().map(|c| c.1).collect::<Vec<_>>(), [true]);
        assert!(run(&mut vad, &mut t, 5_000, 50).is_empty());
        assert!(vad.is_speech());
    }

    #[test]
    fn a_sender_that_stops_while_speaking_falls_silent() {
        let mut vad = VoiceActivity::new();
        assert_eq!(vad.idle(10_000), None, "nothing heard yet");
        let mut t = 0;
        run(&mut vad, &mut t, 500, 10);
        assert!(vad.is_speech());
        let deadline = vad.idle_deadline().unwrap();
        assert_eq!(deadline, t + IDLE_MS);
        assert_eq!(vad.idle(deadline - 1), None);
        assert_eq!(vad.idle(deadline), Some(false));
        assert_eq!(vad.idle_deadline(), None);
        assert_eq!(vad.idle(deadline + 10_000), None, "said once");
        // Sending again starts from silence.
        t = deadline + 5_000;
        let on = run(&mut vad, &mut t, 500, 10);
        assert_eq!(on.len(), 1);
    }

    proptest! {
        /// Whatever the levels and the spacing: statuses alternate, start with speech, and two
        /// changes are at least the onset apart (no flapping faster than the hysteresis).
        #[test]
        fn changes_alternate_and_never_flap(
            packets in proptest::collection::vec((0u64..120, 0u8..=127), 1..600),
        ) {
            let mut vad = VoiceActivity::new();
            let mut t = 0;
            let mut last: Option<(u64, bool)> = None;
            for (gap, level) in packets {
                t += gap;
                let change = if gap > 100 { vad.idle(t) } else { None }
                    .or_else(|| vad.packet(t, level));
                if let Some(s) = change {
                    prop_assert_eq!(s, vad.is_speech());
                    match last {
                        None => prop_assert!(s, "the first change is to speech"),
                        Some((at, prev)) => {
                            prop_assert_ne!(prev, s);
                            prop_assert!(t - at >= ONSET_MS, "{} ms apart", t - at);
                        }
                    }
                    last = Some((t, s));
                }
            }
        }
    }
}
