//! Optional TLS on the edge: loads a PEM certificate chain and private key into a rustls
//! acceptor (TLS 1.3, ring, ALPN `http/1.1`).
//!
//! Owns the start-up checks of the files, with errors that name the file and what is wrong with
//! it; never logs key material, and never starts a server on a half-loaded configuration.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio_rustls::rustls::crypto::ring;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;

/// The PEM files of a TLS deployment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain, leaf first.
    pub cert: PathBuf,
    /// The leaf's private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read the TLS {what} file {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the TLS certificate file {0} holds no PEM certificate")]
    NoCertificate(PathBuf),
    #[error("the TLS certificate file {path} is not valid PEM: {detail}")]
    BadCertificate { path: PathBuf, detail: String },
    #[error("the TLS key file {0} holds no PEM private key (PKCS#8, PKCS#1 or SEC1)")]
    NoKey(PathBuf),
    #[error("the TLS certificate {cert} and key {key} cannot be used: {detail}")]
    Unusable {
        cert: PathBuf,
        key: PathBuf,
        detail: String,
    },
}

/// Reads and checks both files (the key must parse and match the leaf certificate).
pub fn acceptor(files: &TlsFiles) -> Result<TlsAcceptor, TlsError> {
    let cert_pem = read(&files.cert, "certificate")?;
    let key_pem = read(&files.key, "key")?;
    let certs = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::BadCertificate {
            path: files.cert.clone(),
            detail: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(files.cert.clone()));
    }
    let key =
        PrivateKeyDer::from_pem_slice(&key_pem).map_err(|_| TlsError::NoKey(files.key.clone()))?;
    let unusable = |detail: String| TlsError::Unusable {
        cert: files.cert.clone(),
        key: files.key.clone(),
        detail,
    };
    let mut config = ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| unusable(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| unusable(e.to_string()))?;
    // HTTP/1.1 only: the WebSocket upgrade needs it, and the edge speaks nothing else.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

fn read(path: &Path, what: &'static str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, body: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, body).unwrap();
        p
    }

    fn tmpdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("videoroom-tls-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn self_signed() -> (String, String) {
        let c = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        (c.cert.pem(), c.signing_key.serialize_pem())
    }

    #[test]
    fn a_matching_pair_loads() {
        let d = tmpdir("ok");
        let (cert, key) = self_signed();
        let files = TlsFiles {
            cert: write(&d, "cert.pem", &cert),
            key: write(&d, "key.pem", &key),
        };
        assert!(acceptor(&files).is_ok());
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn each_bad_input_names_its_file_and_fault() {
        let d = tmpdir("bad");
        let (cert, key) = self_signed();
        let (_, other_key) = self_signed();
        let cert_p = write(&d, "cert.pem", &cert);
        let key_p = write(&d, "key.pem", &key);
        let err = |cert: &Path, key: &Path| {
            acceptor(&TlsFiles {
                cert: cert.to_owned(),
                key: key.to_owned(),
            })
            .err()
            .expect("must fail")
            .to_string()
        };
        let missing = d.join("missing.pem");
        let e = err(&missing, &key_p);
        assert!(e.starts_with("cannot read the TLS certificate file"), "{e}");
        assert!(e.contains("missing.pem"), "{e}");
        let e = err(&cert_p, &missing);
        assert!(e.starts_with("cannot read the TLS key file"), "{e}");
        let garbage = write(&d, "garbage.pem", "not pem at all\n");
        let e = err(&garbage, &key_p);
        assert!(e.contains("holds no PEM certificate"), "{e}");
        let e = err(&cert_p, &garbage);
        assert!(e.contains("holds no PEM private key"), "{e}");
        // A certificate where the key should be (a common mix-up).
        let e = err(&cert_p, &cert_p);
        assert!(e.contains("holds no PEM private key"), "{e}");
        let other = write(&d, "other.pem", &other_key);
        let e = err(&cert_p, &other);
        assert!(e.contains("cannot be used"), "{e}");
        let _ = std::fs::remove_dir_all(d);
    }
}
