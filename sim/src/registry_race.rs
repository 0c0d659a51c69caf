//! Fifty joiners race `whereis_or_start` on one fresh room name while a killer crashes the
//! winner at seed-chosen times. Checks, at every step, that at most one room of the name runs
//! and the name never points at a dead room; at the end, that every joiner holds the one live
//! room of the name.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use videoroom::registry::{Registry, StartError};
use videoroom::rt::{self, time, watch, Ctx, ExitReason, Pid, Received, System};

use crate::trace::Trace;

pub const JOINERS: usize = 50;
const NAME: &str = "room:lobby";

/// What one seed did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub digest: u64,
    pub trace: Vec<String>,
    pub kills: usize,
    /// Starts that lost the registration race (the AlreadyStarted path).
    pub races_lost: usize,
    pub rooms_started: usize,
    pub rejoins: usize,
}

#[derive(Default)]
struct Shared {
    live_rooms: usize,
    rooms_started: usize,
    races_lost: usize,
    rejoins: usize,
    violations: Vec<String>,
}

type State = Arc<Mutex<Shared>>;

/// The room: runs until killed. Its guard keeps the live count exact however it ends.
struct LiveRoom(State);

impl Drop for LiveRoom {
    fn drop(&mut self) {
        self.0.lock().unwrap().live_rooms -= 1;
    }
}

fn room(
    state: State,
    trace: Trace,
) -> impl FnOnce(Ctx<()>) -> std::pin::Pin<Box<dyn std::future::Future<Output = ExitReason> + Send>>
{
    move |mut ctx: Ctx<()>| {
        Box::pin(async move {
            {
                let mut s = state.lock().unwrap();
                s.live_rooms += 1;
                s.rooms_started += 1;
                if s.live_rooms > 1 {
                    let v = format!("{} rooms of {NAME} live at once", s.live_rooms);
                    s.violations.push(v);
                }
            }
            let _live = LiveRoom(state);
            trace.log(format!("room {} up", ctx.pid()));
            loop {
                let _ = ctx.recv().await;
            }
        })
    }
}

async fn join(reg: &Registry<()>, state: &State, trace: &Trace) -> Pid {
    let r = reg
        .whereis_or_start(NAME, || {
            let r = reg.start(NAME, 8, room(state.clone(), trace.clone()));
            if matches!(r, Err(StartError::AlreadyStarted(_))) {
                state.lock().unwrap().races_lost += 1;
            }
            r
        })
        .await;
    match r {
        Ok(addr) => addr.pid(),
        // Starting can only fail by losing the race, which whereis_or_start absorbs.
        Err(e) => panic!("join failed: {e}"),
    }
}

/// Runs one seed's scenario; must be called inside a madsim world.
pub async fn scenario() -> Result<Outcome, String> {
    let trace = Trace::new(true);
    // The runtime's promises (name released before DOWN, the loser never runs...) are checked
    // at every event of the race, not just at the steps this scenario samples.
    let probe = crate::oracle::ProbeLog::default();
    let _probe = probe.install(&trace, time::now());
    let sys = System::new();
    let reg: Registry<()> = Registry::new(&sys);
    let state: State = Arc::default();
    let (done_tx, done_rx) = watch::channel(false);
    let kills = rt::rand::below(4) as usize;
    trace.log(format!("swarm: joiners={JOINERS} kills={kills}"));

    let (report_tx, mut report_rx) = tokio::sync::mpsc::unbounded_channel();
    for i in 0..JOINERS {
        let (reg, state, trace, report) =
            (reg.clone(), state.clone(), trace.clone(), report_tx.clone());
        let mut done = done_rx.clone();
        sys.spawn(4, move |mut ctx: Ctx<()>| async move {
            time::sleep(Duration::from_micros(rt::rand::below(3_000))).await;
            let mut room = join(&reg, &state, &trace).await;
            ctx.monitor(room);
            trace.log(format!("joiner {i} holds {room}"));
            loop {
                tokio::select! {
                    biased;
                    r = ctx.recv() => {
                        if let Received::Down(d) = r {
                            trace.log(format!("joiner {i} DOWN {} {}", d.pid, d.reason));
                            state.lock().unwrap().rejoins += 1;
                            room = join(&reg, &state, &trace).await;
                            ctx.monitor(room);
                            trace.log(format!("joiner {i} holds {room}"));
                        }
                    }
                    _ = done.changed() => break,
                }
            }
            let _ = report.send((i, room));
            ExitReason::Normal
        });
    }
    drop(report_tx);

    // The killer crashes whichever room holds the name, at random times.
    for k in 0..kills {
        time::sleep(Duration::from_micros(rt::rand::below(4_000))).await;
        match reg.whereis(NAME) {
            Some(a) => {
                trace.log(format!("killer {k} kills {}", a.pid()));
                sys.kill(a.pid());
                sys.wait_exit(a.pid()).await;
            }
            None => trace.log(format!("killer {k} finds no room")),
        }
    }
    // Let every joiner settle on a room, then stop them.
    time::sleep(Duration::from_millis(10)).await;
    let final_room = reg.whereis(NAME).map(|a| a.pid());
    done_tx.send_replace(true);
    let mut held = Vec::new();
    while let Some(r) = report_rx.recv().await {
        held.push(r);
    }
    held.sort();

    let s = state.lock().unwrap();
    let mut problems = s.violations.clone();
    problems.extend(probe.violations().iter().map(|v| format!("promise: {v}")));
    problems.extend(
        probe
            .crashes()
            .iter()
            .map(|c| format!("crash: {}", c.panic)),
    );
    if held.len() != JOINERS {
        problems.push(format!("{} of {JOINERS} joiners reported", held.len()));
    }
    for (i, pid) in &held {
        if !sys.is_alive(*pid) {
            problems.push(format!("joiner {i} ends holding dead room {pid}"));
        } else if Some(*pid) != final_room {
            problems.push(format!(
                "joiner {i} holds {pid}, the name holds {final_room:?}"
            ));
        }
    }
    if s.live_rooms != 1 {
        problems.push(format!("{} live rooms at the end", s.live_rooms));
    }
    trace.log(format!(
        "end: room {final_room:?}, {} rooms started",
        s.rooms_started
    ));
    let lines = trace.lines();
    if !problems.is_empty() {
        return Err(problems.join("; "));
    }
    Ok(Outcome {
        digest: trace.digest(),
        trace: lines,
        kills,
        races_lost: s.races_lost,
        rooms_started: s.rooms_started,
        rejoins: s.rejoins,
    })
}
