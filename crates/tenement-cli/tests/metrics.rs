//! `/metrics`: Prometheus exposition that promtool accepts, with request, wake and instance
//! figures, and label values that never come from what a client sent.

use std::io::{Read, Write};
use std::net::TcpStream;

use test_support::Building;
use test_support::http::{get, request};

const TEN: &str = env!("CARGO_BIN_EXE_ten");

const CONFIG: &str = r#"
[service.web]
command = "{fixture}"
socket = "{dir}/s/{name}-{id}.sock"
health = "/health"
idle_timeout = 1
isolation = "process"
"#;

fn metrics(addr: &str) -> String {
    let mut r = get(addr, "tenement.test", "/metrics").unwrap();
    assert_eq!(r.status, 200);
    r.text().unwrap()
}

fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

#[test]
fn exposition_passes_promtool_and_counts_what_happened() {
    let mut b = Building::new(TEN, CONFIG);
    b.start();
    let addr = b.http_addr();
    b.ten_ok(&["spawn", "web:a"]);
    b.wait_instance("web:a", "asleep", |i| i["state"] == "sleeping");
    for _ in 0..3 {
        assert_eq!(get(&addr, "a.web.tenement.test", "/").unwrap().status, 200);
    }
    assert_eq!(get(&addr, "zz.web.tenement.test", "/").unwrap().status, 404);
    // Hostile Host headers and paths never become label values.
    for host in [
        "evil\"} 1\nfake_metric 1",
        "a.web.tenement.test:1\"",
        "x\\.web.tenement.test",
    ] {
        let mut s = TcpStream::connect(&addr).unwrap();
        let _ = write!(
            s,
            "GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        );
        let _ = s.read_to_end(&mut Vec::new());
    }
    let _ = request(&addr, "a.web.tenement.test", "GET", "/\"}{", &[], None);

    let text = metrics(&addr);
    assert_eq!(
        value(
            &text,
            r#"tenement_requests_total{service="web",class="2xx"}"#
        ),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        value(
            &text,
            r#"tenement_requests_total{service="web",class="4xx"}"#
        ),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        value(
            &text,
            r#"tenement_wake_duration_seconds_count{service="web"}"#
        ),
        Some(1.0),
        "one wake: {text}"
    );
    assert_eq!(
        value(
            &text,
            r#"tenement_instances{state="running",isolation="process"}"#
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value(
            &text,
            r#"tenement_instance_restarts_total{service="web",instance="a"}"#
        ),
        Some(0.0)
    );
    assert!(text.contains("tenement_instance_oom_kills_total"));
    assert!(text.contains("tenement_instance_memory_bytes") || b.cgroup_scopes().is_empty());
    assert!(text.contains("tenement_log_lines_dropped_total"));
    assert!(
        !text.contains("evil") && !text.contains("fake_metric"),
        "{text}"
    );

    match std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    {
        Ok(mut p) => {
            p.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
            let out = p.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "promtool: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Err(_) => eprintln!(
            "SKIPPED (part): promtool is not installed (Debian package prometheus; scripts/test installs it)"
        ),
    }
    // OpenMetrics on request.
    let mut r = request(
        &addr,
        "tenement.test",
        "GET",
        "/metrics",
        &[("Accept", "application/openmetrics-text")],
        None,
    )
    .unwrap();
    assert!(
        r.header("content-type")
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    assert!(r.text().unwrap().ends_with("# EOF\n"));
}

#[test]
fn metrics_can_require_a_token() {
    let mut b = Building::new(TEN, &format!("[settings]\nmetrics_auth = true\n{CONFIG}"));
    b.start();
    let addr = b.http_addr();
    let r = get(&addr, "tenement.test", "/metrics").unwrap();
    assert_eq!(
        (r.status, r.header("www-authenticate")),
        (401, Some("Bearer"))
    );
    let with = |token: &str| {
        let auth = format!("Bearer {}", token.trim());
        let headers = [("Authorization", auth.as_str())];
        request(&addr, "tenement.test", "GET", "/metrics", &headers, None)
            .unwrap()
            .status
    };
    assert_eq!(with("not-a-token"), 401);
    assert_eq!(with(&b.ten_ok(&["token-gen", "--tenant", "alice"])), 403);
    assert_eq!(with(&b.ten_ok(&["token-gen"])), 200);
}
