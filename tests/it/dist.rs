//! The dist link driver on real TCP (127.0.0.1, ephemeral ports): delivery, monitors, the
//! exactly-one-DOWN promise when the peer dies or goes silent, simultaneous connects and the
//! send-before-DOWN order. Every wait is on an event with a deadline; nothing sleeps.

use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use videoroom::cluster::dist::driver::EVENT_CAPACITY;
use videoroom::cluster::dist::{
    DistListener, DownCause, DownReason, Event, Link, LinkConfig, NodeId, RemoteRef,
};

/// Short timings so the silence tests run fast; the ratios are the defaults' (1 s, 4 s).
const TICK: Duration = Duration::from_millis(100);
const SILENCE: Duration = Duration::from_millis(400);
/// What any single wait may take before the test fails.
const WAIT: Duration = Duration::from_secs(5);

fn config() -> LinkConfig {
    LinkConfig {
        tick: TICK,
        silence: SILENCE,
        ..LinkConfig::default()
    }
}

fn node(name: &str, incarnation: u64) -> NodeId {
    NodeId {
        name: name.into(),
        incarnation,
    }
}

fn pid(pid: u64) -> RemoteRef {
    RemoteRef { pid, epoch: 3 }
}

async fn within<F: Future>(what: &str, fut: F) -> F::Output {
    tokio::time::timeout(WAIT, fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: not within {WAIT:?}"))
}

async fn listen(name: &str) -> DistListener {
    DistListener::bind("127.0.0.1:0", node(name, 1), config())
        .await
        .unwrap()
}

async fn next(link: &mut Link) -> Event {
    within("next event", link.events.recv())
        .await
        .expect("event stream ended")
}

/// Every event left on a link that is going down, up to the end of its stream.
async fn rest(link: &mut Link) -> Vec<Event> {
    let mut events = Vec::new();
    while let Some(e) = within("end of the event stream", link.events.recv()).await {
        events.push(e);
    }
    events
}

/// `a` dials `b` (at `via`, `b`'s own address unless a proxy sits between); both sides' links.
async fn link_via(a: &mut DistListener, b: &mut DistListener, via: SocketAddr) -> (Link, Link) {
    let peer = b.node().me().clone();
    let handle = within("connect", a.node().connect(via, peer))
        .await
        .unwrap();
    let la = within("a's link", a.accept()).await.unwrap();
    let lb = within("b's link", b.accept()).await.unwrap();
    assert!(handle.same_link(&la.handle));
    assert_eq!(la.handle.peer(), &b.node().me());
    assert_eq!(lb.handle.peer(), &a.node().me());
    (la, lb)
}

async fn linked() -> (DistListener, Link, DistListener, Link) {
    let (mut a, mut b) = (listen("a").await, listen("b").await);
    let via = b.local_addr();
    let (la, lb) = link_via(&mut a, &mut b, via).await;
    (a, la, b, lb)
}

/// Sets monitors `mrefs` from `from` on `to`'s pid `target` and waits until `to` has seen
/// them (one Watch per target), so they are in both tables.
async fn monitored(from: &Link, to: &mut Link, mrefs: &[u64], target: RemoteRef) {
    for &mref in mrefs {
        from.handle.monitor(mref, target).await.unwrap();
    }
    assert_eq!(next(to).await, Event::Watch { target });
}

fn payload(i: u32) -> Vec<u8> {
    // Lengths vary so frames straddle reads at every offset.
    let mut msg = i.to_be_bytes().to_vec();
    msg.extend(std::iter::repeat_n(i as u8, (i as usize * 37) % 700));
    msg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_sends_arrive_in_order_and_intact() {
    let started = Instant::now();
    let (_a, la, _b, mut lb) = linked().await;
    let sender = la.handle.clone();
    let sending = tokio::spawn(async move {
        for i in 0..1000u32 {
            sender
                .send(pid(u64::from(i) % 4), payload(i))
                .await
                .unwrap();
        }
    });
    for i in 0..1000 {
        assert_eq!(
            next(&mut lb).await,
            Event::Deliver {
                to: pid(u64::from(i) % 4),
                msg: payload(i)
            },
            "message {i}"
        );
    }
    sending.await.unwrap();
    assert!(!la.handle.is_down() && !lb.handle.is_down());
    eprintln!("a_thousand_sends: {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn target_gone_gives_exactly_one_down_with_its_reason() {
    let started = Instant::now();
    let (_a, mut la, _b, mut lb) = linked().await;
    let target = pid(7);
    monitored(&la, &mut lb, &[1], target).await;
    lb.handle
        .target_gone(target, DownReason::other("killed"))
        .await;
    assert_eq!(
        next(&mut la).await,
        Event::Down {
            mref: 1,
            reason: DownReason::Other("killed".into())
        }
    );
    // Taking the link down would owe a Noconnection to any monitor still open: none is.
    la.handle.close();
    assert_eq!(rest(&mut la).await, vec![]);
    assert_eq!(la.handle.down_cause(), Some(DownCause::Closed));
    // The peer sees the close and ends too, with nothing owed to anyone.
    assert_eq!(rest(&mut lb).await, vec![]);
    eprintln!("target_gone: {:?}", started.elapsed());
}

/// Forwards one connection each way until told to freeze (stop forwarding, keep both sockets
/// open: a blackhole) or to die (drop both sockets, as the kernel does for a killed process).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Forward,
    Freeze,
    Die,
}

async fn proxy(to: SocketAddr) -> (SocketAddr, watch::Sender<Mode>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (mode, rx) = watch::channel(Mode::Forward);
    tokio::spawn(async move {
        let (inbound, _) = listener.accept().await.unwrap();
        let outbound = TcpStream::connect(to).await.unwrap();
        let (ri, wi) = inbound.into_split();
        let (ro, wo) = outbound.into_split();
        let one = tokio::spawn(pipe(ri, wo, rx.clone()));
        let other = tokio::spawn(pipe(ro, wi, rx));
        let _ = tokio::join!(one, other);
    });
    (addr, mode)
}

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut mode: watch::Receiver<Mode>,
) {
    let mut buf = vec![0; 16 * 1024];
    loop {
        if *mode.borrow_and_update() != Mode::Forward {
            break;
        }
        tokio::select! {
            r = from.read(&mut buf) => match r {
                Ok(n) if n > 0 => {
                    if to.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
                _ => return,
            },
            _ = mode.changed() => {}
        }
    }
    // Frozen: hold both sockets, read nothing, until told to die.
    let _ = mode.wait_for(|m| *m == Mode::Die).await;
}

async fn every_monitor_ends_once_when(mode: Mode) -> (Duration, Link) {
    let (mut a, mut b) = (listen("a").await, listen("b").await);
    let (via, control) = proxy(b.local_addr()).await;
    let (mut la, mut lb) = link_via(&mut a, &mut b, via).await;
    monitored(&la, &mut lb, &[1, 2], pid(1)).await;
    monitored(&la, &mut lb, &[3], pid(2)).await;
    // And one monitor the other way, to see both ends keep the promise.
    monitored(&lb, &mut la, &[9], pid(4)).await;
    let cut = Instant::now();
    control.send(mode).unwrap();
    let mut downs = rest(&mut la).await;
    let took = cut.elapsed();
    downs.sort_by_key(|e| match e {
        Event::Down { mref, .. } => *mref,
        other => panic!("unexpected {other:?}"),
    });
    let noconnection = |mref| Event::Down {
        mref,
        reason: DownReason::Noconnection,
    };
    assert_eq!(
        downs,
        vec![noconnection(1), noconnection(2), noconnection(3)]
    );
    assert_eq!(rest(&mut lb).await, vec![noconnection(9)]);
    // Sends and monitors on a down link fail at once; a monitor refused owes no Down.
    assert!(la.handle.send(pid(1), vec![1]).await.is_err());
    assert!(la.handle.monitor(4, pid(1)).await.is_err());
    assert!(a.node().link("b").is_none());
    (took, la)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_peer_ends_every_monitor_with_one_noconnection() {
    let (took, la) = every_monitor_ends_once_when(Mode::Die).await;
    assert_eq!(la.handle.down_cause(), Some(DownCause::TransportClosed));
    // EOF is seen at once, long before the silence bound.
    assert!(took < SILENCE, "took {took:?}");
    eprintln!("killed peer: downs after {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blackholed_peer_ends_every_monitor_within_the_silence_bound() {
    let (took, la) = every_monitor_ends_once_when(Mode::Freeze).await;
    assert_eq!(la.handle.down_cause(), Some(DownCause::Silence));
    // The last byte may have arrived just before the cut, and a loaded machine runs the
    // timer late; it must still be near the bound, not some multiple of it.
    assert!(
        took >= SILENCE - 2 * TICK && took < SILENCE * 2,
        "took {took:?}"
    );
    eprintln!("blackholed peer: downs after {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simultaneous_connects_converge_to_one_link() {
    let started = Instant::now();
    for round in 0..20 {
        let (mut a, mut b) = (listen("a").await, listen("b").await);
        let (na, nb) = (a.node().clone(), b.node().clone());
        let (to_b, to_a) = (b.local_addr(), a.local_addr());
        let dial_b = na.connect(to_b, nb.me().clone());
        let dial_a = nb.connect(to_a, na.me().clone());
        // Either side starts first: its table says "dialing" before the other's Hello lands.
        let (ha, hb) = if round % 2 == 0 {
            within("both connects", futures::future::join(dial_b, dial_a)).await
        } else {
            let (hb, ha) = within("both connects", futures::future::join(dial_a, dial_b)).await;
            (ha, hb)
        };
        let (ha, hb) = (ha.unwrap(), hb.unwrap());
        let mut la = within("a's link", a.accept()).await.unwrap();
        let mut lb = within("b's link", b.accept()).await.unwrap();
        // Each side's connect returned the one link its accept handed out and its table holds.
        assert!(ha.same_link(&la.handle), "round {round}");
        assert!(hb.same_link(&lb.handle), "round {round}");
        assert!(na.link("b").unwrap().same_link(&ha), "round {round}");
        assert!(nb.link("a").unwrap().same_link(&hb), "round {round}");
        // And it carries messages both ways: the two handles are the ends of one connection.
        ha.send(pid(1), b"to b".to_vec()).await.unwrap();
        hb.send(pid(2), b"to a".to_vec()).await.unwrap();
        assert_eq!(
            next(&mut lb).await,
            Event::Deliver {
                to: pid(1),
                msg: b"to b".to_vec()
            }
        );
        assert_eq!(
            next(&mut la).await,
            Event::Deliver {
                to: pid(2),
                msg: b"to a".to_vec()
            }
        );
        assert!(!ha.is_down() && !hb.is_down(), "round {round}");
    }
    eprintln!("simultaneous connects, 20 rounds: {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_before_a_local_exit_reach_the_peer_before_its_down() {
    let started = Instant::now();
    let (_a, mut la, _b, mut lb) = linked().await;
    let exiting = pid(5);
    monitored(&la, &mut lb, &[1], exiting).await;
    // The process on b sends, then exits; its exit is reported after its last send returned.
    for i in 0..500 {
        lb.handle.send(pid(9), payload(i)).await.unwrap();
    }
    lb.handle
        .local_exited(exiting.pid, DownReason::Normal)
        .await;
    for i in 0..500 {
        assert_eq!(
            next(&mut la).await,
            Event::Deliver {
                to: pid(9),
                msg: payload(i)
            },
            "message {i} must precede the Down"
        );
    }
    assert_eq!(
        next(&mut la).await,
        Event::Down {
            mref: 1,
            reason: DownReason::Normal
        }
    );
    eprintln!("sends before exit: {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_consumer_takes_the_link_down_as_overloaded_and_loses_no_event() {
    let started = Instant::now();
    let (_a, mut la, _b, mut lb) = linked().await;
    monitored(&la, &mut lb, &[1], pid(1)).await;
    monitored(&lb, &mut la, &[2], pid(2)).await;
    // b's consumer takes nothing from here on.
    let count = 3 * EVENT_CAPACITY as u32;
    for i in 0..count {
        if la.handle.send(pid(3), payload(i)).await.is_err() {
            break;
        }
    }
    // b gives up on its consumer after a tick and closes: a's monitor learns it.
    assert_eq!(
        rest(&mut la).await,
        vec![Event::Down {
            mref: 1,
            reason: DownReason::Noconnection
        }]
    );
    assert_eq!(lb.handle.down_cause(), Some(DownCause::Overloaded));
    // Everything b's core emitted is still there, in order, then its one Noconnection.
    let events = rest(&mut lb).await;
    let (last, delivered) = events.split_last().unwrap();
    assert_eq!(
        last,
        &Event::Down {
            mref: 2,
            reason: DownReason::Noconnection
        }
    );
    assert!(delivered.len() >= EVENT_CAPACITY, "{}", delivered.len());
    for (i, e) in delivered.iter().enumerate() {
        assert_eq!(
            e,
            &Event::Deliver {
                to: pid(3),
                msg: payload(i as u32)
            }
        );
    }
    eprintln!("lagging consumer: {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_peer_replaces_its_old_link_and_a_wrong_one_is_refused() {
    let started = Instant::now();
    let (mut a, mut la, _b, mut lb) = linked().await;
    monitored(&la, &mut lb, &[1], pid(1)).await;
    // b restarts: a new incarnation at a new address dials a while a still holds the old link.
    let mut b2 = DistListener::bind("127.0.0.1:0", node("b", 2), config())
        .await
        .unwrap();
    let via = a.local_addr();
    let (_l2b, l2a) = link_via(&mut b2, &mut a, via).await;
    assert_eq!(l2a.handle.peer(), &node("b", 2));
    assert!(a.node().link("b").unwrap().same_link(&l2a.handle));
    // The old link ended, and with it the monitor on the old incarnation's process.
    assert_eq!(
        rest(&mut la).await,
        vec![Event::Down {
            mref: 1,
            reason: DownReason::Noconnection
        }]
    );
    assert_eq!(la.handle.down_cause(), Some(DownCause::Closed));
    // A dial that reaches another incarnation than the one it expects gets no link.
    let c = listen("c").await;
    let err = within("wrong incarnation", c.node().connect(via, node("a", 7)))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            videoroom::cluster::dist::ConnectError::Handshake(DownCause::Refused { .. })
        ),
        "{err:?}"
    );
    assert!(c.node().link("a").is_none());
    eprintln!("restarted peer: {:?}", started.elapsed());
}
