//! Storage quotas enforced by the kernel: a tmpfs per instance, or a loop-mounted ext4 image
//! that persists; ENOSPC past the quota while tenement keeps working.

use test_support::http::get;
use test_support::{Building, SOON, wait_for};

const TEN: &str = env!("CARGO_BIN_EXE_ten");

const CONFIG: &str = r#"
[service.eph]
command = "{fixture}"
socket = "{dir}/s/{name}-{id}.sock"
isolation = "process"
storage_quota_mb = 8

[service.keep]
command = "{fixture}"
socket = "{dir}/s/{name}-{id}.sock"
isolation = "process"
storage_quota_mb = 8
storage_persist = true

[service.nsq]
command = "{fixture}"
socket = "{dir}/s/{name}-{id}.sock"
isolation = "namespace"
storage_quota_mb = 8
"#;

fn root() -> bool {
    test_support::root_or_skip("storage quotas mount filesystems and need root")
}

/// One test at a time: a namespace instance of one test's server would otherwise hold copies
/// of the mounts another test's server made meanwhile (mount namespaces begin as copies, and
/// only the instance's own server's mounts are detached from them), keeping that test's image
/// busy when it wants to grow it.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

fn write(addr: &str, host: &str, mb: u32) -> (u16, String) {
    let mut r = get(addr, host, &format!("/write?mb={mb}")).unwrap();
    (r.status, r.text().unwrap())
}

#[test]
fn writing_past_the_quota_is_enospc_in_every_mode() {
    if !root() {
        return;
    }
    let _one_at_a_time = serial();
    let mut b = Building::new(TEN, CONFIG);
    b.start();
    let addr = b.http_addr();
    for key in ["eph:a", "keep:a", "nsq:a"] {
        b.ten_ok(&["spawn", key]);
        let (svc, id) = key.split_once(':').unwrap();
        let host = format!("{id}.{svc}.tenement.test");
        let (code, msg) = write(&addr, &host, 16);
        assert_eq!(code, 507, "{key}: {msg}");
        assert!(msg.contains("No space left on device"), "{key}: {msg}");
        assert_eq!(write(&addr, &host, 2).0, 200, "{key}: within the quota");
        let i = b.instance(key).unwrap();
        assert_eq!(i["storage_quota_mb"], 8);
        assert!(i["storage_used_bytes"].as_u64().unwrap() >= 2 << 20, "{i}");
    }
    assert_eq!(b.ps().len(), 3, "tenement keeps working");
    let tenement_db = b.data_dir().join("tenement.db");
    assert!(tenement_db.exists());
}

#[test]
fn persisted_data_survives_stop_and_server_restart_ephemeral_does_not() {
    if !root() {
        return;
    }
    let _one_at_a_time = serial();
    let mut b = Building::new(TEN, &test_support::no_adoption(CONFIG));
    b.start();
    let addr = b.http_addr();
    b.ten_ok(&["spawn", "keep:a"]);
    b.ten_ok(&["spawn", "eph:a"]);
    assert_eq!(write(&addr, "a.keep.tenement.test", 3).0, 200);
    assert_eq!(write(&addr, "a.eph.tenement.test", 3).0, 200);
    let keep_fill = b.data_dir().join("keep/a/fill");
    let eph_dir = b.data_dir().join("eph/a");
    assert_eq!(std::fs::metadata(&keep_fill).unwrap().len(), 3 << 20);

    b.ten_ok(&["stop", "keep:a"]);
    b.ten_ok(&["stop", "eph:a"]);
    assert!(!eph_dir.exists(), "non-persisted data is gone after stop");
    assert!(!keep_fill.exists(), "unmounted while stopped");
    b.ten_ok(&["spawn", "keep:a"]);
    assert_eq!(
        std::fs::metadata(&keep_fill).unwrap().len(),
        3 << 20,
        "persisted across stop/start"
    );
    b.ten_ok(&["spawn", "eph:a"]);
    assert!(!eph_dir.join("fill").exists(), "a fresh tmpfs");

    b.kill9();
    wait_for("tenants gone", SOON, || {
        b.tenant_processes().is_empty().then_some(())
    });
    b.start();
    b.wait_instance("keep:a", "back", |i| i["state"] == "running");
    assert_eq!(
        std::fs::metadata(&keep_fill).unwrap().len(),
        3 << 20,
        "persisted across kill -9 and restart"
    );
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let under = |p: &std::path::Path| {
        mounts
            .lines()
            .filter(|l| l.contains(&*p.to_string_lossy()))
            .count()
    };
    assert_eq!(
        under(&b.data_dir().join("keep/a")),
        1,
        "mounted once, not stacked"
    );
    let image = b.data_dir().join(".images/keep.a.ext4");
    assert!(image.exists());
    // Sparse: far fewer blocks allocated than its 8 MiB size.
    let meta = std::fs::metadata(&image).unwrap();
    assert_eq!(meta.len(), 8 << 20);
    // The tenant's data, byte for byte: not for other local users.
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let images = std::fs::metadata(b.data_dir().join(".images")).unwrap();
    assert_eq!(images.permissions().mode() & 0o777, 0o700);
}

#[test]
fn a_larger_quota_grows_the_persistent_image() {
    if !root() {
        return;
    }
    let _one_at_a_time = serial();
    let mut b = Building::new(TEN, CONFIG);
    b.start();
    let addr = b.http_addr();
    b.ten_ok(&["spawn", "keep:a"]);
    assert_eq!(write(&addr, "a.keep.tenement.test", 3).0, 200);
    assert!(b.terminate().success());
    b.write_config(&CONFIG.replace(
        "storage_quota_mb = 8\nstorage_persist = true",
        "storage_quota_mb = 24\nstorage_persist = true",
    ));
    b.start();
    b.wait_instance("keep:a", "back", |i| i["state"] == "running");
    assert_eq!(
        std::fs::metadata(b.data_dir().join("keep/a/fill"))
            .unwrap()
            .len(),
        3 << 20,
        "kept its data"
    );
    assert_eq!(
        write(&b.http_addr(), "a.keep.tenement.test", 16).0,
        200,
        "room for 16 MiB now"
    );
}

#[test]
fn a_namespace_instance_does_not_pin_another_instances_storage() {
    if !root() {
        return;
    }
    let _one_at_a_time = serial();
    let mut b = Building::new(TEN, CONFIG);
    b.start();
    b.ten_ok(&["spawn", "keep:a"]);
    // Started while keep:a's image is mounted: its mount namespace began as a copy.
    b.ten_ok(&["spawn", "nsq:pin"]);
    let pin = b.instance("nsq:pin").unwrap()["pid"].as_u64().unwrap();
    let keep_dir = b.data_dir().join("keep/a");
    let seen_by_pin = || {
        std::fs::read_to_string(format!("/proc/{pin}/mountinfo"))
            .unwrap()
            .lines()
            .any(|l| l.split(' ').nth(4) == Some(&*keep_dir.to_string_lossy()))
    };
    assert!(
        !seen_by_pin(),
        "another instance's storage is not in the namespace"
    );
    b.ten_ok(&["stop", "keep:a"]);
    // Unmounted everywhere, so its loop device is free.
    let image = b.data_dir().join(".images/keep.a.ext4");
    if let Ok(out) = std::process::Command::new("losetup")
        .arg("-j")
        .arg(&image)
        .output()
    {
        let held = String::from_utf8_lossy(&out.stdout);
        assert!(held.trim().is_empty(), "loop device still held: {held}");
    }
}
