//! `[service.NAME]` (and `[process.NAME]`): one service's fields, validated.

use std::collections::BTreeMap;
use std::path::Path;

use toml_span::Span;

use super::parse::{DAY, Env, choice, resolve, template};
use super::socket::{self, DEFAULT_SOCKET};
use super::template::{ALL_VARS, SOCKET_VARS, Template};
use super::walk::{Ctx, Fields, expect_scalar};
use super::{Isolation, Listen, RestartPolicy, Service};

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
    "user",
    "request_cpu_ms",
    "outbound",
];

pub(super) fn service(
    ctx: &mut Ctx<'_>,
    mut f: Fields<'_>,
    base: &Path,
    env: Env<'_>,
) -> Option<(Service, Option<Span>)> {
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
    let mut socket_span = None;
    let socket = match f.string(ctx, "socket") {
        Some((raw, span)) => {
            socket_span = Some(span);
            let field = f.field("socket");
            let t = template(ctx, &field, (raw, span), SOCKET_VARS, env);
            if let Some(Err(e)) = t.as_ref().map(socket::check) {
                ctx.error(span, &field, e);
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
    // Namespace and sandbox isolation hide data_dir from the instance except its own directory:
    // a socket straight in data_dir would be made where the host never sees it.
    if let (Some(t), Some(span)) = (&socket, socket_span)
        && matches!(isolation, Isolation::Namespace | Isolation::Sandbox)
        && t.as_str()
            .rsplit_once('/')
            .is_some_and(|(dir, _)| dir == "{data_dir}")
    {
        ctx.error(
            span,
            &f.field("socket"),
            "directly in {data_dir}, which namespace and sandbox isolation hide from the instance: use the instance's own directory, as the default does (\"{data_dir}/{id}/app.sock\")",
        );
    }
    let listen_span = f.span_of("listen");
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
    let user = f.string(ctx, "user").map(|(u, span)| {
        if !valid_user(&u) {
            ctx.error(
                span,
                &f.field("user"),
                format!("{u:?} is not a user name or numeric uid"),
            );
        }
        u
    });
    let request_cpu_ms = f
        .int(ctx, "request_cpu_ms", 1, 3_600_000)
        .map(|(n, span)| (n as u64, span));
    let outbound_span = f.span_of("outbound");
    let outbound = f.bool(ctx, "outbound");
    if isolation != Isolation::Wasm {
        // Only a wasm host can bound a request's CPU time or deny the network; elsewhere
        // the setting would be a promise not kept.
        if let Some((_, span)) = request_cpu_ms {
            ctx.error(
                span,
                &f.field("request_cpu_ms"),
                "applies to isolation = \"wasm\" only (other levels are bounded by cpu_shares and their cgroup)",
            );
        }
        if let Some(span) = outbound_span {
            ctx.error(
                span,
                &f.field("outbound"),
                "applies to isolation = \"wasm\" only (apps at other levels share the host's network)",
            );
        }
    } else if let Some(span) = listen_span.filter(|_| listen == Listen::Tcp) {
        ctx.error(
            span,
            &f.field("listen"),
            "isolation = \"wasm\" serves the component on the instance's Unix socket: remove `listen = \"tcp\"`",
        );
    }
    let env_vars = f
        .table(ctx, "env")
        .map(|t| env_table(ctx, t, env))
        .unwrap_or_default();
    f.finish(ctx, SERVICE);
    let service = Service {
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
        user,
        request_cpu_ms: request_cpu_ms.map(|(n, _)| n),
        outbound: outbound.unwrap_or(false),
    };
    Some((service, socket_span))
}

/// A POSIX-ish user name (`[a-z_][a-z0-9_-]*`, optionally ending in `$`) or a numeric uid.
fn valid_user(u: &str) -> bool {
    if !u.is_empty() && u.len() <= 32 && u.bytes().all(|b| b.is_ascii_digit()) {
        return u.parse::<u32>().is_ok();
    }
    let body = u.strip_suffix('$').unwrap_or(u);
    let mut bytes = body.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_lowercase() || b == b'_')
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
        && u.len() <= 32
}

fn env_table(ctx: &mut Ctx<'_>, mut f: Fields<'_>, env: Env<'_>) -> BTreeMap<String, Template> {
    let mut out = BTreeMap::new();
    for (key, key_span, value) in f.drain() {
        let field = f.field(&key);
        if key.is_empty() || key.contains(['=', '\0']) {
            ctx.error(key_span, &field, "not a valid environment variable name");
            continue;
        }
        if let Some(raw) = expect_scalar(ctx, &field, value)
            && let Some(t) = template(ctx, &field, raw, ALL_VARS, env)
        {
            out.insert(key, t);
        }
    }
    out
}
