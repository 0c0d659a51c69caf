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
use crate::logsafe::Untrusted;
use crate::rt::probe::{self, Event};
use crate::shared_text::SharedText;

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
pub const MAX_HELD_FRAMES: usize = 16;

/// A channel of this socket. Allocated by the core and never reused within one socket, so an
/// event from a channel the core has forgotten can never be mistaken for a newer channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ChanId(pub u64);

/// Per-socket limits and routes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SocketConfig {
    /// Topic patterns, first match wins: `"room:*"` matches by prefix, a pattern without `*`
    /// matches exactly. A `*` anywhere but the end is a configuration bug (see
    /// [`SocketCore::new`]).
    pub routes: Vec<String>,
    /// Channels per socket, counting joins in flight. Phoenix's default is 100; the web app
    /// joins one room per socket, and every joined channel is a media peer with its own
    /// connection on the server, so the default is a few.
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
            max_channels: 4,
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
    /// A server push whose payload is `{field: value}`, `value` a string shared with other
    /// channels' pushes (a broadcast): its JSON literal is made once for all of them.
    PushShared {
        /// The channel.
        chan: ChanId,
        event: &'static str,
        field: &'static str,
        value: SharedText,
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
                tracing::debug!(err = %Untrusted(&err), "closing socket on undecodable frame");
                probe::emit(Event::UndecodableFrame);
                self.close_with(CLOSE_INTERNAL_ERROR, "invalid frame");
            }
        }
    }

    /// The transport refused a frame larger than it accepts (it enforces the size limit
    /// before buffering): the client is told with a 1009 close, like any oversized frame.
    pub fn handle_oversized(&mut self) {
        if !self.is_closed() {
            self.close_with(CLOSE_TOO_BIG, "frame too large");
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
                let Some((join_ref, topic)) = self.push_target(chan, &event) else {
                    return;
                };
                if !payload.is_object() {
                    // A channel bug, but the client must not be handed a frame it cannot read.
                    tracing::error!(?chan, %event, "dropping push whose payload is not an object");
                    probe::emit(Event::PushNotObject);
                    return;
                }
                let frame = Frame::push(join_ref, topic, event, payload);
                self.send(frame);
            }
            ChannelEvent::PushShared {
                chan,
                event,
                field,
                value,
            } => {
                let Some((join_ref, topic)) = self.push_target(chan, event) else {
                    return;
                };
                let text =
                    Frame::encode_push_shared(join_ref.as_deref(), &topic, event, field, &value);
                self.outputs.push_back(Output::Send(text));
            }
            ChannelEvent::Reply {
                chan,
                msg_ref,
                status,
                response,
            } => {
                let Some((join_ref, topic)) = self.joined(chan) else {
                    tracing::debug!(?chan, "dropping reply from a channel not joined");
                    probe::emit(Event::ReplyFromUnjoinedChannel);
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
                probe::emit(Event::FrameHeld {
                    frames: self.held_frames,
                    max_frames: MAX_HELD_FRAMES,
                    bytes: self.held_bytes,
                    max_bytes: self.config.max_frame_bytes,
                });
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
                tracing::debug!(topic = %Untrusted(&frame.topic), event = %Untrusted(&frame.event), "dropping stale frame");
                probe::emit(Event::StaleFrameIgnored);
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
            probe::emit(Event::JoinOutcomeOfForgottenChannel);
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
            probe::emit(Event::SecondJoinOutcome);
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
    /// [`Self::joined`] for a push of `event`: one from a channel not (or no longer) joined is
    /// dropped, and counted.
    fn push_target(&self, chan: ChanId, event: &str) -> Option<(Option<String>, String)> {
        let target = self.joined(chan);
        if target.is_none() {
            tracing::debug!(?chan, %event, "dropping push from a channel not joined");
            probe::emit(Event::PushFromUnjoinedChannel);
        }
        target
    }

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

// Also compiled under `--cfg fuzzing` (cargo-fuzz sets it) for fuzz/ phoenix_socket.
#[cfg(any(test, fuzzing))]
impl SocketCore {
    /// Internal consistency, checked after every step of the property test and the fuzz target.
    #[doc(hidden)]
    pub fn check_invariants(&self) {
        assert!(self.channels.len() <= self.config.max_channels);
        assert_eq!(self.channels.len(), self.topics.len());
        for (topic, chan) in &self.topics {
            assert_eq!(&self.channels[chan].topic, topic);
            assert!(chan.0 < self.next_chan);
        }
        let held = self.channels.values().filter_map(|ch| match &ch.state {
            ChanState::Joining { held, .. } => Some(held),
            ChanState::Joined => None,
        });
        let (frames, bytes) = held.fold((0, 0), |(n, b), held| {
            (
                n + held.len(),
                b + held.iter().map(|(_, s)| s).sum::<usize>(),
            )
        });
        assert_eq!((frames, bytes), (self.held_frames, self.held_bytes));
        assert!(frames <= MAX_HELD_FRAMES && bytes <= self.config.max_frame_bytes);
        if self.closed {
            assert!(self.channels.is_empty());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Drives a core with a manual clock and renders its outputs as JSON so expectations read
    /// like the wire (and do not depend on object key order).
    struct Harness {
        core: SocketCore,
        now: Instant,
    }

    impl Harness {
        fn new() -> Self {
            Self::with(SocketConfig::default())
        }

        fn with(config: SocketConfig) -> Self {
            let now = Instant::now();
            Self {
                core: SocketCore::new(config, now),
                now,
            }
        }

        fn text(&mut self, text: &str) -> Vec<Value> {
            self.core.handle_text(self.now, text);
            self.drain()
        }

        fn chan(&mut self, ev: ChannelEvent) -> Vec<Value> {
            self.core.handle_channel(ev);
            self.drain()
        }

        fn advance(&mut self, by: Duration) -> Vec<Value> {
            self.now += by;
            self.core.handle_timeout(self.now);
            self.drain()
        }

        fn drain(&mut self) -> Vec<Value> {
            let outs = std::iter::from_fn(|| self.core.poll_output())
                .map(render)
                .collect();
            self.core.check_invariants();
            outs
        }

        /// Joins `topic` with join_ref = ref = `jr` and acknowledges it.
        fn joined(&mut self, topic: &str, jr: &str) -> ChanId {
            let outs = self.text(&format!(r#"["{jr}","{jr}","{topic}","phx_join",{{}}]"#));
            let chan = ChanId(outs[0]["start"].as_u64().expect("a StartChannel"));
            let outs = self.chan(ChannelEvent::JoinOk {
                chan,
                response: json!({}),
            });
            assert_eq!(outs, [reply(jr, jr, topic, "ok", json!({}))]);
            chan
        }
    }

    fn render(out: Output) -> Value {
        match out {
            Output::Send(text) => {
                let frame = frame::decode(&text).expect("every emitted frame decodes");
                assert!(frame.payload.is_object(), "outbound payloads are objects");
                serde_json::from_str(&text).expect("every emitted frame is JSON")
            }
            Output::StartChannel {
                chan,
                topic,
                payload,
            } => json!({"start": chan.0, "topic": topic, "payload": payload}),
            Output::ToChannel {
                chan,
                event,
                msg_ref,
                payload,
            } => json!({"to": chan.0, "event": event, "ref": msg_ref, "payload": payload}),
            Output::StopChannel { chan, reason } => {
                json!({"stop": chan.0, "reason": format!("{reason:?}")})
            }
            Output::Close { code, reason } => json!({"close": code, "reason": reason}),
        }
    }

    fn reply(jr: &str, r: &str, topic: &str, status: &str, response: Value) -> Value {
        json!([jr, r, topic, "phx_reply", {"status": status, "response": response}])
    }

    fn unmatched(r: &str, topic: &str) -> Value {
        let response = json!({"reason": "unmatched topic"});
        json!([null, r, topic, "phx_reply", {"status": "error", "response": response}])
    }

    fn start(chan: u64, topic: &str) -> Value {
        json!({"start": chan, "topic": topic, "payload": {}})
    }

    fn stop(chan: u64, reason: StopReason) -> Value {
        json!({"stop": chan, "reason": format!("{reason:?}")})
    }

    fn close(code: u16, reason: &str) -> Value {
        json!({"close": code, "reason": reason})
    }

    fn push(chan: ChanId, event: &str, payload: Value) -> ChannelEvent {
        ChannelEvent::Push {
            chan,
            event: event.into(),
            payload,
        }
    }

    #[test]
    fn s1_heartbeat_is_answered_with_a_null_join_ref() {
        let mut h = Harness::new();
        assert_eq!(
            h.text(r#"[null,"4","phoenix","heartbeat",{}]"#),
            [json!([null, "4", "phoenix", "phx_reply", {"status": "ok", "response": {}}])]
        );
        assert_eq!(
            h.text(r#"["9","5","phoenix","heartbeat",{}]"#),
            [json!([null, "5", "phoenix", "phx_reply", {"status": "ok", "response": {}}])]
        );
    }

    #[test]
    fn s1_other_events_on_the_phoenix_topic_are_unmatched() {
        let mut h = Harness::new();
        assert_eq!(
            h.text(r#"[null,"4","phoenix","ping",{}]"#),
            [unmatched("4", "phoenix")]
        );
        assert_eq!(
            h.text(r#"["5","5","phoenix","phx_join",{}]"#),
            [unmatched("5", "phoenix")]
        );
    }

    #[test]
    fn s2_routes_by_prefix_or_exactly() {
        let config = SocketConfig {
            routes: vec!["room:*".into(), "lobby".into()],
            ..SocketConfig::default()
        };
        let mut h = Harness::with(config);
        assert_eq!(
            h.text(r#"["1","1","room:","phx_join",{}]"#),
            [start(0, "room:")]
        );
        assert_eq!(
            h.text(r#"["2","2","lobby","phx_join",{}]"#),
            [start(1, "lobby")]
        );
        assert_eq!(
            h.text(r#"["3","3","lobby:1","phx_join",{}]"#),
            [unmatched("3", "lobby:1")]
        );
        assert_eq!(
            h.text(r#"["4","4","room","phx_join",{}]"#),
            [unmatched("4", "room")]
        );
    }

    #[test]
    #[should_panic(expected = "only allowed at the end")]
    fn s2_a_star_inside_a_route_is_a_configuration_bug() {
        let config = SocketConfig {
            routes: vec!["room:*:x".into()],
            ..SocketConfig::default()
        };
        let _ = SocketCore::new(config, Instant::now());
    }

    #[test]
    fn s3_join_ok_then_s8_events_and_s9_pushes_carry_the_join_ref() {
        let mut h = Harness::new();
        assert_eq!(
            h.text(r#"["11","1","room:x","phx_join",{"isSimulcastOn":false}]"#),
            [json!({"start": 0, "topic": "room:x", "payload": {"isSimulcastOn": false}})]
        );
        assert_eq!(h.core.joined_topics().count(), 0, "not joined until JoinOk");
        let outs = h.chan(ChannelEvent::JoinOk {
            chan: ChanId(0),
            response: json!({"peer": 1}),
        });
        assert_eq!(outs, [reply("11", "1", "room:x", "ok", json!({"peer": 1}))]);
        assert_eq!(
            h.core.joined_topics().collect::<Vec<_>>(),
            [("room:x", ChanId(0))]
        );
        assert_eq!(
            h.text(r#"["11","2","room:x","mediaEvent",{"data":"x"}]"#),
            [json!({"to": 0, "event": "mediaEvent", "ref": "2", "payload": {"data": "x"}})]
        );
        // A null join_ref on an event is accepted, as in Phoenix; so is any payload.
        assert_eq!(
            h.text(r#"[null,"3","room:x","mediaEvent","raw"]"#),
            [json!({"to": 0, "event": "mediaEvent", "ref": "3", "payload": "raw"})]
        );
        assert_eq!(
            h.chan(push(ChanId(0), "mediaEvent", json!({"data": "y"}))),
            [json!(["11", null, "room:x", "mediaEvent", {"data": "y"}])]
        );
        let outs = h.chan(ChannelEvent::Reply {
            chan: ChanId(0),
            msg_ref: Some("2".into()),
            status: "ok".into(),
            response: json!({"echoed": true}),
        });
        assert_eq!(
            outs,
            [reply("11", "2", "room:x", "ok", json!({"echoed": true}))]
        );
    }

    #[test]
    fn s3_channel_output_before_the_join_is_acknowledged_is_dropped() {
        let mut h = Harness::new();
        h.text(r#"["1","1","room:x","phx_join",{}]"#);
        assert_eq!(
            h.chan(push(ChanId(0), "early", json!({}))),
            Vec::<Value>::new()
        );
        let early_reply = ChannelEvent::Reply {
            chan: ChanId(0),
            msg_ref: Some("1".into()),
            status: "ok".into(),
            response: json!({}),
        };
        assert_eq!(h.chan(early_reply), Vec::<Value>::new());
    }

    #[test]
    fn channel_output_from_unknown_channels_and_bad_pushes_are_dropped() {
        let mut h = Harness::new();
        let chan = h.joined("room:x", "1");
        assert!(h.chan(push(ChanId(7), "e", json!({}))).is_empty());
        assert!(
            h.chan(push(chan, "e", json!([1]))).is_empty(),
            "not an object"
        );
        let second = ChannelEvent::JoinOk {
            chan,
            response: json!({}),
        };
        assert!(h.chan(second).is_empty(), "a second join outcome");
        assert!(h
            .chan(ChannelEvent::Exited {
                chan: ChanId(9),
                abnormal: true
            })
            .is_empty());
    }

    #[test]
    fn s4_join_error_replies_and_forgets_without_phx_close() {
        let mut h = Harness::new();
        assert_eq!(
            h.text(r#"["12","2","room:x","phx_join",{}]"#),
            [start(0, "room:x")]
        );
        let outs = h.chan(ChannelEvent::JoinError {
            chan: ChanId(0),
            response: json!({"reason": "failed to start room"}),
        });
        assert_eq!(
            outs,
            [reply(
                "12",
                "2",
                "room:x",
                "error",
                json!({"reason": "failed to start room"})
            )]
        );
        assert!(h
            .chan(ChannelEvent::Exited {
                chan: ChanId(0),
                abnormal: false
            })
            .is_empty());
        assert!(h.chan(push(ChanId(0), "late", json!({}))).is_empty());
        assert_eq!(
            h.text(r#"["12","3","room:x","mediaEvent",{}]"#),
            [unmatched("3", "room:x")]
        );
        // The client retries with a new join_ref; it gets a fresh channel.
        assert_eq!(
            h.text(r#"["13","13","room:x","phx_join",{}]"#),
            [start(1, "room:x")]
        );
    }

    #[test]
    fn s5_exit_before_the_join_answer_is_a_join_crash() {
        for abnormal in [true, false] {
            let mut h = Harness::new();
            h.text(r#"["12","2","room:x","phx_join",{}]"#);
            let outs = h.chan(ChannelEvent::Exited {
                chan: ChanId(0),
                abnormal,
            });
            assert_eq!(
                outs,
                [reply(
                    "12",
                    "2",
                    "room:x",
                    "error",
                    json!({"reason": "join crashed"})
                )]
            );
            assert!(h
                .chan(ChannelEvent::JoinOk {
                    chan: ChanId(0),
                    response: json!({})
                })
                .is_empty());
        }
    }

    #[test]
    fn s6_unmatched_join_has_a_null_join_ref() {
        let mut h = Harness::new();
        assert_eq!(
            h.text(r#"["11","1","unmatched-topic","phx_join",{}]"#),
            [unmatched("1", "unmatched-topic")]
        );
    }

    #[test]
    fn s7_event_on_a_topic_not_joined_is_refused_and_not_delivered() {
        let mut h = Harness::new();
        assert_eq!(
            h.text(r#"["6","7","room:r1","mediaEvent",{}]"#),
            [unmatched("7", "room:r1")]
        );
        assert_eq!(
            h.text(r#"[null,null,"nope","x",{}]"#),
            [json!([null, null, "nope", "phx_reply", {
                "status": "error",
                "response": {"reason": "unmatched topic"},
            }])]
        );
    }

    #[test]
    fn s11_leave_stops_then_replies_then_closes() {
        let mut h = Harness::new();
        let chan = h.joined("room:r1", "6");
        assert_eq!(
            h.text(r#"["6","8","room:r1","phx_leave",{}]"#),
            [
                stop(0, StopReason::Leave),
                reply("6", "8", "room:r1", "ok", json!({})),
                json!(["6", "6", "room:r1", "phx_close", {}]),
            ]
        );
        assert_eq!(h.core.joined_topics().count(), 0);
        // No push on a topic after leaving it, and no phx_error for the stopped actor.
        assert!(h.chan(push(chan, "you_left", json!({}))).is_empty());
        assert!(h
            .chan(ChannelEvent::Exited {
                chan,
                abnormal: true
            })
            .is_empty());
        assert_eq!(
            h.text(r#"["6","9","room:r1","mediaEvent",{}]"#),
            [unmatched("9", "room:r1")]
        );
    }

    #[test]
    fn s11_leave_without_a_join_ref_uses_the_channels() {
        let mut h = Harness::new();
        h.joined("room:r1", "6");
        assert_eq!(
            h.text(r#"[null,"8","room:r1","phx_leave",{}]"#),
            [
                stop(0, StopReason::Leave),
                reply("6", "8", "room:r1", "ok", json!({})),
                json!(["6", "6", "room:r1", "phx_close", {}]),
            ]
        );
    }

    #[test]
    fn s12_leave_of_a_topic_not_joined_is_acknowledged_without_close() {
        let mut h = Harness::new();
        assert_eq!(
            h.text(r#"["6","7","room:slow","phx_leave",{}]"#),
            [reply("6", "7", "room:slow", "ok", json!({}))]
        );
        // Also for topics no route matches.
        assert_eq!(
            h.text(r#"["6","8","nope","phx_leave",{}]"#),
            [reply("6", "8", "nope", "ok", json!({}))]
        );
    }

    #[test]
    fn s13_leave_with_a_stale_join_ref_is_ignored() {
        let mut h = Harness::new();
        h.joined("room:r1", "7");
        assert!(h.text(r#"["6","9","room:r1","phx_leave",{}]"#).is_empty());
        assert_eq!(
            h.core.joined_topics().collect::<Vec<_>>(),
            [("room:r1", ChanId(0))]
        );
    }

    #[test]
    fn s14_stale_inbound_event_is_dropped_silently() {
        let mut h = Harness::new();
        h.joined("room:r1", "7");
        assert!(h.text(r#"["6","9","room:r1","mediaEvent",{}]"#).is_empty());
    }

    #[test]
    fn s15_duplicate_join_replaces_the_channel_and_closes_the_old_after_the_reply() {
        let mut h = Harness::new();
        let old = h.joined("room:joiner", "11");
        assert_eq!(
            h.text(r#"["12","2","room:joiner","phx_join",{}]"#),
            [stop(0, StopReason::DuplicateJoin), start(1, "room:joiner")]
        );
        // The old actor is forgotten: nothing it says reaches the client.
        assert!(h.chan(push(old, "late", json!({}))).is_empty());
        assert!(h
            .chan(ChannelEvent::Exited {
                chan: old,
                abnormal: true
            })
            .is_empty());
        let outs = h.chan(ChannelEvent::JoinOk {
            chan: ChanId(1),
            response: json!({}),
        });
        assert_eq!(
            outs,
            [
                reply("12", "2", "room:joiner", "ok", json!({})),
                json!(["11", "11", "room:joiner", "phx_close", {}]),
            ]
        );
        assert_eq!(
            h.core.joined_topics().collect::<Vec<_>>(),
            [("room:joiner", ChanId(1))]
        );
    }

    #[test]
    fn s15_old_close_follows_a_failed_replacement_join_too() {
        let mut h = Harness::new();
        h.joined("room:j", "11");
        h.text(r#"["12","12","room:j","phx_join",{}]"#);
        let outs = h.chan(ChannelEvent::Exited {
            chan: ChanId(1),
            abnormal: true,
        });
        assert_eq!(
            outs,
            [
                reply(
                    "12",
                    "12",
                    "room:j",
                    "error",
                    json!({"reason": "join crashed"})
                ),
                json!(["11", "11", "room:j", "phx_close", {}]),
            ]
        );
    }

    #[test]
    fn s16_crash_sends_phx_error_and_s17_graceful_stop_sends_phx_close() {
        let mut h = Harness::new();
        let crash = h.joined("room:crash", "6");
        let calm = h.joined("room:calm", "7");
        assert_eq!(
            h.chan(ChannelEvent::Exited {
                chan: crash,
                abnormal: true
            }),
            [json!(["6", "6", "room:crash", "phx_error", {"reason": "channel_crash"}])]
        );
        assert_eq!(
            h.chan(ChannelEvent::Exited {
                chan: calm,
                abnormal: false
            }),
            [json!(["7", "7", "room:calm", "phx_close", {}])]
        );
        assert!(h.chan(push(crash, "after", json!({}))).is_empty());
        // The client's rejoin after phx_error gets a new channel.
        assert_eq!(
            h.text(r#"["8","8","room:crash","phx_join",{}]"#),
            [start(2, "room:crash")]
        );
    }

    #[test]
    fn s19_the_101st_channel_is_refused_counting_pending_joins() {
        // Phoenix's own limit (this server's default is lower; the rule is the same).
        let mut h = Harness::with(SocketConfig {
            max_channels: 100,
            ..SocketConfig::default()
        });
        for i in 0..100 {
            let outs = h.text(&format!(r#"["{i}","{i}","room:{i}","phx_join",{{}}]"#));
            assert_eq!(outs, [start(i, &format!("room:{i}"))]);
        }
        assert_eq!(
            h.text(r#"["100","100","room:100","phx_join",{}]"#),
            [reply(
                "100",
                "100",
                "room:100",
                "error",
                json!({"reason": "too many channels joined"})
            )]
        );
        // Routing comes first, as in Phoenix.
        assert_eq!(
            h.text(r#"["101","101","nope","phx_join",{}]"#),
            [unmatched("101", "nope")]
        );
        // A duplicate join replaces a channel, so it is not refused at the limit.
        h.chan(ChannelEvent::JoinOk {
            chan: ChanId(5),
            response: json!({}),
        });
        assert_eq!(
            h.text(r#"["102","102","room:5","phx_join",{}]"#),
            [stop(5, StopReason::DuplicateJoin), start(100, "room:5")]
        );
        h.chan(ChannelEvent::JoinError {
            chan: ChanId(0),
            response: json!({}),
        });
        assert_eq!(
            h.text(r#"["103","103","room:new","phx_join",{}]"#),
            [start(101, "room:new")]
        );
    }

    #[test]
    fn s21_idle_timeout_closes_with_1001_and_any_frame_resets_it() {
        let mut h = Harness::new();
        let t0 = h.now;
        assert_eq!(h.core.poll_timeout(), Some(t0 + Duration::from_secs(60)));
        h.joined("room:x", "1");
        assert!(h.advance(Duration::from_secs(59)).is_empty());
        h.text(r#"[null,"2","phoenix","heartbeat",{}]"#);
        assert_eq!(h.core.poll_timeout(), Some(h.now + Duration::from_secs(60)));
        assert!(h.advance(Duration::from_secs(30)).is_empty());
        h.text(r#"["1","3","room:x","mediaEvent",{}]"#);
        assert!(h.advance(Duration::from_secs(59)).is_empty());
        // Channel output is not client activity.
        h.chan(push(ChanId(0), "e", json!({})));
        assert_eq!(
            h.advance(Duration::from_secs(1)),
            [
                close(1001, "idle timeout"),
                stop(0, StopReason::SocketClosed)
            ]
        );
        assert_eq!(h.core.poll_timeout(), None);
        assert!(h.core.is_closed());
        assert!(h.text(r#"[null,"4","phoenix","heartbeat",{}]"#).is_empty());
    }

    #[test]
    fn s26_undecodable_frame_closes_with_1011_and_stops_channels() {
        for bad in ["not json", "{}", "[1,2,3,4]", r#"["1",2,"t","e",{}]"#, ""] {
            let mut h = Harness::new();
            h.joined("room:a", "1");
            h.text(r#"["2","2","room:b","phx_join",{}]"#);
            assert_eq!(
                h.text(bad),
                [
                    close(1011, "invalid frame"),
                    stop(0, StopReason::SocketClosed),
                    stop(1, StopReason::SocketClosed),
                ],
                "{bad:?}"
            );
            // Late channel output goes nowhere.
            assert!(h
                .chan(ChannelEvent::JoinOk {
                    chan: ChanId(1),
                    response: json!({})
                })
                .is_empty());
            h.core.close();
            assert!(h.drain().is_empty(), "close after close is a no-op");
        }
    }

    #[test]
    fn frames_over_the_limit_close_with_1009() {
        let config = SocketConfig {
            max_frame_bytes: 40,
            ..SocketConfig::default()
        };
        let mut h = Harness::with(config.clone());
        let ok = r#"[null,"1","phoenix","heartbeat",{}]"#;
        assert!(ok.len() <= 40);
        assert_eq!(h.text(ok).len(), 1);
        let big = format!(
            r#"[null,"1","phoenix","heartbeat",{{"x":"{}"}}]"#,
            "a".repeat(10)
        );
        assert_eq!(h.text(&big), [close(1009, "frame too large")]);

        let mut h = Harness::with(config);
        h.core.handle_binary(h.now, &[0; 41]);
        assert_eq!(h.drain(), [close(1009, "frame too large")]);

        // The transport refusing a frame itself ends the same way, once.
        let mut h = Harness::new();
        h.core.handle_oversized();
        assert_eq!(h.drain(), [close(1009, "frame too large")]);
        h.core.handle_oversized();
        assert!(h.drain().is_empty());
    }

    #[test]
    fn binary_frames_close_with_1003() {
        let mut h = Harness::new();
        h.core.handle_binary(h.now, &[0, 1, 1, 8, 3]);
        assert_eq!(h.drain(), [close(1003, "binary frames are not supported")]);
    }

    #[test]
    fn close_stops_every_channel_joined_or_joining_and_nothing_else() {
        let mut h = Harness::new();
        h.joined("room:b", "1");
        h.text(r#"["2","2","room:a","phx_join",{}]"#);
        h.core.close();
        assert_eq!(
            h.drain(),
            [
                stop(0, StopReason::SocketClosed),
                stop(1, StopReason::SocketClosed),
            ]
        );
        assert_eq!(h.core.poll_timeout(), None);
        h.core.close();
        assert!(h.drain().is_empty());
        assert!(h.text(r#"[null,"4","phoenix","heartbeat",{}]"#).is_empty());
        h.core.handle_binary(h.now, b"x");
        assert!(h.advance(Duration::from_secs(3600)).is_empty());
    }

    #[test]
    fn join_timeout_leave_and_rejoin_are_handled_after_the_slow_join_answers() {
        // phoenix.js 4.4: no join reply within 10 s => phx_leave with the old join_ref, then a
        // new phx_join. Phoenix answers the first join before it sees either.
        let mut h = Harness::new();
        assert_eq!(
            h.text(r#"["6","6","room:slow","phx_join",{}]"#),
            [start(0, "room:slow")]
        );
        assert!(h.text(r#"["6","7","room:slow","phx_leave",{}]"#).is_empty());
        assert!(h.text(r#"["8","8","room:slow","phx_join",{}]"#).is_empty());
        // Other topics and heartbeats are not held back.
        assert_eq!(h.text(r#"[null,"9","phoenix","heartbeat",{}]"#).len(), 1);
        let outs = h.chan(ChannelEvent::JoinOk {
            chan: ChanId(0),
            response: json!({}),
        });
        assert_eq!(
            outs,
            [
                reply("6", "6", "room:slow", "ok", json!({})),
                stop(0, StopReason::Leave),
                reply("6", "7", "room:slow", "ok", json!({})),
                json!(["6", "6", "room:slow", "phx_close", {}]),
                start(1, "room:slow"),
            ]
        );
        assert_eq!(
            h.chan(ChannelEvent::JoinOk {
                chan: ChanId(1),
                response: json!({})
            }),
            [reply("8", "8", "room:slow", "ok", json!({}))]
        );
    }

    #[test]
    fn frames_held_for_a_failed_join_are_handled_as_for_an_unjoined_topic() {
        let mut h = Harness::new();
        h.text(r#"["6","6","room:x","phx_join",{}]"#);
        h.text(r#"["6","7","room:x","mediaEvent",{}]"#);
        h.text(r#"["6","8","room:x","phx_leave",{}]"#);
        let outs = h.chan(ChannelEvent::JoinError {
            chan: ChanId(0),
            response: json!({"reason": "no"}),
        });
        assert_eq!(
            outs,
            [
                reply("6", "6", "room:x", "error", json!({"reason": "no"})),
                unmatched("7", "room:x"),
                reply("6", "8", "room:x", "ok", json!({})),
            ]
        );
    }

    #[test]
    fn held_frames_are_bounded() {
        let mut h = Harness::new();
        h.joined("room:b", "1");
        h.text(r#"["6","6","room:x","phx_join",{}]"#);
        for i in 0..MAX_HELD_FRAMES {
            assert!(h
                .text(&format!(r#"["6","{i}","room:x","e",{{}}]"#))
                .is_empty());
        }
        assert_eq!(
            h.text(r#"["6","x","room:x","e",{}]"#),
            [
                close(1008, "too many frames for a pending join"),
                stop(0, StopReason::SocketClosed),
                stop(1, StopReason::SocketClosed),
            ]
        );

        let config = SocketConfig {
            max_frame_bytes: 100,
            ..SocketConfig::default()
        };
        let mut h = Harness::with(config);
        h.text(r#"["6","6","room:x","phx_join",{}]"#);
        let frame = format!(r#"["6","7","room:x","e",{{"pad":"{}"}}]"#, "a".repeat(40));
        assert!(h.text(&frame).is_empty());
        assert_eq!(
            h.text(&frame),
            [
                close(1008, "too many frames for a pending join"),
                stop(0, StopReason::SocketClosed),
            ]
        );
    }

    #[test]
    fn chan_ids_are_never_reused() {
        let mut h = Harness::new();
        for i in 0..5u64 {
            let chan = h.joined("room:x", &i.to_string());
            assert_eq!(chan, ChanId(i));
            h.text(&format!(r#"["{i}","l{i}","room:x","phx_leave",{{}}]"#));
        }
    }

    #[test]
    fn videoroom_session_transcript() {
        let mut h = Harness::new();
        let mut wire = Vec::new();
        wire.extend(h.text(r#"["3","3","room:abc","phx_join",{}]"#));
        wire.extend(h.chan(ChannelEvent::JoinOk {
            chan: ChanId(0),
            response: json!({}),
        }));
        wire.extend(h.chan(push(ChanId(0), "simulcastConfig", json!({"data": false}))));
        wire.extend(h.text(r#"["3","4","room:abc","mediaEvent",{"data":"in"}]"#));
        wire.extend(h.chan(push(ChanId(0), "mediaEvent", json!({"data": "out"}))));
        wire.extend(h.text(r#"[null,"5","phoenix","heartbeat",{}]"#));
        wire.extend(h.text(r#"["3","6","room:abc","phx_leave",{}]"#));
        assert_eq!(
            wire,
            [
                start(0, "room:abc"),
                reply("3", "3", "room:abc", "ok", json!({})),
                json!(["3", null, "room:abc", "simulcastConfig", {"data": false}]),
                json!({"to": 0, "event": "mediaEvent", "ref": "4", "payload": {"data": "in"}}),
                json!(["3", null, "room:abc", "mediaEvent", {"data": "out"}]),
                json!([null, "5", "phoenix", "phx_reply", {"status": "ok", "response": {}}]),
                stop(0, StopReason::Leave),
                reply("3", "6", "room:abc", "ok", json!({})),
                json!(["3", "3", "room:abc", "phx_close", {}]),
            ]
        );
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;
        use std::collections::BTreeSet;

        #[derive(Clone, Debug)]
        enum Op {
            Text(String),
            Binary(usize),
            Chan(ChannelEvent),
            Advance(u64),
            Close,
        }

        fn arb_json() -> impl Strategy<Value = Value> {
            prop_oneof![
                Just(json!({})),
                Just(json!({"data": "x"})),
                Just(json!([1])),
                Just(Value::Null),
                ".{0,6}".prop_map(Value::from),
            ]
        }

        fn arb_ref() -> impl Strategy<Value = Option<String>> {
            proptest::option::of(
                prop_oneof![Just("1"), Just("2"), Just("3")].prop_map(String::from),
            )
        }

        fn arb_frame() -> impl Strategy<Value = String> {
            let topic = prop_oneof![
                Just("room:a"),
                Just("room:b"),
                Just("room:c"),
                Just("phoenix"),
                Just("nope")
            ];
            let event = prop_oneof![
                3 => Just("phx_join"),
                2 => Just("phx_leave"),
                1 => Just("heartbeat"),
                3 => Just("mediaEvent"),
                1 => Just("phx_reply"),
            ];
            (arb_ref(), arb_ref(), topic, event, arb_json()).prop_map(|(j, r, t, e, p)| {
                Frame {
                    join_ref: j,
                    msg_ref: r,
                    topic: t.into(),
                    event: e.into(),
                    payload: p,
                }
                .encode()
            })
        }

        fn arb_event() -> impl Strategy<Value = ChannelEvent> {
            let chan = (0u64..8).prop_map(ChanId);
            prop_oneof![
                (chan.clone(), arb_json())
                    .prop_map(|(chan, response)| ChannelEvent::JoinOk { chan, response }),
                (chan.clone(), arb_json())
                    .prop_map(|(chan, response)| ChannelEvent::JoinError { chan, response }),
                (chan.clone(), arb_json()).prop_map(|(chan, payload)| ChannelEvent::Push {
                    chan,
                    event: "mediaEvent".into(),
                    payload
                }),
                (chan.clone(), ".{0,8}").prop_map(|(chan, text)| ChannelEvent::PushShared {
                    chan,
                    event: "mediaEvent",
                    field: "data",
                    value: SharedText::new(text),
                }),
                (chan.clone(), arb_ref(), arb_json()).prop_map(|(chan, msg_ref, response)| {
                    ChannelEvent::Reply {
                        chan,
                        msg_ref,
                        status: "ok".into(),
                        response,
                    }
                }),
                (chan, any::<bool>())
                    .prop_map(|(chan, abnormal)| ChannelEvent::Exited { chan, abnormal }),
            ]
        }

        fn arb_op() -> impl Strategy<Value = Op> {
            prop_oneof![
                12 => arb_frame().prop_map(Op::Text),
                1 => ".{0,24}".prop_map(Op::Text),
                10 => arb_event().prop_map(Op::Chan),
                2 => (0u64..40).prop_map(Op::Advance),
                1 => (0usize..300).prop_map(Op::Binary),
                1 => Just(Op::Close),
            ]
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

        proptest! {
            #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

            /// Nothing panics, every frame decodes with an object payload, the core's tables stay
            /// consistent, and nothing a channel says after it was stopped or forgotten (or
            /// before it existed) reaches the client.
            #[test]
            fn arbitrary_input_keeps_the_core_sound(ops in prop::collection::vec(arb_op(), 0..60)) {
                let config = SocketConfig {
                    max_channels: 2,
                    max_frame_bytes: 200,
                    ..SocketConfig::default()
                };
                let mut h = Harness::with(config);
                let mut started = 0u64;
                let mut dead = BTreeSet::new();
                let mut acked = BTreeSet::new();
                let mut closed = false;
                for op in ops {
                    let live = |chan: ChanId, dead: &BTreeSet<ChanId>| {
                        chan.0 < started && !dead.contains(&chan)
                    };
                    let silent_chan = match &op {
                        Op::Chan(ev) => Some(chan_of(ev)).filter(|chan| !live(*chan, &dead)),
                        _ => None,
                    };
                    // The first answer to a join in flight must produce exactly its reply first.
                    let mut answers_join = false;
                    match op {
                        Op::Text(text) => h.core.handle_text(h.now, &text),
                        Op::Binary(len) => h.core.handle_binary(h.now, &vec![0; len]),
                        Op::Chan(ev) => {
                            let chan = chan_of(&ev);
                            if live(chan, &dead) {
                                let first_answer = !acked.contains(&chan)
                                    && matches!(
                                        ev,
                                        ChannelEvent::JoinOk { .. }
                                            | ChannelEvent::JoinError { .. }
                                            | ChannelEvent::Exited { .. }
                                    );
                                answers_join = first_answer && !closed;
                                if first_answer {
                                    acked.insert(chan);
                                }
                                // A later JoinError is an actor bug the core ignores.
                                let gone = matches!(ev, ChannelEvent::Exited { .. })
                                    || (first_answer
                                        && matches!(ev, ChannelEvent::JoinError { .. }));
                                if gone {
                                    dead.insert(chan);
                                }
                            }
                            h.core.handle_channel(ev);
                        }
                        Op::Advance(secs) => {
                            h.now += Duration::from_secs(secs);
                            h.core.handle_timeout(h.now);
                        }
                        Op::Close => h.core.close(),
                    }
                    let outs: Vec<Output> = std::iter::from_fn(|| h.core.poll_output()).collect();
                    h.core.check_invariants();
                    if answers_join {
                        let first = outs.first().and_then(|out| match out {
                            Output::Send(text) => frame::decode(text).ok(),
                            _ => None,
                        });
                        prop_assert_eq!(first.map(|f| f.event), Some(frame::EV_REPLY.to_owned()));
                    }
                    if let Some(chan) = silent_chan {
                        prop_assert!(outs.is_empty(), "{chan:?} is not live but produced {outs:?}");
                    }
                    for out in outs {
                        match &out {
                            Output::StartChannel { chan, .. } => {
                                prop_assert!(!closed);
                                prop_assert_eq!(chan.0, started, "ids are allocated in order");
                                started += 1;
                            }
                            Output::StopChannel { chan, .. } => {
                                prop_assert!(chan.0 < started);
                                prop_assert!(dead.insert(*chan), "{chan:?} stopped twice");
                            }
                            Output::ToChannel { chan, .. } => {
                                prop_assert!(!closed);
                                prop_assert!(chan.0 < started && !dead.contains(chan));
                            }
                            Output::Send(_) => prop_assert!(!closed, "a frame after close"),
                            Output::Close { code, .. } => {
                                prop_assert!(!closed && *code != 1000);
                                closed = true;
                            }
                        }
                        render(out);
                    }
                    closed |= h.core.is_closed();
                }
            }
        }
    }
}
