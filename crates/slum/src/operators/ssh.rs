//! `type = "ssh"`: a tenement server on any host slum can reach over SSH (OpenSSH's `ssh`
//! client, so the operator's keys, agent and `~/.ssh/config` apply; batch mode, never a
//! password prompt).
//!
//! To start a server that is not up, it:
//! 1. copies `ten` to `{root}/usr/local/bin/ten` when the host's differs (SHA-256);
//! 2. copies the server's tenement.toml to `{root}/etc/tenement/ID.toml`;
//! 3. writes the join token to `{root}/etc/tenement/ID.env` (0600, sent over SSH's stdin,
//!    never on a command line);
//! 4. on a host run by systemd (and `root = "/"`): `ten install` writes
//!    `tenement-ID.service` (KillMode=process, so its tenants outlive restarts), then
//!    `systemctl daemon-reload`, `enable` and `restart`. On any other host: `ten serve` in a
//!    session of its own, logging to `{root}/var/log/tenement-ID.log`, its pid in
//!    `{root}/run/tenement-ID.pid`.
//!
//! `slum server upgrade ID` copies a changed `ten` and runs `ten upgrade` there: the server is
//! replaced without restarting any tenant.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::Deserialize;
use sha2::Digest;

use super::{Fleet, Operator};
use crate::config::Server;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub host: String,
    /// Default: root (installing a system service needs it).
    pub user: Option<String>,
    pub port: Option<u16>,
    /// The private key (`ssh -i`); default: ssh's own choice.
    pub identity: Option<PathBuf>,
    /// The known-hosts file; default: ssh's. A host seen for the first time is added
    /// (`StrictHostKeyChecking=accept-new`); a changed host key is refused.
    pub known_hosts: Option<PathBuf>,
    /// The `ten` to install (default: the one beside `slum`).
    pub ten: Option<PathBuf>,
    /// Where on the host everything goes (default `/`).
    pub root: Option<PathBuf>,
}

pub struct Ssh {
    settings: Settings,
    /// The local `ten`'s SHA-256, by its size and modification time (it is read again only
    /// when it changes).
    digest: std::sync::Mutex<Option<((u64, std::time::SystemTime), String)>>,
}

impl Ssh {
    pub fn new(settings: Settings) -> Self {
        Ssh {
            settings,
            digest: Default::default(),
        }
    }

    /// The local `ten`'s SHA-256 (hex).
    fn local_digest(&self) -> Result<String, String> {
        let path = self.ten();
        let fail = |e: std::io::Error| format!("{}: {e}", path.display());
        let meta = std::fs::metadata(&path).map_err(fail)?;
        let stamp = (meta.len(), meta.modified().map_err(fail)?);
        let mut digest = self.digest.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((s, d)) = &*digest
            && *s == stamp
        {
            return Ok(d.clone());
        }
        let d = hex(&sha2::Sha256::digest(std::fs::read(&path).map_err(fail)?));
        *digest = Some((stamp, d.clone()));
        Ok(d)
    }

    fn root(&self) -> String {
        let root = self.settings.root.clone().unwrap_or_else(|| "/".into());
        root.display().to_string().trim_end_matches('/').to_owned()
    }

    fn ten(&self) -> PathBuf {
        self.settings.ten.clone().unwrap_or_else(|| {
            let beside = std::env::current_exe()
                .ok()
                .and_then(|e| Some(e.parent()?.join("ten")));
            beside.unwrap_or_else(|| "ten".into())
        })
    }

    /// ssh's options.
    fn options(&self) -> Vec<String> {
        let mut o: Vec<String> = [
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=accept-new",
            "-o",
            "ConnectTimeout=5",
        ]
        .map(String::from)
        .to_vec();
        if let Some(k) = &self.settings.known_hosts {
            o.extend(["-o".into(), format!("UserKnownHostsFile={}", k.display())]);
        }
        if let Some(i) = &self.settings.identity {
            o.extend(["-i".into(), i.display().to_string()]);
        }
        o
    }

    fn destination(&self) -> String {
        let user = self.settings.user.as_deref().unwrap_or("root");
        format!("{user}@{}", self.settings.host)
    }

    /// Runs `script` with `sh` on the host, `input` on its stdin; its stdout.
    fn run(&self, script: &str, input: &[u8]) -> Result<String, String> {
        let mut child = Command::new("ssh")
            .args(self.options())
            .args(["-p", &self.settings.port.unwrap_or(22).to_string()])
            .arg(self.destination())
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("ssh: {e}"))?;
        let _ = child.stdin.take().expect("piped").write_all(input);
        let out = child.wait_with_output().map_err(|e| format!("ssh: {e}"))?;
        match out.status.success() {
            true => Ok(String::from_utf8_lossy(&out.stdout).into_owned()),
            false => Err(format!(
                "ssh {}: {}",
                self.destination(),
                String::from_utf8_lossy(&out.stderr).trim()
            )),
        }
    }

    /// Writes the local file `from` to `to` on the host (over ssh's stdin: no scp, no sftp
    /// subsystem needed).
    fn copy(&self, from: &Path, to: &str) -> Result<(), String> {
        let bytes = std::fs::read(from).map_err(|e| format!("{}: {e}", from.display()))?;
        self.run(&format!("cat > {}", sh_quote(to)), &bytes)
            .map(drop)
    }

    /// Puts this `ten` on the host unless it is there already; whether it copied.
    fn install_ten(&self) -> Result<bool, String> {
        let root = self.root();
        let want = self.local_digest()?;
        let there = self.run(
            &format!("mkdir -p '{root}/usr/local/bin' && (sha256sum '{root}/usr/local/bin/ten' 2>/dev/null || true)"),
            b"",
        )?;
        if there.split_whitespace().next() == Some(want.as_str()) {
            return Ok(false);
        }
        let staged = format!("{root}/usr/local/bin/.ten.new");
        self.copy(&self.ten(), &staged)?;
        self.run(
            &format!("chmod 755 '{staged}' && mv -f '{staged}' '{root}/usr/local/bin/ten'"),
            b"",
        )?;
        Ok(true)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `s` as one word for `sh`.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

impl Operator for Ssh {
    fn ensure(&self, server: &Server, fleet: &Fleet) -> Result<(), String> {
        let (root, id) = (self.root(), &server.id);
        self.install_ten()?;
        self.run(
            &format!("mkdir -p '{root}/etc/tenement' '{root}/var/log' '{root}/run'"),
            b"",
        )?;
        let config = format!("{root}/etc/tenement/{id}.toml");
        self.copy(&server.config, &config)?;
        let env = format!("{root}/etc/tenement/{id}.env");
        self.run(
            &format!("umask 077 && cat > '{env}'"),
            format!("TEN_SLUM_TOKEN={}\n", fleet.join_token).as_bytes(),
        )?;
        let ten = format!("{root}/usr/local/bin/ten");
        let mut serve_args = vec![
            "--slum".to_owned(),
            fleet.url.clone(),
            "--slum-id".into(),
            id.clone(),
        ];
        serve_args.extend(server.args.iter().cloned());
        let args: Vec<String> = serve_args.iter().map(|a| sh_quote(a)).collect();
        let args = args.join(" ");
        let (pid, log) = (
            format!("{root}/run/tenement-{id}.pid"),
            format!("{root}/var/log/tenement-{id}.log"),
        );
        let script = format!(
            "set -e
if [ -d /run/systemd/system ] && [ -z '{root}' ]; then
  '{ten}' install --config '{config}' --name 'tenement-{id}' --environment-file '{env}' -- {args}
  systemctl daemon-reload && systemctl enable 'tenement-{id}' && systemctl restart 'tenement-{id}'
elif [ -f '{pid}' ] && kill -0 \"$(cat '{pid}')\" 2>/dev/null; then
  : running, joining
else
  set -a; . '{env}'; set +a
  setsid '{ten}' serve --config '{config}' {args} > '{log}' 2>&1 < /dev/null &
  echo $! > '{pid}'
fi"
        );
        self.run(&script, b"")?;
        tracing::info!(server = %id, host = %self.settings.host, "started a tenement server over ssh");
        Ok(())
    }

    fn upgrade(&self, server: &Server, _fleet: &Fleet) -> Result<String, String> {
        let (root, id) = (self.root(), &server.id);
        if !self.install_ten()? {
            return Ok(format!("{id} runs this ten already"));
        }
        let out = self.run(
            &format!("'{root}/usr/local/bin/ten' upgrade --config '{root}/etc/tenement/{id}.toml'"),
            b"",
        )?;
        let pid = out
            .split("pid ")
            .nth(1)
            .and_then(|p| p.split_whitespace().next());
        if let Some(pid) = pid {
            let _ = self.run(&format!("echo {pid} > '{root}/run/tenement-{id}.pid'"), b"");
        }
        Ok(out.trim().to_owned())
    }
}
