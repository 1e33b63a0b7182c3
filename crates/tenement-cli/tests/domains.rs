//! Custom domains (`ten domain add|rm|ls`, `/api/domains`): a customer's own name routed to
//! one instance (waking it), kept across restarts, refused when it is not a name, is taken,
//! belongs to the server's own domain or names no instance, and admin-only.

use test_support::{Building, DOMAIN, http, wait_for};

const TEN: &str = env!("CARGO_BIN_EXE_ten");

const CONFIG: &str = r#"
[settings]
health_check_interval = 60

[service.web]
command = "{fixture}"
socket = "{dir}/{name}-{id}.sock"
isolation = "process"
idle_timeout = 1
"#;

fn get(b: &Building, host: &str, path: &str) -> (u16, String) {
    let mut r = http::request(&b.http_addr(), host, "GET", path, &[], None).expect("request");
    (r.status, r.text().unwrap_or_default())
}

#[test]
fn a_custom_domain_routes_to_its_instance_and_survives_a_restart() {
    let mut b = Building::new(TEN, CONFIG);
    b.start();
    b.ten_ok(&["spawn", "web:alice"]);
    b.ten_ok(&["spawn", "web:bob"]);
    let out = b.ten_ok(&["domain", "add", "Shop.Customer.org", "web:alice"]);
    assert!(out.contains("shop.customer.org → web:alice"), "{out}");

    // Any path, any case, a port or a final dot: alice answers. The name was only a custom
    // domain: before, it reached tenement itself (a name outside the domain).
    for host in [
        "shop.customer.org",
        "SHOP.customer.ORG:8080",
        "shop.customer.org.",
    ] {
        let (status, body) = get(&b, host, "/some/path");
        assert_eq!(status, 404, "{host}: {body}"); // the fixture's own 404 for /some/path
        let (status, body) = get(&b, host, "/");
        assert_eq!(
            (status, body.as_str()),
            (200, "hello from web:alice\n"),
            "{host}"
        );
    }
    // tenement's own paths on that name are alice's too: the name is hers.
    let (_, body) = get(&b, "shop.customer.org", "/health");
    assert!(!body.contains("instances"), "{body}");

    // It wakes a sleeping instance.
    b.wait_instance("web:alice", "asleep", |i| i["state"] == "sleeping");
    let (status, _) = get(&b, "shop.customer.org", "/");
    assert_eq!(status, 200);

    // Listed, and kept across a restart of ten serve.
    let ls = b.ten_ok(&["domain", "ls"]);
    assert!(
        ls.contains("shop.customer.org") && ls.contains("web:alice"),
        "{ls}"
    );
    b.terminate();
    b.start();
    let (status, body) = get(&b, "shop.customer.org", "/");
    assert_eq!((status, body.as_str()), (200, "hello from web:alice\n"));

    // Removed: the name reaches no instance any more.
    b.ten_ok(&["domain", "rm", "shop.customer.org"]);
    let (_, body) = get(&b, "shop.customer.org", "/");
    assert!(!body.contains("web:alice"), "{body}");
    let out = b.ten(&["domain", "rm", "shop.customer.org"]);
    assert!(!out.status.success());
}

#[test]
fn bad_custom_domains_are_refused_with_their_reason_and_change_nothing() {
    let mut b = Building::new(TEN, CONFIG);
    b.start();
    b.ten_ok(&["spawn", "web:alice"]);
    b.ten_ok(&["spawn", "web:bob"]);
    b.ten_ok(&["domain", "add", "shop.customer.org", "web:alice"]);
    let refused = |args: &[&str], why: &str| {
        let out = b.ten(args);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success(), "{args:?} accepted");
        assert!(err.contains(why), "{args:?}: {err}");
    };
    let own = format!("bob.web.{DOMAIN}");
    let cases: [(&str, &str, &str); 9] = [
        (
            "shop.customer.org",
            "web:bob",
            "already routes to web:alice",
        ),
        ("not a name", "web:bob", "not a domain name"),
        ("x/../y.org", "web:bob", "not a domain name"),
        ("localhost", "web:bob", "not a fully qualified"),
        ("10.0.0.1", "web:bob", "not a fully qualified"),
        (DOMAIN, "web:bob", "own domain"),
        (&own, "web:bob", "own domain"),
        ("new.customer.org", "web:nobody", "no instance web:nobody"),
        ("new.customer.org", "nope:x", "no instance nope:x"),
    ];
    for (name, instance, why) in cases {
        refused(&["domain", "add", name, instance], why);
    }
    let ls = b.ten_ok(&["domain", "ls"]);
    assert_eq!(ls.lines().count(), 2, "{ls}");

    // A tenant's token may neither add, list nor remove domains: a domain routes the whole
    // internet's requests for a name.
    let token = b
        .ten_ok(&["token-gen", "--tenant", "alice"])
        .trim()
        .to_owned();
    let url = format!("http://{}", b.http_addr());
    for args in [
        vec!["domain", "add", "mine.alice.org", "web:alice"],
        vec!["domain", "ls"],
        vec!["domain", "rm", "shop.customer.org"],
    ] {
        let mut full = args.clone();
        full.extend(["--server", &url, "--token", &token]);
        let out = b.ten(&full);
        assert!(!out.status.success(), "{args:?} allowed to a tenant");
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(err.contains("admin"), "{args:?}: {err}");
    }
    // Nor see the certificates (every tenant's names); nobody without a token at all.
    let bearer = format!("Bearer {token}");
    let tls = |auth: &[(&str, &str)]| {
        let r = http::request(&b.http_addr(), "127.0.0.1", "GET", "/api/tls", auth, None);
        r.expect("/api/tls").status
    };
    assert_eq!(tls(&[("Authorization", bearer.as_str())]), 403);
    assert_eq!(tls(&[]), 401);
    wait_for("the domain still there", test_support::SOON, || {
        b.ten_ok(&["domain", "ls"])
            .contains("shop.customer.org")
            .then_some(())
    });
}
