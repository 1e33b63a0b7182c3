//! `slum serve` and the `slum` command line, as an operator uses them.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{SLUM, Serving};

fn serve(dir: &Path) -> Serving {
    common::serve(&dir.join("slum.db"), &[])
}

fn slum(s: &Serving, dir: &Path, args: &[&str]) -> Output {
    Command::new(SLUM)
        .args(["--url", &s.url, "--token-file"])
        .arg(dir.join("slum.db.token"))
        .args(args)
        .env_remove("SLUM_TOKEN")
        .output()
        .unwrap()
}

fn ok(s: &Serving, dir: &Path, args: &[&str]) -> String {
    let out = slum(s, dir, args);
    assert!(
        out.status.success(),
        "slum {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn refused(s: &Serving, dir: &Path, args: &[&str]) -> String {
    let out = slum(s, dir, args);
    assert!(!out.status.success(), "slum {args:?} should fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn servers_are_managed_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = serve(dir.path());
        let token = dir.path().join("slum.db.token");
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&token).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        ok(
            &s,
            dir.path(),
            &["server", "add", "east", "http://10.0.0.1:8080"],
        );
        ok(
            &s,
            dir.path(),
            &["server", "add", "west", "http://10.0.0.2:8080"],
        );
        let servers = ok(&s, dir.path(), &["servers"]);
        assert!(
            servers.contains("east")
                && servers.contains("new")
                && servers.contains("http://10.0.0.2:8080"),
            "{servers}"
        );
    }
    // A new slum serve on the same state finds it all, with the same token.
    let s = serve(dir.path());
    assert!(ok(&s, dir.path(), &["servers"]).contains("west"));
    ok(&s, dir.path(), &["server", "rm", "east"]);
    assert!(!ok(&s, dir.path(), &["servers"]).contains("east"));
}

#[test]
fn bad_input_and_bad_tokens_are_refused_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let s = serve(dir.path());
    ok(
        &s,
        dir.path(),
        &["server", "add", "east", "http://10.0.0.1:8080"],
    );
    let said = refused(
        &s,
        dir.path(),
        &[
            "tenant",
            "add",
            "a.example.com",
            "api:prod",
            "--server",
            "nowhere",
        ],
    );
    assert!(said.contains("no server \"nowhere\""), "{said}");
    // A server added by hand but never joined runs nothing yet.
    let said = refused(
        &s,
        dir.path(),
        &[
            "tenant",
            "add",
            "a.example.com",
            "api:prod",
            "--server",
            "east",
        ],
    );
    assert!(said.contains("never joined"), "{said}");
    let said = refused(
        &s,
        dir.path(),
        &["tenant", "add", "a.example.com", "api:prod"],
    );
    assert!(said.contains("no server is up"), "{said}");
    let said = refused(
        &s,
        dir.path(),
        &["server", "add", "east", "http://10.0.0.9"],
    );
    assert!(said.contains("exists"), "{said}");
    let said = refused(
        &s,
        dir.path(),
        &[
            "tenant",
            "add",
            "Not A Domain",
            "api:prod",
            "--server",
            "east",
        ],
    );
    assert!(said.contains("not a lowercase host name"), "{said}");
    let said = refused(
        &s,
        dir.path(),
        &[
            "tenant",
            "add",
            "b.example.com",
            "api-prod",
            "--server",
            "east",
        ],
    );
    assert!(said.contains("SERVICE:ID"), "{said}");
    // Nothing half-done: no tenant.
    assert_eq!(ok(&s, dir.path(), &["tenants"]).lines().count(), 1);

    // Without the token, or with another: 401, nothing changes.
    for token in ["", "0123456789abcdef0123456789abcdef0123456789abcdef"] {
        let out = Command::new(SLUM)
            .args([
                "--url",
                &s.url,
                "--token",
                token,
                "server",
                "add",
                "evil",
                "http://10.6.6.6",
            ])
            .env_remove("SLUM_TOKEN")
            .output()
            .unwrap();
        assert!(!out.status.success());
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("bearer token"),
            "{token:?}"
        );
    }
    assert!(!ok(&s, dir.path(), &["servers"]).contains("evil"));
}

#[test]
fn an_address_that_keeps_guessing_tokens_is_turned_away() {
    let dir = tempfile::tempdir().unwrap();
    let s = serve(dir.path());
    let addr = s.url.strip_prefix("http://").unwrap().to_owned();
    let admin = std::fs::read_to_string(dir.path().join("slum.db.token")).unwrap();
    let call = |from: [u8; 4], token: &str| {
        let auth = format!("Bearer {token}");
        let r = test_support::http::request_from(
            from.into(),
            &addr,
            &addr,
            "GET",
            "/api/servers",
            &[("Authorization", &auth)],
        )
        .unwrap();
        r.status
    };
    for i in 0..10 {
        assert_eq!(call([127, 0, 0, 1], &format!("guess-{i:032}")), 401);
    }
    // The eleventh try, and then even the right token, from that address: 429.
    assert_eq!(call([127, 0, 0, 1], "guess-again-0123456789abcdef"), 429);
    assert_eq!(call([127, 0, 0, 1], admin.trim()), 429);
    // Another address is not held back.
    assert_eq!(call([127, 0, 0, 2], admin.trim()), 200);
    // Calls without a token are not guesses (a tenant on a server could otherwise lock the
    // server's own address out).
    for _ in 0..20 {
        let r = test_support::http::request_from(
            [127, 0, 0, 3].into(),
            &addr,
            &addr,
            "GET",
            "/api/servers",
            &[],
        );
        assert_eq!(r.unwrap().status, 401);
    }
    assert_eq!(call([127, 0, 0, 3], admin.trim()), 200);
}

#[test]
fn every_error_is_json() {
    let dir = tempfile::tempdir().unwrap();
    let s = serve(dir.path());
    let admin = std::fs::read_to_string(dir.path().join("slum.db.token")).unwrap();
    for (method, path, kind, body) in [
        ("POST", "/api/tenants", "application/json", "{not json"),
        ("POST", "/api/tenants", "text/plain", "{}"),
        ("PUT", "/api/servers", "application/json", "{}"),
        ("GET", "/api/nothing", "application/json", ""),
    ] {
        let out = common::raw(&s.url, method, path, admin.trim(), kind, body);
        let (head, json) = out.split_once("\r\n\r\n").unwrap();
        assert!(
            head.to_ascii_lowercase()
                .contains("content-type: application/json"),
            "{method} {path}: {out}"
        );
        let v: serde_json::Value = serde_json::from_str(json).unwrap();
        assert!(
            v["error"].is_string() && v["code"].is_string(),
            "{method} {path}: {json}"
        );
    }
}

#[test]
fn a_fleet_has_at_most_max_servers() {
    let dir = tempfile::tempdir().unwrap();
    let s = common::serve(&dir.path().join("slum.db"), &["--max-servers", "2"]);
    let join = std::fs::read_to_string(dir.path().join("slum.db.join-token")).unwrap();
    let post = |id: &str| {
        let body = format!(
            r#"{{"id":"{id}","url":"http://10.0.0.9:80","domain":"{id}.test","capacity":{{}}}}"#
        );
        common::http(&s.url, "POST", "/api/join", join.trim(), &body)
    };
    assert_eq!(post("a").0, 200);
    assert_eq!(post("b").0, 200);
    let (status, said) = post("c");
    assert!(status == 409 && said.contains("its most"), "{said}");
}
