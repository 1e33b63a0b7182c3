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
    serving: Option<common::Serving>,
    url: String,
    dir: tempfile::TempDir,
}

impl Slum {
    fn start(lease_ms: u64) -> Self {
        Self::start_on("127.0.0.1", lease_ms)
    }

    fn start_on(ip: &str, lease_ms: u64) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let lease = lease_ms.to_string();
        let serving = common::serve_on(ip, &dir.path().join("slum.db"), &["--lease-ms", &lease]);
        let url = serving.url.clone();
        Slum {
            serving: Some(serving),
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
    // Down, its id still cannot be taken with the join token alone.
    let hijack = r#"{"id":"east","url":"http://10.6.6.6:80","domain":"evil.test","capacity":{}}"#;
    let join = slum.token("slum.db.join-token");
    let (status, said) = http(&slum.url, "POST", "/api/join", &join, hijack);
    assert_eq!(status, 409, "{said}");
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
            .contains("cannot join the slum fleet")
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
    // Nor can it take a live server's place by joining under its id (its tenants' traffic
    // would follow the URL).
    let hijack = r#"{"id":"west","url":"http://10.6.6.6:80","domain":"evil.test","capacity":{}}"#;
    let (status, said) = http(
        &slum.url,
        "POST",
        "/api/join",
        &slum.token("slum.db.join-token"),
        hijack,
    );
    assert_eq!(status, 409, "{said}");
    assert!(said.contains("has joined before"), "{said}");
    assert_eq!(
        slum.state_of("west").unwrap()["url"],
        format!("http://{}", _real.http_addr())
    );
    // What a server tells its peers about its lease needs the join token too.
    let west = format!("http://{}", _real.http_addr());
    for token in [String::new(), slum.token("slum.db.token"), "x".repeat(48)] {
        assert_eq!(http(&west, "GET", "/api/fleet/lease", &token, "").0, 401);
    }
    let (status, said) = http(
        &west,
        "GET",
        "/api/fleet/lease",
        &slum.token("slum.db.join-token"),
        "",
    );
    assert_eq!(status, 200, "{said}");
    assert!(said.contains("\"lease_held\":true"), "{said}");
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

/// A fleet on a LAN of its own: slum on this host (the bridge's address), each tenement
/// server in a network namespace of its own.
struct Fleet {
    slum: Slum,
    servers: Vec<(String, Building)>,
    /// Dropped after the servers (fields drop in order).
    hosts: Vec<test_support::netns::Netns>,
    _lan: test_support::netns::Lan,
}

// spawn_on_request: a request for an instance name that does not run would start it (what a
// stale table at a peer must not do to a tenant placed elsewhere).
const APP: &str =
    "[service.app]\ncommand = \"{fixture}\"\nisolation = \"process\"\nspawn_on_request = true\n";

/// A failed test shows the ends of the servers' and slum's logs.
impl Drop for Fleet {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let tail = |log: String| {
            let lines: Vec<&str> = log.lines().collect();
            lines[lines.len().saturating_sub(40)..].join("\n")
        };
        for (id, b) in &self.servers {
            eprintln!("--- {id}: serve.log ---\n{}", tail(b.serve_log()));
        }
        let log = std::fs::read_to_string(self.slum.dir.path().join("slum.db.log"));
        eprintln!("--- slum ---\n{}", tail(log.unwrap_or_default()));
    }
}

impl Fleet {
    /// `None` (SKIPPED printed) where namespaces cannot be made. `members`: (id, memory_mb).
    fn start(subnet: u8, members: &[(&str, u64)]) -> Option<Fleet> {
        if !test_support::root_or_skip("a fleet's hosts are network namespaces") {
            return None;
        }
        let lan = test_support::netns::Lan::new(&format!("brs{subnet}"), subnet)?;
        let slum = Slum::start_on(&lan.ip, 3000);
        let mut fleet = Fleet {
            slum,
            servers: Vec::new(),
            hosts: Vec::new(),
            _lan: lan,
        };
        for (i, (id, memory)) in members.iter().enumerate() {
            let ns = fleet._lan.host(&format!("s{subnet}{id}"), 2 + i as u8)?;
            fleet.join(
                id,
                &ns,
                &format!("[settings.slum]\nmemory_mb = {memory}\n\n{APP}"),
            );
            fleet.hosts.push(ns);
        }
        for (id, _) in members {
            wait_for("the server to join", SOON, || {
                fleet.slum.state_of(id).filter(|s| s["state"] == "up")
            });
        }
        Some(fleet)
    }

    fn join(&mut self, id: &str, ns: &test_support::netns::Netns, config: &str) {
        let mut b = Building::new(&ten(), config);
        b.netns = Some(ns.name.clone());
        b.bind = ns.ip.clone();
        let token = self.slum.token("slum.db.join-token");
        b.start_with(
            &[
                "--slum",
                &self.slum.url,
                "--slum-token",
                &token,
                "--slum-id",
                id,
            ],
            &[],
        );
        self.servers.push((id.to_owned(), b));
    }

    fn server(&self, id: &str) -> &Building {
        &self.servers.iter().find(|(i, _)| i == id).unwrap().1
    }

    fn host(&self, id: &str) -> &test_support::netns::Netns {
        let i = self.servers.iter().position(|(i, _)| i == id).unwrap();
        &self.hosts[i]
    }

    /// `slum ARGS` as the operator: (success, stdout + stderr).
    fn slum(&self, args: &[&str]) -> (bool, String) {
        let out = std::process::Command::new(SLUM)
            .args(["--url", &self.slum.url, "--token-file"])
            .arg(self.slum.dir.path().join("slum.db.token"))
            .args(args)
            .env_remove("SLUM_TOKEN")
            .output()
            .unwrap();
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), said)
    }

    /// `slum tenant add DOMAIN INSTANCE --server SERVER`, which must succeed.
    fn place(&self, domain: &str, instance: &str, server: &str) {
        let (ok, said) = self.slum(&["tenant", "add", domain, instance, "--server", server]);
        assert!(ok, "{said}");
    }

    fn tenant(&self, domain: &str) -> Option<serde_json::Value> {
        let (_, body) = http(
            &self.slum.url,
            "GET",
            "/api/tenants",
            &self.slum.token("slum.db.token"),
            "",
        );
        let all: serde_json::Value = serde_json::from_str(&body).ok()?;
        all.as_array()?
            .iter()
            .find(|t| t["domain"] == domain)
            .cloned()
    }

    /// `GET path` with `Host: domain` through server `via`'s front door: (status, body),
    /// or `None` when it cannot be reached.
    fn get(&self, via: &str, domain: &str, path: &str) -> Option<(u16, String)> {
        let addr = self.server(via).http_addr();
        // A request caught by a cut (its owner gone mid-answer) is given up, as a client would.
        let within = std::time::Duration::from_secs(3);
        let mut r = test_support::http::request_within(&addr, domain, "GET", path, within).ok()?;
        Some((r.status, r.text().unwrap_or_default()))
    }

    /// Which server's instance answered `domain` through `via` (its data dir is in the
    /// answer's environment), if one did.
    fn answered_by(&self, via: &str, domain: &str) -> Option<String> {
        let (status, env) = self.get(via, domain, "/env")?;
        if status != 200 {
            return None;
        }
        self.servers
            .iter()
            .find(|(_, b)| env.contains(&*b.path().to_string_lossy()))
            .map(|(id, _)| id.clone())
    }

    fn runs(&self, id: &str, key: &str) -> bool {
        self.server(id).instance(key).is_some()
    }
}

#[test]
fn tenants_are_placed_by_capacity_and_answer_through_every_server() {
    let Some(fleet) = Fleet::start(61, &[("small", 512), ("big", 8192)]) else {
        return;
    };
    // Placed by free capacity: the server offering more memory takes it, and runs it
    // before `slum tenant add` returns.
    let (ok, said) = fleet.slum(&["tenant", "add", "shop.customer.org", "app:prod"]);
    assert!(ok, "{said}");
    assert!(said.contains("on big"), "{said}");
    assert!(fleet.runs("big", "app:prod") && !fleet.runs("small", "app:prod"));
    assert_eq!(
        fleet.tenant("shop.customer.org").unwrap()["status"],
        "running"
    );

    // Every server answers the tenant's domain: the owner itself, the other one hop away,
    // with the owner's name for the instance and the client's address forwarded.
    for via in ["small", "big"] {
        assert_eq!(
            fleet.answered_by(via, "shop.customer.org").as_deref(),
            Some("big")
        );
    }
    let (status, headers) = fleet.get("small", "Shop.Customer.Org", "/headers").unwrap();
    assert_eq!(status, 200, "{headers}");
    assert!(
        headers.contains("host: prod.app.tenement.test"),
        "{headers}"
    );
    assert!(headers.contains("host=\"shop.customer.org\""), "{headers}");
    let client = &fleet.hosts[0].host_ip; // this host, as the LAN sees it
    assert!(
        headers.contains(&format!("x-forwarded-for: {client}, {}", fleet.hosts[0].ip)),
        "{headers}"
    );

    // A request for the tenant's instance by its own name at a server it is not placed on
    // (what a peer with a stale table would send) starts no second copy there.
    let (status, said) = fleet.get("small", "prod.app.tenement.test", "/").unwrap();
    assert_eq!(status, 421, "{said}");
    assert!(!fleet.runs("small", "app:prod"));

    // Named placement; then a move: started there, stopped here, routed there everywhere.
    let (ok, said) = fleet.slum(&[
        "tenant",
        "add",
        "blog.customer.org",
        "app:blog",
        "--server",
        "small",
    ]);
    assert!(ok && said.contains("on small"), "{said}");
    let (ok, said) = fleet.slum(&["tenant", "move", "shop.customer.org", "--to", "small"]);
    assert!(ok, "{said}");
    assert!(fleet.runs("small", "app:prod"));
    wait_for("the old copy to stop", SOON, || {
        (!fleet.runs("big", "app:prod")).then_some(())
    });
    for via in ["small", "big"] {
        assert_eq!(
            fleet.answered_by(via, "shop.customer.org").as_deref(),
            Some("small")
        );
    }

    // Bad input: clear errors, nothing half-done.
    let (ok, said) = fleet.slum(&["tenant", "add", "bad.customer.org", "nosuch:prod"]);
    assert!(!ok && said.contains("could not start"), "{said}");
    assert!(said.contains("nosuch"), "{said}");
    assert!(fleet.tenant("bad.customer.org").is_none());
    let (ok, said) = fleet.slum(&["tenant", "add", "shop.customer.org", "app:other"]);
    assert!(!ok && said.contains("taken"), "{said}");
    let (ok, said) = fleet.slum(&[
        "tenant",
        "add",
        "x.customer.org",
        "app:prod",
        "--server",
        "small",
    ]);
    assert!(!ok && said.contains("has a tenant on app:prod"), "{said}");
    let (ok, said) = fleet.slum(&["tenant", "move", "shop.customer.org", "--to", "nowhere"]);
    assert!(!ok && said.contains("no server"), "{said}");
    let (ok, said) = fleet.slum(&["server", "rm", "small"]);
    assert!(!ok && said.contains("still has 2 tenant"), "{said}");
    for (_, b) in &fleet.servers {
        assert!(b.instance("nosuch:prod").is_none());
    }

    // Removed: stopped on its server, and no server routes the name any more.
    let (ok, said) = fleet.slum(&["tenant", "rm", "shop.customer.org"]);
    assert!(ok, "{said}");
    wait_for("the tenant to stop", SOON, || {
        (!fleet.runs("small", "app:prod")).then_some(())
    });
    for via in ["small", "big"] {
        // (A name that routes nowhere is tenement's own, as any unknown host is.)
        wait_for("the name to be gone", SOON, || {
            fleet
                .answered_by(via, "shop.customer.org")
                .is_none()
                .then_some(())
        });
    }

    // A tenant's name is never an address nor a server's own name (where a server's API is
    // answered, or another tenant's instance: a hijack, or a hop that hops again).
    for (domain, why) in [
        ("10.61.0.2", "not a lowercase host name"),
        ("tenement.test", "routing domain"),
        ("prod.app.tenement.test", "routing domain"),
    ] {
        let (ok, said) = fleet.slum(&["tenant", "add", domain, "app:x1"]);
        assert!(!ok && said.contains(why), "{domain}: {said}");
    }
    // The join token cannot point the fleet at this host's own services, cloud metadata, or a
    // URL with more than an address in it.
    let join = fleet.slum.token("slum.db.join-token");
    for url in [
        "http://127.0.0.1:9100",
        "http://169.254.169.254",
        "http://[::1]:80",
        "http://user:pw@10.61.0.9:80",
        "http://10.61.0.9:80/path",
    ] {
        let body =
            format!(r#"{{"id":"rogue","url":"{url}","domain":"rogue.test","capacity":{{}}}}"#);
        let (status, said) = http(&fleet.slum.url, "POST", "/api/join", &join, &body);
        assert_eq!(status, 400, "{url}: {said}");
    }
    // What servers prove themselves with is not in slum's files as such; the files are 0600.
    let probe = r#"{"id":"probe","url":"http://10.61.0.9:80","domain":"probe.test","capacity":{}}"#;
    let (status, said) = http(&fleet.slum.url, "POST", "/api/join", &join, probe);
    assert_eq!(status, 200, "{said}");
    let answer: serde_json::Value = serde_json::from_str(&said).unwrap();
    let secret = answer["secret"].as_str().unwrap();
    for name in ["slum.db", "slum.db-wal"] {
        let path = fleet.slum.dir.path().join(name);
        let Ok(bytes) = std::fs::read(&path) else {
            continue;
        };
        assert!(
            !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "{name} holds a secret"
        );
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&path).unwrap().permissions(),
        );
        assert_eq!(mode & 0o077, 0, "{name}: {mode:o}");
    }
}

#[test]
fn a_cut_off_server_is_replaced_and_fenced_and_never_runs_a_second_copy() {
    let Some(fleet) = Fleet::start(62, &[("east", 4096), ("west", 4096)]) else {
        return;
    };
    // A server takes over another's tenants only once it has been up a full lease.
    std::thread::sleep(std::time::Duration::from_millis(3500));
    fleet.place("shop.customer.org", "app:prod", "east");
    assert_eq!(
        fleet.answered_by("west", "shop.customer.org").as_deref(),
        Some("east")
    );

    fleet.host("east").link(false);
    // Answered by west's own copy within the goal (measured in bench/slum.py).
    wait_for("the tenant to answer from west", SOON, || {
        (fleet.answered_by("west", "shop.customer.org")? == "west").then_some(())
    });
    let t = fleet.tenant("shop.customer.org").unwrap();
    assert_eq!(
        (t["server_id"].as_str(), t["status"].as_str()),
        (Some("west"), Some("running"))
    );
    assert_eq!(fleet.slum.state_of("east").unwrap()["state"], "down");
    // East lost its lease while cut off: its copy is put to sleep (no process left).
    wait_for("east's copy to be fenced", SOON, || {
        fleet
            .server("east")
            .tenant_processes()
            .is_empty()
            .then_some(())
    });

    // The link comes back: east never serves its old copy again, and stops it.
    fleet.host("east").link(true);
    let east = fleet.server("east");
    wait_for("east to stop the moved tenant", SOON, || {
        match fleet.get("east", "shop.customer.org", "/env") {
            Some((200, env)) => {
                assert!(
                    !env.contains(&*east.path().to_string_lossy()),
                    "east served its old copy"
                );
                (!fleet.runs("east", "app:prod")).then_some(())
            }
            _ => None,
        }
    });
    assert_eq!(
        fleet.answered_by("east", "shop.customer.org").as_deref(),
        Some("west")
    );
    assert!(east.tenant_processes().is_empty());
    assert!(!fleet.server("west").tenant_processes().is_empty());
    wait_for("east to be up again", SOON, || {
        fleet.slum.state_of("east").filter(|s| s["state"] == "up")
    });
}

#[test]
fn traffic_flows_with_slum_stopped_and_a_restart_within_the_lease_changes_nothing() {
    let Some(mut fleet) = Fleet::start(63, &[("east", 4096), ("west", 4096)]) else {
        return;
    };
    fleet.place("shop.customer.org", "app:prod", "east");
    let epoch = fleet.tenant("shop.customer.org").unwrap()["epoch"].clone();

    // east crashes and comes back within its lease: the tenant stays, same placement.
    let east = &mut fleet.servers[0].1;
    east.kill9();
    east.start_with(
        &[
            "--slum",
            &fleet.slum.url,
            "--slum-token",
            &fleet.slum.token("slum.db.join-token"),
            "--slum-id",
            "east",
        ],
        &[],
    );
    // (It came back on another port: the others learn it with its first heartbeat.)
    for via in ["east", "west"] {
        wait_for("the tenant to answer from east", SOON, || {
            (fleet.answered_by(via, "shop.customer.org")? == "east").then_some(())
        });
    }
    let t = fleet.tenant("shop.customer.org").unwrap();
    assert_eq!(
        (t["server_id"].as_str(), &t["epoch"]),
        (Some("east"), &epoch)
    );

    // slum stops: well past the lease, both servers still route the tenant (each has the
    // table; every peer says slum is gone, so nothing can have moved).
    drop(fleet.slum.serving.take());
    // Once every server's lease has ended (3 s) and they have told each other (a server whose
    // lease ends first refuses until its peers' have ended too: up to a heartbeat period),
    // traffic flows, and goes on flowing.
    std::thread::sleep(std::time::Duration::from_secs(5));
    let until = std::time::Instant::now() + std::time::Duration::from_secs(4);
    while std::time::Instant::now() < until {
        for via in ["east", "west"] {
            assert_eq!(
                fleet.answered_by(via, "shop.customer.org").as_deref(),
                Some("east"),
                "through {via}, with slum stopped"
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
