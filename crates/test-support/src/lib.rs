//! Harness for tenement's integration tests: a temp directory with a `tenement.toml`, the real
//! `ten serve` running on it, the `ten` CLI, the fixture app, and `/proc` inspection.
//!
//! Everything polls with generous deadlines (the CI machine is small and shared); nothing here
//! asserts on timing.

pub mod acme;
pub mod dns;
pub mod http;
pub mod netns;
pub mod wasm;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub use serde_json::Value;

/// The `--domain` every test building serves: `{id}.{service}.tenement.test`.
pub const DOMAIN: &str = "tenement.test";

/// Deadline for anything that should happen "soon".
pub const SOON: Duration = Duration::from_secs(30);

/// The `tenement-fixture` binary, built next to `ten` (`cargo build --workspace --bins`).
pub fn fixture_bin(ten: &Path) -> PathBuf {
    let path = ten.with_file_name("tenement-fixture");
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` first (scripts/test does)",
        path.display()
    );
    path
}

/// Polls `check` until it returns `Some`, or panics after `deadline` naming `what`.
pub fn wait_for<T>(what: &str, deadline: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + deadline;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            Instant::now() < end,
            "timed out after {deadline:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// A temp dir that is like a project directory (mode 0755: apps running as users of their
/// own may enter it; `tempfile` makes 0700).
pub fn project_dir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("ten-test-")
        .tempdir()
        .expect("tempdir");
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod the temp dir");
    dir
}

/// A test building: temp dir, config, and (once started) a running `ten serve`.
pub struct Building {
    pub dir: tempfile::TempDir,
    pub ten: PathBuf,
    pub fixture: PathBuf,
    config: PathBuf,
    server: Option<Child>,
    /// A server started by `ten upgrade` (not our child): its pid.
    successor: Option<i32>,
    /// `RLIMIT_NOFILE` (soft and hard) for `ten serve`, if set before it starts.
    pub fd_limit: Option<u64>,
    /// `--port` (0: any free port).
    pub http_port: u16,
    /// `--bind` (default 127.0.0.1).
    pub bind: String,
    /// A network namespace `ten serve` runs in (`ip netns exec`), if any.
    pub netns: Option<String>,
}

impl Building {
    /// Writes `tenement.toml` from `config`, where `{dir}` is the temp directory and
    /// `{fixture}` the fixture binary. `[settings] data_dir` defaults to `{dir}/data` unless
    /// the config sets it.
    pub fn new(ten: &str, config: &str) -> Self {
        let dir = project_dir();
        let ten = PathBuf::from(ten);
        let fixture = fixture_bin(&ten);
        let b = Self {
            config: dir.path().join("tenement.toml"),
            dir,
            ten,
            fixture,
            server: None,
            successor: None,
            fd_limit: None,
            http_port: 0,
            bind: "127.0.0.1".into(),
            netns: None,
        };
        b.write_config(config);
        b
    }

    /// A building that runs an existing configuration file (an example), with its data
    /// directory moved into a temp dir by `--data-dir`.
    pub fn with_config_file(ten: &str, config: &Path) -> Self {
        let dir = project_dir();
        let ten = PathBuf::from(ten);
        Self {
            fixture: fixture_bin(&ten),
            config: config.to_path_buf(),
            dir,
            ten,
            server: None,
            successor: None,
            fd_limit: None,
            http_port: 0,
            bind: "127.0.0.1".into(),
            netns: None,
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn data_dir(&self) -> PathBuf {
        self.path().join("data")
    }

    pub fn config_path(&self) -> PathBuf {
        self.config.clone()
    }

    pub fn write_config(&self, config: &str) {
        let body = config
            .replace("{dir}", &self.path().display().to_string())
            .replace("{fixture}", &self.fixture.display().to_string());
        let sets_data_dir = body.lines().any(|l| l.trim_start().starts_with("data_dir"));
        let body = if sets_data_dir {
            body
        } else if body.contains("[settings]") {
            body.replacen(
                "[settings]",
                &format!("[settings]\ndata_dir = \"{}\"", self.data_dir().display()),
                1,
            )
        } else {
            format!(
                "[settings]\ndata_dir = \"{}\"\n\n{body}",
                self.data_dir().display()
            )
        };
        std::fs::write(self.config_path(), body).expect("write config");
    }

    /// A `ten` command with `--config` pointing at this building.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.ten);
        c.args(args)
            .arg("--config")
            .arg(self.config_path())
            .arg("--data-dir")
            .arg(self.data_dir())
            .current_dir(self.path())
            .env_remove("TENEMENT_CONFIG")
            .env_remove("TENEMENT_SERVER")
            .env_remove("TENEMENT_TOKEN");
        c
    }

    pub fn ten(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("run ten")
    }

    /// Runs `ten ARGS`, panics unless it succeeds, returns stdout.
    pub fn ten_ok(&self, args: &[&str]) -> String {
        let out = self.ten(args);
        assert!(
            out.status.success(),
            "ten {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Starts `ten serve` on a free port and waits until its control socket answers.
    pub fn start(&mut self) {
        self.start_with_env(&[]);
    }

    /// [`Building::start`] with extra environment variables for `ten serve`.
    pub fn start_with_env(&mut self, env: &[(&str, &str)]) {
        self.start_with(&[], env);
    }

    /// [`Building::start`] with extra arguments and environment variables for `ten serve`.
    pub fn start_with(&mut self, args: &[&str], env: &[(&str, &str)]) {
        assert!(self.server.is_none(), "already started");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path().join("serve.log"))
            .expect("serve.log");
        let port = self.http_port.to_string();
        let mut cmd = self.cmd(&[
            "serve", "--port", &port, "--bind", &self.bind, "--domain", DOMAIN,
        ]);
        if let Some(ns) = &self.netns {
            let mut inside = Command::new("ip");
            inside
                .args(["netns", "exec", ns])
                .arg(cmd.get_program())
                .args(cmd.get_args());
            if let Some(dir) = cmd.get_current_dir() {
                inside.current_dir(dir);
            }
            for (k, v) in cmd.get_envs() {
                match v {
                    Some(v) => inside.env(k, v),
                    None => inside.env_remove(k),
                };
            }
            cmd = inside;
        }
        if let Some(n) = self.fd_limit {
            use std::os::unix::process::CommandExt;
            let limit = libc::rlimit {
                rlim_cur: n,
                rlim_max: n,
            };
            // SAFETY: setrlimit(2) is async-signal-safe and `limit` is a plain value copied in.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let child = cmd
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .env("TENEMENT_LOG", "info,tenement=debug")
            .env("NO_COLOR", "1")
            .envs(env.iter().copied())
            .spawn()
            .expect("spawn ten serve");
        self.server = Some(child);
        wait_for("ten serve to answer on its control socket", SOON, || {
            self.assert_server_alive();
            let out = self.ten(&["ps", "--json"]);
            out.status.success().then_some(())
        });
    }

    fn assert_server_alive(&mut self) {
        if let Some(child) = self.server.as_mut()
            && let Ok(Some(status)) = child.try_wait()
        {
            panic!("ten serve exited early ({status}):\n{}", self.serve_log());
        }
    }

    pub fn server_pid(&self) -> u32 {
        self.server.as_ref().expect("server running").id()
    }

    /// `host:port` of the server's TCP listener (read from its start-up log line).
    pub fn http_addr(&self) -> String {
        wait_for("the http listener in serve.log", SOON, || {
            let log = self.serve_log();
            let line = log
                .lines()
                .rev()
                .find(|l| l.contains("ten serve listening"))?
                .to_owned();
            Some(
                line.split("http=")
                    .nth(1)?
                    .split_whitespace()
                    .next()?
                    .to_owned(),
            )
        })
    }

    pub fn serve_log(&self) -> String {
        std::fs::read_to_string(self.path().join("serve.log")).unwrap_or_default()
    }

    /// `ten upgrade`: returns its output; the new server (pid in the output) is this
    /// building's from now on, and the old one is reaped once it exits.
    pub fn upgrade(&mut self) -> String {
        let out = self.ten_ok(&["upgrade"]);
        let pid = out
            .split("pid ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next()?.parse().ok())
            .unwrap_or_else(|| panic!("no pid in {out:?}"));
        self.successor = Some(pid);
        out
    }

    /// Waits for the server that handed over to exit; its exit status.
    pub fn wait_predecessor(&mut self) -> std::process::ExitStatus {
        let mut child = self.server.take().expect("a predecessor");
        wait_for("the old server to exit", SOON, || {
            child.try_wait().ok().flatten()
        })
    }

    /// The pid of the server that serves now.
    pub fn serving_pid(&self) -> i32 {
        self.successor
            .unwrap_or_else(|| self.server.as_ref().expect("server running").id() as i32)
    }

    /// `kill -9` of `ten serve`; waits for it to be reaped.
    pub fn kill9(&mut self) {
        let mut child = self.server.take().expect("server running");
        child.kill().expect("kill -9");
        child.wait().expect("reap");
    }

    /// SIGTERM to `ten serve`; returns once it has exited, with its exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.server.take().expect("server running");
        // SAFETY: plain kill(2) on the pid of a child we have not reaped yet.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let end = Instant::now() + SOON * 2;
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            assert!(Instant::now() < end, "ten serve did not exit after SIGTERM");
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// `ten ps --json`.
    pub fn ps(&self) -> Vec<Value> {
        serde_json::from_str(&self.ten_ok(&["ps", "--json"])).expect("ps --json is JSON")
    }

    pub fn instance(&self, key: &str) -> Option<Value> {
        self.ps().into_iter().find(|i| i["instance"] == key)
    }

    /// Waits until `key` satisfies `pred`, returning its status.
    pub fn wait_instance(&self, key: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        wait_for(&format!("{key} {what}"), SOON, || {
            self.instance(key).filter(|i| pred(i))
        })
    }

    /// Pids of live processes whose environment or command line mentions this building's
    /// directory: every tenant process (they get `HOME`/`SOCKET_PATH` under it), forked
    /// children included, and runsc's processes (their command lines name the bundle).
    pub fn tenant_processes(&self) -> Vec<i32> {
        let needle = self.path().as_os_str().as_encoded_bytes().to_vec();
        let me = std::process::id() as i32;
        let server = self.server.as_ref().map(|c| c.id() as i32);
        let mut found = vec![];
        for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<i32>().ok())
            else {
                continue;
            };
            if pid == me || Some(pid) == server {
                continue;
            }
            let Ok(environ) = std::fs::read(entry.path().join("environ")) else {
                continue;
            };
            if environ
                .windows(needle.len())
                .any(|w| w == needle.as_slice())
                && !is_zombie(pid)
            {
                found.push(pid);
            }
        }
        found
    }

    /// A request through the front door to instance `key` (`id.service.DOMAIN`):
    /// (status, body).
    pub fn front(&self, key: &str, method: &str, path: &str) -> (u16, String) {
        let (service, id) = key.split_once(':').expect("service:id");
        let host = format!("{id}.{service}.{DOMAIN}");
        let mut r = http::request(&self.http_addr(), &host, method, path, &[], None)
            .expect("front door request");
        let status = r.status;
        (status, r.text().unwrap_or_default())
    }

    /// The uid instance `key` runs as, read by the fixture app from its own
    /// `/proc/self/status`.
    pub fn uid_of(&self, key: &str) -> u32 {
        let (_, status) =
            get_unix(&self.socket(key), "/read?path=/proc/self/status").expect("ask the fixture");
        let line = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .expect("Uid:");
        line.split_whitespace()
            .next()
            .and_then(|u| u.parse().ok())
            .expect("a uid")
    }

    pub fn socket(&self, key: &str) -> PathBuf {
        PathBuf::from(
            self.instance(key).expect("instance exists")["socket"]
                .as_str()
                .expect("socket"),
        )
    }
}

impl Drop for Building {
    fn drop(&mut self) {
        if let Some(mut child) = self.server.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(pid) = self.successor.take() {
            // SAFETY: kill(2) of the server `ten upgrade` started for this building.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        // Tenants outlive a killed server (for `adopt_timeout`): not a test's.
        for pid in self.tenant_processes() {
            // SAFETY: kill(2) of a process this building's server started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        let end = Instant::now() + Duration::from_secs(5);
        while !self.tenant_processes().is_empty() && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.remove_cgroup_scope();
        self.unmount_all();
        if std::thread::panicking() {
            eprintln!("--- serve.log ---\n{}", self.serve_log());
        }
    }
}

impl Building {
    /// The server's cgroup scope directories (`tenement-<fnv1a of data_dir>` below this
    /// process's cgroup in each mounted hierarchy), so tests can look inside and clean up.
    pub fn cgroup_scopes(&self) -> Vec<PathBuf> {
        let data = std::path::absolute(self.data_dir()).unwrap_or_else(|_| self.data_dir());
        let hash = data
            .as_os_str()
            .as_encoded_bytes()
            .iter()
            .fold(0x811c9dc5u32, |h, b| {
                (h ^ *b as u32).wrapping_mul(0x01000193)
            });
        let scope = format!("tenement-{hash:08x}");
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        own.lines()
            .filter_map(|l| {
                let mut p = l.splitn(3, ':');
                let (_, names, path) = (p.next()?, p.next()?, p.next()?);
                let mount = if names.is_empty() {
                    "unified".to_owned()
                } else {
                    names
                        .split(',')
                        .next()?
                        .trim_start_matches("name=")
                        .to_owned()
                };
                let dir = Path::new("/sys/fs/cgroup")
                    .join(mount)
                    .join(path.trim_start_matches('/'))
                    .join(&scope);
                dir.is_dir().then_some(dir)
            })
            .collect()
    }

    /// Unmounts what a killed server left mounted in the building (quota filesystems), so the
    /// temp directory can go and no loop device leaks.
    fn unmount_all(&self) {
        let dir = self.path().to_string_lossy().into_owned();
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut points: Vec<&str> = info
            .lines()
            .filter_map(|l| l.split_whitespace().nth(4))
            .filter(|p| p.starts_with(&dir))
            .collect();
        points.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for p in points {
            if let Ok(c) = std::ffi::CString::new(p) {
                // SAFETY: umount2 with a valid NUL-terminated path.
                unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
            }
        }
    }

    fn remove_cgroup_scope(&self) {
        for dir in self.cgroup_scopes() {
            if let Ok(children) = std::fs::read_dir(&dir) {
                for c in children.flatten().filter(|c| c.path().is_dir()) {
                    let _ = std::fs::remove_dir(c.path());
                }
            }
            let _ = std::fs::remove_dir(&dir);
        }
    }
}

fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit(')')
                .next()
                .map(|rest| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}

/// Whether the tests run as root; if not, prints `SKIPPED: {why}` so the skip is visible.
/// `config` with `[settings] adopt_timeout = 0`: instances stop the moment their server
/// dies, as tests of the clean-up after a crash want.
pub fn no_adoption(config: &str) -> String {
    match config.contains("[settings]\n") {
        true => config.replacen("[settings]\n", "[settings]\nadopt_timeout = 0\n", 1),
        false => format!("[settings]\nadopt_timeout = 0\n\n{config}"),
    }
}

pub fn root_or_skip(why: &str) -> bool {
    // SAFETY: geteuid(2) has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        eprintln!("SKIPPED: {why}");
    }
    root
}

/// Whether a process exists (zombies count as gone).
pub fn alive(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists() && !is_zombie(pid)
}

/// A minimal HTTP/1.1 GET over a Unix socket: (status, body).
pub fn get_unix(socket: &Path, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = UnixStream::connect(socket)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad response: {text:?}")))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}
