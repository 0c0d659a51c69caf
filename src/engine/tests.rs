//! The engine through its public face: what the room and the logs see of it.

use super::*;

/// The room asks the roster whether anyone is left; it follows connects and disconnects.
#[test]
fn the_roster_is_empty_exactly_when_nobody_is_connected() {
    let mut s = Session::new(SessionConfig::default());
    assert!(s.roster().is_empty());
    s.handle_event("p1", r#"{"type":"connect","data":{"metadata":null}}"#);
    assert!(!s.roster().is_empty());
    assert_eq!(s.roster().len(), 1);
    s.handle_event("p1", r#"{"type":"disconnect"}"#);
    assert!(s.roster().is_empty());
}

/// The negotiation config goes to the logs with the room's; its TURN issuer holds the secret
/// credentials are minted from, so it shows as a name and nothing of what it holds.
#[test]
fn the_turn_issuer_shows_in_logs_as_a_name_only() {
    let issuer = TurnIssuer::new(|peer| {
        vec![TurnServer {
            server_addr: "127.0.0.1".into(),
            server_port: 3478,
            transport: "udp".into(),
            username: format!("secret-user-{peer}"),
            password: "secret-password".into(),
        }]
    });
    let config = NegotiationConfig {
        turn_issuer: Some(issuer),
        ..Default::default()
    };
    let shown = format!("{config:?}");
    assert!(
        shown.contains("turn_issuer: Some(TurnIssuer(..))"),
        "{shown}"
    );
    assert!(!shown.contains("secret"), "{shown}");
}
