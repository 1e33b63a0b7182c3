//! The auth matrix of the network API: no token, wrong scheme, bad token, admin, a tenant on
//! its own instances and on another's — for every endpoint, the log stream included — plus
//! revocation and per-address rate limiting that never locks out another client.

use std::net::Ipv4Addr;

use test_support::Building;
use test_support::http::{request, request_from};

const TEN: &str = env!("CARGO_BIN_EXE_ten");

const CONFIG: &str = r#"
[service.web]
command = "{fixture}"
socket = "{dir}/s/{name}-{id}.sock"
health = "/health"
isolation = "process"
"#;

struct Api {
    addr: String,
    host: String,
}

impl Api {
    fn call(
        &self,
        auth: Option<&str>,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> (u16, String) {
        let mut headers = vec![("Content-Type", "application/json")];
        if let Some(a) = auth {
            headers.push(("Authorization", a));
        }
        let mut bytes = body.unwrap_or("").as_bytes();
        let body = body.map(|b| (b.len() as u64, &mut bytes as &mut dyn std::io::Read));
        let mut r = request(&self.addr, &self.host, method, path, &headers, body).unwrap();
        let status = r.status;
        // An SSE stream never ends: one piece is enough to know it was accepted.
        let text = if r
            .header("content-type")
            .is_some_and(|c| c.starts_with("text/event-stream"))
        {
            String::from_utf8_lossy(&r.next_piece().unwrap().unwrap_or_default()).into_owned()
        } else {
            r.text().unwrap()
        };
        (status, text)
    }
}

#[test]
fn every_endpoint_by_who_asks() {
    let mut b = Building::new(TEN, CONFIG);
    b.start();
    let api = Api {
        addr: b.http_addr(),
        host: b.http_addr(),
    };
    b.ten_ok(&["spawn", "web:alice"]);
    b.ten_ok(&["spawn", "web:bob"]);
    let admin = format!("Bearer {}", b.ten_ok(&["token-gen"]).trim());
    let alice = format!(
        "Bearer {}",
        b.ten_ok(&["token-gen", "--tenant", "alice"]).trim()
    );
    let basic = admin.replacen("Bearer", "Basic", 1);

    // (method, path, body, what alice gets on her own / on bob's, what admin gets)
    type Row<'a> = (&'a str, String, Option<String>, u16, u16);
    let mine = "web:alice";
    let theirs = "web:bob";
    let per_instance =
        |method: &'static str, tail: &str, body: Option<&str>, ok: u16| -> Vec<Row<'static>> {
            vec![
                (
                    method,
                    format!("/api/instances/{mine}{tail}"),
                    body.map(str::to_owned),
                    ok,
                    0,
                ),
                (
                    method,
                    format!("/api/instances/{theirs}{tail}"),
                    body.map(str::to_owned),
                    404,
                    0,
                ),
            ]
        };
    let mut rows: Vec<Row> = Vec::new();
    rows.extend(per_instance("GET", "", None, 200));
    rows.extend(per_instance("GET", "/logs", None, 200));
    rows.extend(per_instance("GET", "/logs?follow=true", None, 200));
    rows.extend(per_instance(
        "POST",
        "/weight",
        Some(r#"{"weight": 50}"#),
        200,
    ));
    rows.extend(per_instance("POST", "/restart", None, 200));
    rows.push(("GET", format!("/api/logs?instance={mine}"), None, 200, 0));
    rows.push(("GET", format!("/api/logs?instance={theirs}"), None, 404, 0));
    rows.push((
        "GET",
        format!("/api/logs?instance={mine}&follow=true"),
        None,
        200,
        0,
    ));
    rows.push((
        "GET",
        format!("/api/logs/stream?instance={mine}"),
        None,
        200,
        0,
    ));
    rows.push((
        "GET",
        format!("/api/logs/stream?instance={theirs}"),
        None,
        404,
        0,
    ));
    rows.push((
        "POST",
        "/api/route".into(),
        Some(r#"{"service":"web","from":"bob","to":"alice"}"#.into()),
        404,
        0,
    ));
    rows.push((
        "POST",
        "/api/deploy".into(),
        Some(r#"{"service":"web","id":"bob2"}"#.into()),
        403,
        0,
    ));
    rows.push((
        "POST",
        "/api/instances".into(),
        Some(r#"{"service":"web","id":"carol"}"#.into()),
        403,
        0,
    ));
    rows.push(("GET", "/api/tokens".into(), None, 403, 0));
    rows.push(("POST", "/api/tokens".into(), Some("{}".into()), 403, 0));
    rows.push(("DELETE", "/api/tokens/1".into(), None, 403, 0));
    rows.push(("POST", "/api/reload".into(), None, 403, 0));
    rows.push(("POST", "/api/upgrade".into(), None, 403, 0));
    rows.push(("GET", "/api/openapi.json".into(), None, 200, 0));
    rows.push(("GET", "/api/health".into(), None, 200, 0));

    for (n, (method, path, body, tenant_gets, _)) in rows.iter().enumerate() {
        for (who, auth) in [("nobody", None), ("basic", Some(basic.as_str()))] {
            let (code, _) = api.call(auth, method, path, body.as_deref());
            assert_eq!(code, 401, "{who} {method} {path}");
        }
        // Bad tokens count against their address: each row's comes from its own.
        let from = Ipv4Addr::new(127, 0, 1, n as u8 + 1);
        let bad = request_from(
            from,
            &api.addr,
            &api.host,
            method,
            path,
            &[("Authorization", "Bearer ten_1_nope")],
        )
        .unwrap();
        assert_eq!(bad.status, 401, "bad token {method} {path}");
        let (code, text) = api.call(Some(&alice), method, path, body.as_deref());
        assert_eq!(code, *tenant_gets, "alice {method} {path}: {text}");
    }
    // The list and the log store show a tenant only its own.
    let (_, list) = api.call(Some(&alice), "GET", "/api/instances", None);
    assert!(
        list.contains("web:alice") && !list.contains("web:bob"),
        "{list}"
    );
    let (_, logs) = api.call(Some(&alice), "GET", "/api/logs?service=web", None);
    assert!(
        logs.contains("web:alice") && !logs.contains("web:bob"),
        "{logs}"
    );
    // The tenant may act on its own: spawn, stop.
    assert_eq!(
        api.call(
            Some(&alice),
            "POST",
            "/api/instances",
            Some(r#"{"service":"web","id":"alice"}"#)
        )
        .0,
        409,
        "exists"
    );
    assert_eq!(
        api.call(Some(&alice), "DELETE", "/api/instances/web:alice", None)
            .0,
        204
    );
    assert_eq!(
        api.call(Some(&alice), "DELETE", "/api/instances/web:bob", None)
            .0,
        404
    );
    assert!(b.instance("web:bob").is_some());

    // The admin sees and does everything.
    let (code, list) = api.call(Some(&admin), "GET", "/api/instances", None);
    assert_eq!(code, 200);
    assert!(list.contains("web:bob"));
    let (code, tokens) = api.call(Some(&admin), "GET", "/api/tokens", None);
    assert_eq!(code, 200);
    assert!(tokens.contains("\"tenant\":\"alice\""), "{tokens}");
    assert!(
        !tokens.contains(alice.trim_start_matches("Bearer ")),
        "secrets never listed"
    );
    // (Past the access check, which a tenant fails with 404: bob to bob is no route.)
    let body = Some(r#"{"service":"web","from":"bob","to":"bob"}"#);
    let (code, err) = api.call(Some(&admin), "POST", "/api/route", body);
    assert_eq!((code, err.contains("to itself")), (400, true), "{err}");
    let (code, err) = api.call(Some(&admin), "DELETE", "/api/tokens/abc", None);
    assert_eq!(
        (code, err.contains("\"code\":\"bad_request\"")),
        (400, true),
        "{err}"
    );

    // Revocation takes effect at once, even for a token verified a moment ago.
    let alice_id = alice
        .trim_start_matches("Bearer ten_")
        .split('_')
        .next()
        .unwrap()
        .to_owned();
    b.ten_ok(&["token", "revoke", &alice_id]);
    assert_eq!(api.call(Some(&alice), "GET", "/api/instances", None).0, 401);
    let listed = b.ten_ok(&["token", "list"]);
    assert!(
        !listed.contains("alice") && listed.contains("(admin)"),
        "{listed}"
    );
    // Columns line up, and the creation time is a date.
    let admin_row = listed.lines().find(|l| l.contains("(admin)")).unwrap();
    assert_eq!(admin_row.find("(admin)"), listed.find("TENANT"), "{listed}");
    assert!(admin_row.trim_end().ends_with('Z'), "{listed}");
}

#[test]
fn failed_attempts_are_limited_per_address_only() {
    let mut b = Building::new(TEN, CONFIG);
    b.start();
    let addr = b.http_addr();
    let port = addr.rsplit(':').next().unwrap();
    let admin = format!("Bearer {}", b.ten_ok(&["token-gen"]).trim());
    // Listen on all loopback addresses is not needed: 127.0.0.1 is where the server is; the
    // clients come from different source addresses.
    let attacker = Ipv4Addr::new(127, 0, 0, 2);
    let admin_ip = Ipv4Addr::new(127, 0, 0, 3);
    let target = format!("127.0.0.1:{port}");
    let mut codes = vec![];
    for _ in 0..15 {
        let r = request_from(
            attacker,
            &target,
            &addr,
            "GET",
            "/api/instances",
            &[("Authorization", "Bearer ten_1_guess")],
        )
        .unwrap();
        codes.push(r.status);
    }
    assert_eq!(&codes[..10], &[401; 10]);
    assert!(codes[10..].iter().all(|c| *c == 429), "{codes:?}");
    // A burst of parallel guesses from a fresh address is held to the limit too (each
    // attempt counts as failed until it proves good).
    let burst = Ipv4Addr::new(127, 0, 0, 4);
    let guesses: Vec<_> = (0..30)
        .map(|_| {
            let (target, addr) = (target.clone(), addr.clone());
            std::thread::spawn(move || {
                let auth = [("Authorization", "Bearer ten_1_guess")];
                request_from(burst, &target, &addr, "GET", "/api/instances", &auth)
                    .unwrap()
                    .status
            })
        })
        .collect();
    let burst_codes: Vec<u16> = guesses.into_iter().map(|g| g.join().unwrap()).collect();
    let verified = burst_codes.iter().filter(|c| **c == 401).count();
    assert!(verified <= 10, "{burst_codes:?}");
    // A good token works even from the blocked address (checking it costs a microsecond:
    // nothing to protect by refusing it), and so does the admin's elsewhere...
    let get = |from, auth: &str| {
        request_from(
            from,
            &target,
            &addr,
            "GET",
            "/api/instances",
            &[("Authorization", auth)],
        )
        .unwrap()
        .status
    };
    assert_eq!(get(attacker, &admin), 200);
    // (the scheme's case does not matter)...
    assert_eq!(get(admin_ip, &admin.replacen("Bearer", "bearer", 1)), 200);
    // ...while guesses stay blocked.
    assert_eq!(get(attacker, "Bearer ten_1_guess"), 429);
    // Revoking another token revokes only that one.
    let other = b.ten_ok(&["token-gen", "--tenant", "dave"]);
    let other_id = other.trim().split('_').nth(1).unwrap().to_owned();
    b.ten_ok(&["token", "revoke", &other_id]);
    assert_eq!(get(attacker, &admin), 200);
    assert!(
        !b.serve_log().contains("ten_1_guess"),
        "tokens never logged"
    );
}

#[test]
fn config_summary_is_admin_only_and_hides_env_values() {
    let mut b = Building::new(
        TEN,
        &format!("{CONFIG}\n[service.web.env]\nSECRET = \"hunter2\"\n"),
    );
    b.start();
    let api = Api {
        addr: b.http_addr(),
        host: b.http_addr(),
    };
    let admin = format!("Bearer {}", b.ten_ok(&["token-gen"]).trim());
    let tenant = format!(
        "Bearer {}",
        b.ten_ok(&["token-gen", "--tenant", "alice"]).trim()
    );
    let (code, text) = api.call(Some(&admin), "GET", "/api/config", None);
    assert_eq!(code, 200);
    assert!(
        text.contains("\"web\"") && text.contains("SECRET") && !text.contains("hunter2"),
        "{text}"
    );
    assert_eq!(api.call(Some(&tenant), "GET", "/api/config", None).0, 403);
}

#[test]
fn a_token_made_before_the_first_serve_works_once_it_runs() {
    let mut b = Building::new(TEN, CONFIG);
    let token = b.ten_ok(&["token-gen"]).trim().to_owned();
    assert!(token.starts_with("ten_"), "{token}");
    b.start();
    let api = Api {
        addr: b.http_addr(),
        host: b.http_addr(),
    };
    let (code, body) = api.call(
        Some(&format!("Bearer {token}")),
        "GET",
        "/api/instances",
        None,
    );
    assert_eq!(code, 200, "{body}");
    let (code, _) = api.call(Some("Bearer ten_999_nope"), "GET", "/api/instances", None);
    assert_eq!(code, 401);
}

#[test]
fn json_bodies_are_read_whatever_their_content_type() {
    let mut b = Building::new(TEN, CONFIG);
    b.start();
    let addr = b.http_addr();
    let admin = format!("Bearer {}", b.ten_ok(&["token-gen"]).trim());
    // What `curl -d '{...}'` sends: JSON labelled as a form.
    let post = |path: &str, body: &str| {
        let headers = [
            ("Authorization", admin.as_str()),
            ("Content-Type", "application/x-www-form-urlencoded"),
        ];
        let mut bytes = body.as_bytes();
        let body = Some((body.len() as u64, &mut bytes as &mut dyn std::io::Read));
        let mut r = request(&addr, &addr, "POST", path, &headers, body).unwrap();
        (r.status, r.text().unwrap())
    };
    let (status, text) = post("/api/instances", r#"{"service":"web","id":"formed"}"#);
    assert_eq!(status, 201, "{text}");
    // A tenant token asked for this way is a tenant token, not an admin one.
    let (status, text) = post("/api/tokens", r#"{"tenant":"alice"}"#);
    assert_eq!(status, 201, "{text}");
    assert!(text.contains(r#""tenant":"alice""#), "{text}");
    let (status, text) = post("/api/instances", "{not json");
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("invalid JSON body"), "{text}");
    // No body at all: an admin token, as before.
    let (status, text) = post("/api/tokens", "");
    assert_eq!(
        (status, text.contains(r#""tenant":null"#)),
        (201, true),
        "{text}"
    );
    // Every error is the API's JSON, bad query parameters and methods included.
    let call = |method: &str, path: &str| {
        let headers = [("Authorization", admin.as_str())];
        let mut r = request(&addr, &addr, method, path, &headers, None).unwrap();
        (r.status, r.text().unwrap())
    };
    for (method, path, want, code) in [
        ("GET", "/api/logs?limit=abc", 400, "bad_request"),
        (
            "GET",
            "/api/instances/web:formed/logs?limit=-1",
            400,
            "bad_request",
        ),
        ("PUT", "/api/instances", 405, "method_not_allowed"),
    ] {
        let (status, text) = call(method, path);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        assert_eq!(
            (status, v["code"].as_str()),
            (want, Some(code)),
            "{path}: {text}"
        );
    }
}
