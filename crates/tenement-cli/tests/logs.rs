//! Logs are kept: searchable by instance, service, stream, time and text; they survive a
//! `kill -9` of the server; a flooding app neither blocks nor pushes out another's lines.

use std::time::Duration;

use test_support::http::get;
use test_support::{Building, SOON, wait_for};

const TEN: &str = env!("CARGO_BIN_EXE_ten");

const CONFIG: &str = r#"
[service.web]
command = "{fixture}"
socket = "{dir}/s/{name}-{id}.sock"
health = "/health"
isolation = "process"

[service.esc]
command = "printf 'escape\\033[2K\\rforged marker\\n'; exec {fixture}"
socket = "{dir}/s/{name}-{id}.sock"
isolation = "process"

[service.noisy]
command = "{fixture} --spam"
socket = "{dir}/s/{name}-{id}.sock"
health = "/health"
isolation = "process"
"#;

fn say(addr: &str, key: &str, text: &str) {
    let (svc, id) = key.split_once(':').unwrap();
    assert_eq!(
        get(
            addr,
            &format!("{id}.{svc}.tenement.test"),
            &format!("/say?text={text}")
        )
        .unwrap()
        .status,
        200
    );
}

#[test]
fn search_filters_and_service_wide_queries() {
    let mut b = Building::new(TEN, CONFIG);
    b.start();
    let addr = b.http_addr();
    b.ten_ok(&["spawn", "web:a"]);
    b.ten_ok(&["spawn", "web:b"]);
    say(&addr, "web:a", "alpha-one");
    say(&addr, "web:b", "beta-two");
    say(&addr, "web:a", "alpha-three");

    let a = b.ten_ok(&["logs", "web:a", "--search", "alpha", "--stream", "stdout"]);
    let lines: Vec<&str> = a.lines().collect();
    assert_eq!(lines.len(), 2, "{a}");
    assert!(
        lines[0].ends_with("web:a stdout alpha-one")
            && lines[1].ends_with("web:a stdout alpha-three"),
        "oldest first: {a}"
    );
    // Each line starts with when it was captured, in UTC: 2026-11-22T09:37:36.704Z.
    let at = lines[0].split(' ').next().unwrap();
    assert!(
        at.len() == 24 && at.ends_with('Z') && at.as_bytes()[10] == b'T',
        "{a}"
    );
    let err = b.ten_ok(&[
        "logs",
        "web:a",
        "--stream",
        "stderr",
        "--search",
        "alpha-one",
    ]);
    assert!(err.contains("stderr said alpha-one"), "{err}");
    let all = b.ten_ok(&["logs", "web", "--search", "two"]);
    assert!(all.contains("web:b stdout beta-two"), "service-wide: {all}");
    // Search text that is no text is a 400 saying so, not an internal error.
    let out = b.ten(&["logs", "web", "--search", "a\u{1}b"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("control characters"),
        "{err}"
    );
    assert_eq!(
        b.ten_ok(&["logs", "web", "--since", "1h", "--limit", "1"])
            .lines()
            .count(),
        1
    );
    assert!(
        b.ten_ok(&[
            "logs",
            "web",
            "--since",
            "1700000000000",
            "--search",
            "nothing-like-this"
        ])
        .is_empty()
    );
    // A line with terminal escapes is shown, not obeyed (it could erase its own prefix).
    b.ten_ok(&["spawn", "esc:a"]);
    let shown = wait_for("the escaped line", SOON, || {
        let out = b.ten_ok(&["logs", "esc:a", "--search", "marker"]);
        out.contains("marker").then_some(out)
    });
    assert!(
        shown.contains("escape\\u{1b}[2K\\rforged marker"),
        "{shown:?}"
    );
    // The stores are for ten serve only.
    for db in ["tenement.db", "logs.db"] {
        let mode = std::fs::metadata(b.data_dir().join(db))
            .unwrap()
            .permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o077,
            0,
            "{db}"
        );
    }
    let bad = b.ten(&["logs", "web:a", "--since", "yesterday"]);
    assert!(!bad.status.success());
    // A service the configuration does not have is an error, not an empty answer.
    let unknown = b.ten(&["logs", "nosuch:a"]);
    let err = String::from_utf8_lossy(&unknown.stderr);
    assert!(!unknown.status.success() && err.contains("nosuch"), "{err}");
    // So is an instance that never existed; a stopped one keeps its lines.
    let never = b.ten(&["logs", "web:never"]);
    let err = String::from_utf8_lossy(&never.stderr);
    assert!(
        !never.status.success() && err.contains("no instance web:never"),
        "{err}"
    );
    b.ten_ok(&["stop", "web:b"]);
    assert!(b.ten_ok(&["logs", "web:b"]).contains("beta-two"));
}

#[test]
fn logs_survive_kill_9_of_the_server() {
    let mut b = Building::new(TEN, CONFIG);
    b.start();
    let addr = b.http_addr();
    b.ten_ok(&["spawn", "web:a"]);
    say(&addr, "web:a", "before-the-crash");
    // The writer commits every 250 ms: one second is more than enough.
    std::thread::sleep(Duration::from_millis(1000));
    b.kill9();
    b.start();
    let out = b.ten_ok(&["logs", "web:a", "--search", "before-the-crash"]);
    assert!(out.contains("before-the-crash"), "{out}");
}

#[test]
fn a_flood_neither_blocks_the_app_nor_starves_a_neighbour() {
    let mut b = Building::new(TEN, CONFIG);
    b.start();
    let addr = b.http_addr();
    b.ten_ok(&["spawn", "noisy:a"]);
    b.ten_ok(&["spawn", "web:quiet"]);
    for i in 0..20 {
        say(&addr, "web:quiet", &format!("quiet-line-{i}"));
        // The flooding app still answers promptly (its output is being drained).
        assert_eq!(
            get(&addr, "a.noisy.tenement.test", "/health")
                .unwrap()
                .status,
            200
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let quiet = wait_for("all quiet lines stored", SOON, || {
        let out = b.ten_ok(&[
            "logs",
            "web:quiet",
            "--search",
            "quiet-line",
            "--stream",
            "stdout",
            "--limit",
            "100",
        ]);
        (out.lines().count() == 20).then_some(out)
    });
    assert!(quiet.contains("quiet-line-0") && quiet.contains("quiet-line-19"));
    let noisy = b.ten_ok(&["logs", "noisy:a", "--limit", "5"]);
    assert_eq!(noisy.lines().count(), 5, "the flood is stored too: {noisy}");
    assert_eq!(b.instance("noisy:a").unwrap()["state"], "running");

    // Following the flood: more than the live feed holds goes by; the follower is told so,
    // and prints only log lines.
    let mut follow = b
        .cmd(&["logs", "noisy:a", "-f", "--limit", "0"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    follow.kill().unwrap();
    let out = follow.wait_with_output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        stdout.lines().count() > 0 && stdout.lines().all(|l| l.contains(" noisy:a stdout line ")),
        "{stdout:.2000}"
    );
    assert!(stderr.contains("came too fast to follow"), "{stderr}");
}

#[test]
fn a_damaged_log_store_is_set_aside_and_the_server_starts() {
    let mut b = Building::new(TEN, CONFIG);
    b.start();
    b.ten_ok(&["spawn", "web:a"]);
    b.terminate();
    // Scrambled pages in the middle (a scrambled header is caught the same way).
    let path = b.data_dir().join("logs.db");
    let mut bytes = std::fs::read(&path).unwrap();
    let n = bytes.len();
    bytes[n / 2..].iter_mut().for_each(|x| *x ^= 0x5a);
    std::fs::write(&path, bytes).unwrap();
    let _ = std::fs::remove_file(b.data_dir().join("logs.db-wal"));
    b.start();
    let log = b.serve_log();
    assert!(
        log.contains("log store") && log.contains("set aside"),
        "{log}"
    );
    assert!(!log.contains("state store"), "{log}");
    let aside = std::fs::read_dir(b.data_dir()).unwrap().flatten().any(|e| {
        e.file_name()
            .to_string_lossy()
            .starts_with("logs.db.corrupt-")
    });
    assert!(aside, "the damaged file is kept");
    // The instance came back, and its new lines are stored and found.
    b.wait_instance("web:a", "back", |i| i["state"] == "running");
    let _ = get(
        &b.http_addr(),
        "a.web.tenement.test",
        "/say?text=after-the-damage",
    );
    wait_for("the new line in the new store", SOON, || {
        let out = b.ten_ok(&["logs", "web:a", "--search", "after-the-damage"]);
        out.contains("after-the-damage").then_some(())
    });
}
