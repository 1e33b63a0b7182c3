//! Spawn, inspect, stop: the basic life of an instance, with real processes and sockets.

use test_support::{Building, SOON, alive, get_unix, wait_for};

const TEN: &str = env!("CARGO_BIN_EXE_ten");

const CONFIG: &str = r#"
[settings]
health_check_interval = 1

[service.web]
command = "{fixture}"
socket = "{dir}/sock/{name}-{id}.sock"
health = "/health"
isolation = "process"

[service.web.env]
GREETING = "hello {name}:{id} port {port}"
DB = "{data_dir}/{name}/{id}/app.db"

[service.forky]
command = "{fixture} --fork 3"
socket = "{dir}/sock/{name}-{id}.sock"
isolation = "process"
"#;

#[test]
fn spawn_serves_on_its_socket_with_a_clean_environment() {
    let mut b = Building::new(TEN, CONFIG);
    b.start();
    let out = b.ten_ok(&["spawn", "web", "--id", "prod"]);
    assert!(out.contains("web:prod running"), "{out}");

    let status = b.instance("web:prod").expect("listed");
    assert_eq!(status["state"], "running");
    assert_eq!(status["health"], "healthy");
    assert_eq!(status["isolation"], "process");
    let socket = b.socket("web:prod");
    let (code, body) = get_unix(&socket, "/").unwrap();
    assert_eq!((code, body.as_str()), (200, "hello from web:prod\n"));

    let (_, env) = get_unix(&socket, "/env").unwrap();
    let names: Vec<&str> = env
        .lines()
        .filter_map(|l| l.split_once('=').map(|(k, _)| k))
        .collect();
    assert_eq!(
        names,
        [
            "DB",
            "GREETING",
            "HOME",
            "INSTANCE_ID",
            "PATH",
            "PORT",
            "SERVICE_NAME",
            "SOCKET_PATH"
        ],
        "only the service's variables and ours"
    );
    let port = status["port"].as_u64().unwrap();
    let data = b.data_dir();
    assert!(
        env.contains(&format!("GREETING=hello web:prod port {port}\n")),
        "{env}"
    );
    assert!(env.contains(&format!("PORT={port}\n")), "{env}");
    assert!(
        env.contains(&format!("HOME={}\n", data.join("web/prod").display())),
        "{env}"
    );
    assert!(
        env.contains(&format!("DB={}/web/prod/app.db\n", data.display())),
        "{env}"
    );
    assert!(
        env.contains(&format!("SOCKET_PATH={}\n", socket.display())),
        "{env}"
    );
    assert!((30000..=40000).contains(&port));

    // The plain-text table has the documented columns.
    let table = b.ten_ok(&["ps"]);
    for col in ["INSTANCE", "STATE", "HEALTH", "UPTIME", "RESTARTS", "PID"] {
        assert!(table.contains(col), "{table}");
    }
    assert!(table.contains("web:prod"), "{table}");
    let health = b.ten_ok(&["health"]);
    assert!(
        health.contains("web:prod") && health.contains("healthy"),
        "{health}"
    );

    // Spawning it again is a clear conflict.
    let again = b.ten(&["spawn", "web:prod"]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
}

#[test]
fn env_values_from_the_server_and_the_instance() {
    let mut b = Building::new(
        TEN,
        r#"
[settings]
data_dir = "{dir}/data"

[service.web]
command = "{fixture}"
socket = "{dir}/sock/{name}-{id}.sock"
isolation = "process"

[service.web.env]
SECRET = "${TEN_TEST_SECRET}"
LISTEN = "port ${PORT} at ${SOCKET_PATH}"
WORKERS = 4
"#,
    );
    // `ten serve` has a PORT of its own: the instance must get its own, not that one.
    b.start_with_env(&[("TEN_TEST_SECRET", "s3cret"), ("PORT", "1")]);
    // Client commands run in a shell without TEN_TEST_SECRET.
    b.ten_ok(&["spawn", "web:a"]);
    let port = b.instance("web:a").unwrap()["port"].as_u64().unwrap();
    let socket = b.socket("web:a");
    let (_, env) = get_unix(&socket, "/env").unwrap();
    for want in [
        "SECRET=s3cret".to_owned(),
        format!("LISTEN=port {port} at {}", socket.display()),
        "WORKERS=4".to_owned(),
    ] {
        assert!(env.lines().any(|l| l == want), "{want} not in\n{env}");
    }
    // Found through the configuration's data_dir, whose ${TEN_TEST_SECRET} this shell lacks.
    let ps = std::process::Command::new(TEN)
        .args(["ps", "--config"])
        .arg(b.config_path())
        .env_remove("TEN_TEST_SECRET")
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&ps.stdout);
    assert!(ps.status.success() && out.contains("web:a"), "{out}");
}

#[test]
fn stop_leaves_no_process_no_socket_no_data() {
    let mut b = Building::new(TEN, CONFIG);
    b.start();
    b.ten_ok(&["spawn", "forky:a"]);
    let socket = b.socket("forky:a");
    let data = b.data_dir().join("forky/a");
    std::fs::write(data.join("scratch"), "x").unwrap();
    let procs = wait_for("shim, app and 3 children", SOON, || {
        let p = b.tenant_processes();
        (p.len() >= 5).then_some(p)
    });

    b.ten_ok(&["stop", "forky:a"]);
    assert!(b.instance("forky:a").is_none(), "forgotten after stop");
    for pid in procs {
        assert!(!alive(pid), "process {pid} survived stop");
    }
    assert!(
        b.tenant_processes().is_empty(),
        "{:?}",
        b.tenant_processes()
    );
    assert!(!socket.exists(), "socket removed");
    assert!(!data.exists(), "data dir removed (storage_persist = false)");
    assert!(
        b.data_dir().join("tenement.db").exists(),
        "the server's own files stay"
    );

    let missing = b.ten(&["stop", "forky:a"]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no instance forky:a"));
}

#[test]
fn stop_escalates_to_sigkill_after_stop_timeout() {
    let mut b = Building::new(
        TEN,
        r#"
[service.stubborn]
command = "{fixture} --ignore-sigterm"
socket = "{dir}/{name}-{id}.sock"
isolation = "process"
stop_timeout = 1
"#,
    );
    b.start();
    b.ten_ok(&["spawn", "stubborn:a"]);
    b.ten_ok(&["stop", "stubborn:a"]);
    assert!(b.tenant_processes().is_empty());
    assert!(
        b.serve_log()
            .contains("did not stop within stop_timeout; killing")
    );
}

#[test]
fn invalid_ids_are_refused_before_touching_anything() {
    let mut b = Building::new(TEN, CONFIG);
    b.start();
    let long = "a".repeat(64);
    for bad in ["..", "a/b", "A", long.as_str(), "", "-x", "a b"] {
        let out = b.ten(&["spawn", "web", &format!("--id={bad}")]);
        assert!(!out.status.success(), "id {bad:?} accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("invalid instance id"), "{bad:?}: {err}");
    }
    for bad in ["web:..", "web:a/b", "../x:y", "web"] {
        let out = b.ten(&["stop", bad]);
        assert!(!out.status.success(), "{bad:?} accepted");
    }
    let unknown = b.ten(&["spawn", "nope", "--id", "x"]);
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("unknown service `nope`"));
    // Nothing was created for any of them.
    let entries: Vec<_> = std::fs::read_dir(b.data_dir())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(
        entries
            .iter()
            .all(|n| ["ten", "logs.db", ".reserve", ".shims"]
                .iter()
                .any(|p| n.to_string_lossy().starts_with(p))),
        "{entries:?}"
    );
    assert!(b.ps().is_empty());
}

#[test]
fn output_capture_survives_a_10mb_line_and_invalid_utf8() {
    let mut b = Building::new(
        TEN,
        r#"
[service.loud]
command = "{fixture} --big-line-mb 10"
socket = "{dir}/{name}-{id}.sock"
isolation = "process"
"#,
    );
    b.start();
    b.ten_ok(&["spawn", "loud:a"]);
    let logs = wait_for("the line after the big one", SOON, || {
        let l = b.ten_ok(&["logs", "loud:a"]);
        l.contains("after big line").then_some(l)
    });
    assert!(
        logs.contains("line truncated"),
        "the big line is cut, not lost"
    );
    assert!(logs.contains("bad \u{fffd}\u{fffd} utf8"), "{logs}");
    assert!(logs.contains("listening on"), "{logs}");
    let (code, _) = get_unix(&b.socket("loud:a"), "/health").unwrap();
    assert_eq!(code, 200, "the app kept running");
    let limited = b.ten_ok(&["logs", "loud:a", "--limit", "1"]);
    assert_eq!(limited.lines().count(), 1, "{limited}");
}

#[test]
fn a_second_server_cannot_take_a_port_a_first_one_serves() {
    let mut first = Building::new(TEN, CONFIG);
    first.start();
    let addr = first.http_addr();
    let port = addr.rsplit(':').next().unwrap();
    let second = Building::new(TEN, CONFIG);
    let mut serve = second
        .cmd(&["serve", "--port", port, "--bind", "127.0.0.1"])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + SOON;
    let status = loop {
        if let Some(status) = serve.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            serve.kill().unwrap();
            serve.wait().unwrap();
            panic!("the second ten serve started on the first one's port");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut serve.stderr.take().unwrap(), &mut err).unwrap();
    assert!(!status.success(), "{err}");
    assert!(err.contains("Address already in use"), "{err}");
}

#[test]
fn without_a_server_the_cli_says_how_to_start_one() {
    let b = Building::new(TEN, CONFIG);
    let out = b.ten(&["ps"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no ten server is running") && err.contains("ten serve"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
}

#[test]
fn logs_follow_streams_new_lines() {
    use std::io::{BufRead, BufReader};
    use std::sync::mpsc;

    let mut b = Building::new(TEN, CONFIG);
    b.start();
    b.ten_ok(&["spawn", "web:f"]);
    let mut follow = b
        .cmd(&["logs", "web:f", "-f", "--limit", "0"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let stdout = follow.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    // Give the follower time to subscribe, then make the app print again by restarting it.
    std::thread::sleep(std::time::Duration::from_millis(500));
    b.ten_ok(&["restart", "web:f"]);
    let line = rx.recv_timeout(SOON).expect("a followed line");
    assert!(
        line.contains("fixture started") || line.contains("listening on"),
        "{line}"
    );
    // A follower does not hold up the server's shutdown: it is told, and ends.
    assert!(b.terminate().success());
    let out = follow.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("ten serve is stopping"),
        "{err}"
    );
}

#[test]
fn sighup_does_not_end_the_server_and_sigterm_lets_requests_finish_first() {
    let mut b = Building::new(TEN, CONFIG);
    b.start();
    b.ten_ok(&["spawn", "web:prod"]);
    let pid = b.instance("web:prod").unwrap()["pid"].clone();
    // SAFETY: kill(2) on the pid of our own child.
    unsafe { libc::kill(b.server_pid() as i32, libc::SIGHUP) };
    wait_for("the SIGHUP line", SOON, || {
        b.serve_log().contains("SIGHUP").then_some(())
    });
    let i = b.instance("web:prod").unwrap();
    assert_eq!((i["state"].as_str(), &i["pid"]), (Some("running"), &pid));
    // A request in flight when SIGTERM comes is answered before the instance stops.
    let addr = b.http_addr();
    let slow = std::thread::spawn(move || {
        let mut r =
            test_support::http::get(&addr, "prod.web.tenement.test", "/sleep?ms=1500").unwrap();
        (r.status, r.text().unwrap())
    });
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(b.terminate().success());
    assert_eq!(slow.join().unwrap(), (200, "slept".to_string()));
}
