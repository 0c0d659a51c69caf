//! The etcd client: typed gateway calls over [`super::http`], one connection per call, to one of
//! a list of `http://host:port` endpoints.
//!
//! Owns the endpoint list, the per-call timeout and the index of the endpoint that last worked
//! (its only state: no connection, lease or cache lives here). A call goes to that endpoint; if
//! it cannot connect (the request was sent nowhere) the call moves on to the next, each endpoint
//! at most once per call.
//!
//! It never retries a request whose fate is unknown: once the request may have left (the
//! connection was made), any failure is [`EtcdError::Indeterminate`] and the caller decides (a
//! claim that may have landed is read back). It never speaks TLS: `https://` endpoints are
//! refused when the client is built, not discovered at the first call.

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde::Serialize;

use super::gateway::{
    code, prefix_end, DeleteRangeRequest, DeleteRangeResponse, ErrorBody, KeyValue,
    LeaseGrantRequest, LeaseKeepAliveRequest, LeaseRevokeRequest, PutRequest, RangeRequest, Rpc,
    TxnRequest, TxnResponse,
};
use super::http;
use crate::rt::time::{self, Duration, Instant};

/// Why a call did not give an answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EtcdError {
    /// No endpoint accepted a connection within the call's time: the request was sent nowhere,
    /// so nothing it asked for happened.
    #[error("etcd unreachable: {0}")]
    Unreachable(String),
    /// The request was (or may have been) sent, and no complete answer came back: a write may or
    /// may not have been applied.
    #[error("etcd call's outcome unknown: {0}")]
    Indeterminate(String),
    /// etcd answered with an error (any HTTP status but 200, or a keepalive's error item).
    #[error("etcd refused: {} (code {})", .0.message, .0.code)]
    Refused(ErrorBody),
    /// etcd answered 200 with a body that is not the expected response.
    #[error("etcd answered something unreadable: {0}")]
    Malformed(String),
}

impl EtcdError {
    /// Whether a write that failed with this error may still have been applied. Besides
    /// [`EtcdError::Indeterminate`], etcd answers `Unavailable` ("request timed out", "leader
    /// changed") for proposals it gave up waiting for, which can still commit later.
    pub fn may_have_applied(&self) -> bool {
        match self {
            EtcdError::Indeterminate(_) => true,
            EtcdError::Refused(body) => {
                body.code == code::UNAVAILABLE
                    && (body.message.contains("timed out")
                        || body.message.contains("leader changed"))
            }
            EtcdError::Unreachable(_) | EtcdError::Malformed(_) => false,
        }
    }

    /// etcd's `requested lease not found` (a put on, or a revoke of, a lease that is gone).
    pub fn is_lease_not_found(&self) -> bool {
        matches!(self, EtcdError::Refused(body) if body.code == code::NOT_FOUND)
    }
}

/// An endpoint list that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad etcd endpoint {endpoint:?}: {why}")]
pub struct EndpointError {
    pub endpoint: String,
    pub why: String,
}

#[derive(Clone, PartialEq, Eq)]
struct Endpoint {
    /// `host:port` as written: the `Host` header and what errors name.
    authority: String,
    /// Without IPv6 brackets, for connecting.
    host: String,
    port: u16,
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "http://{}", self.authority)
    }
}

impl Endpoint {
    fn parse(raw: &str) -> Result<Endpoint, EndpointError> {
        let bad = |why: &str| EndpointError {
            endpoint: raw.to_string(),
            why: why.to_string(),
        };
        let s = raw.trim();
        if s.len() >= 8 && s[..8].eq_ignore_ascii_case("https://") {
            return Err(bad(
                "TLS to etcd is not supported yet: use an http:// endpoint (on a trusted network)",
            ));
        }
        let Some(rest) = s
            .get(..7)
            .filter(|p| p.eq_ignore_ascii_case("http://"))
            .map(|_| &s[7..])
        else {
            return Err(bad("expected http://host:port"));
        };
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.contains(['/', '?', '#', '@']) || authority.is_empty() {
            return Err(bad(
                "expected http://host:port, with no path, query or user",
            ));
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6
                .split_once(']')
                .ok_or_else(|| bad("unclosed '[' in an IPv6 address"))?;
            let port = after
                .strip_prefix(':')
                .ok_or_else(|| bad("no port (etcd's client port is usually 2379)"))?;
            (host, port)
        } else {
            authority
                .rsplit_once(':')
                .ok_or_else(|| bad("no port (etcd's client port is usually 2379)"))?
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let port: u16 = port
            .parse()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| bad("the port is not a number from 1 to 65535"))?;
        Ok(Endpoint {
            authority: authority.to_string(),
            host: host.to_string(),
            port,
        })
    }
}

/// A client of etcd's JSON gateway. Cheap to share (`&self` everywhere); see the module docs
/// for what it does and never does.
#[derive(Debug)]
pub struct EtcdClient {
    endpoints: Vec<Endpoint>,
    timeout: Duration,
    /// The endpoint that last accepted a connection: where the next call starts.
    current: AtomicUsize,
}

impl EtcdClient {
    /// A client for `endpoints` (each `http://host:port`), every call bounded by `timeout`.
    pub fn new<S: AsRef<str>>(
        endpoints: &[S],
        timeout: Duration,
    ) -> Result<EtcdClient, EndpointError> {
        let endpoints = endpoints
            .iter()
            .map(|e| Endpoint::parse(e.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        if endpoints.is_empty() {
            return Err(EndpointError {
                endpoint: String::new(),
                why: "no endpoint given".into(),
            });
        }
        Ok(EtcdClient {
            endpoints,
            timeout,
            current: AtomicUsize::new(0),
        })
    }

    /// [`EtcdClient::new`] from a comma-separated list, as the command line gives it.
    pub fn from_list(list: &str, timeout: Duration) -> Result<EtcdClient, EndpointError> {
        let parts: Vec<&str> = list
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        EtcdClient::new(&parts, timeout)
    }

    /// The endpoints, as `http://host:port`.
    pub fn endpoints(&self) -> Vec<String> {
        self.endpoints.iter().map(|e| format!("{e:?}")).collect()
    }

    /// Posts `body` to `path` and returns the answer's status and body, whatever the status.
    pub async fn post_raw(&self, path: &str, body: &[u8]) -> Result<(u16, Vec<u8>), EtcdError> {
        let deadline = time::now() + self.timeout;
        let n = self.endpoints.len();
        let start = self.current.load(Ordering::Relaxed) % n;
        let mut failures = Vec::new();
        for i in 0..n {
            let idx = (start + i) % n;
            let ep = &self.endpoints[idx];
            let left = remaining(deadline);
            if left.is_zero() {
                failures.push(format!("{ep:?}: no time left"));
                break;
            }
            // A share of what is left, so one endpoint that swallows SYNs cannot use up the call
            // before the others are tried.
            let share = left / (n - i) as u32;
            let mut stream = match time::timeout(
                share,
                tokio::net::TcpStream::connect((ep.host.as_str(), ep.port)),
            )
            .await
            {
                Some(Ok(s)) => s,
                Some(Err(e)) => {
                    failures.push(format!("{ep:?}: {e}"));
                    continue;
                }
                None => {
                    failures.push(format!("{ep:?}: connect timed out after {share:?}"));
                    continue;
                }
            };
            self.current.store(idx, Ordering::Relaxed);
            // From here the request may be out: whatever happens is the caller's to judge.
            let exchange = http::post(&mut stream, &ep.authority, path, body, http::MAX_RESPONSE);
            return match time::timeout(remaining(deadline), exchange).await {
                Some(Ok(resp)) => Ok((resp.status, resp.body)),
                Some(Err(e)) => Err(EtcdError::Indeterminate(format!("{ep:?} {path}: {e}"))),
                None => Err(EtcdError::Indeterminate(format!(
                    "{ep:?} {path}: no answer within {:?}",
                    self.timeout
                ))),
            };
        }
        Err(EtcdError::Unreachable(failures.join("; ")))
    }

    /// A typed gateway call: `req` posted to its path, the answer decoded.
    pub async fn call<R: Rpc>(&self, req: &R) -> Result<R::Response, EtcdError> {
        let body = to_json(req)?;
        let (status, answer) = self.post_raw(R::PATH, &body).await?;
        decode::<R::Response>(status, &answer)
    }

    /// Grants a lease of `ttl_secs` with an id etcd picks: `(id, granted TTL)`; etcd raises a
    /// TTL below its minimum (2 s with its default election timeout).
    pub async fn grant(&self, ttl_secs: i64) -> Result<(i64, i64), EtcdError> {
        let r = self
            .call(&LeaseGrantRequest {
                ttl: ttl_secs,
                id: 0,
            })
            .await?;
        if !r.error.is_empty() {
            return Err(EtcdError::Refused(ErrorBody {
                message: r.error.clone(),
                error: r.error,
                code: UNKNOWN,
            }));
        }
        if r.id == 0 || r.ttl <= 0 {
            return Err(EtcdError::Malformed(format!(
                "a grant without an id or TTL: {r:?}"
            )));
        }
        Ok((r.id, r.ttl))
    }

    /// Renews lease `id`: its TTL, or `None` when etcd no longer has it (expired or revoked).
    pub async fn keepalive(&self, id: i64) -> Result<Option<i64>, EtcdError> {
        let item = self.call(&LeaseKeepAliveRequest { id }).await?;
        if let Some(err) = item.error {
            return Err(EtcdError::Refused(err));
        }
        let Some(result) = item.result else {
            return Err(EtcdError::Malformed(
                "a keepalive item with neither result nor error".into(),
            ));
        };
        Ok((result.ttl > 0).then_some(result.ttl))
    }

    /// Revokes lease `id`, deleting its keys: the revision after. A lease etcd does not have is
    /// `Refused` with code 5 ([`EtcdError::is_lease_not_found`]).
    pub async fn revoke(&self, id: i64) -> Result<i64, EtcdError> {
        Ok(self.call(&LeaseRevokeRequest { id }).await?.header.revision)
    }

    /// The key's current entry, if any, and the revision it was read at.
    pub async fn get(&self, key: &[u8]) -> Result<(Option<KeyValue>, i64), EtcdError> {
        let r = self
            .call(&RangeRequest {
                key: key.to_vec(),
                ..RangeRequest::default()
            })
            .await?;
        Ok((r.kvs.into_iter().next(), r.header.revision))
    }

    /// Every entry under `prefix`, in key order, and the revision they were read at.
    pub async fn get_prefix(&self, prefix: &[u8]) -> Result<(Vec<KeyValue>, i64), EtcdError> {
        let r = self
            .call(&RangeRequest {
                key: prefix.to_vec(),
                range_end: prefix_end(prefix),
                limit: 0,
            })
            .await?;
        Ok((r.kvs, r.header.revision))
    }

    /// Writes `key` (attached to `lease`, 0 for none): the revision of the write.
    pub async fn put(&self, key: &[u8], value: &[u8], lease: i64) -> Result<i64, EtcdError> {
        Ok(self
            .call(&PutRequest {
                key: key.to_vec(),
                value: value.to_vec(),
                lease,
            })
            .await?
            .header
            .revision)
    }

    pub async fn txn(&self, txn: &TxnRequest) -> Result<TxnResponse, EtcdError> {
        self.call(txn).await
    }

    /// Deletes `key`: how many keys went (0 or 1) and the revision after.
    pub async fn delete(&self, key: &[u8]) -> Result<(i64, i64), EtcdError> {
        let r: DeleteRangeResponse = self
            .call(&DeleteRangeRequest {
                key: key.to_vec(),
                range_end: Vec::new(),
            })
            .await?;
        Ok((r.deleted, r.header.revision))
    }
}

/// gRPC's `Unknown`: what an error without a gateway error body is reported as.
const UNKNOWN: i32 = 2;

fn remaining(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(time::now())
}

fn to_json<T: Serialize>(v: &T) -> Result<Vec<u8>, EtcdError> {
    serde_json::to_vec(v).map_err(|e| EtcdError::Malformed(format!("cannot encode request: {e}")))
}

/// A gateway answer: 200 and the expected body, or the error body etcd sent (a non-200 that is
/// not one, such as the mux's plain-text 404 for an unknown path, is reported with code 2).
fn decode<T: serde::de::DeserializeOwned>(status: u16, body: &[u8]) -> Result<T, EtcdError> {
    if status != 200 {
        return Err(EtcdError::Refused(
            serde_json::from_slice::<ErrorBody>(body)
                .ok()
                .filter(|b| !b.error.is_empty() || b.code != 0)
                .unwrap_or_else(|| {
                    let text = String::from_utf8_lossy(body);
                    let text = text.trim();
                    let text: String = text.chars().take(200).collect();
                    ErrorBody {
                        error: format!("HTTP {status}"),
                        message: format!("HTTP {status}: {text}"),
                        code: UNKNOWN,
                    }
                }),
        ));
    }
    serde_json::from_slice(body).map_err(|e| {
        let text: String = String::from_utf8_lossy(body).chars().take(200).collect();
        EtcdError::Malformed(format!("{e}: {text}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::etcd::gateway::{LeaseKeepAliveItem, RangeResponse};

    #[test]
    fn endpoints_parse() {
        let c = EtcdClient::from_list(
            " http://127.0.0.1:2379, HTTP://etcd-1:2380/ ,http://[::1]:23790",
            Duration::from_secs(1),
        )
        .unwrap();
        assert_eq!(
            c.endpoints(),
            [
                "http://127.0.0.1:2379",
                "http://etcd-1:2380",
                "http://[::1]:23790"
            ]
        );
        assert_eq!(c.endpoints[2].host, "::1");
        assert_eq!(c.endpoints[2].authority, "[::1]:23790");
    }

    #[test]
    fn bad_endpoints_are_refused_with_a_reason() {
        let cases = [
            ("https://127.0.0.1:2379", "TLS to etcd is not supported"),
            ("HTTPS://x:1", "TLS to etcd is not supported"),
            ("127.0.0.1:2379", "expected http://host:port"),
            ("unix:///run/etcd.sock", "expected http://host:port"),
            ("http://127.0.0.1", "no port"),
            ("http://127.0.0.1:0", "port is not a number"),
            ("http://127.0.0.1:99999", "port is not a number"),
            ("http://127.0.0.1:2379/v3", "no path"),
            ("http://user@127.0.0.1:2379", "no path"),
            ("http://:2379", "no host"),
            ("http://[::1:2379", "unclosed"),
        ];
        for (raw, why) in cases {
            let err = EtcdClient::new(&[raw], Duration::from_secs(1)).unwrap_err();
            assert!(err.to_string().contains(why), "{raw}: {err}");
        }
        let none = EtcdClient::from_list(" , ", Duration::from_secs(1)).unwrap_err();
        assert!(none.to_string().contains("no endpoint"), "{none}");
    }

    #[test]
    fn decoding_answers() {
        let r: RangeResponse = decode(200, br#"{"header":{"revision":"3"},"count":"1"}"#).unwrap();
        assert_eq!((r.header.revision, r.count), (3, 1));
        let refused = decode::<RangeResponse>(
            404,
            br#"{"error":"etcdserver: requested lease not found","message":"etcdserver: requested lease not found","code":5}"#,
        )
        .unwrap_err();
        assert!(refused.is_lease_not_found(), "{refused}");
        assert!(!refused.may_have_applied());
        let plain = decode::<RangeResponse>(404, b"Not Found\n").unwrap_err();
        assert_eq!(
            plain,
            EtcdError::Refused(ErrorBody {
                error: "HTTP 404".into(),
                message: "HTTP 404: Not Found".into(),
                code: UNKNOWN
            })
        );
        assert!(matches!(
            decode::<RangeResponse>(200, b"{\"header\":"),
            Err(EtcdError::Malformed(_))
        ));
        // The gateway ends a stream item with a newline.
        let ka: LeaseKeepAliveItem = decode(
            200,
            b"{\"result\":{\"header\":{},\"ID\":\"7\",\"TTL\":\"5\"}}\n",
        )
        .unwrap();
        assert_eq!(ka.result.unwrap().ttl, 5);
    }

    /// A fake etcd on the loopback that counts connections and, per `answer`, replies with an
    /// empty range or hangs up once it has read the request.
    async fn fake(answer: bool) -> (String, std::sync::Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let count = std::sync::Arc::new(AtomicUsize::new(0));
        let seen = count.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                seen.fetch_add(1, Ordering::SeqCst);
                let _ = http::read_request(&mut s, http::MAX_REQUEST).await;
                if answer {
                    let body = br#"{"header":{"revision":"7"}}"#;
                    let _ = http::write_response(&mut s, 200, "application/json", body).await;
                }
            }
        });
        (url, count)
    }

    fn refused_url() -> String {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    }

    #[test]
    fn sent_requests_are_never_retried_and_the_working_endpoint_sticks() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            // The first endpoint takes the request and hangs up: the second is not tried.
            let (hangs_up, hung) = fake(false).await;
            let (answers, answered) = fake(true).await;
            let c = EtcdClient::new(&[&hangs_up, &answers], Duration::from_secs(2)).unwrap();
            let err = c.get(b"/k").await.unwrap_err();
            assert!(matches!(err, EtcdError::Indeterminate(_)), "{err:?}");
            assert_eq!(
                (hung.load(Ordering::SeqCst), answered.load(Ordering::SeqCst)),
                (1, 0)
            );

            // A refused connection sent nothing: the next endpoint answers, and stays in use.
            let c =
                EtcdClient::new(&[refused_url(), answers.clone()], Duration::from_secs(2)).unwrap();
            assert_eq!(c.get(b"/k").await.unwrap(), (None, 7));
            assert_eq!(c.current.load(Ordering::SeqCst), 1);
            assert_eq!(c.get(b"/k").await.unwrap(), (None, 7));
            assert_eq!(answered.load(Ordering::SeqCst), 2);

            // Nothing reachable: each endpoint once, both named.
            let (a, b) = (refused_url(), refused_url());
            let c = EtcdClient::new(&[&a, &b], Duration::from_secs(2)).unwrap();
            match c.get(b"/k").await.unwrap_err() {
                EtcdError::Unreachable(m) => assert!(m.contains(&a) && m.contains(&b), "{m}"),
                other => panic!("{other:?}"),
            }
        });
    }

    #[test]
    fn which_errors_may_have_applied() {
        let unavailable = |m: &str| {
            EtcdError::Refused(ErrorBody {
                error: m.into(),
                message: m.into(),
                code: code::UNAVAILABLE,
            })
        };
        assert!(unavailable("etcdserver: request timed out").may_have_applied());
        assert!(unavailable("etcdserver: leader changed").may_have_applied());
        assert!(!unavailable("etcdserver: no leader").may_have_applied());
        assert!(EtcdError::Indeterminate("x".into()).may_have_applied());
        assert!(!EtcdError::Unreachable("x".into()).may_have_applied());
    }
}
