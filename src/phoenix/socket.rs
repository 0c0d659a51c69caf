//! The state machine of one Phoenix WebSocket connection.
//!
//! [`SocketCore`] owns everything Phoenix's `Phoenix.Socket` process decides for a connection:
//! heartbeat replies, topic routing, the channel table (topic → channel, join refs), join and
//! leave replies, `phx_close`/`phx_error` on channel exit, the channel limit, the frame-size
//! limit and the idle timeout. It must never do I/O: no clock reads, no spawning, no sockets.
//! Channel actors live in the driver; the core only asks for them to be started or stopped
//! ([`Output::StartChannel`], [`Output::StopChannel`]) and hears back through [`ChannelEvent`].
//!
//! # Driving it
//!
//! After every `handle_*` call (and after [`SocketCore::close`]), drain
//! [`SocketCore::poll_output`] until it returns `None`, executing each output in order: the
//! order is the wire order. Call [`SocketCore::handle_timeout`] when the instant from
//! [`SocketCore::poll_timeout`] is reached. Events a channel actor produces must be forwarded
//! in the order the actor produced them, and messages to one actor must be delivered in the
//! order the core emitted them (the actor sees its join before any event).
//!
//! # Joins in flight
//!
//! Phoenix runs a join synchronously inside the socket process, so a client can never observe
//! a frame for a topic being handled before that topic's join was answered. Here the join is
//! answered asynchronously ([`ChannelEvent::JoinOk`]/[`ChannelEvent::JoinError`]), so frames
//! for a topic whose join is still in flight are held back and handled, in order, right after
//! the join reply. This keeps Phoenix's per-topic ordering exactly (a phoenix.js join timeout
//! sends `phx_leave` then a new `phx_join` while the first join may still be running). Held
//! frames are bounded; a client that exceeds the bound is disconnected with
//! [`CLOSE_POLICY_VIOLATION`].

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::frame::{self, Frame, EV_HEARTBEAT, EV_JOIN, EV_LEAVE, HEARTBEAT_TOPIC};

/// Close code: the server is going away or the connection was idle too long.
pub const CLOSE_GOING_AWAY: u16 = 1001;
/// Close code: a data type the server does not accept (binary frames).
pub const CLOSE_UNSUPPORTED_DATA: u16 = 1003;
/// Close code: the client broke a server policy (too many frames held for a pending join).
pub const CLOSE_POLICY_VIOLATION: u16 = 1008;
/// Close code: a frame larger than [`SocketConfig::max_frame_bytes`].
pub const CLOSE_TOO_BIG: u16 = 1009;
/// Close code: a frame that does not decode. Phoenix crashes the socket process here, which
/// the client sees as an abnormal close; 1011 is the nearest deliberate code.
pub const CLOSE_INTERNAL_ERROR: u16 = 1011;

/// At most this many frames are held back for topics whose join is in flight (per socket);
/// their total size is also capped at [`SocketConfig::max_frame_bytes`]. phoenix.js only
/// produces such frames on a join timeout (one leave and one join per retry, every 10 s or
/// more), so a well-behaved client stays below it unless a channel never answers its join, and
/// then a reconnect is the right way out.
const MAX_HELD_FRAMES: usize = 16;

/// A channel of this socket. Allocated by the core and never reused within one socket, so an
/// event from a channel the core has forgotten can never be mistaken for a newer channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ChanId(pub u64);

/// Per-socket limits and routes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SocketConfig {
    /// Topic patterns, first match wins: `"room:*"` matches by prefix, a pattern without `*`
    /// matches exactly. A `*` anywhere but the end is a configuration bug (see [`SocketCore::new`]).
    pub routes: Vec<String>,
    /// Channels per socket, counting joins in flight. Phoenix's default is 100.
    pub max_channels: usize,
    /// Largest accepted WebSocket message, in bytes.
    pub max_frame_bytes: usize,
    /// The connection is closed when no frame arrived for this long. Phoenix's default is 60 s.
    pub idle_timeout: Duration,
}

impl Default for SocketConfig {
    fn default() -> Self {
        Self {
            routes: vec!["room:*".to_owned()],
            max_channels: 100,
            max_frame_bytes: 1024 * 1024,
            idle_timeout: Duration::from_secs(60),
        }
    }
}

/// Why the core asks the driver to stop a channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// The client left the topic (Phoenix: `{:shutdown, :left}`).
    Leave,
    /// A newer join for the same topic replaces it (Phoenix: `{:shutdown, :duplicate_join}`).
    DuplicateJoin,
    /// The connection is gone (Phoenix: `{:shutdown, :closed}`).
    SocketClosed,
}

/// What the driver must do, in order.
#[derive(Clone, Debug, PartialEq)]
pub enum Output {
    /// Write this text frame.
    Send(String),
    /// Start a channel actor for `topic`; it must answer with exactly one of
    /// [`ChannelEvent::JoinOk`], [`ChannelEvent::JoinError`] or [`ChannelEvent::Exited`].
    StartChannel {
        /// The new channel.
        chan: ChanId,
        /// Its topic.
        topic: String,
        /// The client's join payload.
        payload: Value,
    },
    /// Deliver a client event to a channel actor.
    ToChannel {
        /// The target channel.
        chan: ChanId,
        /// The event name.
        event: String,
        /// The client's ref; a [`ChannelEvent::Reply`] to it must carry it back.
        msg_ref: Option<String>,
        /// The client's payload (any JSON value).
        payload: Value,
    },
    /// Stop that channel actor. The core has already forgotten it: whatever it reports later
    /// (pushes, replies, its exit) is dropped, so the client never gets a `phx_error` for it.
    StopChannel {
        /// The channel to stop.
        chan: ChanId,
        /// Why.
        reason: StopReason,
    },
    /// Close the WebSocket. Followed by a [`Output::StopChannel`] for every channel; after it
    /// the core ignores all input.
    Close {
        /// Never 1000: phoenix.js 1.8.4–1.8.15 do not reconnect after a 1000 close.
        code: u16,
        /// A short human-readable reason.
        reason: String,
    },
}

/// What a channel actor tells its socket (forwarded by the driver).
#[derive(Clone, Debug, PartialEq)]
pub enum ChannelEvent {
    /// The join succeeded; `response` goes into the ok reply.
    JoinOk {
        /// The channel.
        chan: ChanId,
        /// The reply's `response` (an object by Phoenix convention).
        response: Value,
    },
    /// The join was refused; the actor stops by itself and no `phx_close` follows.
    JoinError {
        /// The channel.
        chan: ChanId,
        /// The reply's `response`, e.g. `{"reason":"failed to start room"}`.
        response: Value,
    },
    /// A server push on the channel's topic.
    Push {
        /// The channel.
        chan: ChanId,
        /// The event name.
        event: String,
        /// The payload; must be a JSON object (phoenix.js reads fields off it).
        payload: Value,
    },
    /// A reply to a client event.
    Reply {
        /// The channel.
        chan: ChanId,
        /// The ref of the client event being answered.
        msg_ref: Option<String>,
        /// `"ok"`, `"error"` or any other status the client matches with `.receive`.
        status: String,
        /// The reply's `response`.
        response: Value,
    },
    /// The actor ended. `abnormal` means a crash (panic, abort, unexpected stop).
    Exited {
        /// The channel.
        chan: ChanId,
        /// Crash (`phx_error`, the client rejoins) rather than a graceful stop (`phx_close`).
        abnormal: bool,
    },
}

/// A channel the core still tracks.
#[derive(Debug)]
struct Channel {
    topic: String,
    join_ref: Option<String>,
    state: ChanState,
}

#[derive(Debug)]
enum ChanState {
    /// StartChannel was emitted; the join reply is not yet sent.
    Joining {
        /// The join's own ref, for its reply.
        join_msg_ref: Option<String>,
        /// The join_ref of the channel this join replaced (S15): its `phx_close` goes out
        /// right after this join's reply, as in Phoenix.
        replaces: Option<Option<String>>,
        /// Frames for this topic received while the join is in flight, in arrival order,
        /// with their size on the wire.
        held: VecDeque<(Frame, usize)>,
    },
    Joined,
}

/// One connection's Phoenix socket state. See the module docs for the driving contract.
#[derive(Debug)]
pub struct SocketCore {
    config: SocketConfig,
    /// Keyed by id so iteration (on close) is deterministic and follows join order.
    channels: BTreeMap<ChanId, Channel>,
    /// The one live channel of each topic (joining or joined).
    topics: BTreeMap<String, ChanId>,
    next_chan: u64,
    /// Frames held across all joining channels; bounded by [`MAX_HELD_FRAMES`].
    held_frames: usize,
    /// Their total size; bounded by [`SocketConfig::max_frame_bytes`].
    held_bytes: usize,
    last_activity: Instant,
    closed: bool,
    outputs: VecDeque<Output>,
}

impl SocketCore {
    /// Creates the core for a connection that opened at `now`.
    ///
    /// # Panics
    ///
    /// If a route has a `*` anywhere but at its end: that is a configuration bug (Phoenix
    /// rejects it at compile time), never client input.
    pub fn new(config: SocketConfig, now: Instant) -> Self {
        for route in &config.routes {
            let body = route.strip_suffix('*').unwrap_or(route);
            assert!(
                !body.contains('*'),
                "route {route:?}: `*` is only allowed at the end"
            );
        }
        Self {
            config,
            channels: BTreeMap::new(),
            topics: BTreeMap::new(),
            next_chan: 0,
            held_frames: 0,
            held_bytes: 0,
            last_activity: now,
            closed: false,
            outputs: VecDeque::new(),
        }
    }

    /// A WebSocket text message arrived.
    pub fn handle_text(&mut self, now: Instant, text: &str) {
        if self.closed {
            return;
        }
        self.last_activity = now;
        if text.len() > self.config.max_frame_bytes {
            self.close_with(CLOSE_TOO_BIG, "frame too large");
            return;
        }
        match frame::decode(text) {
            Ok(frame) => self.handle_frame(frame, text.len()),
            Err(err) => {
                tracing::debug!(%err, "closing socket on undecodable frame");
                self.close_with(CLOSE_INTERNAL_ERROR, "invalid frame");
            }
        }
    }

    /// A WebSocket binary message arrived. V2 binary pushes are not supported: phoenix.js only
    /// sends them for `ArrayBuffer` payloads, which the videoroom client never uses.
    pub fn handle_binary(&mut self, now: Instant, bytes: &[u8]) {
        if self.closed {
            return;
        }
        self.last_activity = now;
        if bytes.len() > self.config.max_frame_bytes {
            self.close_with(CLOSE_TOO_BIG, "frame too large");
        } else {
            self.close_with(CLOSE_UNSUPPORTED_DATA, "binary frames are not supported");
        }
    }

    /// A channel actor reported something.
    pub fn handle_channel(&mut self, ev: ChannelEvent) {
        if self.closed {
            return;
        }
        match ev {
            ChannelEvent::JoinOk { chan, response } => {
                self.resolve_join(chan, JoinOutcome::Ok(response));
            }
            ChannelEvent::JoinError { chan, response } => {
                self.resolve_join(chan, JoinOutcome::Error(response));
            }
            ChannelEvent::Exited { chan, abnormal } => self.channel_exited(chan, abnormal),
            ChannelEvent::Push {
                chan,
                event,
                payload,
            } => {
                let Some((join_ref, topic)) = self.joined(chan) else {
                    tracing::debug!(?chan, %event, "dropping push from a channel not joined");
                    return;
                };
                if !payload.is_object() {
                    // A channel bug, but the client must not be handed a frame it cannot read.
                    tracing::error!(?chan, %event, "dropping push whose payload is not an object");
                    return;
                }
                let frame = Frame::push(join_ref, topic, event, payload);
                self.send(frame);
            }
            ChannelEvent::Reply {
                chan,
                msg_ref,
                status,
                response,
            } => {
                let Some((join_ref, topic)) = self.joined(chan) else {
                    tracing::debug!(?chan, "dropping reply from a channel not joined");
                    return;
                };
                let frame = Frame::reply(join_ref, msg_ref, topic, status, response);
                self.send(frame);
            }
        }
    }

    /// Time passed; closes the connection if it has been idle for
    /// [`SocketConfig::idle_timeout`].
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.poll_timeout().is_some_and(|deadline| now >= deadline) {
            self.close_with(CLOSE_GOING_AWAY, "idle timeout");
        }
    }

    /// When [`Self::handle_timeout`] should next be called; `None` once closed.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.closed {
            return None;
        }
        self.last_activity.checked_add(self.config.idle_timeout)
    }

    /// The next thing the driver must do.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// The transport went away: stops every channel (joined or joining) and ignores all input
    /// from now on. Nothing is sent, since there is nowhere to send it.
    pub fn close(&mut self) {
        if self.closed {
            return;
        }
        self.closed = true;
        self.stop_all();
    }

    /// Whether the core has closed (itself, or through [`Self::close`]).
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Topics whose join was acknowledged, in topic order (joins in flight are not listed).
    pub fn joined_topics(&self) -> impl Iterator<Item = (&str, ChanId)> {
        self.topics.iter().filter_map(|(topic, chan)| {
            let ch = &self.channels[chan];
            matches!(ch.state, ChanState::Joined).then_some((topic.as_str(), *chan))
        })
    }

    fn handle_frame(&mut self, frame: Frame, size: usize) {
        // S1: before routing, and whatever the join_ref; other events on "phoenix" route normally.
        if frame.topic == HEARTBEAT_TOPIC && frame.event == EV_HEARTBEAT {
            self.send(Frame::reply(
                None,
                frame.msg_ref,
                HEARTBEAT_TOPIC,
                "ok",
                json!({}),
            ));
            return;
        }
        let Some(&chan) = self.topics.get(&frame.topic) else {
            return self.handle_unjoined(frame);
        };
        let ch = self
            .channels
            .get_mut(&chan)
            .expect("topics point at live channels");
        if let ChanState::Joining { held, .. } = &mut ch.state {
            let over_bytes = self.held_bytes.saturating_add(size) > self.config.max_frame_bytes;
            if self.held_frames >= MAX_HELD_FRAMES || over_bytes {
                self.close_with(CLOSE_POLICY_VIOLATION, "too many frames for a pending join");
            } else {
                self.held_frames += 1;
                self.held_bytes += size;
                held.push_back((frame, size));
            }
            return;
        }
        let current = ch.join_ref.clone();
        match frame.event.as_str() {
            EV_JOIN => {
                // S15: the old channel goes first (without phx_error), and its phx_close follows
                // the new join's reply. It no longer counts against the limit.
                let old = self.forget(chan);
                self.outputs.push_back(Output::StopChannel {
                    chan,
                    reason: StopReason::DuplicateJoin,
                });
                self.join(frame, Some(old.join_ref));
            }
            // S11 when the ref matches (or the client sent none); S13 when it is stale: the
            // client raced a server close and needs no reply.
            EV_LEAVE if frame.join_ref.is_none() || frame.join_ref == current => {
                let old = self.forget(chan);
                self.outputs.push_back(Output::StopChannel {
                    chan,
                    reason: StopReason::Leave,
                });
                self.send(Frame::reply(
                    old.join_ref.clone(),
                    frame.msg_ref,
                    &old.topic,
                    "ok",
                    json!({}),
                ));
                self.send(Frame::close(old.join_ref, old.topic));
            }
            // S8 (nil join_ref is accepted) and S14 (a stale one is dropped silently).
            _ if frame.join_ref.is_none() || frame.join_ref == current => {
                self.outputs.push_back(Output::ToChannel {
                    chan,
                    event: frame.event,
                    msg_ref: frame.msg_ref,
                    payload: frame.payload,
                });
            }
            _ => {
                tracing::debug!(topic = %frame.topic, event = %frame.event, "dropping stale frame");
            }
        }
    }

    /// A frame for a topic with no live channel.
    fn handle_unjoined(&mut self, frame: Frame) {
        match frame.event.as_str() {
            EV_JOIN => self.join(frame, None),
            // S12: nothing to stop, nothing to close, but the leave is still acknowledged.
            EV_LEAVE => self.send(Frame::reply(
                frame.join_ref,
                frame.msg_ref,
                frame.topic,
                "ok",
                json!({}),
            )),
            // S7: the event is not delivered anywhere.
            _ => self.send_unmatched(frame),
        }
    }

    /// Routes a join for a topic that has no live channel (any old one is already forgotten).
    fn join(&mut self, frame: Frame, replaces: Option<Option<String>>) {
        if !self.routes(&frame.topic) {
            self.send_unmatched(frame);
        } else if self.channels.len() >= self.config.max_channels {
            self.send(Frame::reply(
                frame.join_ref,
                frame.msg_ref,
                &frame.topic,
                "error",
                json!({ "reason": "too many channels joined" }),
            ));
            if let Some(old_join_ref) = replaces {
                self.send(Frame::close(old_join_ref, frame.topic));
            }
        } else {
            let chan = ChanId(self.next_chan);
            self.next_chan += 1;
            self.topics.insert(frame.topic.clone(), chan);
            self.channels.insert(
                chan,
                Channel {
                    topic: frame.topic.clone(),
                    join_ref: frame.join_ref,
                    state: ChanState::Joining {
                        join_msg_ref: frame.msg_ref,
                        replaces,
                        held: VecDeque::new(),
                    },
                },
            );
            self.outputs.push_back(Output::StartChannel {
                chan,
                topic: frame.topic,
                payload: frame.payload,
            });
        }
    }

    fn routes(&self, topic: &str) -> bool {
        self.config
            .routes
            .iter()
            .any(|route| match route.strip_suffix('*') {
                Some(prefix) => topic.starts_with(prefix),
                None => topic == route,
            })
    }

    /// S6/S7: the reply carries a null join_ref, as in Phoenix.
    fn send_unmatched(&mut self, frame: Frame) {
        self.send(Frame::reply(
            None,
            frame.msg_ref,
            frame.topic,
            "error",
            json!({ "reason": "unmatched topic" }),
        ));
    }

    fn resolve_join(&mut self, chan: ChanId, outcome: JoinOutcome) {
        let Some(ch) = self.channels.get_mut(&chan) else {
            tracing::debug!(?chan, "dropping join outcome of a forgotten channel");
            return;
        };
        let ChanState::Joining {
            join_msg_ref,
            replaces,
            held,
        } = std::mem::replace(&mut ch.state, ChanState::Joined)
        else {
            // A second answer to one join is an actor bug; the first answer stands.
            tracing::error!(?chan, "dropping a second join outcome");
            return;
        };
        let join_ref = ch.join_ref.clone();
        let topic = ch.topic.clone();
        let (status, response) = match outcome {
            JoinOutcome::Ok(response) => ("ok", response),
            JoinOutcome::Error(response) => {
                self.forget(chan);
                ("error", response)
            }
            JoinOutcome::Crashed => {
                self.forget(chan);
                ("error", json!({ "reason": "join crashed" }))
            }
        };
        self.send(Frame::reply(
            join_ref,
            join_msg_ref,
            &topic,
            status,
            response,
        ));
        if let Some(old_join_ref) = replaces {
            self.send(Frame::close(old_join_ref, topic));
        }
        self.release_held(&held);
        for (frame, size) in held {
            if self.closed {
                break;
            }
            self.handle_frame(frame, size);
        }
    }

    fn channel_exited(&mut self, chan: ChanId, abnormal: bool) {
        let Some(ch) = self.channels.get(&chan) else {
            // Already stopped or forgotten: the client was told whatever it needed.
            return;
        };
        if matches!(ch.state, ChanState::Joining { .. }) {
            // S5: whatever the exit reason, a channel that dies before answering its join.
            return self.resolve_join(chan, JoinOutcome::Crashed);
        }
        let ch = self.forget(chan);
        let frame = if abnormal {
            Frame::error(ch.join_ref, ch.topic)
        } else {
            Frame::close(ch.join_ref, ch.topic)
        };
        self.send(frame);
    }

    /// The join_ref and topic of a channel whose join was acknowledged.
    fn joined(&self, chan: ChanId) -> Option<(Option<String>, String)> {
        let ch = self.channels.get(&chan)?;
        matches!(ch.state, ChanState::Joined).then(|| (ch.join_ref.clone(), ch.topic.clone()))
    }

    fn forget(&mut self, chan: ChanId) -> Channel {
        let ch = self
            .channels
            .remove(&chan)
            .expect("forgetting a live channel");
        let removed = self.topics.remove(&ch.topic);
        assert_eq!(removed, Some(chan), "a channel owns its topic entry");
        if let ChanState::Joining { held, .. } = &ch.state {
            self.release_held(held);
        }
        ch
    }

    fn release_held(&mut self, held: &VecDeque<(Frame, usize)>) {
        self.held_frames -= held.len();
        self.held_bytes -= held.iter().map(|(_, size)| size).sum::<usize>();
    }

    fn close_with(&mut self, code: u16, reason: &str) {
        self.closed = true;
        self.outputs.push_back(Output::Close {
            code,
            reason: reason.to_owned(),
        });
        self.stop_all();
    }

    fn stop_all(&mut self) {
        let chans: Vec<ChanId> = self.channels.keys().copied().collect();
        for chan in chans {
            self.forget(chan);
            self.outputs.push_back(Output::StopChannel {
                chan,
                reason: StopReason::SocketClosed,
            });
        }
    }

    fn send(&mut self, frame: Frame) {
        self.outputs.push_back(Output::Send(frame.encode()));
    }
}

enum JoinOutcome {
    Ok(Value),
    Error(Value),
    Crashed,
}
