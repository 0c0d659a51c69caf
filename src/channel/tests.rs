//! Unit tests of the channel process on real tokio, against a fake socket process that records
//! what the channel sends it.

use tokio::sync::mpsc;

use super::*;
use crate::app::Limits;

fn fake_socket(app: &App) -> (Addr<ConnMsg>, mpsc::UnboundedReceiver<ChannelEvent>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let addr = app.sys.spawn(64, move |mut ctx: Ctx<ConnMsg>| async move {
        loop {
            match ctx.recv().await {
                Received::Msg(ConnMsg::Channel(ev)) => {
                    let _ = tx.send(ev);
                }
                Received::Down(_) => {}
            }
        }
    });
    (addr, rx)
}

fn start(app: &App, socket: &Addr<ConnMsg>, topic: &str) -> Addr<ChannelMsg> {
    start_with(app, socket, topic, json!({}))
}

fn start_with(app: &App, socket: &Addr<ConnMsg>, topic: &str, payload: Value) -> Addr<ChannelMsg> {
    let (app2, socket2, topic2) = (app.clone(), socket.clone(), topic.to_string());
    app.sys.spawn(app.limits.channel_mailbox, move |c| {
        run(app2, socket2, ChanId(1), topic2, payload, c)
    })
}

/// The exit reason of `pid`, from a monitor set up now (before it can exit unobserved).
fn watch_exit(app: &App, pid: rt::Pid) -> oneshot::Receiver<ExitReason> {
    let (tx, rx) = oneshot::channel();
    app.sys.spawn(4, move |mut ctx: Ctx<()>| async move {
        ctx.monitor(pid);
        if let Received::Down(d) = ctx.recv().await {
            let _ = tx.send(d.reason);
        }
        ExitReason::Normal
    });
    rx
}

/// The join answer of a fresh channel on `topic` with `payload`: `Ok` or the refusal's reason.
async fn join_answer(app: &App, topic: &str, payload: Value) -> Result<(), String> {
    let (socket, mut events) = fake_socket(app);
    let _chan = start_with(app, &socket, topic, payload);
    match tokio::time::timeout(std::time::Duration::from_secs(5), events.recv()).await {
        Ok(Some(ChannelEvent::JoinOk { .. })) => Ok(()),
        Ok(Some(ChannelEvent::JoinError { response, .. })) => {
            Err(response["reason"].as_str().unwrap_or_default().to_owned())
        }
        other => panic!("{topic}: expected a join answer, got {other:?}"),
    }
}

type Events = mpsc::UnboundedReceiver<ChannelEvent>;

async fn joined(app: &App, topic: &str) -> (Addr<ConnMsg>, Addr<ChannelMsg>, Events) {
    let (socket, mut events) = fake_socket(app);
    let chan = start(app, &socket, topic);
    match events.recv().await {
        Some(ChannelEvent::JoinOk {
            chan: ChanId(1), ..
        }) => {}
        other => panic!("expected a join ok, got {other:?}"),
    }
    (socket, chan, events)
}

/// A channel whose socket goes away stops quietly (`Shutdown`); only its room's death is an
/// error (which the client sees as `phx_error`).
#[tokio::test]
async fn socket_down_is_a_shutdown_room_down_an_error() {
    let app = App::new(Limits::default());
    let (socket, chan, _) = joined(&app, "room:a").await;
    app.sys.kill(socket.pid());
    assert_eq!(app.sys.wait_exit(chan.pid()).await, ExitReason::Shutdown);

    let (_socket, chan, _) = joined(&app, "room:b").await;
    app.kill_room("b").expect("room b runs");
    assert_eq!(
        app.sys.wait_exit(chan.pid()).await,
        ExitReason::Error("room down: killed".into())
    );
}

/// A client event the channel cannot use gets one error reply naming what was wrong.
#[tokio::test]
async fn bad_client_events_get_an_error_reply_with_the_reason() {
    let app = App::new(Limits::default());
    let (_socket, chan, mut events) = joined(&app, "room:a").await;
    for (event, payload, reason) in [
        ("mediaEvent", json!({}), "mediaEvent needs a string `data`"),
        (
            "mediaEvent",
            json!({"data": 1}),
            "mediaEvent needs a string `data`",
        ),
        ("shout", json!({"data": "x"}), "unknown event"),
    ] {
        chan.try_send(ChannelMsg::FromClient {
            event: event.into(),
            msg_ref: Some("7".into()),
            payload,
        })
        .unwrap();
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), events.recv()).await;
        match got {
            Ok(Some(ChannelEvent::Reply {
                chan: ChanId(1),
                msg_ref,
                status,
                response,
            })) => {
                assert_eq!(msg_ref.as_deref(), Some("7"));
                assert_eq!(status, "error");
                assert_eq!(response, json!({ "reason": reason }), "for {event}");
            }
            other => panic!("{event}: expected an error reply, got {other:?}"),
        }
    }
    assert!(
        app.sys.is_alive(chan.pid()),
        "a bad event does not end the channel"
    );
}

/// Names outside the README's alphabet are refused before any room starts, with the rule.
#[tokio::test]
async fn look_alike_room_names_are_refused_with_the_rule() {
    let app = App::new(Limits::default());
    for topic in [
        "room:a\u{202e}b",
        "room:zero\u{200b}width",
        "room:caf\u{e9}",
        "room:",
    ] {
        let reason = join_answer(&app, topic, json!({})).await.unwrap_err();
        assert!(reason.starts_with("room name"), "{topic:?}: {reason}");
    }
    assert!(
        app.rooms.is_empty(),
        "no room was started for a refused name"
    );
}

/// At `max_rooms`, a join that would start another room is refused with a clear reason, while
/// joins to a running room still succeed; once a room stops, a new one may start.
#[tokio::test]
async fn the_room_limit_refuses_new_rooms_only() {
    let app = App::new(Limits {
        max_rooms: 2,
        ..Limits::default()
    });
    let (_s1, _c1, _) = joined(&app, "room:a").await;
    let (_s2, _c2, _) = joined(&app, "room:b").await;
    assert_eq!(
        join_answer(&app, "room:c", json!({})).await,
        Err(ROOM_LIMIT_REASON.to_owned())
    );
    assert_eq!(join_answer(&app, "room:a", json!({})).await, Ok(()));
    let b = app.room_pid("b").expect("room b runs");
    app.kill_room("b");
    app.sys.wait_exit(b).await;
    assert_eq!(join_answer(&app, "room:c", json!({})).await, Ok(()));
    assert_eq!(app.rooms.len(), 2);
}

/// With a join secret, the join payload's token decides, and each refusal says why.
#[tokio::test]
async fn join_tokens_admit_their_room_only_while_valid() {
    use crate::join_token::JoinSecret;
    let secret = JoinSecret::new(b"a test secret, long enough").unwrap();
    let app = App::new(Limits::default()).with_join_secret(Some(secret.clone()));
    let later = rt::time::wall_clock() + std::time::Duration::from_secs(60);
    let earlier = rt::time::wall_clock() - std::time::Duration::from_secs(60);
    for (payload, want) in [
        (json!({}), Err("a join token is required")),
        (json!({"token": 7}), Err("join token is not valid")),
        (
            json!({"token": secret.mint("other", later)}),
            Err("token is for another room"),
        ),
        (
            json!({"token": secret.mint("a", earlier)}),
            Err("token expired"),
        ),
        (json!({"token": secret.mint("a", later)}), Ok(())),
    ] {
        let got = join_answer(&app, "room:a", payload.clone()).await;
        assert_eq!(got, want.map_err(str::to_owned), "{payload}");
    }
}

/// A joined channel that does not `connect` within the grace is dropped: its client gets
/// `dropped {reason}` and the channel ends gracefully (`phx_close`, no rejoin); a peer that
/// connected in time stays, and the room lets the squatter's slot go.
#[tokio::test]
async fn a_channel_that_never_connects_is_dropped_with_a_reason() {
    let app = App::new(Limits {
        connect_grace: std::time::Duration::from_millis(200),
        ..Limits::default()
    });
    let (_s1, squatter, mut squatter_events) = joined(&app, "room:a").await;
    let squatter_exit = watch_exit(&app, squatter.pid());
    let (_s2, guest, mut guest_events) = joined(&app, "room:a").await;
    guest
        .try_send(ChannelMsg::FromClient {
            event: "mediaEvent".into(),
            msg_ref: None,
            payload: json!({"data": r#"{"type":"connect","data":{"metadata":{}}}"#}),
        })
        .unwrap();
    match guest_events.recv().await {
        Some(ChannelEvent::PushShared { event, .. }) => assert_eq!(event, "mediaEvent"),
        other => panic!("expected `connected`, got {other:?}"),
    }
    let got = tokio::time::timeout(std::time::Duration::from_secs(5), squatter_events.recv()).await;
    match got {
        Ok(Some(ChannelEvent::Push { event, payload, .. })) => {
            assert_eq!(event, DROPPED_EVENT);
            assert_eq!(
                payload["reason"],
                "did not connect to the media session within 0.2 s of joining"
            );
        }
        other => panic!("expected the drop, got {other:?}"),
    }
    assert_eq!(squatter_exit.await.unwrap(), ExitReason::Shutdown);
    let peers = app.room_peers("a").await;
    assert_eq!(peers.len(), 1, "{peers:?}");
    assert_eq!(peers[0].1, guest.pid());
    assert!(app.sys.is_alive(guest.pid()));
}

/// A join whose room never answers is refused once its budget is spent, so the client hears
/// within its patience and retries, instead of waiting on a join the server forgot.
#[tokio::test]
async fn a_join_is_answered_within_its_budget_even_when_its_room_never_answers() {
    let app = App::new(Limits::default());
    // A room that queues joins and never answers them (a room wedged behind its work).
    app.rooms
        .start("stuck", 16, |mut ctx: Ctx<RoomMsg>| async move {
            let mut held = Vec::new();
            loop {
                if let Received::Msg(m) = ctx.recv().await {
                    held.push(m);
                }
            }
        })
        .expect("room started");
    let asked = tokio::time::Instant::now();
    let answer = join_answer(&app, "room:stuck", json!({})).await;
    assert_eq!(answer, Err(FAILED_TO_START.to_owned()));
    let waited = asked.elapsed();
    // `join_answer` gives up after 5 s: the refusal came between the budget and that.
    assert!(waited >= JOIN_BUDGET, "answered after {waited:?}");
}
