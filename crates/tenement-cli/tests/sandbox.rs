//! `isolation = "sandbox"`: the app runs on gVisor (real `runsc`, ptrace platform), its Unix
//! socket is reachable from the host and through the front door, nothing of it survives a
//! stop, and after a `kill -9` of the server it is adopted by the next one (or, with
//! `adopt_timeout = 0`, gone at once).

use test_support::http::get;
use test_support::{Building, SOON, wait_for};

const TEN: &str = env!("CARGO_BIN_EXE_ten");

const CONFIG: &str = r#"
[settings]
health_check_interval = 2

[service.sb]
command = "{fixture} --fork 2"
socket = "{dir}/s/{name}-{id}.sock"
health = "/health"
startup_timeout = 30
isolation = "sandbox"
"#;

fn runsc_available() -> bool {
    let root = test_support::root_or_skip("sandbox tests need root");
    let runsc = std::process::Command::new("runsc")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !(root && runsc) {
        eprintln!("SKIPPED: sandbox tests need root and runsc (scripts/test installs it with apt)");
    }
    root && runsc
}

/// Live processes whose command line mentions this building's directory (runsc and its
/// sandbox and gofer carry the bundle path).
fn runsc_processes(b: &Building) -> Vec<String> {
    let needle = b.path().display().to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.parse::<u32>().is_ok())
        })
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains("runsc") && c.contains(&needle))
        .collect()
}

#[test]
fn the_app_runs_on_gvisor_and_is_reachable_through_the_proxy() {
    if !runsc_available() {
        return;
    }
    let mut b = Building::new(TEN, CONFIG);
    b.start();
    let addr = b.http_addr();
    b.ten_ok(&["spawn", "sb:a"]);
    assert_eq!(b.instance("sb:a").unwrap()["isolation"], "sandbox");
    let mut r = get(&addr, "a.sb.tenement.test", "/").unwrap();
    assert_eq!(
        (r.status, r.text().unwrap()),
        (200, "hello from sb:a\n".into())
    );

    // gVisor's kernel, not the host's.
    let inside = get(&addr, "a.sb.tenement.test", "/read?path=/proc/version")
        .unwrap()
        .text()
        .unwrap();
    let host = std::fs::read_to_string("/proc/version").unwrap();
    assert_ne!(inside.trim(), host.trim());
    assert!(
        inside.contains("4.4.0"),
        "gVisor reports Linux 4.4.0: {inside}"
    );
    // Its own PID namespace: it is PID 1 with its two forked children.
    let ps = get(&addr, "a.sb.tenement.test", "/ps")
        .unwrap()
        .text()
        .unwrap();
    assert_eq!(ps.lines().count(), 3, "{ps}");
    // data_dir is hidden (the server's state, other tenants' data) except its own part.
    let data = b.data_dir();
    // The bundles hold the instances' environments: not for other local users.
    let runsc = std::fs::metadata(data.join(".runsc")).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&runsc.permissions()) & 0o777,
        0o700
    );
    let read = |path: String| {
        let mut r = get(&addr, "a.sb.tenement.test", &format!("/read?path={path}")).unwrap();
        (r.status, r.text().unwrap())
    };
    let (code, text) = read(format!("{}/tenement.db", data.display()));
    assert_ne!(
        code,
        200,
        "the server's state is hidden ({} bytes read)",
        text.len()
    );
    std::fs::write(data.join("sb/a/mine.txt"), "own data").unwrap();
    assert_eq!(
        read(format!("{}/sb/a/mine.txt", data.display())).1,
        "own data"
    );
    // runsc run, its gofer and its sandbox are all in the instance's cgroup.
    let procs = b
        .cgroup_scopes()
        .iter()
        .map(|s| s.join("sb.a/cgroup.procs"))
        .find(|p| p.exists())
        .map(|p| std::fs::read_to_string(p).unwrap().lines().count());
    if let Some(n) = procs {
        assert!(n >= 4, "shim, runsc, gofer, sandbox: {n}");
    }
    let logs = b.ten_ok(&["logs", "sb:a"]);
    assert!(logs.contains("listening on"), "output captured: {logs}");

    b.ten_ok(&["stop", "sb:a"]);
    assert!(runsc_processes(&b).is_empty(), "{:?}", runsc_processes(&b));
    assert!(b.tenant_processes().is_empty());
    let bundles = data.join(".runsc/bundles");
    assert!(
        std::fs::read_dir(&bundles)
            .map(|d| d.count() == 0)
            .unwrap_or(true),
        "bundle removed"
    );
}

#[test]
fn kill_9_of_the_server_leaves_no_sandbox_behind() {
    if !runsc_available() {
        return;
    }
    let mut b = Building::new(TEN, &test_support::no_adoption(CONFIG));
    b.start();
    b.ten_ok(&["spawn", "sb:a"]);
    assert!(!runsc_processes(&b).is_empty());
    b.kill9();
    wait_for("every runsc process to go", SOON, || {
        runsc_processes(&b).is_empty().then_some(())
    });
    assert!(b.tenant_processes().is_empty());
    b.start();
    b.wait_instance("sb:a", "back", |i| i["state"] == "running");
    let mut r = get(&b.http_addr(), "a.sb.tenement.test", "/").unwrap();
    assert_eq!(r.text().unwrap(), "hello from sb:a\n");
}

#[test]
fn a_crashed_server_is_replaced_and_adopts_the_sandbox() {
    if !runsc_available() {
        return;
    }
    let mut b = Building::new(TEN, CONFIG);
    b.start();
    b.ten_ok(&["spawn", "sb:a"]);
    let pid = b.instance("sb:a").unwrap()["pid"].clone();
    let sandbox = runsc_processes(&b);
    b.kill9();
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_eq!(
        runsc_processes(&b),
        sandbox,
        "the sandbox runs on without a server"
    );
    b.start();
    let adopted = b.wait_instance("sb:a", "adopted", |i| i["state"] == "running");
    assert_eq!(adopted["pid"], pid, "adopted, not restarted");
    assert_eq!(runsc_processes(&b), sandbox);
    let mut r = get(&b.http_addr(), "a.sb.tenement.test", "/").unwrap();
    assert_eq!(r.text().unwrap(), "hello from sb:a\n");
    // Still supervised: a stop takes the whole sandbox down.
    b.ten_ok(&["stop", "sb:a"]);
    wait_for("every runsc process to go", SOON, || {
        runsc_processes(&b).is_empty().then_some(())
    });
}

#[test]
fn a_missing_runsc_fails_loudly_at_check_and_spawn() {
    let mut b = Building::new(
        TEN,
        r#"
[settings.sandbox]
runsc = "/nonexistent/runsc"

[service.sb]
command = "{fixture}"
socket = "{dir}/{name}-{id}.sock"
isolation = "sandbox"
"#,
    );
    let out = b.ten(&["config", "--check"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("service.sb")
            && err.contains("runsc")
            && err.contains("apt-get install runsc"),
        "{err}"
    );
    b.start();
    let out = b.ten(&["spawn", "sb:a"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("isolation `sandbox` is not available"));
    assert!(
        b.ps().is_empty(),
        "nothing was started, not even a weaker isolation"
    );
}

#[test]
fn a_namespace_tenant_cannot_reach_a_sandboxs_runsc_control_socket() {
    if !runsc_available() {
        return;
    }
    let mut b = Building::new(
        TEN,
        &format!(
            "{CONFIG}\n[service.ns]\ncommand = \"{{fixture}}\"\nsocket = \"{{dir}}/s/{{name}}-{{id}}.sock\"\n"
        ),
    );
    b.start();
    b.ten_ok(&["spawn", "sb:a"]);
    b.ten_ok(&["spawn", "ns:evil"]);
    // runsc names its control socket "runsc-sandbox.<container id>" (abstract, with a trailing
    // NUL); the container id is tenement's, made from the instance and the data directory.
    let state_root = b.data_dir().join(".runsc");
    let id = format!(
        "sb_a_{:08x}",
        tenement_runtime::fnv1a(state_root.as_os_str().as_encoded_bytes())
    );
    let name = format!("runsc-sandbox.{id}");
    let (status, body) = test_support::get_unix(
        &b.socket("ns:evil"),
        &format!("/connect?abstract={name}&nul=1"),
    )
    .unwrap();
    assert_ne!(
        status, 200,
        "a tenant reached runsc's control socket: {body}"
    );
    // Nor can any other local process in the host's network namespace.
    let mut addr = name.into_bytes();
    addr.push(0);
    use std::os::linux::net::SocketAddrExt;
    let a = std::os::unix::net::SocketAddr::from_abstract_name(&addr).unwrap();
    assert!(std::os::unix::net::UnixStream::connect_addr(&a).is_err());
    // The sandboxed app itself still answers.
    let (status, _) = test_support::get_unix(&b.socket("sb:a"), "/").unwrap();
    assert_eq!(status, 200);
}

#[test]
fn a_sandboxed_command_under_tmp_is_visible_read_only() {
    if !runsc_available() {
        return;
    }
    // The program lives in a directory of its own under /tmp (private inside the sandbox).
    let elsewhere = test_support::project_dir();
    let b0 = Building::new(TEN, "");
    let program = elsewhere.path().join("app");
    std::fs::copy(&b0.fixture, &program).unwrap();
    let mut b = Building::new(
        TEN,
        &format!(
            "[service.sb]\ncommand = \"{}\"\nisolation = \"sandbox\"\nstartup_timeout = 30\nsocket = \"{{dir}}/s/{{name}}-{{id}}.sock\"\n",
            program.display()
        ),
    );
    b.start();
    b.ten_ok(&["spawn", "sb:a"]);
    let (status, body) = test_support::get_unix(&b.socket("sb:a"), "/").unwrap();
    assert_eq!((status, body.as_str()), (200, "hello from sb:a\n"));
    // ...read-only.
    let (status, _) = test_support::get_unix(
        &b.socket("sb:a"),
        &format!("/put?path={}", elsewhere.path().join("x").display()),
    )
    .unwrap();
    assert_ne!(status, 200);
}
