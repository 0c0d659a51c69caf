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

use serde_json::{json, Value};
use videoroom::channel::room_name::RoomNameError;
use videoroom::join_token::{JoinSecret, TokenError};
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
    /// A trespasser's join: the reason the server must refuse it with.
    expect: Option<String>,
}

/// A tab's join the server refused.
pub struct Refusal {
    pub reason: String,
    /// For a trespasser, the reason it had to be refused with.
    pub expected: Option<String>,
}

/// A join's payload: a token for `topic`'s room, valid for an hour, where the world has a
/// join secret.
pub fn join_payload(secret: Option<&JoinSecret>, topic: &str) -> Value {
    match secret {
        None => json!({}),
        Some(s) => {
            let room = topic.strip_prefix("room:").unwrap_or(topic);
            json!({ "token": s.mint(room, time::wall_clock() + Duration::from_secs(3600)) })
        }
    }
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

    /// Tabs whose channel has not ended.
    pub fn len(&self) -> usize {
        self.tabs.len()
    }

    /// Whether `f` belongs to one of the tabs (the client must not handle it).
    pub fn owns(&self, f: &Frame) -> bool {
        f.join_ref
            .as_ref()
            .is_some_and(|jr| self.tabs.contains_key(jr) || self.gone.contains(jr))
    }

    /// Whether `jr` is a tab's join still waiting for its reply.
    pub fn joining(&self, jr: &str) -> bool {
        self.tabs
            .get(jr)
            .is_some_and(|t| matches!(t.state, State::Joining { .. }))
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
        secret: Option<&JoinSecret>,
        next_ref: &mut u64,
    ) -> Vec<Frame> {
        let mut out = Vec::new();
        for _ in 0..n {
            self.next += 1;
            let name = format!("t{idx}-{}", self.next % 6);
            // Now and then a name of exactly the server's limit, which it must take.
            let name = if self.next.is_multiple_of(3) {
                padded(&name, videoroom::app::Limits::default().max_room_name_bytes)
            } else {
                name
            };
            let topic = format!("room:{name}");
            if self.tabs.values().any(|t| t.topic == topic) {
                continue;
            }
            let payload = join_payload(secret, &topic);
            out.push(self.join(topic, payload, None, main, next_ref));
        }
        out
    }

    /// The join of a trespasser the server must refuse, and why: a bad room name or a topic
    /// no route takes, or (with a secret) a valid name with a missing, forged, expired or
    /// other room's token.
    pub fn trespass(
        &mut self,
        idx: usize,
        main: Option<&str>,
        secret: Option<&JoinSecret>,
        next_ref: &mut u64,
    ) -> (Frame, String) {
        let max = videoroom::app::Limits::default().max_room_name_bytes;
        let kinds = if secret.is_some() { 9 } else { 5 };
        self.next += 1;
        // Each on a topic of its own (a tab's join on a topic already joined is a duplicate).
        let own = format!("t{idx}-x{}", self.next);
        let named = |name: &str| format!("room:{name}");
        let (topic, payload, why) = match rt::rand::below(kinds) {
            0 => (named(""), json!({}), RoomNameError::Empty.to_string()),
            1 => (
                named(&format!("{own} x")),
                json!({}),
                RoomNameError::BadCharacter.to_string(),
            ),
            2 => (
                named(&format!("{own}\u{202e}")),
                json!({}),
                RoomNameError::BadCharacter.to_string(),
            ),
            // One byte over the limit: the limit itself is a tab's name (below).
            3 => (
                named(&padded(&own, max + 1)),
                json!({}),
                RoomNameError::TooLong { max }.to_string(),
            ),
            // The heartbeat topic routes no channel: a join on it is refused like any other
            // unrouted topic, never answered as a heartbeat (S1 is for `heartbeat` alone).
            4 if rt::rand::chance(0.3) => ("phoenix".into(), json!({}), "unmatched topic".into()),
            4 => (format!("lobby:{own}"), json!({}), "unmatched topic".into()),
            k => {
                let secret = secret.expect("token kinds only with a secret");
                let now = time::wall_clock();
                let hour = Duration::from_secs(3600);
                let (token, why) = match k {
                    5 => (Value::Null, TokenError::Missing),
                    6 => (
                        json!(secret.mint(&format!("{own}-other"), now + hour)),
                        TokenError::OtherRoom,
                    ),
                    7 => (
                        json!(
                            secret.mint(&own, now - Duration::from_secs(1 + rt::rand::below(600)))
                        ),
                        TokenError::Expired,
                    ),
                    _ => {
                        let forger = JoinSecret::new(b"a secret this server never had")
                            .expect("long enough");
                        (json!(forger.mint(&own, now + hour)), TokenError::Invalid)
                    }
                };
                (named(&own), json!({ "token": token }), why.to_string())
            }
        };
        let f = self.join(topic, payload, Some(why.clone()), main, next_ref);
        (f, why)
    }

    /// A tab's `phx_join`, remembering the channels the socket certainly held before it.
    fn join(
        &mut self,
        topic: String,
        payload: Value,
        expect: Option<String>,
        main: Option<&str>,
        next_ref: &mut u64,
    ) -> Frame {
        let mut held_before: BTreeSet<String> = self
            .tabs
            .iter()
            .filter(|(_, t)| !matches!(t.state, State::Leaving))
            .map(|(jr, _)| jr.clone())
            .collect();
        held_before.extend(main.map(str::to_owned));
        let r = fresh(next_ref);
        self.tabs.insert(
            r.clone(),
            Tab {
                topic: topic.clone(),
                state: State::Joining { held_before },
                expect,
            },
        );
        Frame {
            join_ref: Some(r.clone()),
            msg_ref: Some(r),
            topic,
            event: "phx_join".into(),
            payload,
        }
    }

    /// A frame on a tab's join_ref; a refused join is returned for the client to judge.
    pub fn on_frame(
        &mut self,
        idx: usize,
        f: &Frame,
        max_channels: usize,
        oracles: &Oracles,
    ) -> Option<Refusal> {
        let jr = f.join_ref.clone()?;
        let Some(tab) = self.tabs.get_mut(&jr) else {
            // Over: only the reply to a leave that crossed its end may still come.
            oracles.check(f.event == "phx_reply", || {
                format!(
                    "c{idx}: {} on {} after that channel ended (join_ref {jr})",
                    f.event, f.topic
                )
            });
            return None;
        };
        match (&tab.state, f.event.as_str()) {
            (State::Joining { held_before }, "phx_reply") if f.msg_ref.as_ref() == Some(&jr) => {
                if f.payload["status"] != "ok" {
                    let reason = f.payload["response"]["reason"].as_str().unwrap_or("");
                    if reason == TOO_MANY_CHANNELS {
                        oracles.reached("client: tab refused at the channel limit");
                    }
                    let refusal = Refusal {
                        reason: reason.to_owned(),
                        expected: tab.expect.clone(),
                    };
                    self.end(&jr);
                    return Some(refusal);
                }
                if let Some(why) = &tab.expect {
                    oracles.fail(format!(
                        "c{idx}: join of {:?} accepted, though it must be refused: {why}",
                        tab.topic
                    ));
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
        None
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

/// `name` padded with `y` to `len` bytes (names here are ASCII and shorter).
fn padded(name: &str, len: usize) -> String {
    format!("{name}{}", "y".repeat(len.saturating_sub(name.len())))
}
