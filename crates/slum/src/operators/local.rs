//! `type = "local"`: tenement servers on slum's own machine (development, tests, one big
//! host). slum starts each `ten serve` in a session of its own (so stopping slum leaves the
//! servers serving, as the fleet does whenever slum is down), logs it to
//! `{state_dir}/ten-ID.log`, writes its pid to `{state_dir}/ten-ID.pid`, and starts it again
//! (backing off to 30 s) when it is neither running nor up.

use std::collections::HashMap;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::{Fleet, Operator};
use crate::config::Server;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// The `ten` to run (default: the one beside `slum`, else `ten` on the PATH).
    pub ten: Option<PathBuf>,
}

pub struct Local {
    settings: Settings,
    /// Per server: the process started, and when it may be started again.
    started: Mutex<HashMap<String, (Child, Instant, Duration)>>,
}

impl Local {
    pub fn new(settings: Settings) -> Self {
        Local {
            settings,
            started: Mutex::default(),
        }
    }

    fn ten(&self) -> PathBuf {
        if let Some(t) = &self.settings.ten {
            return t.clone();
        }
        let beside = std::env::current_exe()
            .ok()
            .and_then(|e| Some(e.parent()?.join("ten")));
        beside
            .filter(|p| p.is_file())
            .unwrap_or_else(|| "ten".into())
    }
}

impl Operator for Local {
    fn ensure(&self, server: &Server, fleet: &Fleet) -> Result<(), String> {
        let mut started = self.started.lock().unwrap_or_else(|p| p.into_inner());
        let mut backoff = Duration::from_secs(1);
        if let Some((child, next, delay)) = started.get_mut(&server.id) {
            match child.try_wait() {
                Ok(None) => return Ok(()), // running: joining, or slum will hear from it
                Ok(Some(status)) => {
                    if Instant::now() < *next {
                        return Ok(());
                    }
                    backoff = (*delay * 2).min(Duration::from_secs(30));
                    tracing::warn!(server = %server.id, %status, log = %fleet.state_dir.join(format!("ten-{}.log", server.id)).display(), "its ten serve exited: starting it again");
                }
                Err(e) => return Err(format!("{}: {e}", server.id)),
            }
        }
        let log_path = fleet.state_dir.join(format!("ten-{}.log", server.id));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| format!("{}: {e}", log_path.display()))?;
        let err = log.try_clone().map_err(|e| e.to_string())?;
        let child = Command::new(self.ten())
            .arg("serve")
            .arg("--config")
            .arg(&server.config)
            .args(["--slum", &fleet.url, "--slum-id", &server.id])
            .args(&server.args)
            .env("TEN_SLUM_TOKEN", &fleet.join_token)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .process_group(0)
            .spawn()
            .map_err(|e| format!("starting {} for {}: {e}", self.ten().display(), server.id))?;
        let pid_path = fleet.state_dir.join(format!("ten-{}.pid", server.id));
        std::fs::write(&pid_path, format!("{}\n", child.id()))
            .map_err(|e| format!("{}: {e}", pid_path.display()))?;
        tracing::info!(server = %server.id, pid = child.id(), config = %server.config.display(), "started a local tenement server");
        started.insert(
            server.id.clone(),
            (child, Instant::now() + backoff, backoff),
        );
        Ok(())
    }

    fn upgrade(&self, server: &Server, _fleet: &Fleet) -> Result<String, String> {
        Err(format!(
            "{} is a local server: it runs this machine's ten; `ten upgrade --config {}` replaces it",
            server.id,
            server.config.display()
        ))
    }
}
