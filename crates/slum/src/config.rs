//! `slum.toml`: the operators that provision tenement servers, and the servers of the fleet.
//!
//! ```toml
//! [operators.local]
//! type = "local"                  # tenement servers on this machine (development, tests)
//!
//! [tenement.east]
//! operator = "local"
//! config = "tenement-east.toml"   # relative to slum.toml
//! args = ["--bind", "10.0.0.2", "--port", "8080"]   # more `ten serve` arguments
//! ```
//!
//! `fly` and `hetzner` are parsed and refused: not built yet. Every
//! error names the file, line and column, and the field.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlumToml {
    #[serde(default)]
    pub operators: BTreeMap<String, Spanned<OperatorSpec>>,
    #[serde(default)]
    pub tenement: BTreeMap<String, Spanned<Member>>,
}

/// An operator's settings, by `type`.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum OperatorSpec {
    Local(crate::operators::local::Settings),
    Ssh(crate::operators::ssh::Settings),
    Fly(toml::Table),
    Hetzner(toml::Table),
}

impl OperatorSpec {
    pub fn kind(&self) -> &'static str {
        match self {
            OperatorSpec::Local(_) => "local",
            OperatorSpec::Ssh(_) => "ssh",
            OperatorSpec::Fly(_) => "fly",
            OperatorSpec::Hetzner(_) => "hetzner",
        }
    }
}

/// A tenement server of the fleet: `[tenement.NAME]` (NAME is its id in the fleet).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Member {
    pub operator: Spanned<String>,
    /// Its tenement.toml (relative to slum.toml).
    pub config: Spanned<PathBuf>,
    /// More arguments for its `ten serve` (`--bind`, `--port`, `--domain`...).
    #[serde(default)]
    pub args: Vec<String>,
}

/// A member as the operators get it: its id, its config's absolute path, its arguments.
#[derive(Debug, Clone)]
pub struct Server {
    pub id: String,
    pub config: PathBuf,
    pub args: Vec<String>,
}

/// slum.toml, loaded and checked: each server with its operator's settings.
#[derive(Debug)]
pub struct Loaded {
    pub servers: Vec<(Server, OperatorSpec)>,
}

/// Reads and checks `path`; the error names file:line:column and the field.
pub fn load(path: &Path) -> Result<Loaded, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let at = |span: std::ops::Range<usize>| {
        let before = &text[..span.start.min(text.len())];
        let line = before.matches('\n').count() + 1;
        let col = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
        format!("{}:{line}:{col}", path.display())
    };
    let parsed: SlumToml = toml::from_str(&text).map_err(|e| match e.span() {
        Some(span) => format!("{}: {}", at(span), e.message().trim()),
        None => format!("{}: {}", path.display(), e.message().trim()),
    })?;
    for (name, spec) in &parsed.operators {
        if let OperatorSpec::Fly(_) | OperatorSpec::Hetzner(_) = spec.get_ref() {
            return Err(format!(
                "{}: operators.{name}.type: {:?} is not built yet (\"local\" and \"ssh\" are)",
                at(spec.span()),
                spec.get_ref().kind()
            ));
        }
    }
    let base = path.parent().unwrap_or(Path::new("."));
    let mut servers = Vec::new();
    for (id, member) in &parsed.tenement {
        let span = member.span();
        let member = member.get_ref();
        if !crate::valid_name(id) {
            return Err(format!(
                "{}: tenement.{id}: {id:?} is not a server id (lowercase letters, digits, `-`, `_`)",
                at(span)
            ));
        }
        let name = member.operator.get_ref();
        let Some(spec) = parsed.operators.get(name) else {
            return Err(format!(
                "{}: tenement.{id}.operator: no [operators.{name}] in this file",
                at(member.operator.span())
            ));
        };
        let config = base.join(member.config.get_ref());
        if !config.is_file() {
            return Err(format!(
                "{}: tenement.{id}.config: {} is not a file",
                at(member.config.span()),
                config.display()
            ));
        }
        let config =
            std::fs::canonicalize(&config).map_err(|e| format!("{}: {e}", config.display()))?;
        let server = Server {
            id: id.clone(),
            config,
            args: member.args.clone(),
        };
        servers.push((server, spec.get_ref().clone()));
    }
    Ok(Loaded { servers })
}
