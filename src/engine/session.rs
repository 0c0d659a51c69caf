//! The media-event session of one room: who is connected, with which metadata, and which media
//! events that makes every client receive.

use std::collections::BTreeMap;

use serde_json::Value;

use super::events::{
    ClientEvent, Connected, Endpoint, EndpointAdded, EndpointRemoved, EndpointType,
    EndpointUpdated, ErrorData, NegotiationEvent, ServerEvent,
};
use super::negotiation::{Negotiation, NoNegotiation, Outbox};
use super::plane::{PlaneCommand, PlaneEvent};
use crate::logsafe::{Untrusted, UntrustedDebug};
use crate::shared_text::SharedText;

/// The id the channel chose for its peer (a UUIDv4 string); also the endpoint id clients see.
pub type PeerId = String;

/// Something the driver must deliver, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Out {
    /// Push `data` (a serialized media event) to `peer` as `mediaEvent {data}`; a broadcast
    /// shares one `data` among its peers.
    To { peer: PeerId, data: SharedText },
    /// Apply a command to the room's media plane.
    Plane(PlaneCommand),
}

/// Error messages are echoed to the client; serde's messages can quote the offending input, so
/// a longer one is cut at a character boundary at or below this and ends with `…`.
pub const MAX_ERROR_MESSAGE_BYTES: usize = 256;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionConfig {
    /// A `connect` beyond this many endpoints gets `error {"message":"room is full"}`.
    pub max_endpoints: usize,
    /// Endpoint metadata is stored and copied to every peer, so its serialized size is capped.
    pub max_metadata_bytes: usize,
    /// Metadata updates (endpoint and track) one peer may make: every one is copied to every
    /// other peer, so a peer gets a burst of `update_burst` and then `updates_per_sec`; the
    /// rest are dropped (a client never needs more: the web app updates on mute and camera
    /// toggles).
    pub update_burst: u32,
    pub updates_per_sec: u32,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            max_endpoints: 64,
            // The web app sends `{displayName}`; every connected peer gets a copy in `connected`,
            // so this bounds what one peer makes everyone's queue hold.
            max_metadata_bytes: 1024,
            update_burst: 20,
            updates_per_sec: 5,
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
    /// The driver's clock ([`Session::set_clock`]), for the update budgets.
    now: std::time::Duration,
    /// Each connected peer's metadata-update budget.
    budgets: BTreeMap<PeerId, UpdateBudget>,
}

/// A token bucket in thousandths of an update, refilled from the session's clock.
#[derive(Debug, Clone, Copy)]
struct UpdateBudget {
    milli: u64,
    at: std::time::Duration,
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
            now: std::time::Duration::ZERO,
            budgets: BTreeMap::new(),
        }
    }

    /// Tells the session the time (any origin; it must not go back). The room sets it before
    /// each event; without it every budget is its burst.
    pub fn set_clock(&mut self, now: std::time::Duration) {
        self.now = self.now.max(now);
    }

    /// Takes one metadata update from `peer`'s budget; false if it is spent.
    fn take_update(&mut self, peer: &str) -> bool {
        let burst = u64::from(self.config.update_burst) * 1000;
        let rate = u64::from(self.config.updates_per_sec);
        let now = self.now;
        let b = self.budgets.entry(peer.to_owned()).or_insert(UpdateBudget {
            milli: burst,
            at: now,
        });
        let refill = (now.saturating_sub(b.at).as_millis() as u64).saturating_mul(rate);
        b.milli = b.milli.saturating_add(refill).min(burst);
        b.at = now;
        if b.milli < 1000 {
            return false;
        }
        b.milli -= 1000;
        true
    }

    /// Handles the JSON string `from` put into a `mediaEvent` push.
    pub fn handle_event(&mut self, from: &str, data: &str) -> Vec<Out> {
        let mut out = Outbox::new();
        match ClientEvent::parse(data) {
            Err(e) => {
                tracing::debug!(peer = from, error = %Untrusted(&e), "malformed media event");
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
        // Kept across `disconnect`/`connect`, so cycling them does not refill it.
        self.budgets.remove(peer);
        out.into_outs()
    }

    /// Handles a report of the room's media plane.
    pub fn handle_plane_event(&mut self, event: PlaneEvent) -> Vec<Out> {
        let mut out = Outbox::new();
        self.negotiation.plane_event(&self.roster, event, &mut out);
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

    pub fn negotiation_mut(&mut self) -> &mut N {
        &mut self.negotiation
    }

    fn dispatch(&mut self, from: &str, event: ClientEvent, out: &mut Outbox) {
        match event {
            ClientEvent::Ignored(kind) => {
                tracing::debug!(peer = from, kind = %Untrusted(&kind), "media event ignored");
            }
            // Anything but `connect` from a peer that is not connected is dropped, not answered
            // with `error`: it is normally stale (candidates still in flight after `disconnect`,
            // or the `disconnect` every client sends in reply to an `error`), and an `error` makes
            // the client tear itself down. The 0.5.3 client cannot even produce track events
            // before `connected` (`addTrack` throws). Dropped before the budget: what is never
            // passed on must not spend what the peer's `connect` needs.
            ref event
                if !matches!(event, ClientEvent::Connect { .. }) && !self.roster.contains(from) =>
            {
                tracing::debug!(peer = from, event = %UntrustedDebug(event), "media event before connect dropped");
                crate::rt::probe::emit(crate::rt::probe::Event::MediaEventBeforeConnect);
            }
            // Every `connect` and metadata update is copied to every other peer: one budget
            // for them (a `disconnect` is never refused: a peer must always be able to go).
            ClientEvent::Connect { .. }
            | ClientEvent::UpdateEndpointMetadata { .. }
            | ClientEvent::Negotiation(NegotiationEvent::UpdateTrackMetadata { .. })
                if !self.take_update(from) =>
            {
                tracing::debug!(
                    peer = from,
                    "broadcast event over the peer's budget dropped"
                );
                crate::rt::probe::emit(crate::rt::probe::Event::BroadcastOverBudget);
            }
            ClientEvent::Connect { metadata } => self.connect(from, metadata, out),
            ClientEvent::Disconnect => self.leave(from, out),
            ClientEvent::UpdateEndpointMetadata { metadata } => {
                self.update_metadata(from, metadata, out)
            }
            ClientEvent::Negotiation(ev) => self.negotiation.handle(&self.roster, from, ev, out),
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
        self.negotiation
            .after_endpoint_removed(&self.roster, peer, out);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::events::{
        NegotiationEvent, SimulcastConfig, TrackInfo, TracksAdded, TracksRemoved,
    };
    use crate::engine::TrackId;
    use serde_json::json;

    fn to(peer: &str, data: &str) -> Out {
        Out::To {
            peer: peer.to_owned(),
            data: data.to_owned().into(),
        }
    }

    fn connect(name: &str) -> String {
        format!(r#"{{"type":"connect","data":{{"metadata":{{"name":"{name}"}}}}}}"#)
    }

    fn ids<N: Negotiation>(s: &Session<N>) -> Vec<&str> {
        s.endpoints().collect()
    }

    const DISCONNECT: &str = r#"{"type":"disconnect"}"#;
    const RENEGOTIATE: &str = r#"{"type":"custom","data":{"type":"renegotiateTracks"}}"#;

    /// p3, p1, p2 join in that order: join order differs from id order on purpose.
    fn three_peers() -> Session {
        let mut s = Session::new(SessionConfig::default());
        s.handle_event("p3", &connect("C"));
        s.handle_event("p1", &connect("A"));
        s.handle_event("p2", &connect("B"));
        s
    }

    #[test]
    fn first_peer_gets_empty_connected() {
        let mut s = Session::new(SessionConfig::default());
        assert_eq!(
            s.handle_event("p1", &connect("A")),
            [to(
                "p1",
                r#"{"type":"connected","data":{"id":"p1","otherEndpoints":[]}}"#
            )]
        );
        assert_eq!(ids(&s), ["p1"]);
    }

    #[test]
    fn second_peer_sees_first_and_first_gets_endpoint_added() {
        let mut s = Session::new(SessionConfig::default());
        s.handle_event("p1", &connect("A"));
        assert_eq!(
            s.handle_event("p2", &connect("B")),
            [
                to(
                    "p2",
                    r#"{"type":"connected","data":{"id":"p2","otherEndpoints":[{"id":"p1","type":"webrtc","metadata":{"name":"A"},"trackIdToMetadata":{},"tracks":{}}]}}"#
                ),
                to(
                    "p1",
                    r#"{"type":"endpointAdded","data":{"id":"p2","type":"webrtc","metadata":{"name":"B"}}}"#
                ),
            ]
        );
        assert_eq!(ids(&s), ["p1", "p2"]);
    }

    #[test]
    fn third_peer_sees_others_in_join_order() {
        let mut s = Session::new(SessionConfig::default());
        s.handle_event("p3", &connect("C"));
        s.handle_event("p1", &connect("A"));
        assert_eq!(
            s.handle_event("p2", &connect("B")),
            [
                to(
                    "p2",
                    r#"{"type":"connected","data":{"id":"p2","otherEndpoints":[{"id":"p3","type":"webrtc","metadata":{"name":"C"},"trackIdToMetadata":{},"tracks":{}},{"id":"p1","type":"webrtc","metadata":{"name":"A"},"trackIdToMetadata":{},"tracks":{}}]}}"#
                ),
                to(
                    "p3",
                    r#"{"type":"endpointAdded","data":{"id":"p2","type":"webrtc","metadata":{"name":"B"}}}"#
                ),
                to(
                    "p1",
                    r#"{"type":"endpointAdded","data":{"id":"p2","type":"webrtc","metadata":{"name":"B"}}}"#
                ),
            ]
        );
        assert_eq!(ids(&s), ["p3", "p1", "p2"]);
    }

    #[test]
    fn connect_without_metadata_announces_null() {
        let mut s = Session::new(SessionConfig::default());
        s.handle_event("p1", &connect("A"));
        let outs = s.handle_event("p2", r#"{"type":"connect","data":{}}"#);
        assert_eq!(
            outs[1],
            to(
                "p1",
                r#"{"type":"endpointAdded","data":{"id":"p2","type":"webrtc","metadata":null}}"#
            )
        );
    }

    #[test]
    fn disconnect_notifies_others_and_allows_reconnect() {
        let mut s = three_peers();
        assert_eq!(
            s.handle_event("p1", DISCONNECT),
            [
                to("p3", r#"{"type":"endpointRemoved","data":{"id":"p1"}}"#),
                to("p2", r#"{"type":"endpointRemoved","data":{"id":"p1"}}"#),
            ]
        );
        assert_eq!(ids(&s), ["p3", "p2"]);
        // Candidates still in flight after a disconnect are dropped silently.
        assert_eq!(s.handle_event("p1", RENEGOTIATE), []);
        assert_eq!(s.handle_event("p1", DISCONNECT), []);
        // The client may connect again on the same channel; it rejoins at the end.
        let outs = s.handle_event("p1", &connect("A2"));
        assert_eq!(
            outs,
            [
                to(
                    "p1",
                    r#"{"type":"connected","data":{"id":"p1","otherEndpoints":[{"id":"p3","type":"webrtc","metadata":{"name":"C"},"trackIdToMetadata":{},"tracks":{}},{"id":"p2","type":"webrtc","metadata":{"name":"B"},"trackIdToMetadata":{},"tracks":{}}]}}"#
                ),
                to(
                    "p3",
                    r#"{"type":"endpointAdded","data":{"id":"p1","type":"webrtc","metadata":{"name":"A2"}}}"#
                ),
                to(
                    "p2",
                    r#"{"type":"endpointAdded","data":{"id":"p1","type":"webrtc","metadata":{"name":"A2"}}}"#
                ),
            ]
        );
        assert_eq!(ids(&s), ["p3", "p2", "p1"]);
    }

    #[test]
    fn a_peers_broadcasts_have_a_budget_that_refills_with_time() {
        let mut s = Session::new(SessionConfig {
            update_burst: 3,
            updates_per_sec: 2,
            ..SessionConfig::default()
        });
        s.handle_event("p1", &connect("A"));
        s.handle_event("p2", &connect("B"));
        let update = |n: u32| {
            format!(r#"{{"type":"updateEndpointMetadata","data":{{"metadata":{{"n":{n}}}}}}}"#)
        };
        // p1's connect took one of three: two updates go out, the third is dropped.
        assert_eq!(s.handle_event("p1", &update(1)).len(), 1);
        assert_eq!(s.handle_event("p1", &update(2)).len(), 1);
        assert_eq!(s.handle_event("p1", &update(3)), []);
        assert_eq!(s.roster().metadata("p1"), Some(&json!({"n": 2})));
        // Half a second refills one.
        s.set_clock(std::time::Duration::from_millis(500));
        assert_eq!(s.handle_event("p1", &update(4)).len(), 1);
        assert_eq!(s.handle_event("p1", &update(5)), []);
        // Another peer's budget is its own.
        assert_eq!(s.handle_event("p2", &update(6)).len(), 1);
        // Leaving and connecting again does not refill it: the connect is refused too.
        s.handle_event("p1", r#"{"type":"disconnect"}"#);
        assert_eq!(s.handle_event("p1", &connect("A")), []);
        assert!(!s.roster().contains("p1"));
        // A peer whose channel is gone starts afresh if its id ever came back.
        s.remove_peer("p1");
        assert!(!s.handle_event("p1", &connect("A")).is_empty());
        // Updates before a connect are dropped without spending the budget its connect needs.
        for n in 0..5 {
            assert_eq!(s.handle_event("p3", &update(n)), []);
        }
        assert!(!s.handle_event("p3", &connect("C")).is_empty());
        assert!(s.roster().contains("p3"));
        // The clock never goes back.
        s.set_clock(std::time::Duration::from_millis(100));
        assert_eq!(s.now, std::time::Duration::from_millis(500));
    }

    #[test]
    fn metadata_update_goes_to_others_once() {
        let mut s = three_peers();
        let update = r#"{"type":"updateEndpointMetadata","data":{"metadata":{"name":"A2"}}}"#;
        let expected = r#"{"type":"endpointUpdated","data":{"id":"p1","metadata":{"name":"A2"}}}"#;
        assert_eq!(
            s.handle_event("p1", update),
            [to("p3", expected), to("p2", expected)]
        );
        // Unchanged metadata would wipe every receiver's track list for p1: not forwarded.
        assert_eq!(s.handle_event("p1", update), []);
        assert_eq!(s.roster().metadata("p1"), Some(&json!({"name":"A2"})));
        // A late joiner sees the updated metadata.
        let outs = s.handle_event("p4", &connect("D"));
        let Out::To { data, .. } = &outs[0] else {
            panic!("not a media event: {:?}", outs[0]);
        };
        assert!(data.contains(r#"{"id":"p1","type":"webrtc","metadata":{"name":"A2"}"#));
    }

    /// serde_json's default float parser read this number one ULP off, so the others were
    /// told 1.111111111441114e+18 (found by fuzz/ phoenix_frame; fixed by `float_roundtrip`).
    #[test]
    fn metadata_numbers_are_relayed_exactly() {
        let mut s = three_peers();
        let update =
            r#"{"type":"updateEndpointMetadata","data":{"metadata":{"n":1.1111111114411141e+18}}}"#;
        let expected = r#"{"type":"endpointUpdated","data":{"id":"p1","metadata":{"n":1.1111111114411141e+18}}}"#;
        assert_eq!(
            s.handle_event("p1", update),
            [to("p3", expected), to("p2", expected)]
        );
    }

    #[test]
    fn malformed_events_get_an_error_and_change_nothing() {
        let mut s = three_peers();
        let cases = [
            (
                "{not json",
                r#"{"type":"error","data":{"message":"media event is not valid JSON: key must be a string at line 1 column 2"}}"#,
            ),
            (
                r#""connect""#,
                r#"{"type":"error","data":{"message":"media event must be a JSON object"}}"#,
            ),
            (
                r#"{"data":{"metadata":1}}"#,
                r#"{"type":"error","data":{"message":"media event has no string `type`"}}"#,
            ),
            (
                r#"{"type":"updateEndpointMetadata"}"#,
                r#"{"type":"error","data":{"message":"media event `updateEndpointMetadata` has no `data`"}}"#,
            ),
            (
                r#"{"type":"updateEndpointMetadata","data":[1]}"#,
                r#"{"type":"error","data":{"message":"media event `updateEndpointMetadata` has data that is not a JSON object"}}"#,
            ),
            (
                r#"{"type":"updateTrackMetadata","data":{"trackMetadata":{}}}"#,
                r#"{"type":"error","data":{"message":"media event `updateTrackMetadata` has invalid data: missing field `trackId`"}}"#,
            ),
            (
                r#"{"type":"custom","data":{"type":"candidate","data":{"candidate":5}}}"#,
                r#"{"type":"error","data":{"message":"media event `candidate` has invalid data: invalid type: integer `5`, expected a string"}}"#,
            ),
        ];
        for (input, error) in cases {
            assert_eq!(s.handle_event("p1", input), [to("p1", error)], "{input}");
        }
        assert_eq!(ids(&s), ["p3", "p1", "p2"]);
        assert_eq!(s.roster().metadata("p1"), Some(&json!({"name":"A"})));
        // Peers that are not connected are told too: the input is broken whoever sent it.
        assert_eq!(
            s.handle_event("p9", "[]"),
            [to(
                "p9",
                r#"{"type":"error","data":{"message":"media event must be a JSON object"}}"#
            )]
        );
    }

    #[test]
    fn error_messages_are_bounded() {
        let mut s = Session::new(SessionConfig::default());
        let long = "x".repeat(10_000);
        let input = format!(
            r#"{{"type":"custom","data":{{"type":"candidate","data":{{"candidate":"c","sdpMLineIndex":"{long}"}}}}}}"#
        );
        let outs = s.handle_event("p1", &input);
        let Out::To { data, .. } = &outs[0] else {
            panic!("not a media event: {:?}", outs[0]);
        };
        assert!(data.len() < 400, "{}", data.len());
        assert!(data.ends_with(r#"xxx…"}}"#), "{data}");
        assert!(data.starts_with(r#"{"type":"error","data":{"message":"media event `candidate`"#));
    }

    #[test]
    fn unknown_and_unsupported_events_are_ignored() {
        let mut s = three_peers();
        assert_eq!(
            s.handle_event("p1", r#"{"type":"somethingNew","data":{"x":1}}"#),
            []
        );
        assert_eq!(s.handle_event("p1", r#"{"type":"custom","data":{"type":"preferedVideoSizes","data":{"bigScreens":1,"mediumScreens":0,"smallScreens":2,"allSameSize":false}}}"#), []);
        assert_eq!(s.handle_event("p9", r#"{"type":"somethingNew"}"#), []);
        assert_eq!(ids(&s), ["p3", "p1", "p2"]);
    }

    #[test]
    fn remove_peer_is_idempotent() {
        let mut s = three_peers();
        assert_eq!(
            s.remove_peer("p3"),
            [
                to("p1", r#"{"type":"endpointRemoved","data":{"id":"p3"}}"#),
                to("p2", r#"{"type":"endpointRemoved","data":{"id":"p3"}}"#),
            ]
        );
        assert_eq!(s.remove_peer("p3"), []);
        assert_eq!(s.handle_event("p3", DISCONNECT), []);
        assert_eq!(s.remove_peer("never-joined"), []);
        assert_eq!(ids(&s), ["p1", "p2"]);
        assert_eq!(
            s.remove_peer("p1"),
            [to("p2", r#"{"type":"endpointRemoved","data":{"id":"p1"}}"#)]
        );
        assert_eq!(s.remove_peer("p2"), []);
        assert!(s.roster().is_empty());
    }

    #[test]
    fn events_before_connect_are_dropped() {
        let mut s = Session::new(SessionConfig::default());
        s.handle_event("p1", &connect("A"));
        for ev in [
            DISCONNECT,
            RENEGOTIATE,
            r#"{"type":"updateEndpointMetadata","data":{"metadata":{"name":"X"}}}"#,
            r#"{"type":"updateTrackMetadata","data":{"trackId":"p2:t","trackMetadata":{}}}"#,
        ] {
            assert_eq!(s.handle_event("p2", ev), [], "{ev}");
        }
        assert_eq!(ids(&s), ["p1"]);
    }

    #[test]
    fn duplicate_connect_is_ignored() {
        let mut s = three_peers();
        assert_eq!(s.handle_event("p1", &connect("Other")), []);
        assert_eq!(s.roster().metadata("p1"), Some(&json!({"name":"A"})));
        assert_eq!(ids(&s), ["p3", "p1", "p2"]);
    }

    #[test]
    fn full_room_refuses_connect() {
        let mut s = Session::new(SessionConfig {
            max_endpoints: 2,
            ..SessionConfig::default()
        });
        s.handle_event("p1", &connect("A"));
        s.handle_event("p2", &connect("B"));
        assert_eq!(
            s.handle_event("p3", &connect("C")),
            [to(
                "p3",
                r#"{"type":"error","data":{"message":"room is full"}}"#
            )]
        );
        // The client answers an error with `disconnect`; it is not connected, so nothing happens.
        assert_eq!(s.handle_event("p3", DISCONNECT), []);
        s.remove_peer("p1");
        assert_eq!(s.handle_event("p3", &connect("C")).len(), 2);
        assert_eq!(ids(&s), ["p2", "p3"]);
    }

    #[test]
    fn oversized_metadata_is_refused() {
        let mut s = Session::new(SessionConfig {
            max_metadata_bytes: 16,
            ..SessionConfig::default()
        });
        let big = r#"{"type":"connect","data":{"metadata":{"name":"abcdefghij"}}}"#;
        assert_eq!(
            s.handle_event("p1", big),
            [to(
                "p1",
                r#"{"type":"error","data":{"message":"endpoint metadata is 21 bytes, more than the limit of 16"}}"#
            )]
        );
        assert_eq!(ids(&s), Vec::<&str>::new());
        s.handle_event("p1", &connect("A"));
        let update =
            r#"{"type":"updateEndpointMetadata","data":{"metadata":{"name":"abcdefghij"}}}"#;
        assert_eq!(s.handle_event("p1", update).len(), 1);
        assert_eq!(s.roster().metadata("p1"), Some(&json!({"name":"A"})));
    }

    /// Stands in for the negotiation core: p1 publishes one camera track, calls are recorded,
    /// and lifecycle hooks push the events the real core will push there.
    #[derive(Default)]
    struct Recording {
        calls: Vec<String>,
    }

    fn camera(peer: &str) -> BTreeMap<TrackId, TrackInfo> {
        if peer != "p1" {
            return BTreeMap::new();
        }
        BTreeMap::from([(
            "p1:cam".to_owned(),
            TrackInfo {
                metadata: json!({"type":"camera","active":true}),
                simulcast_config: SimulcastConfig::disabled(),
            },
        )])
    }

    impl Negotiation for Recording {
        fn published_tracks(&self, peer: &str) -> BTreeMap<TrackId, TrackInfo> {
            camera(peer)
        }
        fn endpoint_connected(&mut self, roster: &Roster, peer: &str, out: &mut Outbox) {
            self.calls.push(format!("connected {peer}"));
            for other in roster.ids().filter(|p| *p != peer) {
                let tracks = camera(other);
                if !tracks.is_empty() {
                    out.send(
                        peer,
                        &ServerEvent::TracksAdded(TracksAdded::new(other, tracks)),
                    );
                }
            }
        }
        fn endpoint_removed(&mut self, roster: &Roster, peer: &str, out: &mut Outbox) {
            assert!(!roster.contains(peer));
            self.calls.push(format!("removed {peer}"));
            let track_ids: Vec<_> = camera(peer).into_keys().collect();
            if !track_ids.is_empty() {
                let ev = ServerEvent::TracksRemoved(TracksRemoved {
                    endpoint_id: peer.to_owned(),
                    track_ids,
                });
                out.send_to_others(roster, peer, &ev);
            }
        }
        fn handle(&mut self, _: &Roster, peer: &str, event: NegotiationEvent, _: &mut Outbox) {
            self.calls.push(format!("{peer} {event:?}"));
        }
    }

    #[test]
    fn negotiation_seam_is_called_in_protocol_order() {
        let mut s = Session::with_negotiation(SessionConfig::default(), Recording::default());
        s.handle_event("p1", &connect("A"));
        s.handle_event("p1", RENEGOTIATE);
        s.handle_event("p2", RENEGOTIATE); // not connected: must not reach the negotiation
        assert_eq!(
            s.handle_event("p2", &connect("B")),
            [
                to(
                    "p2",
                    r#"{"type":"connected","data":{"id":"p2","otherEndpoints":[{"id":"p1","type":"webrtc","metadata":{"name":"A"},"trackIdToMetadata":{"p1:cam":{"active":true,"type":"camera"}},"tracks":{"p1:cam":{"metadata":{"active":true,"type":"camera"},"simulcastConfig":{"enabled":false,"activeEncodings":["h"]}}}}]}}"#
                ),
                to(
                    "p1",
                    r#"{"type":"endpointAdded","data":{"id":"p2","type":"webrtc","metadata":{"name":"B"}}}"#
                ),
                to(
                    "p2",
                    r#"{"type":"tracksAdded","data":{"endpointId":"p1","trackIdToMetadata":{"p1:cam":{"active":true,"type":"camera"}},"tracks":{"p1:cam":{"metadata":{"active":true,"type":"camera"},"simulcastConfig":{"enabled":false,"activeEncodings":["h"]}}}}}"#
                ),
            ]
        );
        assert_eq!(
            s.remove_peer("p1"),
            [
                to(
                    "p2",
                    r#"{"type":"tracksRemoved","data":{"endpointId":"p1","trackIds":["p1:cam"]}}"#
                ),
                to("p2", r#"{"type":"endpointRemoved","data":{"id":"p1"}}"#),
            ]
        );
        s.remove_peer("p1");
        assert_eq!(
            s.negotiation().calls,
            [
                "connected p1",
                "p1 RenegotiateTracks",
                "connected p2",
                "removed p1"
            ]
        );
    }
}

/// Random event sequences against a model of what each client reconstructs from the events it
/// receives (research §3: `connected` sets the list, `endpointAdded/Removed/Updated` edit it).
#[cfg(test)]
mod proptests {
    use super::*;
    use proptest::prelude::*;

    const PEERS: [&str; 4] = ["p2", "p0", "p3", "p1"];

    #[derive(Debug, Clone)]
    enum Op {
        Send(usize, String),
        Remove(usize),
    }

    fn metadata() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("null".to_owned()),
            Just(r#"{"name":"a"}"#.to_owned()),
            Just(r#"{"name":"b","emoji":"🙂"}"#.to_owned()),
            Just("[1,2]".to_owned()),
            // Over the 48-byte limit set below.
            Just(format!(r#"{{"name":"{}"}}"#, "z".repeat(60))),
        ]
    }

    fn valid_event() -> impl Strategy<Value = String> {
        prop_oneof![
            3 => metadata().prop_map(|m| format!(r#"{{"type":"connect","data":{{"metadata":{m}}}}}"#)),
            1 => Just(r#"{"type":"connect","data":{}}"#.to_owned()),
            2 => Just(r#"{"type":"disconnect"}"#.to_owned()),
            3 => metadata().prop_map(|m| format!(r#"{{"type":"updateEndpointMetadata","data":{{"metadata":{m}}}}}"#)),
            1 => Just(r#"{"type":"custom","data":{"type":"renegotiateTracks"}}"#.to_owned()),
            1 => Just(r#"{"type":"custom","data":{"type":"candidate","data":{"candidate":"candidate:1","sdpMLineIndex":0}}}"#.to_owned()),
            1 => Just(r#"{"type":"updateTrackMetadata","data":{"trackId":"t","trackMetadata":{}}}"#.to_owned()),
            1 => Just(r#"{"type":"custom","data":{"type":"prioritizeTrack","data":{"trackId":"t"}}}"#.to_owned()),
            1 => Just(r#"{"type":"whatever"}"#.to_owned()),
        ]
    }

    fn event() -> impl Strategy<Value = String> {
        prop_oneof![
            8 => valid_event(),
            // Valid events cut short or with one byte replaced: near-miss malformed input.
            2 => (valid_event(), any::<prop::sample::Index>(), any::<u8>()).prop_map(|(s, i, b)| {
                let mut bytes = s.into_bytes();
                let i = i.index(bytes.len());
                if b % 2 == 0 {
                    bytes.truncate(i);
                } else {
                    bytes[i] = b" {}[]\":,0an"[usize::from(b) % 11];
                }
                String::from_utf8_lossy(&bytes).into_owned()
            }),
            1 => any::<String>(),
        ]
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (0..PEERS.len(), event()).prop_map(|(p, e)| Op::Send(p, e)),
            1 => (0..PEERS.len()).prop_map(Op::Remove),
        ]
    }

    /// What one client knows: its own id and the other endpoints, in the order it learnt them.
    #[derive(Debug, Default)]
    struct ClientView {
        id: Option<String>,
        others: Vec<(String, Value)>,
    }

    impl ClientView {
        fn receive(&mut self, me: &str, data: &str) {
            let ev: Value = serde_json::from_str(data).expect("server sent invalid JSON");
            let d = &ev["data"];
            let id = || d["id"].as_str().expect("event without id").to_owned();
            match ev["type"].as_str().expect("event without type") {
                "connected" => {
                    assert_eq!(self.id, None, "{me} got connected twice");
                    assert_eq!(d["id"], me);
                    self.id = Some(me.to_owned());
                    self.others = d["otherEndpoints"]
                        .as_array()
                        .expect("otherEndpoints")
                        .iter()
                        .map(|e| {
                            assert_eq!(e["type"], "webrtc");
                            assert!(e["trackIdToMetadata"].is_object() && e["tracks"].is_object());
                            (e["id"].as_str().unwrap().to_owned(), e["metadata"].clone())
                        })
                        .collect();
                }
                "endpointAdded" => {
                    assert!(self.id.is_some(), "{me} got endpointAdded before connected");
                    let id = id();
                    assert_ne!(id, me);
                    assert!(
                        self.others.iter().all(|(o, _)| *o != id),
                        "{id} added twice"
                    );
                    self.others.push((id, d["metadata"].clone()));
                }
                "endpointRemoved" => {
                    let id = id();
                    let before = self.others.len();
                    self.others.retain(|(o, _)| *o != id);
                    assert_eq!(self.others.len() + 1, before, "{me}: unknown {id} removed");
                }
                "endpointUpdated" => {
                    let id = id();
                    let entry = self.others.iter_mut().find(|(o, _)| *o == id);
                    let entry = entry.unwrap_or_else(|| panic!("{me}: unknown {id} updated"));
                    assert_ne!(entry.1, d["metadata"], "unchanged metadata forwarded");
                    entry.1 = d["metadata"].clone();
                }
                "error" => assert!(d["message"].is_string()),
                other => panic!("unexpected event {other}"),
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        #[test]
        fn clients_reconstruct_the_roster(ops in prop::collection::vec(op(), 0..60)) {
            let mut session = Session::new(SessionConfig {
                max_endpoints: 3,
                max_metadata_bytes: 48,
                ..SessionConfig::default()
            });
            let mut views: Vec<ClientView> = PEERS.iter().map(|_| ClientView::default()).collect();
            for op in ops {
                let (actor, outs) = match &op {
                    Op::Send(p, data) => (*p, session.handle_event(PEERS[*p], data)),
                    Op::Remove(p) => (*p, session.remove_peer(PEERS[*p])),
                };
                let connected: Vec<&str> = session.endpoints().collect();
                for o in &outs {
                    let Out::To { peer, data } = o else {
                        panic!("no negotiation, yet a plane command: {o:?}");
                    };
                    let i = PEERS.iter().position(|p| p == peer).expect("unknown recipient");
                    // Only the actor can be told about an error, and only connected peers hear
                    // about the room.
                    if data.starts_with(r#"{"type":"error""#) {
                        prop_assert_eq!(i, actor);
                    } else {
                        prop_assert!(connected.contains(&peer.as_str()), "{} not connected", peer);
                    }
                    views[i].receive(peer, data);
                }
                // A peer that left (disconnect or dead channel) forgets the room, as the client's
                // cleanUp does; a dead channel's next incarnation starts from scratch.
                for (i, p) in PEERS.iter().enumerate() {
                    if !connected.contains(p) {
                        views[i] = ClientView::default();
                    }
                }
                for p in &connected {
                    let i = PEERS.iter().position(|q| q == p).unwrap();
                    let expected: Vec<(String, Value)> = connected
                        .iter()
                        .filter(|q| *q != p)
                        .map(|q| ((*q).to_owned(), session.roster().metadata(q).unwrap().clone()))
                        .collect();
                    prop_assert_eq!(&views[i].others, &expected, "view of {} after {:?}", p, op);
                }
                prop_assert!(connected.len() <= 3);
            }
        }
    }
}
