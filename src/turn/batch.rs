//! Batched sends on one UDP socket (`sendmmsg(2)`): many datagrams to many destinations for
//! one system call, as the SFU's worker produces them in one pass of its loop.
//!
//! It owns the batch's buffer (datagrams back to back, reused between flushes). It must never
//! block (the socket is non-blocking; a full socket buffer loses the rest of the batch, as it
//! would lose a single datagram) or let a datagram outlive the flush that sent it.

use std::net::SocketAddr;
use std::os::fd::AsRawFd;

/// Datagrams per system call (the kernel caps `vlen` at `UIO_MAXIOV`, 1024).
pub const MAX_BATCH: usize = 64;

/// Datagrams waiting for one `sendmmsg`.
#[derive(Default)]
pub struct SendBatch {
    bytes: Vec<u8>,
    /// (start in `bytes`, length, destination)
    spans: Vec<(usize, usize, SocketAddr)>,
}

/// What a flush did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flushed {
    pub sent: usize,
    pub dropped: usize,
    pub calls: usize,
}

impl SendBatch {
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// Appends a datagram for `to`.
    pub fn push(&mut self, to: SocketAddr, datagram: &[u8]) {
        self.spans.push((self.bytes.len(), datagram.len(), to));
        self.bytes.extend_from_slice(datagram);
    }

    /// Sends everything on `socket`, `MAX_BATCH` datagrams per call, and empties the batch.
    pub fn flush(&mut self, socket: &impl AsRawFd) -> Flushed {
        let mut done = Flushed::default();
        for chunk in self.spans.chunks(MAX_BATCH) {
            let addrs: Vec<socket2::SockAddr> = chunk
                .iter()
                .map(|(_, _, to)| socket2::SockAddr::from(*to))
                .collect();
            let mut iovs: Vec<libc::iovec> = chunk
                .iter()
                .map(|&(start, len, _)| libc::iovec {
                    iov_base: self.bytes[start..start + len].as_ptr() as *mut libc::c_void,
                    iov_len: len,
                })
                .collect();
            let mut msgs: Vec<libc::mmsghdr> = iovs
                .iter_mut()
                .zip(&addrs)
                .map(|(iov, addr)| {
                    // SAFETY: an all-zero msghdr is a valid empty one; the fields set below
                    // point into `iovs`, `addrs` and `self.bytes`, which outlive the call.
                    let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
                    hdr.msg_name = addr.as_ptr() as *mut libc::c_void;
                    hdr.msg_namelen = addr.len();
                    hdr.msg_iov = iov as *mut libc::iovec;
                    hdr.msg_iovlen = 1;
                    libc::mmsghdr {
                        msg_hdr: hdr,
                        msg_len: 0,
                    }
                })
                .collect();
            let mut at = 0;
            while at < msgs.len() {
                let rest = &mut msgs[at..];
                // SAFETY: `rest` is a valid array of initialised mmsghdr of that length whose
                // pointers are live (see above); the fd is the caller's open socket.
                let n = unsafe {
                    libc::sendmmsg(
                        socket.as_raw_fd(),
                        rest.as_mut_ptr(),
                        rest.len() as libc::c_uint,
                        libc::MSG_DONTWAIT,
                    )
                };
                done.calls += 1;
                if n <= 0 {
                    // A full buffer or an ICMP error pending on the socket: the first datagram
                    // is lost (UDP), the rest get another try.
                    done.dropped += 1;
                    at += 1;
                } else {
                    done.sent += n as usize;
                    at += n as usize;
                }
            }
        }
        self.bytes.clear();
        self.spans.clear();
        done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_call_sends_datagrams_to_several_destinations_in_order() {
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let rx: Vec<std::net::UdpSocket> = (0..3)
            .map(|_| std::net::UdpSocket::bind("127.0.0.1:0").unwrap())
            .collect();
        let mut batch = SendBatch::default();
        for i in 0..7u8 {
            let to = rx[usize::from(i) % 3].local_addr().unwrap();
            batch.push(to, &[i; 5][..usize::from(i) % 5 + 1]);
        }
        assert_eq!(batch.len(), 7);
        let done = batch.flush(&tx);
        assert_eq!((done.sent, done.dropped, done.calls), (7, 0, 1));
        assert!(batch.is_empty());
        for (r, socket) in rx.iter().enumerate() {
            socket.set_nonblocking(true).unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 16];
            while let Ok(n) = socket.recv(&mut buf) {
                got.push(buf[..n].to_vec());
            }
            let want: Vec<Vec<u8>> = (0..7u8)
                .filter(|i| usize::from(*i) % 3 == r)
                .map(|i| vec![i; usize::from(i) % 5 + 1])
                .collect();
            assert_eq!(got, want, "socket {r}");
        }
    }
}
