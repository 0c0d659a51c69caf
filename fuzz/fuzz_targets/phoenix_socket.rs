//! The Phoenix socket core (`SocketCore`) driven by a script of client frames, channel-actor
//! reports and clock steps, exactly as its module docs say a driver must (every output drained
//! after every input).
//!
//! Script lines (see `videoroom_fuzz::lines`):
//! - `[...`: a WebSocket text message, the whole line (a V2 frame as a client sends it)
//! - `>text`: a text message `text` (anything, e.g. not an array)
//! - `b<n>`: a binary message of `n` bytes; `o`: a message the transport refused as too big
//! - `k<chan> <json>` / `e<chan> <json>`: the channel's join succeeded / failed, with that
//!   response (`{}` when absent or not JSON)
//! - `p<chan> <json>`: a push (`mediaEvent`) with that payload; `r<chan> <json>`: a reply to
//!   ref "1"; `x<chan>` / `X<chan>`: the channel exited normally / crashed
//! - `t<secs>`: the clock moves on, then the timeout is handled; `c`: the transport closed
//!
//! Checked after every operation: the core's own invariants (`check_invariants`: tables
//! consistent, held frames and channels within their bounds, nothing tracked once closed) and
//! its outputs against the driving contract: channel ids allocated in order and never reused,
//! each stopped at most once and never addressed after that, no more live channels than
//! `max_channels`, nothing sent after `Close`, never close code 1000, every frame sent decodes
//! with an object payload and is at most twice the frame limit (no amplification), a channel
//! that is not live makes no output, the first answer to a join is its reply, a heartbeat gets
//! exactly its `ok` reply, and the idle deadline closes the socket.
#![no_main]

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};
use videoroom::phoenix::frame::{self, EV_HEARTBEAT, EV_REPLY, HEARTBEAT_TOPIC};
use videoroom::phoenix::{ChanId, ChannelEvent, Output, SocketConfig, SocketCore};
use videoroom_fuzz::{lines, number, op};

const MAX_FRAME_BYTES: usize = 8 * 1024;

fn json_or_empty(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| json!({}))
}

fn chan_of(ev: &ChannelEvent) -> ChanId {
    match ev {
        ChannelEvent::JoinOk { chan, .. }
        | ChannelEvent::JoinError { chan, .. }
        | ChannelEvent::Push { chan, .. }
        | ChannelEvent::PushShared { chan, .. }
        | ChannelEvent::Reply { chan, .. }
        | ChannelEvent::Exited { chan, .. } => *chan,
    }
}

enum Step {
    Text(String),
    Binary(usize),
    Oversized,
    Chan(ChannelEvent),
    Advance(u64),
    Close,
}

fn parse(line: &str) -> Option<Step> {
    if line.starts_with('[') {
        return Some(Step::Text(line.to_owned()));
    }
    let (code, rest) = op(line)?;
    let (n, tail) = number(rest);
    let chan = ChanId(n);
    Some(match code {
        '>' => Step::Text(rest.to_owned()),
        'b' => Step::Binary(n.min(2 * MAX_FRAME_BYTES as u64) as usize),
        'o' => Step::Oversized,
        'k' => Step::Chan(ChannelEvent::JoinOk {
            chan,
            response: json_or_empty(tail),
        }),
        'e' => Step::Chan(ChannelEvent::JoinError {
            chan,
            response: json_or_empty(tail),
        }),
        'p' => Step::Chan(ChannelEvent::Push {
            chan,
            event: "mediaEvent".to_owned(),
            payload: json_or_empty(tail),
        }),
        's' => Step::Chan(ChannelEvent::PushShared {
            chan,
            event: "mediaEvent",
            field: "data",
            value: tail.to_owned().into(),
        }),
        'r' => Step::Chan(ChannelEvent::Reply {
            chan,
            msg_ref: Some("1".to_owned()),
            status: "ok".to_owned(),
            response: json_or_empty(tail),
        }),
        'x' | 'X' => Step::Chan(ChannelEvent::Exited {
            chan,
            abnormal: code == 'X',
        }),
        't' => Step::Advance(n),
        'c' => Step::Close,
        _ => return None,
    })
}

/// What the driver knows from the outputs so far.
#[derive(Default)]
struct Model {
    started: u64,
    /// Stopped by the core, exited, or refused their join.
    dead: BTreeSet<ChanId>,
    /// Channels that gave their first answer to the join.
    answered: BTreeSet<ChanId>,
    closed: bool,
}

impl Model {
    fn live(&self, chan: ChanId) -> bool {
        chan.0 < self.started && !self.dead.contains(&chan)
    }
}

fuzz_target!(|data: &[u8]| {
    let config = SocketConfig {
        max_channels: 3,
        max_frame_bytes: MAX_FRAME_BYTES,
        ..SocketConfig::default()
    };
    let idle = config.idle_timeout;
    let mut now = Instant::now();
    let mut core = SocketCore::new(config, now);
    let mut m = Model::default();
    for line in lines(data) {
        let Some(step) = parse(&line) else {
            continue;
        };
        let mut silent = false;
        let mut answers_join = false;
        let mut heartbeat: Option<Option<String>> = None;
        let mut timed_out = false;
        match step {
            Step::Text(text) => {
                if !m.closed && text.len() <= MAX_FRAME_BYTES {
                    heartbeat = frame::decode(&text)
                        .ok()
                        .filter(|f| f.topic == HEARTBEAT_TOPIC && f.event == EV_HEARTBEAT)
                        .map(|f| f.msg_ref);
                }
                core.handle_text(now, &text);
            }
            Step::Binary(len) => core.handle_binary(now, &vec![0; len]),
            Step::Oversized => core.handle_oversized(),
            Step::Chan(ev) => {
                let chan = chan_of(&ev);
                if m.live(chan) {
                    let first = !m.answered.contains(&chan)
                        && matches!(
                            ev,
                            ChannelEvent::JoinOk { .. }
                                | ChannelEvent::JoinError { .. }
                                | ChannelEvent::Exited { .. }
                        );
                    answers_join = first && !m.closed;
                    if first {
                        m.answered.insert(chan);
                    }
                    // A later JoinError is an actor bug the core ignores.
                    if matches!(ev, ChannelEvent::Exited { .. })
                        || (first && matches!(ev, ChannelEvent::JoinError { .. }))
                    {
                        m.dead.insert(chan);
                    }
                } else {
                    silent = true;
                }
                core.handle_channel(ev);
            }
            Step::Advance(secs) => {
                now += Duration::from_secs(secs);
                timed_out = core.poll_timeout().is_some_and(|deadline| now >= deadline);
                core.handle_timeout(now);
            }
            Step::Close => core.close(),
        }
        let outs: Vec<Output> = std::iter::from_fn(|| core.poll_output()).collect();
        core.check_invariants();
        if timed_out {
            assert!(core.is_closed(), "past the idle deadline but still open");
        }
        assert_eq!(core.poll_timeout().is_none(), core.is_closed());
        if let Some(deadline) = core.poll_timeout() {
            assert!(deadline > now && deadline <= now + idle);
        }
        if silent {
            assert!(
                outs.is_empty(),
                "a channel that is not live produced {outs:?}"
            );
        }
        if answers_join {
            let first = match outs.first() {
                Some(Output::Send(text)) => frame::decode(text).ok().map(|f| f.event),
                _ => None,
            };
            assert_eq!(
                first.as_deref(),
                Some(EV_REPLY),
                "a join answer must reply first"
            );
        }
        if let Some(msg_ref) = heartbeat {
            let [Output::Send(text)] = outs.as_slice() else {
                panic!("a heartbeat must get exactly one reply, got {outs:?}");
            };
            let reply = frame::decode(text).expect("replies decode");
            assert_eq!(
                (reply.join_ref, reply.msg_ref, reply.topic.as_str()),
                (None, msg_ref, HEARTBEAT_TOPIC)
            );
            assert_eq!(reply.payload, json!({"status": "ok", "response": {}}));
        }
        for out in outs {
            match out {
                Output::StartChannel { chan, .. } => {
                    assert!(!m.closed, "a channel started after close");
                    assert_eq!(chan.0, m.started, "channel ids are allocated in order");
                    m.started += 1;
                }
                Output::StopChannel { chan, .. } => {
                    assert!(chan.0 < m.started, "{chan:?} stopped before it started");
                    assert!(
                        m.dead.insert(chan),
                        "{chan:?} stopped twice or after it ended"
                    );
                }
                Output::ToChannel { chan, .. } => {
                    assert!(!m.closed, "a channel message after close");
                    assert!(m.live(chan), "a message for {chan:?}, which is not live");
                }
                Output::Send(text) => {
                    assert!(!m.closed, "a frame sent after close");
                    assert!(
                        text.len() <= 2 * MAX_FRAME_BYTES + 256,
                        "a {}-byte frame out",
                        text.len()
                    );
                    let f = frame::decode(&text).expect("every frame sent decodes");
                    assert!(f.payload.is_object(), "payload is not an object: {text}");
                }
                Output::Close { code, .. } => {
                    assert!(!m.closed, "closed twice");
                    assert_ne!(code, 1000, "phoenix.js does not reconnect after 1000");
                    m.closed = true;
                }
            }
        }
        m.closed |= core.is_closed();
        let live = (0..m.started).filter(|c| m.live(ChanId(*c))).count();
        assert!(live <= 3, "{live} live channels, more than max_channels");
    }
});
