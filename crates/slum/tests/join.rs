//! Real tenement servers joining a real `slum serve`: leases, heartbeats, bad tokens.

mod common;

use common::fleet::{Slum, signal, tenement};
use common::http;
use test_support::{SOON, wait_for};

#[test]
fn a_server_joins_heartbeats_and_loses_its_lease_when_silent() {
    let slum = Slum::start(1500);
    // The join token is slum's alone to read.
    let file = slum.dir.path().join("slum.db.join-token");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(file).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    let b = tenement(&slum, "east", &slum.token("slum.db.join-token"));
    let east = wait_for("east to join", SOON, || {
        slum.state_of("east").filter(|s| s["state"] == "up")
    });
    assert!(east["capacity"]["cpus"].as_u64().unwrap() >= 1, "{east}");
    assert!(
        east["capacity"]["memory_mb"].as_u64().unwrap() > 0,
        "{east}"
    );
    assert_eq!(east["url"], format!("http://{}", b.http_addr()));
    // Its instances are counted.
    b.ten_ok(&["spawn", "app:one"]);
    wait_for("the instance to be reported", SOON, || {
        slum.state_of("east")
            .filter(|s| s["capacity"]["instances"] == 1)
    });

    // Silent (paused): its lease runs out.
    signal(b.server_pid(), libc::SIGSTOP);
    wait_for("east to be down", SOON, || {
        slum.state_of("east").filter(|s| s["state"] == "down")
    });
    // Down, its id still cannot be taken with the join token alone.
    let hijack = r#"{"id":"east","url":"http://10.6.6.6:80","domain":"evil.test","capacity":{}}"#;
    let join = slum.token("slum.db.join-token");
    let (status, said) = http(&slum.url, "POST", "/api/join", &join, hijack);
    assert_eq!(status, 409, "{said}");
    signal(b.server_pid(), libc::SIGCONT);
    wait_for("east to be up again", SOON, || {
        slum.state_of("east").filter(|s| s["state"] == "up")
    });
}

#[test]
fn a_wrong_join_token_or_a_forged_heartbeat_changes_nothing() {
    let slum = Slum::start(1500);
    let b = tenement(&slum, "east", "0123456789abcdef0123456789abcdef");
    wait_for("the refusal in the log", SOON, || {
        b.serve_log()
            .contains("cannot join the slum fleet")
            .then_some(())
    });
    assert!(slum.state_of("east").is_none());
    // A real server joins; someone with the join token but not its secret cannot speak for it.
    let _real = tenement(&slum, "west", &slum.token("slum.db.join-token"));
    wait_for("west to join", SOON, || {
        slum.state_of("west").filter(|s| s["state"] == "up")
    });
    let forged = r#"{"id":"west","capacity":{"memory_mb":1,"free_memory_mb":999999,"cpus":64,"instances":0}}"#;
    for token in [
        slum.token("slum.db.join-token"),
        slum.token("slum.db.token"),
        String::new(),
    ] {
        let (status, _) = http(&slum.url, "POST", "/api/heartbeat", &token, forged);
        assert_eq!(status, 401);
    }
    assert_ne!(slum.state_of("west").unwrap()["capacity"]["cpus"], 64);
    // Nor can it take a live server's place by joining under its id (its tenants' traffic
    // would follow the URL).
    let hijack = r#"{"id":"west","url":"http://10.6.6.6:80","domain":"evil.test","capacity":{}}"#;
    let (status, said) = http(
        &slum.url,
        "POST",
        "/api/join",
        &slum.token("slum.db.join-token"),
        hijack,
    );
    assert_eq!(status, 409, "{said}");
    assert!(said.contains("has joined before"), "{said}");
    assert_eq!(
        slum.state_of("west").unwrap()["url"],
        format!("http://{}", _real.http_addr())
    );
    // What a server tells its peers about its lease needs the join token too.
    let west = format!("http://{}", _real.http_addr());
    for token in [String::new(), slum.token("slum.db.token"), "x".repeat(48)] {
        assert_eq!(http(&west, "GET", "/api/fleet/lease", &token, "").0, 401);
    }
    let (status, said) = http(
        &west,
        "GET",
        "/api/fleet/lease",
        &slum.token("slum.db.join-token"),
        "",
    );
    assert_eq!(status, 200, "{said}");
    assert!(said.contains("\"lease_held\":true"), "{said}");
    // The join token is not the admin token.
    let (status, _) = http(
        &slum.url,
        "GET",
        "/api/servers",
        &slum.token("slum.db.join-token"),
        "",
    );
    assert_eq!(status, 401);
}
