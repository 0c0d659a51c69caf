//! The consumer of one dist link's events: where each delivered frame goes on this node, which
//! local process a link's DOWN ends, and the watches the peer asks for.
//!
//! Owns the routing only. It never blocks on a process (a proxy whose inbox is full is ended,
//! never waited for, so one slow process cannot stall the link for every other), never delivers
//! to a room under another epoch than the frame names (a stale epoch is `noproc`), and never
//! starts a room itself: a placement request goes to the cluster registry's `start_here`.

use super::exports::{Inbound, Inbox};
use super::proxy::{self, ChannelProxy};
use super::wire::{self, ToNode, ToProxy, ToRoom, NODE_SERVICE};
use super::{Shared, Started};
use crate::cluster::dist::{DownReason, Event, Link, LinkHandle, RemoteRef};
use crate::rt::{self, ExitReason, Pid};

/// Frames waiting for a channel proxy before it counts as overloaded.
const CHANNEL_PROXY_INBOX: usize = 1024;

/// Serves `link` until it is down and its last event is taken.
pub async fn consume(s: Shared, link: Link) {
    let Link { handle, mut events } = link;
    let peer = handle.peer().clone();
    tracing::info!(peer = %peer.name, incarnation = peer.incarnation, "dist link up");
    while let Some(ev) = events.recv().await {
        match ev {
            Event::Deliver { to, msg } => deliver(&s, &handle, to, &msg).await,
            Event::Down { mref, reason } => {
                if let Some(pid) = s.exports.take_monitor(mref) {
                    rt::probe::emit(if reason == DownReason::Noconnection {
                        rt::probe::Event::ProxyNoconnection
                    } else {
                        rt::probe::Event::ProxyRemoteDown
                    });
                    // Through the inbox, behind what the far side sent before it went down.
                    let queued = s
                        .exports
                        .proxy(pid)
                        .is_some_and(|inbox| inbox.down(mref, reason.clone()));
                    if !queued {
                        s.sys.exit(Pid(pid), proxy::exit_reason(reason));
                    }
                }
            }
            Event::Watch { target } => watch(&s, &handle, target).await,
        }
    }
    // Placement requests on this link will never be answered.
    s.pending_lock().retain(|(node, _), _| *node != peer.name);
    tracing::info!(peer = %peer.name, cause = ?handle.down_cause(), "dist link down");
}

async fn deliver(s: &Shared, link: &LinkHandle, to: RemoteRef, msg: &[u8]) {
    if to.pid == NODE_SERVICE {
        return node_service(s, link, msg).await;
    }
    if let Some(room) = s.exports.room(to.pid) {
        if room.epoch != to.epoch {
            // A frame for an earlier claim: the sender's monitor answers it with noproc.
            return;
        }
        match wire::decode::<ToRoom>(msg) {
            Ok(ToRoom::Join { peer_id, reply }) => {
                let (tx, inbox) = tokio::sync::mpsc::channel(CHANNEL_PROXY_INBOX);
                let Some(app) = s.app() else { return };
                let p = s.sys.prepare(app.limits.channel_mailbox);
                let pid = p.pid();
                s.exports.add_proxy(pid.0, Inbox::Channel(tx));
                s.on_exit(pid, link.clone());
                let args = ChannelProxy {
                    shared: s.clone(),
                    link: link.clone(),
                    peer: RemoteRef {
                        pid: reply,
                        epoch: 0,
                    },
                    room: room.addr,
                    peer_id,
                    inbox,
                };
                p.start(move |ctx| proxy::channel_proxy(ctx, args));
            }
            Ok(other) => tracing::debug!(?other, "dist: a room takes only joins directly"),
            Err(e) => tracing::warn!(error = %e, "dist: undecodable frame for a room"),
        }
        return;
    }
    match s.exports.proxy(to.pid) {
        Some(Inbox::Room(tx)) => match wire::decode::<ToProxy>(msg) {
            Ok(m) => overflow(s, to.pid, tx.try_send(Inbound::Msg(m)).is_err()),
            Err(e) => tracing::warn!(error = %e, "dist: undecodable frame for a room proxy"),
        },
        Some(Inbox::Channel(tx)) => match wire::decode::<ToRoom>(msg) {
            Ok(m) => overflow(s, to.pid, tx.try_send(Inbound::Msg(m)).is_err()),
            Err(e) => tracing::warn!(error = %e, "dist: undecodable frame for a channel proxy"),
        },
        // A dead pid: dropped, as Erlang drops a send to a dead process.
        None => {}
    }
}

/// A proxy whose inbox is full (or closed) ends: the link must not wait for it.
fn overflow(s: &Shared, pid: u64, failed: bool) {
    if failed {
        s.sys
            .exit(Pid(pid), ExitReason::Error("proxy inbox full".into()));
    }
}

/// The peer monitors the local `target`: answer at once if it is gone, else report its exit.
async fn watch(s: &Shared, link: &LinkHandle, target: RemoteRef) {
    let pid = Pid(target.pid);
    let live = match s.exports.room(target.pid) {
        Some(room) => room.epoch == target.epoch,
        // Only rooms have epochs: any other non-zero epoch names no process here.
        None => target.epoch == 0 && s.sys.is_alive(pid),
    };
    if !live {
        link.target_gone(target, DownReason::Noproc).await;
        return;
    }
    let (sys, link) = (s.sys.clone(), link.clone());
    rt::spawn_task(async move {
        let reason = sys.wait_exit(pid).await;
        link.local_exited(target.pid, proxy::down_reason(&reason))
            .await;
    });
}

async fn node_service(s: &Shared, link: &LinkHandle, msg: &[u8]) {
    let m = match wire::decode::<ToNode>(msg) {
        Ok(m) => m,
        Err(e) => return tracing::warn!(error = %e, "dist: undecodable node service frame"),
    };
    match m {
        ToNode::Start { req, name } => {
            let (s, link) = (s.clone(), link.clone());
            rt::spawn_task(async move {
                let answer = match s.app() {
                    None => ToNode::NotStarted {
                        req,
                        reason: "the node is stopping".into(),
                    },
                    Some(app) => match s.start_here(&app, &name).await {
                        Started::Here(addr) => match s.exports.room(addr.pid().0) {
                            Some(room) => ToNode::Started {
                                req,
                                pid: addr.pid().0,
                                epoch: room.epoch,
                            },
                            None => ToNode::NotStarted {
                                req,
                                reason: "the room ended at once".into(),
                            },
                        },
                        Started::Taken => ToNode::NotStarted {
                            req,
                            reason: "taken".into(),
                        },
                        Started::There(_) => ToNode::NotStarted {
                            req,
                            reason: "runs elsewhere".into(),
                        },
                        Started::NotHere(reason) => ToNode::NotStarted { req, reason },
                        Started::Refused(e) => ToNode::NotStarted {
                            req,
                            reason: e.to_string(),
                        },
                    },
                };
                let to = RemoteRef {
                    pid: NODE_SERVICE,
                    epoch: 0,
                };
                let _ = link.send(to, wire::encode(&answer)).await;
            });
        }
        ToNode::Started { req, .. } | ToNode::NotStarted { req, .. } => {
            let peer = link.peer().name.clone();
            if let Some(tx) = s.pending_lock().remove(&(peer, req)) {
                let _ = tx.send(m);
            }
        }
    }
}
