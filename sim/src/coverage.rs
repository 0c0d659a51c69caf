//! Coverage from the typed events the product emits (`videoroom::rt::probe`): each event is
//! counted under its stable name, so a campaign shows which interesting branches it reached (a
//! lost registration race, a join racing a room's stop, a slow consumer dropped...) without
//! reading log text. Counting is a map increment: no formatting on the probe path.

use std::collections::BTreeMap;

use videoroom::rt::probe::Event;

/// Races and branches the fixed campaign must reach ("sometimes" assertions): a campaign that
/// never reaches one proves nothing about it. Names are [`Event::name`]s or client-side
/// `reached` names.
pub const SOMETIMES: &[&str] = &[
    "StartLostRace",
    "JoinRetriedAfterRoomStop",
    "JoinRetriedAfterRoomDown",
    "ChannelRoomDown",
    "RoomStoppedEmpty",
    "UndecodableFrame",
    "PushFromUnjoinedChannel",
    "JoinOutcomeOfForgottenChannel",
    "BroadcastOverBudget",
    "InboundTrackEnded",
    "Demonitored",
    "client: sdpAnswer applied",
    "client: tracksRemoved",
];

/// Event counts of one world, by event name.
#[derive(Clone, Default)]
pub struct Counts(BTreeMap<&'static str, u64>);

impl Counts {
    pub fn count(&mut self, e: &Event<'_>) {
        *self.0.entry(e.name()).or_default() += 1;
    }

    pub fn get(&self) -> &BTreeMap<&'static str, u64> {
        &self.0
    }
}
