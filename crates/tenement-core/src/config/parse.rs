//! From TOML text to a validated [`Config`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use toml_span::Span;

use super::error::{ConfigError, ConfigErrors, line_col};
use super::routing::{instances, routing};
use super::service::service;
use super::socket;
use super::template::Template;
use super::walk::{Ctx, Fields};
use super::{Config, Routing, Sandbox, Settings, Slum, Tls};
use crate::{InstanceKey, ServiceName};

pub(super) type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

const TOP: &[&str] = &["settings", "service", "process", "instances", "routing"];
const SETTINGS: &[&str] = &[
    "data_dir",
    "health_check_interval",
    "max_restarts",
    "restart_window",
    "backoff_base_ms",
    "backoff_max_ms",
    "max_body_mb",
    "max_header_kb",
    "header_timeout",
    "upstream_timeout",
    "tls",
    "sandbox",
    "allow_unlimited",
    "log_retention_days",
    "log_max_mb",
    "metrics_auth",
    "max_connections",
    "max_connections_per_ip",
    "adopt_timeout",
    "fast_path",
    "slum",
];
const SLUM: &[&str] = &["url", "token", "id", "advertise", "memory_mb"];
const SANDBOX: &[&str] = &["runsc", "platform", "network"];
const TLS: &[&str] = &[
    "enabled",
    "acme_email",
    "domain",
    "cache_dir",
    "staging",
    "https_port",
    "http_port",
    "dns_provider",
    "directory_url",
    "ca_root",
    "challenge",
    "max_certificates_per_week",
    "rfc2136",
];
const RFC2136: &[&str] = &["server", "zone", "key_name", "key_secret"];
pub(super) const DAY: i64 = 86_400;

pub(super) fn parse(src: &str, file: &Path, env: Env<'_>) -> Result<Config, ConfigErrors> {
    let root = toml_span::parse(src).map_err(|e| {
        let (line, column) = match e.line_info {
            Some((l, c)) => (l + 1, c + 1),
            None => line_col(src, e.span.start),
        };
        ConfigErrors(vec![ConfigError {
            file: file.to_path_buf(),
            line,
            column,
            field: String::new(),
            message: format!("TOML syntax error: {e}"),
        }])
    })?;
    let mut ctx = Ctx {
        src,
        file,
        errors: Vec::new(),
    };
    let base = file.parent().unwrap_or(Path::new(".")).to_path_buf();
    let mut top = Fields::open(&mut ctx, "", root).expect("a TOML document is a table");

    let settings = match top.table(&mut ctx, "settings") {
        Some(f) => settings(&mut ctx, f, &base, env),
        None => Settings::defaults(),
    };
    let mut services = BTreeMap::new();
    let mut spans = BTreeMap::new();
    let mut socket_spans = BTreeMap::new();
    for section in ["service", "process"] {
        let Some(mut table) = top.table(&mut ctx, section) else {
            continue;
        };
        for (name, span, value) in table.drain() {
            let field = format!("{section}.{name}");
            let name: ServiceName = match name.parse() {
                Ok(n) => n,
                Err(e) => {
                    ctx.error(span, &field, e.to_string());
                    continue;
                }
            };
            if spans.contains_key(&name) {
                ctx.error(
                    span,
                    &field,
                    format!("service `{name}` is defined in both [service] and [process]"),
                );
                continue;
            }
            spans.insert(name.clone(), span);
            let Some(fields) = Fields::open(&mut ctx, &field, value) else {
                continue;
            };
            if let Some((svc, socket_span)) = service(&mut ctx, fields, &base, env) {
                socket_spans.insert(name.clone(), socket_span.unwrap_or(span));
                services.insert(name, svc);
            }
        }
    }
    sockets_apart(&mut ctx, &services, &socket_spans, &settings);
    cache_apart(&mut ctx, &services, &spans, &settings);
    let instances = match top.take("instances") {
        Some(v) => instances(&mut ctx, v, &spans),
        None => Vec::new(),
    };
    let routing = match top.table(&mut ctx, "routing") {
        Some(f) => routing(&mut ctx, f, &spans),
        None => Routing::default(),
    };
    top.finish(&mut ctx, TOP);

    if !ctx.errors.is_empty() {
        ctx.errors.sort_by_key(|e| (e.line, e.column));
        return Err(ConfigErrors(ctx.errors));
    }
    Ok(Config {
        file: file.to_path_buf(),
        settings,
        services,
        instances,
        routing,
    })
}

/// `[settings.tls] cache_dir` inside a service's data (`{data_dir}/{service}`, whose instance
/// directories belong to the tenants: a service `acme` with an instance `certs` would own the
/// directory of every certificate and key): an error on that service.
fn cache_apart(
    ctx: &mut Ctx<'_>,
    services: &BTreeMap<ServiceName, super::Service>,
    spans: &BTreeMap<ServiceName, Span>,
    settings: &Settings,
) {
    if !settings.tls.enabled {
        return;
    }
    if let Some((name, msg)) = super::cache_in_service(settings, services.keys()) {
        let span = spans.get(name).copied().unwrap_or_default();
        ctx.error(span, &format!("service.{name}"), msg);
    }
}

/// Two services whose socket templates can resolve to one path (`shop:eu-a` and `shop-eu:a`
/// under `/s/{name}-{id}.sock`): an error on the later one, naming the two instances.
fn sockets_apart(
    ctx: &mut Ctx<'_>,
    services: &BTreeMap<ServiceName, super::Service>,
    spans: &BTreeMap<ServiceName, Span>,
    settings: &Settings,
) {
    let data_dir = settings.data_dir.to_string_lossy();
    let split: Vec<_> = services
        .iter()
        .filter(|(_, s)| s.listen == super::Listen::Unix && socket::check(&s.socket).is_ok())
        .map(|(n, s)| (n, socket::split(&s.socket, n.as_str(), &data_dir)))
        .collect();
    for (i, (a, (pa, sa))) in split.iter().enumerate() {
        for (b, (pb, sb)) in &split[i + 1..] {
            if let Some((x, y)) = socket::collision((pa, sa), (pb, sb)) {
                let span = spans.get(*b).copied().unwrap_or_default();
                ctx.error(
                    span,
                    &format!("service.{b}.socket"),
                    format!(
                        "{a}:{x} and {b}:{y} would share the socket {pa}{x}{sa}: put {{name}} in a directory of its own (\"/run/x/{{name}}/{{id}}.sock\") or use the default"
                    ),
                );
            }
        }
    }
}

pub(super) fn resolve(base: &Path, p: &str) -> PathBuf {
    base.join(p)
}

impl Settings {
    fn defaults() -> Self {
        let data_dir = PathBuf::from("/var/lib/tenement");
        Settings {
            tls: Tls::defaults(&data_dir),
            data_dir,
            health_check_interval: 10,
            max_restarts: 3,
            restart_window: 300,
            backoff_base_ms: 1000,
            backoff_max_ms: 60_000,
            max_body_mb: 100,
            max_header_kb: 64,
            header_timeout: 10,
            adopt_timeout: 60,
            upstream_timeout: 60,
            sandbox: Sandbox::default(),
            slum: None,
            allow_unlimited: false,
            log_retention_days: 7,
            log_max_mb: 1024,
            metrics_auth: false,
            fast_path: true,
            max_connections: 0,
            max_connections_per_ip: 256,
        }
    }
}

impl Tls {
    fn defaults(data_dir: &Path) -> Self {
        Tls {
            enabled: false,
            acme_email: None,
            domain: None,
            cache_dir: data_dir.join("acme"),
            staging: false,
            https_port: 443,
            http_port: 80,
            dns_provider: None,
            directory_url: super::LETS_ENCRYPT.into(),
            ca_root: None,
            challenge: "http-01".into(),
            max_certificates_per_week: 40,
            rfc2136: None,
        }
    }
}

fn settings(ctx: &mut Ctx<'_>, mut f: Fields<'_>, base: &Path, env: Env<'_>) -> Settings {
    let mut s = Settings::defaults();
    if let Some((dir, span)) = f.string(ctx, "data_dir") {
        if dir.is_empty() {
            ctx.error(span, "settings.data_dir", "must not be empty");
        }
        s.data_dir = resolve(base, &dir);
    }
    if let Some((n, _)) = f.int(ctx, "health_check_interval", 1, DAY) {
        s.health_check_interval = n as u64;
    }
    if let Some((n, _)) = f.int(ctx, "max_restarts", 0, 1_000_000) {
        s.max_restarts = n as u32;
    }
    if let Some((n, _)) = f.int(ctx, "restart_window", 1, 30 * DAY) {
        s.restart_window = n as u64;
    }
    let base_ms = f.int(ctx, "backoff_base_ms", 1, DAY * 1000);
    let max_ms = f.int(ctx, "backoff_max_ms", 1, DAY * 1000);
    if let Some((n, _)) = base_ms {
        s.backoff_base_ms = n as u64;
    }
    if let Some((n, _)) = max_ms {
        s.backoff_max_ms = n as u64;
    }
    if s.backoff_base_ms > s.backoff_max_ms {
        let span = max_ms.or(base_ms).map(|(_, sp)| sp).unwrap_or(f.span);
        ctx.error(
            span,
            "settings.backoff_max_ms",
            format!(
                "must be at least backoff_base_ms ({} > {})",
                s.backoff_base_ms, s.backoff_max_ms
            ),
        );
    }
    if let Some((n, _)) = f.int(ctx, "max_body_mb", 1, 1 << 20) {
        s.max_body_mb = n as u64;
    }
    if let Some((n, _)) = f.int(ctx, "max_header_kb", 1, 1024) {
        s.max_header_kb = n as u64;
    }
    if let Some((n, _)) = f.int(ctx, "header_timeout", 1, 3600) {
        s.header_timeout = n as u64;
    }
    if let Some((n, _)) = f.int(ctx, "adopt_timeout", 0, DAY) {
        s.adopt_timeout = n as u64;
    }
    if let Some((n, _)) = f.int(ctx, "upstream_timeout", 1, DAY) {
        s.upstream_timeout = n as u64;
    }
    s.allow_unlimited = f.bool(ctx, "allow_unlimited").unwrap_or(false);
    s.metrics_auth = f.bool(ctx, "metrics_auth").unwrap_or(false);
    s.fast_path = f.bool(ctx, "fast_path").unwrap_or(true);
    if let Some((n, _)) = f.int(ctx, "log_retention_days", 1, 3650) {
        s.log_retention_days = n as u64;
    }
    if let Some((n, _)) = f.int(ctx, "log_max_mb", 1, 1 << 30) {
        s.log_max_mb = n as u64;
    }
    if let Some((n, _)) = f.int(ctx, "max_connections", 0, 10_000_000) {
        s.max_connections = n as u32;
    }
    if let Some((n, _)) = f.int(ctx, "max_connections_per_ip", 0, 10_000_000) {
        s.max_connections_per_ip = n as u32;
    }
    if let Some(mut sb) = f.table(ctx, "sandbox") {
        if let Some((runsc, span)) = sb.string(ctx, "runsc") {
            if runsc.trim().is_empty() {
                ctx.error(span, "settings.sandbox.runsc", "must not be empty");
            }
            s.sandbox.runsc = runsc;
        }
        let platforms = [("ptrace", "ptrace"), ("systrap", "systrap"), ("kvm", "kvm")];
        if let Some(p) = sb
            .string(ctx, "platform")
            .and_then(|v| choice(ctx, "settings.sandbox.platform", v, &platforms))
        {
            s.sandbox.platform = p.into();
        }
        let networks = [("none", "none"), ("host", "host")];
        if let Some(n) = sb
            .string(ctx, "network")
            .and_then(|v| choice(ctx, "settings.sandbox.network", v, &networks))
        {
            s.sandbox.network = n.into();
        }
        sb.finish(ctx, SANDBOX);
    }
    s.tls = Tls::defaults(&s.data_dir);
    if let Some(t) = f.table(ctx, "tls") {
        s.tls = tls(ctx, t, base, &s.data_dir);
    }
    if let Some(t) = f.table(ctx, "slum") {
        s.slum = slum(ctx, t, env);
    }
    f.finish(ctx, SETTINGS);
    s
}

fn slum(ctx: &mut Ctx<'_>, mut f: Fields<'_>, env: Env<'_>) -> Option<Slum> {
    let url = match f.string(ctx, "url") {
        Some((url, span)) if !url.starts_with("http://") => {
            let msg = format!("{url:?}: slum's URL must be http://HOST:PORT");
            ctx.error(span, "settings.slum.url", msg);
            None
        }
        other => other.map(|(url, _)| url),
    };
    // `${VAR}`: the token need not be written in the file.
    let token = match f.string(ctx, "token") {
        Some((raw, span)) => match Template::parse(&raw, &[], env) {
            Ok(t) => Some(t.as_str().to_owned()),
            Err(e) => {
                ctx.error(span, "settings.slum.token", e);
                None
            }
        },
        None => None,
    };
    let id = match f.string(ctx, "id") {
        Some((id, span)) if id.parse::<ServiceName>().is_err() => {
            let msg = format!("{id:?} is not a name (lowercase letters, digits, `-`, `_`)");
            ctx.error(span, "settings.slum.id", msg);
            None
        }
        other => other.map(|(id, _)| id),
    };
    let advertise = match f.string(ctx, "advertise") {
        Some((a, span)) if !a.starts_with("http://") => {
            let msg = format!("{a:?}: must be http://HOST:PORT (this server's front door)");
            ctx.error(span, "settings.slum.advertise", msg);
            None
        }
        other => other.map(|(a, _)| a),
    };
    let memory_mb = f.int(ctx, "memory_mb", 1, 1 << 40).map(|(n, _)| n as u64);
    f.finish(ctx, SLUM);
    Some(Slum {
        url,
        token,
        id,
        advertise,
        memory_mb,
    })
}

fn tls(ctx: &mut Ctx<'_>, mut f: Fields<'_>, base: &Path, data_dir: &Path) -> Tls {
    let mut t = Tls::defaults(data_dir);
    t.enabled = f.bool(ctx, "enabled").unwrap_or(false);
    t.acme_email = f.string(ctx, "acme_email").map(|(email, span)| {
        if !email.contains('@') {
            ctx.error(
                span,
                "settings.tls.acme_email",
                format!("{email:?} is not an email address"),
            );
        }
        email
    });
    t.domain = f.string(ctx, "domain").map(|(d, span)| {
        if d.is_empty() || d.contains(['/', ':', ' ']) {
            ctx.error(
                span,
                "settings.tls.domain",
                format!("{d:?} is not a domain name"),
            );
        }
        d.to_ascii_lowercase()
    });
    if let Some((dir, _)) = f.string(ctx, "cache_dir") {
        t.cache_dir = resolve(base, &dir);
    }
    t.staging = f.bool(ctx, "staging").unwrap_or(false);
    let https = f.int(ctx, "https_port", 1, 65535);
    let http = f.int(ctx, "http_port", 1, 65535);
    t.https_port = https.map_or(443, |(n, _)| n as u16);
    t.http_port = http.map_or(80, |(n, _)| n as u16);
    if t.https_port == t.http_port {
        let span = https.or(http).map_or(f.span, |(_, s)| s);
        ctx.error(
            span,
            "settings.tls.https_port",
            "https_port and http_port must differ",
        );
    }
    t.dns_provider = f.string(ctx, "dns_provider").map(|(s, _)| s);
    if t.staging {
        t.directory_url = super::LETS_ENCRYPT_STAGING.into();
    }
    if let Some((url, span)) = f.string(ctx, "directory_url") {
        if !url.starts_with("https://") && !url.starts_with("http://") {
            let msg = format!("{url:?} is not an http(s):// URL");
            ctx.error(span, "settings.tls.directory_url", msg);
        }
        t.directory_url = url;
    }
    t.ca_root = f.string(ctx, "ca_root").map(|(p, _)| resolve(base, &p));
    if let Some((challenge, span)) = f.string(ctx, "challenge") {
        if !["http-01", "tls-alpn-01"].contains(&challenge.as_str()) {
            let msg = format!("{challenge:?}: must be \"http-01\" or \"tls-alpn-01\"");
            ctx.error(span, "settings.tls.challenge", msg);
        }
        t.challenge = challenge;
    }
    if let Some((n, _)) = f.int(ctx, "max_certificates_per_week", 1, 100_000) {
        t.max_certificates_per_week = n as u32;
    }
    if let Some(mut r) = f.table(ctx, "rfc2136") {
        let span = r.span;
        let mut need = |r: &mut Fields<'_>, name: &str| {
            r.string(ctx, name).map(|(v, _)| v).unwrap_or_else(|| {
                ctx.error(span, &format!("settings.tls.rfc2136.{name}"), "required");
                String::new()
            })
        };
        let server = need(&mut r, "server");
        let key_name = need(&mut r, "key_name");
        let key_secret = need(&mut r, "key_secret");
        let zone = r.string(ctx, "zone").map(|(z, _)| z);
        if !server.is_empty() && server.parse::<std::net::SocketAddr>().is_err() {
            let msg = format!("{server:?} is not an address:port (e.g. \"127.0.0.1:53\")");
            ctx.error(span, "settings.tls.rfc2136.server", msg);
        }
        r.finish(ctx, RFC2136);
        t.rfc2136 = Some(super::Rfc2136 {
            server,
            zone,
            key_name,
            key_secret,
        });
    }
    if t.dns_provider.as_deref() == Some("rfc2136") && t.rfc2136.is_none() {
        let msg = "dns_provider = \"rfc2136\" needs a [settings.tls.rfc2136] table (server, key_name, key_secret)";
        ctx.error(f.span, "settings.tls.rfc2136", msg);
    }
    if t.enabled {
        if t.acme_email.is_none() {
            ctx.error(
                f.span,
                "settings.tls.acme_email",
                "required when TLS is enabled",
            );
        }
        if t.domain.is_none() {
            ctx.error(
                f.span,
                "settings.tls.domain",
                "required when TLS is enabled",
            );
        }
    }
    f.finish(ctx, TLS);
    t
}

pub(super) fn template(
    ctx: &mut Ctx<'_>,
    field: &str,
    (raw, span): (String, Span),
    allowed: &[&str],
    env: Env<'_>,
) -> Option<Template> {
    Template::parse(&raw, allowed, env)
        .map_err(|e| ctx.error(span, field, e))
        .ok()
}

pub(super) fn choice<T: Copy>(
    ctx: &mut Ctx<'_>,
    field: &str,
    (raw, span): (String, Span),
    options: &[(&str, T)],
) -> Option<T> {
    match options.iter().find(|(name, _)| *name == raw) {
        Some((_, v)) => Some(*v),
        None => {
            let names: Vec<_> = options.iter().map(|(n, _)| format!("{n:?}")).collect();
            ctx.error(
                span,
                field,
                format!("expected one of {}, found {raw:?}", names.join(", ")),
            );
            None
        }
    }
}

/// Serializes `[instances]` back into its `service = ["id", ...]` form.
pub(super) fn instances_as_map<S: serde::Serializer>(
    keys: &[InstanceKey],
    s: S,
) -> Result<S::Ok, S::Error> {
    let mut map: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for k in keys {
        map.entry(k.service.as_str())
            .or_default()
            .push(k.id.as_str());
    }
    serde::Serialize::serialize(&map, s)
}
