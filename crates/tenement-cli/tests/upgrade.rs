//! `ten upgrade`: a new server process takes the listening sockets over and adopts every
//! instance while requests keep coming: none refused or failed, no tenant restarted, no log
//! line lost; an open websocket and a streaming answer finish on the old process.

use std::io::{Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use test_support::http::{get, hammer, websocket};
use test_support::{Building, SOON, alive, wait_for};

const TEN: &str = env!("CARGO_BIN_EXE_ten");

const CONFIG: &str = r#"
[service.web]
command = "{fixture}"
isolation = "process"
health = "/health"

[instances]
web = ["a", "b"]
"#;

fn running_pid(b: &Building, key: &str) -> u64 {
    b.wait_instance(key, "running", |i| i["state"] == "running")["pid"]
        .as_u64()
        .unwrap()
}

fn echo(ws: &mut std::io::BufReader<std::net::TcpStream>, msg: &str) -> String {
    let mask = [1u8, 2, 3, 4];
    let mut f = vec![0x81, 0x80 | msg.len() as u8];
    f.extend_from_slice(&mask);
    f.extend(msg.bytes().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    ws.get_mut().write_all(&f).unwrap();
    let mut head = [0u8; 2];
    ws.read_exact(&mut head).unwrap();
    let mut payload = vec![0; (head[1] & 0x7f) as usize];
    ws.read_exact(&mut payload).unwrap();
    String::from_utf8(payload).unwrap()
}

fn say(addr: &str, text: &str) {
    let r = get(addr, "a.web.tenement.test", &format!("/say?text={text}")).unwrap();
    assert_eq!(r.status, 200);
}

#[test]
fn upgrade_under_load_refuses_nothing_and_restarts_no_tenant() {
    let mut b = Building::new(TEN, CONFIG);
    b.start();
    let addr = b.http_addr();
    let pids: Vec<u64> = ["web:a", "web:b"]
        .iter()
        .map(|k| running_pid(&b, k))
        .collect();
    let tenants = b.tenant_processes();
    let old_server = b.serving_pid();

    let mut ws = websocket(&addr, "a.web.tenement.test");
    assert_eq!(echo(&mut ws, "before"), "before");
    let stream = {
        let addr = addr.clone();
        std::thread::spawn(move || {
            let mut r = get(&addr, "a.web.tenement.test", "/drip?n=6&ms=300").unwrap();
            (r.status, r.text().unwrap())
        })
    };
    let stop = Arc::new(AtomicBool::new(false));
    let loops: Vec<_> = ["web:a", "web:b"]
        .iter()
        .map(|k| hammer(addr.clone(), k, stop.clone()))
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    say(&addr, "before-the-upgrade");

    let out = b.upgrade();
    assert!(out.contains("2 instances adopted"), "{out}");
    say(&addr, "after-the-upgrade");
    // The websocket opened before lives on (on the old process, until it closes).
    assert_eq!(echo(&mut ws, "after"), "after");
    drop(ws);
    assert_eq!(
        stream.join().unwrap(),
        (
            200,
            "chunk 0\nchunk 1\nchunk 2\nchunk 3\nchunk 4\nchunk 5\n".into()
        )
    );
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::SeqCst);
    for (key, seen) in ["web:a", "web:b"].iter().zip(loops) {
        let seen = seen.join().unwrap();
        let bad: Vec<_> = seen.iter().filter(|s| **s != 200).collect();
        assert!(
            bad.is_empty(),
            "{key}: {} of {} requests failed: {bad:?}",
            bad.len(),
            seen.len()
        );
    }

    assert!(
        b.wait_predecessor().success(),
        "the old server exits cleanly"
    );
    assert!(!alive(old_server));
    assert_ne!(b.serving_pid(), old_server);
    let after: Vec<u64> = ["web:a", "web:b"]
        .iter()
        .map(|k| running_pid(&b, k))
        .collect();
    assert_eq!(pids, after, "no tenant restarted");
    assert!(tenants.iter().all(|p| alive(*p)));
    // Each said once on stdout and once on stderr ("said ..."): neither lost nor doubled.
    for line in ["before-the-upgrade", "after-the-upgrade"] {
        let out = wait_for(&format!("{line} in the logs"), SOON, || {
            let out = b.ten_ok(&["logs", "web:a", "--search", line]);
            (out.matches(line).count() >= 2).then_some(out)
        });
        assert_eq!(out.matches(line).count(), 2, "{out}");
    }

    // Supervision goes on under the new server, and it can hand over again.
    let _ = get(&addr, "b.web.tenement.test", "/crash");
    b.wait_instance("web:b", "restarted", |i| {
        i["state"] == "running" && i["pid"].as_u64() != Some(pids[1])
    });
    let second = b.serving_pid();
    b.upgrade();
    wait_for("the second server to exit", SOON, || {
        (!alive(second)).then_some(())
    });
    assert_eq!(running_pid(&b, "web:a"), pids[0]);
    assert_eq!(get(&addr, "a.web.tenement.test", "/").unwrap().status, 200);
}

#[test]
fn upgrade_keeps_namespaced_instances_and_their_logs() {
    if !test_support::root_or_skip("namespace isolation needs root") {
        return;
    }
    let mut b = Building::new(
        TEN,
        &CONFIG.replace("isolation = \"process\"", "isolation = \"namespace\""),
    );
    b.start();
    let addr = b.http_addr();
    let pids: Vec<u64> = ["web:a", "web:b"]
        .iter()
        .map(|k| running_pid(&b, k))
        .collect();
    say(&addr, "namespaced-before");
    b.upgrade();
    say(&addr, "namespaced-after");
    assert!(b.wait_predecessor().success());
    let after: Vec<u64> = ["web:a", "web:b"]
        .iter()
        .map(|k| running_pid(&b, k))
        .collect();
    assert_eq!(pids, after);
    for line in ["namespaced-before", "namespaced-after"] {
        wait_for(&format!("{line} in the logs"), SOON, || {
            let out = b.ten_ok(&["logs", "web:a", "--search", line]);
            out.contains(line).then_some(())
        });
    }
    // The successor stops them as its own at SIGTERM (the building's server is gone: by pid).
    let tenants = b.tenant_processes();
    assert!(!tenants.is_empty());
    // SAFETY: kill(2) of the server `ten upgrade` started for this building.
    unsafe { libc::kill(b.serving_pid(), libc::SIGTERM) };
    wait_for("every tenant stopped with the new server", SOON, || {
        tenants.iter().all(|p| !alive(*p)).then_some(())
    });
}

#[test]
fn a_successor_that_cannot_start_leaves_the_server_as_it_was() {
    let mut b = Building::new(TEN, CONFIG);
    b.start();
    let pid = running_pid(&b, "web:a");
    let config = std::fs::read_to_string(b.config_path()).unwrap();
    std::fs::write(b.config_path(), format!("{config}\n[service.broken]\n")).unwrap();
    let out = b.ten(&["upgrade"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ended before"), "{err}");
    // Still the same server, serving, with the same tenant.
    assert!(alive(b.serving_pid()));
    assert_eq!(running_pid(&b, "web:a"), pid);
    assert_eq!(b.front("web:a", "GET", "/").0, 200);
}
