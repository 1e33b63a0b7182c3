//! HTTPS with certificates from a real ACME CA (pebble, Let's Encrypt's test server, on
//! loopback; its DNS, pebble-challtestsrv, says every name is 127.0.0.1): on demand for names
//! that route and never for others, http-01 and tls-alpn-01, the cache across restarts,
//! renewal, the HTTP port's redirect, HTTP/2 and websockets over TLS. Clients are curl and
//! openssl, as users would use them.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use test_support::acme::Pebble;
use test_support::{Building, DOMAIN, wait_for};

const TEN: &str = env!("CARGO_BIN_EXE_ten");

fn building(pebble: &Pebble, challenge: &str) -> Building {
    let config = format!(
        r#"
[settings]
health_check_interval = 60

{}
[service.web]
command = "{{fixture}}"
socket = "{{dir}}/{{name}}-{{id}}.sock"
isolation = "process"
"#,
        pebble.tls_section(challenge)
    );
    let mut b = Building::new(TEN, &config);
    b.http_port = pebble.http_port;
    b
}

/// A started server using `pebble` with `challenge`, its instance `web:prod`: the server,
/// pebble's issuer root and the instance's name.
fn started(pebble: &Pebble, challenge: &str) -> (Building, std::path::PathBuf, String) {
    let mut b = building(pebble, challenge);
    b.start();
    b.ten_ok(&["spawn", "web:prod"]);
    (b, pebble.issuer_root(), format!("prod.web.{DOMAIN}"))
}

fn api_tls(b: &Building) -> serde_json::Value {
    let (status, body) =
        test_support::get_unix(&b.data_dir().join("ten.sock"), "/api/tls").expect("/api/tls");
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).expect("json")
}

#[test]
fn certificates_come_on_demand_for_names_that_route_and_never_for_others() {
    let Some(pebble) = Pebble::start_or_skip(None) else {
        return;
    };
    let (mut b, root, name) = started(&pebble, "http-01");

    // The first handshake for the name waits for its certificate; HTTP/2 by ALPN.
    let (status, version, body) = pebble.curl(&root, &name, "/", &[]).expect("HTTPS");
    assert_eq!((status, version.as_str()), (200, "2"), "{body}");
    assert!(body.contains("hello from web:prod"), "{body}");
    assert_eq!(pebble.orders(), 1);
    assert!(b.serve_log().contains("http-01 validation"));
    // HTTP/1.1 over TLS too, on the cached certificate.
    let (status, version, _) = pebble
        .curl(&root, &name, "/", &["--http1.1"])
        .expect("HTTPS/1.1");
    assert_eq!((status, version.as_str()), (200, "1.1"));

    // Names that do not route: no certificate, and nothing asked of the CA. An instance that
    // does not exist, a service that does not, a name outside the domain.
    for unknown in [
        format!("nope.web.{DOMAIN}"),
        format!("a.nosuch.{DOMAIN}"),
        "example.org".to_owned(),
    ] {
        assert_eq!(pebble.curl(&root, &unknown, "/", &[]), None, "{unknown}");
    }
    assert_eq!(
        pebble.orders(),
        1,
        "an order for a name that does not route"
    );

    // The HTTP port sends everything to HTTPS.
    let mut s = std::net::TcpStream::connect(("127.0.0.1", pebble.http_port)).unwrap();
    write!(
        s,
        "GET /x?y=1 HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 308"), "{answer}");
    let location = format!("location: https://{name}:{}/x?y=1", pebble.https_port);
    assert!(answer.to_ascii_lowercase().contains(&location), "{answer}");

    // Kept on disk for the server alone, and listed with its dates.
    let cache = b.data_dir().join("acme");
    let mode = |p: &std::path::Path| {
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(p).unwrap().permissions())
            & 0o777
    };
    assert_eq!(mode(&cache), 0o700);
    assert_eq!(mode(&cache.join("account.json")), 0o600);
    assert_eq!(mode(&cache.join(format!("certs/{name}.pem"))), 0o600);
    let tls = api_tls(&b);
    let certs = tls["certificates"].as_array().unwrap();
    // (ordered at `ten spawn` already: the first visitor did not wait for the CA.)
    assert_eq!(certs.len(), 1, "{tls}");
    assert_eq!(certs[0]["names"][0], name.as_str());
    assert!(certs[0]["not_after"].as_u64().unwrap() > certs[0]["renew_at"].as_u64().unwrap());
    assert_eq!(tls["issued_last_7_days"], 1);

    // A custom domain: its certificate is ordered when it is added, before any visitor.
    b.ten_ok(&["domain", "add", "shop.customer.org", "web:prod"]);
    wait_for(
        "the custom domain's certificate",
        Duration::from_secs(60),
        || {
            let tls = api_tls(&b);
            let names = tls["certificates"].to_string();
            names.contains("shop.customer.org").then_some(())
        },
    );
    assert_eq!(pebble.orders(), 2);
    let (status, _, body) = pebble
        .curl(&root, "shop.customer.org", "/", &[])
        .expect("custom domain");
    assert_eq!((status, body.trim()), (200, "hello from web:prod"));

    // A restart serves the cached certificates: no new order.
    b.terminate();
    b.start();
    let (status, _, _) = pebble
        .curl(&root, &name, "/", &[])
        .expect("HTTPS after restart");
    assert_eq!(status, 200);
    let (status, _, _) = pebble
        .curl(&root, "shop.customer.org", "/", &[])
        .expect("domain");
    assert_eq!(status, 200);
    assert_eq!(pebble.orders(), 2, "a restart ordered a certificate again");

    // An upgrade hands the HTTPS listeners over: served throughout, no new order.
    let during = {
        let (pebble_port, root, name) = (pebble.https_port, root.clone(), name.clone());
        std::thread::spawn(move || {
            (0..40)
                .filter(|_| {
                    let out = Command::new("curl")
                        .args(["-sS", "--max-time", "30", "--cacert"])
                        .arg(&root)
                        .args(["--resolve", &format!("{name}:{pebble_port}:127.0.0.1")])
                        .arg(format!("https://{name}:{pebble_port}/"))
                        .output()
                        .unwrap();
                    !out.status.success()
                })
                .count()
        })
    };
    b.upgrade();
    assert_eq!(
        during.join().unwrap(),
        0,
        "requests failed during the upgrade"
    );
    let (status, _, _) = pebble.curl(&root, &name, "/", &[]).expect("after upgrade");
    assert_eq!(status, 200);
    assert_eq!(pebble.orders(), 2, "an upgrade ordered a certificate again");

    // The bare domain routes too (tenement's own paths): its expiry is in /metrics.
    let (status, _, metrics) = pebble
        .curl(&root, DOMAIN, "/metrics", &[])
        .expect("metrics");
    assert_eq!(status, 200);
    assert!(
        metrics.contains(&format!(
            "tenement_tls_certificate_expiry_timestamp_seconds{{name=\"{name}\"}}"
        )),
        "{metrics}"
    );
    assert_eq!(pebble.orders(), 3);
}

/// A websocket through TLS with openssl as the client: the upgrade, then one echoed message.
fn websocket_over_tls(pebble: &Pebble, root: &std::path::Path, name: &str) -> String {
    let mut client = Command::new("openssl")
        .args([
            "s_client",
            "-quiet",
            "-alpn",
            "http/1.1",
            "-verify_return_error",
        ])
        .args(["-connect", &format!("127.0.0.1:{}", pebble.https_port)])
        .args(["-servername", name, "-CAfile"])
        .arg(root)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("openssl s_client");
    let mut input = client.stdin.take().unwrap();
    let mut output = BufReader::new(client.stdout.take().unwrap());
    write!(
        input,
        "GET /ws HTTP/1.1\r\nHost: {name}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
    .unwrap();
    let mut head = String::new();
    loop {
        let mut line = String::new();
        output.read_line(&mut line).unwrap();
        if line.is_empty() || line == "\r\n" {
            break;
        }
        head.push_str(&line);
    }
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    // A masked text frame "over tls" (mask 0), and the echo comes back unmasked.
    let text = b"over tls";
    let mut frame = vec![0x81, 0x80 | text.len() as u8, 0, 0, 0, 0];
    frame.extend_from_slice(text);
    input.write_all(&frame).unwrap();
    input.flush().unwrap();
    let mut echo = [0u8; 10];
    output.read_exact(&mut echo).unwrap();
    let _ = client.kill();
    let _ = client.wait();
    String::from_utf8_lossy(&echo[2..]).into_owned()
}

#[test]
fn tls_alpn_01_issues_and_websockets_work_over_tls() {
    let Some(pebble) = Pebble::start_or_skip(None) else {
        return;
    };
    let (b, root, name) = started(&pebble, "tls-alpn-01");
    let (status, _, body) = pebble.curl(&root, &name, "/", &[]).expect("HTTPS");
    assert_eq!(status, 200, "{body}");
    let log = b.serve_log();
    assert!(log.contains("tls-alpn-01 validation"), "{log}");
    assert!(!log.contains("http-01 validation"), "{log}");
    assert_eq!(websocket_over_tls(&pebble, &root, &name), "over tls");
}

#[test]
fn a_short_lived_certificate_is_renewed_before_it_expires() {
    // Certificates valid 30 s: renewed at 20 s, while the old one keeps serving.
    let Some(pebble) = Pebble::start_or_skip(Some(30)) else {
        return;
    };
    let (b, root, name) = started(&pebble, "http-01");
    assert_eq!(pebble.curl(&root, &name, "/", &[]).map(|r| r.0), Some(200));
    let first = api_tls(&b)["certificates"][0]["not_after"]
        .as_u64()
        .unwrap();
    let renewed = wait_for("a renewal", Duration::from_secs(90), || {
        let after = api_tls(&b)["certificates"][0]["not_after"].as_u64()?;
        (after > first).then_some(after)
    });
    assert!(renewed > first);
    assert_eq!(pebble.orders(), 2);
    assert_eq!(pebble.curl(&root, &name, "/", &[]).map(|r| r.0), Some(200));
}

/// Caddy (Debian's) in front of a plain ten serve, with the Caddyfile `ten caddyfile` writes:
/// Caddy orders a certificate on demand from pebble only for names ten says route.
#[test]
fn caddy_in_front_orders_certificates_only_for_names_ten_routes() {
    let Some(pebble) = Pebble::start_or_skip(None) else {
        return;
    };
    if Command::new("caddy").arg("version").output().is_err() {
        eprintln!("SKIPPED: caddy is not installed (scripts/test installs it)");
        return;
    }
    // ten without TLS; [settings.tls] still says email, CA and ports, for Caddy.
    let tls = pebble
        .tls_section("http-01")
        .replace("enabled = true", "enabled = false");
    let config = format!(
        "{tls}\n[service.web]\ncommand = \"{{fixture}}\"\nsocket = \"{{dir}}/{{name}}-{{id}}.sock\"\nisolation = \"process\"\n"
    );
    let mut b = Building::new(TEN, &config);
    b.start();
    b.ten_ok(&["spawn", "web:prod"]);
    let addr = b.http_addr();
    let caddyfile = b.ten_ok(&["caddyfile", "--upstream", &addr]);
    assert!(
        caddyfile.contains(&format!("ask http://{addr}/api/tls/ask")),
        "{caddyfile}"
    );
    // The test's own: no admin endpoint (tests run side by side), storage in the temp dir.
    let caddyfile = caddyfile.replacen("{\n", "{\n\tadmin off\n", 1);
    let path = b.path().join("Caddyfile");
    std::fs::write(&path, caddyfile).unwrap();
    let log = std::fs::File::create(b.path().join("caddy.log")).unwrap();
    let mut caddy = Command::new("caddy")
        .args(["run", "--adapter", "caddyfile", "--config"])
        .arg(&path)
        .env("XDG_DATA_HOME", b.path().join("caddy-data"))
        .env("XDG_CONFIG_HOME", b.path().join("caddy-config"))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("caddy");
    let caddy_log = || std::fs::read_to_string(b.path().join("caddy.log")).unwrap_or_default();
    wait_for("caddy to listen", Duration::from_secs(60), || {
        if let Ok(Some(status)) = caddy.try_wait() {
            panic!("caddy exited ({status}):\n{}", caddy_log());
        }
        std::net::TcpStream::connect(("127.0.0.1", pebble.https_port)).ok()
    });
    let root = pebble.issuer_root();
    let name = format!("prod.web.{DOMAIN}");
    let got = pebble.curl(&root, &name, "/", &[]);
    let (status, _, body) = got.unwrap_or_else(|| panic!("through caddy:\n{}", caddy_log()));
    assert_eq!((status, body.trim()), (200, "hello from web:prod"));
    assert_eq!(pebble.orders(), 1);
    assert_eq!(
        pebble.curl(&root, &format!("nope.web.{DOMAIN}"), "/", &[]),
        None
    );
    assert_eq!(
        pebble.orders(),
        1,
        "caddy ordered a certificate ten did not allow"
    );
    // Everyone reaches ten through Caddy from loopback: Caddy keeps ten's ask endpoint shut.
    let ask = format!("/api/tls/ask?domain={name}");
    let (status, _, body) = pebble.curl(&root, &name, &ask, &[]).expect("through caddy");
    assert_eq!(status, 404, "{body}");
    assert!(!body.contains("routes here"), "{body}");
    let _ = caddy.kill();
    let _ = caddy.wait();
}

/// The ask endpoint itself: 200 for a name that routes, 404 for one that does not, 400
/// without a name.
#[test]
fn the_ask_endpoint_answers_which_names_route() {
    let mut b = Building::new(
        TEN,
        "[service.web]\ncommand = \"{fixture}\"\nsocket = \"{dir}/{name}-{id}.sock\"\nisolation = \"process\"\n",
    );
    b.start();
    b.ten_ok(&["spawn", "web:prod"]);
    b.ten_ok(&["domain", "add", "shop.customer.org", "web:prod"]);
    let ask = |q: &str| {
        let path = format!("/api/tls/ask{q}");
        let r = test_support::http::request(&b.http_addr(), "127.0.0.1", "GET", &path, &[], None);
        r.expect("ask").status
    };
    assert_eq!(ask(&format!("?domain=prod.web.{DOMAIN}")), 200);
    assert_eq!(ask(&format!("?domain=web.{DOMAIN}")), 200);
    assert_eq!(ask(&format!("?domain={DOMAIN}")), 200);
    assert_eq!(ask("?domain=shop.customer.org"), 200);
    assert_eq!(ask(&format!("?domain=nope.web.{DOMAIN}")), 404);
    assert_eq!(ask(&format!("?domain=a.nosuch.{DOMAIN}")), 404);
    assert_eq!(ask("?domain=example.org"), 404);
    assert_eq!(ask(""), 400);
    // A client that is not on this machine is told nothing (ten listens on loopback here: a
    // connection from the machine's own non-loopback address stands for one).
    let outside = std::net::UdpSocket::bind("0.0.0.0:0")
        .and_then(|u| u.connect("192.0.2.1:9").and_then(|()| u.local_addr()))
        .ok()
        .and_then(|a| match a.ip() {
            std::net::IpAddr::V4(ip) if !ip.is_loopback() => Some(ip),
            _ => None,
        });
    match outside {
        Some(ip) => {
            let path = format!("/api/tls/ask?domain=prod.web.{DOMAIN}");
            let r = test_support::http::request_from(
                ip,
                &b.http_addr(),
                "127.0.0.1",
                "GET",
                &path,
                &[],
            );
            let mut r = r.expect("ask from outside");
            let status = r.status;
            assert_eq!(status, 403, "{:?}", r.text());
        }
        None => eprintln!("SKIPPED (part): no non-loopback IPv4 address to ask from"),
    }
    // A custom domain whose instance is gone routes nowhere.
    b.ten_ok(&["stop", "web:prod"]);
    assert_eq!(ask("?domain=shop.customer.org"), 404);
}
