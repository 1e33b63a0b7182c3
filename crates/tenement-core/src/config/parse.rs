//! From TOML text to a validated [`Config`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use toml_span::Span;

use super::error::{ConfigError, ConfigErrors, line_col};
use super::template::{ALL_VARS, SOCKET_VARS, Template};
use super::walk::{Ctx, Fields, expect_string, expect_strings};
use super::{Config, Isolation, Listen, RestartPolicy, Routing, Sandbox, Service, Settings, Tls};
use crate::{InstanceId, InstanceKey, ServiceName};

type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

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
];
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
];
const SERVICE: &[&str] = &[
    "command",
    "args",
    "workdir",
    "socket",
    "health",
    "startup_timeout",
    "idle_timeout",
    "restart",
    "isolation",
    "runtime",
    "stop_timeout",
    "listen",
    "spawn_on_request",
    "max_instances",
    "memory_limit_mb",
    "cpu_shares",
    "pids_max",
    "storage_quota_mb",
    "storage_persist",
    "env",
];
const ROUTING: &[&str] = &["default", "subdomain", "path"];
const DEFAULT_SOCKET: &str = "/tmp/tenement/{name}-{id}.sock";
const DAY: i64 = 86_400;

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
        Some(f) => settings(&mut ctx, f, &base),
        None => Settings::defaults(),
    };
    let mut services = BTreeMap::new();
    let mut spans = BTreeMap::new();
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
            if let Some(svc) = service(&mut ctx, fields, &base, env) {
                services.insert(name, svc);
            }
        }
    }
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

fn resolve(base: &Path, p: &str) -> PathBuf {
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
            upstream_timeout: 60,
            sandbox: Sandbox::default(),
            allow_unlimited: false,
            log_retention_days: 7,
            log_max_mb: 1024,
            metrics_auth: false,
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
        }
    }
}

fn settings(ctx: &mut Ctx<'_>, mut f: Fields<'_>, base: &Path) -> Settings {
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
    if let Some((n, _)) = f.int(ctx, "upstream_timeout", 1, DAY) {
        s.upstream_timeout = n as u64;
    }
    s.allow_unlimited = f.bool(ctx, "allow_unlimited").unwrap_or(false);
    s.metrics_auth = f.bool(ctx, "metrics_auth").unwrap_or(false);
    if let Some((n, _)) = f.int(ctx, "log_retention_days", 1, 3650) {
        s.log_retention_days = n as u64;
    }
    if let Some((n, _)) = f.int(ctx, "log_max_mb", 1, 1 << 30) {
        s.log_max_mb = n as u64;
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
    f.finish(ctx, SETTINGS);
    s
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

fn template(
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

fn choice<T: Copy>(
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

fn service(ctx: &mut Ctx<'_>, mut f: Fields<'_>, base: &Path, env: Env<'_>) -> Option<Service> {
    let command = f.string(ctx, "command");
    if command.is_none() && !ctx.errors.iter().any(|e| e.field == f.field("command")) {
        ctx.error(
            f.span,
            &f.field("command"),
            "missing required field `command`",
        );
    }
    let command = command.and_then(|c| {
        if c.0.trim().is_empty() {
            ctx.error(c.1, &f.field("command"), "must not be empty");
        }
        template(ctx, &f.field("command"), c, ALL_VARS, env)
    });
    let args = f
        .strings(ctx, "args")
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .filter_map(|(i, a)| template(ctx, &format!("{}[{i}]", f.field("args")), a, ALL_VARS, env))
        .collect();
    let workdir = match f.string(ctx, "workdir") {
        Some((w, _)) => resolve(base, &w),
        None => base.to_path_buf(),
    };
    let socket = match f.string(ctx, "socket") {
        Some((raw, span)) => {
            let field = f.field("socket");
            let t = template(ctx, &field, (raw, span), SOCKET_VARS, env);
            if let Some(t) = &t
                && !t.contains("id")
            {
                ctx.error(
                    span,
                    &field,
                    "must contain {id} so that instances get distinct sockets",
                );
            }
            if let Some(t) = &t
                && !t.as_str().starts_with('/')
                && !t.as_str().starts_with("{data_dir}")
            {
                ctx.error(span, &field, "must be an absolute path");
            }
            t
        }
        None => Some(Template::literal(DEFAULT_SOCKET)),
    };
    let health = f.string(ctx, "health").map(|(h, span)| {
        if !h.starts_with('/') || h.contains(char::is_whitespace) {
            ctx.error(
                span,
                &f.field("health"),
                format!("{h:?} must be an HTTP path starting with '/'"),
            );
        }
        h
    });
    let startup_timeout = f
        .int(ctx, "startup_timeout", 1, 3600)
        .map_or(10, |(n, _)| n as u64);
    let idle_timeout = f
        .int(ctx, "idle_timeout", 0, 365 * DAY)
        .map_or(0, |(n, _)| n as u64);
    let stop_timeout = f
        .int(ctx, "stop_timeout", 0, 3600)
        .map_or(10, |(n, _)| n as u64);
    let restart = f
        .string(ctx, "restart")
        .and_then(|r| {
            let opts = [
                ("always", RestartPolicy::Always),
                ("on-failure", RestartPolicy::OnFailure),
                ("never", RestartPolicy::Never),
            ];
            choice(ctx, &f.field("restart"), r, &opts)
        })
        .unwrap_or(RestartPolicy::OnFailure);
    let isolation = f.string(ctx, "isolation");
    let runtime = f.string(ctx, "runtime");
    if let (Some(_), Some((_, span))) = (&isolation, &runtime) {
        ctx.error(
            *span,
            &f.field("runtime"),
            "`runtime` is an alias of `isolation`: give only one",
        );
    }
    let isolation = isolation
        .map(|v| (v, "isolation"))
        .or(runtime.map(|v| (v, "runtime")))
        .and_then(|(v, name)| choice(ctx, &f.field(name), v, &Isolation::ALL))
        .unwrap_or(Isolation::Namespace);
    let listen = f
        .string(ctx, "listen")
        .and_then(|v| {
            choice(
                ctx,
                &f.field("listen"),
                v,
                &[("unix", Listen::Unix), ("tcp", Listen::Tcp)],
            )
        })
        .unwrap_or(Listen::Unix);
    let spawn_on_request = f.bool(ctx, "spawn_on_request").unwrap_or(false);
    let max_instances = f
        .int(ctx, "max_instances", 0, 1_000_000)
        .map_or(0, |(n, _)| n as u32);
    let memory_limit_mb = f
        .int(ctx, "memory_limit_mb", 1, 1 << 30)
        .map(|(n, _)| n as u64);
    let cpu_shares = f.int(ctx, "cpu_shares", 1, 10_000).map(|(n, _)| n as u32);
    let pids_max = f
        .int(ctx, "pids_max", 1, 4_194_304)
        .map_or(1024, |(n, _)| n as u32);
    let storage_quota_mb = f
        .int(ctx, "storage_quota_mb", 1, 1 << 30)
        .map(|(n, _)| n as u64);
    let storage_persist = f.bool(ctx, "storage_persist").unwrap_or(false);
    let env_vars = f
        .table(ctx, "env")
        .map(|t| env_table(ctx, t, env))
        .unwrap_or_default();
    f.finish(ctx, SERVICE);
    Some(Service {
        command: command?,
        args,
        workdir,
        socket: socket?,
        health,
        startup_timeout,
        idle_timeout,
        restart,
        isolation,
        stop_timeout,
        listen,
        spawn_on_request,
        max_instances,
        memory_limit_mb,
        cpu_shares,
        pids_max,
        storage_quota_mb,
        storage_persist,
        env: env_vars,
    })
}

fn env_table(ctx: &mut Ctx<'_>, mut f: Fields<'_>, env: Env<'_>) -> BTreeMap<String, Template> {
    let mut out = BTreeMap::new();
    for (key, key_span, value) in f.drain() {
        let field = f.field(&key);
        if key.is_empty() || key.contains(['=', '\0']) {
            ctx.error(key_span, &field, "not a valid environment variable name");
            continue;
        }
        if let Some(raw) = expect_string(ctx, &field, value)
            && let Some(t) = template(ctx, &field, raw, ALL_VARS, env)
        {
            out.insert(key, t);
        }
    }
    out
}

fn known_service(
    ctx: &mut Ctx<'_>,
    field: &str,
    (raw, span): (String, Span),
    known: &BTreeMap<ServiceName, Span>,
) -> Option<ServiceName> {
    match raw.parse::<ServiceName>() {
        Ok(name) if known.contains_key(&name) => Some(name),
        Ok(name) => {
            ctx.error(span, field, format!("unknown service `{name}`"));
            None
        }
        Err(e) => {
            ctx.error(span, field, e.to_string());
            None
        }
    }
}

fn instances(
    ctx: &mut Ctx<'_>,
    value: toml_span::Value<'_>,
    known: &BTreeMap<ServiceName, Span>,
) -> Vec<InstanceKey> {
    let Some(mut f) = Fields::open(ctx, "instances", value) else {
        return Vec::new();
    };
    let mut entries = f.drain();
    entries.sort_by_key(|(_, span, _)| span.start);
    let mut out = Vec::new();
    for (name, span, ids) in entries {
        let field = f.field(&name);
        let Some(service) = known_service(ctx, &field, (name, span), known) else {
            continue;
        };
        for (i, (id, span)) in expect_strings(ctx, &field, ids)
            .unwrap_or_default()
            .into_iter()
            .enumerate()
        {
            match id.parse::<InstanceId>() {
                Ok(id) => {
                    let key = InstanceKey::new(service.clone(), id);
                    if out.contains(&key) {
                        ctx.error(
                            span,
                            &format!("{field}[{i}]"),
                            format!("{key} is listed twice"),
                        );
                    } else {
                        out.push(key);
                    }
                }
                Err(e) => ctx.error(span, &format!("{field}[{i}]"), e.to_string()),
            }
        }
    }
    out
}

fn routing(ctx: &mut Ctx<'_>, mut f: Fields<'_>, known: &BTreeMap<ServiceName, Span>) -> Routing {
    let mut r = Routing {
        default: f
            .string(ctx, "default")
            .and_then(|v| known_service(ctx, "routing.default", v, known)),
        ..Routing::default()
    };
    if let Some(mut sub) = f.table(ctx, "subdomain") {
        for (label, span, value) in sub.drain() {
            let field = sub.field(&label);
            if let Err(e) = label.parse::<ServiceName>() {
                ctx.error(
                    span,
                    &field,
                    format!("subdomain must be a DNS label: {}", e.reason),
                );
                continue;
            }
            if let Some(target) =
                expect_string(ctx, &field, value).and_then(|v| known_service(ctx, &field, v, known))
            {
                r.subdomain.insert(label, target);
            }
        }
    }
    if let Some(mut paths) = f.table(ctx, "path") {
        for (prefix, span, value) in paths.drain() {
            let field = paths.field(&prefix);
            if !prefix.starts_with('/') || prefix.contains(['?', '#', ' ']) {
                ctx.error(
                    span,
                    &field,
                    format!("path prefix {prefix:?} must start with '/'"),
                );
                continue;
            }
            if let Some(target) =
                expect_string(ctx, &field, value).and_then(|v| known_service(ctx, &field, v, known))
            {
                r.path.insert(prefix, target);
            }
        }
    }
    f.finish(ctx, ROUTING);
    r
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
