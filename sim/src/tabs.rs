//! Extra channels on one socket: a page that opens a few more rooms in the background (other
//! tabs sharing the socket, a lobby preview), each joined, held a moment without ever
//! connecting media, then left. Phoenix counts every channel of a socket, joins in flight
//! included, against `max_channels`, so this is the workload that reaches the limit, and its
//! oracle: a join the server accepted while the client knows the socket already held
//! `max_channels` others is a broken limit.
//!
//! Sans-IO: the client sends the frames this returns and hands over every frame on a tab's
//! join_ref. Tab topics are private to their client (`room:t<client>-<k>`), so a tab never meets
//! another client's peers and never replaces the client's own channel.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::json;
use videoroom::phoenix::Frame;
use videoroom::rt::{self, time};

use crate::oracle::Oracles;

/// The next of the client's message refs (its counter, shared with the client's own frames).
fn fresh(next_ref: &mut u64) -> String {
    *next_ref += 1;
    next_ref.to_string()
}

/// The socket's refusal of a join beyond the channel limit.
pub const TOO_MANY_CHANNELS: &str = "too many channels joined";

enum State {
    /// Join sent. The channels the socket certainly held when it got to this join: each was
    /// joined (or joining) before it went out and not let go of before it.
    Joining { held_before: BTreeSet<String> },
    /// Joined; leaves at this instant.
    Joined { leave_at: time::Instant },
    /// `phx_leave` sent (the socket forgets the channel when it reads it).
    Leaving,
}

struct Tab {
    topic: String,
    state: State,
}

#[derive(Default)]
pub struct Tabs {
    /// By join_ref.
    tabs: BTreeMap<String, Tab>,
    /// Join refs of this connection's tabs that are over (closed, errored, refused).
    gone: BTreeSet<String>,
    /// Join refs of this connection whose channel the server ended: a `phx_close`, a
    /// `phx_error` or a refused join arrived for it.
    ended: BTreeSet<String>,
    next: u64,
    settling: bool,
}

impl Tabs {
    /// A new connection: every channel of the old one is gone.
    pub fn reset(&mut self) {
        self.tabs.clear();
        self.gone.clear();
        self.ended.clear();
    }

    pub fn is_empty(&self) -> bool {
        self.tabs.is_empty()
    }

    /// Whether `f` belongs to one of the tabs (the client must not handle it).
    pub fn owns(&self, f: &Frame) -> bool {
        f.join_ref
            .as_ref()
            .is_some_and(|jr| self.tabs.contains_key(jr) || self.gone.contains(jr))
    }

    /// Remembers that the server ended channel `jr` (any channel of this connection).
    pub fn note_ended(&mut self, f: &Frame) {
        let Some(jr) = &f.join_ref else { return };
        let refused =
            f.event == "phx_reply" && f.msg_ref.as_ref() == Some(jr) && f.payload["status"] != "ok";
        if refused || f.event == "phx_close" || f.event == "phx_error" {
            self.ended.insert(jr.clone());
        }
    }

    /// Joins of `n` new tabs. `main`: the join_ref of the client's own channel, if it holds one;
    /// `next_ref`: the client's message ref counter.
    pub fn open(
        &mut self,
        idx: usize,
        n: usize,
        main: Option<&str>,
        next_ref: &mut u64,
    ) -> Vec<Frame> {
        let mut out = Vec::new();
        for _ in 0..n {
            let mut held_before: BTreeSet<String> = self
                .tabs
                .iter()
                .filter(|(_, t)| !matches!(t.state, State::Leaving))
                .map(|(jr, _)| jr.clone())
                .collect();
            held_before.extend(main.map(str::to_owned));
            let r = fresh(next_ref);
            self.next += 1;
            let topic = format!("room:t{idx}-{}", self.next % 6);
            if self.tabs.values().any(|t| t.topic == topic) {
                continue;
            }
            self.tabs.insert(
                r.clone(),
                Tab {
                    topic: topic.clone(),
                    state: State::Joining { held_before },
                },
            );
            out.push(Frame {
                join_ref: Some(r.clone()),
                msg_ref: Some(r),
                topic,
                event: "phx_join".into(),
                payload: json!({}),
            });
        }
        out
    }

    /// A frame on a tab's join_ref.
    pub fn on_frame(&mut self, idx: usize, f: &Frame, max_channels: usize, oracles: &Oracles) {
        let Some(jr) = f.join_ref.clone() else { return };
        let Some(tab) = self.tabs.get_mut(&jr) else {
            // Over: only the reply to a leave that crossed its end may still come.
            oracles.check(f.event == "phx_reply", || {
                format!(
                    "c{idx}: {} on {} after that channel ended (join_ref {jr})",
                    f.event, f.topic
                )
            });
            return;
        };
        match (&tab.state, f.event.as_str()) {
            (State::Joining { held_before }, "phx_reply") if f.msg_ref.as_ref() == Some(&jr) => {
                if f.payload["status"] != "ok" {
                    let reason = f.payload["response"]["reason"].as_str().unwrap_or("");
                    if reason == TOO_MANY_CHANNELS {
                        oracles.reached("client: tab refused at the channel limit");
                    }
                    self.end(&jr);
                    return;
                }
                let held: Vec<&String> = held_before.difference(&self.ended).collect();
                oracles.check(held.len() < max_channels, || {
                    format!(
                        "c{idx}: join of {} accepted while the socket held {} channels ({held:?}), the limit being {max_channels}",
                        tab.topic,
                        held.len()
                    )
                });
                let hold = if self.settling {
                    Duration::ZERO
                } else {
                    Duration::from_millis(50 + rt::rand::below(500))
                };
                tab.state = State::Joined {
                    leave_at: time::now() + hold,
                };
            }
            // The leave's reply comes first, its `phx_close` after (S11).
            (_, "phx_close" | "phx_error") => self.end(&jr),
            _ => {}
        }
    }

    fn end(&mut self, jr: &str) {
        self.tabs.remove(jr);
        self.gone.insert(jr.to_owned());
    }

    /// When the next tab is due to leave.
    pub fn due(&self) -> Option<time::Instant> {
        self.tabs
            .values()
            .filter_map(|t| match t.state {
                State::Joined { leave_at } => Some(leave_at),
                _ => None,
            })
            .min()
    }

    /// From now on every tab leaves as soon as it can (the world is settling).
    pub fn settle(&mut self) {
        self.settling = true;
        for t in self.tabs.values_mut() {
            if let State::Joined { leave_at } = &mut t.state {
                *leave_at = time::now();
            }
        }
    }

    /// The `phx_leave`s due now.
    pub fn leaves_due(&mut self, next_ref: &mut u64) -> Vec<Frame> {
        let now = time::now();
        let mut out = Vec::new();
        for (jr, t) in self.tabs.iter_mut() {
            if matches!(t.state, State::Joined { leave_at } if leave_at <= now) {
                t.state = State::Leaving;
                out.push(Frame {
                    join_ref: Some(jr.clone()),
                    msg_ref: Some(fresh(next_ref)),
                    topic: t.topic.clone(),
                    event: "phx_leave".into(),
                    payload: json!({}),
                });
            }
        }
        out
    }
}
