//! One allocation's relay socket: a kernel UDP socket bound on the relay IP, which reserves the
//! relayed address, and its fabric endpoint (kind [`Kind::Relay`]), through which the SFU's
//! sockets are reached. Its task reads both and hands what arrives to the core.
//!
//! It must never send anywhere the fabric refuses (only the SFU's sockets), and never outlive
//! its allocation: [`Relay::close`] leaves the fabric and stops the task, and the socket closes
//! with the last handle.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use net_tokio::net::UdpSocket;
use net_tokio::task::AbortHandle;

use crate::fabric::{Alternate, Endpoint, Fabric, Kind, Sent};

pub struct Relay {
    socket: UdpSocket,
    /// The address clients and the SFU know this relay by (its datagrams' source in the fabric).
    relayed: SocketAddr,
    endpoint: Option<Endpoint>,
    task: OnceLock<AbortHandle>,
    turn: Alternate,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("local", &self.socket.local_addr().ok())
            .finish_non_exhaustive()
    }
}

impl Relay {
    /// Binds on `ip` (an OS-chosen port) and joins the fabric, also under the advertised
    /// `public` IP with the same port: that is the address clients put in their relay
    /// candidates, so the SFU sends to it. Returns the relay and that relayed address.
    pub fn bind(
        ip: std::net::IpAddr,
        public: Option<std::net::IpAddr>,
        fabric: &Arc<Fabric>,
    ) -> std::io::Result<(Relay, SocketAddr)> {
        let std_socket = std::net::UdpSocket::bind(SocketAddr::new(ip, 0))?;
        std_socket.set_nonblocking(true)?;
        let socket = UdpSocket::from_std(std_socket)?;
        let local = socket.local_addr()?;
        let relayed = SocketAddr::new(public.unwrap_or(ip), local.port());
        let endpoint = fabric.register(local, Some(relayed), Kind::Relay);
        let relay = Relay {
            socket,
            relayed,
            endpoint,
            task: OnceLock::new(),
            turn: Alternate::default(),
        };
        Ok((relay, relayed))
    }

    /// The relayed transport address: what the SFU sees as the source of this relay's datagrams.
    pub fn relayed(&self) -> SocketAddr {
        self.relayed
    }

    /// Sends `data` to `to` if the fabric permits it (an SFU socket); else drops it.
    pub fn send(&self, data: &[u8], to: SocketAddr) {
        let sent = self
            .endpoint
            .as_ref()
            .map_or(Sent::Refused, |ep| ep.send(data, None, to));
        if sent == Sent::Kernel {
            // UDP semantics: a full socket buffer loses the datagram rather than waiting.
            let _ = self.socket.try_send_to(data, to);
        }
    }

    /// The next datagram (from the fabric or the kernel), alternating between the two so a
    /// busy one never starves the other: its length and source. A length over `buf.len()`
    /// means it did not fit and `buf` holds nothing of it. `None` once closed.
    pub async fn recv(&self, buf: &mut [u8]) -> Option<(usize, SocketAddr)> {
        let ep = self.endpoint.as_ref()?;
        futures::future::poll_fn(|cx| {
            use std::task::Poll;
            if ep.is_closed() {
                return Poll::Ready(None);
            }
            // A datagram longer than `buf` reports its full length and copies nothing: the
            // caller drops it rather than relay a truncated one.
            let inbox = |cx: &mut std::task::Context<'_>, buf: &mut [u8]| {
                ep.poll_recv(cx).map(|d| {
                    if let Some(dst) = buf.get_mut(..d.data.len()) {
                        dst.copy_from_slice(&d.data);
                    }
                    Some((d.data.len(), d.src))
                })
            };
            let kernel = |cx: &mut std::task::Context<'_>, buf: &mut [u8]| {
                let mut rb = net_tokio::io::ReadBuf::new(buf);
                match self.socket.poll_recv_from(cx, &mut rb) {
                    Poll::Ready(Ok(from)) => Poll::Ready(Some((rb.filled().len(), from))),
                    // An ICMP error surfacing on the socket: not the socket's end.
                    Poll::Ready(Err(_)) => {
                        cx.waker().wake_by_ref();
                        Poll::Pending
                    }
                    Poll::Pending => Poll::Pending,
                }
            };
            if self.turn.inbox_first() {
                match inbox(cx, buf) {
                    Poll::Pending => kernel(cx, buf),
                    ready => ready,
                }
            } else {
                match kernel(cx, buf) {
                    Poll::Pending => inbox(cx, buf),
                    ready => ready,
                }
            }
        })
        .await
    }

    /// Records the task reading this relay, so closing can stop it.
    pub fn set_task(&self, task: AbortHandle) {
        let _ = self.task.set(task);
    }

    /// Leaves the fabric and stops the reading task; the socket closes when the last handle
    /// goes.
    pub fn close(&self) {
        if let Some(ep) = &self.endpoint {
            ep.close();
        }
        if let Some(t) = self.task.get() {
            t.abort();
        }
    }
}
