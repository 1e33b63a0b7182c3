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

/// The typed client (tenement-api) against a real server, over the control socket and over
/// TCP with tokens: typed answers, and each error with the server's status and `code`.
#[test]
fn the_typed_client_keeps_the_servers_answers_and_error_codes() {
    use tenement_api::{Client, DeployRequest, Error, LogParams, Target};
    let mut b = Building::new(TEN, CONFIG);
    b.start();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let local = Client::new(Target::Socket(b.data_dir().join("ten.sock")));
    let key: tenement_core::InstanceKey = "web:a".parse().unwrap();
    rt.block_on(async {
        let status = local.spawn(&key).await.unwrap();
        assert_eq!(status.instance, key);
        let all = local.instances().await.unwrap();
        assert_eq!(all.len(), 1, "{all:?}");
        assert_eq!(all[0].state, "running");
        let err = local.spawn(&key).await.unwrap_err();
        assert!(
            matches!(&err, Error::Api { status, code, .. } if *status == 409 && code == "already_exists"),
            "{err:?}"
        );
        let gone: tenement_core::InstanceKey = "nope:a".parse().unwrap();
        let err = local.spawn(&gone).await.unwrap_err();
        assert_eq!(err.code(), Some("unknown_service"), "{err:?}");
        let err = local.stop(&"web:zz".parse().unwrap()).await.unwrap_err();
        assert_eq!(err.code(), Some("not_found"), "{err:?}");
        let bad = DeployRequest {
            service: "web".into(),
            id: "b".into(),
            timeout: Some(0),
            ..DeployRequest::default()
        };
        let err = local.deploy(&bad).await.unwrap_err();
        assert_eq!(err.code(), Some("bad_request"), "{err:?}");
        let report = local.reload().await.unwrap();
        assert!(report.failed.is_empty(), "{report:?}");
        let lines = local
            .logs(&LogParams {
                instance: Some("web:a".into()),
                ..LogParams::default()
            })
            .await
            .unwrap();
        assert!(lines.iter().all(|l| l.instance == "web:a"), "{lines:?}");

        // Over TCP: a tenant's token sees its own instances, and is refused the rest with
        // the server's code.
        let alice: tenement_core::InstanceId = "alice".parse().unwrap();
        let created = local.token_gen(Some(&alice)).await.unwrap();
        assert_eq!(created.tenant.as_deref(), Some("alice"));
        let tenant = Client::new(Target::Tcp {
            authority: b.http_addr(),
            token: Some(created.token),
        });
        assert!(tenant.instances().await.unwrap().is_empty());
        let err = tenant.spawn(&key).await.unwrap_err();
        assert!(
            matches!(&err, Error::Api { status, code, .. } if *status == 403 && code == "forbidden"),
            "{err:?}"
        );
        let err = tenant.tokens().await.unwrap_err();
        assert_eq!(err.code(), Some("forbidden"), "{err:?}");
        let nobody = Client::new(Target::Tcp {
            authority: b.http_addr(),
            token: None,
        });
        let err = nobody.instances().await.unwrap_err();
        assert!(matches!(&err, Error::Api { status, .. } if *status == 401), "{err:?}");
        let tokens = local.tokens().await.unwrap();
        assert_eq!(tokens.len(), 1, "{tokens:?}");
        local.token_revoke(tokens[0].id).await.unwrap();
        local.stop(&key).await.unwrap();
    });
}
