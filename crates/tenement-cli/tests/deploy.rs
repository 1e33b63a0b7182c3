//! Blue-green and rolling deploys lose no request: `ten deploy`, `ten route`, `--replace`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use test_support::Building;
use test_support::http::get;

const TEN: &str = env!("CARGO_BIN_EXE_ten");

const CONFIG: &str = r#"
[settings]
health_check_interval = 1

[service.api]
command = "{fixture}"
socket = "{dir}/s/{name}-{id}.sock"
health = "/health"
isolation = "process"

[service.broken]
command = "{fixture} --hang"
socket = "{dir}/s/{name}-{id}.sock"
isolation = "process"
"#;

/// Requests `api.tenement.test` in a loop until stopped; returns (status, body) of each.
fn steady_loop(addr: String, stop: Arc<AtomicBool>) -> thread::JoinHandle<Vec<(u16, String)>> {
    thread::spawn(move || {
        let mut seen = vec![];
        while !stop.load(Ordering::SeqCst) {
            let r =
                get(&addr, "api.tenement.test", "/").and_then(|mut r| Ok((r.status, r.text()?)));
            seen.push(r.unwrap_or((0, "connection error".into())));
        }
        seen
    })
}

#[test]
fn blue_green_with_route_loses_nothing() {
    let mut b = Building::new(TEN, CONFIG);
    b.start();
    b.ten_ok(&["spawn", "api:v1"]);
    let stop = Arc::new(AtomicBool::new(false));
    let lp = steady_loop(b.http_addr(), stop.clone());
    thread::sleep(Duration::from_millis(300));
    let out = b.ten_ok(&["deploy", "api:v2", "--weight", "0"]);
    assert!(out.contains("api:v2 running"), "{out}");
    thread::sleep(Duration::from_millis(300));
    b.ten_ok(&["route", "api", "--from", "v1", "--to", "v2"]);
    thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::SeqCst);
    let seen = lp.join().unwrap();
    assert!(seen.len() > 20, "the loop ran ({})", seen.len());
    assert!(
        seen.iter().all(|(c, _)| *c == 200),
        "{:?}",
        seen.iter().filter(|(c, _)| *c != 200).collect::<Vec<_>>()
    );
    let first_v2 = seen
        .iter()
        .position(|(_, body)| body.contains("api:v2"))
        .expect("v2 got traffic");
    assert!(
        seen[first_v2..]
            .iter()
            .all(|(_, body)| body.contains("api:v2")),
        "after route, only v2"
    );
    assert_eq!(b.instance("api:v1").unwrap()["weight"], 0);
    assert_eq!(b.instance("api:v2").unwrap()["weight"], 100);
    // Routing an instance to itself is refused, and changes nothing.
    let out = b.ten(&["route", "api", "--from", "v2", "--to", "v2"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("to itself"), "{err}");
    assert_eq!(b.instance("api:v2").unwrap()["weight"], 100);

    // Weights are durable.
    b.kill9();
    b.start();
    b.wait_instance("api:v2", "back", |i| i["state"] == "running");
    assert_eq!(b.instance("api:v1").unwrap()["weight"], 0);
    assert_eq!(b.instance("api:v2").unwrap()["weight"], 100);
}

#[test]
fn rolling_replace_stops_the_old_one_after_the_new_is_healthy() {
    let mut b = Building::new(TEN, CONFIG);
    b.start();
    b.ten_ok(&["spawn", "api:v1"]);
    let stop = Arc::new(AtomicBool::new(false));
    let lp = steady_loop(b.http_addr(), stop.clone());
    thread::sleep(Duration::from_millis(300));
    b.ten_ok(&["deploy", "api:v2", "--replace", "v1"]);
    thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::SeqCst);
    let seen = lp.join().unwrap();
    assert!(
        seen.iter().all(|(c, _)| *c == 200),
        "{:?}",
        seen.iter().filter(|(c, _)| *c != 200).collect::<Vec<_>>()
    );
    assert!(seen.last().unwrap().1.contains("api:v2"));
    assert!(b.instance("api:v1").is_none(), "v1 stopped");

    // The API takes the instance to replace as the CLI does: `v2` or `api:v2`; and a timeout
    // of 0 s is refused, as the CLI refuses it.
    let auth = format!("Bearer {}", b.ten_ok(&["token-gen"]).trim());
    let headers = [
        ("Authorization", auth.as_str()),
        ("Content-Type", "application/json"),
    ];
    let deploy = |body: &str| {
        let mut bytes = body.as_bytes();
        let body = Some((bytes.len() as u64, &mut bytes as &mut dyn std::io::Read));
        test_support::http::request(
            &b.http_addr(),
            "tenement.test",
            "POST",
            "/api/deploy",
            &headers,
            body,
        )
        .unwrap()
        .status
    };
    assert_eq!(deploy(r#"{"service":"api","id":"v3","timeout":0}"#), 400);
    assert_eq!(
        deploy(r#"{"service":"api","id":"v3","replace":"api:v2"}"#),
        201
    );
    assert!(b.instance("api:v2").is_none(), "v2 replaced");
}

#[test]
fn a_deploy_that_never_gets_healthy_fails_and_is_undone() {
    let mut b = Building::new(TEN, CONFIG);
    b.start();
    let out = b.ten(&["deploy", "broken:v1", "--timeout", "1"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("broken:v1") && err.contains("not healthy within 1s"),
        "{err}"
    );
    assert!(b.instance("broken:v1").is_none());
    assert!(b.tenant_processes().is_empty());
}

#[test]
fn a_server_crash_mid_deploy_brings_the_new_instance_back_without_traffic() {
    let mut b = Building::new(TEN, CONFIG);
    b.start();
    // Never gets healthy: the deploy is still waiting when the server dies.
    let mut deploy = b
        .cmd(&["deploy", "broken:v1", "--timeout", "60"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    b.wait_instance("broken:v1", "being deployed", |i| i["state"] == "starting");
    b.kill9();
    assert!(!deploy.wait().unwrap().success());
    b.start();
    let back = b.wait_instance("broken:v1", "back", |_| true);
    assert_eq!(
        back["weight"], 0,
        "not as if the deploy had succeeded: {back}"
    );
}

#[test]
fn a_stopping_or_backing_off_instance_is_not_picked_while_a_sibling_serves() {
    let mut b = Building::new(
        TEN,
        r#"
[settings]
backoff_base_ms = 20000
backoff_max_ms = 20000

[service.api]
command = "{fixture} --ignore-sigterm"
socket = "{dir}/s/{name}-{id}.sock"
isolation = "process"
stop_timeout = 20
"#,
    );
    b.start();
    let addr = b.http_addr();
    for id in ["a", "b", "c"] {
        b.ten_ok(&["spawn", &format!("api:{id}")]);
    }
    // b crashes and backs off for 20 s; c is stopped and ignores SIGTERM for 20 s.
    let _ = test_support::get_unix(&b.socket("api:b"), "/exit?code=1");
    b.wait_instance("api:b", "backing off", |i| i["state"] == "backing-off");
    let mut stopping = b.cmd(&["stop", "api:c"]).spawn().unwrap();
    b.wait_instance("api:c", "stopping", |i| i["state"] == "stopping");
    for _ in 0..30 {
        let mut r = get(&addr, "api.tenement.test", "/").unwrap();
        assert_eq!(
            (r.status, r.text().unwrap()),
            (200, "hello from api:a\n".into())
        );
    }
    let _ = stopping.kill();
    let _ = stopping.wait();
}
