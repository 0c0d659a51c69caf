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
    let (app2, socket2, topic2) = (app.clone(), socket.clone(), topic.to_string());
    app.sys.spawn(app.limits.channel_mailbox, move |c| {
        run(app2, socket2, ChanId(1), topic2, c)
    })
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
