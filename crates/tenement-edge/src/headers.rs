//! Request and response header rewriting for the reverse proxy (RFC 9110 §7.6.1, RFC 7239).

use std::net::SocketAddr;

use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};

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

/// Removes hop-by-hop headers, including those the `Connection` header names. With `upgrade`,
/// keeps `Upgrade` and sets `Connection: upgrade` so the protocol switch reaches the other end.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    // One pass over the names present (usually a handful) instead of a lookup per hop-by-hop
    // name: this runs twice per proxied request.
    let mut doomed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .filter(|name| !(upgrade && name == header::UPGRADE))
        .collect();
    doomed.extend(
        headers
            .keys()
            .filter(|name| HOP_BY_HOP.contains(&name.as_str()))
            .cloned(),
    );
    for name in doomed {
        headers.remove(name);
    }
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(header::UPGRADE);
    }
}

/// Where a client connection comes from, prepared once per connection: adds
/// `X-Forwarded-For` (appended to any existing chain), `X-Forwarded-Proto`,
/// `X-Forwarded-Host` and `Forwarded` (RFC 7239) to each of its proxied requests.
pub struct Forwarding {
    ip: HeaderValue,
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
        Self {
            ip: HeaderValue::from_str(&ip).expect("an IP address is a valid header value"),
            node,
            proto,
        }
    }

    /// Adds the forwarding headers; the host is the `Host` header the client sent.
    pub fn apply(&self, headers: &mut HeaderMap) {
        let host = headers.get(header::HOST).cloned();
        let xff = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
            Some(prior) => {
                let ip = self.ip.to_str().unwrap_or_default();
                HeaderValue::from_str(&format!("{prior}, {ip}")).ok()
            }
            None => Some(self.ip.clone()),
        };
        if let Some(xff) = xff {
            headers.insert("x-forwarded-for", xff);
        }
        headers.insert("x-forwarded-proto", HeaderValue::from_static(self.proto));
        let mut forwarded = format!("for={}", self.node);
        if let Some(host) = host.as_ref().and_then(|h| h.to_str().ok()) {
            forwarded.push_str(";host=\"");
            forwarded.extend(host.chars().filter(|c| !matches!(c, '"' | '\\')));
            forwarded.push('"');
        }
        forwarded.push_str(";proto=");
        forwarded.push_str(self.proto);
        if let Some(host) = host {
            headers.insert("x-forwarded-host", host);
        }
        let joined = match headers.get(header::FORWARDED).and_then(|v| v.to_str().ok()) {
            Some(prior) => format!("{prior}, {forwarded}"),
            None => forwarded,
        };
        if let Ok(v) = HeaderValue::from_str(&joined) {
            headers.insert(header::FORWARDED, v);
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_removed_and_forwarding_added() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("te", HeaderValue::from_static("trailers"));
        h.insert("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        h.insert("x-keep", HeaderValue::from_static("yes"));
        h.insert("host", HeaderValue::from_static("prod.api.example.com"));
        strip_hop_by_hop(&mut h, false);
        Forwarding::new("192.0.2.7:5555".parse().unwrap(), "http").apply(&mut h);
        assert!(h.get("connection").is_none() && h.get("keep-alive").is_none());
        assert!(h.get("x-secret").is_none() && h.get("te").is_none());
        assert_eq!(h["x-keep"], "yes");
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 192.0.2.7");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "prod.api.example.com");
        assert_eq!(
            h["forwarded"],
            "for=192.0.2.7;host=\"prod.api.example.com\";proto=http"
        );
        // A second proxy hop appends; IPv6 nodes are quoted and bracketed.
        Forwarding::new("[2001:db8::1]:443".parse().unwrap(), "https").apply(&mut h);
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 192.0.2.7, 2001:db8::1");
        assert_eq!(
            h["forwarded"],
            "for=192.0.2.7;host=\"prod.api.example.com\";proto=http, for=\"[2001:db8::1]\";host=\"prod.api.example.com\";proto=https"
        );
    }

    #[test]
    fn upgrade_keeps_upgrade() {
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("Upgrade"));
        h.insert("upgrade", HeaderValue::from_static("websocket"));
        assert!(wants_upgrade(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["connection"], "upgrade");
        let mut plain = HeaderMap::new();
        plain.insert("upgrade", HeaderValue::from_static("h2c"));
        assert!(!wants_upgrade(&plain));
    }
}
