//! The I/O driver of dist links: TCP connections carrying [`LinkCore`]s, one task per link.
//!
//! Owns the sockets, the one task per link that steps its core, the node's table of links (at
//! most one live link per peer node name) and the bounded channels between a link and local
//! code: commands in through [`LinkHandle`], [`Event`]s out through [`Link::events`]. Every
//! decision about the link (handshake checks, liveness, the output bound, the monitor tables)
//! stays in the core; this module only moves bytes, time and commands into it and bytes and
//! events out of it, in the core's order.
//!
//! It must never buffer outside a bound: the core's output is taken only when the socket can
//! take it (at most one chunk in flight), events wait in a bounded channel and, while it is
//! full, reads stop (the core then holds at most one read's worth of events) and a consumer
//! that leaves it full for one tick takes the link down as [`DownCause::Overloaded`], the
//! core's own overload policy, rather than dropping an event or growing. It must never end an
//! event stream before every event the core emitted (the last of them its `Noconnection`
//! DOWNs) was handed over, never block a task on anything but its own channels and socket (no
//! `std::thread::sleep`, time only through [`crate::rt::time`]), and never decide anything
//! about processes: `Watch` and `Deliver` go to the consumer, which owns the process table.
//!
//! Order: one link carries everything between two nodes through one FIFO command channel into
//! the core's FIFO output, so whatever a process queued before its `local_exited` (or anything
//! else) reaches the peer before the `Down` frames that call produces.
//!
//! # Handshake
//!
//! The dialer speaks first: its core writes its `Hello` and then holds everything else until
//! the acceptor's `Hello` arrives. The acceptor reads the dialer's `Hello` with a [`Decoder`]
//! before it writes anything, decides whether to admit the connection (below), and only then
//! builds its core, expecting the announced node, and feeds it the bytes read so far. So a
//! refused connection is closed before the acceptor says a word, and the dialer, whose core
//! never saw the acceptor's `Hello`, has sent nothing but its own: no frame is ever delivered
//! on a connection that loses.
//!
//! # One link per node pair
//!
//! Node names are totally ordered; when two connections between nodes `a < b` race, the one
//! dialed by `a` (the smaller name) wins. The acceptor applies the rule, looking at its table
//! entry for the peer `p` that announced itself:
//!
//! - none: admit;
//! - we are dialing `p`: admit if `p < me` (`p` refuses our dial), refuse if `me < p` (`p`
//!   admits ours);
//! - a live link to an older incarnation of `p`: `p` restarted, so the old link is closed and
//!   the new one admitted; to a newer incarnation: refuse (a late dial of a dead incarnation);
//! - a live link to the same incarnation: `p` dials only when it has no link, so ours is stale
//!   (it will notice within the silence bound) and is replaced, except when we dialed it and
//!   `me < p`: then `p` may be the loser of a race still in flight (it dialed before it
//!   admitted ours), so its dial is refused and `p`, if it really lost the link, redials once
//!   ours has gone down.
//!
//! [`DistNode::connect`] returns the one link either way: a dial refused by a smaller peer
//! waits (up to one silence period) for that peer's winning dial to be admitted here, and a
//! dial answered after an inbound link was admitted is dropped unread for it.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, ToSocketAddrs};
use tokio::sync::{mpsc, oneshot, Notify, Semaphore};

use super::frame::{Decoder, Frame, MAX_NODE_BYTES};
use super::link::{DownCause, Event, LinkConfig, LinkCore, NodeId};
use crate::rt::time::{self, Duration, Timer};

mod handle;
mod task;

use handle::HandleInner;
pub use handle::LinkHandle;
use task::Driver;

#[cfg(test)]
mod tests;

/// Events a link holds for its consumer before it stops reading from the peer; the consumer
/// then has one tick to make room before the link goes down as overloaded.
pub const EVENT_CAPACITY: usize = 1024;
/// Commands from handles waiting for the driver; a full channel makes callers wait, briefly:
/// the driver takes commands whenever it runs, since they only go into the core.
const COMMAND_CAPACITY: usize = 256;
/// New links not yet taken by [`DistListener::accept`]; handshakes wait behind them.
const LINKS_CAPACITY: usize = 16;
/// Inbound connections between TCP accept and the end of their handshake.
const MAX_HANDSHAKES: usize = 64;
const READ_CHUNK: usize = 64 * 1024;
/// Commands taken per turn of the loop before it waits on the socket again, so a busy socket
/// cannot starve handles and a busy sender cannot starve the socket.
const COMMAND_BATCH: usize = 64;
/// Length prefix, tag, version, incarnation, name length, name: the largest `Hello`.
const MAX_HELLO_BYTES: usize = 4 + 1 + 1 + 8 + 2 + MAX_NODE_BYTES;

/// A new link, inbound or outbound, handed out once by [`DistListener::accept`].
#[derive(Debug)]
pub struct Link {
    pub handle: LinkHandle,
    /// The link's events in the core's order. Ends after the last event of a link that went
    /// down (its `Noconnection` DOWNs), never before.
    pub events: mpsc::Receiver<Event>,
}

/// Why [`DistNode::connect`] gave no link.
#[derive(Debug, Error)]
pub enum ConnectError {
    #[error("connect: {0}")]
    Io(#[from] io::Error),
    #[error("no answer within the silence timeout")]
    Timeout,
    #[error("handshake failed: {0}")]
    Handshake(DownCause),
    /// Another `connect` to this peer is under way; its outcome will be in the table.
    #[error("a dial to this peer is already under way")]
    InProgress,
    #[error("the dist listener is gone")]
    Shutdown,
}

enum Slot {
    /// A `connect` to this peer is under way.
    Dialing { id: u64 },
    Up {
        handle: LinkHandle,
        dialed_by_me: bool,
    },
}

struct Shared {
    /// Its name never changes; its incarnation moves on with each new registration.
    me: Mutex<NodeId>,
    config: LinkConfig,
    next_id: AtomicU64,
    /// By peer name; the one place that says which connection is the link to a node.
    table: Mutex<BTreeMap<String, Slot>>,
    links: mpsc::Sender<Link>,
    /// Woken whenever a link is recorded, for a dial that lost a race to wait on the winner.
    registered: Notify,
}

impl Shared {
    fn me(&self) -> NodeId {
        self.me.lock().expect("dist me lock").clone()
    }

    fn id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    fn table(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Slot>> {
        self.table.lock().expect("dist table lock")
    }

    /// A live link to `name`, if the table holds one.
    fn live(&self, name: &str) -> Option<LinkHandle> {
        match self.table().get(name) {
            Some(Slot::Up { handle, .. }) if !handle.is_down() => Some(handle.clone()),
            _ => None,
        }
    }

    /// Makes the driver of an admitted connection and records it as the link to its peer.
    /// Called with the table locked, so admission and registration are one step.
    fn start(
        self: &Arc<Self>,
        table: &mut BTreeMap<String, Slot>,
        stream: TcpStream,
        core: LinkCore,
        id: u64,
        dialed_by_me: bool,
    ) -> Link {
        let (cmd_tx, cmd_rx) = mpsc::channel(COMMAND_CAPACITY);
        let (ev_tx, ev_rx) = mpsc::channel(EVENT_CAPACITY);
        let handle = LinkHandle(Arc::new(HandleInner {
            id,
            peer: core.peer().clone(),
            cmds: cmd_tx,
            down: AtomicBool::new(false),
            cause: Mutex::new(None),
            closing: AtomicBool::new(false),
            close: Notify::new(),
        }));
        if let Some(Slot::Up { handle: old, .. }) = table.insert(
            handle.peer().name.clone(),
            Slot::Up {
                handle: handle.clone(),
                dialed_by_me,
            },
        ) {
            old.close();
        }
        self.registered.notify_waiters();
        let (rd, wr) = tokio::io::split(stream);
        let driver = Driver {
            core,
            rd,
            wr,
            cmds: cmd_rx,
            events: ev_tx,
            held: None,
            blocked_since: None,
            out: Vec::new(),
            written: 0,
            handle: handle.clone(),
            shared: Arc::clone(self),
        };
        crate::rt::spawn_task(driver.run());
        Link {
            handle,
            events: ev_rx,
        }
    }

    fn forget(&self, name: &str, id: u64) {
        let mut table = self.table();
        let ours = match table.get(name) {
            Some(Slot::Dialing { id: i }) => *i == id,
            Some(Slot::Up { handle, .. }) => handle.0.id == id,
            None => false,
        };
        if ours {
            table.remove(name);
        }
    }
}

/// What the acceptor does with a connection from `peer` (the module docs give the rule).
#[derive(Debug, PartialEq, Eq)]
enum Admit {
    Accept,
    Refuse,
}

fn admit(me: &NodeId, peer: &NodeId, slot: Option<&Slot>) -> Admit {
    let accept_if = |yes: bool| if yes { Admit::Accept } else { Admit::Refuse };
    match slot {
        None => Admit::Accept,
        Some(Slot::Dialing { .. }) => accept_if(peer.name < me.name),
        Some(Slot::Up { handle, .. }) if handle.is_down() => Admit::Accept,
        Some(Slot::Up {
            handle,
            dialed_by_me,
        }) => {
            let old = handle.peer().incarnation;
            if peer.incarnation != old {
                accept_if(peer.incarnation > old)
            } else {
                accept_if(!(*dialed_by_me && me.name < peer.name))
            }
        }
    }
}

/// A node's dist endpoint: dials peers and registers every link, inbound or outbound. Clone it
/// into whatever dials; [`DistListener`] hands out the links.
#[derive(Clone)]
pub struct DistNode(Arc<Shared>);

impl DistNode {
    pub fn me(&self) -> NodeId {
        self.0.me()
    }

    /// This node is now incarnation `incarnation` (a new registration): every link made under
    /// an older one is closed (peers see its monitors end with `noconnection`, as for a node
    /// that restarted) and new links announce the new number. No-op if unchanged.
    pub fn set_incarnation(&self, incarnation: u64) {
        {
            let mut me = self.0.me.lock().expect("dist me lock");
            if me.incarnation == incarnation {
                return;
            }
            me.incarnation = incarnation;
        }
        let table = self.0.table();
        for slot in table.values() {
            if let Slot::Up { handle, .. } = slot {
                handle.close();
            }
        }
    }

    /// The live link to the node named `name`, if any.
    pub fn link(&self, name: &str) -> Option<LinkHandle> {
        self.0.live(name)
    }

    /// The link to `peer` at `addr`: the live one if there is one, else a new connection,
    /// which must answer as exactly `peer` (name and incarnation). A new link is also handed
    /// out by [`DistListener::accept`]; this returns once it is there (or the listener is gone).
    ///
    /// Cancel-safe: the dial runs to its end in a task of its own, whoever stops waiting for
    /// it. A caller given up on half-way (a join's patience is shorter than a dial's silence
    /// bound) would otherwise leave the table saying "dialing" for good: every later `connect`
    /// would answer [`ConnectError::InProgress`], and the peer, when smaller, would refuse
    /// every dial from here waiting for that one (the cluster simulation's seed 554).
    pub async fn connect<A: ToSocketAddrs + Send + 'static>(
        &self,
        addr: A,
        peer: NodeId,
    ) -> Result<LinkHandle, ConnectError> {
        let shared = &self.0;
        let id = shared.id();
        {
            let mut table = shared.table();
            match table.get(&peer.name) {
                Some(Slot::Up { handle, .. }) if !handle.is_down() => return Ok(handle.clone()),
                Some(Slot::Dialing { .. }) => return Err(ConnectError::InProgress),
                _ => {}
            }
            table.insert(peer.name.clone(), Slot::Dialing { id });
        }
        let name = peer.name.clone();
        let smaller = name < shared.me().name;
        let (tx, rx) = oneshot::channel();
        let (node, dialed) = (self.clone(), name.clone());
        crate::rt::spawn_task(async move {
            let result = node.dial(addr, peer, id).await;
            if result.is_err() {
                node.0.forget(&dialed, id);
            }
            let _ = tx.send(result);
        });
        let result = rx.await.unwrap_or(Err(ConnectError::Shutdown));
        let Err(err) = result else {
            return result;
        };
        // Lost the race to an inbound link from the same peer: that one is the link. A smaller
        // peer that closed our dial unanswered did so because its own dial wins, which may
        // still be on its way here; it gets one silence period to arrive.
        let refused = matches!(err, ConnectError::Handshake(DownCause::TransportClosed));
        let wait = if smaller && refused {
            shared.config.silence
        } else {
            Duration::ZERO
        };
        let deadline = time::now() + wait;
        loop {
            // Created before the look, so a registration in between still wakes it.
            let registered = shared.registered.notified();
            if let Some(handle) = shared.live(&name) {
                return Ok(handle);
            }
            let left = deadline.saturating_duration_since(time::now());
            if left.is_zero() || time::timeout(left, registered).await.is_none() {
                return Err(err);
            }
        }
    }

    async fn dial<A: ToSocketAddrs>(
        &self,
        addr: A,
        peer: NodeId,
        id: u64,
    ) -> Result<LinkHandle, ConnectError> {
        let shared = &self.0;
        let silence = shared.config.silence;
        let mut stream = time::timeout(silence, TcpStream::connect(addr))
            .await
            .ok_or(ConnectError::Timeout)??;
        let _ = stream.set_nodelay(true);
        let mut core = LinkCore::new(shared.me(), peer, shared.config.clone(), time::now());
        dial_handshake(&mut stream, &mut core).await?;
        let link = {
            let mut table = shared.table();
            match table.get(&core.peer().name) {
                Some(Slot::Dialing { id: i }) if *i == id => {
                    shared.start(&mut table, stream, core, id, true)
                }
                // Admitted an inbound link meanwhile: drop this one unread (`connect` returns
                // the other).
                _ => return Err(ConnectError::Handshake(DownCause::Closed)),
            }
        };
        let handle = link.handle.clone();
        shared
            .links
            .send(link)
            .await
            .map_err(|_| ConnectError::Shutdown)?;
        Ok(handle)
    }
}

/// Writes the dialer's `Hello` and reads until the acceptor's arrives (or the core gives up:
/// silence, refusal, EOF). Nothing else is written: the core holds it until established.
async fn dial_handshake(stream: &mut TcpStream, core: &mut LinkCore) -> Result<(), ConnectError> {
    let mut timer = Timer::new();
    let mut buf = vec![0; 4096];
    while let Some(bytes) = core.poll_transmit(time::now()) {
        stream.write_all(&bytes).await?;
        stream.flush().await?;
    }
    while !core.is_established() {
        if let Some(cause) = core.down_cause() {
            return Err(ConnectError::Handshake(cause.clone()));
        }
        tokio::select! {
            biased;
            r = stream.read(&mut buf) => match r {
                Ok(n) if n > 0 => core.handle_bytes(time::now(), &buf[..n]),
                _ => core.transport_closed(),
            },
            () = timer.until(core.poll_timeout()) => core.handle_timeout(time::now()),
        }
    }
    Ok(())
}

/// Accepts inbound links and hands out every new link of the node.
pub struct DistListener {
    node: DistNode,
    addr: SocketAddr,
    links: mpsc::Receiver<Link>,
}

impl DistListener {
    /// Listens on `addr` as `me`; links run with `config`. The accept loop stops when this is
    /// dropped; links already up live on until they go down.
    pub async fn bind<A: ToSocketAddrs>(
        addr: A,
        me: NodeId,
        config: LinkConfig,
    ) -> io::Result<DistListener> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let (links_tx, links) = mpsc::channel(LINKS_CAPACITY);
        let shared = Arc::new(Shared {
            me: Mutex::new(me),
            config,
            next_id: AtomicU64::new(1),
            table: Mutex::new(BTreeMap::new()),
            links: links_tx,
            registered: Notify::new(),
        });
        crate::rt::spawn_task(accept_loop(listener, Arc::clone(&shared)));
        Ok(DistListener {
            node: DistNode(shared),
            addr,
            links,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn node(&self) -> &DistNode {
        &self.node
    }

    /// The next new link, inbound or outbound, each exactly once.
    pub async fn accept(&mut self) -> Option<Link> {
        self.links.recv().await
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    loop {
        let Ok(permit) = Arc::clone(&handshakes).acquire_owned().await else {
            return;
        };
        let accepted = tokio::select! {
            biased;
            () = shared.links.closed() => return,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((stream, from)) => {
                let shared = Arc::clone(&shared);
                crate::rt::spawn_task(async move {
                    if let Err(why) = accept_handshake(stream, &shared).await {
                        tracing::debug!(%from, %why, "dist: inbound connection not admitted");
                    }
                    drop(permit);
                });
            }
            Err(e) => {
                // EMFILE and the like: back off rather than spin.
                tracing::warn!(error = %e, "dist: accept failed");
                time::sleep(shared.config.tick).await;
            }
        }
    }
}

/// Reads the dialer's `Hello`, admits or refuses it, and starts the link if admitted.
async fn accept_handshake(mut stream: TcpStream, shared: &Arc<Shared>) -> Result<(), String> {
    let _ = stream.set_nodelay(true);
    let mut read = Vec::new();
    let mut decoder = Decoder::new();
    let mut buf = [0; MAX_HELLO_BYTES];
    let hello = time::timeout(shared.config.silence, async {
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => return Ok(frame),
                Ok(None) if decoder.buffered() >= MAX_HELLO_BYTES => {
                    return Err("first frame too long for a Hello".to_string())
                }
                Ok(None) => {}
                Err(e) => return Err(e.to_string()),
            }
            let n = stream.read(&mut buf).await.map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("closed before its Hello".into());
            }
            decoder.push(&buf[..n]);
            read.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .ok_or("no Hello within the silence timeout")??;
    let Frame::Hello { node, incarnation } = hello else {
        return Err(format!("first frame is not a Hello: {hello:?}"));
    };
    let peer = NodeId {
        name: node,
        incarnation,
    };
    let me = shared.me();
    if peer.name == me.name {
        return Err("a node dialed itself".into());
    }
    let link = {
        let mut table = shared.table();
        if admit(&me, &peer, table.get(&peer.name)) == Admit::Refuse {
            // Closed without a word: the dialer's core never establishes.
            return Err(format!(
                "refused {peer:?}: the link to it is another connection"
            ));
        }
        let now = time::now();
        let mut core = LinkCore::new(me, peer, shared.config.clone(), now);
        core.handle_bytes(now, &read);
        shared.start(&mut table, stream, core, shared.id(), false)
    };
    shared
        .links
        .send(link)
        .await
        .map_err(|_| "the dist listener is gone".to_string())
}
