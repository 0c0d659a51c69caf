//! The `videoroom` binary's subcommands, run as a user would run them.

use std::process::Command;

use serde_json::json;

use crate::support::driver::{ev, fast_opts, Driver};
use crate::support::server::TestServer;

const SECRET: &str = "cli test secret, long enough";

fn videoroom(args: &[&str], secret: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_videoroom"))
        .args(args)
        .env("VIDEOROOM_JOIN_SECRET", secret)
        .output()
        .expect("run the videoroom binary")
}

/// `videoroom token` prints the room's link with a token the server (same secret) accepts.
#[test]
fn token_command_prints_a_link_the_server_accepts() {
    let out = videoroom(
        &[
            "token",
            "--room",
            "standup",
            "--ttl",
            "1h",
            "--url",
            "https://meet.example.org/",
        ],
        SECRET,
    );
    assert!(out.status.success(), "{out:?}");
    let link = String::from_utf8(out.stdout).unwrap();
    let link = link.trim();
    let token = link
        .strip_prefix("https://meet.example.org/?room=standup&token=")
        .unwrap_or_else(|| panic!("unexpected link {link:?}"));

    let secret = videoroom::join_token::JoinSecret::new(SECRET.as_bytes()).unwrap();
    let srv = TestServer::start_with(|c| c.join_secret = Some(secret));
    let mut c = Driver::phx("c");
    c.connect(&srv.url(), fast_opts());
    c.join_with("room:standup", json!({"token": token}));
    c.expect(ev("join_ok").with("topic", "room:standup"));
    c.join_with("room:other", json!({"token": token}));
    let err = c.expect(ev("join_error").with("topic", "room:other"));
    assert_eq!(
        err["response"],
        json!({"reason": "token is for another room"})
    );
}

/// Mistakes are said plainly, with a non-zero exit: a weak secret, a bad room name, a bad ttl.
#[test]
fn token_command_refuses_bad_input() {
    for (args, secret, says) in [
        (&["token", "--room", "r"][..], "short", "at least 16 bytes"),
        (
            &["token", "--room", "a b"][..],
            SECRET,
            "room name may only contain",
        ),
        (
            &["token", "--room", "r", "--ttl", "soon"][..],
            SECRET,
            "--ttl",
        ),
    ] {
        let out = videoroom(args, secret);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{args:?}: {err}");
        assert!(out.stdout.is_empty(), "no link printed: {out:?}");
    }
}
