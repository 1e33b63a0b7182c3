//! The CLI against a server over TCP with a bearer token (`--server`, `--token`, and their
//! environment variables), and the public `/health`.

use std::io::{Read, Write};
use std::net::TcpStream;

use test_support::Building;

const TEN: &str = env!("CARGO_BIN_EXE_ten");

const CONFIG: &str = r#"
[service.web]
command = "{fixture}"
socket = "{dir}/{name}-{id}.sock"
isolation = "process"
"#;

fn http_get(addr: &str, path: &str, auth: Option<&str>) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    let auth = auth
        .map(|a| format!("Authorization: {a}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn token_gen_then_remote_cli_with_token() {
    let mut b = Building::new(TEN, CONFIG);
    b.start();
    b.ten_ok(&["spawn", "web:a"]);
    let token = b.ten_ok(&["token-gen"]).trim().to_owned();
    assert!(token.starts_with("ten_"), "{token}");
    let url = format!("http://{}", b.http_addr());

    // Flags.
    let out = b.ten_ok(&["ps", "--server", &url, "--token", &token]);
    assert!(out.contains("web:a"), "{out}");
    // Environment variables; a remote spawn works too.
    let out = b
        .cmd(&["spawn", "web:b"])
        .env("TENEMENT_SERVER", &url)
        .env("TENEMENT_TOKEN", &token)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(b.instance("web:b").is_some());

    // Without a token, or with a wrong one, the network API refuses.
    let out = b.ten(&["ps", "--server", &url]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing bearer token"));
    let wrong = format!("{}x", token);
    for bad in [wrong.as_str(), "ten_1_nope", "garbage", "ten_999_abc"] {
        let out = b.ten(&["ps", "--server", &url, "--token", bad]);
        assert!(!out.status.success(), "{bad} accepted");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("invalid token"),
            "{bad}"
        );
    }
    let raw = http_get(
        &b.http_addr(),
        "/api/instances",
        Some(&format!("Basic {token}")),
    );
    assert!(raw.starts_with("HTTP/1.1 401"), "{raw}");
    assert!(
        raw.to_ascii_lowercase()
            .contains("www-authenticate: bearer"),
        "{raw}"
    );

    // The token is not in the database in clear, nor in the server's log.
    let db = std::fs::read(b.data_dir().join("tenement.db")).unwrap_or_default();
    let secret = token.rsplit('_').next().unwrap();
    assert!(!String::from_utf8_lossy(&db).contains(secret));
    assert!(!b.serve_log().contains(secret));
}

#[test]
fn health_is_public_over_tcp() {
    let mut b = Building::new(TEN, CONFIG);
    b.start();
    let raw = http_get(&b.http_addr(), "/health", None);
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    assert!(raw.contains(r#""status":"ok""#), "{raw}");
}
