//! Restart policies, backoff, the restart budget, health checks and startup timeouts, with real
//! crashing, hanging and sickening fixture apps.

use test_support::{Building, SOON, alive, get_unix, wait_for};

const TEN: &str = env!("CARGO_BIN_EXE_ten");

fn building(extra: &str) -> Building {
    let config = format!(
        r#"
[settings]
backoff_base_ms = 200
backoff_max_ms = 5000
max_restarts = 3
restart_window = 300
health_check_interval = 1

{extra}
"#
    );
    Building::new(TEN, &config)
}

fn delays_logged(b: &Building) -> Vec<u64> {
    b.serve_log()
        .lines()
        .filter(|l| l.contains("exited; backing off"))
        .filter_map(|l| {
            l.split("delay_ms=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect()
}

#[test]
fn crash_loop_backs_off_with_growing_delay_then_fails() {
    let mut b = building(
        r#"
[service.crashy]
command = "{fixture} --crash-after 50 --exit-code 3"
socket = "{dir}/{name}-{id}.sock"
isolation = "process"
"#,
    );
    b.start();
    b.ten_ok(&["spawn", "crashy:a"]);
    let failed = b.wait_instance("crashy:a", "failed", |i| i["state"] == "failed");
    assert_eq!(failed["restarts"], 3);
    assert_eq!(failed["last_exit"], "exit code 3");
    let delays = delays_logged(&b);
    assert_eq!(delays.len(), 3, "{delays:?}");
    // 200, 400, 800 ms, each within ±10% jitter (less the few ms between the decision and the
    // log line, which says what is left of the delay).
    for (d, want) in delays.iter().zip([200u64, 400, 800]) {
        assert!(
            (want * 9 / 10 - 10..=want * 11 / 10).contains(d),
            "delays {delays:?}"
        );
    }
    assert!(b.tenant_processes().is_empty(), "failed means nothing runs");
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert_eq!(
        b.instance("crashy:a").unwrap()["restarts"],
        3,
        "no restart after failed"
    );

    // A user restart revives it (and it crashes again, restarting by policy).
    let out = b.ten(&["restart", "crashy:a"]);
    let _ = out; // it may report running or not-ready depending on timing
    b.wait_instance("crashy:a", "restarting after ten restart", |i| {
        i["restarts"].as_u64() > Some(3) || i["state"] == "backing-off"
    });
}

#[test]
fn never_policy_leaves_it_exited() {
    let mut b = building(
        r#"
[service.once]
command = "{fixture} --crash-after 50 --exit-code 7"
socket = "{dir}/{name}-{id}.sock"
restart = "never"
isolation = "process"
"#,
    );
    b.start();
    b.ten_ok(&["spawn", "once:a"]);
    let exited = b.wait_instance("once:a", "exited", |i| i["state"] == "exited");
    assert_eq!(exited["last_exit"], "exit code 7");
    std::thread::sleep(std::time::Duration::from_millis(800));
    assert_eq!(b.instance("once:a").unwrap()["restarts"], 0);
}

#[test]
fn a_restarted_process_outlives_the_old_ones_stop_timeout() {
    let mut b = building(
        r#"
[service.web]
command = "{fixture}"
socket = "{dir}/{name}-{id}.sock"
health = "/health"
restart = "never"
stop_timeout = 1
isolation = "process"
"#,
    );
    b.start();
    b.ten_ok(&["spawn", "web:a"]);
    let old = b.wait_instance("web:a", "running", |i| i["state"] == "running")["pid"].clone();
    b.ten_ok(&["restart", "web:a"]);
    let pid = b.wait_instance("web:a", "running again", |i| {
        i["state"] == "running" && i["pid"] != old
    })["pid"]
        .clone();
    // The old process's stop deadline (1 s) must not kill the new one.
    std::thread::sleep(std::time::Duration::from_secs(3));
    let after = b.instance("web:a").unwrap();
    assert_eq!(after["state"], "running", "{after}");
    assert_eq!(after["pid"], pid, "{after}");
    assert!(!b.serve_log().contains("did not stop within stop_timeout"));
}

#[test]
fn on_failure_does_not_restart_a_clean_exit_but_always_does() {
    let mut b = building(
        r#"
[service.clean]
command = "{fixture} --crash-after 50 --exit-code 0"
socket = "{dir}/{name}-{id}.sock"
isolation = "process"

[service.again]
command = "{fixture} --crash-after 50 --exit-code 0"
socket = "{dir}/{name}-{id}.sock"
restart = "always"
isolation = "process"
"#,
    );
    b.start();
    b.ten_ok(&["spawn", "clean:a"]);
    b.ten_ok(&["spawn", "again:a"]);
    b.wait_instance("clean:a", "exited", |i| {
        i["state"] == "exited" && i["last_exit"] == "exit code 0"
    });
    b.wait_instance("again:a", "restarted", |i| {
        i["restarts"].as_u64() >= Some(1)
    });
    assert_eq!(b.instance("clean:a").unwrap()["restarts"], 0);
}

#[test]
fn failing_health_checks_restart_the_instance() {
    let mut b = building(
        r#"
[service.sick]
command = "{fixture} --unhealthy-after 2"
socket = "{dir}/{name}-{id}.sock"
health = "/health"
isolation = "process"
"#,
    );
    b.start();
    b.ten_ok(&["spawn", "sick:a"]);
    let first_pid = b.instance("sick:a").unwrap()["pid"].as_i64().unwrap() as i32;
    let restarted = b.wait_instance("sick:a", "restarted for health", |i| {
        i["restarts"].as_u64() >= Some(1) && i["last_exit"] == "health check failed"
    });
    assert_eq!(restarted["last_exit"], "health check failed");
    assert!(!alive(first_pid), "the unhealthy process was stopped");
    b.wait_instance("sick:a", "running again", |i| i["state"] == "running");
    assert!(b.serve_log().contains("health check failed"));
}

#[test]
fn startup_timeout_bounds_the_wait_for_the_socket() {
    let mut b = building(
        r#"
[service.hangs]
command = "{fixture} --hang"
socket = "{dir}/{name}-{id}.sock"
startup_timeout = 1
restart = "never"
isolation = "process"
"#,
    );
    b.start();
    let out = b.ten(&["spawn", "hangs:a"]);
    assert!(
        !out.status.success(),
        "spawn reports that it never became ready"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("startup timeout"), "{err}");
    let i = b.instance("hangs:a").expect("still registered");
    assert_eq!(i["state"], "exited");
    assert!(
        b.tenant_processes().is_empty(),
        "the hung process was killed"
    );
}

#[test]
fn stop_during_backoff_cancels_the_restart() {
    let mut b = Building::new(
        TEN,
        r#"
[settings]
backoff_base_ms = 3000
backoff_max_ms = 3000

[service.crashy]
command = "{fixture} --crash-after 50"
socket = "{dir}/{name}-{id}.sock"
isolation = "process"
"#,
    );
    b.start();
    b.ten_ok(&["spawn", "crashy:a"]);
    b.wait_instance("crashy:a", "backing off", |i| i["state"] == "backing-off");
    b.ten_ok(&["stop", "crashy:a"]);
    assert!(b.instance("crashy:a").is_none());
    std::thread::sleep(std::time::Duration::from_millis(3500));
    assert!(b.tenant_processes().is_empty(), "no restart after stop");
    assert!(b.instance("crashy:a").is_none());
}

#[test]
fn a_crash_is_seen_at_once_and_the_instance_serves_again() {
    let mut b = building(
        r#"
[service.web]
command = "{fixture}"
socket = "{dir}/{name}-{id}.sock"
health = "/health"
isolation = "process"
"#,
    );
    b.start();
    b.ten_ok(&["spawn", "web:a"]);
    let socket = b.socket("web:a");
    let _ = get_unix(&socket, "/exit?code=9");
    let back = b.wait_instance("web:a", "restarted", |i| {
        i["restarts"] == 1 && i["state"] == "running"
    });
    assert_eq!(back["last_exit"], "exit code 9");
    wait_for("the new process to answer", SOON, || {
        get_unix(&socket, "/health").ok().filter(|(c, _)| *c == 200)
    });
}

#[test]
fn health_checks_read_the_whole_answer_before_hanging_up() {
    // `/split` writes its head, then its body 100 ms later, and logs a failed body write.
    let mut b = building(
        r#"
[service.split]
command = "{fixture}"
socket = "{dir}/s/{name}-{id}.sock"
health = "/split"
isolation = "process"
"#,
    );
    b.start();
    b.ten_ok(&["spawn", "split:a"]);
    // The readiness probe and two periodic checks (every second).
    std::thread::sleep(std::time::Duration::from_millis(2500));
    let i = b.instance("split:a").unwrap();
    assert_eq!(
        (&i["state"], &i["health"]),
        (&"running".into(), &"healthy".into())
    );
    let logs = b.ten_ok(&["logs", "split:a", "--limit", "1000"]);
    assert!(logs.contains("fixture started"), "{logs}");
    assert!(!logs.contains("body write failed"), "{logs}");
}

#[test]
fn a_health_check_that_never_passes_is_named_in_the_startup_timeout() {
    let mut b = building(
        r#"
[service.sick]
command = "{fixture} --unhealthy-after 0"
socket = "{dir}/{name}-{id}.sock"
health = "/health"
startup_timeout = 1
restart = "never"
isolation = "process"
"#,
    );
    b.start();
    let out = b.ten(&["spawn", "sick:a"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("startup timeout"),
        "{err}"
    );
    // Not just "startup timeout": what the health check got.
    let i = b.instance("sick:a").unwrap();
    let last = i["last_exit"].as_str().unwrap_or_default();
    assert!(last.contains("answered 500"), "{i}");
    assert!(b.serve_log().contains("answered 500"));
}
