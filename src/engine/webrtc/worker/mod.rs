//! The media plane: rooms sharded over worker threads, each worker one event loop that drives
//! webrtc-rs's sans-IO `rtc` core (`RTCPeerConnection`: `handle_read`, `poll_read`,
//! `poll_write`, `handle_timeout`) for every connection of its rooms, on one shared socket.
//!
//! A forwarded packet goes from the publisher's connection to each subscriber's in the same
//! call stack, and from there through the TURN core to the client in a `sendmmsg` batch: no
//! channel, no task wake-up, no per-connection driver. The first worker also reads the TURN
//! listening socket, so a client's datagram reaches its connection the same way (one fabric
//! hand-off when its room is on another worker). SDP reading, the per-leg rewrite and the
//! interceptor chain are [`super`]'s; voice activity is [`crate::engine::vad`]'s.
//!
//! It owns the worker threads and the per-room handles ([`WorkerPlane`]). It must never block
//! the room actor (every call is a bounded `try_send` to the worker), run one room on two
//! workers, or keep anything of a peer after its removal was applied (connection, demux
//! entries, legs, TURN allocations).

mod demux;
mod event_loop;
mod peer;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use net_tokio::sync::mpsc;

use super::{PlaneConfig, PlaneStats};
use crate::engine::plane::{
    MediaPlane, PlaneCommand, PlaneEvent, PlaneFactory, PlaneOffer, PlaneSink,
};

pub use demux::{binding_ufrag, Demux};

/// Process-wide gauges of live plane objects, for soak tests and leak hunting: after every
/// peer has been removed, all of them are back to where they were.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LiveObjects {
    /// Peers the workers hold.
    pub peers: usize,
    /// Their connections (a peer has one from its first offer on).
    pub connections: usize,
    /// Published tracks with a source or a leg.
    pub fanouts: usize,
}

/// The gauges over every worker in this process.
pub fn live_objects() -> LiveObjects {
    event_loop::live_objects()
}

/// Commands queued to one worker; bounded so a runaway producer surfaces as a failure.
const WORKER_QUEUE: usize = 8192;

enum Cmd {
    Open { room: u64, sink: PlaneSink },
    Close { room: u64 },
    Plane { room: u64, command: PlaneCommand },
}

/// The worker threads of one server. Dropping it (and every plane it built) ends them.
pub struct Workers {
    workers: Vec<WorkerHandle>,
    next_room: AtomicU64,
}

struct WorkerHandle {
    tx: mpsc::Sender<Cmd>,
    local: SocketAddr,
    stats: Arc<event_loop::Stats>,
    rooms: AtomicUsize,
}

impl Workers {
    /// Starts `n` workers (at least one), each with its socket on the first of `cfg.ice_ips`.
    pub fn start(cfg: PlaneConfig, n: usize) -> std::io::Result<Arc<Workers>> {
        let ip = cfg
            .ice_ips
            .first()
            .copied()
            .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST));
        let mut workers = Vec::new();
        for i in 0..n.max(1) {
            let socket = std::net::UdpSocket::bind(SocketAddr::new(ip, 0))?;
            socket.set_nonblocking(true)?;
            let local = socket.local_addr()?;
            let (tx, rx) = mpsc::channel(WORKER_QUEUE);
            let stats = Arc::new(event_loop::Stats::default());
            let worker = event_loop::Worker::new(&cfg, local, Arc::clone(&stats));
            // Registered before the thread starts, so the fabric knows the socket (and TURN
            // permits it) by the time a room can hand it out.
            let endpoint = cfg.fabric.register(local, None, crate::fabric::Kind::Sfu);
            // The first worker reads the TURN listening socket: a client's datagram for one of
            // its rooms reaches the connection without a task in between, one for another
            // worker's room crosses the fabric once (see `TurnServer::listener_for_workers`).
            // Every worker reading it cost more than that hop: each datagram woke them all,
            // and half went to the wrong one (BENCHMARKS.md).
            let listener = match (&cfg.turn, i) {
                (Some(turn), 0) => Some(turn.listener_for_workers()?),
                _ => None,
            };
            // The worker logs where its starter does (a server started with its own
            // subscriber, as the log tests do, keeps its media workers' lines).
            let dispatch = tracing::dispatcher::get_default(|d| d.clone());
            let (ready_tx, ready) = std::sync::mpsc::sync_channel(1);
            std::thread::Builder::new()
                .name(format!("media-worker-{i}"))
                .spawn(move || {
                    tracing::dispatcher::with_default(&dispatch, || {
                        worker.run(socket, endpoint, listener, rx, ready_tx)
                    })
                })?;
            // A worker that cannot start is the server's start-up error, not a later panic.
            ready.recv().map_err(|_| {
                std::io::Error::other(format!("media worker {i} stopped before it was ready"))
            })??;
            workers.push(WorkerHandle {
                tx,
                local,
                stats,
                rooms: AtomicUsize::new(0),
            });
        }
        Ok(Arc::new(Workers {
            workers,
            next_room: AtomicU64::new(1),
        }))
    }

    /// Each worker's socket address (every connection of that worker answers on it).
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.workers.iter().map(|w| w.local).collect()
    }

    /// Counters over every worker.
    pub fn stats(&self) -> PlaneStats {
        let mut s = PlaneStats::default();
        for w in &self.workers {
            let t = w.stats.snapshot();
            s.peers += t.peers;
            s.fanouts += t.fanouts;
            s.forwarded += t.forwarded;
            s.dropped += t.dropped;
            s.keyframe_requests_relayed += t.keyframe_requests_relayed;
            s.keyframe_requests_sent += t.keyframe_requests_sent;
        }
        s
    }

    /// A plane for a new room, on the worker with the fewest rooms.
    pub fn plane(self: &Arc<Self>, sink: PlaneSink) -> WorkerPlane {
        let (index, w) = self
            .workers
            .iter()
            .enumerate()
            .min_by_key(|(_, w)| w.rooms.load(Ordering::Relaxed))
            .expect("at least one worker");
        w.rooms.fetch_add(1, Ordering::Relaxed);
        let room = self.next_room.fetch_add(1, Ordering::Relaxed);
        let plane = WorkerPlane {
            workers: Arc::clone(self),
            index,
            room,
            sink: sink.clone(),
        };
        plane.send(None, Cmd::Open { room, sink });
        plane
    }
}

/// A [`PlaneFactory`] building each room's plane on `workers`.
pub fn factory(workers: Arc<Workers>) -> PlaneFactory {
    PlaneFactory::new(move |_room, sink| Box::new(workers.plane(sink)))
}

/// One room's handle on its worker. Dropping it tears the room's peers down.
pub struct WorkerPlane {
    workers: Arc<Workers>,
    index: usize,
    room: u64,
    sink: PlaneSink,
}

impl WorkerPlane {
    fn send(&self, peer: Option<&str>, cmd: Cmd) {
        let w = &self.workers.workers[self.index];
        if w.tx.try_send(cmd).is_err() {
            if let Some(peer) = peer {
                self.sink.send(PlaneEvent::Failed {
                    peer: peer.to_owned(),
                    reason: "media worker queue full".to_owned(),
                });
            } else {
                tracing::warn!(room = self.room, "media worker queue full or gone");
            }
        }
    }

    fn command(&self, peer: &str, command: PlaneCommand) {
        self.send(
            Some(peer),
            Cmd::Plane {
                room: self.room,
                command,
            },
        );
    }
}

impl MediaPlane for WorkerPlane {
    fn add_peer(&mut self, peer: &str) {
        self.command(
            peer,
            PlaneCommand::AddPeer {
                peer: peer.to_owned(),
            },
        );
    }

    fn remove_peer(&mut self, peer: &str) {
        self.command(
            peer,
            PlaneCommand::RemovePeer {
                peer: peer.to_owned(),
            },
        );
    }

    fn offer(&mut self, peer: &str, offer: PlaneOffer) {
        self.command(
            peer,
            PlaneCommand::Offer {
                peer: peer.to_owned(),
                offer,
            },
        );
    }

    fn remote_candidate(&mut self, peer: &str, candidate: &str, sdp_m_line_index: Option<u32>) {
        let candidate = candidate.strip_prefix("a=").unwrap_or(candidate);
        if candidate.is_empty() {
            return; // end-of-candidates marker
        }
        self.command(
            peer,
            PlaneCommand::RemoteCandidate {
                peer: peer.to_owned(),
                candidate: candidate.to_owned(),
                sdp_m_line_index,
            },
        );
    }

    fn request_keyframe(&mut self, publisher: &str, track_id: &str) {
        self.command(
            publisher,
            PlaneCommand::RequestKeyframe {
                publisher: publisher.to_owned(),
                track_id: track_id.to_owned(),
            },
        );
    }
}

impl Drop for WorkerPlane {
    fn drop(&mut self) {
        self.workers.workers[self.index]
            .rooms
            .fetch_sub(1, Ordering::Relaxed);
        self.send(None, Cmd::Close { room: self.room });
    }
}
