//! One worker: its thread, its socket, its rooms, and the loop that moves every datagram of
//! them through the `rtc` connections.
//!
//! One pass of the loop takes what is ready (a command, a batch of datagrams, an expired timer),
//! feeds it to the connections concerned, forwards the RTP that comes out of a publisher's
//! connection into its subscribers' connections in the same call, and then drains the
//! datagrams of every connection it touched onto the socket (the "dirty" list).
//!
//! It owns the rooms' fanouts (published track → subscriber legs) and the demux. It must never
//! wait inside a pass (every socket operation is non-blocking; a full destination loses the
//! datagram, as UDP would), emit an event about a peer after its removal, or let a leg or a
//! source outlive its peer (slab keys are reused).

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::BytesMut;
use net_tokio::sync::mpsc;
use rtc::peer_connection::message::RTCMessage;
use rtc::peer_connection::transport::RTCIceCandidateInit;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtp_transceiver::RTCRtpReceiverId;
use rtc::sansio::Protocol;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};
use slab::Slab;

use super::super::forward::{rewrite, Carried, ExtIds};
use super::super::rtcp::is_keyframe_request;
use super::super::{PlaneConfig, PlaneStats};
use super::demux::Demux;
use super::peer::{Ingress, OutSlot, Peer, PeerEvent};
use super::Cmd;
use crate::engine::plane::{PlaneCommand, PlaneEvent, PlaneOffer, PlaneSink};
use crate::fabric::{Endpoint, Sent};
use crate::logsafe::Untrusted;
use crate::turn::batch::{SendBatch, MAX_BATCH};
use crate::turn::{FromClient, TurnServer};

/// Datagrams taken from the inbox per pass before timers and commands get a look.
const BATCH: usize = 64;

static LIVE_PEERS: AtomicUsize = AtomicUsize::new(0);
static LIVE_CONNECTIONS: AtomicUsize = AtomicUsize::new(0);
static LIVE_FANOUTS: AtomicUsize = AtomicUsize::new(0);

pub(super) fn live_objects() -> super::LiveObjects {
    super::LiveObjects {
        peers: LIVE_PEERS.load(Ordering::Relaxed),
        connections: LIVE_CONNECTIONS.load(Ordering::Relaxed),
        fanouts: LIVE_FANOUTS.load(Ordering::Relaxed),
    }
}

/// Moves a process-wide gauge by this worker's change: `mine` holds its last value.
fn gauge(global: &AtomicUsize, mine: &AtomicUsize, now: usize) {
    let before = mine.swap(now, Ordering::Relaxed);
    if now >= before {
        global.fetch_add(now - before, Ordering::Relaxed);
    } else {
        global.fetch_sub(before - now, Ordering::Relaxed);
    }
}

#[derive(Default)]
pub(super) struct Stats {
    peers: AtomicUsize,
    connections: AtomicUsize,
    fanouts: AtomicUsize,
    forwarded: AtomicU64,
    dropped: AtomicU64,
    relayed: AtomicU64,
    sent: AtomicU64,
}

impl Stats {
    pub(super) fn snapshot(&self) -> PlaneStats {
        PlaneStats {
            peers: self.peers.load(Ordering::Relaxed),
            fanouts: self.fanouts.load(Ordering::Relaxed),
            forwarded: self.forwarded.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            keyframe_requests_relayed: self.relayed.load(Ordering::Relaxed),
            keyframe_requests_sent: self.sent.load(Ordering::Relaxed),
        }
    }
}

struct Room {
    sink: PlaneSink,
    peers: HashMap<String, usize>,
    /// Keyed by published track id. Exists while the track has a source or a leg.
    fanouts: HashMap<Arc<str>, Fanout>,
}

impl Room {
    /// Takes `peer`'s `slot` off `track`'s legs, and the fanout away if nothing uses it now.
    fn detach(&mut self, peer: usize, slot: usize, track: &str) {
        if let Some(f) = self.fanouts.get_mut(track) {
            f.legs.retain(|l| !(l.peer == peer && l.slot == slot));
        }
        release(self, track);
    }
}

#[derive(Default)]
struct Fanout {
    source: Option<Source>,
    legs: Vec<Leg>,
}

#[derive(Clone, Copy)]
struct Source {
    peer: usize,
    receiver: RTCRtpReceiverId,
    ssrc: u32,
}

/// A subscriber slot a track is forwarded on, with what its answer fixed.
#[derive(Clone, Copy)]
struct Leg {
    peer: usize,
    slot: usize,
    pt: u8,
    ext: ExtIds,
}

/// The worker's socket: in the fabric (the TURN relays hand datagrams over in-process) and in
/// the kernel (when the hand-off is off).
struct Io {
    local: SocketAddr,
    socket: net_tokio::net::UdpSocket,
    endpoint: Option<Endpoint>,
    /// Datagrams for one of its relayed addresses go straight to the client (no relay socket,
    /// no relay task: [`TurnServer::relay_from_sfu`]).
    turn: Option<Arc<TurnServer>>,
    /// The TURN server's listening socket, read here (clients' datagrams, TURN requests).
    listener: Option<net_tokio::net::UdpSocket>,
    scratch: RefCell<Vec<u8>>,
    /// What goes to clients at the end of this pass, in one `sendmmsg` per 64 datagrams.
    batch: RefCell<SendBatch>,
}

impl Io {
    fn send(&self, dst: SocketAddr, bytes: &[u8]) {
        if let Some(turn) = &self.turn {
            let mut batch = self.batch.borrow_mut();
            if turn.relay_from_sfu(
                self.local,
                dst,
                bytes,
                &mut self.scratch.borrow_mut(),
                &mut batch,
            ) {
                if batch.len() >= MAX_BATCH {
                    turn.send_batch(&mut batch);
                }
                return;
            }
        }
        match self.endpoint.as_ref().map(|ep| ep.send(bytes, None, dst)) {
            Some(Sent::Kernel) => {
                let _ = self.socket.try_send_to(bytes, dst);
            }
            // A wildcard socket has no endpoint and sends nothing (the fabric's policy).
            Some(Sent::Delivered | Sent::Refused) | None => {}
        }
    }
}

pub(super) struct Worker {
    local: SocketAddr,
    turn: Option<Arc<TurnServer>>,
    metrics: Arc<crate::metrics::Metrics>,
    rooms: HashMap<u64, Room>,
    peers: Slab<Peer>,
    demux: Demux<usize>,
    dirty: Vec<usize>,
    epoch: Instant,
    stats: Arc<Stats>,
    events: Vec<PeerEvent>,
    reads: Vec<RTCMessage>,
    /// The peer whose connection is being stepped: the one a panic inside the media stack
    /// is charged to.
    current: Option<usize>,
}

impl Worker {
    pub(super) fn new(cfg: &PlaneConfig, local: SocketAddr, stats: Arc<Stats>) -> Worker {
        Worker {
            local,
            turn: cfg.turn.clone(),
            metrics: Arc::clone(&cfg.metrics),
            rooms: HashMap::new(),
            peers: Slab::new(),
            demux: Demux::default(),
            dirty: Vec::new(),
            epoch: Instant::now(),
            stats,
            events: Vec::new(),
            reads: Vec::new(),
            current: None,
        }
    }

    /// Runs one unit of the loop's work. A panic inside it (the media stack fed something it
    /// did not expect) costs the peer being stepped its connection, not every room of the
    /// worker: the peer is failed and the loop goes on.
    fn guarded(&mut self, work: impl FnOnce(&mut Self)) {
        self.current = None;
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work(&mut *self)));
        if let Err(panic) = outcome {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            let peer = self
                .current
                .and_then(|k| self.peers.get(k))
                .map(|p| p.id.clone());
            tracing::error!(peer = ?peer, panic = %Untrusted(&what), "media worker: a step panicked");
            if let Some(key) = self.current.take() {
                self.fail_peer(key);
            }
        }
        self.current = None;
    }

    /// Drops `key`'s connection and everything hanging off it, keeps the peer (a later offer
    /// builds a new connection) and reports the failure and its ended tracks.
    fn fail_peer(&mut self, key: usize) {
        let Some(p) = self.peers.get_mut(key) else {
            return;
        };
        let (room, peer) = (p.room, p.id.clone());
        let outbound = std::mem::take(&mut p.outbound);
        let ingress = std::mem::take(&mut p.ingress);
        p.reset_connection();
        self.release_media(key, room, outbound, ingress, true);
        self.count_fanouts();
        self.emit(
            room,
            PlaneEvent::Failed {
                peer,
                reason: "the media stack failed on this connection".to_owned(),
            },
        );
    }

    /// The thread's body: a current-thread runtime for the socket's readiness and the timer,
    /// until the command queue closes. `ready` hears, once, whether the runtime and sockets are
    /// in place: the starter waits for it, so a server reports a worker that cannot start, and
    /// what the workers hold (their runtime's descriptors) is in place before anyone measures it.
    pub(super) fn run(
        mut self,
        socket: std::net::UdpSocket,
        endpoint: Option<Endpoint>,
        listener: Option<std::net::UdpSocket>,
        rx: mpsc::Receiver<Cmd>,
        ready: std::sync::mpsc::SyncSender<std::io::Result<()>>,
    ) {
        let started = net_tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .and_then(|rt| {
                let in_rt = rt.enter();
                let socket = net_tokio::net::UdpSocket::from_std(socket)?;
                let listener = listener
                    .map(net_tokio::net::UdpSocket::from_std)
                    .transpose()?;
                drop(in_rt);
                Ok((rt, socket, listener))
            });
        let (rt, socket, listener) = match started {
            Ok(s) => s,
            Err(e) => {
                let _ = ready.send(Err(e));
                return;
            }
        };
        rt.block_on(async move {
            let io = Io {
                local: self.local,
                socket,
                endpoint,
                turn: self.turn.clone(),
                listener,
                scratch: RefCell::new(Vec::with_capacity(1500)),
                batch: RefCell::default(),
            };
            let _ = ready.send(Ok(()));
            self.serve(&io, rx).await;
            self.shutdown();
        });
    }

    async fn serve(&mut self, io: &Io, mut rx: mpsc::Receiver<Cmd>) {
        let mut buf = vec![0u8; 2048];
        // Any UDP datagram fits, so a client's is never truncated.
        let mut turn_buf = vec![0u8; 65_536];
        loop {
            let deadline = self.deadline();
            let sleep = async {
                match deadline {
                    Some(at) => {
                        net_tokio::time::sleep_until(net_tokio::time::Instant::from_std(at)).await
                    }
                    None => std::future::pending().await,
                }
            };
            let inbox = async {
                match &io.endpoint {
                    Some(ep) => std::future::poll_fn(|cx| ep.poll_recv(cx)).await,
                    None => std::future::pending().await,
                }
            };
            let from_client = async {
                match &io.listener {
                    Some(l) => l.recv_from(&mut turn_buf).await,
                    None => std::future::pending().await,
                }
            };
            net_tokio::select! {
                // Commands first: they are rare, and a room's negotiation waits on each.
                biased;
                cmd = rx.recv() => match cmd {
                    Some(cmd) => self.guarded(|w| w.command(cmd)),
                    None => break,
                },
                r = from_client => {
                    if let Ok((n, from)) = r {
                        self.guarded(|w| w.client_datagram(io, from, n, &turn_buf));
                    }
                }
                d = inbox => self.guarded(|w| w.datagram(d.src, &d.data)),
                r = io.socket.recv_from(&mut buf) => {
                    if let Ok((n, src)) = r {
                        self.guarded(|w| w.datagram(src, &buf[..n]));
                    }
                }
                _ = sleep => {}
            }
            // Whichever source woke the loop, every source gets a batch in every pass, so a
            // busy one never starves the others (the select above is biased on purpose: an
            // unbiased one draws on tokio's thread RNG, which the simulation's trap forbids
            // in all of src/).
            if let Some(l) = &io.listener {
                for _ in 0..BATCH {
                    let Ok((n, from)) = l.try_recv_from(&mut turn_buf) else {
                        break;
                    };
                    self.guarded(|w| w.client_datagram(io, from, n, &turn_buf));
                }
            }
            if let Some(ep) = &io.endpoint {
                for _ in 0..BATCH {
                    let Some(d) = ep.try_recv() else { break };
                    self.guarded(|w| w.datagram(d.src, &d.data));
                }
            }
            self.guarded(|w| w.timeouts(Instant::now()));
            self.guarded(|w| w.flush(io));
        }
    }

    fn shutdown(&mut self) {
        let keys: Vec<usize> = self.peers.iter().map(|(k, _)| k).collect();
        for key in keys {
            self.remove_peer(key);
        }
        self.rooms.clear();
        self.count_fanouts();
    }

    fn now_ms(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX)
    }

    fn deadline(&self) -> Option<Instant> {
        self.peers
            .iter()
            .filter_map(|(_, p)| p.deadline(self.epoch))
            .min()
    }

    fn mark(&mut self, key: usize) {
        if let Some(p) = self.peers.get_mut(key) {
            if !p.dirty {
                p.dirty = true;
                self.dirty.push(key);
            }
        }
    }

    fn flush(&mut self, io: &Io) {
        let dirty = std::mem::take(&mut self.dirty);
        for &key in &dirty {
            let Some(p) = self.peers.get_mut(key) else {
                continue;
            };
            self.current = Some(key);
            p.dirty = false;
            let Some(pc) = p.pc.as_mut() else { continue };
            while let Some(out) = pc.poll_write() {
                io.send(out.transport.peer_addr, &out.message);
            }
            p.timeout = pc.poll_timeout();
        }
        self.dirty = dirty;
        self.dirty.clear();
        if let Some(turn) = &io.turn {
            let mut batch = io.batch.borrow_mut();
            if !batch.is_empty() {
                turn.send_batch(&mut batch);
            }
        }
    }

    fn emit(&self, room: u64, event: PlaneEvent) {
        if let Some(r) = self.rooms.get(&room) {
            r.sink.send(event);
        }
    }

    fn datagram(&mut self, src: SocketAddr, data: &[u8]) {
        let Some(key) = self.demux.route(src, data) else {
            return;
        };
        self.current = Some(key);
        let now = Instant::now();
        let Some(pc) = self.peers.get_mut(key).and_then(|p| p.pc.as_mut()) else {
            return;
        };
        let msg = TaggedBytesMut {
            now,
            transport: TransportContext {
                local_addr: self.local,
                peer_addr: src,
                ecn: None,
                transport_protocol: TransportProtocol::UDP,
            },
            message: BytesMut::from(data),
        };
        if let Err(e) = pc.handle_read(msg) {
            tracing::trace!(error = %Untrusted(&e), "datagram not taken");
        }
        self.pump(key, now);
    }

    /// A datagram from a TURN client (`buf[..n]`), stepped through the TURN core: a relayed
    /// one for this worker's socket is taken in at once, as if the relay had sent it.
    fn client_datagram(&mut self, io: &Io, from: SocketAddr, n: usize, buf: &[u8]) {
        let Some(turn) = &io.turn else { return };
        match turn.relay_from_client(from, &buf[..n], self.local) {
            FromClient::Nothing => {}
            FromClient::Reply(reply) => io.batch.borrow_mut().push(from, &reply),
            FromClient::ToSfu { from, data } => self.datagram(from, data),
        }
    }

    /// Takes what `key`'s connection has for the application after an input.
    fn pump(&mut self, key: usize, now: Instant) {
        let mut events = std::mem::take(&mut self.events);
        if let Some(p) = self.peers.get_mut(key) {
            p.events(&mut events);
        }
        for ev in events.drain(..) {
            self.peer_event(key, ev);
        }
        self.events = events;
        let mut reads = std::mem::take(&mut self.reads);
        if let Some(pc) = self.peers.get_mut(key).and_then(|p| p.pc.as_mut()) {
            while let Some(m) = pc.poll_read() {
                reads.push(m.message);
            }
        }
        for m in reads.drain(..) {
            match m {
                RTCMessage::RtpPacket(track, pkt) => self.ingress(key, &track, pkt, now),
                RTCMessage::RtcpPacket(track, packets)
                    if packets.iter().any(is_keyframe_request) =>
                {
                    self.relay_keyframe_request(key, &track, now);
                }
                _ => {}
            }
        }
        self.reads = reads;
        self.mark(key);
    }

    fn peer_event(&mut self, key: usize, ev: PeerEvent) {
        let Some(p) = self.peers.get(key) else { return };
        let (room, peer) = (p.room, p.id.clone());
        match ev {
            PeerEvent::Connected => self.emit(room, PlaneEvent::Connected { peer }),
            PeerEvent::Failed => self.emit(
                room,
                PlaneEvent::Failed {
                    peer,
                    reason: "ICE/DTLS failed".to_owned(),
                },
            ),
            PeerEvent::TrackOpened {
                track_id,
                receiver,
                ssrc,
            } => {
                if let Some(r) = self.rooms.get_mut(&room) {
                    r.fanouts.entry(track_id).or_default().source = Some(Source {
                        peer: key,
                        receiver,
                        ssrc,
                    });
                }
                self.count_fanouts();
            }
            PeerEvent::TrackClosed(ingress) => self.end_ingress(key, room, ingress, true),
        }
    }

    fn end_ingress(&mut self, key: usize, room: u64, ingress: Ingress, report: bool) {
        if let Some(r) = self.rooms.get_mut(&room) {
            if let Some(f) = r.fanouts.get_mut(&ingress.track_id) {
                if f.source.is_some_and(|s| s.peer == key) {
                    f.source = None;
                }
            }
            release(r, &ingress.track_id);
        }
        self.count_fanouts();
        if report {
            if let Some(p) = self.peers.get(key) {
                let peer = p.id.clone();
                self.emit(
                    room,
                    PlaneEvent::TrackEnded {
                        peer,
                        track_id: ingress.track_id.to_string(),
                    },
                );
            }
        }
    }

    /// One RTP packet of `key`'s published track (the connection's id `track`): reported,
    /// judged for voice, and written into every subscriber leg.
    fn ingress(&mut self, key: usize, track: &str, pkt: rtc::rtp::Packet, now: Instant) {
        let now_ms = self.now_ms(now);
        let Some(p) = self.peers.get_mut(key) else {
            return;
        };
        let room_id = p.room;
        let Some(ing) = p.ingress.get_mut(track) else {
            return;
        };
        let first = !ing.started;
        ing.started = true;
        let from = ing.ext;
        let track_id = Arc::clone(&ing.track_id);
        let speech = ing.vad.as_mut().and_then(|v| {
            let level = pkt
                .header
                .get_extension(from.audio_level)?
                .first()
                .copied()?;
            v.packet(now_ms, level & 0x7f)
        });
        if first || speech.is_some() {
            let peer = p.id.clone();
            if first {
                self.emit(
                    room_id,
                    PlaneEvent::TrackStarted {
                        peer: peer.clone(),
                        track_id: track_id.to_string(),
                    },
                );
                // Subscribers that joined before media flowed asked for a keyframe into the
                // void.
                self.send_pli(room_id, &track_id, now);
            }
            if let Some(speech) = speech {
                self.emit(
                    room_id,
                    PlaneEvent::VoiceActivity {
                        peer,
                        track_id: track_id.to_string(),
                        speech,
                    },
                );
            }
        }
        let Some(f) = self
            .rooms
            .get(&room_id)
            .and_then(|r| r.fanouts.get(&track_id))
        else {
            return;
        };
        if f.legs.is_empty() {
            return;
        }
        let stamp = f.legs.iter().any(|l| l.ext.abs_send_time != 0);
        let carried = Carried::of(&pkt, from, stamp.then(SystemTime::now));
        for leg in &f.legs {
            let Some(sub) = self.peers.get_mut(leg.peer) else {
                continue;
            };
            self.current = Some(leg.peer);
            let (Some(slot), Some(pc)) = (sub.outbound.get_mut(leg.slot), sub.pc.as_mut()) else {
                continue;
            };
            let Some(mut out) = rewrite(&pkt, slot.ssrc, leg.pt, leg.ext, &carried) else {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            slot.continuity.map(slot.source, &mut out.header);
            let bytes = out.payload.len();
            match pc
                .rtp_sender(slot.sender)
                .map(|mut s| s.write_rtp(now, out))
            {
                Some(Ok(())) => {
                    self.stats.forwarded.fetch_add(1, Ordering::Relaxed);
                    self.metrics.forwarded(bytes);
                }
                _ => {
                    self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
            if !sub.dirty {
                sub.dirty = true;
                self.dirty.push(leg.peer);
            }
        }
        self.current = Some(key);
    }

    /// Asks the publisher of `track` for a keyframe, if its media was announced.
    fn send_pli(&mut self, room: u64, track: &str, now: Instant) -> bool {
        let Some(src) = self
            .rooms
            .get(&room)
            .and_then(|r| r.fanouts.get(track))
            .and_then(|f| f.source)
        else {
            return false;
        };
        let Some(pc) = self.peers.get_mut(src.peer).and_then(|p| p.pc.as_mut()) else {
            return false;
        };
        let sent = pc.rtp_receiver(src.receiver).is_some_and(|mut r| {
            r.write_rtcp(
                now,
                vec![Box::new(PictureLossIndication {
                    sender_ssrc: 0,
                    media_ssrc: src.ssrc,
                })],
            )
            .is_ok()
        });
        if sent {
            self.stats.sent.fetch_add(1, Ordering::Relaxed);
            self.mark(src.peer);
        }
        sent
    }

    /// A subscriber's PLI/FIR about its slot whose local track is `local_track`.
    fn relay_keyframe_request(&mut self, key: usize, local_track: &str, now: Instant) {
        let Some(p) = self.peers.get(key) else { return };
        let Some(track) = p.slot_of(local_track).and_then(|s| s.live.clone()) else {
            return;
        };
        let room = p.room;
        let has_source = self
            .rooms
            .get(&room)
            .and_then(|r| r.fanouts.get(&track))
            .is_some_and(|f| f.source.is_some());
        if has_source {
            // Counted before sending, so the count is visible once the PLI lands.
            self.stats.relayed.fetch_add(1, Ordering::Relaxed);
            self.send_pli(room, &track, now);
        }
    }

    fn timeouts(&mut self, now: Instant) {
        let now_ms = self.now_ms(now);
        let due: Vec<usize> = self
            .peers
            .iter()
            .filter(|(_, p)| p.deadline(self.epoch).is_some_and(|t| t <= now))
            .map(|(k, _)| k)
            .collect();
        for key in due {
            let Some(p) = self.peers.get_mut(key) else {
                continue;
            };
            self.current = Some(key);
            if p.timeout.is_some_and(|t| t <= now) {
                if let Some(pc) = p.pc.as_mut() {
                    let _ = pc.handle_timeout(now);
                }
            }
            let mut quiet = Vec::new();
            for i in p.ingress.values_mut() {
                if let Some(speech) = i.vad.as_mut().and_then(|v| {
                    v.idle_deadline()
                        .filter(|ms| *ms <= now_ms)
                        .and_then(|_| v.idle(now_ms))
                }) {
                    quiet.push((i.track_id.to_string(), speech));
                }
            }
            let (room, peer) = (p.room, p.id.clone());
            for (track_id, speech) in quiet {
                self.emit(
                    room,
                    PlaneEvent::VoiceActivity {
                        peer: peer.clone(),
                        track_id,
                        speech,
                    },
                );
            }
            self.pump(key, now);
        }
    }

    fn count_fanouts(&self) {
        let fanouts = self.rooms.values().map(|r| r.fanouts.len()).sum();
        let connections = self.peers.iter().filter(|(_, p)| p.pc.is_some()).count();
        gauge(&LIVE_FANOUTS, &self.stats.fanouts, fanouts);
        gauge(&LIVE_PEERS, &self.stats.peers, self.peers.len());
        gauge(&LIVE_CONNECTIONS, &self.stats.connections, connections);
    }

    fn command(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Open { room, sink } => {
                self.rooms.insert(
                    room,
                    Room {
                        sink,
                        peers: HashMap::new(),
                        fanouts: HashMap::new(),
                    },
                );
            }
            Cmd::Close { room } => {
                let keys: Vec<usize> = self
                    .rooms
                    .get(&room)
                    .map(|r| r.peers.values().copied().collect())
                    .unwrap_or_default();
                for key in keys {
                    self.remove_peer(key);
                }
                self.rooms.remove(&room);
            }
            Cmd::Plane { room, command } => self.plane_command(room, command),
        }
        self.count_fanouts();
    }

    fn plane_command(&mut self, room: u64, command: PlaneCommand) {
        let Some(r) = self.rooms.get_mut(&room) else {
            return;
        };
        let now = Instant::now();
        match command {
            PlaneCommand::AddPeer { peer } => {
                if let std::collections::hash_map::Entry::Vacant(e) = r.peers.entry(peer) {
                    let key = self.peers.insert(Peer::new(room, e.key().clone()));
                    e.insert(key);
                }
            }
            PlaneCommand::RemovePeer { peer } => {
                if let Some(key) = r.peers.get(&peer).copied() {
                    self.remove_peer(key);
                }
            }
            PlaneCommand::Offer { peer, offer } => {
                if let Some(key) = r.peers.get(&peer).copied() {
                    self.offer(key, offer, now);
                }
            }
            PlaneCommand::RemoteCandidate {
                peer,
                candidate,
                sdp_m_line_index,
            } => {
                let Some(key) = r.peers.get(&peer).copied() else {
                    return;
                };
                self.current = Some(key);
                let Some(pc) = self.peers.get_mut(key).and_then(|p| p.pc.as_mut()) else {
                    return;
                };
                let init = RTCIceCandidateInit {
                    candidate,
                    sdp_mline_index: sdp_m_line_index.and_then(|i| u16::try_from(i).ok()),
                    ..Default::default()
                };
                if let Err(e) = pc.add_remote_candidate(init) {
                    tracing::debug!(peer = %Untrusted(&peer), error = %Untrusted(&e), "remote candidate rejected");
                }
                self.pump(key, now);
            }
            PlaneCommand::RequestKeyframe { track_id, .. } => {
                self.send_pli(room, &track_id, now);
            }
        }
    }

    fn offer(&mut self, key: usize, offer: PlaneOffer, now: Instant) {
        let negotiation = offer.negotiation;
        let Some(p) = self.peers.get_mut(key) else {
            return;
        };
        let (room, peer) = (p.room, p.id.clone());
        self.current = Some(key);
        let local = self.local;
        let applied = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            p.apply_offer(offer, local, now)
        }));
        let Ok(result) = applied else {
            // The seam owes the core an answer for every offer: a refusal, then the failure.
            tracing::error!(peer = %peer, "media worker: applying an offer panicked");
            self.emit(
                room,
                PlaneEvent::Answer {
                    peer,
                    negotiation,
                    result: Err("the media stack failed on this offer".to_owned()),
                },
            );
            self.fail_peer(key);
            return;
        };
        let Some(p) = self.peers.get_mut(key) else {
            return;
        };
        let changes = match result {
            Ok(changes) => changes,
            Err(reason) => {
                // A client can send offers webrtc refuses as fast as it likes.
                if let Some(suppressed) = p.warnings.admit(now) {
                    tracing::warn!(peer = %peer, reason = %Untrusted(&reason), suppressed, "offer not applied");
                }
                self.emit(
                    room,
                    PlaneEvent::Answer {
                        peer,
                        negotiation,
                        result: Err(reason),
                    },
                );
                self.pump(key, now);
                return;
            }
        };
        if let Some(u) = &p.ufrag {
            self.demux.set_ufrag(u, key);
        }
        let attached: Vec<(usize, Arc<str>, u8, ExtIds)> = changes
            .attached
            .iter()
            .filter_map(|&(slot, pt, ext)| {
                let track = p.outbound.get(slot)?.live.clone()?;
                Some((slot, track, pt, ext))
            })
            .collect();
        let host = p.host_candidate.clone();
        if let Some(r) = self.rooms.get_mut(&room) {
            for (slot, track) in &changes.detached {
                r.detach(key, *slot, track);
            }
        }
        for ingress in changes.ended {
            self.end_ingress(key, room, ingress, true);
        }
        if let Some(r) = self.rooms.get_mut(&room) {
            for (slot, track, pt, ext) in &attached {
                r.fanouts
                    .entry(Arc::clone(track))
                    .or_default()
                    .legs
                    .push(Leg {
                        peer: key,
                        slot: *slot,
                        pt: *pt,
                        ext: *ext,
                    });
            }
        }
        let trickle = !changes.answer.contains("a=candidate:");
        self.emit(
            room,
            PlaneEvent::Answer {
                peer: peer.clone(),
                negotiation,
                result: Ok(changes.answer),
            },
        );
        if let (true, Some(candidate)) = (trickle, host) {
            self.emit(room, PlaneEvent::LocalCandidate { peer, candidate });
        }
        // A new subscriber sees nothing until the next keyframe.
        for (_, track, ..) in &attached {
            self.send_pli(room, track, now);
        }
        self.pump(key, now);
    }

    /// Lets go of what `key`'s connection carried: its slots' legs, its published tracks
    /// (reported ended when `report`), its demux routes.
    fn release_media(
        &mut self,
        key: usize,
        room: u64,
        outbound: Vec<OutSlot>,
        ingress: HashMap<String, Ingress>,
        report: bool,
    ) {
        if let Some(r) = self.rooms.get_mut(&room) {
            for (i, slot) in outbound.into_iter().enumerate() {
                if let Some(track) = &slot.live {
                    r.detach(key, i, track);
                }
            }
        }
        for (_, i) in ingress {
            self.end_ingress(key, room, i, report);
        }
        self.demux.remove(key);
    }

    /// Forgets `key` everywhere: legs, sources, demux, its room; closes its connection and its
    /// TURN allocations. Reports nothing about it.
    fn remove_peer(&mut self, key: usize) {
        let Some(mut p) = self.peers.try_remove(key) else {
            return;
        };
        if let Some(r) = self.rooms.get_mut(&p.room) {
            r.peers.remove(&p.id);
        }
        let outbound = std::mem::take(&mut p.outbound);
        let ingress = std::mem::take(&mut p.ingress);
        self.release_media(key, p.room, outbound, ingress, false);
        if let Some(pc) = p.pc.as_mut() {
            let _ = pc.close();
        }
        if let Some(turn) = &self.turn {
            turn.revoke_peer(&p.id);
        }
        let suppressed = p.warnings.take_suppressed();
        if suppressed > 0 {
            tracing::warn!(peer = %p.id, suppressed, "warnings suppressed for this peer");
        }
        tracing::debug!(peer = %p.id, "media plane peer removed");
    }
}

/// Drops the fanout of `track` if nothing uses it any more.
fn release(room: &mut Room, track: &str) {
    if room
        .fanouts
        .get(track)
        .is_some_and(|f| f.source.is_none() && f.legs.is_empty())
    {
        room.fanouts.remove(track);
    }
}

#[cfg(test)]
mod tests {
    use super::super::peer::PANIC_FAILPOINT;
    use super::*;
    use crate::engine::plane::{MLine, MLineRole, MediaKind};
    use std::sync::Mutex;

    fn worker() -> (Worker, Arc<Mutex<Vec<PlaneEvent>>>) {
        let local = SocketAddr::from(([127, 0, 0, 1], 9));
        let mut w = Worker::new(&PlaneConfig::default(), local, Arc::default());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&seen);
        w.command(Cmd::Open {
            room: 1,
            sink: PlaneSink::new(move |ev| sink.lock().unwrap().push(ev)),
        });
        for peer in ["a", "b"] {
            w.command(Cmd::Plane {
                room: 1,
                command: PlaneCommand::AddPeer { peer: peer.into() },
            });
        }
        (w, seen)
    }

    fn offer(peer: &str, negotiation: u64, sdp: &str) -> Cmd {
        Cmd::Plane {
            room: 1,
            command: PlaneCommand::Offer {
                peer: peer.into(),
                offer: PlaneOffer {
                    negotiation,
                    sdp: sdp.into(),
                    mlines: vec![MLine {
                        mid: "0".into(),
                        role: MLineRole::Inbound {
                            kind: MediaKind::Audio,
                            track_id: "t".into(),
                        },
                    }],
                },
            },
        }
    }

    fn answers(seen: &Mutex<Vec<PlaneEvent>>) -> Vec<(String, u64, bool)> {
        seen.lock()
            .unwrap()
            .iter()
            .filter_map(|e| match e {
                PlaneEvent::Answer {
                    peer,
                    negotiation,
                    result,
                } => Some((peer.clone(), *negotiation, result.is_ok())),
                _ => None,
            })
            .collect()
    }

    fn failed(seen: &Mutex<Vec<PlaneEvent>>) -> Vec<String> {
        seen.lock()
            .unwrap()
            .iter()
            .filter_map(|e| match e {
                PlaneEvent::Failed { peer, .. } => Some(peer.clone()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_panic_applying_an_offer_answers_fails_that_peer_and_the_worker_goes_on() {
        let (mut w, seen) = worker();
        w.guarded(|w| w.command(offer("a", 1, PANIC_FAILPOINT)));
        assert_eq!(answers(&seen), [("a".to_owned(), 1, false)]);
        assert_eq!(failed(&seen), ["a"]);
        // Both peers are still served: a refused offer is answered, for the failed peer too.
        w.guarded(|w| w.command(offer("b", 1, "not an sdp")));
        w.guarded(|w| w.command(offer("a", 2, "not an sdp")));
        assert_eq!(
            answers(&seen),
            [
                ("a".to_owned(), 1, false),
                ("b".to_owned(), 1, false),
                ("a".to_owned(), 2, false)
            ]
        );
        assert_eq!(w.peers.len(), 2);
    }

    #[test]
    fn a_panic_while_stepping_a_peer_fails_that_peer_only() {
        let (mut w, seen) = worker();
        let a = w.rooms[&1].peers["a"];
        w.guarded(|w| {
            w.current = Some(a);
            panic!("the media stack fell over");
        });
        assert_eq!(failed(&seen), ["a"]);
        // A panic charged to no peer fails none.
        w.guarded(|_| panic!("between peers"));
        assert_eq!(failed(&seen), ["a"]);
        assert_eq!(w.peers.len(), 2);
    }
}
