//! TLS on the edge: with `--tls-cert/--tls-key` the server speaks HTTPS and WSS (a certificate
//! generated at test time), refuses plain HTTP on that port, and bad files stop the binary at
//! start-up with a message that names them.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use net_tokio::io::{AsyncReadExt, AsyncWriteExt};
use serde_json::{json, Value};
use tokio_rustls::rustls::crypto::ring;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::Message;
use videoroom::server::TlsFiles;

use crate::support::http;
use crate::support::server::TestServer;

/// A directory of its own for one test's files, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let d = std::env::temp_dir().join(format!("videoroom-it-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        TempDir(d)
    }

    fn write(&self, name: &str, body: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, body).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A self-signed certificate for `localhost`: the files, and the certificate to trust.
fn localhost_cert(dir: &TempDir) -> (TlsFiles, CertificateDer<'static>) {
    let c = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let files = TlsFiles {
        cert: dir.write("cert.pem", &c.cert.pem()),
        key: dir.write("key.pem", &c.signing_key.serialize_pem()),
    };
    (files, c.cert.der().clone())
}

fn connector(trusted: CertificateDer<'static>) -> TlsConnector {
    let mut roots = RootCertStore::empty();
    roots.add(trusted).unwrap();
    let cfg = ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    TlsConnector::from(Arc::new(cfg))
}

#[test]
fn https_healthz_and_a_wss_phoenix_join() {
    let dir = TempDir::new("tls");
    let (files, trusted) = localhost_cert(&dir);
    let srv = TestServer::start_with(|c| c.tls = Some(files));
    let addr = srv.addr();
    let tls = connector(trusted);
    let name = ServerName::try_from("localhost").unwrap();

    srv.block_on(async {
        let tcp = net_tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut s = tls.connect(name.clone(), tcp).await.expect("TLS handshake");
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).await.unwrap();
        assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
        assert!(resp.ends_with("\r\n\r\nok"), "{resp}");

        let tcp = net_tokio::net::TcpStream::connect(addr).await.unwrap();
        let s = tls.connect(name, tcp).await.expect("TLS handshake");
        let url = format!("wss://localhost:{}/socket/websocket?vsn=2.0.0", addr.port());
        let (mut ws, _) = tokio_tungstenite::client_async(url, s)
            .await
            .expect("wss upgrade");
        let join = json!(["1", "1", "room:tls", "phx_join", {}]).to_string();
        ws.send(Message::Text(join.into())).await.unwrap();
        let reply = loop {
            let m = tokio::time::timeout(Duration::from_secs(5), ws.next())
                .await
                .expect("reply within 5 s")
                .expect("open")
                .expect("frame");
            if let Message::Text(t) = m {
                break serde_json::from_str::<Value>(&t).unwrap();
            }
        };
        assert_eq!(reply[3], "phx_reply", "{reply}");
        assert_eq!(reply[4]["status"], "ok", "{reply}");
        // Asked while the socket is open: once it closes, its peer leaves and the room stops
        // (asked after the block, the room had sometimes already gone).
        assert!(srv.room_pid("tls").is_some(), "the room runs");
    });

    // Plain HTTP on the TLS port is no HTTP response at all.
    let mut plain = http::connect(addr);
    std::io::Write::write_all(&mut plain, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut buf = Vec::new();
    let _ = std::io::Read::read_to_end(&mut plain, &mut buf);
    assert!(
        !buf.starts_with(b"HTTP/1.1 200"),
        "plain HTTP answered on the TLS port"
    );
}

/// Runs the binary with these TLS files; returns its exit success and stderr.
fn run_binary(cert: &Path, key: &Path) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_videoroom"))
        .args(["--port", "0", "--fake-media", "--tls-cert"])
        .arg(cert)
        .arg("--tls-key")
        .arg(key)
        .env("RUST_LOG", "off")
        .output()
        .expect("run the videoroom binary");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_tls_files_stop_the_binary_with_a_clear_error() {
    let dir = TempDir::new("badtls");
    let (files, _) = localhost_cert(&dir);
    let missing = dir.0.join("missing.pem");
    let garbage = dir.write("garbage.pem", "this is not PEM\n");
    for (cert, key, want) in [
        (&missing, &files.key, "cannot read the TLS certificate file"),
        (&files.cert, &missing, "cannot read the TLS key file"),
        (&garbage, &files.key, "holds no PEM certificate"),
        (&files.cert, &files.cert, "holds no PEM private key"),
    ] {
        let (ok, stderr) = run_binary(cert, key);
        assert!(!ok, "the binary must exit non-zero ({want})");
        assert!(
            stderr.contains(want),
            "stderr should say {want:?}: {stderr}"
        );
    }
}
