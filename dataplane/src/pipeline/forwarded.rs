//! Part of parsing: who the client is and what it addressed, when the
//! connection comes from a proxy the operator trusts.
//!
//! Behind a load balancer the socket's peer is the balancer, and the `Host`
//! the client signed may have been rewritten on the way. A proxy says what
//! it saw in `Forwarded` (RFC 7239) or the `X-Forwarded-For`/`-Proto`/
//! `-Host` family. Those headers are believed only from peers inside
//! `trusted_proxies`: from anyone else they are plain headers that change
//! nothing (a client cannot pick the host its signature is checked against,
//! nor its address in the policy input).
//!
//! What is believed:
//! - the client address: walking the `for` chain from the right (the hop
//!   the nearest proxy added) past every trusted address; the first
//!   untrusted one is the client. A client can prepend whatever it likes,
//!   but not past a trusted proxy that appends;
//! - the host and the scheme: the value the nearest trusted proxy gave (the
//!   rightmost of a list). A trusted proxy should set (not pass through)
//!   them; README "Behind a load balancer" says so.
//!
//! `Forwarded` wins over the `X-Forwarded-*` family when both are present.

use std::net::{IpAddr, SocketAddr};

use http::header::{HeaderMap, HeaderValue};
use ipnet::IpNet;

use crate::listen::ConnInfo;

/// The networks whose forwarding headers are believed. Empty: nobody's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    /// Parsed where the setting is read (`controlplane::config::
    /// parse_network`: a CIDR or a single address).
    pub fn new(networks: Vec<IpNet>) -> Self {
        Self(networks)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.0.iter().any(|net| net.contains(&ip))
    }
}

/// Where a request really came from, as far as the gateway may believe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The client's address: the socket's peer, or what trusted proxies
    /// say it was.
    pub client_ip: IpAddr,
    /// Whether the client spoke HTTPS: to this listener, or to a trusted
    /// proxy that says so.
    pub https: bool,
    /// The host the client addressed, when a trusted proxy names it; it
    /// replaces `Host` before anything reads it.
    pub host: Option<HeaderValue>,
}

impl Origin {
    /// The connection alone.
    pub fn direct(conn: &ConnInfo) -> Self {
        Self {
            client_ip: canonical(conn.peer.ip()),
            https: conn.tls.is_some(),
            host: None,
        }
    }
}

/// The request's [`Origin`]. Costs one range check per request from a peer
/// that is not trusted (and nothing when no proxy is trusted).
pub fn resolve(trusted: &TrustedProxies, conn: &ConnInfo, headers: &HeaderMap) -> Origin {
    let mut origin = Origin::direct(conn);
    if trusted.is_empty() || !trusted.contains(conn.peer.ip()) {
        return origin;
    }
    let said = if headers.contains_key(http::header::FORWARDED) {
        from_forwarded(headers)
    } else {
        from_x_forwarded(headers)
    };
    // Walk the hops from the nearest: each trusted address vouches for the
    // one before it.
    let mut client = origin.client_ip;
    for hop in said.chain.iter().rev() {
        if !trusted.contains(client) {
            break;
        }
        match hop {
            Some(ip) => client = canonical(*ip),
            // An obfuscated or unknown hop: nothing further can be believed.
            None => break,
        }
    }
    origin.client_ip = client;
    if let Some(proto) = said.proto {
        origin.https = proto.eq_ignore_ascii_case("https");
    }
    origin.host = said
        .host
        .filter(|h| is_host(h))
        .and_then(|h| HeaderValue::from_str(&h).ok());
    origin
}

/// What a proxy's headers say.
#[derive(Debug, Default)]
struct Said {
    /// The `for` addresses in order, oldest first; `None` for a hop that
    /// is not an address (`unknown`, `_hidden`).
    chain: Vec<Option<IpAddr>>,
    proto: Option<String>,
    host: Option<String>,
}

fn from_x_forwarded(headers: &HeaderMap) -> Said {
    let chain = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|hop| parse_node(hop.trim()))
        .collect();
    Said {
        chain,
        proto: last_value(headers, "x-forwarded-proto"),
        host: last_value(headers, "x-forwarded-host"),
    }
}

/// The rightmost value of a comma-separated header (over all its lines).
fn last_value(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .rfind(|v| !v.is_empty())
        .map(str::to_owned)
}

/// RFC 7239: elements separated by `,`, pairs by `;`, values tokens or
/// quoted strings. Host and proto come from the last element that names
/// them (the nearest proxy's).
fn from_forwarded(headers: &HeaderMap) -> Said {
    let mut said = Said::default();
    for line in headers
        .get_all(http::header::FORWARDED)
        .iter()
        .filter_map(|v| v.to_str().ok())
    {
        for element in split_outside_quotes(line, ',') {
            let mut hop = None;
            let mut has_for = false;
            for pair in split_outside_quotes(element, ';') {
                let Some((name, value)) = pair.split_once('=') else {
                    continue;
                };
                let value = unquote(value.trim());
                match name.trim().to_ascii_lowercase().as_str() {
                    "for" => {
                        has_for = true;
                        hop = parse_node(&value);
                    }
                    "proto" => said.proto = Some(value),
                    "host" => said.host = Some(value),
                    _ => {}
                }
            }
            if has_for {
                said.chain.push(hop);
            }
        }
    }
    said
}

fn split_outside_quotes(s: &str, sep: char) -> impl Iterator<Item = &str> {
    let mut parts = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            c if c == sep && !quoted => {
                parts.push(&s[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts.into_iter().map(str::trim).filter(|p| !p.is_empty())
}

fn unquote(v: &str) -> String {
    match v.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
        Some(inner) => {
            let mut out = String::with_capacity(inner.len());
            let mut escaped = false;
            for c in inner.chars() {
                if escaped || c != '\\' {
                    out.push(c);
                    escaped = false;
                } else {
                    escaped = true;
                }
            }
            out
        }
        None => v.to_owned(),
    }
}

/// A node (`192.0.2.7`, `192.0.2.7:4711`, `[2001:db8::1]:4711`, `2001:db8::1`)
/// as an address; `None` for anything else.
fn parse_node(node: &str) -> Option<IpAddr> {
    if let Ok(ip) = node.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(addr) = node.parse::<SocketAddr>() {
        return Some(addr.ip());
    }
    node.strip_prefix('[')
        .and_then(|n| n.strip_suffix(']'))
        .and_then(|n| n.parse::<IpAddr>().ok())
}

/// An IPv4 address mapped into IPv6 (a dual-stack listener's peer) is the
/// IPv4 address, so `127.0.0.1/32` matches it.
pub(crate) fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// A plausible `host[:port]`: what may stand in `Host`.
fn is_host(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 255
        && h.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':' | b'[' | b']')
        })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn conn(peer: &str, tls: bool) -> ConnInfo {
        ConnInfo {
            peer: peer.parse().unwrap(),
            local: "127.0.0.1:9080".parse().unwrap(),
            tls: tls.then(Default::default),
        }
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(
                http::header::HeaderName::from_bytes(n.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn trusting(nets: &[&str]) -> TrustedProxies {
        TrustedProxies::new(nets.iter().map(|n| n.parse().unwrap()).collect())
    }

    #[test]
    fn contains_by_network_and_sees_mapped_ipv4() {
        let t = trusting(&["10.0.0.0/8", "127.0.0.1/32", "::1/128"]);
        assert!(t.contains(ip("10.1.2.3")));
        assert!(t.contains(ip("127.0.0.1")));
        assert!(!t.contains(ip("127.0.0.2")));
        assert!(t.contains(ip("::1")));
        // A dual-stack socket's view of an IPv4 peer.
        assert!(t.contains(ip("::ffff:10.9.9.9")));
    }

    #[test]
    fn an_untrusted_peer_changes_nothing() {
        let h = headers(&[
            ("x-forwarded-for", "203.0.113.9"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "evil.example"),
            (
                "forwarded",
                "for=198.51.100.1;host=evil2.example;proto=https",
            ),
        ]);
        let trusted = trusting(&["10.0.0.0/8"]);
        let o = resolve(&trusted, &conn("192.0.2.7:5000", false), &h);
        assert_eq!(o, Origin::direct(&conn("192.0.2.7:5000", false)));
        assert_eq!(o.client_ip, ip("192.0.2.7"));
        assert!(!o.https);
        assert!(o.host.is_none());
        // Nobody is trusted by default.
        let o = resolve(
            &TrustedProxies::default(),
            &conn("10.0.0.1:5000", false),
            &h,
        );
        assert_eq!(o.client_ip, ip("10.0.0.1"));
        assert!(o.host.is_none());
    }

    #[test]
    fn x_forwarded_from_a_trusted_peer() {
        let trusted = trusting(&["10.0.0.0/8"]);
        let h = headers(&[
            ("x-forwarded-for", "203.0.113.9"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "bucket.s3.example.com"),
        ]);
        let o = resolve(&trusted, &conn("10.0.0.5:5000", false), &h);
        assert_eq!(o.client_ip, ip("203.0.113.9"));
        assert!(o.https);
        assert_eq!(o.host.unwrap(), "bucket.s3.example.com");
    }

    #[test]
    fn the_client_is_the_first_untrusted_hop_from_the_right() {
        let trusted = trusting(&["10.0.0.0/8"]);
        // The client claims to be 1.1.1.1; the edge proxy (10.0.0.9)
        // appended the real address; the inner one (10.0.0.5) is the peer.
        let h = headers(&[("x-forwarded-for", "1.1.1.1, 203.0.113.9, 10.0.0.9")]);
        let o = resolve(&trusted, &conn("10.0.0.5:5000", false), &h);
        assert_eq!(o.client_ip, ip("203.0.113.9"));
        // Split across header lines, the order is kept.
        let h = headers(&[
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-for", "203.0.113.9, 10.0.0.9"),
        ]);
        let o = resolve(&trusted, &conn("10.0.0.5:5000", false), &h);
        assert_eq!(o.client_ip, ip("203.0.113.9"));
        // Every hop trusted: the oldest.
        let h = headers(&[("x-forwarded-for", "10.0.0.7, 10.0.0.9")]);
        let o = resolve(&trusted, &conn("10.0.0.5:5000", false), &h);
        assert_eq!(o.client_ip, ip("10.0.0.7"));
        // Garbage stops the walk at the last trusted address.
        let h = headers(&[("x-forwarded-for", "1.1.1.1, nonsense, 10.0.0.9")]);
        let o = resolve(&trusted, &conn("10.0.0.5:5000", false), &h);
        assert_eq!(o.client_ip, ip("10.0.0.9"));
    }

    #[test]
    fn forwarded_wins_and_is_parsed_per_rfc_7239() {
        let trusted = trusting(&["10.0.0.0/8"]);
        let h = headers(&[
            (
                "forwarded",
                r#"for="[2001:db8:cafe::17]:4711";proto=http, For=203.0.113.9;Proto=HTTPS;host="b.s3.example.com:8443""#,
            ),
            ("x-forwarded-for", "198.51.100.1"),
            ("x-forwarded-host", "ignored.example"),
        ]);
        let o = resolve(&trusted, &conn("10.0.0.5:5000", true), &h);
        assert_eq!(o.client_ip, ip("203.0.113.9"));
        assert!(o.https);
        assert_eq!(o.host.unwrap(), "b.s3.example.com:8443");
        let h = headers(&[(
            "forwarded",
            r#"for=10.0.0.2, for="[2001:db8:cafe::17]:4711""#,
        )]);
        let o = resolve(&trusted, &conn("10.0.0.5:5000", true), &h);
        assert_eq!(o.client_ip, ip("2001:db8:cafe::17"));
        // A quoted comma does not split the element; http proto downgrades.
        let h = headers(&[("forwarded", r#"for=203.0.113.9;host="a,b";proto=http"#)]);
        let o = resolve(&trusted, &conn("10.0.0.5:5000", true), &h);
        assert_eq!(o.client_ip, ip("203.0.113.9"));
        assert!(!o.https);
        assert!(o.host.is_none(), "a host with a comma is no host");
        let h = headers(&[("forwarded", "for=_hidden;proto=https")]);
        let o = resolve(&trusted, &conn("10.0.0.5:5000", false), &h);
        assert_eq!(o.client_ip, ip("10.0.0.5"));
    }

    #[test]
    fn a_host_that_is_no_host_is_ignored() {
        let trusted = trusting(&["127.0.0.1/32"]);
        for bad in ["a b", "x/y", "host\\evil", ""] {
            let mut h = HeaderMap::new();
            if let Ok(v) = HeaderValue::from_str(bad) {
                h.insert("x-forwarded-host", v);
            }
            let o = resolve(&trusted, &conn("127.0.0.1:1", false), &h);
            assert!(o.host.is_none(), "{bad:?}");
        }
    }
}
