//! A simulated etcd node for the cluster worlds: the gateway model (`videoroom::cluster::etcd::
//! model`, held to real etcd by the conformance transcript) served over madsim's TCP by the
//! same HTTP code the production client speaks, with leases lapsing on the simulated clock.
//!
//! It must never answer differently from the model: it only moves requests and time into it.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use videoroom::cluster::claims::Keys;
use videoroom::cluster::etcd::http;
use videoroom::cluster::etcd::model::EtcdModel;
use videoroom::rt::time;

pub const ETCD_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 9, 1);
pub const ETCD_PORT: u16 = 2379;

/// The model outlives the node's incarnations (a restart keeps etcd's data).
pub struct Etcd {
    pub model: Mutex<EtcdModel>,
    start: time::Instant,
    /// Leases that lapsed (id, etcd's time in ms), for the ownership oracle to take.
    pub lapsed: Mutex<Vec<(i64, u64)>>,
}

impl Etcd {
    pub fn new() -> Arc<Etcd> {
        Arc::new(Etcd {
            model: Mutex::new(EtcdModel::new()),
            start: time::now(),
            lapsed: Mutex::new(Vec::new()),
        })
    }

    pub fn url() -> String {
        format!("http://{ETCD_IP}:{ETCD_PORT}")
    }

    /// etcd's clock: milliseconds since the world began.
    pub fn now_ms(&self) -> u64 {
        (time::now() - self.start).as_millis() as u64
    }

    /// `t` on etcd's clock (time since the world began), to the nanosecond.
    pub fn since_start(&self, t: time::Instant) -> Duration {
        t.saturating_duration_since(self.start)
    }

    /// Room keys held now (`rooms/<name>` under `keys`' prefix).
    pub fn room_keys(&self, keys: &Keys) -> Vec<String> {
        let prefix = keys.rooms_prefix();
        self.model
            .lock()
            .unwrap()
            .keys()
            .filter(|k| k.key.starts_with(&prefix))
            .map(|k| String::from_utf8_lossy(&k.key[prefix.len()..]).into_owned())
            .collect()
    }
}

/// The node's body.
pub async fn serve(etcd: Arc<Etcd>) {
    let now = etcd.now_ms();
    etcd.model.lock().unwrap().restart(now);
    let listener = loop {
        match TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], ETCD_PORT))).await {
            Ok(l) => break l,
            Err(_) => time::sleep(Duration::from_millis(1)).await,
        }
    };
    let e = etcd.clone();
    tokio::spawn(async move {
        loop {
            time::sleep(Duration::from_millis(50)).await;
            let now = e.now_ms();
            let gone = e.model.lock().unwrap().expire(now);
            e.lapsed
                .lock()
                .unwrap()
                .extend(gone.into_iter().map(|id| (id, now)));
        }
    });
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        let e = etcd.clone();
        tokio::spawn(async move {
            let Ok(req) = http::read_request(&mut stream, http::MAX_REQUEST).await else {
                return;
            };
            let now = e.now_ms();
            let (status, body) = e.model.lock().unwrap().handle(now, &req.path, &req.body);
            let _ = http::write_response(&mut stream, status, "application/json", &body).await;
        });
    }
}
