//! The tenant boundary against anonymous clients: a flood of idle connections past the
//! server's descriptors, a spray of bad tokens. Neither may fail a healthy tenant, grow the
//! server, or delay an admin. (Tenants' own attacks: hostile_tenant.rs.)

use std::net::Ipv4Addr;
use std::time::Duration;

use test_support::http::{connect_from, request_from};
use test_support::{Building, SOON, wait_for};

const TEN: &str = env!("CARGO_BIN_EXE_ten");

fn root() -> bool {
    test_support::root_or_skip("the fd-flood test sets ten serve's descriptor limit: root")
}

const TWO: &str = r#"
[service.web]
command = "{fixture}"
health = "/health"
"#;

fn front(b: &Building, key: &str, method: &str, path: &str) -> (u16, String) {
    b.front(key, method, path)
}

#[test]
fn a_flood_of_idle_connections_never_fails_a_healthy_tenant() {
    if !root() {
        return;
    }
    let mut b = Building::new(
        TEN,
        r#"
[settings]
health_check_interval = 1

[service.web]
command = "{fixture}"
health = "/health"
"#,
    );
    b.fd_limit = Some(512);
    b.start();
    b.ten_ok(&["spawn", "web:a"]);
    let addr = b.http_addr();
    // Far more idle connections than ten serve has descriptors, from many addresses.
    let mut flood = Vec::new();
    for i in 0..1500u32 {
        let from = Ipv4Addr::new(127, 0, 1 + (i / 200) as u8, 1 + (i % 200) as u8);
        if let Ok(s) = connect_from(from, &addr) {
            flood.push(s);
        }
    }
    assert!(flood.len() > 1000, "{} connections", flood.len());
    // Health checks, spawns and the API keep working meanwhile.
    std::thread::sleep(Duration::from_secs(4));
    b.ten_ok(&["spawn", "web:b"]);
    let a = b.instance("web:a").unwrap();
    assert_eq!(a["state"], "running", "{a}");
    assert_eq!(a["restarts"], 0, "{a}");
    assert_eq!(a["health_check_failures"], 0, "{a}");
    drop(flood);
    wait_for("the front door to serve again", SOON, || {
        (front(&b, "web:a", "GET", "/").1 == "hello from web:a\n").then_some(())
    });
    assert!(b.serve_log().contains("front door full"));
}

/// VmRSS of `pid`, in KiB.
fn rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

#[test]
fn a_spray_of_bad_tokens_costs_no_memory_and_never_delays_the_admin() {
    let mut b = Building::new(TEN, TWO);
    b.start();
    let admin = format!("Bearer {}", b.ten_ok(&["token-gen"]).trim());
    let addr = b.http_addr();
    let port = addr.rsplit(':').next().unwrap();
    let target = format!("127.0.0.1:{port}");
    let warm = |from| {
        request_from(
            from,
            &target,
            &addr,
            "GET",
            "/api/instances",
            &[("Authorization", &admin)],
        )
        .unwrap()
        .status
    };
    assert_eq!(warm(Ipv4Addr::new(127, 0, 0, 9)), 200);
    let before = rss_kb(b.server_pid());
    // 300 bad tokens, each address within its limit (ten a minute): 150 addresses, two each,
    // naming the admin token's id (so each would be checked against a stored hash).
    let id = admin.split('_').nth(1).unwrap().to_owned();
    let threads: Vec<_> = (0..150u32)
        .map(|i| {
            let (target, addr, id) = (target.clone(), addr.clone(), id.clone());
            std::thread::spawn(move || {
                let from = Ipv4Addr::new(127, 0, 2 + (i / 100) as u8, 1 + (i % 100) as u8);
                let bad = format!("Bearer ten_{id}_{}", "0".repeat(48));
                for _ in 0..2 {
                    let r = request_from(
                        from,
                        &target,
                        &addr,
                        "GET",
                        "/api/instances",
                        &[("Authorization", &bad)],
                    )
                    .unwrap();
                    assert_eq!(r.status, 401);
                }
            })
        })
        .collect();
    threads.into_iter().for_each(|t| t.join().unwrap());
    assert_eq!(warm(Ipv4Addr::new(127, 0, 0, 9)), 200);
    let grown = rss_kb(b.server_pid()).saturating_sub(before);
    assert!(
        grown < 20 * 1024,
        "ten serve grew by {grown} KiB over 300 bad tokens"
    );
}
