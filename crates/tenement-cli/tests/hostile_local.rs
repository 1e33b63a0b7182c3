//! The server's own plumbing attacked from inside the host: a tenant (namespaced, or of a
//! uid of its own) or another local user against the shims' sockets, the descriptors
//! `ten serve` inherited, and the control socket. The tenant boundary itself:
//! hostile_tenant.rs.

use std::os::unix::fs::PermissionsExt;

use test_support::{Building, get_unix};

const TEN: &str = env!("CARGO_BIN_EXE_ten");

fn root() -> bool {
    test_support::root_or_skip("these attacks need root (uids, namespaces)")
}

const TWO: &str = r#"
[service.web]
command = "{fixture}"
health = "/health"
"#;

/// The tenant `key` does `path` (an attack endpoint) itself, on its own socket.
fn tenant_does(b: &Building, key: &str, path: &str) -> (u16, String) {
    get_unix(&b.socket(key), path).unwrap()
}

/// Where `key`'s shim listens for the next server (`handover::socket_path`).
fn shim_socket(b: &Building, service: &str, id: &str) -> std::path::PathBuf {
    let hash = format!("{service}/{id}")
        .bytes()
        .fold(0x811c9dc5u32, |h, c| {
            (h ^ c as u32).wrapping_mul(0x01000193)
        });
    b.data_dir().join(".shims").join(format!("{hash:08x}"))
}

#[test]
fn no_tenant_can_take_a_neighbours_instance_from_its_server() {
    if !root() {
        return;
    }
    let mut b = Building::new(
        TEN,
        r#"
[service.web]
command = "{fixture}"

[service.nobody]
command = "{fixture}"
isolation = "process"
user = "nobody"
"#,
    );
    b.start();
    for key in ["web:victim", "web:evil", "nobody:evil"] {
        b.ten_ok(&["spawn", key]);
    }
    let victim_pid = b.instance("web:victim").unwrap()["pid"].clone();
    let shim = shim_socket(&b, "web", "victim");
    assert!(shim.exists(), "{}", shim.display());
    let attack = format!("/connect?seqpacket=1&path={}", shim.display());
    // Namespaced, it does not even see data_dir; as a uid of its own, .shims (0700) is shut.
    let (status, body) = tenant_does(&b, "web:evil", &attack);
    assert_ne!(status, 200, "{body}");
    let (status, body) = tenant_does(&b, "nobody:evil", &attack);
    assert_ne!(status, 200, "{body}");
    assert!(body.contains("ermission denied"), "{body}");
    // Even with the way open (an operator's chmod), the shim says nothing to a stranger and
    // keeps its server.
    std::fs::set_permissions(
        b.data_dir().join(".shims"),
        std::fs::Permissions::from_mode(0o711),
    )
    .unwrap();
    std::fs::set_permissions(&shim, std::fs::Permissions::from_mode(0o777)).unwrap();
    let (status, body) = tenant_does(&b, "nobody:evil", &attack);
    assert_ne!(status, 200, "a stranger got the shim's hello: {body}");
    assert!(!body.contains("hello"), "{body}");
    let victim = b.instance("web:victim").unwrap();
    assert_eq!(
        (victim["state"].as_str(), &victim["pid"]),
        (Some("running"), &victim_pid)
    );
    // Still its server's: a restart is seen and done by it.
    b.ten_ok(&["restart", "web:victim"]);
    b.wait_instance("web:victim", "restarted", |i| {
        i["state"] == "running" && i["pid"] != victim_pid
    });
}

#[test]
fn descriptors_ten_serve_inherited_never_reach_a_tenant() {
    if !root() {
        return;
    }
    let b = Building::new(TEN, TWO);
    let secret = b.path().join("secret");
    std::fs::write(&secret, "root's").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let file = std::fs::File::open(&secret).unwrap();
    let raw = std::os::fd::AsRawFd::as_raw_fd(&file);
    let mut cmd = b.cmd(&[
        "serve",
        "--port",
        "0",
        "--bind",
        "127.0.0.1",
        "--domain",
        "tenement.test",
    ]);
    // SAFETY: dup2(2) is async-signal-safe: the server starts with the file open as fd 77,
    // not close-on-exec, as a careless parent would leave it.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
            if libc::dup2(raw, 77) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut server = cmd
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    test_support::wait_for("ten serve", test_support::SOON, || {
        b.ten(&["ps"]).status.success().then_some(())
    });
    b.ten_ok(&["spawn", "web:a"]);
    let (status, fds) = tenant_does(&b, "web:a", "/ls?path=/proc/self/fd");
    let _ = server.kill();
    let _ = server.wait();
    assert_eq!(status, 200, "{fds}");
    assert!(
        !fds.split_whitespace().any(|f| f == "77"),
        "inherited: {fds}"
    );
}

#[test]
fn another_user_is_told_the_control_socket_is_not_theirs() {
    if !root() {
        return;
    }
    let mut b = Building::new(TEN, TWO);
    b.start();
    let mut cmd = b.cmd(&["ps"]);
    // SAFETY: setgroups/setresgid/setresuid are async-signal-safe: `ten ps` runs as nobody.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setresgid(65534, 65534, 65534) != 0
                || libc::setresuid(65534, 65534, 65534) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = cmd.output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ten serve's own user"), "{err}");
    assert!(!err.contains("no ten server is running"), "{err}");
}
