//! The media-event session of one room: who is connected, with which metadata, and which media
//! events that makes every client receive.

use std::collections::BTreeMap;

use serde_json::Value;

use super::events::{
    ClientEvent, Connected, Endpoint, EndpointAdded, EndpointRemoved, EndpointType,
    EndpointUpdated, ErrorData, ServerEvent,
};
use super::negotiation::{Negotiation, NoNegotiation, Outbox};

/// The id the channel chose for its peer (a UUIDv4 string); also the endpoint id clients see.
pub type PeerId = String;

/// Something the driver must deliver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Out {
    /// Push `data` (a serialized media event) to `peer` as `mediaEvent {data}`.
    To { peer: PeerId, data: String },
}

/// Error messages are echoed to the client; serde's messages can quote the offending input.
const MAX_ERROR_MESSAGE_BYTES: usize = 256;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionConfig {
    /// A `connect` beyond this many endpoints gets `error {"message":"room is full"}`.
    pub max_endpoints: usize,
    /// Endpoint metadata is stored and copied to every peer, so its serialized size is capped.
    pub max_metadata_bytes: usize,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            max_endpoints: 64,
            max_metadata_bytes: 4096,
        }
    }
}

/// Connected endpoints in join order.
///
/// Join order (not id order) is what every client reconstructs from `connected` followed by
/// `endpointAdded`s, so a late joiner lists the room in the same order as everyone else.
#[derive(Debug, Default, Clone)]
pub struct Roster {
    members: BTreeMap<PeerId, Member>,
    order: BTreeMap<u64, PeerId>,
    next_seq: u64,
}

#[derive(Debug, Clone)]
struct Member {
    seq: u64,
    metadata: Value,
}

impl Roster {
    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    pub fn contains(&self, peer: &str) -> bool {
        self.members.contains_key(peer)
    }

    pub fn metadata(&self, peer: &str) -> Option<&Value> {
        self.members.get(peer).map(|m| &m.metadata)
    }

    /// Connected endpoint ids in join order.
    pub fn ids(&self) -> impl Iterator<Item = &str> + '_ {
        self.order.values().map(String::as_str)
    }

    fn insert(&mut self, peer: &str, metadata: Value) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let previous = self
            .members
            .insert(peer.to_owned(), Member { seq, metadata });
        assert!(previous.is_none(), "endpoint {peer} connected twice");
        self.order.insert(seq, peer.to_owned());
    }

    fn remove(&mut self, peer: &str) -> bool {
        match self.members.remove(peer) {
            Some(m) => {
                self.order.remove(&m.seq);
                true
            }
            None => false,
        }
    }
}

/// The media-event state machine of one room. Sans-IO: inputs are client events and channel
/// deaths, outputs are media events to deliver.
#[derive(Debug)]
pub struct Session<N = NoNegotiation> {
    config: SessionConfig,
    roster: Roster,
    negotiation: N,
}

impl Session {
    pub fn new(config: SessionConfig) -> Self {
        Session::with_negotiation(config, NoNegotiation)
    }
}

impl<N: Negotiation> Session<N> {
    pub fn with_negotiation(config: SessionConfig, negotiation: N) -> Self {
        Session {
            config,
            roster: Roster::default(),
            negotiation,
        }
    }

    /// Handles the JSON string `from` put into a `mediaEvent` push.
    pub fn handle_event(&mut self, from: &str, data: &str) -> Vec<Out> {
        let mut out = Outbox::new();
        match ClientEvent::parse(data) {
            Err(e) => {
                tracing::debug!(peer = from, error = %e, "malformed media event");
                send_error(&mut out, from, &e.to_string());
            }
            Ok(event) => self.dispatch(from, event, &mut out),
        }
        out.into_outs()
    }

    /// Removes a peer whose channel is gone. Idempotent: unknown or already removed peers
    /// produce nothing.
    pub fn remove_peer(&mut self, peer: &str) -> Vec<Out> {
        let mut out = Outbox::new();
        self.leave(peer, &mut out);
        out.into_outs()
    }

    /// Connected endpoint ids in join order.
    pub fn endpoints(&self) -> impl Iterator<Item = &str> + '_ {
        self.roster.ids()
    }

    pub fn roster(&self) -> &Roster {
        &self.roster
    }

    pub fn negotiation(&self) -> &N {
        &self.negotiation
    }

    fn dispatch(&mut self, from: &str, event: ClientEvent, out: &mut Outbox) {
        if let ClientEvent::Ignored(kind) = &event {
            tracing::debug!(peer = from, kind, "media event ignored");
            return;
        }
        // Anything but `connect` from a peer that is not connected is dropped, not answered with
        // `error`: it is normally a stale event (candidates still in flight after `disconnect`,
        // or the `disconnect` every client sends in reply to an `error`), and an `error` makes
        // the client tear itself down. The 0.5.3 client cannot even produce track events before
        // `connected` (`addTrack` throws).
        let connected = self.roster.contains(from);
        match event {
            ClientEvent::Connect { metadata } => self.connect(from, metadata, out),
            _ if !connected => {
                tracing::debug!(peer = from, ?event, "media event before connect dropped");
            }
            ClientEvent::Disconnect => self.leave(from, out),
            ClientEvent::UpdateEndpointMetadata { metadata } => {
                self.update_metadata(from, metadata, out)
            }
            ClientEvent::Negotiation(ev) => self.negotiation.handle(&self.roster, from, ev, out),
            ClientEvent::Ignored(_) => unreachable!("returned above"),
        }
    }

    fn connect(&mut self, from: &str, metadata: Value, out: &mut Outbox) {
        if self.roster.contains(from) {
            // A second `connected` would make the client announce itself twice; an `error`
            // would disconnect a working peer. Keeping the first connect is the harmless choice.
            tracing::debug!(peer = from, "duplicate connect ignored");
            return;
        }
        if self.roster.len() >= self.config.max_endpoints {
            send_error(out, from, "room is full");
            return;
        }
        if let Err(message) = self.check_metadata(&metadata) {
            send_error(out, from, &message);
            return;
        }
        let other_endpoints = self
            .roster
            .ids()
            .map(|id| {
                let metadata = self.roster.metadata(id).cloned().unwrap_or_default();
                Endpoint::new(id, metadata, self.negotiation.published_tracks(id))
            })
            .collect();
        self.roster.insert(from, metadata.clone());
        out.send(
            from,
            &ServerEvent::Connected(Connected {
                id: from.to_owned(),
                other_endpoints,
            }),
        );
        out.send_to_others(
            &self.roster,
            from,
            &ServerEvent::EndpointAdded(EndpointAdded {
                id: from.to_owned(),
                kind: EndpointType::Webrtc,
                metadata,
            }),
        );
        self.negotiation.endpoint_connected(&self.roster, from, out);
    }

    fn update_metadata(&mut self, from: &str, metadata: Value, out: &mut Outbox) {
        if let Err(message) = self.check_metadata(&metadata) {
            send_error(out, from, &message);
            return;
        }
        let Some(member) = self.roster.members.get_mut(from) else {
            return;
        };
        // Every `endpointUpdated` wipes the receiving client's track list for that endpoint
        // (research §6), so an unchanged update must not be forwarded.
        if member.metadata == metadata {
            return;
        }
        member.metadata = metadata.clone();
        out.send_to_others(
            &self.roster,
            from,
            &ServerEvent::EndpointUpdated(EndpointUpdated {
                id: from.to_owned(),
                metadata,
            }),
        );
    }

    fn leave(&mut self, peer: &str, out: &mut Outbox) {
        if !self.roster.remove(peer) {
            return;
        }
        self.negotiation.endpoint_removed(&self.roster, peer, out);
        // Not sent to the leaver: after `disconnect` it has already cleaned up, and a dead
        // channel cannot receive it.
        out.send_to_others(
            &self.roster,
            peer,
            &ServerEvent::EndpointRemoved(EndpointRemoved {
                id: peer.to_owned(),
            }),
        );
    }

    fn check_metadata(&self, metadata: &Value) -> Result<(), String> {
        let len = serde_json::to_string(metadata).map_or(usize::MAX, |s| s.len());
        if len > self.config.max_metadata_bytes {
            return Err(format!(
                "endpoint metadata is {len} bytes, more than the limit of {}",
                self.config.max_metadata_bytes
            ));
        }
        Ok(())
    }
}

fn send_error(out: &mut Outbox, peer: &str, message: &str) {
    let mut message = message.to_owned();
    if message.len() > MAX_ERROR_MESSAGE_BYTES {
        let mut cut = MAX_ERROR_MESSAGE_BYTES;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
        message.push('…');
    }
    out.send(peer, &ServerEvent::Error(ErrorData { message }));
}
