//! `ten reload` and SIGHUP: the configuration applied to a running server; what did not
//! change is not touched, requests are not dropped, an invalid file changes nothing.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use test_support::http::{get, hammer};
use test_support::{Building, SOON, wait_for};

const TEN: &str = env!("CARGO_BIN_EXE_ten");

fn config(change_env: &str, extra: &str) -> String {
    format!(
        r#"
[service.keep]
command = "{{fixture}}"
isolation = "process"
health = "/health"

[service.change]
command = "{{fixture}}"
isolation = "process"
health = "/health"
[service.change.env]
VERSION = "{change_env}"
{extra}
"#
    )
}

#[test]
fn reload_adds_removes_and_replaces_only_what_changed() {
    let gone = "\n[service.gone]\ncommand = \"{fixture}\"\nisolation = \"process\"\n\n[instances]\nkeep = [\"a\"]\nchange = [\"a\"]\ngone = [\"a\"]\n";
    let mut b = Building::new(TEN, &config("one", gone));
    b.start();
    for key in ["keep:a", "change:a", "gone:a"] {
        b.wait_instance(key, "running", |i| i["state"] == "running");
    }
    let keep_pid = b.instance("keep:a").unwrap()["pid"].clone();
    let addr = b.http_addr();
    let stop = Arc::new(AtomicBool::new(false));
    let loops: Vec<_> = ["keep:a", "change:a"]
        .iter()
        .map(|k| hammer(addr.clone(), k, stop.clone()))
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(300));

    let added = "\n[service.added]\ncommand = \"{fixture}\"\nisolation = \"process\"\n\n[instances]\nkeep = [\"a\"]\nchange = [\"a\"]\nadded = [\"a\"]\n";
    b.write_config(&config("two", added));
    let out = b.ten_ok(&["reload"]);
    for want in [
        "service added: added",
        "service removed: gone",
        "service changed: change",
        "replaced: change:a",
        "started: added:a",
        "stopped and forgotten: gone:a",
    ] {
        assert!(out.contains(want), "missing {want:?} in\n{out}");
    }
    assert!(!out.contains("keep"), "{out}");
    std::thread::sleep(std::time::Duration::from_millis(300));
    stop.store(true, Ordering::SeqCst);
    for (key, seen) in ["keep:a", "change:a"].iter().zip(loops) {
        let seen = seen.join().unwrap();
        let bad: Vec<_> = seen.iter().filter(|s| **s != 200).collect();
        assert!(
            bad.is_empty(),
            "{key}: {} of {} not 200: {bad:?}",
            bad.len(),
            seen.len()
        );
    }
    // Unchanged: the same process. Changed: the new definition. Removed: gone.
    assert_eq!(b.instance("keep:a").unwrap()["pid"], keep_pid);
    let (_, env) = test_support::get_unix(&b.socket("change:a"), "/env").unwrap();
    assert!(env.contains("VERSION=two"), "{env}");
    assert!(b.instance("gone:a").is_none());
    assert_eq!(b.instance("added:a").unwrap()["state"], "running");
    let mut r = get(&addr, "a.added.tenement.test", "/").unwrap();
    let status = r.status;
    assert_eq!(
        (status, r.text().unwrap()),
        (200, "hello from added:a\n".into())
    );

    // An invalid file changes nothing, and says where it is wrong.
    b.write_config(&config("three", "\n[service.bad]\ncommand = 5\n"));
    let out = b.ten(&["reload"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("nothing changed") && err.contains("service.bad.command"),
        "{err}"
    );
    let (_, env) = test_support::get_unix(&b.socket("change:a"), "/env").unwrap();
    assert!(env.contains("VERSION=two"), "{env}");
}

#[test]
fn sighup_reloads() {
    let mut b = Building::new(TEN, &config("one", ""));
    b.start();
    b.write_config(&config(
        "one",
        "\n[service.later]\ncommand = \"{fixture}\"\nisolation = \"process\"\n",
    ));
    // SAFETY: kill(2) on the pid of our own child.
    unsafe { libc::kill(b.server_pid() as i32, libc::SIGHUP) };
    wait_for("the new service to be known", SOON, || {
        b.ten(&["spawn", "later:x"]).status.success().then_some(())
    });
}

/// The front door reads its settings when it starts: a reload says they need a restart (and
/// keeps them), rather than claiming they apply.
#[test]
fn front_door_settings_are_said_to_need_a_restart() {
    let mut b = Building::new(TEN, &config("one", ""));
    b.start();
    let settings = "[settings]\nmax_body_mb = 1\nheader_timeout = 3\nhealth_check_interval = 5\n";
    b.write_config(&format!("{settings}{}", config("one", "")));
    let out = b.ten_ok(&["reload"]);
    for name in ["max_body_mb", "header_timeout"] {
        let line = format!("setting changed, NOT applied: needs a restart of ten serve: {name}");
        assert!(out.contains(&line), "{out}");
    }
    assert!(
        out.contains(
            "setting changed (applies to instances started from now on): health_check_interval"
        ),
        "{out}"
    );
}

#[test]
fn a_failed_replacement_halts_its_services_rollout() {
    let web = |extra: &str| {
        format!(
            "[service.web]\ncommand = \"{{fixture}}{extra}\"\nisolation = \"process\"\nhealth = \"/health\"\nstartup_timeout = 2\nrestart = \"never\"\n\n[instances]\nweb = [\"a\", \"b\"]\n"
        )
    };
    let mut b = Building::new(TEN, &web(""));
    b.start();
    for key in ["web:a", "web:b"] {
        b.wait_instance(key, "running", |i| i["state"] == "running");
    }
    let pids: Vec<_> = ["web:a", "web:b"]
        .iter()
        .map(|k| b.instance(k).unwrap()["pid"].clone())
        .collect();
    // The new definition never becomes ready.
    b.write_config(&web(" --hang"));
    let out = b.ten(&["reload"]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{said}");
    assert!(said.contains("not replaced"), "{said}");
    // One of the two was tried and failed; the other still runs the old definition.
    let still: Vec<_> = ["web:a", "web:b"]
        .iter()
        .zip(&pids)
        .filter(|(k, pid)| {
            let i = b.instance(k).unwrap();
            i["pid"] == **pid && i["state"] == "running"
        })
        .collect();
    assert_eq!(still.len(), 1, "{said}");
    let mut r = get(&b.http_addr(), "web.tenement.test", "/").unwrap();
    let status = r.status;
    assert_eq!(status, 200, "{}", r.text().unwrap());
}
