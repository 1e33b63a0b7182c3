//! Wildcard certificates by DNS-01 through a real BIND 9 taking TSIG-signed dynamic updates
//! (RFC 2136), with pebble resolving through that BIND: one certificate per service serves all
//! of its instances.

use std::time::Duration;

use test_support::acme::Pebble;
use test_support::dns::Bind;
use test_support::{Building, DOMAIN, wait_for};

const TEN: &str = env!("CARGO_BIN_EXE_ten");

fn curl_ok(b: &Building, pebble: &Pebble, root: &std::path::Path, name: &str) -> String {
    let got = pebble.curl(root, name, "/", &[]);
    got.unwrap_or_else(|| panic!("{name}: no answer\n{}", b.serve_log()))
        .2
}

/// A server whose DNS-01 answers go to `bind`, signed with `secret`.
fn building(pebble: &Pebble, bind: &Bind, secret: &str) -> Building {
    let config = format!(
        "{}dns_provider = \"rfc2136\"\n\n[settings.tls.rfc2136]\nserver = \"{}\"\nkey_name = \"{}\"\n\
         key_secret = \"{secret}\"\n\n[service.web]\ncommand = \"{{fixture}}\"\n\
         socket = \"{{dir}}/{{name}}-{{id}}.sock\"\nisolation = \"process\"\n",
        pebble.tls_section("http-01"),
        bind.addr,
        bind.key_name,
    );
    let mut b = Building::new(TEN, &config);
    b.http_port = pebble.http_port;
    b
}

#[test]
fn instances_share_their_services_wildcard_proven_by_dns01() {
    let Some(bind) = Bind::start_or_skip(DOMAIN, &["web"]) else {
        return;
    };
    let Some(pebble) = Pebble::start_with(None, Some(bind.addr)) else {
        return;
    };
    let mut b = building(&pebble, &bind, &bind.key_secret);
    b.start();
    b.ten_ok(&["spawn", "web:a"]);
    b.ten_ok(&["spawn", "web:b"]);
    let root = pebble.issuer_root();
    assert!(curl_ok(&b, &pebble, &root, &format!("a.web.{DOMAIN}")).contains("hello from web:a"));
    assert!(curl_ok(&b, &pebble, &root, &format!("b.web.{DOMAIN}")).contains("hello from web:b"));
    b.ten_ok(&["spawn", "web:c"]);
    assert!(curl_ok(&b, &pebble, &root, &format!("c.web.{DOMAIN}")).contains("hello from web:c"));
    assert_eq!(
        pebble.orders(),
        1,
        "one wildcard should serve every instance"
    );
    let (_, body) =
        test_support::get_unix(&b.data_dir().join("ten.sock"), "/api/tls").expect("/api/tls");
    let tls: serde_json::Value = serde_json::from_str(&body).unwrap();
    let names = tls["certificates"][0]["names"].to_string();
    assert!(names.contains(&format!("*.web.{DOMAIN}")), "{tls}");
    assert!(names.contains(&format!("\"web.{DOMAIN}\"")), "{tls}");
    // The challenge record went into the zone by signed update, and out again.
    let log = wait_for("the record removed", Duration::from_secs(30), || {
        let log = bind.log();
        log.contains("deleting an RR").then_some(log)
    });
    assert!(
        log.contains("adding an RR at '_acme-challenge.web"),
        "{log}"
    );
    // The secret never shows in the configuration the API gives out.
    let (_, config) =
        test_support::get_unix(&b.data_dir().join("ten.sock"), "/api/config").unwrap();
    assert!(!config.contains(&bind.key_secret), "{config}");
}

#[test]
fn a_wrong_tsig_key_fails_the_order_and_says_why() {
    let Some(bind) = Bind::start_or_skip(DOMAIN, &["web"]) else {
        return;
    };
    let Some(pebble) = Pebble::start_with(None, Some(bind.addr)) else {
        return;
    };
    let wrong = "d3JvbmcgYnV0IHdlbGwtZm9ybWVkIGtleSBvZiAzMiBieXRlcyE=";
    let mut b = building(&pebble, &bind, wrong);
    b.start();
    b.ten_ok(&["spawn", "web:a"]);
    let log = wait_for(
        "the refused update in the log",
        Duration::from_secs(60),
        || {
            let log = b.serve_log();
            log.contains("no certificate").then_some(log)
        },
    );
    assert!(log.contains("DNS update"), "{log}");
}
