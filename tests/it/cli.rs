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

/// Runs the binary with no cluster or secret settings from the environment, killing it if it
/// has not exited within 10 s (a flag check that let it through would otherwise serve forever).
fn videoroom_env(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_videoroom"));
    cmd.args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    for var in [
        "VIDEOROOM_ETCD",
        "VIDEOROOM_NODE_NAME",
        "VIDEOROOM_DIST_LISTEN",
        "VIDEOROOM_DIST_ADVERTISE",
        "VIDEOROOM_LEASE_TTL",
        "VIDEOROOM_ETCD_PREFIX",
        "VIDEOROOM_JOIN_SECRET",
    ] {
        cmd.env_remove(var);
    }
    cmd.envs(env.iter().copied());
    let mut child = cmd.spawn().expect("run the videoroom binary");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while child.try_wait().expect("wait for videoroom").is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("reap videoroom");
            panic!("videoroom {args:?} did not exit: {out:?}");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child
        .wait_with_output()
        .expect("collect videoroom's output")
}

/// Cluster flags come together: `--etcd` without `--node-name` (or `--dist-listen`), or
/// `--node-name` without `--etcd`, is a usage error (exit 2) naming the missing flag, given on
/// the command line or in the environment; so is a lease TTL etcd cannot honour.
#[test]
fn cluster_flags_refuse_an_incomplete_cluster() {
    let etcd = "http://127.0.0.1:1";
    for (args, env, says) in [
        (
            &["--port", "0", "--etcd", etcd][..],
            &[][..],
            &["--node-name", "--dist-listen"][..],
        ),
        (
            &["--port", "0", "--etcd", etcd, "--node-name", "n1"][..],
            &[][..],
            &["--dist-listen"][..],
        ),
        (
            &["--port", "0", "--node-name", "n1"][..],
            &[][..],
            &["--etcd"][..],
        ),
        (
            &["--port", "0", "--dist-listen", "127.0.0.1:0"][..],
            &[][..],
            &["--etcd"][..],
        ),
        (
            &["--port", "0"][..],
            &[("VIDEOROOM_ETCD", etcd)][..],
            &["--node-name"][..],
        ),
        (
            &["--port", "0"][..],
            &[("VIDEOROOM_NODE_NAME", "n1")][..],
            &["--etcd"][..],
        ),
        (
            &[
                "--port",
                "0",
                "--etcd",
                etcd,
                "--node-name",
                "n1",
                "--dist-listen",
                "127.0.0.1:0",
                "--lease-ttl",
                "1",
            ][..],
            &[][..],
            &["--lease-ttl", "at least 2"][..],
        ),
    ] {
        let out = videoroom_env(args, env);
        assert_eq!(out.status.code(), Some(2), "{args:?} {env:?}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        // clap lists the missing flags before its usage line, which names every flag given.
        let named = match err.split_once("not provided:") {
            Some((_, missing)) => missing.split("Usage:").next().unwrap_or_default(),
            None => &err,
        };
        for flag in says {
            assert!(named.contains(flag), "{args:?} {env:?} names {flag}: {err}");
        }
        assert!(out.stdout.is_empty(), "{args:?} {env:?}: {out:?}");
    }
}
