//! `isolation = "wasm"`: a WebAssembly component (`wasi:http/proxy`) served by `ten __wasm`
//! ([`tenement_wasm::host`]), one host process per instance.
//!
//! The host runs exactly as a `namespace` app does (the same shim options: its own uid,
//! cgroup, PID and mount namespaces, walls, Landlock scope), so a bug in wasmtime is still
//! walled off from the host and from other tenants, and memory, CPU and pids are the
//! instance's cgroup's; without `outbound` it also joins an empty network namespace (one per
//! server, loopback down). What it
//! may see inside those walls: its data directory (kept writable, as at `namespace`) and the
//! one compiled artifact it runs (revealed, but 0600: the shim's child loads it as root,
//! before it becomes the instance's user, and then serves in the same process: `--builtin`,
//! no second exec). The component itself sees less still: only what the host grants it.
//!
//! The component is checked and compiled at start by `ten serve` ([`tenement_wasm::Cache`]);
//! a start that finds it cached costs a stat and a lookup.

use std::path::{Path, PathBuf};

use tenement_core::config::Isolation;
use tenement_wasm::Cache;

use crate::namespace::{path, shim_args};
use crate::process::spawn_shim_keeping;
use crate::{Error, Runtime, Spec, Started, Unavailable};

pub struct WasmRuntime {
    shim: PathBuf,
    cache: Result<Cache, String>,
    /// One empty network namespace (loopback down) for every instance without `outbound`:
    /// joining one costs microseconds, making one per instance cost 2 ms of every wake.
    offline: std::sync::OnceLock<Result<std::os::fd::OwnedFd, String>>,
}

/// A new, empty network namespace, held by a descriptor (made on a thread of its own: a
/// network namespace is per thread, and this one ends right after).
fn empty_netns() -> Result<std::os::fd::OwnedFd, String> {
    std::thread::spawn(|| {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| format!("unshare(network namespace): {e}"))?;
        std::fs::File::open("/proc/thread-self/ns/net")
            .map(std::os::fd::OwnedFd::from)
            .map_err(|e| format!("/proc/thread-self/ns/net: {e}"))
    })
    .join()
    .map_err(|_| "the network namespace thread panicked".to_string())?
}

impl WasmRuntime {
    pub fn new(shim: PathBuf, data_dir: &Path) -> Self {
        Self {
            shim,
            cache: Cache::new(data_dir.join(".wasm-cache")),
            offline: std::sync::OnceLock::new(),
        }
    }

    fn cache(&self) -> Result<&Cache, Unavailable> {
        self.cache.as_ref().map_err(|e| Unavailable {
            isolation: "wasm",
            reason: e.clone(),
        })
    }
}

/// The component a service's argv names, and the arguments it gets.
fn component<'a>(argv: &'a [String], workdir: &Path) -> Result<(PathBuf, &'a [String]), String> {
    let (first, args) = argv.split_first().ok_or("`command` names no component")?;
    if argv.first().is_some_and(|a| a == "/bin/sh") {
        return Err("`command` must name a .wasm component, not a shell command line".into());
    }
    Ok((workdir.join(first), args))
}

impl Runtime for WasmRuntime {
    fn isolation(&self) -> Isolation {
        Isolation::Wasm
    }

    fn own_user(&self) -> bool {
        true
    }

    fn probe(&self) -> Result<(), Unavailable> {
        self.cache()?;
        if !nix::unistd::geteuid().is_root() {
            return Err(Unavailable {
                isolation: "wasm",
                reason: "the wasm host runs inside namespace walls, which need root (CAP_SYS_ADMIN); run ten serve as root".into(),
            });
        }
        Ok(())
    }

    fn check_program(&self, argv: &[String], workdir: &Path) -> Result<(), String> {
        let (file, _) = component(argv, workdir)?;
        tenement_wasm::check(&file)
    }

    fn start(&self, spec: &Spec) -> Result<Started, Error> {
        let denied = |message: String| Error::Denied {
            key: spec.key.clone(),
            message,
        };
        let cache = self.cache()?;
        let (file, args) = component(&spec.argv, &spec.workdir).map_err(denied)?;
        // Compiling takes from milliseconds to seconds: off the runtime's other tasks.
        let prepared = match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
            Ok(tokio::runtime::RuntimeFlavor::MultiThread) => {
                tokio::task::block_in_place(|| cache.prepare(&file))
            }
            _ => cache.prepare(&file),
        }
        .map_err(denied)?;
        if prepared.compiled {
            tracing::info!(instance = %spec.key, component = %file.display(), "compiled");
        }
        let mut argv = vec![
            path(&self.shim),
            tenement_wasm::SUBCOMMAND.into(),
            "--module".into(),
            path(&prepared.artifact),
            "--dir".into(),
            path(&spec.instance_dir),
            "--memory-mb".into(),
            spec.memory_limit_mb.unwrap_or(4096).to_string(),
            "--cpu-ms".into(),
            spec.request_cpu_ms.to_string(),
        ];
        if spec.outbound {
            argv.push("--outbound".into());
        }
        argv.push("--".into());
        argv.extend(args.iter().cloned());
        // The host needs nothing of the project directory (`ten serve` read the component):
        // it runs in the instance's own, which its user may always enter.
        let host = Spec {
            argv,
            workdir: spec.instance_dir.clone(),
            ..spec.clone()
        };
        let mut shim = shim_args(&host);
        shim.extend([
            "--reveal".into(),
            path(&prepared.artifact),
            "--builtin".into(),
        ]);
        // No network at all, not only none granted by the host: an empty network namespace
        // (the instance's socket is a path, reachable from any).
        let offline = match spec.outbound {
            true => None,
            false => {
                let ns = self
                    .offline
                    .get_or_init(empty_netns)
                    .as_ref()
                    .map_err(|e| denied(e.clone()))?;
                let fd = std::os::fd::AsRawFd::as_raw_fd(ns);
                shim.extend(["--netns-fd".into(), fd.to_string()]);
                Some(fd)
            }
        };
        let shim: Vec<&str> = shim.iter().map(String::as_str).collect();
        spawn_shim_keeping(&self.shim, &host, &shim, offline)
    }
}
