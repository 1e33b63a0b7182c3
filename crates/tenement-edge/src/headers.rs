//! Request and response header rewriting for the reverse proxy (RFC 9110 §7.6.1, RFC 7239).

use std::net::SocketAddr;
use std::sync::Mutex;

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

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Where a client connection comes from, prepared once per connection: adds
/// `X-Forwarded-For` (appended to any existing chain), `X-Forwarded-Proto`,
/// `X-Forwarded-Host` and `Forwarded` (RFC 7239) to each of its proxied requests.
pub struct Forwarding {
    ip: HeaderValue,
    node: String,
    proto: &'static str,
    /// This connection's `Forwarded` element for the last Host it sent (requests on one
    /// connection nearly always carry the same Host): (host, element).
    last: Mutex<Option<(HeaderValue, HeaderValue)>>,
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
            last: Mutex::new(None),
        }
    }

    /// Adds the forwarding headers; the host is the `Host` header the client sent.
    pub fn apply(&self, headers: &mut HeaderMap) {
        headers.reserve(4);
        let host = headers.get(header::HOST).cloned();
        let xff = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
            Some(prior) => {
                let ip = self.ip.to_str().unwrap_or_default();
                HeaderValue::from_str(&format!("{prior}, {ip}")).ok()
            }
            None => Some(self.ip.clone()),
        };
        if let Some(xff) = xff {
            headers.insert(X_FORWARDED_FOR.clone(), xff);
        }
        headers.insert(
            X_FORWARDED_PROTO.clone(),
            HeaderValue::from_static(self.proto),
        );
        let element = self.element(host.as_ref());
        if let Some(host) = host {
            headers.insert(X_FORWARDED_HOST.clone(), host);
        }
        let joined = match headers.get(header::FORWARDED).map(HeaderValue::as_bytes) {
            Some(prior) => {
                HeaderValue::from_bytes(&[prior, b", ", element.as_bytes()].concat()).ok()
            }
            None => Some(element),
        };
        if let Some(v) = joined {
            headers.insert(header::FORWARDED, v);
        }
    }

    /// `for=...;host="...";proto=...` for `host`, remembered for the next request.
    fn element(&self, host: Option<&HeaderValue>) -> HeaderValue {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((seen, element)) = last.as_ref()
            && Some(seen) == host
        {
            return element.clone();
        }
        let mut element = format!("for={}", self.node);
        if let Some(h) = host.and_then(|h| h.to_str().ok()) {
            element.push_str(";host=\"");
            element.extend(h.chars().filter(|c| !matches!(c, '"' | '\\')));
            element.push('"');
        }
        element.push_str(";proto=");
        element.push_str(self.proto);
        let element = HeaderValue::from_str(&element).expect("built from valid header text");
        if let Some(h) = host {
            *last = Some((h.clone(), element.clone()));
        }
        element
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
    fn each_request_gets_its_own_host_on_a_shared_connection() {
        let f = Forwarding::new("192.0.2.7:5555".parse().unwrap(), "http");
        for host in [
            "a.api.example.com",
            "a.api.example.com",
            "b.api.example.com",
        ] {
            let mut h = HeaderMap::new();
            h.insert("host", HeaderValue::from_static(host));
            f.apply(&mut h);
            assert_eq!(h["x-forwarded-host"], host);
            assert_eq!(
                h["forwarded"],
                format!("for=192.0.2.7;host=\"{host}\";proto=http").as_str()
            );
        }
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
