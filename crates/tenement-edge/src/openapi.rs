//! `GET /api/openapi.json`: the management API described as OpenAPI 3.0, written by hand next
//! to the router (`api.rs`): a route added there is added here. (The document is served in the
//! auth suite; that every described path answers was checked by a black-box pass, not a test.)

use axum::Json;
use serde_json::{Value, json};

fn instance_param() -> Value {
    json!({ "name": "key", "in": "path", "required": true, "description": "SERVICE:ID, e.g. api:prod", "schema": { "type": "string" } })
}

fn error_responses() -> Value {
    json!({
        "400": { "$ref": "#/components/responses/Error" },
        "401": { "$ref": "#/components/responses/Error" },
        "403": { "$ref": "#/components/responses/Error" },
        "404": { "$ref": "#/components/responses/Error" },
        "405": { "$ref": "#/components/responses/Error" },
        "409": { "$ref": "#/components/responses/Error" },
        "429": { "$ref": "#/components/responses/Error" },
        "503": { "$ref": "#/components/responses/Error" }
    })
}

fn with_errors(ok: Value) -> Value {
    let mut r = error_responses();
    for (k, v) in ok.as_object().expect("object") {
        r[k] = v.clone();
    }
    r
}

fn instance_ok(code: &str) -> Value {
    json!({ code: { "description": "the instance", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Instance" } } } } })
}

pub fn spec() -> Value {
    let q = |name: &str, desc: &str, ty: &str| json!({ "name": name, "in": "query", "required": false, "description": desc, "schema": { "type": ty } });
    json!({
        "openapi": "3.0.3",
        "info": { "title": "tenement management API", "version": env!("CARGO_PKG_VERSION"),
                  "description": "Over TCP every /api/ path needs `Authorization: Bearer <token>` (ten token-gen). A tenant token sees and acts only on instances whose id is its tenant. Over the control socket ({data_dir}/ten.sock) no token is needed." },
        "components": {
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer" } },
            "responses": { "Error": { "description": "an error", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } } } },
            "schemas": {
                "Error": { "type": "object", "required": ["error", "code"], "properties": { "error": { "type": "string" }, "code": { "type": "string" } } },
                "Instance": { "type": "object", "properties": {
                    "instance": { "type": "string" }, "service": { "type": "string" }, "id": { "type": "string" },
                    "state": { "type": "string", "enum": ["starting", "running", "stopping", "sleeping", "backing-off", "exited", "failed", "stopped"] },
                    "health": { "type": "string", "enum": ["unknown", "healthy", "unhealthy"] },
                    "isolation": { "type": "string" }, "pid": { "type": "integer", "nullable": true },
                    "ready_since_ms": { "type": "integer", "nullable": true }, "restarts": { "type": "integer" },
                    "last_exit": { "type": "string", "nullable": true }, "oom_kills": { "type": "integer" },
                    "health_check_failures": { "type": "integer" },
                    "memory_bytes": { "type": "integer", "nullable": true }, "cpu_usec": { "type": "integer", "nullable": true },
                    "data_dir": { "type": "string" }, "storage_quota_mb": { "type": "integer", "nullable": true },
                    "storage_used_bytes": { "type": "integer", "nullable": true },
                    "socket": { "type": "string" }, "port": { "type": "integer" }, "weight": { "type": "integer" },
                    "cgroups": { "type": "array", "items": { "type": "string" } } } },
                "LogLine": { "type": "object", "properties": { "id": { "type": "integer" }, "ts_ms": { "type": "integer" }, "instance": { "type": "string" }, "stream": { "type": "string", "enum": ["stdout", "stderr"] }, "text": { "type": "string" } } },
                "Token": { "type": "object", "properties": { "id": { "type": "integer" }, "tenant": { "type": "string", "nullable": true }, "created_at": { "type": "integer" } } }
            }
        },
        "security": [{ "bearer": [] }],
        "paths": {
            "/api/instances": {
                "get": { "summary": "List instances (a tenant sees its own)", "responses": with_errors(json!({ "200": { "description": "instances", "content": { "application/json": { "schema": { "type": "array", "items": { "$ref": "#/components/schemas/Instance" } } } } } })) },
                "post": { "summary": "Spawn an instance and wait until it is ready",
                          "requestBody": { "required": true, "content": { "application/json": { "schema": { "type": "object", "required": ["service", "id"], "properties": { "service": { "type": "string" }, "id": { "type": "string" } } } } } },
                          "responses": with_errors(instance_ok("201")) }
            },
            "/api/instances/{key}": {
                "parameters": [instance_param()],
                "get": { "summary": "One instance", "responses": with_errors(instance_ok("200")) },
                "delete": { "summary": "Stop and forget an instance", "responses": with_errors(json!({ "204": { "description": "stopped" } })) }
            },
            "/api/instances/{key}/restart": { "parameters": [instance_param()], "post": { "summary": "Restart (also revives a failed instance)", "responses": with_errors(instance_ok("200")) } },
            "/api/instances/{key}/weight": { "parameters": [instance_param()], "post": { "summary": "Set the share of {service}.{domain} traffic (0-100)",
                "requestBody": { "required": true, "content": { "application/json": { "schema": { "type": "object", "required": ["weight"], "properties": { "weight": { "type": "integer", "minimum": 0, "maximum": 100 } } } } } },
                "responses": with_errors(instance_ok("200")) } },
            "/api/instances/{key}/logs": { "parameters": [instance_param(), q("limit", "newest lines", "integer"), q("follow", "stream as Server-Sent Events", "boolean")],
                "get": { "summary": "The in-memory tail of one instance", "responses": with_errors(json!({ "200": { "description": "lines (JSON) or text/event-stream" } })) } },
            "/api/logs": { "get": { "summary": "Query the log store (newest first) or follow it (SSE)",
                "parameters": [q("instance", "SERVICE:ID", "string"), q("service", "service name", "string"), q("stream", "stdout or stderr", "string"),
                               q("since", "ms since the epoch, or a duration back (10m)", "string"), q("until", "same", "string"),
                               q("search", "full-text phrase", "string"), q("limit", "1-10000, default 100", "integer"), q("follow", "Server-Sent Events", "boolean")],
                "responses": with_errors(json!({ "200": { "description": "lines", "content": { "application/json": { "schema": { "type": "array", "items": { "$ref": "#/components/schemas/LogLine" } } } } } })) } },
            "/api/logs/stream": { "get": { "summary": "Follow the log store live (SSE): GET /api/logs?follow=true",
                "parameters": [q("instance", "SERVICE:ID", "string"), q("service", "service name", "string"), q("stream", "stdout or stderr", "string"),
                               q("since", "ms since the epoch, or a duration back (10m)", "string"), q("until", "same", "string"),
                               q("search", "full-text phrase", "string"), q("limit", "backlog lines first, default 100", "integer")],
                "responses": with_errors(json!({ "200": { "description": "text/event-stream of `log` events (`lagged` with the number of lines missed when the follower falls behind, `end` when the server stops)" } })) } },
            "/api/route": { "post": { "summary": "Move all of one instance's traffic to another",
                "requestBody": { "required": true, "content": { "application/json": { "schema": { "type": "object", "required": ["service", "from", "to"], "properties": { "service": { "type": "string" }, "from": { "type": "string" }, "to": { "type": "string" } } } } } },
                "responses": with_errors(json!({ "200": { "description": "new weights" } })) } },
            "/api/deploy": { "post": { "summary": "Start an instance, wait until healthy, optionally replace another",
                "requestBody": { "required": true, "content": { "application/json": { "schema": { "type": "object", "required": ["service", "id"], "properties": {
                    "service": { "type": "string" }, "id": { "type": "string" }, "weight": { "type": "integer" }, "timeout": { "type": "integer", "description": "seconds" }, "replace": { "type": "string" } } } } } },
                "responses": with_errors(instance_ok("201")) } },
            "/api/upgrade": { "post": { "summary": "Hand the server over to a new process of its executable, which adopts every instance (admin); 409 upgrade_failed leaves the running server as it was", "responses": with_errors(json!({ "200": { "description": "pid, adopted, handover_ms" } })) } },
            "/api/reload": { "post": { "summary": "Re-read tenement.toml and apply it (admin); 400 invalid_config changes nothing", "responses": with_errors(json!({ "200": { "description": "what changed: services_added, services_removed, services_changed, replaced, started, stopped, settings_changed, needs_restart, failed" } })) } },
            "/api/config": { "get": { "summary": "The configuration in use (admin; env values omitted)", "responses": with_errors(json!({ "200": { "description": "settings, services, instances, routing" } })) } },
            "/api/health": { "get": { "summary": "Instances with their health", "responses": with_errors(json!({ "200": { "description": "instances" } })) } },
            "/api/tokens": {
                "get": { "summary": "List tokens (admin)", "responses": with_errors(json!({ "200": { "description": "tokens", "content": { "application/json": { "schema": { "type": "array", "items": { "$ref": "#/components/schemas/Token" } } } } } })) },
                "post": { "summary": "Create a token (admin); shown once",
                          "requestBody": { "required": false, "content": { "application/json": { "schema": { "type": "object", "properties": { "tenant": { "type": "string" } } } } } },
                          "responses": with_errors(json!({ "201": { "description": "the token" } })) }
            },
            "/api/tokens/{id}": { "parameters": [{ "name": "id", "in": "path", "required": true, "schema": { "type": "integer" } }],
                "delete": { "summary": "Revoke a token (admin); effective at once", "responses": with_errors(json!({ "204": { "description": "revoked" } })) } },
            "/api/tls": { "get": { "summary": "Certificates in force (names, not_before, not_after, renew_at: seconds since the epoch) and the week's issuance count (admin)", "responses": with_errors(json!({ "200": { "description": "enabled, certificates, issued_last_7_days, max_certificates_per_week" } })) } },
            "/api/domains": {
                "get": { "summary": "Custom domains and their instances (admin)", "responses": with_errors(json!({ "200": { "description": "[{name, instance}]" } })) },
                "post": { "summary": "Route a custom domain to an instance, durable across restarts; with HTTPS its certificate is ordered at once (admin). 400 invalid_domain, 404 not_found (instance), 409 domain_taken", "requestBody": { "required": true, "content": { "application/json": { "schema": { "type": "object", "required": ["name", "instance"], "properties": { "name": { "type": "string" }, "instance": { "type": "string" } } } } } }, "responses": with_errors(json!({ "201": { "description": "{name, instance}" } })) }
            },
            "/api/domains/{name}": { "delete": { "summary": "Stop routing a custom domain (admin)", "parameters": [{ "name": "name", "in": "path", "required": true, "schema": { "type": "string" } }], "responses": with_errors(json!({ "204": { "description": "removed" } })) } },
            "/api/openapi.json": { "get": { "summary": "This document (a token is needed, as for every /api/ path)", "responses": with_errors(json!({ "200": { "description": "OpenAPI 3.0" } })) } },
            "/health": { "get": { "summary": "Public liveness of the server", "security": [], "responses": { "200": { "description": "ok" } } } },
            "/metrics": { "get": { "summary": "Prometheus metrics (public unless metrics_auth)", "security": [], "responses": { "200": { "description": "text exposition" } } } }
        }
    })
}

pub async fn document() -> Json<Value> {
    Json(spec())
}
