//! The web app end to end in headless Chromium: two pages join one room through the real UI
//! against this server with the real media plane (webrtc SFU + integrated TURN), each decodes
//! the other's video and audio, sees both names listed and the other's mute/camera state, gets
//! media flowing again after the room process crashes (phoenix rejoins, the page reconnects), and
//! sees the other's tile go when it leaves; a third page is told the room is full, then takes
//! the leaver's place and plays on the m-lines the server recycled; and the camera-denied and
//! server-unreachable states show. "Stop camera" stops the camera track and "Start camera" brings
//! video back without a rejoin; a page without a camera joins with its microphone only, one with
//! neither joins anyway, and the others see which devices they lack. The browser side is
//! `tests/e2e/room.mjs` (playwright-core driving Debian's /usr/bin/chromium);
//! `scripts/setup-chromium.sh` installs both. A screenshot of the room lands in the target dir
//! (`e2e-room.png`).
//!
//! A second run (`tests/e2e/layout.mjs`) checks the tile layout with 1 to 3 people at desktop and
//! phone sizes from the tiles' bounding boxes, pinning a tile, the invite link, and axe-core
//! accessibility checks of the lobby and the room; its screenshots (`e2e-layout-*.png`) land in
//! the target dir too.
#![cfg(feature = "media-webrtc")]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;
use videoroom::join_token::JoinSecret;
use videoroom::server::MediaConfig;

use crate::support::server::TestServer;

/// The whole browser run (launch, two joins, media checks, leave) must finish within this.
pub(crate) const BROWSER_RUN: Duration = Duration::from_secs(180);
/// Peers per room on the test server: a third page must be refused.
const ROOM_LIMIT: usize = 2;

pub(crate) fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Panics (never skips) when the browser or its driver is missing.
pub(crate) fn check_browser_setup(root: &Path) -> PathBuf {
    let chromium = std::env::var_os("VIDEOROOM_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    let mut missing = Vec::new();
    if !chromium.is_file() {
        missing.push(format!("Chromium ({})", chromium.display()));
    }
    for package in ["playwright-core", "axe-core"] {
        let manifest = root.join(format!("tests/e2e/node_modules/{package}/package.json"));
        if !manifest.is_file() {
            missing.push(format!("{package} (tests/e2e/node_modules)"));
        }
    }
    assert!(
        missing.is_empty(),
        "the browser end-to-end test needs {}: run scripts/setup-chromium.sh \
         (or `npm ci` in tests/e2e when only axe-core is missing)",
        missing.join(" and ")
    );
    chromium
}

/// The real media plane (webrtc SFU and integrated TURN) on loopback.
pub(crate) fn real_media() -> MediaConfig {
    MediaConfig {
        real: true,
        turn_bind: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
        media_workers: crate::support::sfu_peer::test_media_workers(),
        ..MediaConfig::default()
    }
}

#[test]
fn two_browsers_see_and_hear_each_other() {
    let root = repo_root();
    let chromium = check_browser_setup(&root);
    let _serial = crate::support::MEDIA_EXCLUSIVE.blocking_lock();
    let srv = TestServer::start_with(|c| {
        c.limits.max_peers_per_room = ROOM_LIMIT;
        c.media = real_media();
    });
    let base = format!("http://{}/", srv.addr());
    let shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("e2e-room.png");
    let _ = std::fs::remove_file(&shot);

    let (result, out) = run_script(
        &root,
        &chromium,
        &srv,
        "room.mjs",
        &[&base, shot.to_str().expect("utf-8 path")],
        &[
            ("E2E_ROOM_LIMIT", ROOM_LIMIT.to_string()),
            ("E2E_CONTROL", "1".to_owned()),
        ],
    );
    for who in ["alice", "bob"] {
        let r = &result[who];
        let frames = r["framesDecodedDelta"].as_f64().unwrap_or(0.0);
        let energy = r["audioEnergyDelta"].as_f64().unwrap_or(0.0);
        let level = r["audioLevel"].as_f64().unwrap_or(0.0);
        assert!(frames > 5.0, "{who} decodes too few frames: {r}");
        assert!(energy > 0.0 || level > 0.0, "{who} hears nothing: {r}");
        let again = &result["afterCrash"][who];
        let frames = again["framesDecodedDelta"].as_f64().unwrap_or(0.0);
        assert!(
            frames > 5.0,
            "{who} decodes too few frames after the room crash: {again}"
        );
    }
    for key in ["roomFull", "cameraDenied", "unreachable"] {
        assert!(result[key].is_string(), "no {key} check in {result}");
    }
    // Stop camera ends the track; Start camera brings video back on the same sender.
    assert_eq!(result["cameraStopped"]["sender"], "ended", "{result}");
    let again = &result["afterCameraRestart"];
    let frames = again["framesDecodedDelta"].as_f64().unwrap_or(0.0);
    assert!(frames > 5.0, "no video after Start camera: {again}");
    // Camera denied: the microphone alone joins and is heard; the others see what is missing.
    let heard = &result["audioOnlyHeard"];
    assert!(
        heard["audioEnergyDelta"].as_f64().unwrap_or(0.0) > 0.0,
        "the audio-only peer is not heard: {heard}"
    );
    assert_eq!(result["audioOnlyMarker"]["marker"], "no camera", "{result}");
    assert_eq!(
        result["deniedMarker"]["marker"], "no camera \u{b7} no mic",
        "{result}"
    );
    assert_eq!(result["afterLeave"], serde_json::json!(["Alice (you)"]));
    // Carol in Bob's place: Alice decodes her on the recycled m-lines, which did not grow.
    let recycled = &result["recycled"];
    for who in ["alice", "carol"] {
        let frames = recycled[who]["framesDecodedDelta"].as_f64().unwrap_or(0.0);
        assert!(
            frames > 5.0,
            "{who} decodes too few frames with Carol: {recycled}"
        );
    }
    assert_eq!(
        recycled["before"], recycled["after"],
        "Alice's connection grew m-lines for Carol instead of recycling Bob's"
    );
    assert_eq!(recycled["after"]["recvonly"], 2, "{recycled}");
    // Chromium makes a TURN allocation per network per ICE restart (every renegotiation) and
    // keeps the old ones until it leaves; the quota (with idle eviction) must never refuse it.
    let turn = srv.turn_stats().expect("the real media plane");
    println!("TURN: {turn:?}");
    let quota = videoroom::turn::TurnLimits::default().max_allocations_per_peer;
    assert!(
        turn.peak_per_peer <= quota && turn.quota_refused == 0,
        "a browser was refused a TURN allocation (quota {quota}): {turn:?}"
    );
    assert!(
        shot.is_file(),
        "no screenshot at {} ({out})",
        shot.display()
    );
    println!("screenshot: {}", shot.display());
}

/// Runs `tests/e2e/<script>` with `args` against `srv` with `envs`, crashing a room when it
/// asks; returns its `E2E_RESULT` and its output. Panics with the output if it fails or overruns.
fn run_script(
    root: &Path,
    chromium: &Path,
    srv: &TestServer,
    script: &str,
    args: &[&str],
    envs: &[(&str, String)],
) -> (Value, String) {
    run_script_with(root, chromium, script, args, envs, |line| {
        let room = line.strip_prefix("E2E_KILL_ROOM ")?;
        let killed = srv.app().kill_room(room.trim()).is_some();
        Some(format!("killed {killed}"))
    })
}

/// Runs `tests/e2e/<script>` with `args` and `envs`, echoing its output lines; `answer` sees each
/// line and what it returns is written back as one line on the script's stdin. Returns its
/// `E2E_RESULT` and its output. Panics with the output if it fails or overruns [`BROWSER_RUN`].
pub(crate) fn run_script_with(
    root: &Path,
    chromium: &Path,
    script: &str,
    args: &[&str],
    envs: &[(&str, String)],
    mut answer: impl FnMut(&str) -> Option<String>,
) -> (Value, String) {
    let mut child = Command::new("node")
        .arg(root.join("tests/e2e").join(script))
        .args(args)
        .env("VIDEOROOM_CHROMIUM", chromium)
        .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
        .current_dir(root.join("tests/e2e"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot start `node tests/e2e/{script}`: {e}; install Node.js >= 20")
        });
    let mut stdin = child.stdin.take().expect("stdin");
    let stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let (line_tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if line_tx.send(line).is_err() {
                break;
            }
        }
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });

    // Echo the script's lines, and answer those it asks the driver about.
    let deadline = Instant::now() + BROWSER_RUN;
    let mut out = String::new();
    let mut timed_out = false;
    loop {
        match lines.recv_timeout(Duration::from_millis(200)) {
            Ok(line) => {
                println!("{line}");
                if let Some(reply) = answer(&line) {
                    let _ = writeln!(stdin, "{reply}");
                    let _ = stdin.flush();
                }
                out.push_str(&line);
                out.push('\n');
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        if Instant::now() > deadline {
            timed_out = true;
            let _ = child.kill();
            break;
        }
    }
    let status = child.wait().expect("wait for node");
    let err = err_reader.join().unwrap_or_default();
    assert!(
        !timed_out,
        "the browser run took longer than {BROWSER_RUN:?}\nstdout:\n{out}\nstderr:\n{err}"
    );
    assert!(
        status.success(),
        "the browser run failed ({status})\nstdout:\n{out}\nstderr:\n{err}"
    );

    let result: Value = out
        .lines()
        .find_map(|l| l.strip_prefix("E2E_RESULT "))
        .and_then(|j| serde_json::from_str(j).ok())
        .unwrap_or_else(|| panic!("no E2E_RESULT line in the output:\n{out}\nstderr:\n{err}"));
    (result, out)
}

/// A link minted for one room (`videoroom token`) joins through the lobby in Chromium on a
/// server with a join secret, and keeps its token in the address bar; the same room's bare
/// link is refused with a message that says a token is needed.
#[test]
fn a_token_link_joins_and_a_bare_link_is_told_why_not() {
    let root = repo_root();
    let chromium = check_browser_setup(&root);
    let _serial = crate::support::MEDIA_EXCLUSIVE.blocking_lock();
    let secret = JoinSecret::new(b"e2e join secret, 16+ bytes").unwrap();
    let room = "e2e-token";
    let token = secret.mint(
        room,
        std::time::SystemTime::now() + Duration::from_secs(3600),
    );
    let srv = TestServer::start_with(|c| {
        c.join_secret = Some(secret);
        c.media = real_media();
    });
    let base = format!("http://{}/", srv.addr());
    let shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("e2e-token.png");
    let (result, out) = run_script(
        &root,
        &chromium,
        &srv,
        "room.mjs",
        &[&base, shot.to_str().expect("utf-8 path")],
        &[("E2E_TOKEN_LINK", format!("?room={room}&token={token}"))],
    );
    assert_eq!(result["tokenRoom"], room, "{out}");
    assert_eq!(result["tokenInAddressBar"], true, "{out}");
    let refused = result["bareLink"].as_str().unwrap_or_default();
    assert!(refused.contains("a join token is required"), "{out}");
}

/// A browser run against a fresh server with real media and its default peer limit; holds the
/// media lock (one media test at a time) until dropped. Fields drop in this order: the server
/// stops before the lock goes to the next test.
struct RealMediaRun {
    srv: TestServer,
    _serial: net_tokio::sync::MutexGuard<'static, ()>,
    root: PathBuf,
    chromium: PathBuf,
    base: String,
    dir: PathBuf,
}

fn real_media_run() -> RealMediaRun {
    let root = repo_root();
    let chromium = check_browser_setup(&root);
    let _serial = crate::support::MEDIA_EXCLUSIVE.blocking_lock();
    let srv = TestServer::start_with(|c| {
        c.media = real_media();
    });
    let base = format!("http://{}/", srv.addr());
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    RealMediaRun {
        srv,
        _serial,
        root,
        chromium,
        base,
        dir,
    }
}

/// Three people at 1280x800, 1024x768, 390x844 and 844x390 (and one and two before them): the
/// tiles fill the stage without overlapping and every name stays readable; pinning a tile by
/// click, Enter or Space enlarges it; the lobby and the room pass axe-core (no serious or critical
/// violations); alone in the room the invite link is shown and copied. The server has its default
/// peer limit, so three fit (the main test keeps a limit of two for its room-full check).
#[test]
fn the_layout_fills_the_stage_and_the_pages_are_accessible() {
    let run = real_media_run();
    let sizes = ["1280x800", "1024x768", "390x844", "844x390"];
    let shots: Vec<PathBuf> = sizes
        .iter()
        .map(|s| run.dir.join(format!("e2e-layout-3p-{s}.png")))
        .collect();
    for shot in &shots {
        let _ = std::fs::remove_file(shot);
    }
    let (result, out) = run_script(
        &run.root,
        &run.chromium,
        &run.srv,
        "layout.mjs",
        &[&run.base, run.dir.to_str().expect("utf-8 path")],
        &[],
    );
    for n in 1..=3 {
        for size in sizes {
            let layout = &result["layouts"][format!("{n}p-{size}")];
            assert_eq!(layout["ok"], true, "{n} people at {size}: {layout}\n{out}");
        }
    }
    for shot in &shots {
        assert!(shot.is_file(), "no screenshot at {}", shot.display());
        println!("screenshot: {}", shot.display());
    }
}

/// Runs one part of `features.mjs` against a fresh server with real media; returns its result.
fn run_features(part: &str) -> Value {
    let run = real_media_run();
    let (result, out) = run_script(
        &run.root,
        &run.chromium,
        &run.srv,
        "features.mjs",
        &[&run.base, run.dir.to_str().expect("utf-8 path"), part],
        &[],
    );
    assert_eq!(result["part"], part, "{out}");
    result
}

/// Screen sharing: a second video track with `{type: "screensharing"}`, shown large to the
/// others (also to one joining later) as "<name>'s screen" with the cameras in a strip; one share
/// at a time; Stop sharing, or the browser ending the track, removes it on every page.
#[test]
fn a_shared_screen_shows_large_to_the_others_and_goes_when_stopped() {
    let result = run_features("screen");
    assert_eq!(result["aliceSharing"]["senders"], 1, "{result}");
    assert_eq!(result["bobLabel"]["label"], "Alice's screen", "{result}");
    assert!(
        result["bobPlays"]["w"].as_f64().unwrap_or(0.0) > 0.0,
        "{result}"
    );
    assert_eq!(result["stopped"]["senders"], 0, "{result}");
    assert_eq!(result["hiddenWithoutDisplayMedia"], true, "{result}");
}

/// Device choice: the lobby lists the devices and previews the camera; the choice survives a
/// reload and is what joins; the settings dialog switches camera and microphone on the same
/// senders while the other side keeps decoding; a remembered camera that is gone falls back.
#[test]
fn devices_are_picked_in_the_lobby_remembered_and_switched_in_the_room() {
    let result = run_features("devices");
    assert_eq!(result["cameraSwitched"]["old"], "ended", "{result}");
    assert!(
        result["bobAfterCameraSwitch"]["delta"]
            .as_f64()
            .unwrap_or(0.0)
            > 5.0,
        "{result}"
    );
    assert_eq!(result["micSwitched"]["old"], "ended", "{result}");
}

/// Connection health: no marker on healthy connections; a peer whose media stops is marked
/// "Connection interrupted" within ~6 s (a peer with its camera off and muted is not), and the
/// marker clears when the media resumes.
#[test]
fn an_interrupted_peer_is_marked_and_a_quiet_one_is_not() {
    let result = run_features("health");
    let after = result["interruptedAfterMs"].as_f64().unwrap_or(f64::MAX);
    assert!(after <= 6_500.0, "marked after {after} ms: {result}");
    assert_eq!(
        result["bobQuiet"]["marked"],
        serde_json::json!([]),
        "{result}"
    );
    assert_eq!(result["resumed"]["ok"], true, "{result}");
}

/// The speaker view: off by default; turned on, whoever else has spoken for a second is shown
/// large (never oneself), stays so while quiet, gives way to a pin, and the grid comes back when
/// it is turned off or the speaker leaves.
#[test]
fn the_speaker_view_enlarges_whoever_speaks() {
    let result = run_features("speaker");
    assert_eq!(result["buttonBefore"]["pressed"], "false", "{result}");
    assert_eq!(result["buttonOn"]["saved"], "on", "{result}");
    assert_eq!(result["buttonOff"]["pressed"], "false", "{result}");
    assert_eq!(result["speakerAria"], "true", "{result}");
    let carol = result["carolLargeAfterMs"].as_f64().unwrap_or(0.0);
    assert!(carol >= 1_000.0, "Carol large after {carol} ms: {result}");
}
