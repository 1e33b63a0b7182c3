//! `isolation = "wasm"`: WebAssembly components of the `wasi:http/proxy` world, served with
//! wasmtime on an instance's Unix socket.
//!
//! Two halves, one binary:
//! - [`Cache`], in `ten serve` (root): checks a service's component (a component, not a core
//!   module; an HTTP handler; importing nothing tenement does not give) and compiles it once
//!   into a content-addressed cache, `{data_dir}/.wasm-cache/{sha256}-{engine}.cwasm`.
//! - [`host`], `ten __wasm`, started per instance under the shim like any app (so its own
//!   uid, cgroup, mount walls, logs, restarts and hand-over apply): loads the compiled
//!   component, listens on `SOCKET_PATH` and runs a fresh instance of the component per
//!   request, with its linear memory, CPU time and capabilities bounded.
//!
//! Both build their [`wasmtime::Engine`] from [`config`], so the cache's artifacts load in
//! the host.

mod cache;
pub mod host;
mod state;

pub use cache::{Cache, Prepared, check};
pub use host::SUBCOMMAND;

/// How long one epoch tick is; CPU time is counted in ticks ([`host`]).
pub const TICK: std::time::Duration = std::time::Duration::from_millis(10);

/// The engine settings shared by the compiler and the host (the artifact records them and is
/// refused by an engine that differs).
pub fn config() -> wasmtime::Config {
    let mut config = wasmtime::Config::new();
    config.epoch_interruption(true);
    // Built without wasmtime's `parallel-compilation`: a compile uses one thread (and one
    // runs at a time: crate::Cache), so it never takes every core from the server.
    config
}

/// An engine for compiling.
pub fn compiler() -> Result<wasmtime::Engine, String> {
    wasmtime::Engine::new(&config()).map_err(|e| format!("wasmtime: {e:#}"))
}
