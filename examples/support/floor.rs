//! The floor a forwarded packet is measured against, in the same run: what one thread spends
//! to SRTP-protect a packet (AES-128-GCM, the profile browsers and the SFU negotiate) and hand
//! it to the kernel with `sendmmsg` to a socket on loopback, at the rate the SFU forwarded.
//! Nothing of an SFU is in it (no receive, no decrypt, no RTCP, no TURN framing): a server
//! that forwards at this cost per packet does nothing but encrypt and send.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rtc::srtp::context::Context;
use rtc::srtp::protection_profile::ProtectionProfile;
use videoroom::turn::batch::SendBatch;

use super::load::{thread_cpu_ns, VIDEO_BYTES};

/// Server-side CPU per packet of the floor, in µs, over `secs` at `rate` pkt/s.
pub fn floor_us(rate: f64, secs: f64) -> f64 {
    let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    rx.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let to = rx.local_addr().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let reader_stop = Arc::clone(&stop);
    let reader = std::thread::Builder::new()
        .name("floor-rx".into())
        .spawn(move || {
            let mut buf = [0u8; 2048];
            while !reader_stop.load(Ordering::Relaxed) {
                let _ = rx.recv(&mut buf);
            }
        })
        .unwrap();
    let sender = std::thread::Builder::new()
        .name("floor-tx".into())
        .spawn(move || {
            let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            let crypto = rtc::crypto::providers::RingCrypto;
            let mut ctx = Context::new(
                &[7u8; 16],
                &[9u8; 12],
                ProtectionProfile::AeadAes128Gcm,
                None,
                None,
                &crypto,
            )
            .unwrap();
            let mut plain = vec![0u8; 12 + VIDEO_BYTES];
            plain[0] = 0x80;
            plain[1] = 96;
            let mut batch = SendBatch::default();
            let per_tick = (rate / 100.0).round().max(1.0) as u64;
            let (cpu0, t0) = (thread_cpu_ns("floor-tx"), Instant::now());
            let mut seq: u16 = 0;
            let mut sent = 0u64;
            let mut next = Instant::now();
            while t0.elapsed().as_secs_f64() < secs {
                for _ in 0..per_tick {
                    seq = seq.wrapping_add(1);
                    plain[2..4].copy_from_slice(&seq.to_be_bytes());
                    plain[8..12].copy_from_slice(&u32::from(seq % 11).to_be_bytes());
                    let cipher = ctx.encrypt_rtp(&plain).unwrap();
                    batch.push(to, &cipher);
                    if batch.len() >= 64 {
                        batch.flush(&tx);
                    }
                    sent += 1;
                }
                batch.flush(&tx);
                next += Duration::from_millis(10);
                if let Some(wait) = next.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
            }
            (thread_cpu_ns("floor-tx") - cpu0) as f64 / 1e3 / sent.max(1) as f64
        })
        .unwrap();
    let us = sender.join().unwrap();
    stop.store(true, Ordering::Relaxed);
    reader.join().unwrap();
    us
}
