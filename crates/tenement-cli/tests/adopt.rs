//! Tenants outlive `ten serve`: after a crash (`kill -9`) a new server adopts the running
//! instances (same processes, output still captured, supervision going on); without one, every
//! instance is stopped by its shim once `adopt_timeout` has passed.

use std::time::Duration;

use test_support::http::get;
use test_support::{Building, SOON, alive, get_unix, root_or_skip, wait_for};

const TEN: &str = env!("CARGO_BIN_EXE_ten");

fn config(adopt_timeout: u64, isolation: &str) -> String {
    format!(
        r#"
[settings]
adopt_timeout = {adopt_timeout}

[service.web]
command = "{{fixture}}"
isolation = "{isolation}"
health = "/health"

[instances]
web = ["a", "b"]
"#
    )
}

fn say(b: &Building, key: &str, text: &str) {
    let (svc, id) = key.split_once(':').unwrap();
    let r = get(
        &b.http_addr(),
        &format!("{id}.{svc}.tenement.test"),
        &format!("/say?text={text}"),
    )
    .unwrap();
    assert_eq!(r.status, 200);
}

fn pid_of(b: &Building, key: &str) -> u64 {
    b.wait_instance(key, "running", |i| i["state"] == "running")["pid"]
        .as_u64()
        .unwrap()
}

fn adopted_after_kill9(isolation: &str) {
    let mut b = Building::new(TEN, &config(60, isolation));
    b.start();
    let before: Vec<u64> = ["web:a", "web:b"].iter().map(|k| pid_of(&b, k)).collect();
    say(&b, "web:a", "before-the-crash");
    // Lines the server read are committed every 250 ms: a crash loses at most those.
    std::thread::sleep(Duration::from_millis(1000));
    let tenants = b.tenant_processes();
    let socket = b.socket("web:a");
    b.kill9();

    // No server: the tenants run on and answer on their sockets.
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        tenants.iter().all(|p| alive(*p)),
        "a tenant died with the server"
    );
    let (status, _) = get_unix(&socket, "/health").expect("web:a answers without a server");
    assert_eq!(status, 200);
    // What it prints meanwhile waits in its pipe for the next server.
    assert_eq!(
        get_unix(&socket, "/say?text=while-no-server").unwrap().0,
        200
    );

    b.start();
    let after: Vec<u64> = ["web:a", "web:b"].iter().map(|k| pid_of(&b, k)).collect();
    assert_eq!(before, after, "adopted, not restarted");
    for p in &tenants {
        assert!(alive(*p), "tenant process {p} was restarted");
    }
    assert_eq!(b.front("web:b", "GET", "/").0, 200);
    say(&b, "web:a", "after-the-crash");
    for line in ["before-the-crash", "while-no-server", "after-the-crash"] {
        wait_for(&format!("{line} in the logs"), SOON, || {
            let out = b.ten_ok(&["logs", "web:a", "--search", line]);
            out.contains(line).then_some(())
        });
    }
    assert!(
        b.serve_log().contains("adopted"),
        "the adoption is logged:\n{}",
        b.serve_log()
    );

    // Supervision goes on: a crash of an adopted instance is seen and restarted.
    let _ = b.front("web:b", "GET", "/crash");
    b.wait_instance("web:b", "restarted", |i| {
        i["state"] == "running" && i["pid"].as_u64() != Some(after[1])
    });
    // And a stop stops it for good.
    b.ten_ok(&["stop", "web:a"]);
    wait_for("web:a's processes gone", SOON, || {
        (!alive(after[0] as i32)).then_some(())
    });
}

#[test]
fn a_crashed_server_is_replaced_and_adopts_process_instances() {
    adopted_after_kill9("process");
}

#[test]
fn a_crashed_server_is_replaced_and_adopts_namespace_instances() {
    if !root_or_skip("namespace isolation needs root") {
        return;
    }
    adopted_after_kill9("namespace");
}

#[test]
fn without_a_new_server_no_tenant_outlives_adopt_timeout() {
    let mut b = Building::new(TEN, &config(2, "process"));
    b.start();
    pid_of(&b, "web:a");
    pid_of(&b, "web:b");
    let tenants = b.tenant_processes();
    assert!(tenants.len() >= 4, "{tenants:?}");
    b.kill9();
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        tenants.iter().all(|p| alive(*p)),
        "they wait for a new server"
    );
    wait_for("every tenant gone after adopt_timeout", SOON, || {
        b.tenant_processes().is_empty().then_some(())
    });
}

#[test]
fn a_changed_definition_is_not_adopted_but_started_anew() {
    let mut b = Building::new(TEN, &config(60, "process"));
    b.start();
    let before = pid_of(&b, "web:a");
    b.kill9();
    b.write_config(&config(60, "process").replace(
        "health = \"/health\"",
        "health = \"/health\"\n[service.web.env]\nVERSION = \"two\"",
    ));
    b.start();
    let after = wait_for("web:a started anew", SOON, || {
        let i = b.instance("web:a")?;
        (i["state"] == "running" && i["pid"].as_u64() != Some(before)).then_some(i)
    });
    assert!(!alive(before as i32), "the old process was stopped");
    let (_, env) = b.front("web:a", "GET", "/env");
    assert!(env.contains("VERSION=two"), "{env}\n{after}");
}

/// What a shim says first to whoever connects to `socket` (SOCK_SEQPACKET), if anything.
fn shim_says(socket: &std::path::Path) -> Option<String> {
    use std::os::unix::ffi::OsStrExt;
    // SAFETY: socket/connect/recv on a descriptor this function owns, buffers of their size.
    unsafe {
        let fd = libc::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0);
        let mut addr: libc::sockaddr_un = std::mem::zeroed();
        addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
        for (i, b) in socket.as_os_str().as_bytes().iter().enumerate() {
            addr.sun_path[i] = *b as libc::c_char;
        }
        let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
        let connected = libc::connect(fd, &addr as *const _ as *const libc::sockaddr, len) == 0;
        let tv = libc::timeval {
            tv_sec: 2,
            tv_usec: 0,
        };
        let tvp = &tv as *const _ as *const libc::c_void;
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            tvp,
            std::mem::size_of::<libc::timeval>() as u32,
        );
        let mut buf = [0u8; 4096];
        let n = if connected {
            libc::recv(fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len(), 0)
        } else {
            -1
        };
        libc::close(fd);
        (n > 0).then(|| String::from_utf8_lossy(&buf[..n as usize]).into_owned())
    }
}

#[test]
fn no_process_takes_an_instance_from_its_running_server_not_even_as_root() {
    let mut b = Building::new(TEN, &config(60, "process"));
    b.start();
    let pid = pid_of(&b, "web:a");
    let shims: Vec<_> = std::fs::read_dir(b.data_dir().join(".shims"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(shims.len(), 2);
    for s in &shims {
        assert_eq!(
            shim_says(s),
            None,
            "{} handed its instance over",
            s.display()
        );
    }
    // Still supervised by its server: a crash is seen and restarted.
    let _ = b.front("web:a", "GET", "/crash");
    b.wait_instance("web:a", "restarted", |i| {
        i["state"] == "running" && i["pid"].as_u64() != Some(pid)
    });
    // Once the server is gone, the next one does get it.
    b.kill9();
    assert!(
        shims
            .iter()
            .any(|s| shim_says(s).is_some_and(|h| h.starts_with("hello")))
    );
}

#[test]
fn a_shims_directory_that_is_a_link_is_refused_and_left_alone() {
    let b = Building::new(TEN, &config(60, "process"));
    let elsewhere = b.path().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    std::fs::write(elsewhere.join("notes.txt"), "keep me").unwrap();
    std::fs::create_dir_all(b.data_dir()).unwrap();
    std::os::unix::fs::symlink(&elsewhere, b.data_dir().join(".shims")).unwrap();
    let out = b
        .cmd(&["serve", "--port", "0", "--bind", "127.0.0.1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(".shims is not a directory of the server's own"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(elsewhere.join("notes.txt")).unwrap(),
        "keep me"
    );
}
