//! The integrated TURN server (UDP) that relay-only browsers reach the SFU through.
//!
//! `@jellyfish-dev/membrane-webrtc-js` hard-codes `iceTransportPolicy: "relay"` and takes its
//! ICE servers only from `offerData.integratedTurnServers`, so every browser leg is a TURN
//! allocation here whose relayed traffic goes to the SFU's own (loopback by default) host
//! candidates. The protocol engine is webrtc-rs `turn` 0.17 (a Pion port: allocations,
//! permissions, channel binds, refresh); this module owns its configuration, the relay address
//! policy and the credentials.
//!
//! Credentials are TURN REST style (draft-uberti-behave-turn-rest): username
//! `<unix expiry>:<peer id>`, password `base64(HMAC-SHA1(secret, username))`. They need no
//! per-peer state to verify, expire on their own, and the peer id in the username lets a
//! leaving peer's allocations be torn down at once.
//!
//! It must never: relay for a username whose expiry has passed or whose password was not
//! derived from this server's secret; bind relay sockets anywhere but the configured relay IP;
//! block the caller (all work runs on the tokio runtime it was started on).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use turn::auth::{generate_auth_key, AuthHandler};
use turn::relay::relay_static::RelayAddressGeneratorStatic;
use turn::server::config::{ConnConfig, ServerConfig};
use webrtc_util::vnet::net::Net;

use crate::fabric::relay::FabricRelayGenerator;
use crate::fabric::{Fabric, FabricStats};

/// Where the TURN server listens and which addresses it hands out.
#[derive(Clone, Debug)]
pub struct TurnConfig {
    /// UDP listen address; port 0 picks a free one (tests).
    pub bind: SocketAddr,
    /// Relay sockets bind here. It must be able to reach the SFU's candidates, so it is the
    /// same address family and scope as the SFU's ICE addresses (loopback by default).
    pub relay_ip: IpAddr,
    /// The address clients are told to use for the server and that appears in
    /// XOR-RELAYED-ADDRESS (a deployment's external IP); `None` uses the bound addresses.
    pub public_ip: Option<IpAddr>,
    pub realm: String,
    /// HMAC key for credentials. Empty means a random one per process, which is right for a
    /// single server: credentials are only ever handed out by this process.
    pub secret: Vec<u8>,
    /// How long issued credentials stay valid. An allocation outlives its credential only
    /// until its next refresh, so this bounds a leaked credential's usefulness.
    pub credential_ttl: Duration,
    /// Registers relay sockets here, so relayed traffic to and from the SFU's sockets in the
    /// same fabric skips the kernel (see [`crate::fabric`]). `None`: plain kernel sockets.
    pub fabric: Option<Arc<Fabric>>,
}

impl Default for TurnConfig {
    fn default() -> Self {
        TurnConfig {
            bind: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 3478),
            relay_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            public_ip: None,
            realm: "videoroom".to_owned(),
            secret: Vec::new(),
            credential_ttl: Duration::from_secs(24 * 3600),
            fabric: None,
        }
    }
}

/// One peer's credentials and the server to use them on (`offerData.integratedTurnServers`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TurnCredentials {
    pub server_addr: IpAddr,
    pub server_port: u16,
    pub username: String,
    pub password: String,
}

#[derive(Debug, thiserror::Error)]
pub enum TurnError {
    #[error("cannot bind the TURN socket on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("TURN server: {0}")]
    Server(#[from] turn::Error),
}

/// A running TURN server. Dropping it without [`TurnServer::close`] leaves its tasks running
/// until the runtime stops.
pub struct TurnServer {
    server: turn::server::Server,
    local_addr: SocketAddr,
    advertised: SocketAddr,
    secret: Arc<ring::hmac::Key>,
    ttl: Duration,
    fabric: Option<Arc<Fabric>>,
}

impl std::fmt::Debug for TurnServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TurnServer")
            .field("local_addr", &self.local_addr)
            .field("advertised", &self.advertised)
            .finish_non_exhaustive()
    }
}

impl TurnServer {
    /// Binds the UDP socket and starts serving on the current tokio runtime.
    pub async fn start(cfg: TurnConfig) -> Result<TurnServer, TurnError> {
        let socket = net_tokio::net::UdpSocket::bind(cfg.bind)
            .await
            .map_err(|source| TurnError::Bind {
                addr: cfg.bind,
                source,
            })?;
        let local_addr = socket.local_addr().map_err(|source| TurnError::Bind {
            addr: cfg.bind,
            source,
        })?;
        let secret = if cfg.secret.is_empty() {
            let mut s = vec![0u8; 32];
            rand::Rng::fill(&mut rand::thread_rng(), &mut s[..]);
            s
        } else {
            cfg.secret.clone()
        };
        let key = Arc::new(ring::hmac::Key::new(
            ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
            &secret,
        ));
        let public_ip = cfg.public_ip;
        let relay_addr_generator: Box<dyn turn::relay::RelayAddressGenerator + Send + Sync> =
            match &cfg.fabric {
                Some(fabric) => Box::new(FabricRelayGenerator {
                    relay_ip: cfg.relay_ip,
                    public_ip,
                    fabric: Arc::clone(fabric),
                }),
                None => Box::new(RelayAddressGeneratorStatic {
                    relay_address: public_ip.unwrap_or(cfg.relay_ip),
                    address: cfg.relay_ip.to_string(),
                    net: Arc::new(Net::new(None)),
                }),
            };
        let server = turn::server::Server::new(ServerConfig {
            conn_configs: vec![ConnConfig {
                conn: Arc::new(socket),
                relay_addr_generator,
            }],
            realm: cfg.realm,
            auth_handler: Arc::new(RestAuth {
                key: Arc::clone(&key),
            }),
            channel_bind_timeout: Duration::ZERO,
            alloc_close_notify: None,
        })
        .await?;
        let advertised = SocketAddr::new(public_ip.unwrap_or(local_addr.ip()), local_addr.port());
        tracing::info!(%local_addr, %advertised, "TURN server listening");
        Ok(TurnServer {
            server,
            local_addr,
            advertised,
            secret: key,
            ttl: cfg.credential_ttl,
            fabric: cfg.fabric,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Fresh credentials for `peer`, valid for the configured TTL from now.
    pub fn credentials(&self, peer: &str) -> TurnCredentials {
        let expiry = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .saturating_add(self.ttl)
            .as_secs();
        self.credentials_expiring(peer, expiry)
    }

    /// Credentials for `peer` that expire at `expiry` (unix seconds).
    pub fn credentials_expiring(&self, peer: &str, expiry: u64) -> TurnCredentials {
        let username = format!("{expiry}:{peer}");
        TurnCredentials {
            server_addr: self.advertised.ip(),
            server_port: self.advertised.port(),
            password: rest_password(&self.secret, &username),
            username,
        }
    }

    /// Closes `peer`'s allocations (on leave), so its relay sockets are freed now rather than
    /// when the allocation's lifetime runs out.
    pub async fn revoke(&self, credentials: &TurnCredentials) {
        if let Err(e) = self
            .server
            .delete_allocations_by_username(credentials.username.clone())
            .await
        {
            tracing::debug!(error = %e, "TURN: closing allocations failed");
        }
    }

    /// Closes every allocation made with credentials issued to `peer` (whatever their expiry),
    /// so its relay sockets are freed when it leaves. Needs no record of what was issued: the
    /// peer id is in the username.
    pub async fn revoke_peer(&self, peer: &str) {
        let infos = match self.server.get_allocations_info(None).await {
            Ok(infos) => infos,
            Err(e) => {
                tracing::debug!(error = %e, "TURN: listing allocations failed");
                return;
            }
        };
        let mut usernames: Vec<String> = infos
            .into_values()
            .map(|i| i.username)
            .filter(|u| username_peer(u) == Some(peer))
            .collect();
        usernames.sort();
        usernames.dedup();
        for username in usernames {
            if let Err(e) = self.server.delete_allocations_by_username(username).await {
                tracing::debug!(error = %e, "TURN: closing allocations failed");
            }
        }
    }

    /// The fabric relay sockets are registered in, if any.
    pub fn fabric(&self) -> Option<&Arc<Fabric>> {
        self.fabric.as_ref()
    }

    /// Counters of the in-process hand-off (`None` without a fabric).
    pub fn fabric_stats(&self) -> Option<FabricStats> {
        self.fabric.as_ref().map(|f| f.stats())
    }

    /// Allocations currently open (for leak checks).
    pub async fn allocation_count(&self) -> usize {
        self.server
            .get_allocations_info(None)
            .await
            .map_or(0, |i| i.len())
    }

    pub async fn close(self) {
        if let Err(e) = self.server.close().await {
            tracing::debug!(error = %e, "TURN: close failed");
        }
    }
}

/// The peer a TURN REST username was issued to.
fn username_peer(username: &str) -> Option<&str> {
    username.split_once(':').map(|(_, peer)| peer)
}

fn rest_password(key: &ring::hmac::Key, username: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(ring::hmac::sign(key, username.as_bytes()))
}

/// Verifies TURN REST usernames: not expired, password derivable from the secret.
struct RestAuth {
    key: Arc<ring::hmac::Key>,
}

impl AuthHandler for RestAuth {
    fn auth_handle(
        &self,
        username: &str,
        realm: &str,
        src_addr: SocketAddr,
    ) -> Result<Vec<u8>, turn::Error> {
        let expiry = username
            .split_once(':')
            .and_then(|(t, _)| t.parse::<u64>().ok())
            .ok_or_else(|| turn::Error::Other(format!("malformed TURN username {username:?}")))?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        if expiry < now {
            tracing::debug!(%src_addr, username, "TURN: expired credentials");
            return Err(turn::Error::Other("expired credentials".to_owned()));
        }
        let password = rest_password(&self.key, username);
        Ok(generate_auth_key(username, realm, &password))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth() -> RestAuth {
        RestAuth {
            key: Arc::new(ring::hmac::Key::new(
                ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
                b"secret",
            )),
        }
    }

    fn now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    #[test]
    fn username_names_its_peer() {
        assert_eq!(username_peer("1700000000:peer-a"), Some("peer-a"));
        // Peer ids are UUIDs, but a colon in one must not shift the split.
        assert_eq!(username_peer("1:a:b"), Some("a:b"));
        assert_eq!(username_peer("videoroom"), None);
    }

    #[test]
    fn rest_password_is_the_published_construction() {
        // base64(HMAC-SHA1("secret", "1:peer")), computed independently with openssl.
        let a = auth();
        assert_eq!(
            rest_password(&a.key, "1:peer"),
            "zWZZ3aPeLl9Lvh3Q1qKdZlQugqc="
        );
    }

    #[test]
    fn auth_accepts_live_and_rejects_expired_or_malformed_usernames() {
        let a = auth();
        let src: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let live = format!("{}:peer-a", now() + 60);
        let key = a.auth_handle(&live, "r", src).unwrap();
        assert_eq!(
            key,
            generate_auth_key(&live, "r", &rest_password(&a.key, &live))
        );
        let expired = format!("{}:peer-a", now() - 1);
        assert!(a.auth_handle(&expired, "r", src).is_err());
        assert!(a.auth_handle("peer-a", "r", src).is_err());
        assert!(a.auth_handle("soon:peer-a", "r", src).is_err());
    }
}
