//! The media engine of one room: the media-event session (endpoint lifecycle, `connect`,
//! `disconnect`, endpoint metadata), the negotiation core (tracks, `offerData` cycles, SDP
//! decisions, `midToTrackId`) and the [`MediaPlane`] seam to the part that moves media.
//!
//! It owns: parsing client media events (JSON strings from `mediaEvent.data`), the set of
//! connected endpoints and their tracks, the exact server events each peer must receive, in
//! order, and the commands the media plane must execute.
//!
//! It must never: do IO, read a clock, spawn, or hold anything async (the plane is driven through
//! commands and answers through events); iterate a hash map on the way to an output (outputs are
//! deterministic for a given input sequence); panic on client input (malformed events become an
//! `error` media event to the sender).

#[cfg(any(test, feature = "client-model"))]
pub mod client_model;
mod events;
mod fake_plane;
mod negotiation;
pub mod plane;
pub mod sdp;
mod session;
#[cfg(test)]
mod tests;
mod tracks;
pub mod vad;
#[cfg(feature = "media-webrtc")]
pub mod webrtc;

pub use events::{
    Bitrates, ClientCandidate, ClientEvent, Connected, CustomEvent, Endpoint, EndpointAdded,
    EndpointRemoved, EndpointType, EndpointUpdated, ErrorData, NegotiationEvent, OfferData,
    ParseError, SdpAnswer, SdpOffer, ServerCandidate, ServerEvent, SessionDescription,
    SimulcastConfig, TrackId, TrackInfo, TrackUpdated, TracksAdded, TracksRemoved, TracksTypes,
    TurnServer, VadNotification, VadStatus,
};
pub use fake_plane::{fake_answer, FakePlane, FAKE_CANDIDATE};
pub use negotiation::{Negotiation, NoNegotiation, Outbox};
pub use plane::{
    MLine, MLineRole, MediaKind, MediaPlane, PlaneCommand, PlaneEvent, PlaneFactory, PlaneOffer,
    PlaneSink,
};
pub use session::{Out, PeerId, Roster, Session, SessionConfig, MAX_ERROR_MESSAGE_BYTES};
pub use tracks::{NegotiationConfig, TrackNegotiation, TurnIssuer};
