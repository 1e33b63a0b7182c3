//! Same API, different walls: one fixture app, the same lifecycle, at every isolation level
//! this machine can run (levels it cannot are reported as skipped, with the reason).

use test_support::http::get;
use test_support::{Building, SOON, wait_for};

const TEN: &str = env!("CARGO_BIN_EXE_ten");

fn lifecycle(level: &str) {
    let config = format!(
        r#"
[settings]
backoff_base_ms = 100
health_check_interval = 2

[service.app]
command = "{{fixture}}"
socket = "{{dir}}/s/{{name}}-{{id}}.sock"
health = "/health"
startup_timeout = 30
isolation = "{level}"
"#
    );
    let mut b = Building::new(TEN, &config);
    b.start();
    let check = b.ten(&["config", "--check"]);
    if !check.status.success() {
        eprintln!(
            "SKIPPED {level}: {}",
            String::from_utf8_lossy(&check.stderr).trim()
        );
        return;
    }
    let addr = b.http_addr();
    b.ten_ok(&["spawn", "app:one"]);
    assert_eq!(b.instance("app:one").unwrap()["isolation"], level);
    let mut r = get(&addr, "one.app.tenement.test", "/").unwrap();
    assert_eq!(
        (r.status, r.text().unwrap()),
        (200, "hello from app:one\n".into()),
        "{level}"
    );

    let _ = get(&addr, "one.app.tenement.test", "/exit?code=3");
    let back = b.wait_instance("app:one", "restarted", |i| {
        i["restarts"] == 1 && i["state"] == "running"
    });
    assert_eq!(back["last_exit"], "exit code 3", "{level}");
    answers_then_stops_clean(&b, level);
}

/// The end of every level's lifecycle: the restarted instance answers again, and `ten stop`
/// leaves no process and no route.
fn answers_then_stops_clean(b: &Building, level: &str) {
    let addr = b.http_addr();
    wait_for("it to answer again", SOON, || {
        get(&addr, "one.app.tenement.test", "/health")
            .ok()
            .filter(|r| r.status == 200)
    });
    b.ten_ok(&["stop", "app:one"]);
    assert!(
        b.tenant_processes().is_empty(),
        "{level}: {:?}",
        b.tenant_processes()
    );
    assert_eq!(
        get(&addr, "one.app.tenement.test", "/").unwrap().status,
        404
    );
}

#[test]
fn process() {
    lifecycle("process");
}

#[test]
fn namespace() {
    lifecycle("namespace");
}

#[test]
fn sandbox() {
    lifecycle("sandbox");
}

/// The same lifecycle at `wasm`: the handler guest instead of the fixture (a component cannot
/// end its host, so the crash is a SIGKILL of the instance's processes).
#[test]
fn wasm() {
    if !test_support::root_or_skip("wasm instances run inside namespace walls") {
        return;
    }
    let Some(handler) = test_support::wasm::guest("handler") else {
        return;
    };
    let mut b = Building::new(
        TEN,
        r#"
[settings]
backoff_base_ms = 100
health_check_interval = 2

[service.app]
command = "handler.wasm"
socket = "{dir}/s/{name}-{id}.sock"
health = "/health"
startup_timeout = 60
isolation = "wasm"
"#,
    );
    std::fs::copy(handler, b.path().join("handler.wasm")).unwrap();
    b.start();
    b.ten_ok(&["config", "--check"]);
    let addr = b.http_addr();
    b.ten_ok(&["spawn", "app:one"]);
    let first = b.instance("app:one").unwrap();
    assert_eq!(first["isolation"], "wasm");
    let mut r = get(&addr, "one.app.tenement.test", "/").unwrap();
    assert_eq!(
        (r.status, r.text().unwrap()),
        (200, "hello from wasm\n".into())
    );

    for pid in b.tenant_processes() {
        // SAFETY: kill(2) of a process this test's server started.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    b.wait_instance("app:one", "restarted", |i| {
        i["restarts"] == 1 && i["state"] == "running" && i["pid"] != first["pid"]
    });
    answers_then_stops_clean(&b, "wasm");
}
