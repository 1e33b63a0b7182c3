//! `slum serve` with real tenement servers: one on this host (`Slum`, `tenement`), or a fleet
//! on a LAN of its own (`Fleet`: each server in a network namespace on a bridge).

use test_support::{Building, SOON, wait_for};

use super::{SLUM, http, ten};

pub struct Slum {
    /// Held for its drop (which stops slum).
    pub serving: Option<super::Serving>,
    pub url: String,
    pub dir: tempfile::TempDir,
}

impl Slum {
    pub fn start(lease_ms: u64) -> Self {
        Self::start_on("127.0.0.1", lease_ms)
    }

    pub fn start_on(ip: &str, lease_ms: u64) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let lease = lease_ms.to_string();
        let serving = super::serve_on(ip, &dir.path().join("slum.db"), &["--lease-ms", &lease]);
        let url = serving.url.clone();
        Slum {
            serving: Some(serving),
            url,
            dir,
        }
    }

    pub fn token(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(name))
            .unwrap()
            .trim()
            .to_owned()
    }

    /// `GET /api/servers` as the admin.
    pub fn servers(&self) -> serde_json::Value {
        let (_, body) = http(
            &self.url,
            "GET",
            "/api/servers",
            &self.token("slum.db.token"),
            "",
        );
        serde_json::from_str(&body).unwrap_or_default()
    }

    pub fn state_of(&self, id: &str) -> Option<serde_json::Value> {
        self.servers()
            .as_array()?
            .iter()
            .find(|s| s["id"] == id)
            .cloned()
    }
}

pub fn tenement(slum: &Slum, id: &str, token: &str) -> Building {
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

pub fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) of the server this test started.
    unsafe { libc::kill(pid as i32, sig) };
}

/// A fleet on a LAN of its own: slum on this host (the bridge's address), each tenement
/// server in a network namespace of its own.
pub struct Fleet {
    pub slum: Slum,
    pub servers: Vec<(String, Building)>,
    /// Dropped after the servers (fields drop in order).
    pub hosts: Vec<test_support::netns::Netns>,
    _lan: test_support::netns::Lan,
}

// spawn_on_request: a request for an instance name that does not run would start it (what a
// stale table at a peer must not do to a tenant placed elsewhere).
pub const APP: &str =
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
    pub fn start(subnet: u8, members: &[(&str, u64)]) -> Option<Fleet> {
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

    pub fn join(&mut self, id: &str, ns: &test_support::netns::Netns, config: &str) {
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

    pub fn server(&self, id: &str) -> &Building {
        &self.servers.iter().find(|(i, _)| i == id).unwrap().1
    }

    pub fn host(&self, id: &str) -> &test_support::netns::Netns {
        let i = self.servers.iter().position(|(i, _)| i == id).unwrap();
        &self.hosts[i]
    }

    /// `slum ARGS` as the operator: (success, stdout + stderr).
    pub fn slum(&self, args: &[&str]) -> (bool, String) {
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
    pub fn place(&self, domain: &str, instance: &str, server: &str) {
        let (ok, said) = self.slum(&["tenant", "add", domain, instance, "--server", server]);
        assert!(ok, "{said}");
    }

    pub fn tenant(&self, domain: &str) -> Option<serde_json::Value> {
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
    pub fn get(&self, via: &str, domain: &str, path: &str) -> Option<(u16, String)> {
        let addr = self.server(via).http_addr();
        // A request caught by a cut (its owner gone mid-answer) is given up, as a client would.
        let within = std::time::Duration::from_secs(3);
        let mut r = test_support::http::request_within(&addr, domain, "GET", path, within).ok()?;
        Some((r.status, r.text().unwrap_or_default()))
    }

    /// Which server's instance answered `domain` through `via` (its data dir is in the
    /// answer's environment), if one did.
    pub fn answered_by(&self, via: &str, domain: &str) -> Option<String> {
        let (status, env) = self.get(via, domain, "/env")?;
        if status != 200 {
            return None;
        }
        self.servers
            .iter()
            .find(|(_, b)| env.contains(&*b.path().to_string_lossy()))
            .map(|(id, _)| id.clone())
    }

    pub fn runs(&self, id: &str, key: &str) -> bool {
        self.server(id).instance(key).is_some()
    }
}
