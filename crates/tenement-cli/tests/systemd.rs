//! `ten install` writes a unit systemd accepts; `ten serve` speaks systemd's notify protocol
//! (READY, RELOADING, STOPPING, WATCHDOG) to a real datagram socket.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use test_support::Building;

const TEN: &str = env!("CARGO_BIN_EXE_ten");

const CONFIG: &str = r#"
[service.web]
command = "{fixture}"
isolation = "process"
"#;

#[test]
fn install_writes_a_unit_systemd_analyze_verifies_and_uninstall_removes_it() {
    let b = Building::new(TEN, CONFIG);
    let units = b.path().join("units");
    let units_arg = units.display().to_string();
    let out = b.ten_ok(&[
        "install",
        "--unit-dir",
        &units_arg,
        "--environment-file",
        "/etc/tenement/slum.env",
        "--",
        "--port",
        "8099",
        "--domain",
        "example.com",
    ]);
    let unit = units.join("tenement.service");
    assert!(out.contains(&unit.display().to_string()), "{out}");
    let text = std::fs::read_to_string(&unit).unwrap();
    for want in [
        "Type=notify",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "Delegate=yes",
        "KillMode=process",
        "NotifyAccess=all",
        "WatchdogSec=",
        "serve --config",
        "--port 8099 --domain example.com",
        "EnvironmentFile=/etc/tenement/slum.env",
    ] {
        assert!(text.contains(want), "missing {want:?} in\n{text}");
    }
    match std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()
    {
        Ok(o) => {
            let err = String::from_utf8_lossy(&o.stderr);
            assert!(o.status.success(), "systemd-analyze verify: {err}");
            assert!(!err.contains("tenement.service"), "{err}");
        }
        Err(e) => eprintln!("SKIPPED (verify): systemd-analyze is not installed: {e}"),
    }
    let bad = b.ten(&["install", "--unit-dir", &units_arg, "--name", "bad name;x"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("is not a unit name"));
    b.ten_ok(&["uninstall", "--unit-dir", &units_arg]);
    assert!(!unit.exists());
    // A unit it did not write is left alone.
    std::fs::write(&unit, "[Service]\nExecStart=/bin/true\n").unwrap();
    assert!(
        !b.ten(&["uninstall", "--unit-dir", &units_arg])
            .status
            .success()
    );
    assert!(unit.exists());
}

fn next(sock: &UnixDatagram) -> String {
    let mut buf = [0u8; 512];
    let n = sock
        .recv(&mut buf)
        .expect("a notification within the timeout");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// The next notification that is not a watchdog ping.
fn next_state(sock: &UnixDatagram) -> String {
    loop {
        let m = next(sock);
        if m != "WATCHDOG=1" {
            return m;
        }
    }
}

#[test]
fn serve_says_ready_reloading_stopping_and_pings_the_watchdog() {
    let mut b = Building::new(TEN, CONFIG);
    let path = b.path().join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let notify = path.display().to_string();
    b.start_with(
        &[],
        &[("NOTIFY_SOCKET", &notify), ("WATCHDOG_USEC", "200000")],
    );
    assert!(next_state(&sock).starts_with("READY=1"));
    // Pings every 100 ms (half of WATCHDOG_USEC).
    let pings = (0..5).filter(|_| next(&sock) == "WATCHDOG=1").count();
    assert!(pings >= 4, "{pings}");
    // SAFETY: kill(2) on the pid of our own child.
    unsafe { libc::kill(b.server_pid() as i32, libc::SIGHUP) };
    let reloading = next_state(&sock);
    assert!(
        reloading.starts_with("RELOADING=1\nMONOTONIC_USEC="),
        "{reloading}"
    );
    assert_eq!(next_state(&sock), "READY=1");
    assert!(b.terminate().success());
    assert_eq!(next_state(&sock), "STOPPING=1");
}
