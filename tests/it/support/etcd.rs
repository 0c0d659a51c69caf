//! One real etcd (Debian's etcd-server) per test: 127.0.0.1 only, free ports, a temporary data
//! directory, killed and removed on drop. The etcd.service the package installs is never used.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use videoroom::cluster::etcd::client::EtcdClient;

const ETCD: &str = "/usr/bin/etcd";

/// One etcd process for one test.
pub struct Etcd {
    child: Child,
    dir: PathBuf,
    pub client_port: u16,
}

impl Etcd {
    pub fn start() -> Etcd {
        assert!(
            Path::new(ETCD).exists(),
            "{ETCD} is missing: run scripts/setup-etcd.sh (installs Debian's etcd-server)"
        );
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "videoroom-it-etcd-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        // A free port can be taken between asking and etcd binding it: try a few.
        let mut last = String::new();
        for _ in 0..3 {
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("temp dir");
            let (client_port, peer_port) = (free_port(), free_port());
            let log = std::fs::File::create(dir.join("etcd.log")).expect("log file");
            let client = format!("http://127.0.0.1:{client_port}");
            let peer = format!("http://127.0.0.1:{peer_port}");
            let child = Command::new(ETCD)
                .args(["--name", "it", "--data-dir"])
                .arg(dir.join("data"))
                .args(["--listen-client-urls", &client])
                .args(["--advertise-client-urls", &client])
                .args(["--listen-peer-urls", &peer])
                .args(["--initial-advertise-peer-urls", &peer])
                .args(["--initial-cluster", &format!("it={peer}")])
                .args(["--logger", "zap", "--log-outputs", "stderr"])
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log file"))
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {ETCD}: {e}"));
            let mut etcd = Etcd {
                child,
                dir: dir.clone(),
                client_port,
            };
            match etcd.wait_ready(Duration::from_secs(10)) {
                Ok(()) => return etcd,
                Err(e) => last = e,
            }
        }
        panic!("etcd did not start: {last}");
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// Polls until etcd answers a read (it does once it has elected itself leader).
    fn wait_ready(&mut self, within: Duration) -> Result<(), String> {
        let client = EtcdClient::new(&[self.url()], Duration::from_millis(500)).unwrap();
        let deadline = Instant::now() + within;
        let rt = runtime();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("etcd exited ({status}): {}", self.log_tail()));
            }
            let ready = rt.block_on(client.get(b"/ready")).is_ok();
            if ready {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("no answer within {within:?}: {}", self.log_tail()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("etcd.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(10)..].join("\n")
    }

    pub fn signal(&self, sig: libc::c_int) {
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: kill(2) on our own child's pid, which is not reaped until we wait on it.
        assert_eq!(unsafe { libc::kill(pid, sig) }, 0, "kill({pid}, {sig})");
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        // A stopped etcd is killed all the same (SIGKILL needs no SIGCONT).
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}
