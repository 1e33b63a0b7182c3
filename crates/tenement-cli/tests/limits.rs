//! Resource limits through real cgroups (v1 on this development host, v2 where the host has
//! it): memory (OOM is reported), CPU weight, pids.max, usage, and cleanup.

use std::path::PathBuf;

use test_support::http::get;
use test_support::{Building, SOON, wait_for};

const TEN: &str = env!("CARGO_BIN_EXE_ten");

const CONFIG: &str = r#"
[settings]
backoff_base_ms = 100
health_check_interval = 1

[service.hog]
command = "{fixture}"
socket = "{dir}/s/{name}-{id}.sock"
health = "/health"
isolation = "process"
memory_limit_mb = 48
cpu_shares = 200
pids_max = 30

[service.plain]
command = "{fixture}"
socket = "{dir}/s/{name}-{id}.sock"
isolation = "namespace"
"#;

/// The building's cgroups, or a SKIPPED line when this host gives us none.
fn cgroups(b: &Building) -> Option<Vec<PathBuf>> {
    let scopes = b.cgroup_scopes();
    if scopes.is_empty() {
        eprintln!("SKIPPED: no cgroup scope was created (host without usable cgroups?)");
        return None;
    }
    Some(scopes)
}

fn find(scopes: &[PathBuf], instance: &str, file: &str) -> Option<String> {
    scopes
        .iter()
        .map(|s| s.join(instance).join(file))
        .find(|p| p.exists())
        .and_then(|p| std::fs::read_to_string(p).ok())
        .map(|s| s.trim().to_owned())
}

fn instance_dirs(scopes: &[PathBuf]) -> Vec<String> {
    let mut names: Vec<String> = scopes
        .iter()
        .flat_map(|s| std::fs::read_dir(s).into_iter().flatten().flatten())
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names.dedup();
    names
}

#[test]
fn limit_files_match_the_config_and_usage_is_visible() {
    let mut b = Building::new(TEN, CONFIG);
    b.start();
    b.ten_ok(&["spawn", "hog:a"]);
    let Some(scopes) = cgroups(&b) else { return };
    let v2 = scopes.iter().any(|s| s.join("hog.a/memory.max").exists());
    if v2 {
        assert_eq!(
            find(&scopes, "hog.a", "memory.max").unwrap(),
            (48u64 << 20).to_string()
        );
        assert_eq!(find(&scopes, "hog.a", "cpu.weight").unwrap(), "200");
    } else {
        assert_eq!(
            find(&scopes, "hog.a", "memory.limit_in_bytes").unwrap(),
            (48u64 << 20).to_string()
        );
        assert_eq!(
            find(&scopes, "hog.a", "cpu.shares").unwrap(),
            "2048",
            "weight 200 = 2 × the default 1024 shares"
        );
    }
    assert_eq!(find(&scopes, "hog.a", "pids.max").unwrap(), "30");
    // Every process of the instance is inside (the shim joined before forking the app).
    let procs = find(&scopes, "hog.a", "cgroup.procs").unwrap();
    assert_eq!(procs.lines().count(), 2, "shim and app: {procs}");

    let i = b.wait_instance("hog:a", "memory figure", |i| {
        i["memory_bytes"].as_u64().is_some_and(|m| m > 0)
    });
    assert!(i["cpu_usec"].as_u64().is_some(), "{i}");
    // The API names the cgroup directories the limits were written to.
    let dirs: Vec<&str> = i["cgroups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap())
        .collect();
    assert!(
        !dirs.is_empty() && dirs.iter().all(|d| d.ends_with("/hog.a")),
        "{i}"
    );
    assert!(
        dirs.iter()
            .all(|d| std::path::Path::new(d).join("cgroup.procs").exists()),
        "{dirs:?}"
    );
    let table = b.ten_ok(&["ps"]);
    assert!(table.contains("MEM") && table.contains("CPU"), "{table}");

    b.ten_ok(&["stop", "hog:a"]);
    assert!(
        !instance_dirs(&scopes).contains(&"hog.a".to_string()),
        "cgroup removed after stop"
    );
}

#[test]
fn over_the_memory_limit_is_an_oom_kill_reported_as_such() {
    let mut b = Building::new(TEN, CONFIG);
    b.start();
    let addr = b.http_addr();
    b.ten_ok(&["spawn", "hog:a"]);
    if cgroups(&b).is_none() {
        return;
    }
    let r = get(&addr, "a.hog.tenement.test", "/alloc?mb=200");
    assert!(
        r.is_err() || r.unwrap().status == 502,
        "the allocation never completes"
    );
    let i = b.wait_instance("hog:a", "restarted after OOM", |i| {
        i["oom_kills"] == 1 && i["state"] == "running"
    });
    assert_eq!(i["last_exit"], "oom");
    assert!(
        i["restarts"].as_u64() >= Some(1),
        "the restart policy applied"
    );
    assert!(
        b.ten_ok(&["logs", "hog:a"])
            .contains("killed by the kernel: out of memory")
    );
    assert!(b.serve_log().contains("out of memory"));
    // A small allocation is fine.
    assert_eq!(
        get(&addr, "a.hog.tenement.test", "/alloc?mb=8")
            .unwrap()
            .status,
        200
    );
}

#[test]
fn pids_max_stops_a_fork_bomb_and_tenement_stays_healthy() {
    let mut b = Building::new(TEN, CONFIG);
    b.start();
    let addr = b.http_addr();
    b.ten_ok(&["spawn", "hog:a"]);
    b.ten_ok(&["spawn", "plain:a"]);
    if cgroups(&b).is_none() {
        return;
    }
    let mut r = get(&addr, "a.hog.tenement.test", "/forkbomb?max=1000").unwrap();
    let said = r.text().unwrap();
    let started: u32 = said
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.trim_end_matches(',').parse().ok())
        .unwrap();
    assert!(started < 30, "pids.max = 30 stopped it: {said}");
    assert!(said.contains("then:"), "fork failed: {said}");
    assert_eq!(
        get(&addr, "a.plain.tenement.test", "/").unwrap().status,
        200,
        "the neighbour is fine"
    );
    assert_eq!(b.ps().len(), 2, "tenement answers");
    b.ten_ok(&["stop", "hog:a"]);
    assert!(b.tenant_processes().iter().all(|p| {
        !std::fs::read_to_string(format!("/proc/{p}/cmdline"))
            .unwrap_or_default()
            .contains("sleep")
    }));
}

#[test]
fn stale_cgroups_are_cleaned_after_kill_9() {
    let mut b = Building::new(TEN, &test_support::no_adoption(CONFIG));
    b.start();
    b.ten_ok(&["spawn", "plain:a"]);
    b.ten_ok(&["spawn", "plain:b"]);
    let Some(scopes) = cgroups(&b) else { return };
    assert_eq!(instance_dirs(&scopes), ["plain.a", "plain.b"]);
    b.ten_ok(&["stop", "plain:b"]);
    b.kill9();
    wait_for("tenants gone", SOON, || {
        b.tenant_processes().is_empty().then_some(())
    });
    b.start();
    b.wait_instance("plain:a", "back", |i| i["state"] == "running");
    assert_eq!(
        instance_dirs(&scopes),
        ["plain.a"],
        "only the live instance has a cgroup"
    );
}

#[test]
fn limits_that_cannot_be_applied_fail_the_spawn_unless_allowed() {
    let mut b = Building::new(TEN, CONFIG);
    // As on a host that offers ten serve no cgroups.
    b.start_with_env(&[("TENEMENT_NO_CGROUPS", "1")]);
    let out = b.ten(&["spawn", "hog:a"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("memory_limit_mb/cpu_shares need cgroups")
            && err.contains("allow_unlimited = true"),
        "{err}"
    );
    b.ten_ok(&["spawn", "plain:a"]); // no limits asked: runs
    b.terminate();

    b.write_config(&CONFIG.replace("[settings]", "[settings]\nallow_unlimited = true"));
    b.start_with_env(&[("TENEMENT_NO_CGROUPS", "1")]);
    b.ten_ok(&["spawn", "hog:b"]);
    assert!(b.cgroup_scopes().iter().all(|s| !s.join("hog.b").exists()));
}
