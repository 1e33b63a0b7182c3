//! Desired state survives the server: SIGTERM stops instances gracefully, `kill -9` leaves no
//! tenant process behind, and the next `ten serve` brings every instance back.

use test_support::{Building, SOON, alive, get_unix, wait_for};

const TEN: &str = env!("CARGO_BIN_EXE_ten");

const CONFIG: &str = r#"
[service.web]
command = "{fixture}"
socket = "{dir}/sock/{name}-{id}.sock"
health = "/health"
isolation = "process"

[service.forky]
# One child leaves the app's process group (setsid): only the instance's cgroup still holds it.
command = "setsid {fixture} --sleeper & exec {fixture} --fork 4"
socket = "{dir}/sock/{name}-{id}.sock"
isolation = "process"

[service.keep]
command = "{fixture}"
socket = "{dir}/sock/{name}-{id}.sock"
isolation = "process"
storage_persist = true

[instances]
web = ["auto"]
"#;

fn states(b: &Building) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = b
        .ps()
        .iter()
        .map(|i| {
            (
                i["instance"].as_str().unwrap().to_owned(),
                i["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    v.sort();
    v
}

fn all_running(b: &Building, n: usize) -> Vec<(String, String)> {
    wait_for(&format!("{n} instances running"), SOON, || {
        let s = states(b);
        (s.len() == n && s.iter().all(|(_, st)| st == "running")).then_some(s)
    })
}

#[test]
fn kill_9_without_adoption_leaves_no_tenant_and_restart_restores_everything() {
    let mut b = Building::new(TEN, &test_support::no_adoption(CONFIG));
    b.start();
    b.ten_ok(&["spawn", "web:prod"]);
    b.ten_ok(&["spawn", "forky:a"]);
    let before = all_running(&b, 3);
    let procs = wait_for(
        "all tenant processes (incl. 4 forked children and the setsid one)",
        SOON,
        || {
            let p = b.tenant_processes();
            (p.len() >= 11).then_some(p) // shims, apps, 4 children, 1 setsid
        },
    );
    let socket = b.socket("web:prod");

    b.kill9();
    wait_for("every tenant process to die with the server", SOON, || {
        procs.iter().all(|p| !alive(*p)).then_some(())
    });
    assert!(
        b.tenant_processes().is_empty(),
        "{:?}",
        b.tenant_processes()
    );
    assert!(
        socket.exists(),
        "the stale socket is still there before restart"
    );

    b.start();
    let after = all_running(&b, 3);
    assert_eq!(before, after);
    let (code, body) = get_unix(&socket, "/").unwrap();
    assert_eq!((code, body.as_str()), (200, "hello from web:prod\n"));
}

#[test]
fn sigterm_stops_instances_gracefully_and_they_come_back() {
    let mut b = Building::new(TEN, CONFIG);
    b.start();
    b.ten_ok(&["spawn", "keep:a"]);
    b.ten_ok(&["spawn", "web:b"]);
    all_running(&b, 3);
    let keep_file = b.data_dir().join("keep/a/state.txt");
    std::fs::write(&keep_file, "persisted").unwrap();
    // Not persistent, but a server restart is not `ten stop`: like a crash, it keeps data.
    let web_file = b.data_dir().join("web/b/state.txt");
    std::fs::write(&web_file, "still here").unwrap();
    let status = b.terminate();
    assert!(status.success(), "{status}");
    assert!(b.tenant_processes().is_empty());
    assert!(b.serve_log().contains("SIGTERM: stopping every instance"));
    assert_eq!(std::fs::read_to_string(&web_file).unwrap(), "still here");
    assert_eq!(std::fs::read_to_string(&keep_file).unwrap(), "persisted");

    b.start();
    let after = all_running(&b, 3);
    let keys: Vec<&str> = after.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["keep:a", "web:auto", "web:b"]);
    assert_eq!(std::fs::read_to_string(&keep_file).unwrap(), "persisted");
    assert_eq!(std::fs::read_to_string(&web_file).unwrap(), "still here");
    // `ten stop` is what removes it.
    b.ten_ok(&["stop", "web:b"]);
    assert!(!b.data_dir().join("web/b").exists());
}

#[test]
fn a_stopped_instance_stays_stopped_after_restart() {
    let mut b = Building::new(TEN, CONFIG);
    b.start();
    b.ten_ok(&["spawn", "web:gone"]);
    b.ten_ok(&["stop", "web:gone"]);
    b.kill9();
    b.start();
    all_running(&b, 1);
    assert!(b.instance("web:gone").is_none());
}

#[test]
fn one_failing_auto_instance_does_not_block_the_others() {
    let mut b = Building::new(
        TEN,
        r#"
[service.web]
command = "{fixture}"
socket = "{dir}/{name}-{id}.sock"
isolation = "process"

[service.broken]
command = "/nonexistent/binary"
socket = "{dir}/{name}-{id}.sock"
isolation = "process"
restart = "never"

[instances]
broken = ["x"]
web = ["one", "two"]
"#,
    );
    b.start();
    b.wait_instance("web:one", "running", |i| i["state"] == "running");
    b.wait_instance("web:two", "running", |i| i["state"] == "running");
    let broken = b.wait_instance("broken:x", "exited", |i| i["state"] == "exited");
    assert_eq!(broken["last_exit"], "exit code 127");
    let logs = b.ten_ok(&["logs", "broken:x"]);
    assert!(
        logs.contains("cannot execute") && logs.contains("/nonexistent/binary"),
        "{logs}"
    );
}

#[test]
fn a_second_server_on_the_same_data_dir_is_refused() {
    let mut b = Building::new(TEN, CONFIG);
    b.start();
    let out = b.ten(&["serve", "--port", "0", "--bind", "127.0.0.1"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("another ten serve is already running"));
    b.ten_ok(&["ps"]);
}

#[test]
fn the_first_list_after_start_holds_every_instance_brought_back() {
    let ids: Vec<String> = (0..40).map(|i| format!("\"i{i}\"")).collect();
    let b = Building::new(
        TEN,
        &format!(
            "[service.web]\ncommand = \"{{fixture}} --delay-listen 3000\"\nsocket = \"{{dir}}/{{name}}-{{id}}.sock\"\nisolation = \"process\"\n\n[instances]\nweb = [{}]\n",
            ids.join(", ")
        ),
    );
    let mut serve = b
        .cmd(&["serve", "--port", "0", "--bind", "127.0.0.1"])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Polled as fast as possible: the very first answer of the control socket.
    let socket = b.data_dir().join("ten.sock");
    let deadline = std::time::Instant::now() + SOON;
    let first = loop {
        if let Ok(answer) = get_unix(&socket, "/api/instances") {
            break answer;
        }
        assert!(std::time::Instant::now() < deadline, "no answer");
        std::thread::sleep(std::time::Duration::from_millis(1));
    };
    let listed: Vec<serde_json::Value> = serde_json::from_str(&first.1).unwrap();
    // Every instance is there, starting (each app waits 3 s before it listens).
    let health = b.ten(&["health"]).status;
    serve.kill().unwrap();
    serve.wait().unwrap();
    assert_eq!((first.0, listed.len()), (200, 40));
    assert!(!health.success(), "instances still starting");
}

#[test]
fn a_listed_instance_the_user_replaced_stays_down_until_spawned_again() {
    let mut b = Building::new(TEN, CONFIG);
    b.start();
    b.wait_instance("web:auto", "running", |i| i["state"] == "running");
    b.ten_ok(&["deploy", "web:v2", "--replace", "auto"]);
    b.terminate();
    b.start();
    b.wait_instance("web:v2", "back", |i| i["state"] == "running");
    let keys: Vec<String> = b.ps().iter().map(|i| i["instance"].to_string()).collect();
    assert_eq!(
        keys,
        ["\"web:v2\""],
        "the replaced [instances] entry stays down"
    );
    // Spawned again, it is wanted again.
    b.ten_ok(&["spawn", "web:auto"]);
    b.terminate();
    b.start();
    b.wait_instance("web:auto", "back", |i| i["state"] == "running");
}

#[test]
fn an_instance_whose_service_left_the_config_can_be_forgotten() {
    let mut b = Building::new(TEN, CONFIG);
    b.start();
    b.ten_ok(&["spawn", "forky:old"]);
    b.terminate();
    // The service goes from the configuration; its record stays.
    let without = CONFIG.replace("[service.forky]", "[service.other]");
    b.write_config(&without);
    b.start();
    all_running(&b, 1);
    assert!(b.serve_log().contains("`ten stop forky:old` forgets it"));
    b.ten_ok(&["stop", "forky:old"]);
    assert!(!b.data_dir().join("forky/old").exists());
    // Forgotten: the next start does not mention it, and a second stop says there is nothing.
    b.terminate();
    let lines_before = b.serve_log().lines().count();
    b.start();
    all_running(&b, 1);
    let log = b.serve_log();
    let since: Vec<&str> = log.lines().skip(lines_before).collect();
    assert!(!since.iter().any(|l| l.contains("forky:old")), "{since:?}");
    assert!(!b.ten(&["stop", "forky:old"]).status.success());
}

#[test]
fn a_damaged_state_store_is_refused_and_restored_from_its_backup() {
    let mut b = Building::new(TEN, CONFIG);
    b.start();
    b.ten_ok(&["spawn", "web:kept"]);
    b.terminate();
    let state = b.data_dir().join("tenement.db");
    assert!(
        b.data_dir().join("tenement.db.bak").exists(),
        "backed up at start"
    );
    // The backup was taken before web:kept was spawned; take the one a later round makes.
    b.start();
    all_running(&b, 2);
    b.terminate();
    let mut bytes = std::fs::read(&state).unwrap();
    let n = bytes.len();
    bytes[(n / 2).min(4096)..]
        .iter_mut()
        .for_each(|x| *x ^= 0x5a);
    std::fs::write(&state, bytes).unwrap();
    for suffix in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", state.display()));
    }
    // Never silently empty: refused, naming the file and the way back.
    let out = b.ten(&["serve", "--port", "0", "--bind", "127.0.0.1"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("tenement.db is damaged") && err.contains("ten serve --restore-state"),
        "{err}"
    );
    b.start_with(&["--restore-state"], &[]);
    let keys: Vec<String> = all_running(&b, 2).into_iter().map(|(k, _)| k).collect();
    assert_eq!(keys, ["web:auto", "web:kept"]);
    // On a sound store the flag changes nothing (left in a unit, it must not roll back).
    b.ten_ok(&["spawn", "web:newer"]);
    b.terminate();
    b.start_with(&["--restore-state"], &[]);
    assert_eq!(all_running(&b, 3).len(), 3);
    assert!(b.serve_log().contains("is sound; kept"));
}

#[test]
fn a_full_disk_never_keeps_the_tenant_that_filled_it_from_being_stopped() {
    if !test_support::root_or_skip("mounting a small tmpfs as data_dir needs root") {
        return;
    }
    let mut b = Building::new(
        TEN,
        r#"
[service.web]
command = "{fixture}"
socket = "{dir}/sock/{name}-{id}.sock"
isolation = "process"
"#,
    );
    let data = b.data_dir();
    std::fs::create_dir_all(&data).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=16m,mode=0711", "tmpfs"])
        .arg(&data)
        .status()
        .unwrap();
    assert!(mounted.success());
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.0)
                .status();
        }
    }
    let _unmount = Unmount(data.clone());
    b.start();
    b.ten_ok(&["spawn", "web:filler"]);
    b.ten_ok(&["spawn", "web:bystander"]);
    // The tenant fills data_dir's disk to the last block.
    let home = b.instance("web:filler").unwrap()["data_dir"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, _) = test_support::get_unix(
        &b.socket("web:filler"),
        &format!("/put?path={home}/fill&kb=32768"),
    )
    .unwrap();
    assert_ne!(status, 200, "16 MB disk took 32 MB");
    // ps and health still answer; the tenant can be stopped, and its space comes back.
    assert_eq!(b.ps().len(), 2);
    b.ten_ok(&["stop", "web:filler"]);
    assert!(b.instance("web:filler").is_none());
    b.ten_ok(&["spawn", "web:after"]);
    // What was acknowledged is what comes back.
    b.terminate();
    b.start();
    let keys: Vec<String> = all_running(&b, 2).into_iter().map(|(k, _)| k).collect();
    assert_eq!(keys, ["web:after", "web:bystander"]);
    b.terminate();
}

#[test]
fn a_mass_start_takes_its_turns_and_every_instance_comes_up() {
    // 16 start slots per core: more instances than that start in turns, none timing out.
    let slots = 16 * std::thread::available_parallelism().map_or(1, |n| n.get());
    let n = slots + 16;
    let ids: Vec<String> = (0..n).map(|i| format!("\"i{i}\"")).collect();
    let mut b = Building::new(
        TEN,
        &format!(
            "[service.slow]\ncommand = \"{{fixture}}\"\nargs = [\"--delay-listen\", \"1000\"]\nisolation = \"process\"\nstartup_timeout = 60\n\n[instances]\nslow = [{}]\n",
            ids.join(", ")
        ),
    );
    b.start();
    let mut most = 0;
    wait_for(&format!("{n} instances running"), SOON * 2, || {
        let ps = b.ps();
        let spawned_starting = ps
            .iter()
            .filter(|i| i["state"] == "starting" && !i["pid"].is_null())
            .count();
        most = most.max(spawned_starting);
        assert!(
            spawned_starting <= slots,
            "{spawned_starting} spawned at once (slots: {slots})"
        );
        let running = ps.iter().filter(|i| i["state"] == "running").count();
        (running == n).then_some(())
    });
    assert!(most > 0, "never saw one starting");
    let restarts: u64 = b.ps().iter().map(|i| i["restarts"].as_u64().unwrap()).sum();
    assert_eq!(restarts, 0);
}

#[test]
fn a_running_instance_costs_the_server_four_descriptors() {
    // Its shim's connection, its two pipes, its kept health-check connection: ten thousand
    // instances fit in a 65,536 open-files limit.
    let mut b = Building::new(
        TEN,
        "[settings]\nhealth_check_interval = 1\n\n[service.web]\ncommand = \"{fixture}\"\nisolation = \"process\"\nhealth = \"/health\"\n",
    );
    b.start();
    let fds = |b: &Building| {
        std::fs::read_dir(format!("/proc/{}/fd", b.server_pid()))
            .unwrap()
            .count()
    };
    b.ten_ok(&["spawn", "web:warm"]);
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let before = fds(&b);
    let n = 20;
    for i in 0..n {
        b.ten_ok(&["spawn", &format!("web:i{i}")]);
    }
    // Past a health check of each, so its kept connection is counted.
    std::thread::sleep(std::time::Duration::from_millis(2500));
    let per = (fds(&b) - before) as f64 / n as f64;
    assert!(per <= 4.0, "{per} descriptors per instance");
}
