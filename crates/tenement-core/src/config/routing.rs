//! `[instances]` and `[routing]`: references to services, validated against the known ones.

use std::collections::BTreeMap;

use toml_span::Span;

use super::Routing;
use super::walk::{Ctx, Fields, expect_string, expect_strings};
use crate::{InstanceId, InstanceKey, ServiceName};

const ROUTING: &[&str] = &["default", "subdomain", "path"];

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

pub(super) fn instances(
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

pub(super) fn routing(
    ctx: &mut Ctx<'_>,
    mut f: Fields<'_>,
    known: &BTreeMap<ServiceName, Span>,
) -> Routing {
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
