//! The SFU side of the fabric: a webrtc [`Runtime`] that is [`TokioRuntime`] in everything
//! except that the peer connection's UDP sockets are registered in the fabric, and send only
//! to the TURN server's relay sockets (browsers are relay-only: a client's host candidate, a
//! LAN address or a multicast group is never a legitimate destination).

use std::future::Future;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use webrtc::runtime::{
    AsyncInterval, AsyncTcpListener, AsyncTcpStream, AsyncUdpSocket, JoinHandle, RecvMeta, Runtime,
    TokioRuntime, Transmit,
};

use super::{Alternate, Endpoint, Fabric, Kind, Sent};

/// [`TokioRuntime`] whose UDP sockets hand datagrams for in-process sockets to the fabric.
#[derive(Debug)]
pub struct FabricRuntime {
    fabric: Arc<Fabric>,
    tokio: TokioRuntime,
}

impl FabricRuntime {
    pub fn new(fabric: Arc<Fabric>) -> FabricRuntime {
        FabricRuntime {
            fabric,
            tokio: TokioRuntime,
        }
    }
}

impl Runtime for FabricRuntime {
    fn spawn(&self, future: Pin<Box<dyn Future<Output = ()> + Send>>) -> Box<dyn JoinHandle> {
        self.tokio.spawn(future)
    }

    // Delegated explicitly: the trait's default would silently drop tokio's reactor pool.
    fn spawn_reactor(
        &self,
        reactor_pool_size: usize,
        future: Pin<Box<dyn Future<Output = ()> + Send>>,
    ) -> Box<dyn JoinHandle> {
        self.tokio.spawn_reactor(reactor_pool_size, future)
    }

    fn wrap_udp_socket(&self, socket: std::net::UdpSocket) -> io::Result<Arc<dyn AsyncUdpSocket>> {
        let local = socket.local_addr()?;
        let inner = self.tokio.wrap_udp_socket(socket)?;
        // No public alias: webrtc 0.21 stores `with_nat_1to1_ips` but never puts it in a
        // candidate, so peers (and the TURN permissions they create) know this socket by its
        // bound address only.
        let endpoint = self.fabric.register(local, None, Kind::Sfu);
        Ok(Arc::new(FabricUdpSocket {
            inner,
            endpoint,
            turn: Alternate::default(),
        }))
    }

    fn wrap_tcp_listener(
        &self,
        listener: std::net::TcpListener,
    ) -> io::Result<Arc<dyn AsyncTcpListener>> {
        self.tokio.wrap_tcp_listener(listener)
    }

    fn connect_tcp<'a>(
        &'a self,
        remote_addr: SocketAddr,
    ) -> Pin<Box<dyn Future<Output = io::Result<Arc<dyn AsyncTcpStream>>> + Send + 'a>> {
        self.tokio.connect_tcp(remote_addr)
    }

    fn resolve_host<'a>(
        &'a self,
        host: &'a str,
    ) -> Pin<Box<dyn Future<Output = io::Result<Vec<SocketAddr>>> + Send + 'a>> {
        self.tokio.resolve_host(host)
    }

    fn now(&self) -> Instant {
        self.tokio.now()
    }

    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
        self.tokio.sleep(duration)
    }

    fn interval(&self, period: Duration) -> Box<dyn AsyncInterval> {
        self.tokio.interval(period)
    }

    fn block_on(&self, future: Pin<Box<dyn Future<Output = ()> + '_>>) {
        self.tokio.block_on(future)
    }

    fn yield_now(&self) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
        self.tokio.yield_now()
    }

    fn name(&self) -> &'static str {
        "tokio+fabric"
    }
}

/// A tokio UDP socket that is also a fabric endpoint.
#[derive(Debug)]
struct FabricUdpSocket {
    inner: Arc<dyn AsyncUdpSocket>,
    /// `None` for a wildcard or multicast socket: it sends nothing.
    endpoint: Option<Endpoint>,
    turn: Alternate,
}

impl FabricUdpSocket {
    /// Fills `bufs` from the inbox; `Pending` (waker registered) when it is empty.
    fn poll_inbox(
        ep: &Endpoint,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let max = bufs.len().min(meta.len());
        if max == 0 {
            return Poll::Ready(Ok(0));
        }
        let Poll::Ready(first) = ep.poll_recv(cx) else {
            return Poll::Pending;
        };
        let mut next = Some(first);
        let mut n = 0;
        while let Some(d) = next {
            // A datagram longer than the buffer is truncated, as recvmsg would.
            let len = d.data.len().min(bufs[n].len());
            bufs[n][..len].copy_from_slice(&d.data[..len]);
            let mut m = RecvMeta::default();
            m.addr = d.src;
            m.len = len;
            // Never 0: the driver de-segments by stride.
            m.stride = len.max(1);
            meta[n] = m;
            n += 1;
            next = if n < max { ep.try_recv() } else { None };
        }
        Poll::Ready(Ok(n))
    }
}

impl AsyncUdpSocket for FabricUdpSocket {
    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_gso_segments(&self) -> usize {
        self.inner.max_gso_segments()
    }

    fn max_gro_segments(&self) -> usize {
        self.inner.max_gro_segments()
    }

    /// A refused send reports success, as a datagram lost on the way would: webrtc must not
    /// treat the socket as broken because one candidate is out of bounds.
    fn poll_send(&self, cx: &mut Context<'_>, transmit: &Transmit<'_>) -> Poll<io::Result<usize>> {
        let sent = self.endpoint.as_ref().map_or(Sent::Refused, |ep| {
            ep.send(
                transmit.contents,
                transmit.segment_size,
                transmit.destination,
            )
        });
        match sent {
            Sent::Kernel => self.inner.poll_send(cx, transmit),
            Sent::Delivered | Sent::Refused => Poll::Ready(Ok(transmit.contents.len())),
        }
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let Some(ep) = &self.endpoint else {
            return self.inner.poll_recv(cx, bufs, meta);
        };
        // Whichever source goes second is polled only if the first is empty, and then both
        // have registered the waker.
        if self.turn.inbox_first() {
            match Self::poll_inbox(ep, cx, bufs, meta) {
                Poll::Pending => self.inner.poll_recv(cx, bufs, meta),
                ready => ready,
            }
        } else {
            match self.inner.poll_recv(cx, bufs, meta) {
                Poll::Pending => Self::poll_inbox(ep, cx, bufs, meta),
                ready => ready,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A relay socket is reached in-process; anything else is refused, while the socket still
    /// reads what the kernel brings.
    #[net_tokio::test]
    async fn sfu_sockets_reach_relays_only() {
        let fabric = Arc::new(Fabric::new(16));
        let rt = FabricRuntime::new(Arc::clone(&fabric));
        let bind = || std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let a = rt.wrap_udp_socket(bind()).unwrap();
        let b = rt.wrap_udp_socket(bind()).unwrap();
        let relay = fabric
            .register("127.0.0.1:9".parse().unwrap(), None, Kind::Relay)
            .unwrap();
        let outsider = net_tokio::net::UdpSocket::bind("127.0.0.1:0")
            .await
            .unwrap();
        let (a_addr, b_addr) = (a.local_addr().unwrap(), b.local_addr().unwrap());

        a.send_to(b"to-relay", "127.0.0.1:9".parse().unwrap())
            .await
            .unwrap();
        let d = relay.try_recv().unwrap();
        assert_eq!((&d.data[..], d.src), (&b"to-relay"[..], a_addr));
        assert_eq!(relay.send(b"to-sfu", None, b_addr), Sent::Delivered);
        outsider.send_to(b"kernel", b_addr).await.unwrap();
        let mut got = Vec::new();
        for _ in 0..2 {
            let mut buf = [0u8; 64];
            let (n, from) = b.recv_from(&mut buf).await.unwrap();
            got.push((buf[..n].to_vec(), from));
        }
        got.sort();
        assert_eq!(
            got,
            [
                (b"kernel".to_vec(), outsider.local_addr().unwrap()),
                (b"to-sfu".to_vec(), "127.0.0.1:9".parse().unwrap()),
            ]
        );

        // To the outsider, or to another SFU socket: refused, and nothing reaches the kernel
        // (a loopback send is queued at the receiver before sendto returns).
        b.send_to(b"out", outsider.local_addr().unwrap())
            .await
            .unwrap();
        b.send_to(b"sideways", a_addr).await.unwrap();
        let mut buf = [0u8; 8];
        assert!(outsider.try_recv_from(&mut buf).is_err());
        assert_eq!(fabric.stats().refused, 2);
        assert_eq!(fabric.stats().delivered, 2);

        drop((a, b, relay));
        assert_eq!(fabric.stats().endpoints, 0);
    }
}
