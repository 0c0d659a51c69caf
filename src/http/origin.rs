//! Which browser pages may open the WebSocket: Phoenix's `check_origin`, made explicit.
//!
//! Owns the decision alone (a pure function of the request's `Origin` and `Host` headers and
//! the configured allow-list); never reads the network or logs the client's bytes.
//!
//! A page may open the socket when it was served by this server (its Origin's host and port
//! are the request's `Host`, scheme `http` or `https`, so a TLS proxy in front changes
//! nothing), or when its Origin is listed exactly (`scheme://host[:port]`). Clients that send
//! no Origin at all are not browsers (a browser always sends one on a WebSocket handshake) and
//! are let through: an Origin check protects users' browsers, not the server.

/// Whether a WebSocket handshake with these headers may proceed.
pub fn allowed(origin: Option<&str>, host: Option<&str>, allow_list: &[String]) -> bool {
    let Some(origin) = origin else {
        return true;
    };
    if allow_list.iter().any(|o| o == origin) {
        return true;
    }
    let (Some(origin), Some(host)) = (parse_origin(origin), host) else {
        return false;
    };
    let Some((host_name, host_port)) = split_authority(host) else {
        return false;
    };
    origin.host.eq_ignore_ascii_case(host_name)
        && origin.port == host_port.unwrap_or(origin.default_port)
}

struct Origin<'a> {
    host: &'a str,
    port: u16,
    default_port: u16,
}

/// `scheme://host[:port]` with scheme `http` or `https` and nothing after the authority.
fn parse_origin(origin: &str) -> Option<Origin<'_>> {
    let (scheme, authority) = origin.split_once("://")?;
    let default_port = if scheme.eq_ignore_ascii_case("http") {
        80
    } else if scheme.eq_ignore_ascii_case("https") {
        443
    } else {
        return None;
    };
    let (host, port) = split_authority(authority)?;
    Some(Origin {
        host,
        port: port.unwrap_or(default_port),
        default_port,
    })
}

/// `host[:port]`, the host possibly a bracketed IPv6 literal. `None` if malformed.
fn split_authority(a: &str) -> Option<(&str, Option<u16>)> {
    if a.is_empty() || a.contains(['/', '?', '#', '@', ' ']) {
        return None;
    }
    let (host, port) = if let Some(rest) = a.strip_prefix('[') {
        let (v6, after) = rest.split_once(']')?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':')?),
        };
        (v6, port)
    } else {
        match a.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (a, None),
        }
    };
    if host.is_empty() {
        return None;
    }
    let port = match port {
        None => None,
        Some(p) => Some(p.parse().ok()?),
    };
    Some((host, port))
}

#[cfg(test)]
mod tests {
    use super::allowed;

    fn own(origin: &str, host: &str) -> bool {
        allowed(Some(origin), Some(host), &[])
    }

    #[test]
    fn no_origin_is_a_non_browser_client_and_allowed() {
        assert!(allowed(None, Some("127.0.0.1:4000"), &[]));
        assert!(allowed(None, None, &[]));
    }

    #[test]
    fn the_servers_own_origin_is_allowed_over_http_or_https() {
        assert!(own("http://127.0.0.1:4000", "127.0.0.1:4000"));
        assert!(own("https://meet.example", "meet.example"));
        assert!(own("http://meet.example", "meet.example:80"));
        assert!(own("https://meet.example:443", "meet.example"));
        assert!(own("HTTPS://Meet.Example", "meet.example"));
        assert!(own("http://[::1]:4000", "[::1]:4000"));
    }

    #[test]
    fn any_other_origin_is_refused() {
        assert!(!own("http://127.0.0.1:4001", "127.0.0.1:4000"));
        assert!(!own("http://evil.example", "127.0.0.1:4000"));
        assert!(!own("https://meet.example", "meet.example:8443"));
        assert!(!own("http://meet.example.evil", "meet.example"));
        assert!(!own("null", "meet.example"));
        assert!(!own("file://meet.example", "meet.example"));
        assert!(!own("ws://127.0.0.1:4000", "127.0.0.1:4000"));
        assert!(!own("http://127.0.0.1:4000/path", "127.0.0.1:4000"));
        assert!(!own("http://user@127.0.0.1:4000", "127.0.0.1:4000"));
        assert!(!own("http://127.0.0.1:x", "127.0.0.1:x"));
        assert!(!own("http://", ""));
        assert!(!allowed(Some("http://127.0.0.1:4000"), None, &[]));
    }

    #[test]
    fn the_allow_list_widens_the_default_by_exact_origin() {
        let list = vec!["https://meet.example".to_owned()];
        assert!(allowed(
            Some("https://meet.example"),
            Some("10.0.0.5:4000"),
            &list
        ));
        assert!(allowed(
            Some("http://10.0.0.5:4000"),
            Some("10.0.0.5:4000"),
            &list
        ));
        assert!(!allowed(
            Some("https://meet.example:8443"),
            Some("10.0.0.5:4000"),
            &list
        ));
        assert!(!allowed(
            Some("https://evil.example"),
            Some("10.0.0.5:4000"),
            &list
        ));
    }
}
