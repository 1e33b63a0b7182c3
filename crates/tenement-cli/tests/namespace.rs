//! `isolation = "namespace"` (the default): private PID namespace and /proc, hidden neighbours,
//! apps that fork and use threads still work, nothing survives the server.

use test_support::{Building, SOON, alive, get_unix, wait_for};

const TEN: &str = env!("CARGO_BIN_EXE_ten");

const CONFIG: &str = r#"
[service.web]
command = "{fixture} --fork 3 --threads 4"
socket = "{dir}/data/sock/{name}-{id}.sock"
health = "/health"
"#;

fn root() -> bool {
    test_support::root_or_skip("namespace isolation needs root")
}

/// The first word of a `/proc/PID/status` line (`Uid:`, `CapEff:`...).
fn status_field(status: &str, name: &str) -> String {
    let line = status.lines().find_map(|l| l.strip_prefix(name)).unwrap();
    line.split_whitespace().next().unwrap().to_owned()
}

fn get(b: &Building, key: &str, path: &str) -> (u16, String) {
    get_unix(&b.socket(key), path).unwrap()
}

#[test]
fn the_app_sees_only_its_own_processes_and_data() {
    if !root() {
        return;
    }
    let mut b = Building::new(TEN, CONFIG);
    b.start();
    b.ten_ok(&["spawn", "web:a"]);
    b.ten_ok(&["spawn", "web:b"]);
    let a = b.instance("web:a").unwrap();
    assert_eq!(a["isolation"], "namespace", "namespace is the default");

    // PID namespace: init is 1, the app 2, its three forked children (after the thread ids);
    // nothing else.
    let pids = wait_for("the forked children to appear", SOON, || {
        let (_, ps) = get(&b, "web:a", "/ps");
        let pids: Vec<u32> = ps.lines().filter_map(|l| l.parse().ok()).collect();
        (pids.len() == 5).then_some(pids)
    });
    assert_eq!(pids[..2], [1, 2]);
    assert!(pids.iter().all(|p| *p < 20), "{pids:?}");
    assert_eq!(get(&b, "web:a", "/pid").1, "2");
    assert_eq!(get(&b, "web:a", "/hostname").1.trim(), "a-web");

    // Neither tenement's nor the sibling's environment is readable.
    let server = b.server_pid();
    let sibling_shim = b.instance("web:b").unwrap()["pid"].as_u64().unwrap();
    for pid in [server as u64, sibling_shim, sibling_shim + 1] {
        let (code, _) = get(&b, "web:a", &format!("/read?path=/proc/{pid}/environ"));
        assert_ne!(code, 200, "environ of host pid {pid} readable from web:a");
    }

    // Data directory: only its own instance directory (and the socket directory) exist.
    let data = b.data_dir();
    std::fs::write(data.join("web/b/secret"), "b's").unwrap();
    std::fs::write(data.join("web/a/mine"), "a's").unwrap();
    let (_, top) = get(&b, "web:a", &format!("/ls?path={}", data.display()));
    assert_eq!(
        top.lines().collect::<Vec<_>>(),
        ["sock", "web"],
        "tenement.db and the rest are hidden"
    );
    let (_, services) = get(&b, "web:a", &format!("/ls?path={}/web", data.display()));
    assert_eq!(services.trim(), "a");
    assert_ne!(
        get(
            &b,
            "web:a",
            &format!("/read?path={}/web/b/secret", data.display())
        )
        .0,
        200
    );
    assert_eq!(
        get(
            &b,
            "web:a",
            &format!("/read?path={}/web/a/mine", data.display())
        )
        .1,
        "a's"
    );
    // The host still sees everything, and the app's socket is reachable from it.
    assert!(data.join("tenement.db").exists());
    // A user of its own, not root, with no capability at all and no way to gain one.
    let (_, status) = get(&b, "web:a", "/read?path=/proc/self/status");
    let field = |name: &str| status_field(&status, name);
    let uid: u32 = field("Uid:").parse().unwrap();
    assert!(uid >= 2_000_000, "runs as uid {uid}");
    let sibling_uid = status_field(&get(&b, "web:b", "/read?path=/proc/self/status").1, "Uid:");
    assert_ne!(
        uid.to_string(),
        sibling_uid,
        "each instance has a uid of its own"
    );
    assert_eq!(u64::from_str_radix(&field("CapEff:"), 16).unwrap(), 0);
    assert_eq!(field("NoNewPrivs:"), "1");
    // Its data directory and socket belong to it.
    let owner =
        std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(data.join("web/a")).unwrap());
    assert_eq!(owner, uid);
    // Its cgroups are read-only: readable, not writable (it cannot lift its own limits).
    let (_, mounts) = get(&b, "web:a", "/read?path=/proc/self/mounts");
    let cgroup_rw = mounts
        .lines()
        .filter(|l| {
            l.split(' ')
                .nth(1)
                .is_some_and(|p| p.starts_with("/sys/fs/cgroup"))
        })
        .filter(|l| {
            l.split(' ')
                .nth(3)
                .is_some_and(|o| o.split(',').any(|f| f == "rw"))
        })
        .collect::<Vec<_>>();
    assert!(cgroup_rw.is_empty(), "{cgroup_rw:?}");
}

#[test]
fn stop_and_kill_9_leave_nothing_in_namespace_mode() {
    if !root() {
        return;
    }
    let mut b = Building::new(TEN, &test_support::no_adoption(CONFIG));
    b.start();
    b.ten_ok(&["spawn", "web:a"]);
    b.ten_ok(&["spawn", "web:b"]);
    let procs = wait_for("shim, init, app and children of both", SOON, || {
        let p = b.tenant_processes();
        (p.len() >= 2 * 6).then_some(p)
    });
    b.ten_ok(&["stop", "web:a"]);
    b.kill9();
    wait_for("every tenant process gone", SOON, || {
        procs.iter().all(|p| !alive(*p)).then_some(())
    });
    assert!(b.tenant_processes().is_empty());
    b.start();
    b.wait_instance("web:b", "back", |i| i["state"] == "running");
    assert!(b.instance("web:a").is_none());
}

#[test]
fn exit_status_and_restart_work_through_init() {
    if !root() {
        return;
    }
    let mut b = Building::new(TEN, CONFIG);
    b.start();
    b.ten_ok(&["spawn", "web:a"]);
    let _ = get_unix(&b.socket("web:a"), "/exit?code=5");
    let back = b.wait_instance("web:a", "restarted", |i| {
        i["restarts"] == 1 && i["state"] == "running"
    });
    assert_eq!(back["last_exit"], "exit code 5");
}

#[test]
fn init_reaps_orphans_and_forwards_sigterm_with_the_exit_code() {
    if !root() {
        return;
    }
    let mut b = Building::new(
        TEN,
        r#"
[service.web]
command = "{fixture} --exit-on-term 42"
socket = "{dir}/data/sock/{name}-{id}.sock"
health = "/health"
"#,
    );
    b.start();
    b.ten_ok(&["spawn", "web:a"]);
    for _ in 0..5 {
        assert_eq!(get(&b, "web:a", "/orphan").0, 200);
    }
    std::thread::sleep(std::time::Duration::from_millis(600));
    assert_eq!(
        get(&b, "web:a", "/zombies").1,
        "0",
        "init reaped the orphans"
    );

    // SIGTERM reaches the app through init; its exit status is what tenement reports.
    b.ten_ok(&["restart", "web:a"]);
    let i = b.instance("web:a").unwrap();
    assert_eq!(i["last_exit"], "exit code 42");
    assert_eq!(i["state"], "running");
}

#[test]
fn forking_shell_wrappers_and_threaded_python_apps_work() {
    if !root() {
        return;
    }
    let hello =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/hello/app.py");
    let config = format!(
        r#"
[service.wrapped]
command = "for i in $(seq 100); do /bin/true; done; exec {{fixture}}"
socket = "{{dir}}/data/sock/{{name}}-{{id}}.sock"
health = "/health"

[service.py]
command = "python3 {}"
socket = "{{dir}}/data/sock/{{name}}-{{id}}.sock"
health = "/health"
"#,
        hello.canonicalize().unwrap().display()
    );
    let mut b = Building::new(TEN, &config);
    b.start();
    b.ten_ok(&["spawn", "wrapped:a"]);
    assert_eq!(get(&b, "wrapped:a", "/").1, "hello from wrapped:a\n");
    if std::process::Command::new("python3")
        .arg("-V")
        .output()
        .is_ok()
    {
        b.ten_ok(&["spawn", "py:a"]);
        // The threading server answers concurrent requests.
        let answers: Vec<(u16, String)> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..10).map(|_| s.spawn(|| get(&b, "py:a", "/"))).collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(
            answers
                .iter()
                .all(|(c, body)| *c == 200 && body == "hello from py:a\n"),
            "{answers:?}"
        );
    } else {
        eprintln!("SKIPPED (part): python3 missing");
    }
}

#[test]
fn the_specs_data_dir_id_example_is_the_instances_own_directory() {
    if !root() {
        return;
    }
    // configuration.md's `DATABASE_PATH = "{data_dir}/{id}/app.db"`: under namespace
    // isolation only the instance's own directory exists, so that is what it must name.
    let config = format!("{CONFIG}[service.web.env]\nHOME = \"{{data_dir}}/{{id}}\"\n");
    let mut b = Building::new(TEN, &config);
    b.start();
    b.ten_ok(&["spawn", "web:a"]);
    let (code, body) = get(&b, "web:a", "/write?mb=1");
    assert_eq!(code, 200, "{body}");
    let home = b.instance("web:a").unwrap()["data_dir"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(home.ends_with("/web/a"), "{home}");
    assert!(std::path::Path::new(&home).join("fill").is_file());
}

#[test]
fn user_root_is_the_opt_out_and_still_has_no_cap_sys_admin() {
    if !root() {
        return;
    }
    let mut b = Building::new(
        TEN,
        r#"
[service.web]
command = "{fixture}"
socket = "{dir}/data/sock/{name}-{id}.sock"
user = "root"
"#,
    );
    b.start();
    b.ten_ok(&["spawn", "web:a"]);
    let (_, status) = get(&b, "web:a", "/read?path=/proc/self/status");
    let field = |name: &str| status_field(&status, name);
    assert_eq!(field("Uid:"), "0");
    let caps = u64::from_str_radix(&field("CapEff:"), 16).unwrap();
    assert_eq!(caps & (1 << 21), 0, "CAP_SYS_ADMIN dropped: {caps:x}");
    assert_eq!(caps & (1 << 13), 0, "CAP_NET_RAW dropped: {caps:x}");
    assert_ne!(caps & 1, 0, "CAP_CHOWN kept: {caps:x}");
    // The host's filesystem is read-only for root too.
    let (code, _) = get(&b, "web:a", "/put?path=/etc/tenement-probe");
    assert_ne!(code, 200);
    assert!(!std::path::Path::new("/etc/tenement-probe").exists());
}
