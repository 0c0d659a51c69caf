//! A simulated browser: phoenix.js 1.8.16's channel behaviour plus the media-event client's
//! roster, speaking real Phoenix V2 frames. It checks the server's promises as frames arrive
//! (the client-side safety oracles) and reports its view for the liveness check.
//!
//! It forgives nothing phoenix.js would not: a `phx_error` is rejoined with backoff, a refused
//! join is retried forever, a dropped socket reconnects and rejoins under a new join_ref, but a
//! server `phx_close` removes the channel for good, so a close the client did not ask for
//! strands the user and is a safety violation unless the server promised it (the reply to its
//! own `phx_leave`, the old channel of its duplicate join, a squatter `dropped` after the
//! connect grace). A refused join is checked against the refusals the server may give in the
//! world's configuration. Inbound frames whose join_ref is not the channel's current one are
//! dropped, as phoenix.js drops them, and one arriving where the server promised it cannot (a
//! reply echoing another join_ref, a push on an old channel after the new one joined) is a
//! violation. Like a slow tab with buffered pushes, the client also keeps sending on join_refs
//! it let go of for a while (S13/S14: the server must ignore those, never act on them for the
//! new channel), and it fires bursts of publish/unpublish/leave/rejoin while an offer is open.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use videoroom::engine::client_model::Negotiator;
use videoroom::phoenix::{decode, Frame};
use videoroom::rt::watch;
use videoroom::rt::{self, time};

mod checks;

use crate::oracle::Oracles;
use crate::swarm::{Action, Swarm};
use crate::tabs::{self, Tabs};
use crate::trace::Trace;
use crate::wire::{self, WireFrame};

/// The world's phases, as clients see them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Workload and faults.
    Chaos,
    /// No more actions: converge.
    Settle,
    /// Leave everything: the server must end with no process left.
    Teardown,
}

/// What the liveness check reads of a client.
#[derive(Clone, Debug, Default)]
pub struct View {
    pub room: String,
    pub joined: bool,
    pub peer_id: Option<String>,
    pub join_ref: Option<String>,
    /// Join refs whose connection ended (nothing could arrive on them any more).
    pub lost: BTreeSet<String>,
    /// The endpoints this client sees in its room: peer id → client index (from metadata).
    pub sees: BTreeMap<String, usize>,
    /// The metadata `seq` it last got for each endpoint it sees.
    pub meta: BTreeMap<String, u64>,
    pub connected: bool,
    /// The reason of the last refused join, if the last join was refused.
    pub refused: Option<String>,
    /// A squatter: joins, never connects.
    pub squatter: bool,
    /// When its last join was answered `ok` (a squatter holds its slot from then until the
    /// grace drops it).
    pub joined_at: Option<time::Instant>,
    /// The reason the server gave when it dropped this client's channel.
    pub dropped: Option<String>,
    /// The server closed this client's channel without an allowed reason: phoenix.js never
    /// rejoins, the user is stranded (already reported as a safety violation).
    pub stranded: bool,
    /// Negotiation the server still owes this client, if any (an open offer, a renegotiation
    /// asked for and not started).
    pub owed: Option<&'static str>,
    /// The tracks it receives, with the metadata it holds for each.
    pub track_meta: BTreeMap<String, Value>,
    /// The m-lines of its connection (its own and those it receives on).
    pub mlines: usize,
    /// The audio tracks it knows, and whether it was last told each is speaking.
    pub voices: BTreeMap<String, bool>,
    /// Its other tabs' channels not yet ended (settling, each leaves; every join and leave is
    /// answered, a refusal included).
    pub tabs: usize,
    /// A squatter whose late `connect` got in before the grace dropped it, and which then left
    /// for good (it holds no slot).
    pub gave_up: bool,
}

/// Each view behind its own `Arc`: the convergence check snapshots the map every settle step
/// (it awaits while it reads, so it cannot hold the lock), and a snapshot of `Arc`s costs a
/// count each, not a copy of every client's maps.
pub type Views = Arc<Mutex<BTreeMap<usize, Arc<View>>>>;

/// How long a join may wait for its reply on a connection whose heartbeats are answered.
const JOIN_ANSWER_LIMIT: Duration = Duration::from_secs(5);

/// A `candidate` media event as membrane-webrtc-js sends one (`onicecandidate`).
fn candidate_event(candidate: &str, line: u64) -> Value {
    json!({"type": "custom", "data": {"type": "candidate", "data": {
        "candidate": candidate, "sdpMLineIndex": line, "sdpMid": line.to_string(),
    }}})
}

/// How the server's error for the malformed candidate of `send_malformed` begins.
const MALFORMED_ERROR: &str = "media event `candidate` has invalid data";

/// How the server's error for endpoint metadata over its limit begins.
const OVERSIZED_METADATA_ERROR: &str = "endpoint metadata is ";

/// The channel's refusals of pushes it cannot take (`send_refused`), as the client reads them:
/// the wire's text, which a client shows or logs, so a wrong one is a wrong answer.
const NEEDS_STRING_DATA: &str = "mediaEvent needs a string `data`";
const UNKNOWN_EVENT: &str = "unknown event";

struct Chan {
    topic: String,
    join_ref: String,
    joined: bool,
    peer_id: Option<String>,
    /// peer id → client index.
    roster: BTreeMap<String, usize>,
    /// peer id → the metadata `seq` last heard (connected, endpointAdded, endpointUpdated).
    meta: BTreeMap<String, u64>,
    /// Highest metadata sequence seen per peer (FIFO oracle).
    seq: BTreeMap<String, u64>,
    /// Track id → the endpoint it was announced for, this media session.
    owners: BTreeMap<String, String>,
    /// Track id → the last metadata number heard for it (`trackUpdated` order).
    track_seq: BTreeMap<String, u64>,
    /// The tracks it receives now (announced, not removed) → their current metadata.
    track_meta: BTreeMap<String, Value>,
    /// Tracks as membrane-webrtc-js 0.5.3 knows them for `vadNotification` (from `tracksAdded`
    /// only: its `connected` handler registers none) → whether the last notification said
    /// speech (a track starts silent).
    voices: BTreeMap<String, bool>,
    neg: Negotiator,
    /// When the join went out (every join is answered while its connection lives).
    sent_at: time::Instant,
    /// Sent the media `disconnect`: no endpoint until a new `connected` (media events still in
    /// flight from before are ignored, as the JS client's torn-down session ignores them).
    hung_up: bool,
    /// When to send `connect` again after hanging up (and again, until `connected` comes: a
    /// `connect` over the peer's update budget is dropped by the server).
    reconnect_at: Option<time::Instant>,
    /// Malformed media events sent whose media `error` has not come yet (the server answers
    /// each, in order, whatever else it is doing), each as the whole error the product's parser
    /// words for it: the server echoes it whole up to its limit and cut past it.
    malformed_owed: std::collections::VecDeque<String>,
    /// Metadata updates over the server's limit, sent where the server must judge them, whose
    /// media `error` has not come yet.
    oversized_owed: u32,
    /// Events sent on this channel that the server takes from the peer's update budget
    /// (`connect`, endpoint and track metadata updates), counting from the join: at least what
    /// the server has taken for this channel's peer.
    broadcasts: u32,
    /// `connect` went out: updates sent after it (while live) reach the session, in order.
    connect_sent: bool,
}

impl Chan {
    /// Joined and an endpoint of the room's media session (or about to be).
    fn live(&self) -> bool {
        self.joined && !self.hung_up
    }

    /// The next budgeted event on this channel will be judged by the server, not dropped: the
    /// channel is live, has sent `connect`, and has sent fewer such events than the burst.
    fn within_burst(&self, burst: u32) -> bool {
        self.live() && self.connect_sent && self.broadcasts < burst
    }

    /// Tracks announced for `endpoint` (`connected`'s endpoints, `tracksAdded`): checked and
    /// told to the negotiation model; held with their metadata where `hold` (`tracksAdded`
    /// only: membrane-webrtc-js 0.5.3 registers none of `connected`'s, and a connection out
    /// of m-lines is never told of some of them again).
    fn announced(
        &mut self,
        oracles: &Oracles,
        who: &str,
        endpoint: &str,
        tracks: &Value,
        hold: bool,
    ) {
        checks::track_owners(oracles, who, &mut self.owners, endpoint, tracks);
        if hold {
            for (id, t) in tracks.as_object().into_iter().flatten() {
                self.track_meta.insert(id.clone(), t["metadata"].clone());
            }
        }
        self.neg.on_tracks_announced(tracks);
    }
}

pub struct Client {
    pub idx: usize,
    /// `c{idx}`, as oracles and the trace name this client (made once: a media event names it
    /// several times).
    who: String,
    server: SocketAddr,
    rooms: Vec<String>,
    swarm: Swarm,
    trace: Trace,
    oracles: Oracles,
    views: Views,
    phase: watch::Receiver<Phase>,
    next_ref: u64,
    room: String,
    chan: Option<Chan>,
    /// Refs of requests sent on this connection, and how many replies each got.
    replies: BTreeMap<String, u32>,
    /// Join refs lost with their connection.
    lost: BTreeSet<String>,
    /// Join refs used on the current connection.
    on_conn: BTreeSet<String>,
    /// Join refs the client sent `phx_leave` for (their `phx_close` is allowed).
    left: BTreeSet<String>,
    /// Join refs replaced by a duplicate join (their `phx_close` is allowed, S15).
    replaced: BTreeSet<String>,
    /// Join refs the server sent `dropped` on (their `phx_close` is allowed).
    dropped_on: BTreeSet<String>,
    /// Join refs the client let go of, newest last, with the topic: the stale sender's stock.
    old: Vec<(String, String)>,
    /// Refs of frames sent on an old join_ref, with that join_ref and whether it was a leave.
    stale_refs: BTreeMap<String, (String, bool)>,
    /// Refs of pushes the live channel must refuse, with the reason it must give.
    refused_refs: BTreeMap<String, &'static str>,
    /// Join_ref each request was sent on.
    sent_on: BTreeMap<String, Option<String>>,
    stranded: bool,
    /// A burst of negotiation actions is due (right after an offer went out).
    burst_at: Option<time::Instant>,
    /// Join refs that got their phx_close / phx_error (nothing may follow on them).
    closed: BTreeSet<String>,
    errors: BTreeMap<String, u32>,
    my_seq: u64,
    rejoin_at: Option<time::Instant>,
    pending_leave: Option<String>,
    refused: Option<String>,
    /// Joins but never sends `connect` (see `Swarm::squatters`).
    squatter: bool,
    /// A squatter leaves once, before its grace ends, and joins again.
    squat_left: bool,
    /// The first squatter sends `connect` once, timed to reach the room about when its grace
    /// ends: some get in just in time, some race the drop (a room must never act on a media
    /// event of a peer it already dropped, nor let one in).
    late_connect_at: Option<time::Instant>,
    /// It sent that `connect`.
    late_connected: bool,
    /// It got in with it, and left for good.
    gave_up: bool,
    /// When the current channel's join was answered ok.
    joined_at: Option<time::Instant>,
    dropped: Option<String>,
    /// Joins on this connection not answered yet (the socket holds frames for them).
    joins_pending: BTreeSet<String>,
    /// Frames sent while some join was pending, since none last was, and the most ever: at
    /// least as many as the socket can have held at once.
    held: usize,
    held_peak: usize,
    /// The same in bytes (the socket also bounds what it holds by the frame size limit).
    held_bytes: usize,
    held_bytes_peak: usize,
    /// The message ref counter when this connection sent a frame over the server's size
    /// limit: the server must close the connection (1009) before answering anything later.
    oversized_at: Option<u64>,
    /// Graceful restarts of its server begun before this connection was opened: a 1012 close
    /// is owed only by a later one.
    restarts_before: u64,
    /// The ref after which a binary frame went out: the connection must close with 1003.
    binary_at: Option<u64>,
    /// The last action froze the client (see `frozen`).
    freeze: bool,
    /// Extra channels on this socket (other tabs).
    tabs: Tabs,
    /// Heartbeats in flight on this connection: ref → when it went out.
    heartbeats: BTreeMap<String, time::Instant>,
    /// When the newest answered heartbeat went out: the server saw a frame no earlier.
    alive_at: Option<time::Instant>,
}

enum Step {
    Continue,
    Reconnect,
}

impl Client {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        idx: usize,
        server: SocketAddr,
        rooms: Vec<String>,
        swarm: Swarm,
        trace: Trace,
        oracles: Oracles,
        views: Views,
        phase: watch::Receiver<Phase>,
    ) -> Self {
        let room = rooms[rt::rand::below(rooms.len() as u64) as usize].clone();
        let squatter = idx < swarm.squatters;
        Client {
            idx,
            who: format!("c{idx}"),
            server,
            rooms,
            swarm,
            trace,
            oracles,
            views,
            phase,
            next_ref: 0,
            room,
            chan: None,
            replies: BTreeMap::new(),
            lost: BTreeSet::new(),
            on_conn: BTreeSet::new(),
            left: BTreeSet::new(),
            replaced: BTreeSet::new(),
            dropped_on: BTreeSet::new(),
            old: Vec::new(),
            stale_refs: BTreeMap::new(),
            refused_refs: BTreeMap::new(),
            sent_on: BTreeMap::new(),
            stranded: false,
            burst_at: None,
            closed: BTreeSet::new(),
            errors: BTreeMap::new(),
            my_seq: 0,
            rejoin_at: None,
            pending_leave: None,
            refused: None,
            squatter,
            squat_left: false,
            late_connect_at: None,
            late_connected: false,
            gave_up: false,
            joined_at: None,
            dropped: None,
            joins_pending: BTreeSet::new(),
            held: 0,
            held_peak: 0,
            held_bytes: 0,
            held_bytes_peak: 0,
            oversized_at: None,
            restarts_before: 0,
            binary_at: None,
            freeze: false,
            tabs: Tabs::default(),
            heartbeats: BTreeMap::new(),
            alive_at: None,
        }
    }

    /// One trace line of this client; pass `format_args!(..)` on per-frame paths (rendered
    /// only when the trace records, hashed otherwise).
    fn log(&self, s: impl std::fmt::Display) {
        self.trace.log(format_args!("c{} {s}", self.idx));
    }

    /// Brings this client's view up to date in place: it is published after every media
    /// event, and cloning its maps each time (most of them unchanged) was a fortieth of a
    /// campaign. What a reader sees is what a fresh `View` built from the client would be.
    fn publish_view(&self, connected: bool) {
        let chan = self.chan.as_ref();
        let owed = chan.filter(|c| c.joined).and_then(|c| {
            if !c.malformed_owed.is_empty() {
                Some("a media error for its malformed event")
            } else if c.oversized_owed > 0 {
                Some("a media error for its metadata over the limit")
            } else {
                c.neg.owed()
            }
        });
        let mut views = self.views.lock().unwrap();
        // Unshared but for a snapshot still being read: then a copy, as a fresh view would be.
        // Destructured whole, so a field added to `View` cannot be left out of its refresh.
        let View {
            room,
            joined,
            peer_id,
            join_ref,
            lost,
            sees,
            meta,
            connected: is_connected,
            refused,
            squatter,
            joined_at,
            dropped,
            stranded,
            owed: owes,
            track_meta,
            mlines,
            voices,
            tabs,
            gave_up,
        } = Arc::make_mut(views.entry(self.idx).or_default());
        sync(room, &self.room);
        *joined = chan.is_some_and(|c| c.joined);
        sync_opt(peer_id, chan.and_then(|c| c.peer_id.as_ref()));
        sync_opt(join_ref, chan.map(|c| &c.join_ref));
        sync(lost, &self.lost);
        sync_or_clear(sees, chan.map(|c| &c.roster));
        sync_or_clear(meta, chan.map(|c| &c.meta));
        *is_connected = connected;
        sync_opt(refused, self.refused.as_ref());
        *squatter = self.squatter;
        *joined_at = self.joined_at;
        sync_opt(dropped, self.dropped.as_ref());
        *stranded = self.stranded;
        *owes = owed;
        sync_or_clear(track_meta, chan.map(|c| &c.track_meta));
        *mlines = chan.map_or(0, |c| c.neg.mline_count());
        sync_or_clear(voices, chan.map(|c| &c.voices));
        *tabs = self.tabs.len();
        *gave_up = self.gave_up;
    }

    fn fresh_ref(&mut self) -> String {
        self.next_ref += 1;
        self.next_ref.to_string()
    }

    /// Runs until the teardown phase has left everything.
    pub async fn run(mut self) {
        // A burst starts everyone within a millisecond; otherwise arrivals spread out.
        let spread = if self.swarm.burst { 1_000 } else { 20_000 };
        time::sleep(Duration::from_micros(rt::rand::below(spread))).await;
        if self.swarm.squatters > 0 && !self.squatter {
            // Squatters take their slots first.
            time::sleep(Duration::from_millis(200)).await;
        }
        loop {
            if *self.phase.borrow() == Phase::Teardown {
                self.publish_view(false);
                self.log("teardown: gone");
                return;
            }
            // Read before connecting: a restart that begins while the connection is being
            // accepted may close it.
            let restarts_before = self.oracles.graceful_restarts(self.server.ip());
            let stream = match madsim::net::TcpStream::connect(self.server).await {
                Ok(s) => s,
                Err(_) => {
                    self.publish_view(false);
                    time::sleep(Duration::from_millis(50 + rt::rand::below(150))).await;
                    continue;
                }
            };
            self.log("socket open");
            self.restarts_before = restarts_before;
            let (mut reader, mut writer) = wire::split(stream);
            // A new connection forgets every channel, as phoenix.js does.
            self.lose_channel();
            self.replies.clear();
            self.sent_on.clear();
            self.stale_refs.clear();
            self.refused_refs.clear();
            self.heartbeats.clear();
            self.alive_at = None;
            self.joins_pending.clear();
            (self.held, self.held_peak) = (0, 0);
            (self.held_bytes, self.held_bytes_peak) = (0, 0);
            self.oversized_at = None;
            self.binary_at = None;
            self.tabs.reset();
            self.pending_leave = None;
            self.burst_at = None;
            // A channel the server closed stays closed (phoenix.js removed it from the socket);
            // one the socket lost is rejoined on the new socket.
            self.rejoin_at =
                (self.dropped.is_none() && !self.stranded && !self.gave_up).then(time::now);
            self.publish_view(true);
            let step = self.connected(&mut reader, &mut writer).await;
            self.lose_channel();
            self.publish_view(false);
            match step {
                Step::Reconnect => {
                    self.log("socket closed");
                    time::sleep(Duration::from_millis(20 + rt::rand::below(200))).await;
                }
                Step::Continue => return,
            }
        }
    }

    /// The connection ended, and its channels with it: a phx_error still owed for any of them
    /// (even one the client had left, whose phx_error was already on its way) can never arrive.
    fn lose_channel(&mut self) {
        if let Some(c) = self.chan.take() {
            self.let_go(c.join_ref, c.topic);
        }
        self.lost.append(&mut self.on_conn);
    }

    /// Remembers a join_ref the client no longer uses, for the stale sender.
    fn let_go(&mut self, join_ref: String, topic: String) {
        self.old.push((join_ref, topic));
        if self.old.len() > 4 {
            self.old.remove(0);
        }
    }

    /// A push of `event` on `topic` under `join_ref`, with its own `msg_ref`.
    async fn push(
        &mut self,
        w: &mut wire::Writer,
        join_ref: String,
        msg_ref: String,
        topic: String,
        event: &str,
        payload: Value,
    ) -> bool {
        let f = Frame {
            join_ref: Some(join_ref),
            msg_ref: Some(msg_ref),
            topic,
            event: event.into(),
            payload,
        };
        self.send(w, f).await
    }

    async fn send(&mut self, w: &mut wire::Writer, f: Frame) -> bool {
        let text = f.encode();
        self.send_encoded(w, &f.topic, f.join_ref, f.msg_ref, text)
            .await
    }

    /// Sends a frame already encoded as `text`, with the bookkeeping of [`Self::send`].
    async fn send_encoded(
        &mut self,
        w: &mut wire::Writer,
        topic: &str,
        join_ref: Option<String>,
        msg_ref: Option<String>,
        text: String,
    ) -> bool {
        if topic != "phoenix" && !self.joins_pending.is_empty() {
            self.held += 1;
            self.held_peak = self.held_peak.max(self.held);
            self.held_bytes += text.len();
            self.held_bytes_peak = self.held_bytes_peak.max(self.held_bytes);
        }
        if let Some(r) = msg_ref {
            self.replies.insert(r.clone(), 0);
            self.sent_on.insert(r, join_ref);
        }
        w.send(&WireFrame::Text(text)).await
    }

    async fn join(&mut self, w: &mut wire::Writer) -> bool {
        let r = self.fresh_ref();
        let topic = format!("room:{}", cased(&self.room, self.idx));
        if let Some(old) = self.chan.take() {
            // A join over a live channel is the duplicate-join path: the server closes the old.
            self.replaced.insert(old.join_ref.clone());
            self.let_go(old.join_ref, old.topic);
        }
        self.on_conn.insert(r.clone());
        self.chan = Some(Chan {
            topic: topic.clone(),
            join_ref: r.clone(),
            joined: false,
            peer_id: None,
            roster: BTreeMap::new(),
            owners: BTreeMap::new(),
            track_seq: BTreeMap::new(),
            track_meta: BTreeMap::new(),
            voices: BTreeMap::new(),
            meta: BTreeMap::new(),
            seq: BTreeMap::new(),
            neg: Negotiator::default(),
            sent_at: time::now(),
            hung_up: false,
            reconnect_at: None,
            malformed_owed: Default::default(),
            oversized_owed: 0,
            broadcasts: 0,
            connect_sent: false,
        });
        self.log(format!("join {topic} ref {r}"));
        // At once, so a room crash injected from now on expects no phx_error for the old one.
        self.publish_view(true);
        let payload = self.join_payload(&topic);
        if !self
            .push(w, r.clone(), r.clone(), topic, "phx_join", payload)
            .await
        {
            return false;
        }
        self.joins_pending.insert(r);
        if self.weight(Action::Pipeline) > 0 && rt::rand::chance(0.5) {
            if rt::rand::chance(0.05) {
                // One frame as large as a frame may be: what the socket holds for the join is
                // then exactly its byte bound, which it must hold, not close for.
                self.log("pipelines a frame of exactly the size limit behind its join");
                self.oracles
                    .reached("client: pipelined a frame of exactly the held-byte bound");
                return self.send_update_of_frame_size(w).await;
            }
            // Now and then more than the socket holds for a pending join: the server must
            // close (1008) rather than hold them all, unless the join was answered first.
            let over = rt::rand::chance(0.1);
            let n = if over {
                videoroom::phoenix::MAX_HELD_FRAMES as u64 + 1 + rt::rand::below(4)
            } else {
                1 + rt::rand::below(4)
            };
            self.log(format!("pipelines {n} updates behind its join"));
            self.oracles
                .reached("client: pipelined frames behind a join");
            return self.send_updates(w, n).await;
        }
        true
    }

    /// `n` metadata updates, each with the client's next `seq` (its receivers check their order).
    async fn send_updates(&mut self, w: &mut wire::Writer, n: u64) -> bool {
        for _ in 0..n {
            self.my_seq += 1;
            let seq = self.my_seq;
            // Written as text: floods send thousands of these, and building a `Value` to
            // serialise it cost a sixth of a campaign. The bytes are serde_json's (sorted keys).
            if !self.send_update(w, seq).await {
                return false;
            }
        }
        true
    }

    /// A metadata update whose frame is exactly the server's frame size limit (its metadata far
    /// over the metadata limit: sent before `connect`, it is dropped unread).
    async fn send_update_of_frame_size(&mut self, w: &mut wire::Writer) -> bool {
        let max = videoroom::phoenix::SocketConfig::default().max_frame_bytes;
        self.my_seq += 1;
        let (idx, seq) = (self.idx, self.my_seq);
        self.send_media_frame(w, |refs| {
            // Past the unpadded metadata, every byte of padding is one byte of frame.
            let base = 256;
            let short = update_frame_text(refs, idx, seq, base).len();
            let text = update_frame_text(refs, idx, seq, base + max - short);
            debug_assert_eq!(text.len(), max);
            text
        })
        .await
    }

    /// The metadata update carrying `seq` (the current one again is an unchanged update).
    async fn send_update(&mut self, w: &mut wire::Writer, seq: u64) -> bool {
        let (idx, bytes) = (self.idx, self.swarm.metadata_bytes);
        if self.take_budget() {
            // Within the burst the server grants every peer: however the clock runs, the room
            // cannot drop it for the budget, so every peer in the room must hear it.
            self.oracles.sent_in_budget(idx, seq);
        }
        self.send_media_frame(w, |refs| update_frame_text(refs, idx, seq, bytes))
            .await
    }

    /// The media `connect`, carrying the client's current metadata.
    fn connect_event(&self) -> Value {
        json!({"type":"connect","data":{"metadata": self.metadata(self.my_seq)}})
    }

    /// This client's metadata at `seq` (see [`metadata_text`]).
    fn metadata(&self, seq: u64) -> Value {
        serde_json::from_str(&metadata_text(self.idx, seq, self.swarm.metadata_bytes))
            .expect("metadata_text writes JSON")
    }

    /// A join's payload: a token for `topic`'s room where the world requires one.
    fn join_payload(&self, topic: &str) -> Value {
        tabs::join_payload(self.swarm.join_secret.as_deref(), topic)
    }

    async fn media(&mut self, w: &mut wire::Writer, event: Value) -> bool {
        let budgeted = match event["type"].as_str() {
            Some("connect") => {
                if let Some(c) = self.chan.as_mut() {
                    c.connect_sent = true;
                }
                true
            }
            // Track metadata updates go out bare (as the negotiator writes them) or wrapped in
            // `custom`: either way the server takes them from the budget.
            Some("updateEndpointMetadata" | "updateTrackMetadata") => true,
            Some("custom") => event["data"]["type"] == "updateTrackMetadata",
            _ => false,
        };
        if budgeted {
            self.take_budget();
        }
        self.media_text(w, event.to_string()).await
    }

    /// Counts one event the server takes from the peer's update budget on the current
    /// channel; true if the channel is live, has sent `connect`, and has sent no more such
    /// events than the burst (a connected peer's update sent then is never dropped).
    fn take_budget(&mut self) -> bool {
        let burst = self.swarm.update_burst;
        let Some(c) = self.chan.as_mut() else {
            return false;
        };
        let within = c.within_burst(burst);
        c.broadcasts += 1;
        within
    }

    /// A media event already serialised.
    async fn media_text(&mut self, w: &mut wire::Writer, event: String) -> bool {
        self.send_media_frame(w, |refs| media_frame_text(refs, &event))
            .await
    }

    /// A `mediaEvent` push on the current channel, its frame written by `text` from
    /// `[join_ref, msg_ref, topic]`; nothing without a channel.
    async fn send_media_frame(
        &mut self,
        w: &mut wire::Writer,
        text: impl FnOnce([&str; 3]) -> String,
    ) -> bool {
        let Some(c) = &self.chan else { return true };
        let (join_ref, topic) = (c.join_ref.clone(), c.topic.clone());
        // phoenix.js gives every push a ref, even those the server never answers.
        let r = self.fresh_ref();
        let text = text([&join_ref, &r, &topic]);
        self.send_encoded(w, &topic, Some(join_ref), Some(r), text)
            .await
    }

    async fn connected(&mut self, reader: &mut wire::Reader, w: &mut wire::Writer) -> Step {
        let mut heartbeat = time::now() + Duration::from_millis(500);
        let mut pending_heartbeat: Option<String> = None;
        let mut action = self.swarm.next_action(time::now());
        let mut timer = time::Timer::new();
        loop {
            let phase = *self.phase.borrow();
            if phase == Phase::Teardown {
                return Step::Continue;
            }
            if phase != Phase::Chaos {
                self.tabs.settle();
            }
            let next_rejoin = self.rejoin_at;
            let deadline = [
                Some(heartbeat),
                next_rejoin,
                (phase == Phase::Chaos).then_some(action),
                self.burst_at.filter(|_| phase == Phase::Chaos),
                self.chan.as_ref().and_then(|c| c.reconnect_at),
                self.tabs.due(),
                self.late_connect_at,
            ]
            .into_iter()
            .flatten()
            .min()
            .expect("heartbeat is always set");
            tokio::select! {
                biased;
                _ = self.phase.changed() => {}
                f = reader.next() => match f {
                    None => return Step::Reconnect,
                    Some(WireFrame::Close(code)) => {
                        self.oracles.check(code != 1000, || format!("c{}: server closed with 1000", self.idx));
                        if code == videoroom::phoenix::CLOSE_GOING_AWAY {
                            self.check_idle_close();
                        }
                        if code == videoroom::conn::CLOSE_SERVICE_RESTART {
                            self.check_restart_close();
                        }
                        if code == videoroom::phoenix::CLOSE_POLICY_VIOLATION {
                            self.check_held_close();
                        }
                        if code == videoroom::phoenix::CLOSE_UNSUPPORTED_DATA {
                            self.oracles.reached("client: closed for a binary frame");
                            self.oracles.check(self.binary_at.is_some(), || {
                                format!("c{}: closed 1003 without having sent a binary frame", self.idx)
                            });
                        }
                        if code == videoroom::phoenix::CLOSE_TOO_BIG {
                            self.oracles.reached("client: closed for an oversized frame");
                            self.oracles.check(self.oversized_at.is_some(), || {
                                format!("c{}: closed 1009 without having sent an oversized frame", self.idx)
                            });
                        }
                        return Step::Reconnect;
                    }
                    Some(WireFrame::Text(t)) => {
                        if !self.on_frame(w, &t).await {
                            return Step::Reconnect;
                        }
                    }
                    Some(WireFrame::Oversized(n)) => {
                        self.oracles.check(false, || format!("c{}: the server sent a frame of {n} bytes, over any limit", self.idx));
                        return Step::Reconnect;
                    }
                    Some(WireFrame::Binary(_)) => {
                        self.oracles.check(false, || format!("c{}: the server sent a binary frame", self.idx));
                        return Step::Reconnect;
                    }
                },
                _ = timer.until(Some(deadline)) => {
                    let now = time::now();
                    if now >= heartbeat {
                        heartbeat = now + Duration::from_millis(500);
                        // phoenix.js: a heartbeat still unanswered when the next is due means
                        // the connection is dead; close it and reconnect.
                        if let Some(r) = &pending_heartbeat {
                            if self.replies.get(r) == Some(&0) {
                                self.log("heartbeat timeout");
                                return Step::Reconnect;
                            }
                        }
                        // The connection is alive (its last heartbeat was answered), so the
                        // socket answers a join on it: ok, error, or "join crashed" if the
                        // channel died first (Phoenix S3-S5). phoenix.js would time out after
                        // 10 s and rejoin, hiding a join the server forgot.
                        if let Some(c) = self.chan.as_ref().filter(|c| !c.joined) {
                            let waited = now.saturating_duration_since(c.sent_at);
                            let idx = self.idx;
                            let jr = c.join_ref.clone();
                            self.oracles.check(waited < JOIN_ANSWER_LIMIT, || {
                                format!("c{idx}: join ref {jr} unanswered for {JOIN_ANSWER_LIMIT:?} on a live connection")
                            });
                        }
                        let r = self.fresh_ref();
                        pending_heartbeat = Some(r.clone());
                        self.heartbeats.insert(r.clone(), now);
                        let f = Frame { join_ref: None, msg_ref: Some(r), topic: "phoenix".into(), event: "heartbeat".into(), payload: json!({}) };
                        if !self.send(w, f).await { return Step::Reconnect; }
                    }
                    if self.rejoin_at.is_some_and(|t| now >= t) {
                        self.rejoin_at = None;
                        if !self.join(w).await { return Step::Reconnect; }
                    }
                    if self.late_connect_at.is_some_and(|t| now >= t) {
                        self.late_connect_at = None;
                        if !self.late_connect(w).await { return Step::Reconnect; }
                    }
                    for f in self.tabs.leaves_due(&mut self.next_ref) {
                        if !self.send(w, f).await { return Step::Reconnect; }
                    }
                    if self.chan.as_ref().and_then(|c| c.reconnect_at).is_some_and(|t| now >= t)
                        && !self.reconnect(w).await
                    {
                        return Step::Reconnect;
                    }
                    if phase == Phase::Chaos && now >= action {
                        action = self.swarm.next_action(now);
                        if !self.act(w).await { return Step::Reconnect; }
                        if std::mem::take(&mut self.freeze) {
                            return self.frozen(reader).await;
                        }
                    }
                    if phase == Phase::Chaos && self.burst_at.is_some_and(|t| now >= t) {
                        self.burst_at = None;
                        if !self.burst(w).await { return Step::Reconnect; }
                    }
                }
            }
        }
    }

    /// One workload action, drawn from the seed's mix.
    async fn act(&mut self, w: &mut wire::Writer) -> bool {
        let joined = self.chan.as_ref().is_some_and(Chan::live);
        if self.squatter && joined {
            // Sometimes it leaves before its grace ends and comes back while the others still
            // wait: the room must forget the wait of a peer that left, not wake for it later.
            if !self.squat_left && rt::rand::chance(0.5) {
                self.squat_left = true;
                self.oracles
                    .reached("client: squatter left before its grace");
                return self.leave(w).await;
            }
            // Busy but never in the session: events before `connect` must not keep its slot.
            return self.send_updates(w, 1).await;
        }
        match self.swarm.pick_action() {
            "media" if joined && self.my_seq > 0 && rt::rand::chance(0.1) => {
                // A person saving an unchanged name: the room must not pass it on (0.5.3 wipes
                // an endpoint's tracks on every `endpointUpdated`).
                self.log("sends its metadata again, unchanged");
                self.oracles
                    .reached("client: unchanged metadata sent again");
                self.send_update(w, self.my_seq).await
            }
            "media" if joined => self.send_updates(w, 1).await,
            "leave" if joined && self.pending_leave.is_none() => self.leave(w).await,
            "duplicate" if self.chan.is_some() => {
                self.log("duplicate join");
                self.join(w).await
            }
            "publish" if joined => {
                let Some(c) = self.chan.as_mut() else {
                    return true;
                };
                let Some(peer) = c.peer_id.clone() else {
                    return true;
                };
                // Where connections are not bounded below the SDP limit: now and then a person
                // shares more (screens, cameras), a few tracks at once, past the server's limit
                // of published tracks at times.
                let unbounded = self.swarm.recv_lines
                    + videoroom::engine::NegotiationConfig::default().max_published_tracks
                    >= videoroom::engine::sdp::MAX_MLINES;
                if c.neg.is_publishing()
                    && unbounded
                    && c.neg.own_lines() < 24
                    && rt::rand::chance(0.2)
                {
                    let n = 2 + rt::rand::below(6) as usize;
                    let ev = c.neg.publish_more(&peer, n);
                    self.log(format!("publishes {n} more tracks"));
                    return self.media(w, ev).await;
                }
                if c.neg.is_publishing() {
                    // Already publishing: toggles a track's mute state (its metadata) instead.
                    let Some(ev) = c.neg.track_update() else {
                        return true;
                    };
                    self.log("updates a track's metadata");
                    return self.media(w, ev).await;
                }
                let ev = c.neg.publish(&peer);
                self.log("publishes audio+video");
                self.media(w, ev).await
            }
            "unpublish" if joined => {
                let Some(c) = self.chan.as_mut() else {
                    return true;
                };
                if !c.neg.is_publishing() {
                    return true;
                }
                let ev = c.neg.unpublish();
                self.log("unpublishes");
                self.media(w, ev).await
            }
            "flood" if joined => {
                // A misbehaving client: a burst of metadata updates, far faster than a person.
                let n = 20 + rt::rand::below(300);
                self.log(format!("floods {n} updates"));
                self.send_updates(w, n).await
            }
            "garbage" if rt::rand::chance(0.1) => {
                let max = videoroom::phoenix::SocketConfig::default().max_frame_bytes;
                if rt::rand::chance(0.3) {
                    // Exactly the limit, which the server must read (and then refuse as the
                    // undecodable frame it is, 1011), not close as too big.
                    self.log("sends a frame of exactly the size limit");
                    w.send(&WireFrame::Oversized(max as u32)).await;
                    return true;
                }
                // A frame one byte over the limit (a paste gone wrong, a hostile client).
                self.log("sends a frame over the size limit");
                self.oversized_at = Some(self.next_ref);
                w.send(&WireFrame::Oversized(max as u32 + 1)).await;
                true
            }
            "garbage" if self.chan.as_ref().is_some_and(Chan::live) && rt::rand::chance(0.3) => {
                if rt::rand::chance(0.3) {
                    return self.send_refused(w).await;
                }
                if rt::rand::chance(0.3) {
                    return self.send_oversized_metadata(w).await;
                }
                self.send_malformed(w).await
            }
            "garbage" if rt::rand::chance(0.1) => {
                // A binary message (phoenix.js sends one only for ArrayBuffer payloads).
                self.log("sends a binary frame");
                self.binary_at = Some(self.next_ref);
                // Now and then exactly the size limit: still a binary frame (1003), not too big.
                let len = if rt::rand::chance(0.2) {
                    videoroom::phoenix::SocketConfig::default().max_frame_bytes
                } else {
                    1 + rt::rand::below(64) as usize
                };
                w.send(&WireFrame::Binary(vec![0x42; len])).await;
                true
            }
            "garbage" => {
                self.log("sends garbage");
                w.send(&WireFrame::Text("{not a phoenix frame".into()))
                    .await;
                true
            }
            "disconnect" if !self.swarm.slow_links && rt::rand::chance(0.3) => {
                self.log("freezes (a suspended tab: its socket stays open, silent)");
                self.freeze = true;
                true
            }
            "disconnect" => {
                self.log("drops its socket");
                false
            }
            "stale" => self.send_stale(w).await,
            "burst" if joined => self.burst(w).await,
            "hangup" if joined && !self.squatter => self.hang_up(w).await,
            "tabs" if self.tabs.is_empty() => {
                let n = 1 + rt::rand::below(5) as usize;
                let main = self.chan.as_ref().map(|c| c.join_ref.clone());
                self.log(format!("opens {n} more channels on its socket"));
                let secret = self.swarm.join_secret.clone();
                for f in self.tabs.open(
                    self.idx,
                    n,
                    main.as_deref(),
                    secret.as_deref(),
                    &mut self.next_ref,
                ) {
                    if !self.send(w, f).await {
                        return false;
                    }
                }
                true
            }
            "trickle" => self.trickle(w).await,
            "trespass" => {
                let main = self.chan.as_ref().map(|c| c.join_ref.clone());
                let secret = self.swarm.join_secret.clone();
                let (f, why) = self.tabs.trespass(
                    self.idx,
                    main.as_deref(),
                    secret.as_deref(),
                    &mut self.next_ref,
                );
                self.log(format!("trespasses on {} ({why})", f.topic));
                self.send(w, f).await
            }
            _ => true,
        }
    }

    /// A media event the server cannot parse, whose error quotes a value: the server owes one
    /// media `error`, whole up to its limit and cut past it (the `error` arm of
    /// `on_media_event` checks it). The value is multi-byte text after 0-3 ASCII bytes, so the
    /// cut lands inside a character as often as not; one in four errors is exactly the limit
    /// long and one in four a byte over it, the edges of the cut.
    async fn send_malformed(&mut self, w: &mut wire::Writer) -> bool {
        let lead = "x".repeat(rt::rand::below(4) as usize);
        let chars = 100 + rt::rand::below(200) as usize;
        let max = videoroom::engine::MAX_ERROR_MESSAGE_BYTES;
        let value = match chars % 4 {
            0 => error_of_length(&lead, max),
            1 => error_of_length(&lead, max + 1),
            _ => format!("{lead}{}", "é".repeat(chars)),
        };
        let ev = malformed_event(&value);
        let whole = malformed_error_text(&ev);
        if let Some(c) = self.chan.as_mut() {
            c.malformed_owed.push_back(whole);
        }
        self.log("sends a malformed media event");
        self.media(w, ev).await
    }

    /// An endpoint metadata update one byte over the server's limit (a page that put a picture
    /// in its metadata). Sent only where the server must judge it, by a connected peer within
    /// its update burst: an `error` naming the limit is owed, and no peer may ever hear it.
    async fn send_oversized_metadata(&mut self, w: &mut wire::Writer) -> bool {
        let burst = self.swarm.update_burst;
        let Some(c) = self
            .chan
            .as_mut()
            .filter(|c| c.within_burst(burst) && c.peer_id.is_some())
        else {
            return true;
        };
        c.oversized_owed += 1;
        let limit = videoroom::engine::SessionConfig::default().max_metadata_bytes;
        let head = json!({"client": self.idx, "over": ""}).to_string().len();
        let metadata = json!({"client": self.idx, "over": "o".repeat(limit + 1 - head)});
        debug_assert_eq!(metadata.to_string().len(), limit + 1);
        self.log("sends metadata one byte over the limit");
        let ev = json!({"type": "updateEndpointMetadata", "data": {"metadata": metadata}});
        self.media(w, ev).await
    }

    /// A push on the live channel that the channel must refuse with an error reply and keep
    /// the channel: a `mediaEvent` without a string `data` (an object, or none), or an event
    /// the channel does not know. A client of its own (not phoenix.js) or a buggy page.
    async fn send_refused(&mut self, w: &mut wire::Writer) -> bool {
        let Some(c) = self.chan.as_ref() else {
            return true;
        };
        let (jr, topic) = (c.join_ref.clone(), c.topic.clone());
        let (event, payload, reason) = match rt::rand::below(3) {
            0 => (
                "mediaEvent",
                json!({"data": {"type": "connect"}}),
                NEEDS_STRING_DATA,
            ),
            1 => ("mediaEvent", json!({}), NEEDS_STRING_DATA),
            _ => ("shout", json!({"data": "{}"}), UNKNOWN_EVENT),
        };
        let r = self.fresh_ref();
        self.log(format!(
            "sends a push the channel must refuse: {event} {payload}"
        ));
        self.refused_refs.insert(r.clone(), reason);
        self.push(w, jr, r, topic, event, payload).await
    }

    /// The client's own ICE candidates, as a browser trickles them after its offer: one to
    /// three host candidates, sometimes followed by the empty end-of-candidates. Sent whatever
    /// the media session's state (before `connect`, after a media `disconnect`): the server
    /// owes no answer, and passes to its plane only the non-empty candidates of a peer in
    /// session (the fake plane's never-event `PlaneGotUnwantedCandidate`).
    async fn trickle(&mut self, w: &mut wire::Writer) -> bool {
        let n = 1 + rt::rand::below(3);
        self.log(format!("trickles {n} candidates"));
        for i in 0..n {
            let candidate = format!(
                "candidate:{i} 1 udp 2122260223 10.0.{}.{} 9 typ host",
                self.idx / 250,
                1 + self.idx % 250
            );
            let ev = candidate_event(&candidate, i);
            if !self.media(w, ev).await {
                return false;
            }
        }
        if rt::rand::chance(0.5) {
            self.oracles.reached("client: end-of-candidates sent");
            return self.media(w, candidate_event("", 0)).await;
        }
        true
    }

    /// A frozen tab: sends nothing and handles nothing until the server closes the silent
    /// socket for its idle timeout (or drops it as a slow consumer, or goes away). Its user sees
    /// nothing meanwhile, so the view says it is not connected: a server that never closes it
    /// leaves it frozen, and the settle phase fails on it.
    async fn frozen(&mut self, reader: &mut wire::Reader) -> Step {
        self.publish_view(false);
        loop {
            match reader.next().await {
                None => return Step::Reconnect,
                Some(WireFrame::Close(code)) => {
                    if code == videoroom::phoenix::CLOSE_GOING_AWAY {
                        self.oracles.reached("client: frozen socket closed as idle");
                        self.check_idle_close();
                    }
                    if code == videoroom::conn::CLOSE_SERVICE_RESTART {
                        self.check_restart_close();
                    }
                    return Step::Reconnect;
                }
                Some(_) => {}
            }
        }
    }

    /// The media-level `disconnect` on a live channel: the others must see this endpoint
    /// removed, and after a pause it connects again on the same channel (a new `connected`).
    async fn hang_up(&mut self, w: &mut wire::Writer) -> bool {
        let Some(c) = self.chan.as_mut() else {
            return true;
        };
        if c.peer_id.is_none() {
            return true;
        }
        c.hung_up = true;
        c.peer_id = None;
        self.oracles.forget_heard(self.idx, &c.join_ref);
        c.roster.clear();
        c.meta.clear();
        c.seq.clear();
        c.track_meta.clear();
        c.voices.clear();
        c.neg = c.neg.restart();
        // Errors still in flight are for the session it leaves, and ignored as it ignores them.
        c.malformed_owed.clear();
        c.oversized_owed = 0;
        c.reconnect_at = Some(time::now() + Duration::from_millis(20 + rt::rand::below(400)));
        self.log("hangs up (media disconnect)");
        self.oracles
            .reached("client: media disconnect on a live channel");
        self.publish_view(true);
        self.media(w, json!({"type": "disconnect"})).await
    }

    /// `connect` again after hanging up; repeated each second until `connected` arrives.
    async fn reconnect(&mut self, w: &mut wire::Writer) -> bool {
        let Some(c) = self.chan.as_mut() else {
            return true;
        };
        c.reconnect_at = Some(time::now() + Duration::from_secs(1));
        self.log("connects again");
        let ev = self.connect_event();
        self.media(w, ev).await
    }

    /// The first squatter's one `connect`, near its grace's end (see `late_connect_at`).
    async fn late_connect(&mut self, w: &mut wire::Writer) -> bool {
        if !self.chan.as_ref().is_some_and(|c| c.live() && c.joined) || self.dropped.is_some() {
            return true;
        }
        self.late_connected = true;
        self.log("connects at its grace's end");
        self.oracles
            .reached("client: a squatter connects at its grace's end");
        let ev = self.connect_event();
        self.media(w, ev).await
    }

    async fn leave(&mut self, w: &mut wire::Writer) -> bool {
        let Some(c) = self.chan.take() else {
            return true;
        };
        let r = self.fresh_ref();
        self.log(format!("leave {} ref {r}", c.topic));
        self.left.insert(c.join_ref.clone());
        self.let_go(c.join_ref.clone(), c.topic.clone());
        self.pending_leave = Some(r.clone());
        // At once, so a room crash injected from now on expects no phx_error for it.
        self.publish_view(true);
        // Maybe move to another room ("joins across rooms").
        self.room = self.rooms[rt::rand::below(self.rooms.len() as u64) as usize].clone();
        self.push(w, c.join_ref, r, c.topic, "phx_leave", json!({}))
            .await
    }

    /// A frame on a join_ref the client already let go of, as a slow tab flushing buffered
    /// pushes would send (S13/S14: the server must drop it, never act on it for a newer
    /// channel). Metadata updates carry the stale join_ref, so receivers can tell them apart.
    async fn send_stale(&mut self, w: &mut wire::Writer) -> bool {
        let Some((jr, topic)) = self.old.last().cloned() else {
            return true;
        };
        let r = self.fresh_ref();
        let (event, payload) = match rt::rand::below(4) {
            0 => ("phx_leave", json!({})),
            1 => (
                "mediaEvent",
                json!({"data": json!({"type":"disconnect"}).to_string()}),
            ),
            2 => (
                "mediaEvent",
                json!({"data": json!({"type":"custom","data":{"type":"renegotiateTracks","data":{}}}).to_string()}),
            ),
            _ => (
                "mediaEvent",
                json!({"data": json!({"type":"updateEndpointMetadata","data":{"metadata":{"client": self.idx, "seq": 0, "stale": jr}}}).to_string()}),
            ),
        };
        self.log(format!("stale {event} on {topic} jr {jr} ref {r}"));
        self.oracles.reached("client: sent on a stale join_ref");
        self.stale_refs
            .insert(r.clone(), (jr.clone(), event == "phx_leave"));
        self.push(w, jr, r, topic, event, payload).await
    }

    /// Negotiation churn while an offer or answer is in flight: publish/unpublish in quick
    /// succession, sometimes a leave or a rejoin in the middle, sometimes a stale frame.
    async fn burst(&mut self, w: &mut wire::Writer) -> bool {
        let n = 2 + rt::rand::below(4);
        let open = self.chan.as_ref().is_some_and(|c| c.neg.offer_open());
        self.log(format!("burst of {n} (offer open: {open})"));
        if open {
            self.oracles.reached("client: burst while an offer is open");
        }
        for _ in 0..n {
            let ok = match rt::rand::below(8) {
                0 => {
                    if !self.chan.as_ref().is_some_and(|c| c.joined) || self.pending_leave.is_some()
                    {
                        return true;
                    }
                    return self.leave(w).await;
                }
                1 => {
                    self.log("duplicate join");
                    return self.join(w).await;
                }
                2 => self.send_stale(w).await,
                _ => {
                    let Some(c) = self.chan.as_mut().filter(|c| c.live()) else {
                        return true;
                    };
                    let Some(peer) = c.peer_id.clone() else {
                        return true;
                    };
                    let ev = if c.neg.is_publishing() {
                        c.neg.unpublish()
                    } else {
                        c.neg.publish(&peer)
                    };
                    self.media(w, ev).await
                }
            };
            if !ok {
                return false;
            }
        }
        true
    }

    /// Handles one inbound frame; false to drop the connection.
    async fn on_frame(&mut self, w: &mut wire::Writer, text: &str) -> bool {
        let Ok(f) = decode(text) else {
            self.oracles
                .fail(format!("c{}: undecodable frame {text:?}", self.idx));
            return false;
        };
        // A media event's data is parsed once: the trace line names its type, the handler
        // applies it.
        let media = (f.event == "mediaEvent")
            .then(|| serde_json::from_str::<Value>(f.payload["data"].as_str().unwrap_or("")).ok());
        match f.event.as_str() {
            "phx_reply" => self.log(format_args!(
                "<- {} reply {} {} {}",
                f.topic,
                f.msg_ref.as_deref().unwrap_or("-"),
                f.payload["status"].as_str().unwrap_or("?"),
                f.payload["response"]
            )),
            "mediaEvent" => {
                let ev = media.as_ref().and_then(Option::as_ref);
                let kind = ev.and_then(|v| v["type"].as_str()).unwrap_or_default();
                // A custom event is named by its inner type (offerData, sdpAnswer, candidate).
                let sub = ev
                    .filter(|_| kind == "custom")
                    .and_then(|v| v["data"]["type"].as_str())
                    .unwrap_or_default();
                self.log(format_args!(
                    "<- {} media {kind}{}{sub} jr {}",
                    f.topic,
                    if sub.is_empty() { "" } else { " " },
                    f.join_ref.as_deref().unwrap_or("-")
                ))
            }
            e => self.log(format_args!(
                "<- {} {e} jr {}",
                f.topic,
                f.join_ref.as_deref().unwrap_or("-")
            )),
        }
        self.tabs.note_ended(&f);
        if self.tabs.owns(&f) {
            self.on_tab_frame(&f);
            return true;
        }
        if let Some(jr) = &f.join_ref {
            if self.closed.contains(jr) && f.event != "phx_reply" {
                self.oracles.fail(format!(
                    "c{}: {} on {} after its channel closed (join_ref {jr})",
                    self.idx, f.event, f.topic
                ));
            }
        }
        if f.event == "phx_reply" {
            return self.on_reply(w, &f, text).await;
        }
        let current = self
            .chan
            .as_ref()
            .is_some_and(|c| f.join_ref.as_ref() == Some(&c.join_ref));
        self.check_not_stale(&f, current);
        match f.event.as_str() {
            "phx_error" | "phx_close" => {
                let Some(jr) = f.join_ref.clone() else {
                    self.oracles.fail(format!(
                        "c{}: {} on {} without a join_ref",
                        self.idx, f.event, f.topic
                    ));
                    return true;
                };
                self.closed.insert(jr.clone());
                if f.event == "phx_error" {
                    let n = self.errors.entry(jr.clone()).or_default();
                    *n += 1;
                    let n = *n;
                    self.oracles.check(n == 1, || {
                        format!("c{}: {n} phx_error for join_ref {jr}", self.idx)
                    });
                    self.oracles.errored(self.idx, &jr);
                } else {
                    self.check_close_allowed(&jr, &f.topic);
                    if self.left.contains(&jr) || self.replaced.contains(&jr) {
                        // The client's leave or duplicate join reached the socket before the
                        // channel's exit did: the socket forgot the channel and closes it as
                        // asked, so its crash has nobody left to report to (S11, S15).
                        self.oracles.errored(self.idx, &jr);
                    }
                }
                if current {
                    let c = self.chan.take().expect("current");
                    self.let_go(c.join_ref, c.topic);
                    if f.event == "phx_error" {
                        // phoenix.js rejoins an errored channel by itself, after a backoff.
                        self.rejoin_at =
                            Some(time::now() + Duration::from_millis(50 + rt::rand::below(150)));
                    } else if self.dropped.is_none() {
                        // phoenix.js removed the channel from the socket: it is never rejoined
                        // and this user is stranded (reported by check_close_allowed).
                        self.stranded = true;
                        self.log("stranded: the server closed its channel");
                    }
                    self.publish_view(true);
                }
            }
            "dropped" if current => {
                if let Some(jr) = &f.join_ref {
                    self.dropped_on.insert(jr.clone());
                }
                self.on_dropped(&f.payload)
            }
            "mediaEvent" if current => {
                let replies = match media.flatten() {
                    Some(ev) => self.on_media_event(&ev),
                    None => {
                        let idx = self.idx;
                        self.oracles
                            .fail(format!("c{idx}: mediaEvent data is not JSON"));
                        Vec::new()
                    }
                };
                self.publish_view(true);
                if self.squatter
                    && !self.gave_up
                    && self.chan.as_ref().is_some_and(|c| c.peer_id.is_some())
                {
                    self.gave_up = true;
                    self.oracles
                        .reached("client: a squatter's connect at its grace's end got in");
                    return self.leave(w).await;
                }
                for ev in replies {
                    let offer = ev["data"]["type"] == "sdpOffer";
                    if !self.media(w, ev).await {
                        return false;
                    }
                    // Sometimes churn right away, while the answer is outstanding.
                    if offer && self.weight(Action::Burst) > 0 && rt::rand::chance(0.5) {
                        self.burst_at =
                            Some(time::now() + Duration::from_millis(rt::rand::below(40)));
                    }
                }
            }
            _ => {}
        }
        true
    }

    /// The swarm's weight of `action` (0 when off).
    fn weight(&self, action: Action) -> u64 {
        self.swarm.actions.get(&action).copied().unwrap_or(0)
    }

    /// A frame of one of the tabs (by its join_ref), and the refusal it may carry.
    fn on_tab_frame(&mut self, f: &Frame) {
        let max = videoroom::app::Limits::default().socket.max_channels;
        if let Some(r) = self.tabs.on_frame(self.idx, f, max, &self.oracles) {
            self.check_tab_refusal(&f.topic, r);
        }
        self.publish_view(true);
    }

    /// A `phx_reply`: counted, matched to what it answers, and checked.
    async fn on_reply(&mut self, w: &mut wire::Writer, f: &Frame, text: &str) -> bool {
        let idx = self.idx;
        let Some(r) = f.msg_ref.clone() else {
            self.oracles
                .fail(format!("c{idx}: reply without ref: {text}"));
            return true;
        };
        for (at, what) in [(self.oversized_at, "oversized"), (self.binary_at, "binary")] {
            if let (Some(at), Ok(n)) = (at, r.parse::<u64>()) {
                self.oracles.check(n <= at, || {
                    format!("c{idx}: reply to ref {n}, sent after its {what} frame: the connection should be closed")
                });
            }
        }
        match self.replies.get_mut(&r) {
            Some(n) => {
                *n += 1;
                let n = *n;
                self.oracles
                    .check(n == 1, || format!("c{idx}: {n} replies to ref {r}"));
            }
            None => self
                .oracles
                .fail(format!("c{idx}: reply to unknown ref {r}")),
        }
        if self.joins_pending.remove(&r) && self.joins_pending.is_empty() {
            (self.held, self.held_bytes) = (0, 0);
        }
        // A tab's join reply that carries the join's join_ref went to the tab (`Tabs::owns`).
        // Without it, only S6's refusal of an unmatched topic (null join_ref; phoenix.js still
        // hands it to the join by its ref); anything else is a reply phoenix.js would take for
        // another push's (a join on the heartbeat topic answered as a heartbeat).
        if self.tabs.joining(&r) {
            let p = &f.payload;
            if p["status"] == "error" && p["response"]["reason"] == "unmatched topic" {
                let mut to_tab = f.clone();
                to_tab.join_ref = Some(r.clone());
                self.on_tab_frame(&to_tab);
            } else {
                self.oracles.fail(format!(
                    "c{idx}: reply to the join ref {r} on {} without its join_ref: {p}",
                    f.topic
                ));
            }
            return true;
        }
        if let Some(sent) = self.heartbeats.remove(&r) {
            self.alive_at = Some(self.alive_at.map_or(sent, |t| t.max(sent)));
            self.check_grace_kept(sent);
            // Phoenix answers a heartbeat `ok` with an empty response, on the "phoenix" topic,
            // whatever channels the socket holds (the socket core's S1).
            let p = &f.payload;
            self.oracles.check(
                f.topic == "phoenix" && p["status"] == "ok" && p["response"] == json!({}),
                || format!("c{idx}: heartbeat {r} answered with {} on {}", p, f.topic),
            );
        }
        let status = f
            .payload
            .get("status")
            .and_then(Value::as_str)
            .unwrap_or("");
        let ok = status == "ok";
        // phoenix.js hands a reply to its push only if it echoes the channel's join_ref (or
        // none): any other is dropped and the push times out, a reply lost for the user.
        if let (Some(got), Some(Some(sent))) = (&f.join_ref, self.sent_on.get(&r)) {
            self.oracles.check(got == sent, || {
                format!(
                    "c{idx}: reply to ref {r} carries join_ref {got}, the push was sent on {sent}"
                )
            });
        }
        if let Some(want) = self.refused_refs.remove(&r) {
            // Refused by the channel, or, if the server closed the channel first, by the socket
            // as an unmatched topic; never taken.
            let reason = f.payload["response"]["reason"].as_str().unwrap_or("");
            self.oracles.check(
                status == "error" && (reason == want || reason == "unmatched topic"),
                || {
                    format!(
                        "c{idx}: push {r} that must be refused with {want:?} was answered {}",
                        f.payload
                    )
                },
            );
            if reason == want {
                self.oracles
                    .reached("client: a push the channel cannot take refused");
            }
            return true;
        }
        if let Some((jr, leave)) = self.stale_refs.remove(&r) {
            // S7 (topic not joined: error, null join_ref) or S12 (a leave of a topic not
            // joined: ok). Anything else means a newer channel handled it. (A topic joined
            // again under a newer join_ref drops the frame unanswered; that the reply does not
            // carry the current channel's join_ref is checked above.)
            let reason = f.payload["response"]["reason"].as_str().unwrap_or("");
            self.oracles
                .check(ok == leave && (ok || reason == "unmatched topic"), || {
                    format!(
                        "c{idx}: its {} on stale join_ref {jr} was answered {}",
                        if leave { "phx_leave" } else { "mediaEvent" },
                        f.payload
                    )
                });
            return true;
        }
        if self.pending_leave.as_deref() == Some(r.as_str()) {
            self.pending_leave = None;
            // A squatter that gave up never comes back.
            self.rejoin_at =
                (!self.gave_up).then(|| time::now() + Duration::from_millis(rt::rand::below(100)));
            return true;
        }
        let is_join = self
            .chan
            .as_ref()
            .is_some_and(|c| Some(&c.join_ref) == f.msg_ref.as_ref());
        if !is_join {
            return true;
        }
        self.oracles.check(f.join_ref == f.msg_ref, || {
            format!("c{idx}: join reply join_ref mismatch")
        });
        self.refused = (!ok).then(|| {
            f.payload["response"]["reason"]
                .as_str()
                .unwrap_or("")
                .to_string()
        });
        if ok {
            self.chan.as_mut().expect("join").joined = true;
            self.joined_at = Some(time::now());
            self.publish_view(true);
            if self.squatter {
                if self.idx == 0 && !self.late_connected {
                    // Aimed at the room's grace deadline: it started the grace a reply's
                    // crossing before this, and the connect takes about as long to get there.
                    let grace = videoroom::app::Limits::default().connect_grace;
                    let early = Duration::from_millis(rt::rand::below(40));
                    self.late_connect_at = Some(time::now() + grace - early);
                    self.log("squats: connects at its grace's end");
                } else {
                    self.log("squats: never connects");
                }
                return true;
            }
            let ev = self.connect_event();
            return self.media(w, ev).await;
        }
        let reason = self.refused.clone().unwrap_or_default();
        self.check_refusal(&reason);
        // Refused: phoenix.js retries after a backoff, forever, whatever the reason.
        if let Some(c) = self.chan.take() {
            self.let_go(c.join_ref, c.topic);
        }
        self.rejoin_at = Some(time::now() + Duration::from_millis(100 + rt::rand::below(200)));
        self.publish_view(true);
        true
    }

    /// The server dropped this channel. Only a client that never connects may be dropped, never
    /// before the connect grace has passed, and always with a reason.
    fn on_dropped(&mut self, payload: &Value) {
        let idx = self.idx;
        let reason = payload["reason"].as_str().unwrap_or("").to_owned();
        self.log(format!("dropped: {reason}"));
        self.oracles.reached("client: dropped with a reason");
        self.oracles.check(self.squatter, || {
            format!("c{idx}, which connects, was dropped: {reason:?}")
        });
        // Both the join reply and the drop cross the same network, so allow its jitter.
        let grace = videoroom::app::Limits::default().connect_grace;
        // The page shows this text: it must say what the user did not do, and in what time.
        let want = format!(
            "did not connect to the media session within {} s of joining",
            grace.as_secs_f64()
        );
        self.oracles.check(reason == want, || {
            format!("c{idx} dropped with reason {reason:?}, not {want:?}")
        });
        let held = self
            .joined_at
            .map_or(Duration::ZERO, |t| time::now().saturating_duration_since(t));
        self.oracles
            .check(held + Duration::from_millis(500) >= grace, || {
                format!("c{idx} dropped {held:?} after joining, before the {grace:?} grace")
            });
        self.dropped = Some(reason);
        self.publish_view(true);
    }

    /// Applies a server media event; returns the media events to answer with.
    fn on_media_event(&mut self, ev: &Value) -> Vec<Value> {
        let idx = self.idx;
        let who = self.who.as_str();
        // A client that sends garbage frames sometimes also sends an offer the server cannot parse.
        let breaks_offer = self.weight(Action::Garbage) > 0 && rt::rand::chance(0.2);
        let unparsable = rt::rand::chance(0.5);
        let trespasser = self.weight(Action::Trespass) > 0;
        let recv_lines = self.swarm.recv_lines;
        let turn = self.swarm.turn;
        let Some(c) = self.chan.as_mut() else {
            return Vec::new();
        };
        let data = &ev["data"];
        if c.hung_up {
            // Its first `connected` came before it hung up, and the server ignores a second
            // `connect` of a connected peer: a `connected` now answers the new `connect`.
            if ev["type"] != "connected" {
                // Still in flight from before the disconnect: the session it was for is gone.
                return Vec::new();
            }
            c.hung_up = false;
            c.reconnect_at = None;
            self.oracles
                .reached("client: connected again on the same channel");
        }
        let client_of = |e: &Value| e["metadata"]["client"].as_u64().map(|x| x as usize);
        // A metadata update sent on an old join_ref (S14) must never become a peer's metadata.
        let stale_meta = |e: &Value| {
            let stale = &e["metadata"]["stale"];
            (!stale.is_null()).then(|| {
                format!(
                    "{who}: peer {} carries metadata its client sent on stale join_ref {stale}",
                    e["id"].as_str().unwrap_or("?")
                )
            })
        };
        let endpoints: Vec<&Value> = match ev["type"].as_str().unwrap_or("") {
            "connected" => data["otherEndpoints"]
                .as_array()
                .into_iter()
                .flatten()
                .collect(),
            "endpointAdded" | "endpointUpdated" => vec![data],
            _ => Vec::new(),
        };
        for e in endpoints {
            if let Some(v) = stale_meta(e) {
                self.oracles.fail(v);
            }
            if !e["metadata"]["over"].is_null() {
                self.oracles.fail(format!(
                    "{who}: peer {} carries metadata over the server's limit",
                    e["id"].as_str().unwrap_or("?")
                ));
            }
        }
        match ev["type"].as_str().unwrap_or("") {
            "connected" => {
                c.peer_id = data["id"].as_str().map(str::to_string);
                c.roster.clear();
                c.meta.clear();
                c.owners.clear();
                c.track_seq.clear();
                c.track_meta.clear();
                c.voices.clear();
                for e in data["otherEndpoints"].as_array().into_iter().flatten() {
                    c.announced(
                        &self.oracles,
                        who,
                        e["id"].as_str().unwrap_or(""),
                        &e["tracks"],
                        false,
                    );
                    if let (Some(id), Some(k)) = (e["id"].as_str(), client_of(e)) {
                        c.roster.insert(id.to_string(), k);
                        if let Some(seq) = e["metadata"]["seq"].as_u64() {
                            c.meta.insert(id.to_string(), seq);
                        }
                    }
                }
            }
            "endpointAdded" => {
                if let (Some(id), Some(seq)) =
                    (data["id"].as_str(), data["metadata"]["seq"].as_u64())
                {
                    c.meta.insert(id.to_string(), seq);
                }
                if let (Some(id), Some(k)) = (data["id"].as_str(), client_of(data)) {
                    // An endpoint is added once per connect and removed before it can connect
                    // again: added while listed means its removal was never told.
                    if c.roster.insert(id.to_string(), k).is_some() {
                        self.oracles.fail(format!(
                            "{who}: endpointAdded for {id}, which it already lists (no endpointRemoved in between)"
                        ));
                    }
                }
            }
            "endpointRemoved" => {
                if let Some(id) = data["id"].as_str() {
                    c.roster.remove(id);
                    c.meta.remove(id);
                    c.seq.remove(id);
                    let prefix = format!("{id}:");
                    c.track_meta.retain(|t, _| !t.starts_with(&prefix));
                    c.voices.retain(|t, _| !t.starts_with(&prefix));
                    c.neg.on_endpoint_removed(id);
                }
            }
            "endpointUpdated" => {
                let (Some(id), Some(seq)) = (data["id"].as_str(), data["metadata"]["seq"].as_u64())
                else {
                    return Vec::new();
                };
                let from = client_of(data);
                self.oracles
                    .heard(idx, &c.join_ref, &c.topic, id, from, seq);
                if c.meta.insert(id.to_string(), seq) == Some(seq) {
                    self.oracles.fail(format!(
                        "c{idx}: endpointUpdated for peer {id} repeats the metadata it holds (seq {seq}): \
                         membrane-webrtc-js 0.5.3 wipes the endpoint's tracks on every endpointUpdated"
                    ));
                }
                let last = c.seq.insert(id.to_string(), seq).unwrap_or(0);
                if seq <= last {
                    self.oracles.fail(format!(
                        "c{idx}: FIFO broken: peer {id} seq {seq} after {last}"
                    ));
                }
            }
            "tracksAdded" => {
                let endpoint = data["endpointId"].as_str().unwrap_or("");
                c.announced(&self.oracles, who, endpoint, &data["tracks"], true);
                for id in data["tracks"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|t| t.0)
                {
                    c.voices.entry(id.clone()).or_insert(false);
                }
            }
            "tracksRemoved" => {
                for id in data["trackIds"].as_array().into_iter().flatten() {
                    c.track_meta.remove(id.as_str().unwrap_or(""));
                    c.voices.remove(id.as_str().unwrap_or(""));
                }
                c.neg.on_tracks_removed(who, data, &self.oracles)
            }
            "trackUpdated" => {
                checks::track_updated(&self.oracles, who, &c.owners, &mut c.track_seq, data);
                if let Some(held) = c.track_meta.get_mut(data["trackId"].as_str().unwrap_or("")) {
                    *held = data["metadata"].clone();
                }
            }
            "custom" => {
                match data["type"].as_str().unwrap_or("") {
                    "offerData" => {
                        // A trespasser sometimes also claims a track that is not its to publish.
                        if trespasser && rt::rand::chance(0.3) {
                            let own = c.peer_id.clone().unwrap_or_default();
                            let what = c.neg.forge(&own, rt::rand::below(4));
                            self.oracles.reached("client: forged a track in its offer");
                            self.trace
                                .log(format_args!("{who} forges {what} in its offer"));
                        }
                        // ... or misuses its m-lines: refuses one it receives on, or revives a
                        // stopped track's.
                        if trespasser && rt::rand::chance(0.3) {
                            let refuse = rt::rand::chance(0.5);
                            if let Some(what) = c.neg.misuse(refuse) {
                                self.oracles.reached(if refuse {
                                    "client: refused a line it receives on"
                                } else {
                                    "client: revived a stopped track's line"
                                });
                                self.trace.log(format_args!("{who} {what}"));
                            }
                        }
                        // Every receiving line is one the server announced a track on, and it
                        // keeps room for the peer's own tracks within its m-line bound.
                        let types = &data["data"]["tracksTypes"];
                        let lines = types["audio"].as_u64().unwrap_or(0)
                            + types["video"].as_u64().unwrap_or(0);
                        self.oracles.check(lines <= recv_lines as u64, || {
                            format!(
                            "{who}: offerData asks for {lines} receiving m-lines, more than the \
                             {recv_lines} the server's m-line bound leaves a connection"
                        )
                        });
                        // The TURN credentials are this peer's own (minted for it), or none.
                        if let Some(own) = &c.peer_id {
                            let got = &data["data"]["integratedTurnServers"];
                            let want = if turn {
                                json!([crate::server::turn_server(own)])
                            } else {
                                json!([])
                            };
                            self.oracles.check(*got == want, || {
                            format!("{who}: offerData carries TURN servers {got:.200}, not {want:.200}")
                        });
                        }
                        let offer = c.neg.on_offer_data(who, &data["data"], &self.oracles);
                        if breaks_offer {
                            self.oracles.reached("client: sent an unparsable sdpOffer");
                            return c.neg.break_offer(unparsable);
                        }
                        return vec![offer];
                    }
                    "sdpAnswer" => c.neg.on_answer(who, &data["data"], &self.oracles),
                    "candidate" => c.neg.on_candidate(who, &data["data"], &self.oracles),
                    "vadNotification" => {
                        checks::voice_activity(&self.oracles, who, &mut c.voices, &data["data"])
                    }
                    _ => {}
                }
            }
            "error" => {
                let message = data["message"].as_str().unwrap_or_default();
                checks::error_message(&self.oracles, who, message);
                if c.oversized_owed > 0 && message.starts_with(OVERSIZED_METADATA_ERROR) {
                    c.oversized_owed -= 1;
                    self.oracles
                        .reached("client: metadata over the limit refused");
                } else if !c.malformed_owed.is_empty() && message.starts_with(MALFORMED_ERROR) {
                    let whole = c.malformed_owed.pop_front().unwrap_or_default();
                    checks::malformed_error(&self.oracles, who, &whole, message);
                    self.oracles
                        .reached("client: malformed media event refused");
                } else if !c.neg.take_error(message) {
                    self.oracles
                        .fail(format!("c{idx}: server sent media error {data}"));
                }
            }
            _ => {}
        }
        Vec::new()
    }
}

/// A media event the server cannot parse whose error quotes `value`.
fn malformed_event(value: &str) -> Value {
    json!({"type": "custom", "data": {"type": "candidate", "data": {
        "candidate": "candidate:1 1 udp 1 10.0.0.1 9 typ host", "sdpMLineIndex": value,
    }}})
}

/// The whole error the product's parser words for `ev` (what the server cuts, if it must).
fn malformed_error_text(ev: &Value) -> String {
    match videoroom::engine::ClientEvent::parse(&ev.to_string()) {
        Err(e) => e.to_string(),
        Ok(parsed) => panic!("the malformed event parsed: {parsed:?}"),
    }
}

/// A value, `lead` then multi-byte text, whose malformed event's error is `len` bytes long
/// (the error quotes the value byte for byte after a fixed text).
fn error_of_length(lead: &str, len: usize) -> String {
    let fixed = malformed_error_text(&malformed_event("")).len();
    let rest = len.saturating_sub(fixed + lead.len());
    format!("{lead}{}{}", "é".repeat(rest / 2), "x".repeat(rest % 2))
}

/// Client `idx`'s metadata at `seq` as JSON text, keys in serde_json's (sorted) order: where
/// the world bounds queues by bytes (`metadata_bytes` > 0), padded to exactly that many bytes
/// (the server's limit in half those worlds, which it must accept).
fn metadata_text(idx: usize, seq: u64, metadata_bytes: usize) -> String {
    if metadata_bytes == 0 {
        return format!(r#"{{"client":{idx},"seq":{seq}}}"#);
    }
    let pad = "p".repeat(metadata_pad(idx, seq, metadata_bytes));
    format!(r#"{{"client":{idx},"pad":"{pad}","seq":{seq}}}"#)
}

/// How many padding bytes bring client `idx`'s metadata at `seq` to `metadata_bytes` (none
/// where the rest is longer already).
fn metadata_pad(idx: usize, seq: u64, metadata_bytes: usize) -> usize {
    let unpadded = format!(r#"{{"client":{idx},"pad":"","seq":{seq}}}"#).len();
    metadata_bytes.saturating_sub(unpadded)
}

/// `Frame { join_ref, msg_ref, topic, event: "mediaEvent", payload: {"data": event} }.encode()`,
/// byte for byte, without building a `Value` for the payload.
fn media_frame_text(refs: [&str; 3], event: &str) -> String {
    let mut out = media_frame_head(refs, event.len() + event.len() / 8);
    push_json_str(&mut out, event);
    out.push_str("}]");
    out
}

/// `[join_ref,msg_ref,topic,"mediaEvent",{"data":` with room for `more` bytes after it.
fn media_frame_head([join_ref, msg_ref, topic]: [&str; 3], more: usize) -> String {
    let mut out = String::with_capacity(more + topic.len() + 48);
    out.push('[');
    push_json_str(&mut out, join_ref);
    out.push(',');
    push_json_str(&mut out, msg_ref);
    out.push(',');
    push_json_str(&mut out, topic);
    out.push_str(r#","mediaEvent",{"data":"#);
    out
}

/// The frame of client `idx`'s metadata update `seq`:
/// `media_frame_text(refs, event)` for
/// `event = {"data":{"metadata":<metadata_text(idx, seq, metadata_bytes)>},"type":"updateEndpointMetadata"}`,
/// byte for byte, with the event's escaping written out (its only escapes are the quotes
/// around keys), so a kilobyte of padding costs a copy instead of a scan per byte.
fn update_frame_text(refs: [&str; 3], idx: usize, seq: u64, metadata_bytes: usize) -> String {
    let mut out = media_frame_head(refs, metadata_bytes + 80);
    out.push_str(r#""{\"data\":{\"metadata\":"#);
    if metadata_bytes == 0 {
        let _ = write!(out, r#"{{\"client\":{idx},\"seq\":{seq}}}"#);
    } else {
        let pad = metadata_pad(idx, seq, metadata_bytes);
        let _ = write!(out, r#"{{\"client\":{idx},\"pad\":\""#);
        const PADDING: &str = "pppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppp";
        let mut left = pad;
        while left > 0 {
            let n = left.min(PADDING.len());
            out.push_str(&PADDING[..n]);
            left -= n;
        }
        let _ = write!(out, r#"\",\"seq\":{seq}}}"#);
    }
    out.push_str(r#"},\"type\":\"updateEndpointMetadata\"}"}]"#);
    out
}

/// Appends `s` as a JSON string literal (serde_json's escaping: a hand-written one measured
/// no faster).
fn push_json_str(out: &mut String, s: &str) {
    out.push_str(&serde_json::to_string(s).expect("strings always serialise"));
}

/// Makes `held` equal to `now`, copying only when they differ.
fn sync<T: Clone + PartialEq>(held: &mut T, now: &T) {
    if held != now {
        held.clone_from(now);
    }
}

/// [`sync`] for an optional value read by reference.
fn sync_opt<T: Clone + PartialEq>(held: &mut Option<T>, now: Option<&T>) {
    if held.as_ref() != now {
        *held = now.cloned();
    }
}

/// [`sync`] for a collection that is empty where the client has no channel.
fn sync_or_clear<T: Clone + PartialEq + Default>(held: &mut T, now: Option<&T>) {
    match now {
        Some(now) => sync(held, now),
        None => *held = T::default(),
    }
}

/// How client `idx` spells `room` in its topic: odd clients in capitals, always (a client that
/// rejoins, or joins twice, uses one topic, as a page does), so the clients of one room meet
/// under two spellings: room names are case-insensitive (README).
fn cased(room: &str, idx: usize) -> String {
    if idx.is_multiple_of(2) {
        room.to_owned()
    } else {
        room.to_ascii_uppercase()
    }
}

#[cfg(test)]
mod metadata_tests {
    use super::{media_frame_text, metadata_text, update_frame_text};
    use serde_json::json;
    use videoroom::phoenix::Frame;

    /// (client, seq, metadata bytes): unpadded, padded, padding shorter than the text.
    const CASES: [(usize, u64, usize); 5] = [
        (0, 0, 0),
        (7, 12, 0),
        (3, 99, 1024),
        (12, 100_000, 200),
        (1, 1, 5),
    ];

    #[test]
    fn update_frame_text_is_the_media_frame_of_the_update() {
        for (idx, seq, bytes) in CASES {
            let meta = metadata_text(idx, seq, bytes);
            let event =
                format!(r#"{{"data":{{"metadata":{meta}}},"type":"updateEndpointMetadata"}}"#);
            assert_eq!(
                update_frame_text(["4", "9", "room:Ab"], idx, seq, bytes),
                media_frame_text(["4", "9", "room:Ab"], &event)
            );
        }
    }

    #[test]
    fn media_frame_text_is_what_frame_encode_writes() {
        for event in [
            String::new(),
            r#"{"data":{"metadata":{"client":1,"pad":"ppp","seq":2}},"type":"x"}"#.to_owned(),
            "quote \" backslash \\ newline \n tab \t bell \u{7} \u{1f} é \u{202e} 🎥".to_owned(),
            "\"\"".to_owned(),
        ] {
            for topic in ["room:a", "room:\"q\"", "room:\\"] {
                let f = Frame {
                    join_ref: Some("3".into()),
                    msg_ref: Some("17".into()),
                    topic: topic.into(),
                    event: "mediaEvent".into(),
                    payload: json!({ "data": event }),
                };
                assert_eq!(media_frame_text(["3", "17", topic], &event), f.encode());
            }
        }
    }

    #[test]
    fn metadata_text_is_what_serde_json_writes_and_pads_to_the_byte() {
        for (idx, seq, bytes) in CASES {
            let mut m = json!({"client": idx, "seq": seq});
            if bytes > 0 {
                m["pad"] = json!("");
                let bare = m.to_string().len();
                m["pad"] = json!("p".repeat(bytes - bare.min(bytes)));
            }
            let text = metadata_text(idx, seq, bytes);
            assert_eq!(text, m.to_string());
            if bytes > 0 {
                assert_eq!(text.len(), bytes.max(m.to_string().len()));
            }
        }
    }
}
