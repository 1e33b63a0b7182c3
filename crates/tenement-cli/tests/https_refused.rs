//! HTTPS when things are wrong: bad `[settings.tls]`, a port taken, a CA that cannot be
//! reached; and attacks on the new surfaces: clients that never finish a handshake, names
//! made up to make the server order certificates, odd Host headers at the HTTP port.

use std::io::{Read, Write};
use std::process::Command;
use std::time::{Duration, Instant};

use test_support::acme::{Pebble, free_port};
use test_support::{Building, DOMAIN, SOON, wait_for};

const TEN: &str = env!("CARGO_BIN_EXE_ten");

const SERVICE: &str = "[service.web]\ncommand = \"{fixture}\"\nsocket = \"{dir}/{name}-{id}.sock\"\nisolation = \"process\"\n";

/// `ten serve` as the harness runs it, to its end (it is expected to refuse to start).
fn serve_refused(b: &Building, extra: &[&str]) -> String {
    let out = b
        .cmd(&["serve", "--port", "0", "--bind", "127.0.0.1"])
        .args(extra)
        .output()
        .expect("ten serve");
    assert!(!out.status.success(), "ten serve started");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn bad_tls_settings_are_refused_naming_what_to_fix() {
    let check = |config: &str, why: &str| {
        let b = Building::new(TEN, config);
        let out = b.ten(&["config", "--check"]);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success(), "accepted:\n{config}");
        assert!(err.contains(why), "{err}");
        assert!(err.contains("tenement.toml:"), "no file and line: {err}");
    };
    check(
        "[settings.tls]\nenabled = true\ndomain = \"example.com\"\n",
        "settings.tls.acme_email: required when TLS is enabled",
    );
    check(
        "[settings.tls]\nenabled = true\nacme_email = \"a@example.com\"\n",
        "settings.tls.domain: required when TLS is enabled",
    );
    check(
        "[settings.tls]\nenabled = true\nacme_email = \"nobody\"\ndomain = \"example.com\"\n",
        "is not an email address",
    );
    check(
        "[settings.tls]\ndirectory_url = \"ftp://ca.example\"\n",
        "settings.tls.directory_url",
    );
    check(
        "[settings.tls]\nchallenge = \"dns-02\"\n",
        "settings.tls.challenge",
    );
    check(
        "[settings.tls]\nhttps_port = 8443\nhttp_port = 8443\n",
        "https_port and http_port must differ",
    );
    // A service named like the default cache_dir: its instances would own the keys.
    check(
        &format!(
            "[settings.tls]\nenabled = true\nacme_email = \"a@example.com\"\ndomain = \"example.com\"\n\n{}",
            SERVICE.replace("service.web", "service.acme")
        ),
        "would hold [settings.tls] cache_dir",
    );

    // From the command line: --tls needs an email and a domain.
    let b = Building::new(TEN, SERVICE);
    let err = serve_refused(&b, &["--tls"]);
    assert!(err.contains("TLS needs an email"), "{err}");
    let err = serve_refused(&b, &["--tls", "--email", "ops@example.com"]);
    assert!(err.contains("TLS needs a domain"), "{err}");
}

#[test]
fn an_https_port_in_use_is_said_and_nothing_starts() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let config = format!(
        "[settings.tls]\nenabled = true\nacme_email = \"a@{DOMAIN}\"\ndomain = \"{DOMAIN}\"\nhttps_port = {port}\nhttp_port = {}\n\n{SERVICE}",
        free_port()
    );
    let b = Building::new(TEN, &config);
    let err = serve_refused(&b, &[]);
    assert!(
        err.contains(&format!("cannot listen on 127.0.0.1:{port} (https_port)")),
        "{err}"
    );
    // Nothing half-done: no control socket left behind, no instance started.
    assert!(!b.data_dir().join("ten.sock").exists());
    assert!(b.tenant_processes().is_empty());
}

#[test]
fn an_unreachable_ca_fails_the_handshake_fast_and_backs_off() {
    let (http_port, https_port) = (free_port(), free_port());
    let config = format!(
        "[settings]\nheader_timeout = 2\n\n[settings.tls]\nenabled = true\nacme_email = \"a@{DOMAIN}\"\n\
         domain = \"{DOMAIN}\"\ndirectory_url = \"https://127.0.0.1:1/dir\"\nhttps_port = {https_port}\n\
         http_port = {http_port}\n\n{SERVICE}"
    );
    let mut b = Building::new(TEN, &config);
    b.http_port = http_port;
    // A damaged account file: kept aside (it may be the only copy of a key), not trusted.
    let cache = b.data_dir().join("acme");
    std::fs::create_dir_all(&cache).unwrap();
    std::fs::write(cache.join("account.json"), "{ not json").unwrap();
    b.start();
    b.ten_ok(&["spawn", "web:prod"]);
    let name = format!("prod.web.{DOMAIN}");
    let handshake = || {
        let started = Instant::now();
        let out = Command::new("curl")
            .args(["-sSk", "--max-time", "60", "--resolve"])
            .arg(format!("{name}:{https_port}:127.0.0.1"))
            .arg(format!("https://{name}:{https_port}/"))
            .output()
            .expect("curl");
        (out.status.success(), started.elapsed())
    };
    let (ok, _) = handshake();
    assert!(!ok, "served without a certificate");
    let log = wait_for("the CA's failure in the log", SOON, || {
        let log = b.serve_log();
        log.contains("https://127.0.0.1:1/dir").then_some(log)
    });
    assert!(log.contains("no certificate"), "{log}");
    assert!(log.contains("does not parse"), "{log}");
    let kept = std::fs::read_to_string(cache.join("account.json.unreadable")).unwrap();
    assert_eq!(kept, "{ not json");
    // Within the backoff the next handshake fails at once, without trying the CA again.
    let (ok, took) = handshake();
    assert!(!ok);
    assert!(took < Duration::from_secs(20), "{took:?}");
    let log = b.serve_log();
    assert_eq!(
        log.matches("WARN tenement_tls: no certificate").count(),
        1,
        "{log}"
    );
    assert!(log.contains("next attempt in"), "{log}");
    // The rest of the server goes on: the HTTP port redirects, the API answers.
    let mut s = std::net::TcpStream::connect(("127.0.0.1", http_port)).unwrap();
    write!(
        s,
        "GET / HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 308"), "{answer}");
    let (status, body) =
        test_support::get_unix(&b.data_dir().join("ten.sock"), "/api/tls").unwrap();
    assert_eq!(status, 200);
    assert!(body.contains("\"certificates\":[]"), "{body}");
}

#[test]
fn clients_that_never_finish_a_handshake_are_dropped_and_made_up_names_order_nothing() {
    let Some(pebble) = Pebble::start_or_skip(None) else {
        return;
    };
    let config = format!(
        "[settings]\nheader_timeout = 2\n\n{}\n{SERVICE}\n[service.open]\ncommand = \"{{fixture}}\"\n\
         socket = \"{{dir}}/{{name}}-{{id}}.sock\"\nisolation = \"process\"\nspawn_on_request = true\n",
        pebble.tls_section("http-01")
    );
    let mut b = Building::new(TEN, &config);
    b.http_port = pebble.http_port;
    b.start();
    let port = pebble.https_port;

    // Silent, and garbage: both closed (the silent one after header_timeout).
    let silent = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut garbage = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    garbage
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    for mut s in [garbage, silent] {
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let started = Instant::now();
        // (A TLS alert may come first.)
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
        assert!(
            started.elapsed() < Duration::from_secs(25),
            "connection kept for {:?}",
            started.elapsed()
        );
    }

    // Names anyone can make up: instances that do not exist (even of a service that would
    // create them on request), other services, other domains. No order, no instance.
    let root = pebble.issuer_root();
    for i in 0..20 {
        for name in [
            format!("x{i}.open.{DOMAIN}"),
            format!("x{i}.web.{DOMAIN}"),
            format!("x{i}.{DOMAIN}"),
            format!("x{i}.example.org"),
        ] {
            let out = Command::new("curl")
                .args(["-sS", "--max-time", "30", "--cacert"])
                .arg(&root)
                .arg("--resolve")
                .arg(format!("{name}:{port}:127.0.0.1"))
                .arg(format!("https://{name}:{port}/"))
                .output()
                .unwrap();
            assert!(!out.status.success(), "{name} served");
        }
    }
    assert_eq!(pebble.orders(), 0, "made-up names made the server order");
    assert!(
        b.ps().is_empty(),
        "a handshake created an instance: {:?}",
        b.ps()
    );

    // Two steps: a request to the service's own name (which has a certificate) creates a
    // made-up instance; a handshake for that instance's name must still order nothing, or
    // anyone could spend the week's budget (and the CA's limit) that way.
    let service = format!("open.{DOMAIN}");
    for i in 0..3 {
        let host = format!("Host: evil{i}.open.{DOMAIN}");
        let got = pebble.curl(&root, &service, "/", &["--http1.1", "-H", &host]);
        assert!(got.is_some_and(|r| r.2.contains(&format!("open:evil{i}"))));
        let made_up = format!("evil{i}.open.{DOMAIN}");
        assert_eq!(
            pebble.curl(&root, &made_up, "/", &[]),
            None,
            "{made_up} served"
        );
    }
    assert_eq!(
        pebble.orders(),
        1,
        "only the service's own name: {}",
        pebble.log()
    );

    // The HTTP port redirects only to plain host names.
    for host in ["evil.example/@x", "a b", "x\"y", ""] {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", pebble.http_port)).unwrap();
        write!(
            s,
            "GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 400"), "{host:?}: {answer}");
        assert!(
            !answer.to_ascii_lowercase().contains("location:"),
            "{answer}"
        );
    }
    // No challenge answers but the CA's own, while an order is open.
    let mut s = std::net::TcpStream::connect(("127.0.0.1", pebble.http_port)).unwrap();
    write!(
        s,
        "GET /.well-known/acme-challenge/../../etc HTTP/1.1\r\nHost: {DOMAIN}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
}
