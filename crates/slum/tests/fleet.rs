//! Real tenement servers joining a real `slum serve`: leases, heartbeats, bad tokens.

mod common;

use std::io::{Read, Write};
use std::path::PathBuf;

use common::SLUM;
use test_support::{Building, SOON, wait_for};

/// `ten`, built next to `slum` (`cargo build --workspace --bins`; scripts/test does).
fn ten() -> String {
    let path = PathBuf::from(SLUM).with_file_name("ten");
    assert!(
        path.exists(),
        "{} is missing: cargo build --workspace --bins",
        path.display()
    );
    path.to_string_lossy().into_owned()
}

struct Slum {
    /// Held for its drop (which stops slum).
    _serving: common::Serving,
    url: String,
    dir: tempfile::TempDir,
}

impl Slum {
    fn start(lease_ms: u64) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let lease = lease_ms.to_string();
        let serving = common::serve(&dir.path().join("slum.db"), &["--lease-ms", &lease]);
        let url = serving.url.clone();
        Slum {
            _serving: serving,
            url,
            dir,
        }
    }

    fn token(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(name))
            .unwrap()
            .trim()
            .to_owned()
    }

    /// `GET /api/servers` as the admin.
    fn servers(&self) -> serde_json::Value {
        let (_, body) = http(
            &self.url,
            "GET",
            "/api/servers",
            &self.token("slum.db.token"),
            "",
        );
        serde_json::from_str(&body).unwrap_or_default()
    }

    fn state_of(&self, id: &str) -> Option<serde_json::Value> {
        self.servers()
            .as_array()?
            .iter()
            .find(|s| s["id"] == id)
            .cloned()
    }
}

/// A raw HTTP/1.1 request: (status, body).
fn http(base: &str, method: &str, path: &str, token: &str, body: &str) -> (u16, String) {
    let addr = base.strip_prefix("http://").unwrap();
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    let status = answer.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

fn tenement(slum: &Slum, id: &str, token: &str) -> Building {
    let mut b = Building::new(
        &ten(),
        "[service.app]\ncommand = \"{fixture}\"\nisolation = \"process\"\n",
    );
    b.start_with(
        &["--slum", &slum.url, "--slum-token", token, "--slum-id", id],
        &[],
    );
    b
}

fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) of the server this test started.
    unsafe { libc::kill(pid as i32, sig) };
}

#[test]
fn a_server_joins_heartbeats_and_loses_its_lease_when_silent() {
    let slum = Slum::start(1500);
    // The join token is slum's alone to read.
    let file = slum.dir.path().join("slum.db.join-token");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(file).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    let b = tenement(&slum, "east", &slum.token("slum.db.join-token"));
    let east = wait_for("east to join", SOON, || {
        slum.state_of("east").filter(|s| s["state"] == "up")
    });
    assert!(east["capacity"]["cpus"].as_u64().unwrap() >= 1, "{east}");
    assert!(
        east["capacity"]["memory_mb"].as_u64().unwrap() > 0,
        "{east}"
    );
    assert_eq!(east["url"], format!("http://{}", b.http_addr()));
    // Its instances are counted.
    b.ten_ok(&["spawn", "app:one"]);
    wait_for("the instance to be reported", SOON, || {
        slum.state_of("east")
            .filter(|s| s["capacity"]["instances"] == 1)
    });

    // Silent (paused): its lease runs out.
    signal(b.server_pid(), libc::SIGSTOP);
    wait_for("east to be down", SOON, || {
        slum.state_of("east").filter(|s| s["state"] == "down")
    });
    signal(b.server_pid(), libc::SIGCONT);
    wait_for("east to be up again", SOON, || {
        slum.state_of("east").filter(|s| s["state"] == "up")
    });
}

#[test]
fn a_wrong_join_token_or_a_forged_heartbeat_changes_nothing() {
    let slum = Slum::start(1500);
    let b = tenement(&slum, "east", "0123456789abcdef0123456789abcdef");
    wait_for("the refusal in the log", SOON, || {
        b.serve_log()
            .contains("slum refused the join")
            .then_some(())
    });
    assert!(slum.state_of("east").is_none());
    // A real server joins; someone with the join token but not its secret cannot speak for it.
    let _real = tenement(&slum, "west", &slum.token("slum.db.join-token"));
    wait_for("west to join", SOON, || {
        slum.state_of("west").filter(|s| s["state"] == "up")
    });
    let forged = r#"{"id":"west","capacity":{"memory_mb":1,"free_memory_mb":999999,"cpus":64,"instances":0}}"#;
    for token in [
        slum.token("slum.db.join-token"),
        slum.token("slum.db.token"),
        String::new(),
    ] {
        let (status, _) = http(&slum.url, "POST", "/api/heartbeat", &token, forged);
        assert_eq!(status, 401);
    }
    assert_ne!(slum.state_of("west").unwrap()["capacity"]["cpus"], 64);
    // The join token is not the admin token.
    let (status, _) = http(
        &slum.url,
        "GET",
        "/api/servers",
        &slum.token("slum.db.join-token"),
        "",
    );
    assert_eq!(status, 401);
}
