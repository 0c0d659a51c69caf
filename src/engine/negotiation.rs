//! The seam between the session (who is in the room) and the negotiation core (tracks, SDP,
//! ICE, `offerData` cycles; implemented by [`TrackNegotiation`](super::TrackNegotiation)).
//!
//! The session owns endpoint lifecycle and endpoint metadata; a [`Negotiation`] owns everything
//! about tracks and the room's media plane. The session calls it where the protocol interleaves
//! the two (research §4.1, §4.3, §4.6) and hands it the plane's reports.

use std::collections::BTreeMap;

use super::events::{NegotiationEvent, ServerEvent, TrackId, TrackInfo};
use super::plane::{PlaneCommand, PlaneEvent};
use super::session::{Out, Roster};
use crate::shared_text::SharedText;

/// Collects outgoing media events in the order they must reach the clients.
#[derive(Debug, Default)]
pub struct Outbox {
    outs: Vec<Out>,
}

impl Outbox {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn send(&mut self, peer: &str, event: &ServerEvent) {
        self.outs.push(Out::To {
            peer: peer.to_owned(),
            data: event.to_json().into(),
        });
    }

    /// Sends to every connected endpoint except `except`, in join order.
    pub fn send_to_others(&mut self, roster: &Roster, except: &str, event: &ServerEvent) {
        let data = SharedText::new(event.to_json());
        for peer in roster.ids().filter(|p| *p != except) {
            self.outs.push(Out::To {
                peer: peer.to_owned(),
                data: data.clone(),
            });
        }
    }

    /// Queues a command for the media plane, ordered with the media events around it.
    pub fn plane(&mut self, command: PlaneCommand) {
        self.outs.push(Out::Plane(command));
    }

    pub fn into_outs(self) -> Vec<Out> {
        self.outs
    }
}

/// Track and media negotiation, driven by the session.
///
/// Implementations are sans-IO like the session: they only push to the [`Outbox`].
pub trait Negotiation {
    /// Tracks `peer` publishes right now, for its entry in a newcomer's
    /// `connected.otherEndpoints`.
    fn published_tracks(&self, peer: &str) -> BTreeMap<TrackId, TrackInfo>;

    /// `peer` has just connected and is in `roster`. `connected` (to it) and `endpointAdded` (to
    /// the others) are already in `out`; this is where the `tracksAdded` per publishing endpoint
    /// that 0.5.3 needs after `connected`, and the newcomer's first `offerData`, belong.
    fn endpoint_connected(&mut self, roster: &Roster, peer: &str, out: &mut Outbox);

    /// `peer` has left and is no longer in `roster`. The session pushes `endpointRemoved` right
    /// after this returns, so `tracksRemoved` pushed here reaches the others first, as the
    /// reference server orders them.
    fn endpoint_removed(&mut self, roster: &Roster, peer: &str, out: &mut Outbox);

    /// Called right after `endpointRemoved` for `peer` went to the others: the reference
    /// server renegotiates with each of them only now (research §4.6).
    fn after_endpoint_removed(&mut self, _roster: &Roster, _peer: &str, _out: &mut Outbox) {}

    /// A negotiation event from `peer`, which is connected (events from peers that are not are
    /// dropped by the session).
    fn handle(&mut self, roster: &Roster, peer: &str, event: NegotiationEvent, out: &mut Outbox);

    /// A report of the room's media plane. It may concern a peer that has left since: such
    /// reports are stale and must be dropped.
    fn plane_event(&mut self, _roster: &Roster, event: PlaneEvent, _out: &mut Outbox) {
        tracing::debug!(?event, "no negotiation; plane event dropped");
    }
}

/// A negotiation that publishes nothing and drops every event: the session alone, until the
/// negotiation core exists.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoNegotiation;

impl Negotiation for NoNegotiation {
    fn published_tracks(&self, _peer: &str) -> BTreeMap<TrackId, TrackInfo> {
        BTreeMap::new()
    }

    fn endpoint_connected(&mut self, _roster: &Roster, _peer: &str, _out: &mut Outbox) {}

    fn endpoint_removed(&mut self, _roster: &Roster, _peer: &str, _out: &mut Outbox) {}

    fn handle(&mut self, _roster: &Roster, peer: &str, event: NegotiationEvent, _out: &mut Outbox) {
        tracing::debug!(peer, ?event, "negotiation not implemented; event dropped");
    }
}
