//! `isolation = "wasm"`: components built from source (crates/tenement-wasm/guests), served
//! through the front door, attacked from inside (files, memory, CPU, network, panics) and
//! refused when they are not something tenement can serve.

use std::path::Path;
use std::time::Duration;

use test_support::http::{get, request};
use test_support::{Building, SOON, wait_for};

const TEN: &str = env!("CARGO_BIN_EXE_ten");

/// A building whose `hello` service runs the handler guest (`test_support::wasm::building`).
fn building(extra: &str) -> Option<Building> {
    test_support::wasm::building(TEN, extra)
}

fn front(b: &Building, path: &str) -> (u16, String) {
    b.front("hello:one", "GET", path)
}

fn post(b: &Building, path: &str, body: &[u8]) -> (u16, String) {
    let mut r = request(
        &b.http_addr(),
        "one.hello.tenement.test",
        "POST",
        path,
        &[],
        Some((body.len() as u64, &mut &body[..])),
    )
    .unwrap();
    (r.status, r.text().unwrap())
}

#[test]
fn a_handler_is_served_with_its_env_and_nothing_leaks_between_requests() {
    let Some(mut b) = building("") else { return };
    // A project directory only root may enter: the host needs nothing of it.
    std::fs::set_permissions(
        b.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    let check = b.ten_ok(&["config", "--check"]);
    assert!(check.contains("ok"), "{check}");
    b.start();
    b.ten_ok(&["spawn", "hello:one"]);
    let status = b.instance("hello:one").unwrap();
    assert_eq!(status["isolation"], "wasm");
    assert_eq!(status["health"], "healthy");
    assert_eq!(front(&b, "/"), (200, "hello from wasm\n".into()));
    assert_eq!(front(&b, "/env?GREETING"), (200, "hi there".into()));
    assert_eq!(front(&b, "/env?INSTANCE_ID"), (200, "one".into()));
    // The host's PATH means nothing to a component.
    assert_eq!(front(&b, "/env?PATH"), (200, "(unset)".into()));
    // A fresh instance per request: a static counter starts over each time.
    for _ in 0..3 {
        assert_eq!(front(&b, "/count"), (200, "1".into()));
    }
    assert_eq!(
        post(&b, "/echo", b"a body through the component"),
        (200, "a body through the component".into())
    );
    // Its stdout and stderr are the instance's logs.
    assert_eq!(front(&b, "/log?marker-42").0, 200);
    wait_for("the component's lines in the logs", SOON, || {
        let logs = b.ten_ok(&["logs", "hello:one"]);
        (logs.contains("stdout: marker-42") && logs.contains("stderr: marker-42")).then_some(())
    });
    // ps shows the host process's memory like any instance's.
    let ps = b.ten_ok(&["ps"]);
    assert!(ps.contains("wasm"), "{ps}");
}

#[test]
fn a_component_sees_its_data_directory_and_nothing_else() {
    let Some(mut b) = building("") else { return };
    b.start();
    b.ten_ok(&["spawn", "hello:one"]);
    b.ten_ok(&["spawn", "hello:two"]);
    assert_eq!(post(&b, "/write?note.txt", b"kept"), (200, "kept".into()));
    let data = b.data_dir();
    let file = data.join("hello/one/note.txt");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "kept");
    // Written as the instance's own uid, like any app's files.
    let uid = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(&file).unwrap());
    assert_ne!(uid, 0);
    let mine = format!("/read?{}", file.display());
    assert_eq!(front(&b, &mine), (200, "kept".into()));
    // Nothing outside its directory: not the host's files, not its neighbour's, not the
    // server's state, not the building's.
    let neighbour = data.join("hello/two");
    std::fs::write(neighbour.join("secret"), "theirs").unwrap();
    for path in [
        "/etc/passwd".to_owned(),
        "/proc/self/environ".to_owned(),
        neighbour.join("secret").display().to_string(),
        data.join("state.db").display().to_string(),
        b.path().join("tenement.toml").display().to_string(),
        format!("{}/../two/secret", data.join("hello/one").display()),
    ] {
        let (status, body) = front(&b, &format!("/read?{path}"));
        assert_eq!(status, 403, "{path}: {body}");
        assert!(
            !body.contains("theirs") && !body.contains("root:"),
            "{body}"
        );
    }
    // A write that escapes is refused too.
    let (status, body) = post(&b, "/write?../two/planted", b"planted");
    assert_eq!(status, 500, "{body}");
    assert!(!neighbour.join("planted").exists());
}

#[test]
fn memory_cpu_and_panics_fail_one_request_not_the_instance() {
    let Some(mut b) = building("memory_limit_mb = 64\nrequest_cpu_ms = 300") else {
        return;
    };
    b.start();
    b.ten_ok(&["spawn", "hello:one"]);
    let pid = b.instance("hello:one").unwrap()["pid"].clone();
    assert_eq!(front(&b, "/alloc?16").0, 200);
    let (status, body) = front(&b, "/alloc?200");
    assert_eq!(status, 500, "{body}");
    let (status, body) = front(&b, "/panic");
    assert_eq!((status, body.as_str()), (500, "the handler failed\n"));
    // A request that spins is cut off; meanwhile the others are served.
    let addr = b.http_addr();
    let spinner = std::thread::spawn(move || {
        let mut r = get(&addr, "one.hello.tenement.test", "/spin").unwrap();
        (r.status, r.text().unwrap())
    });
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(front(&b, "/"), (200, "hello from wasm\n".into()));
    let (status, body) = spinner.join().unwrap();
    assert_eq!(status, 504, "{body}");
    assert!(body.contains("CPU time limit (300 ms)"), "{body}");
    // Same process, healthy, nothing restarted.
    assert_eq!(front(&b, "/"), (200, "hello from wasm\n".into()));
    let after = b.instance("hello:one").unwrap();
    assert_eq!(
        (after["pid"].clone(), after["restarts"].clone()),
        (pid, 0.into())
    );
    assert_eq!(after["health"], "healthy");
    let logs = b.ten_ok(&["logs", "hello:one"]);
    assert!(logs.contains("asked to panic"), "{logs}");
    assert!(
        logs.contains("GET /spin: the handler ran past its CPU time limit"),
        "{logs}"
    );
}

/// A one-line HTTP server answering "outside" on `addr:port`, for `ip netns exec`.
#[test]
fn an_idle_instance_sleeps_and_wakes_and_stop_leaves_nothing() {
    let Some(mut b) = building("idle_timeout = 1") else {
        return;
    };
    b.start();
    b.ten_ok(&["spawn", "hello:one"]);
    assert_eq!(front(&b, "/").0, 200);
    b.wait_instance("hello:one", "asleep", |i| i["state"] == "sleeping");
    assert!(
        b.tenant_processes().is_empty(),
        "{:?}",
        b.tenant_processes()
    );
    assert_eq!(front(&b, "/"), (200, "hello from wasm\n".into()));
    assert_eq!(b.instance("hello:one").unwrap()["state"], "running");
    b.ten_ok(&["stop", "hello:one"]);
    assert!(
        b.tenant_processes().is_empty(),
        "{:?}",
        b.tenant_processes()
    );
}

#[test]
fn components_are_compiled_once_and_a_damaged_cache_entry_is_rebuilt() {
    let Some(mut b) = building("") else { return };
    b.start();
    b.ten_ok(&["spawn", "hello:one"]);
    b.ten_ok(&["spawn", "hello:two"]);
    let compiled = |b: &Building| b.serve_log().matches("compiled instance").count();
    assert_eq!(compiled(&b), 1, "{}", b.serve_log());
    let cache = b.data_dir().join(".wasm-cache");
    let meta = std::fs::metadata(&cache).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o7777,
        0o700
    );
    let artifact = only_artifact(&cache);
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&artifact).unwrap().permissions(),
    );
    // Compiled code holds the component's data: nobody else reads it, let alone writes it.
    assert_eq!(mode & 0o077, 0, "an artifact is the server's alone");
    // The host loaded it anyway (as root, before becoming the instance's user)...
    assert_eq!(front(&b, "/"), (200, "hello from wasm\n".into()));
    // ...and a local user cannot.
    let as_nobody = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "cat"])
        .arg(&artifact)
        .output()
        .unwrap();
    assert!(!as_nobody.status.success());
    // Nor can it have `ten __wasm` load it for it.
    let host = std::process::Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            TEN,
            "__wasm",
            "--module",
        ])
        .arg(&artifact)
        .args(["--dir", "/tmp"])
        .env("SOCKET_PATH", b.path().join("nobody.sock"))
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&host.stderr);
    assert!(
        !host.status.success() && said.contains("Permission denied"),
        "{said}"
    );
    // A cache directory opened up by mistake is closed again at the next start.
    std::fs::set_permissions(&cache, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();

    // Damage it (as a disk error would): the next start must not run it.
    let mut code = std::fs::read(&artifact).unwrap();
    let middle = code.len() / 2;
    code[middle] ^= 0xff;
    std::fs::write(&artifact, code).unwrap();
    b.ten_ok(&["restart", "hello:one"]);
    b.wait_instance("hello:one", "running again", |i| i["state"] == "running");
    assert_eq!(compiled(&b), 2, "{}", b.serve_log());
    assert_eq!(front(&b, "/"), (200, "hello from wasm\n".into()));

    // A changed component is compiled anew, under a new name.
    let mut wasm = std::fs::read(b.path().join("handler.wasm")).unwrap();
    wasm.extend_from_slice(&custom_section("tenement-test", b"v2"));
    std::fs::write(b.path().join("handler.wasm"), wasm).unwrap();
    b.ten_ok(&["restart", "hello:two"]);
    b.wait_instance("hello:two", "running again", |i| i["state"] == "running");
    assert_eq!(compiled(&b), 3);
    let names = std::fs::read_dir(&cache).unwrap().count();
    assert_eq!(names, 4, "two artifacts, each with its digest");

    // An artifact that is not the server's own (put there by someone else, digest and all)
    // is not trusted either.
    let theirs: Vec<_> = std::fs::read_dir(&cache)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    for path in &theirs {
        std::os::unix::fs::chown(path, Some(4242), Some(4242)).unwrap();
    }
    b.ten_ok(&["restart", "hello:two"]);
    b.wait_instance("hello:two", "running again", |i| i["state"] == "running");
    assert_eq!(compiled(&b), 4, "{}", b.serve_log());
    assert_eq!(
        b.front("hello:two", "GET", "/"),
        (200, "hello from wasm\n".into())
    );
}

#[test]
fn the_storage_quota_bounds_what_a_component_writes() {
    let Some(mut b) = building("storage_quota_mb = 2") else {
        return;
    };
    b.start();
    b.ten_ok(&["spawn", "hello:one"]);
    assert_eq!(post(&b, "/write?small", b"fits"), (200, "fits".into()));
    let (status, body) = post(&b, "/write?big", &vec![b'x'; 3 << 20]);
    assert_eq!(status, 500, "{body}");
    assert!(body.contains("big"), "{body}");
    let on_disk = b.data_dir().join("hello/one/big");
    assert!(std::fs::metadata(on_disk).map_or(0, |m| m.len()) < 2 << 20);
    assert_eq!(front(&b, "/"), (200, "hello from wasm\n".into()));
    assert_eq!(b.instance("hello:one").unwrap()["restarts"], 0);
}

fn only_artifact(cache: &Path) -> std::path::PathBuf {
    let found: Vec<_> = std::fs::read_dir(cache)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "cwasm"))
        .collect();
    assert_eq!(found.len(), 1, "{found:?}");
    found[0].clone()
}

/// A component-level custom section (id 0): changes the file, not what it does.
fn custom_section(name: &str, data: &[u8]) -> Vec<u8> {
    let mut payload = vec![name.len() as u8];
    payload.extend_from_slice(name.as_bytes());
    payload.extend_from_slice(data);
    let mut section = vec![0u8, payload.len() as u8];
    section.extend(payload);
    section
}

#[test]
fn what_is_not_a_servable_component_is_refused_by_name_at_check_and_spawn() {
    let Some(handler) = test_support::wasm::guest("handler") else {
        return;
    };
    if !test_support::root_or_skip("wasm instances run inside namespace walls") {
        return;
    }
    let command = test_support::wasm::guest("command").unwrap();
    let missing = test_support::wasm::guest("missing_import").unwrap();
    let _ = handler;
    let cases: [(&str, Vec<u8>, &[&str]); 5] = [
        ("absent.wasm", vec![], &["absent.wasm: no such file"]),
        (
            "text.wasm",
            b"#!/bin/sh\necho hi\n".to_vec(),
            &["text.wasm is not a WebAssembly component"],
        ),
        (
            "core.wasm",
            b"\0asm\x01\0\0\0".to_vec(),
            &["core.wasm is a core WebAssembly module, not a component"],
        ),
        (
            "command.wasm",
            std::fs::read(command).unwrap(),
            &[
                "command.wasm is a wasi:cli command",
                "wasi:http/incoming-handler",
            ],
        ),
        (
            "missing.wasm",
            std::fs::read(missing).unwrap(),
            &[
                "missing.wasm imports what tenement does not provide",
                "tenement:test/vault",
            ],
        ),
    ];
    for (file, bytes, expected) in cases {
        let config = format!(
            "[service.bad]\ncommand = \"{file}\"\nisolation = \"wasm\"\nstartup_timeout = 30\nrestart = \"never\"\n"
        );
        let mut b = Building::new(TEN, &config);
        if !bytes.is_empty() {
            std::fs::write(b.path().join(file), bytes).unwrap();
        }
        let check = b.ten(&["config", "--check"]);
        let said = String::from_utf8_lossy(&check.stderr);
        assert!(!check.status.success(), "{file}");
        for e in expected {
            assert!(said.contains(e), "{file}: config --check said {said}");
        }
        assert!(said.contains("service.bad.command"), "{said}");
        b.start();
        let spawn = b.ten(&["spawn", "bad:one"]);
        let said = String::from_utf8_lossy(&spawn.stderr);
        assert!(!spawn.status.success(), "{file}");
        for e in expected {
            assert!(said.contains(e), "{file}: spawn said {said}");
        }
        assert!(b.tenant_processes().is_empty());
    }
}

#[test]
fn wasm_only_settings_are_refused_elsewhere() {
    let b = Building::new(
        TEN,
        "[service.app]\ncommand = \"{fixture}\"\nisolation = \"namespace\"\noutbound = false\nrequest_cpu_ms = 100\n",
    );
    let check = b.ten(&["config", "--check"]);
    let said = String::from_utf8_lossy(&check.stderr);
    assert!(!check.status.success());
    assert!(
        said.contains("service.app.outbound") && said.contains("share the host's network"),
        "{said}"
    );
    assert!(said.contains("service.app.request_cpu_ms"), "{said}");
    assert!(
        said.contains("tenement.toml:7:12: service.app.outbound"),
        "names file, line and field: {said}"
    );
}

#[test]
fn requests_within_the_memory_limit_cannot_add_up_past_it() {
    let Some(mut b) = building("memory_limit_mb = 64") else {
        return;
    };
    b.start();
    b.ten_ok(&["spawn", "hello:one"]);
    let pid = b.instance("hello:one").unwrap()["pid"].clone();
    let addr = b.http_addr();
    let answers: Vec<u16> = (0..6)
        .map(|_| {
            let addr = addr.clone();
            std::thread::spawn(move || {
                get(&addr, "one.hello.tenement.test", "/alloc?30").map_or(0, |r| r.status)
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().unwrap())
        .collect();
    // Each asked for 30 MB of 64: some get it, the others a 500; the instance lives on.
    assert!(answers.contains(&200), "{answers:?}");
    assert!(
        answers.iter().all(|s| *s == 200 || *s == 500),
        "{answers:?}"
    );
    let after = b.instance("hello:one").unwrap();
    assert_eq!(
        (after["pid"].clone(), after["restarts"].clone()),
        (pid, 0.into()),
        "{answers:?}"
    );
    assert_eq!(front(&b, "/alloc?30").0, 200);
}

#[test]
fn a_component_path_that_is_not_a_regular_file_is_refused_at_once() {
    if !test_support::root_or_skip("wasm instances run inside namespace walls") {
        return;
    }
    let mut b = Building::new(
        TEN,
        "[service.bad]\ncommand = \"fifo.wasm\"\nisolation = \"wasm\"\nrestart = \"never\"\n",
    );
    let fifo = std::ffi::CString::new(b.path().join("fifo.wasm").to_str().unwrap()).unwrap();
    // SAFETY: mkfifo(3) with a valid path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
    let check = b.ten(&["config", "--check"]);
    let said = String::from_utf8_lossy(&check.stderr);
    assert!(said.contains("fifo.wasm: not a regular file"), "{said}");
    b.start();
    let spawn = b.ten(&["spawn", "bad:one"]);
    assert!(String::from_utf8_lossy(&spawn.stderr).contains("not a regular file"));
    b.ten_ok(&["ps"]);
}

#[test]
fn a_request_whose_client_left_stops_running() {
    let Some(mut b) = building("") else { return };
    b.start();
    b.ten_ok(&["spawn", "hello:one"]);
    let cpu = |b: &Building| -> u64 {
        b.tenant_processes()
            .iter()
            .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/stat")).ok())
            .map(|st| {
                let f: Vec<&str> = st.rsplit(')').next().unwrap().split_whitespace().collect();
                f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
            })
            .sum()
    };
    {
        let mut s = std::net::TcpStream::connect(b.http_addr()).unwrap();
        std::io::Write::write_all(
            &mut s,
            b"GET /spin HTTP/1.1\r\nHost: one.hello.tenement.test\r\n\r\n",
        )
        .unwrap();
        std::thread::sleep(Duration::from_millis(500));
    } // the client goes (its request has 10 s of CPU time left)
    std::thread::sleep(Duration::from_millis(500));
    let before = cpu(&b);
    std::thread::sleep(Duration::from_secs(2));
    let spent = cpu(&b) - before;
    assert!(
        spent < 50,
        "the abandoned request went on spinning: {spent} ticks in 2 s"
    );
    assert_eq!(front(&b, "/"), (200, "hello from wasm\n".into()));
}
