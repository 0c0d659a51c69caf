//! The TURN side of the fabric: relay sockets that are fabric endpoints, so what a browser
//! relays to the SFU (and back) is handed over in-process.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::task::Poll;

use async_trait::async_trait;
use net_tokio::io::ReadBuf;
use net_tokio::net::UdpSocket;
use turn::relay::RelayAddressGenerator;
use webrtc_util::Conn;

use super::{Alternate, Endpoint, Fabric};

/// Binds each allocation's relay socket on `relay_ip` (OS-chosen port unless the client asked
/// for one) and registers it, also under the advertised `public_ip` with the same port: that
/// is the address clients put in their relay candidates, so the SFU sends to it, and through
/// the fabric that needs no NAT hairpinning.
pub struct FabricRelayGenerator {
    pub relay_ip: IpAddr,
    pub public_ip: Option<IpAddr>,
    pub fabric: Arc<Fabric>,
}

#[async_trait]
impl RelayAddressGenerator for FabricRelayGenerator {
    fn validate(&self) -> Result<(), turn::Error> {
        Ok(())
    }

    async fn allocate_conn(
        &self,
        use_ipv4: bool,
        requested_port: u16,
    ) -> Result<(Arc<dyn Conn + Send + Sync>, SocketAddr), turn::Error> {
        if use_ipv4 != self.relay_ip.is_ipv4() {
            // What RelayAddressGeneratorStatic reports when the relay IP has the wrong family.
            return Err(turn::Error::Other(format!(
                "no {} relay address (relay IP is {})",
                if use_ipv4 { "IPv4" } else { "IPv6" },
                self.relay_ip
            )));
        }
        let socket = UdpSocket::bind(SocketAddr::new(self.relay_ip, requested_port)).await?;
        let local = socket.local_addr()?;
        let relayed = SocketAddr::new(self.public_ip.unwrap_or(self.relay_ip), local.port());
        let endpoint = self.fabric.register(local, Some(relayed));
        let conn = RelayConn {
            socket,
            endpoint,
            turn: Alternate::default(),
        };
        Ok((Arc::new(conn), relayed))
    }
}

/// A relay socket: the kernel socket plus its fabric inbox.
pub struct RelayConn {
    socket: UdpSocket,
    endpoint: Option<Endpoint>,
    turn: Alternate,
}

impl RelayConn {
    fn poll_recv_from(
        &self,
        cx: &mut std::task::Context<'_>,
        buf: &mut [u8],
    ) -> Poll<Result<(usize, SocketAddr), webrtc_util::Error>> {
        let Some(ep) = &self.endpoint else {
            let mut rb = ReadBuf::new(buf);
            return self
                .socket
                .poll_recv_from(cx, &mut rb)
                .map_ok(|from| (rb.filled().len(), from))
                .map_err(Into::into);
        };
        if ep.is_closed() {
            // Ends the allocation's relay loop, as a closed socket's error would.
            return Poll::Ready(Err(webrtc_util::Error::ErrUseClosedNetworkConn));
        }
        let inbox = |cx: &mut std::task::Context<'_>, buf: &mut [u8]| {
            ep.poll_recv(cx).map(|d| {
                let n = d.data.len().min(buf.len());
                buf[..n].copy_from_slice(&d.data[..n]);
                Ok((n, d.src))
            })
        };
        let kernel = |cx: &mut std::task::Context<'_>, buf: &mut [u8]| {
            let mut rb = ReadBuf::new(buf);
            self.socket
                .poll_recv_from(cx, &mut rb)
                .map_ok(|from| (rb.filled().len(), from))
                .map_err(Into::into)
        };
        // Whichever goes second is polled only if the first had nothing; both then hold the
        // waker.
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
    }
}

#[async_trait]
impl Conn for RelayConn {
    async fn connect(&self, addr: SocketAddr) -> Result<(), webrtc_util::Error> {
        Ok(self.socket.connect(addr).await?)
    }

    async fn recv(&self, buf: &mut [u8]) -> Result<usize, webrtc_util::Error> {
        Ok(self.recv_from(buf).await?.0)
    }

    async fn recv_from(&self, buf: &mut [u8]) -> Result<(usize, SocketAddr), webrtc_util::Error> {
        futures::future::poll_fn(|cx| self.poll_recv_from(cx, buf)).await
    }

    async fn send(&self, buf: &[u8]) -> Result<usize, webrtc_util::Error> {
        Ok(self.socket.send(buf).await?)
    }

    async fn send_to(&self, buf: &[u8], target: SocketAddr) -> Result<usize, webrtc_util::Error> {
        if let Some(ep) = &self.endpoint {
            if ep.send(buf, None, target) {
                return Ok(buf.len());
            }
        }
        Ok(self.socket.send_to(buf, target).await?)
    }

    fn local_addr(&self) -> Result<SocketAddr, webrtc_util::Error> {
        Ok(self.socket.local_addr()?)
    }

    fn remote_addr(&self) -> Option<SocketAddr> {
        self.socket.peer_addr().ok()
    }

    /// Leaves the fabric now (the allocation may be dropped a little later); the kernel socket
    /// closes when the allocation drops it.
    async fn close(&self) -> Result<(), webrtc_util::Error> {
        if let Some(ep) = &self.endpoint {
            ep.close();
        }
        Ok(())
    }

    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[net_tokio::test]
    async fn relay_conns_use_the_fabric_and_leave_it_on_close() {
        let fabric = Arc::new(Fabric::new(16));
        let generator = FabricRelayGenerator {
            relay_ip: "127.0.0.1".parse().unwrap(),
            public_ip: Some("192.0.2.1".parse().unwrap()),
            fabric: Arc::clone(&fabric),
        };
        let (conn, relayed) = generator.allocate_conn(true, 0).await.unwrap();
        let local = conn.local_addr().unwrap();
        assert_eq!(
            relayed,
            SocketAddr::new("192.0.2.1".parse().unwrap(), local.port())
        );
        let sfu = fabric
            .register("127.0.0.1:1".parse().unwrap(), None)
            .unwrap();

        // Sent to the advertised address, which no route leads to: only the fabric delivers.
        assert!(sfu.send(b"to-relay", None, relayed));
        let mut buf = [0u8; 32];
        let (n, from) = conn.recv_from(&mut buf).await.unwrap();
        assert_eq!(
            (&buf[..n], from),
            (&b"to-relay"[..], "127.0.0.1:1".parse().unwrap())
        );
        conn.send_to(b"to-sfu", "127.0.0.1:1".parse().unwrap())
            .await
            .unwrap();
        let d = sfu.try_recv().unwrap();
        assert_eq!((&d.data[..], d.src), (&b"to-sfu"[..], relayed));

        // The kernel path still works alongside.
        let outsider = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        outsider.send_to(b"kernel", local).await.unwrap();
        let (n, from) = conn.recv_from(&mut buf).await.unwrap();
        assert_eq!(
            (&buf[..n], from),
            (&b"kernel"[..], outsider.local_addr().unwrap())
        );

        conn.close().await.unwrap();
        assert!(conn.recv_from(&mut buf).await.is_err());
        assert!(!sfu.send(b"x", None, relayed));
        assert_eq!(fabric.stats().endpoints, 1);
    }
}
