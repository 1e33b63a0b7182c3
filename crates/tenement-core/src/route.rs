//! Where a request goes, from its raw `Host` header and path alone (never `X-Forwarded-Host`).
//!
//! - `{id}.{service}.{domain}` → that instance;
//! - `{label}.{domain}` → the service `[routing.subdomain]` maps `label` to, else the service
//!   named `label`, chosen among its instances by weight;
//! - `{domain}`, or any Host not below it (an IP address, `localhost`) → tenement itself for
//!   [`OWN_PATHS`] (health, metrics, the API's endpoints); otherwise the longest matching
//!   `[routing.path]` prefix, else `[routing] default`, else tenement itself (the dashboard).
//!
//! Port suffix, upper case and a trailing dot are normalised; anything else that is not a
//! hostname is malformed.

use std::borrow::Cow;
use std::collections::BTreeMap;

use crate::config::Routing;
use crate::{InstanceId, InstanceKey, ServiceName};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// tenement's own endpoints and dashboard.
    Building,
    /// One instance.
    Instance(InstanceKey),
    /// Any instance of a service, by weight.
    Service(ServiceName),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("malformed Host header: {0}")]
    BadHost(&'static str),
    #[error("no such host here: {0}")]
    UnknownHost(String),
    #[error("no service `{0}` here")]
    UnknownService(String),
}

/// Paths on the bare domain that always belong to tenement: health, metrics and the
/// management API's endpoints (kept in step with `tenement-edge/src/api.rs`). Other `/api…`
/// paths are free for `[routing.path]` rules and `[routing] default`.
pub const OWN_PATHS: [&str; 14] = [
    "/health",
    "/metrics",
    "/api/instances",
    "/api/logs",
    "/api/route",
    "/api/deploy",
    "/api/health",
    "/api/config",
    "/api/reload",
    "/api/upgrade",
    "/api/tls",
    "/api/domains",
    "/api/tokens",
    "/api/openapi.json",
];

pub struct Router {
    domain: String,
    routing: Routing,
    /// The services, by name (looked up by a Host label without parsing it first).
    services: BTreeMap<String, ServiceName>,
}

impl Router {
    pub fn new(
        domain: &str,
        routing: Routing,
        services: impl IntoIterator<Item = ServiceName>,
    ) -> Self {
        Self {
            domain: domain.trim_end_matches('.').to_ascii_lowercase(),
            routing,
            services: services
                .into_iter()
                .map(|s| (s.as_str().to_owned(), s))
                .collect(),
        }
    }

    pub fn domain(&self) -> &str {
        &self.domain
    }

    pub fn route(&self, host: Option<&str>, path: &str) -> Result<Target, RouteError> {
        let host = normalize(host.ok_or(RouteError::BadHost("missing"))?)?;
        let Some(sub) = host
            .strip_suffix(&self.domain)
            .and_then(|s| s.strip_suffix('.'))
        else {
            // Not below the domain: the domain itself, an IP address, `localhost`, the
            // machine's own name: all reach tenement (and the bare-domain rules).
            return Ok(self.bare(path));
        };
        let mut labels = sub.split('.');
        match (labels.next(), labels.next(), labels.next()) {
            (Some(label), None, _) => {
                if let Some(service) = self.routing.subdomain.get(label) {
                    return Ok(Target::Service(service.clone()));
                }
                self.service(label).map(Target::Service)
            }
            (Some(id), Some(service), None) => {
                let service = self.service(service)?;
                let id: InstanceId = id
                    .parse()
                    .map_err(|_| RouteError::UnknownHost(host.to_string()))?;
                Ok(Target::Instance(InstanceKey::new(service, id)))
            }
            _ => Err(RouteError::UnknownHost(host.into_owned())),
        }
    }

    fn service(&self, label: &str) -> Result<ServiceName, RouteError> {
        self.services
            .get(label)
            .cloned()
            .ok_or_else(|| RouteError::UnknownService(label.to_owned()))
    }

    /// Where a request for the bare domain goes (also an HTTP/1.0 request without `Host`,
    /// which that version allows).
    pub fn bare(&self, path: &str) -> Target {
        if OWN_PATHS.iter().any(|p| under(path, p)) {
            return Target::Building;
        }
        let by_path = self
            .routing
            .path
            .iter()
            .filter(|(prefix, _)| under(path, prefix))
            .max_by_key(|(prefix, _)| prefix.len());
        match (by_path, &self.routing.default) {
            (Some((_, service)), _) | (None, Some(service)) => Target::Service(service.clone()),
            (None, None) => Target::Building,
        }
    }
}

/// Whether `path` is `prefix` or below it (`/api` matches `/api`, `/api/x`, `/api?q`, not `/apix`).
fn under(path: &str, prefix: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    if prefix.is_empty() {
        return true;
    }
    path.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with(['/', '?']))
}

/// The `--domain` of `ten serve`: a host name as a Host header carries it (no port), lowercased.
pub fn parse_domain(raw: &str) -> Result<String, String> {
    match normalize(raw) {
        Ok(domain) if !raw.contains([':', '[']) => Ok(domain.into_owned()),
        _ => Err(format!(
            "`{raw}` is not a domain name (labels of letters, digits and '-', joined by dots)"
        )),
    }
}

/// Lowercase, no port, no trailing dot; every label a valid DNS label. (Borrowed unless it had
/// to be lowercased: this runs for every request.)
fn normalize(raw: &str) -> Result<Cow<'_, str>, RouteError> {
    let raw = raw.trim();
    if raw.is_empty() {
        return Err(RouteError::BadHost("empty"));
    }
    // [v6]:port or [v6]
    if let Some(rest) = raw.strip_prefix('[') {
        let (ip, after) = rest
            .split_once(']')
            .ok_or(RouteError::BadHost("unclosed ["))?;
        if !(after.is_empty() || after.strip_prefix(':').is_some_and(valid_port)) {
            return Err(RouteError::BadHost("bad port"));
        }
        return ip
            .parse::<std::net::Ipv6Addr>()
            .map(|ip| Cow::Owned(ip.to_string()))
            .map_err(|_| RouteError::BadHost("bad IPv6 address"));
    }
    let host = match raw.rsplit_once(':') {
        Some((h, port)) if valid_port(port) => h,
        Some(_) => return Err(RouteError::BadHost("bad port")),
        None => raw,
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.is_empty() || host.len() > 253 {
        return Err(RouteError::BadHost("bad length"));
    }
    // One pass: labels of letters, digits and '-', 1 to 63 long, no '-' at either end.
    let bytes = host.as_bytes();
    let (mut start, mut upper) = (0, false);
    for i in 0..=bytes.len() {
        match bytes.get(i) {
            None | Some(b'.') => {
                let label = &bytes[start..i];
                if label.is_empty()
                    || label.len() > 63
                    || label[0] == b'-'
                    || label[label.len() - 1] == b'-'
                {
                    return Err(RouteError::BadHost("not a hostname"));
                }
                start = i + 1;
            }
            Some(b) if b.is_ascii_alphanumeric() || *b == b'-' => {
                upper |= b.is_ascii_uppercase();
            }
            Some(_) => return Err(RouteError::BadHost("not a hostname")),
        }
    }
    Ok(if upper {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    })
}

/// A Host header's port: digits, or none at all (RFC 3986 allows `host:`).
fn valid_port(p: &str) -> bool {
    p.is_empty()
        || (p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()) && p.parse::<u16>().is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(s: &str) -> ServiceName {
        s.parse().unwrap()
    }

    fn router(with_rules: bool) -> Router {
        let mut routing = Routing::default();
        if with_rules {
            routing.default = Some(svc("web"));
            routing.subdomain.insert("admin".into(), svc("backoffice"));
            routing.path.insert("/docs".into(), svc("docs"));
            routing.path.insert("/docs/v2".into(), svc("api"));
            routing.path.insert("/api".into(), svc("api"));
        }
        Router::new(
            "example.com",
            routing,
            ["api", "web", "docs", "backoffice"].map(svc),
        )
    }

    fn inst(s: &str, i: &str) -> Target {
        Target::Instance(InstanceKey::new(svc(s), i.parse().unwrap()))
    }

    #[test]
    fn default_routing() {
        let r = router(false);
        use Target::*;
        let table: Vec<(&str, &str, Target)> = vec![
            ("prod.api.example.com", "/", inst("api", "prod")),
            ("PROD.Api.Example.COM", "/x", inst("api", "prod")),
            ("prod.api.example.com:8080", "/", inst("api", "prod")),
            ("prod.api.example.com:", "/", inst("api", "prod")),
            ("[::1]:", "/", Building),
            ("prod.api.example.com.", "/", inst("api", "prod")),
            ("prod.api.example.com.:443", "/", inst("api", "prod")),
            ("api.example.com", "/", Service(svc("api"))),
            ("example.com", "/", Building),
            ("example.com", "/api/instances", Building),
            ("example.com", "/api/anything", Building),
            ("example.com:8080", "/health", Building),
            ("127.0.0.1:8080", "/", Building),
            ("[::1]:8080", "/health", Building),
            ("localhost:8080", "/api/instances", Building),
            ("other.org", "/metrics", Building),
            ("example.com.evil.org", "/", Building),
            ("xexample.com", "/", Building),
        ];
        for (host, path, want) in table {
            assert_eq!(r.route(Some(host), path), Ok(want), "{host} {path}");
        }
    }

    #[test]
    fn configured_rules() {
        let r = router(true);
        use Target::*;
        let table: Vec<(&str, &str, Target)> = vec![
            ("example.com", "/", Service(svc("web"))),
            ("example.com", "/anything", Service(svc("web"))),
            ("example.com", "/docs", Service(svc("docs"))),
            ("example.com", "/docs/intro", Service(svc("docs"))),
            ("example.com", "/docs?q=1", Service(svc("docs"))),
            ("example.com", "/docsx", Service(svc("web"))),
            ("example.com", "/docs/v2/x", Service(svc("api"))),
            ("example.com", "/api/instances", Building),
            ("example.com", "/api/instances/api:prod/logs", Building),
            ("example.com", "/health", Building),
            ("example.com", "/metrics", Building),
            // The spec's own example: `"/api" = ...` takes every /api path but tenement's.
            ("example.com", "/api/users", Service(svc("api"))),
            ("example.com", "/api", Service(svc("api"))),
            ("localhost", "/docs", Service(svc("docs"))),
            ("admin.example.com", "/", Service(svc("backoffice"))),
            ("prod.api.example.com", "/docs", inst("api", "prod")),
        ];
        for (host, path, want) in table {
            assert_eq!(r.route(Some(host), path), Ok(want), "{host} {path}");
        }
    }

    #[test]
    fn domains() {
        assert_eq!(parse_domain("Example.COM."), Ok("example.com".into()));
        assert_eq!(parse_domain("localhost"), Ok("localhost".into()));
        for bad in [
            "bad domain!",
            "",
            "example.com:8080",
            "[::1]",
            "a..b",
            "-a.b",
        ] {
            assert!(parse_domain(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn refused() {
        let r = router(false);
        let bad = [
            None,
            Some(""),
            Some(" "),
            Some("exa mple.com"),
            Some("example.com:80:80"),
            Some("example.com:99999"),
            Some("example.com:x"),
            Some("a..example.com"),
            Some("-a.example.com"),
            Some("a_b.example.com"),
            Some("../etc.example.com"),
            Some("[::1"),
            Some("ex\u{e9}mple.com"),
        ];
        for host in bad {
            assert!(
                matches!(r.route(host, "/"), Err(RouteError::BadHost(_))),
                "{host:?}"
            );
        }
        let not_found = [
            ("nope.example.com", "unknown service"),
            ("prod.nope.example.com", "unknown service"),
            ("a.b.api.example.com", "unknown host"),
        ];
        for (host, _) in not_found {
            let got = r.route(Some(host), "/");
            assert!(
                matches!(
                    got,
                    Err(RouteError::UnknownHost(_) | RouteError::UnknownService(_))
                ),
                "{host}: {got:?}"
            );
        }
    }
}
