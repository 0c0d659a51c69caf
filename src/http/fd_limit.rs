//! The process's open-file limit, and the connection cap sized under it.
//!
//! Owns raising the soft `RLIMIT_NOFILE` to the hard limit (the binary does it once at start:
//! the soft default of 1,024 is a relic of `select(2)`, which nothing here uses) and the
//! arithmetic of the default cap. Never lowers a limit.

/// Descriptors kept for everything that is not a client connection: the listener, the runtime's
/// epoll and wakers, the TURN server's socket, log files, and a margin.
pub const RESERVED_FDS: u64 = 256;

/// Descriptors one connected peer holds in this process with media flowing: its TCP connection,
/// its SFU ICE socket, its TURN relay socket, and one more socket of the webrtc stack (measured:
/// 4 peers in one room took the real server from 13 to 29 open descriptors).
pub const FDS_PER_CONNECTION: u64 = 4;

/// The default cap never goes above this, whatever the fd limit: at ~26 KiB per idle
/// WebSocket (BENCHMARKS.md) that is ~430 MB of socket buffers.
pub const MAX_DEFAULT_CONNECTIONS: usize = 16_384;

/// The soft open-file limit, if the platform reports one.
pub fn soft_limit() -> Option<u64> {
    get().map(|(soft, _)| soft)
}

/// Where the soft limit goes when the hard one is unlimited (the kernel refuses more than its
/// `nr_open`, 1,048,576 by default on Linux).
const UNLIMITED_TARGET: u64 = 1 << 20;

/// Raises the soft open-file limit to the hard one. Returns the soft limit now in force.
pub fn raise_to_hard() -> std::io::Result<u64> {
    let (soft, hard) = get().ok_or_else(std::io::Error::last_os_error)?;
    let target = if hard == RLIM_INFINITY {
        UNLIMITED_TARGET
    } else {
        hard
    };
    if soft >= target {
        return Ok(soft);
    }
    let want = libc::rlimit {
        rlim_cur: to_rlim(target),
        rlim_max: to_rlim(hard),
    };
    // SAFETY: setrlimit reads the struct we pass and nothing else.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &want) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(target)
}

/// The default connection cap for a soft limit of `fds` descriptors (at least 16).
pub fn default_max_connections(fds: Option<u64>) -> usize {
    let fds = fds.unwrap_or(1024);
    let n = fds.saturating_sub(RESERVED_FDS) / FDS_PER_CONNECTION;
    usize::try_from(n)
        .unwrap_or(usize::MAX)
        .clamp(16, MAX_DEFAULT_CONNECTIONS)
}

fn get() -> Option<(u64, u64)> {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct we own and nothing else.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 {
        return None;
    }
    Some((from_rlim(r.rlim_cur), from_rlim(r.rlim_max)))
}

const RLIM_INFINITY: u64 = from_rlim(libc::RLIM_INFINITY);

// `rlim_t` is u64 on the platforms this runs on, but not by definition.
#[allow(clippy::unnecessary_cast)]
const fn from_rlim(v: libc::rlim_t) -> u64 {
    v as u64
}

#[allow(clippy::unnecessary_cast)]
const fn to_rlim(v: u64) -> libc::rlim_t {
    v as libc::rlim_t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_cap_leaves_room_for_media_sockets_and_is_bounded() {
        assert_eq!(default_max_connections(Some(1024)), 192);
        assert_eq!(default_max_connections(None), 192);
        assert_eq!(default_max_connections(Some(4096)), 960);
        assert_eq!(
            default_max_connections(Some(1 << 20)),
            MAX_DEFAULT_CONNECTIONS
        );
        assert_eq!(default_max_connections(Some(100)), 16);
        let fds = 1024;
        assert!(
            (default_max_connections(Some(fds)) as u64) * FDS_PER_CONNECTION + RESERVED_FDS <= fds
        );
    }

    #[test]
    fn the_soft_limit_is_readable_and_raising_never_lowers_it() {
        let before = soft_limit().expect("RLIMIT_NOFILE is reported");
        let after = raise_to_hard().expect("raising to the hard limit is allowed");
        assert!(after >= before);
        assert_eq!(soft_limit(), Some(after));
    }
}
