//! The admission rule of simultaneous connects, on both sides of each race.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, Notify};

use super::handle::HandleInner;
use super::*;

fn node(name: &str, incarnation: u64) -> NodeId {
    NodeId {
        name: name.into(),
        incarnation,
    }
}

fn up(peer: NodeId, dialed_by_me: bool) -> Slot {
    let (cmds, _) = mpsc::channel(1);
    Slot::Up {
        handle: LinkHandle(Arc::new(HandleInner {
            id: 1,
            peer,
            cmds,
            down: AtomicBool::new(false),
            cause: Mutex::new(None),
            closing: AtomicBool::new(false),
            close: Notify::new(),
        })),
        dialed_by_me,
    }
}

#[test]
fn a_race_is_won_by_the_dial_of_the_smaller_name_on_both_sides() {
    let (a, b) = (node("a", 1), node("b", 1));
    let dialing = Slot::Dialing { id: 1 };
    // Each side is dialing the other when the other's dial arrives.
    assert_eq!(admit(&b, &a, Some(&dialing)), Admit::Accept);
    assert_eq!(admit(&a, &b, Some(&dialing)), Admit::Refuse);
    // a's dial completed first: b's late dial is still refused.
    assert_eq!(admit(&a, &b, Some(&up(b.clone(), true))), Admit::Refuse);
}

#[test]
fn a_redial_replaces_a_stale_link_unless_it_may_be_a_race_loser() {
    let (a, b) = (node("a", 1), node("b", 1));
    assert_eq!(admit(&a, &b, None), Admit::Accept);
    assert_eq!(admit(&b, &a, Some(&up(a.clone(), false))), Admit::Accept);
    assert_eq!(admit(&b, &a, Some(&up(a.clone(), true))), Admit::Accept);
    assert_eq!(admit(&a, &b, Some(&up(b.clone(), false))), Admit::Accept);
    // A restarted peer replaces its old incarnation's link; a dead one cannot come back.
    assert_eq!(
        admit(&a, &node("b", 2), Some(&up(b.clone(), true))),
        Admit::Accept
    );
    assert_eq!(admit(&a, &node("b", 0), Some(&up(b, false))), Admit::Refuse);
}
