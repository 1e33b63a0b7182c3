//! Header rules of the reverse proxy (RFC 9110 §7.6.1, RFC 7239): which headers stay on one
//! connection, and the forwarding headers added to each request. The request head is written
//! straight out as HTTP/1 text (see [`crate::upstream`]), so nothing here edits a `HeaderMap`.

use std::net::SocketAddr;

use hyper::header::{self, HeaderMap};

/// Hop-by-hop headers: meaningful for one connection only, never forwarded.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
];

/// Whether the header `name` stays on its connection: hop-by-hop, or named by the message's
/// `Connection` header (its values in `connection`). `Upgrade` passes only with `upgrade`
/// (a protocol switch being forwarded). `Host` and `Content-Length` always pass: a
/// `Connection` token naming them would change where the message goes or where it ends.
pub fn hop_by_hop(name: &str, connection: &[&[u8]], upgrade: bool) -> bool {
    if name.eq_ignore_ascii_case("upgrade") {
        return !upgrade;
    }
    if name.eq_ignore_ascii_case("host") || name.eq_ignore_ascii_case("content-length") {
        return false;
    }
    HOP_BY_HOP.iter().any(|h| h.eq_ignore_ascii_case(name))
        || connection_tokens(connection).any(|t| t.eq_ignore_ascii_case(name.as_bytes()))
}

/// The comma-separated tokens of `Connection` header values.
pub fn connection_tokens<'a>(values: &'a [&'a [u8]]) -> impl Iterator<Item = &'a [u8]> + 'a {
    values
        .iter()
        .flat_map(|v| v.split(|b| *b == b','))
        .map(<[u8]>::trim_ascii)
}

/// Where a client connection comes from, prepared once per connection, for the forwarding
/// headers of each of its proxied requests.
pub struct Forwarding {
    ip: String,
    /// The RFC 7239 node: the IP, quoted and bracketed for IPv6.
    node: String,
    proto: &'static str,
}

impl Forwarding {
    pub fn new(peer: SocketAddr, proto: &'static str) -> Self {
        let ip = peer.ip().to_string();
        let node = if peer.is_ipv6() {
            format!("\"[{ip}]\"")
        } else {
            ip.clone()
        };
        Self { ip, node, proto }
    }

    /// Writes a request's `headers` for the instance as HTTP/1 header lines: hop-by-hop ones
    /// dropped (with `upgrade`: `Upgrade` kept and `Connection: upgrade` set), `Expect`
    /// dropped (the front door answers it), `Content-Length` left to the caller (it writes
    /// the body's framing itself), and the forwarding headers added:
    /// `X-Forwarded-For` (appended to the client's chain), `X-Forwarded-Proto`,
    /// `X-Forwarded-Host` (the raw `Host`) and `Forwarded` (appended to any prior elements).
    /// `headers` gives the (name, value) pairs, in any case: a `HeaderMap`'s or a raw head's.
    /// `host`, when given, replaces the client's `Host` (the forwarding headers keep the
    /// client's): a fleet's hop to the server that owns a name.
    pub fn write_headers<'a, I>(
        &self,
        headers: impl Fn() -> I,
        upgrade: bool,
        host: Option<&[u8]>,
        out: &mut Vec<u8>,
    ) where
        I: Iterator<Item = (&'a str, &'a [u8])>,
    {
        let named = |want: &'static str| {
            headers()
                .filter(move |(name, _)| name.eq_ignore_ascii_case(want))
                .map(|(_, value)| value)
        };
        let connection: Vec<&[u8]> = named("connection").collect();
        for (name, value) in headers() {
            let replaced = REPLACED.iter().any(|r| r.eq_ignore_ascii_case(name))
                || (host.is_some() && name.eq_ignore_ascii_case("host"));
            if !replaced && !hop_by_hop(name, &connection, upgrade) {
                line(out, name, value);
            }
        }
        if let Some(host) = host {
            line(out, "host", host);
        }
        out.extend_from_slice(b"x-forwarded-for: ");
        for prior in named("x-forwarded-for") {
            out.extend_from_slice(prior);
            out.extend_from_slice(b", ");
        }
        out.extend_from_slice(self.ip.as_bytes());
        out.extend_from_slice(b"\r\n");
        line(out, "x-forwarded-proto", self.proto.as_bytes());
        let host = named("host").next();
        if let Some(host) = host {
            line(out, "x-forwarded-host", host);
        }
        out.extend_from_slice(b"forwarded: ");
        for prior in named("forwarded") {
            out.extend_from_slice(prior);
            out.extend_from_slice(b", ");
        }
        out.extend_from_slice(b"for=");
        out.extend_from_slice(self.node.as_bytes());
        if let Some(host) = host {
            out.extend_from_slice(b";host=\"");
            out.extend(host.iter().filter(|b| !matches!(b, b'"' | b'\\')));
            out.push(b'"');
        }
        out.extend_from_slice(b";proto=");
        out.extend_from_slice(self.proto.as_bytes());
        out.extend_from_slice(b"\r\n");
        if upgrade {
            line(out, "connection", b"upgrade");
        }
    }
}

/// Request headers not copied to the instance: replaced by the forwarding headers, answered
/// by the front door (`Expect`), or written from the body's framing (`Content-Length`).
const REPLACED: [&str; 6] = [
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "forwarded",
    "expect",
    "content-length",
];

/// A `HeaderMap` as the (name, value) pairs [`Forwarding::write_headers`] takes.
pub fn pairs(headers: &HeaderMap) -> impl Iterator<Item = (&str, &[u8])> {
    headers
        .iter()
        .map(|(name, value)| (name.as_str(), value.as_bytes()))
}

/// One `name: value` header line, the name in lower case (as hyper writes them, so an app or
/// client sees the same spelling whichever path a request took).
pub fn line(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend(name.bytes().map(|b| b.to_ascii_lowercase()));
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Whether the request asks to switch protocols (websockets).
pub fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
}

/// The first transfer coding of a request other than `chunked`: the proxy would drop it, so
/// the app would read a body coded in a way it was not told of (RFC 9112 §6.1: 501).
pub fn unsupported_coding(headers: &hyper::HeaderMap) -> Option<String> {
    headers
        .get_all(hyper::header::TRANSFER_ENCODING)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .map(|c| String::from_utf8_lossy(c.trim_ascii()).into_owned())
        .find(|c| !c.is_empty() && !c.eq_ignore_ascii_case("chunked"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    /// The header lines `write_headers` produces, as (name, value) pairs in order.
    fn written(f: &Forwarding, h: &HeaderMap, upgrade: bool) -> Vec<(String, String)> {
        let mut out = Vec::new();
        f.write_headers(|| pairs(h), upgrade, None, &mut out);
        String::from_utf8(out)
            .unwrap()
            .split_terminator("\r\n")
            .map(|l| {
                let (n, v) = l.split_once(": ").unwrap();
                (n.to_string(), v.to_string())
            })
            .collect()
    }

    fn get<'a>(lines: &'a [(String, String)], name: &str) -> Vec<&'a str> {
        lines
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    #[test]
    fn hop_by_hop_removed_and_forwarding_added() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, X-Secret"),
        );
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("te", HeaderValue::from_static("trailers"));
        h.insert("expect", HeaderValue::from_static("100-continue"));
        h.insert("upgrade", HeaderValue::from_static("h2c"));
        h.insert("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        h.insert("x-forwarded-host", HeaderValue::from_static("spoofed"));
        h.append("x-keep", HeaderValue::from_static("yes"));
        h.append("x-keep", HeaderValue::from_static("twice"));
        h.insert("host", HeaderValue::from_static("prod.api.example.com"));
        let lines = written(
            &Forwarding::new("192.0.2.7:5555".parse().unwrap(), "http"),
            &h,
            false,
        );
        for gone in [
            "connection",
            "keep-alive",
            "x-secret",
            "te",
            "expect",
            "upgrade",
        ] {
            assert!(get(&lines, gone).is_empty(), "{gone} forwarded");
        }
        assert_eq!(get(&lines, "x-keep"), ["yes", "twice"]);
        assert_eq!(get(&lines, "host"), ["prod.api.example.com"]);
        assert_eq!(get(&lines, "x-forwarded-for"), ["10.0.0.1, 192.0.2.7"]);
        assert_eq!(get(&lines, "x-forwarded-proto"), ["http"]);
        assert_eq!(get(&lines, "x-forwarded-host"), ["prod.api.example.com"]);
        assert_eq!(
            get(&lines, "forwarded"),
            ["for=192.0.2.7;host=\"prod.api.example.com\";proto=http"]
        );
    }

    #[test]
    fn a_second_hop_appends_and_quotes_ipv6() {
        let mut h = HeaderMap::new();
        h.insert("host", HeaderValue::from_static("a.api.example.com"));
        h.insert("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        h.append("x-forwarded-for", HeaderValue::from_static("192.0.2.7"));
        h.insert(
            "forwarded",
            HeaderValue::from_static("for=192.0.2.7;proto=http"),
        );
        let lines = written(
            &Forwarding::new("[2001:db8::1]:443".parse().unwrap(), "https"),
            &h,
            false,
        );
        assert_eq!(
            get(&lines, "x-forwarded-for"),
            ["10.0.0.1, 192.0.2.7, 2001:db8::1"]
        );
        assert_eq!(
            get(&lines, "forwarded"),
            [
                "for=192.0.2.7;proto=http, for=\"[2001:db8::1]\";host=\"a.api.example.com\";proto=https"
            ]
        );
    }

    #[test]
    fn a_host_of_the_lease_replaces_the_clients_but_not_in_the_forwarding_headers() {
        let mut h = HeaderMap::new();
        h.insert("host", HeaderValue::from_static("shop.customer.org"));
        let f = Forwarding::new("192.0.2.7:1".parse().unwrap(), "http");
        let mut out = Vec::new();
        f.write_headers(
            || pairs(&h),
            false,
            Some(b"prod.api.east.example.com"),
            &mut out,
        );
        let text = String::from_utf8(out).unwrap();
        let hosts: Vec<_> = text.lines().filter(|l| l.starts_with("host:")).collect();
        assert_eq!(hosts, ["host: prod.api.east.example.com"]);
        assert!(text.contains("x-forwarded-host: shop.customer.org\r\n"));
        assert!(text.contains("for=192.0.2.7;host=\"shop.customer.org\";proto=http"));
    }

    #[test]
    fn upgrade_keeps_upgrade() {
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("Upgrade"));
        h.insert("upgrade", HeaderValue::from_static("websocket"));
        assert!(wants_upgrade(&h));
        let lines = written(
            &Forwarding::new("192.0.2.7:1".parse().unwrap(), "http"),
            &h,
            true,
        );
        assert_eq!(get(&lines, "upgrade"), ["websocket"]);
        assert_eq!(get(&lines, "connection"), ["upgrade"]);
        let mut plain = HeaderMap::new();
        plain.insert("upgrade", HeaderValue::from_static("h2c"));
        assert!(!wants_upgrade(&plain));
    }

    #[test]
    fn connection_named_headers_are_hop_by_hop() {
        let conn: [&[u8]; 2] = [b"close", b" X-Trace , keep-alive"];
        assert!(hop_by_hop("x-trace", &conn, false));
        assert!(hop_by_hop("Transfer-Encoding", &[], false));
        assert!(!hop_by_hop("content-length", &conn, false));
        assert!(hop_by_hop("upgrade", &[], false) && !hop_by_hop("upgrade", &[], true));
        // Smuggling: a Connection token must not strip the message's framing or its Host.
        let sly: [&[u8]; 1] = [b"content-length, host"];
        assert!(!hop_by_hop("content-length", &sly, false) && !hop_by_hop("Host", &sly, false));
    }
}
