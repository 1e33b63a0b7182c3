//! Checking and compiling components, once per content: `ten serve`'s half.
//!
//! An artifact is native code that the host maps and runs, and holds the component's data (its
//! string constants, any secret built in), so it is only as trustworthy and as private as the
//! directory it lives in:
//! - the cache directory is the server's, mode 0700 (checked at every start), artifacts 0600:
//!   the host opens its artifact while still root, before it becomes the instance's user
//!   (`tenement_runtime`'s shim); names are the component's SHA-256 plus a hash of the
//!   engine's settings and version, so a changed file or a new wasmtime compiles anew;
//! - each artifact has a `.sha256` beside it, written after it; the first start that uses an
//!   artifact in this server's life checks it against that digest. A damaged or unmatched
//!   artifact is compiled again, never loaded.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

/// A compiled component, ready for `ten __wasm --module`.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub artifact: PathBuf,
    /// Whether this call compiled it (rather than found it).
    pub compiled: bool,
}

pub struct Cache {
    dir: PathBuf,
    engine: Engine,
    /// Artifacts checked against their digest in this server's life, by (device, inode,
    /// ctime): any change to the file, its contents or its owner, changes its ctime.
    checked: Mutex<HashMap<PathBuf, (u64, u64, i64, i64)>>,
    /// Each component file's artifact name, by the file's identity (device, inode, size,
    /// mtime, ctime): a start that finds the file unchanged neither reads nor hashes it.
    names: Mutex<HashMap<PathBuf, (FileId, String)>>,
    /// [`Engine::precompile_compatibility_hash`], hashed once.
    engine_hash: u64,
    /// One compile at a time: a thousand instances of a new component starting together
    /// compile it once (the rest find it cached), and compiling never takes every core from
    /// the server.
    compiling: Mutex<()>,
}

impl Cache {
    pub fn new(dir: PathBuf) -> Result<Self, String> {
        let engine = crate::compiler()?;
        let mut h = std::hash::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        Ok(Self {
            dir,
            engine,
            checked: Mutex::new(HashMap::new()),
            names: Mutex::new(HashMap::new()),
            engine_hash: h.finish(),
            compiling: Mutex::new(()),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The compiled form of the component at `path`: found in the cache, or checked and
    /// compiled. Errors name the file and what is wrong with it.
    pub fn prepare(&self, path: &Path) -> Result<Prepared, String> {
        self.ensure_dir()
            .map_err(|e| format!("wasm cache {}: {e}", self.dir.display()))?;
        if let Some(name) = self.known_name(path) {
            let artifact = self.artifact(&name);
            if self.intact(&artifact) {
                return Ok(Prepared {
                    artifact,
                    compiled: false,
                });
            }
        }
        let id = file_id(path);
        let bytes = read(path)?;
        let name = self.name_of(&bytes);
        if let Some(id) = id {
            self.names
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(path.to_path_buf(), (id, name.clone()));
        }
        let artifact = self.artifact(&name);
        let found = Ok(Prepared {
            artifact: artifact.clone(),
            compiled: false,
        });
        let _one = self.compiling.lock().unwrap_or_else(|p| p.into_inner());
        if self.intact(&artifact) {
            return found; // found, or compiled meanwhile
        }
        let component = compile(&self.engine, path, &bytes)?;
        let code = component.serialize().map_err(|e| {
            format!(
                "{}: serializing the compiled component: {e:#}",
                path.display()
            )
        })?;
        self.store(&artifact, &code)
            .map_err(|e| format!("wasm cache {}: {e}", self.dir.display()))?;
        Ok(Prepared {
            artifact,
            compiled: true,
        })
    }

    /// The artifact name of `bytes`: their SHA-256 and the engine's settings.
    fn name_of(&self, bytes: &[u8]) -> String {
        format!("{}-{:016x}", hex(&Sha256::digest(bytes)), self.engine_hash)
    }

    fn artifact(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.cwasm"))
    }

    /// The name found for `path` earlier, if the file is still the same one.
    fn known_name(&self, path: &Path) -> Option<String> {
        let id = file_id(path)?;
        let names = self.names.lock().unwrap_or_else(|p| p.into_inner());
        names
            .get(path)
            .filter(|(was, _)| *was == id)
            .map(|(_, name)| name.clone())
    }

    /// Whether `artifact` is the server's own, not writable by others, and matches its
    /// digest (read and hashed once per server life and version of the file).
    fn intact(&self, artifact: &Path) -> bool {
        let Ok(meta) = std::fs::symlink_metadata(artifact) else {
            return false;
        };
        let id = (meta.dev(), meta.ino(), meta.ctime(), meta.ctime_nsec());
        let mut checked = self.checked.lock().unwrap_or_else(|p| p.into_inner());
        if checked.get(artifact) == Some(&id) {
            return true;
        }
        let ours = meta.is_file() && meta.uid() == nix_euid() && meta.mode() & 0o077 == 0;
        let good = ours
            && match (
                std::fs::read(artifact),
                std::fs::read_to_string(digest_of(artifact)),
            ) {
                (Ok(code), Ok(sum)) => hex(&Sha256::digest(&code)) == sum.trim(),
                _ => false,
            };
        if good {
            checked.insert(artifact.to_path_buf(), id);
        }
        good
    }

    /// Writes `code` and then its digest, each atomically (a crash leaves either no artifact
    /// or one that fails its check).
    fn store(&self, artifact: &Path, code: &[u8]) -> std::io::Result<()> {
        write_atomic(artifact, code)?;
        write_atomic(&digest_of(artifact), hex(&Sha256::digest(code)).as_bytes())?;
        self.checked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(artifact);
        Ok(())
    }

    /// The cache directory: ours, a real directory, 0700 (made so if it is not).
    fn ensure_dir(&self) -> std::io::Result<()> {
        match std::fs::DirBuilder::new().mode(0o700).create(&self.dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        let meta = std::fs::symlink_metadata(&self.dir)?;
        if !meta.is_dir() || meta.uid() != nix_euid() {
            return Err(std::io::Error::other(
                "not a directory of the server's own user; remove it",
            ));
        }
        if meta.mode() & 0o7777 != 0o700 {
            std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o700))?;
        }
        Ok(())
    }
}

/// A regular file's identity: any change to it (contents, replacement, owner) changes this.
type FileId = (u64, u64, u64, i64, i64, i64, i64);

fn file_id(path: &Path) -> Option<FileId> {
    let m = std::fs::metadata(path).ok().filter(|m| m.is_file())?;
    Some((
        m.dev(),
        m.ino(),
        m.size(),
        m.mtime(),
        m.mtime_nsec(),
        m.ctime(),
        m.ctime_nsec(),
    ))
}

fn nix_euid() -> u32 {
    // SAFETY: geteuid(2) cannot fail and touches no memory.
    unsafe { libc::geteuid() }
}

fn digest_of(artifact: &Path) -> PathBuf {
    artifact.with_extension("sha256")
}

fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)?;
    std::io::Write::write_all(&mut file, bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The largest component tenement compiles (a component is code: tens of MB at most).
pub const MAX_COMPONENT_BYTES: u64 = 256 << 20;

/// The component's bytes: a regular file (a link to one is fine; a FIFO, a device or a
/// directory is not, and opening one never blocks) of at most [`MAX_COMPONENT_BYTES`].
fn read(path: &Path) -> Result<Vec<u8>, String> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => format!("{}: no such file", path.display()),
            _ => format!("{}: cannot read it: {e}", path.display()),
        })?;
    let meta = file
        .metadata()
        .map_err(|e| format!("{}: cannot read it: {e}", path.display()))?;
    if !meta.is_file() {
        return Err(format!("{}: not a regular file", path.display()));
    }
    if meta.len() > MAX_COMPONENT_BYTES {
        return Err(format!(
            "{}: {} MB, more than the {} MB a component may be",
            path.display(),
            meta.len() >> 20,
            MAX_COMPONENT_BYTES >> 20
        ));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    std::io::Read::read_to_end(
        &mut std::io::Read::take(&file, MAX_COMPONENT_BYTES + 1),
        &mut bytes,
    )
    .map_err(|e| format!("{}: cannot read it: {e}", path.display()))?;
    Ok(bytes)
}

/// Checks the component at `path` (as `ten config --check` does) without caching it.
pub fn check(path: &Path) -> Result<(), String> {
    let bytes = read(path)?;
    compile(&crate::compiler()?, path, &bytes).map(drop)
}

/// Compiles `bytes` (read from `path`) and checks that tenement can serve it.
fn compile(engine: &Engine, path: &Path, bytes: &[u8]) -> Result<Component, String> {
    let file = path.display();
    match bytes.get(..8) {
        Some([0, b'a', b's', b'm', 1, 0, 0, 0]) => {
            return Err(format!(
                "{file} is a core WebAssembly module, not a component: build it for the \
                 component model (cargo build --target wasm32-wasip2, or wasm-tools component new)"
            ));
        }
        Some([0, b'a', b's', b'm', _, _, 1, 0]) => {}
        _ => {
            return Err(format!(
                "{file} is not a WebAssembly component (bad magic number)"
            ));
        }
    }
    let component = Component::new(engine, bytes)
        .map_err(|e| format!("{file} is not a valid component: {e:#}"))?;
    let linker = crate::state::linker(engine).map_err(|e| format!("wasmtime: {e:#}"))?;
    let pre = linker.instantiate_pre(&component).map_err(|e| {
        format!(
            "{file} imports what tenement does not provide ({e:#}); a wasm service gets \
             wasi:http, wasi:cli, wasi:clocks, wasi:random, wasi:io, wasi:filesystem and \
             wasi:sockets at version 0.2"
        )
    })?;
    let exports: Vec<String> = component
        .component_type()
        .exports(engine)
        .map(|(name, _)| name.to_owned())
        .collect();
    let handler = exports
        .iter()
        .any(|n| n.starts_with("wasi:http/incoming-handler@0.2"));
    if !handler {
        let what = match exports.iter().any(|n| n.starts_with("wasi:cli/run@")) {
            true => "a wasi:cli command (it exports wasi:cli/run)",
            false => "not an HTTP handler",
        };
        return Err(format!(
            "{file} is {what}: isolation = \"wasm\" serves components of the wasi:http/proxy \
             world, which export wasi:http/incoming-handler@0.2 (exports found: {})",
            match exports.is_empty() {
                true => "none".to_owned(),
                false => exports.join(", "),
            }
        ));
    }
    wasmtime_wasi_http::p2::bindings::ProxyPre::new(pre).map_err(|e| {
        format!("{file}: its wasi:http/incoming-handler export is not usable: {e:#}")
    })?;
    Ok(component)
}
