//! Finding `tenement.toml`: `--config`, then `$TENEMENT_CONFIG`, then `tenement.toml` in the
//! working directory or its nearest parent that has one.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use tenement_core::config::Config;

pub const FILE_NAME: &str = "tenement.toml";

pub fn find(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = explicit {
        return Ok(p.to_path_buf());
    }
    if let Some(p) = std::env::var_os("TENEMENT_CONFIG").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    let cwd = std::env::current_dir().context("cannot read the working directory")?;
    for dir in cwd.ancestors() {
        let candidate = dir.join(FILE_NAME);
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!(
        "no {FILE_NAME} in {} or any parent directory (pass --config FILE, set TENEMENT_CONFIG, or run `ten init`)",
        cwd.display()
    )
}

/// Finds and loads the configuration; the error lists every problem.
pub fn load(explicit: Option<&Path>, data_dir: Option<PathBuf>) -> anyhow::Result<Config> {
    let mut config = Config::load(&found(explicit)?)?;
    if let Some(dir) = data_dir {
        config.settings.data_dir = std::path::absolute(&dir).unwrap_or(dir);
    }
    Ok(config)
}

/// The configuration as a client command needs it (to find `data_dir`): a `${VAR}` that only
/// the server's environment has (`SECRET_KEY=... ten serve`) reads as empty here rather than
/// failing `ten ps` in another shell.
pub fn load_for_client(explicit: Option<&Path>) -> anyhow::Result<Config> {
    let lenient = |name: &str| Some(std::env::var(name).unwrap_or_default());
    Ok(Config::load_with(&found(explicit)?, &lenient)?)
}

fn found(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    let path = find(explicit)?;
    Ok(std::path::absolute(&path).unwrap_or(path))
}
