//! A simulated browser: phoenix.js's channel behaviour (join refs, heartbeats, rejoin after
//! `phx_error`, reconnect after a dropped socket) plus the media-event client's roster, speaking
//! real Phoenix V2 frames. It checks the server's promises as frames arrive (the client-side
//! safety oracles) and reports its view for the liveness check.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use videoroom::phoenix::{decode, Frame};
use videoroom::rt::watch;
use videoroom::rt::{self, time};

use crate::negotiator::Negotiator;
use crate::oracle::Oracles;
use crate::swarm::Swarm;
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
    /// Join refs this client let go of (left, re-joined over, lost with its socket).
    pub gone: BTreeSet<String>,
    /// Other clients this client sees in its room (by client index, from endpoint metadata).
    pub sees: BTreeSet<usize>,
    pub connected: bool,
    /// The reason of the last refused join, if the last join was refused.
    pub refused: Option<String>,
    /// A squatter: joins, never connects.
    pub squatter: bool,
    /// The reason the server gave when it dropped this client's channel.
    pub dropped: Option<String>,
}

pub type Views = Arc<Mutex<BTreeMap<usize, View>>>;

struct Chan {
    topic: String,
    join_ref: String,
    joined: bool,
    peer_id: Option<String>,
    /// peer id → client index.
    roster: BTreeMap<String, usize>,
    /// Highest metadata sequence seen per peer (FIFO oracle).
    seq: BTreeMap<String, u64>,
    neg: Negotiator,
}

pub struct Client {
    pub idx: usize,
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
    /// Join refs whose channel the client let go of (leave, duplicate join, errored).
    gone: BTreeSet<String>,
    /// Join refs that got their phx_close / phx_error (nothing may follow on them).
    closed: BTreeSet<String>,
    errors: BTreeMap<String, u32>,
    my_seq: u64,
    rejoin_at: Option<time::Instant>,
    pending_leave: Option<String>,
    refused: Option<String>,
    /// Joins but never sends `connect` (see `Swarm::squatters`).
    squatter: bool,
    /// When the current channel's join was answered ok.
    joined_at: Option<time::Instant>,
    dropped: Option<String>,
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
            gone: BTreeSet::new(),
            closed: BTreeSet::new(),
            errors: BTreeMap::new(),
            my_seq: 0,
            rejoin_at: None,
            pending_leave: None,
            refused: None,
            squatter,
            joined_at: None,
            dropped: None,
        }
    }

    fn log(&self, s: impl AsRef<str>) {
        self.trace.log(format!("c{} {}", self.idx, s.as_ref()));
    }

    fn publish_view(&self, connected: bool) {
        let v = View {
            room: self.room.clone(),
            joined: self.chan.as_ref().is_some_and(|c| c.joined),
            peer_id: self.chan.as_ref().and_then(|c| c.peer_id.clone()),
            join_ref: self.chan.as_ref().map(|c| c.join_ref.clone()),
            gone: self.gone.clone(),
            sees: self
                .chan
                .as_ref()
                .map(|c| c.roster.values().copied().collect())
                .unwrap_or_default(),
            connected,
            refused: self.refused.clone(),
            squatter: self.squatter,
            dropped: self.dropped.clone(),
        };
        self.views.lock().unwrap().insert(self.idx, v);
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
            let stream = match madsim::net::TcpStream::connect(self.server).await {
                Ok(s) => s,
                Err(_) => {
                    self.publish_view(false);
                    time::sleep(Duration::from_millis(50 + rt::rand::below(150))).await;
                    continue;
                }
            };
            self.log("socket open");
            let (mut reader, mut writer) = wire::split(stream);
            // A new connection forgets every channel, as phoenix.js does.
            if let Some(c) = self.chan.take() {
                self.gone.insert(c.join_ref);
            }
            self.replies.clear();
            self.pending_leave = None;
            // A dropped squatter stays out, as phoenix.js does with a closed channel.
            self.rejoin_at = self.dropped.is_none().then(time::now);
            self.publish_view(true);
            let step = self.connected(&mut reader, &mut writer).await;
            if let Some(c) = self.chan.take() {
                self.gone.insert(c.join_ref);
            }
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

    async fn send(&mut self, w: &mut wire::Writer, f: Frame) -> bool {
        if let Some(r) = &f.msg_ref {
            self.replies.insert(r.clone(), 0);
        }
        w.send(&WireFrame::Text(f.encode())).await
    }

    async fn join(&mut self, w: &mut wire::Writer) -> bool {
        let r = self.fresh_ref();
        let topic = format!("room:{}", self.room);
        if let Some(old) = self.chan.take() {
            // A join over a live channel is the duplicate-join path: the server closes the old.
            self.gone.insert(old.join_ref);
        }
        self.chan = Some(Chan {
            topic: topic.clone(),
            join_ref: r.clone(),
            joined: false,
            peer_id: None,
            roster: BTreeMap::new(),
            seq: BTreeMap::new(),
            neg: Negotiator::default(),
        });
        self.log(format!("join {topic} ref {r}"));
        let f = Frame {
            join_ref: Some(r.clone()),
            msg_ref: Some(r),
            topic,
            event: "phx_join".into(),
            payload: json!({}),
        };
        self.send(w, f).await
    }

    async fn media(&mut self, w: &mut wire::Writer, event: Value) -> bool {
        let Some(c) = &self.chan else { return true };
        let (join_ref, topic) = (c.join_ref.clone(), c.topic.clone());
        // phoenix.js gives every push a ref, even those the server never answers.
        let r = self.fresh_ref();
        let f = Frame {
            join_ref: Some(join_ref),
            msg_ref: Some(r),
            topic,
            event: "mediaEvent".into(),
            payload: json!({ "data": event.to_string() }),
        };
        self.send(w, f).await
    }

    async fn connected(&mut self, reader: &mut wire::Reader, w: &mut wire::Writer) -> Step {
        let mut heartbeat = time::now() + Duration::from_millis(500);
        let mut pending_heartbeat: Option<String> = None;
        let mut action = time::now() + self.swarm.action_gap();
        loop {
            let phase = *self.phase.borrow();
            if phase == Phase::Teardown {
                return Step::Continue;
            }
            let next_rejoin = self.rejoin_at;
            let deadline = [
                Some(heartbeat),
                next_rejoin,
                (phase == Phase::Chaos).then_some(action),
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
                        return Step::Reconnect;
                    }
                    Some(WireFrame::Text(t)) => {
                        if !self.on_frame(w, &t).await {
                            return Step::Reconnect;
                        }
                    }
                },
                _ = time::sleep_until(deadline) => {
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
                        let r = self.fresh_ref();
                        pending_heartbeat = Some(r.clone());
                        let f = Frame { join_ref: None, msg_ref: Some(r), topic: "phoenix".into(), event: "heartbeat".into(), payload: json!({}) };
                        if !self.send(w, f).await { return Step::Reconnect; }
                    }
                    if self.rejoin_at.is_some_and(|t| now >= t) {
                        self.rejoin_at = None;
                        if !self.join(w).await { return Step::Reconnect; }
                    }
                    if phase == Phase::Chaos && now >= action {
                        action = now + self.swarm.action_gap();
                        if !self.act(w).await { return Step::Reconnect; }
                    }
                }
            }
        }
    }

    /// One workload action, drawn from the seed's mix.
    async fn act(&mut self, w: &mut wire::Writer) -> bool {
        let joined = self.chan.as_ref().is_some_and(|c| c.joined);
        match self.swarm.pick_action() {
            "media" if joined => {
                self.my_seq += 1;
                let seq = self.my_seq;
                self.media(w, json!({"type":"updateEndpointMetadata","data":{"metadata":{"client": self.idx, "seq": seq}}})).await
            }
            "leave" if joined && self.pending_leave.is_none() => {
                let c = self.chan.take().expect("joined");
                let r = self.fresh_ref();
                self.log(format!("leave {} ref {r}", c.topic));
                self.gone.insert(c.join_ref.clone());
                self.pending_leave = Some(r.clone());
                // Maybe move to another room ("joins across rooms").
                self.room = self.rooms[rt::rand::below(self.rooms.len() as u64) as usize].clone();
                let f = Frame {
                    join_ref: Some(c.join_ref),
                    msg_ref: Some(r),
                    topic: c.topic,
                    event: "phx_leave".into(),
                    payload: json!({}),
                };
                self.send(w, f).await
            }
            "duplicate" if self.chan.is_some() => {
                self.log("duplicate join");
                self.join(w).await
            }
            "publish" if joined => {
                let Some(c) = self.chan.as_mut() else {
                    return true;
                };
                let (Some(peer), false) = (c.peer_id.clone(), c.neg.is_publishing()) else {
                    return true;
                };
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
                for _ in 0..n {
                    self.my_seq += 1;
                    let seq = self.my_seq;
                    let ev = json!({"type":"updateEndpointMetadata","data":{"metadata":{"client": self.idx, "seq": seq}}});
                    if !self.media(w, ev).await {
                        return false;
                    }
                }
                true
            }
            "garbage" => {
                self.log("sends garbage");
                w.send(&WireFrame::Text("{not a phoenix frame".into()))
                    .await;
                true
            }
            "disconnect" => {
                self.log("drops its socket");
                false
            }
            _ => true,
        }
    }

    /// Handles one inbound frame; false to drop the connection.
    async fn on_frame(&mut self, w: &mut wire::Writer, text: &str) -> bool {
        let Ok(f) = decode(text) else {
            self.oracles
                .fail(format!("c{}: undecodable frame {text:?}", self.idx));
            return false;
        };
        match f.event.as_str() {
            "phx_reply" => self.log(format!(
                "<- {} reply {} {} {}",
                f.topic,
                f.msg_ref.as_deref().unwrap_or("-"),
                f.payload["status"].as_str().unwrap_or("?"),
                f.payload["response"]
            )),
            "mediaEvent" => {
                let data = f.payload["data"].as_str().unwrap_or("");
                let kind = serde_json::from_str::<Value>(data)
                    .ok()
                    .and_then(|v| v["type"].as_str().map(str::to_string))
                    .unwrap_or_default();
                self.log(format!(
                    "<- {} media {kind} jr {}",
                    f.topic,
                    f.join_ref.as_deref().unwrap_or("-")
                ))
            }
            e => self.log(format!(
                "<- {} {e} jr {}",
                f.topic,
                f.join_ref.as_deref().unwrap_or("-")
            )),
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
            let Some(r) = &f.msg_ref else {
                self.oracles
                    .fail(format!("c{}: reply without ref: {text}", self.idx));
                return true;
            };
            match self.replies.get_mut(r) {
                Some(n) => {
                    *n += 1;
                    let n = *n;
                    self.oracles
                        .check(n == 1, || format!("c{}: {n} replies to ref {r}", self.idx));
                }
                None => self
                    .oracles
                    .fail(format!("c{}: reply to unknown ref {r}", self.idx)),
            }
            let ok = f.payload.get("status").and_then(Value::as_str) == Some("ok");
            if self.pending_leave.as_deref() == Some(r.as_str()) {
                self.pending_leave = None;
                self.rejoin_at = Some(time::now() + Duration::from_millis(rt::rand::below(100)));
                return true;
            }
            let is_join = self
                .chan
                .as_ref()
                .is_some_and(|c| Some(&c.join_ref) == f.msg_ref.as_ref());
            if is_join {
                self.oracles.check(f.join_ref == f.msg_ref, || {
                    format!("c{}: join reply join_ref mismatch", self.idx)
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
                        self.log("squats: never connects");
                        return true;
                    }
                    return self.media(w, json!({"type":"connect","data":{"metadata":{"client": self.idx, "seq": self.my_seq}}})).await;
                }
                // Refused (e.g. room full): phoenix.js retries after a backoff.
                if let Some(c) = self.chan.take() {
                    self.gone.insert(c.join_ref);
                }
                self.rejoin_at =
                    Some(time::now() + Duration::from_millis(100 + rt::rand::below(200)));
                self.publish_view(true);
            }
            return true;
        }
        let current = self
            .chan
            .as_ref()
            .is_some_and(|c| f.join_ref.as_ref() == Some(&c.join_ref));
        match f.event.as_str() {
            "phx_error" | "phx_close" => {
                if let Some(jr) = &f.join_ref {
                    self.closed.insert(jr.clone());
                    if f.event == "phx_error" {
                        let n = self.errors.entry(jr.clone()).or_default();
                        *n += 1;
                        let n = *n;
                        self.oracles.check(n == 1, || {
                            format!("c{}: {n} phx_error for join_ref {jr}", self.idx)
                        });
                        self.oracles.errored(self.idx, jr);
                    }
                }
                if current {
                    let c = self.chan.take().expect("current");
                    self.gone.insert(c.join_ref);
                    self.publish_view(true);
                    // phoenix.js rejoins an errored channel by itself; a closed one only if we
                    // did not mean to leave (a server-side close of a live channel). A dropped
                    // squatter was told why and stays out.
                    if self.dropped.is_none() {
                        self.rejoin_at =
                            Some(time::now() + Duration::from_millis(50 + rt::rand::below(150)));
                    }
                }
            }
            "dropped" if current => self.on_dropped(&f.payload),
            "mediaEvent" if current => {
                let data = f.payload.get("data").and_then(Value::as_str).unwrap_or("");
                let replies = match serde_json::from_str::<Value>(data) {
                    Ok(ev) => self.on_media_event(&ev),
                    Err(_) => {
                        let idx = self.idx;
                        self.oracles
                            .fail(format!("c{idx}: mediaEvent data is not JSON"));
                        Vec::new()
                    }
                };
                self.publish_view(true);
                for ev in replies {
                    if !self.media(w, ev).await {
                        return false;
                    }
                }
            }
            _ => {}
        }
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
        self.oracles.check(!reason.is_empty(), || {
            format!("c{idx} dropped without a reason")
        });
        // Both the join reply and the drop cross the same network, so allow its jitter.
        let grace = videoroom::app::Limits::default().connect_grace;
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
        let who = format!("c{idx}");
        let Some(c) = self.chan.as_mut() else {
            return Vec::new();
        };
        let data = &ev["data"];
        let client_of = |e: &Value| e["metadata"]["client"].as_u64().map(|x| x as usize);
        match ev["type"].as_str().unwrap_or("") {
            "connected" => {
                c.peer_id = data["id"].as_str().map(str::to_string);
                c.roster.clear();
                for e in data["otherEndpoints"].as_array().into_iter().flatten() {
                    c.neg.on_tracks_announced(&e["tracks"]);
                    if let (Some(id), Some(k)) = (e["id"].as_str(), client_of(e)) {
                        c.roster.insert(id.to_string(), k);
                    }
                }
            }
            "endpointAdded" => {
                if let (Some(id), Some(k)) = (data["id"].as_str(), client_of(data)) {
                    c.roster.insert(id.to_string(), k);
                }
            }
            "endpointRemoved" => {
                if let Some(id) = data["id"].as_str() {
                    c.roster.remove(id);
                    c.seq.remove(id);
                    c.neg.on_endpoint_removed(id);
                }
            }
            "endpointUpdated" => {
                let (Some(id), Some(seq)) = (data["id"].as_str(), data["metadata"]["seq"].as_u64())
                else {
                    return Vec::new();
                };
                let last = c.seq.insert(id.to_string(), seq).unwrap_or(0);
                if seq <= last {
                    self.oracles.fail(format!(
                        "c{idx}: FIFO broken: peer {id} seq {seq} after {last}"
                    ));
                }
            }
            "tracksAdded" => c.neg.on_tracks_announced(&data["tracks"]),
            "tracksRemoved" => c.neg.on_tracks_removed(&who, data, &self.oracles),
            "custom" => match data["type"].as_str().unwrap_or("") {
                "offerData" => {
                    return vec![c.neg.on_offer_data(&who, &data["data"], &self.oracles)];
                }
                "sdpAnswer" => c.neg.on_answer(&who, &data["data"], &self.oracles),
                _ => {}
            },
            "error" => self
                .oracles
                .fail(format!("c{idx}: server sent media error {data}")),
            _ => {}
        }
        Vec::new()
    }
}
