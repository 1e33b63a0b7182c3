//! `ten __wasm`: one instance's host. Run by the shim's child in the instance's cgroup and
//! walls (in that process, no exec: [`load`] as root, then [`Loaded::serve`] as the
//! instance's uid), or as a command of its own:
//!
//! `ten __wasm --module ARTIFACT --dir DIR [--memory-mb N] [--cpu-ms N] [--outbound]
//! [--concurrency N] [-- ARGS...]`
//!
//! It loads the artifact [`crate::Cache`] compiled, listens on `SOCKET_PATH` and serves
//! HTTP/1.1 there; each request gets a fresh instance of the component (pre-instantiated,
//! from wasmtime's pooling allocator), in a store of its own:
//! - its environment: this process's (the service's `env` and tenement's variables), but
//!   `PATH`; its arguments: `ARGS`;
//! - its files: `DIR` (the instance's data directory) preopened read-write at the same path
//!   (so `$HOME` and `$DATA_DIR`-style settings work); nothing else;
//! - its network: none, unless `--outbound` (then `wasi:http` requests and `wasi:sockets`
//!   TCP/UDP to addresses not of this host: `state::public`);
//! - linear memory: each at most `--memory-mb`, and all requests' together within a
//!   [`Budget`] under it (a failed `memory.grow` is the guest's to handle; Rust aborts: 500);
//! - at most `--cpu-ms` of CPU time: counted in epoch ticks ([`crate::TICK`]) that find the
//!   request running, so time spent waiting (on a slow client, an outbound request) is not
//!   charged. Each tick yields to the other requests; past the limit the request traps: 504.
//!
//! One thread runs the requests (a tenant's share of the cores is its cgroup's business);
//! a second ticks the epoch, only while a request is in flight, so an idle instance costs no
//! wake-ups. The component's stdout and stderr are this process's: tenement's logs.

use std::convert::Infallible;
use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use wasmtime::component::{Component, ResourceTable};
use wasmtime::{
    Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, StoreLimitsBuilder,
    UpdateDeadline,
};
use wasmtime_wasi::{FsPerms, WasiCtx};
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

use crate::state::{Outbound, State, public};

/// The hidden `ten` subcommand that runs a wasm instance.
pub const SUBCOMMAND: &str = "__wasm";

/// Requests one instance runs at once (more wait for a place).
const CONCURRENCY: u32 = 64;

struct Options {
    module: PathBuf,
    dir: PathBuf,
    memory_mb: u64,
    cpu_ms: u64,
    outbound: bool,
    concurrency: u32,
    args: Vec<String>,
}

fn parse(args: &[OsString]) -> Result<Options, String> {
    let usage = || {
        format!(
            "usage: ten {SUBCOMMAND} --module ARTIFACT --dir DIR [--memory-mb N] [--cpu-ms N] [--outbound] [--concurrency N] [-- ARGS...]"
        )
    };
    let mut o = Options {
        module: PathBuf::new(),
        dir: PathBuf::new(),
        memory_mb: 128,
        cpu_ms: 10_000,
        outbound: false,
        concurrency: CONCURRENCY,
        args: Vec::new(),
    };
    let mut it = args.iter().map(|a| a.to_str().ok_or_else(usage));
    while let Some(arg) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| Err(usage()));
        let number = |v: &str| v.parse::<u64>().ok().filter(|n| *n > 0).ok_or_else(usage);
        match arg? {
            "--module" => o.module = value()?.into(),
            "--dir" => o.dir = value()?.into(),
            "--memory-mb" => o.memory_mb = number(value()?)?,
            "--cpu-ms" => o.cpu_ms = number(value()?)?,
            "--concurrency" => o.concurrency = number(value()?)?.min(10_000) as u32,
            "--outbound" => o.outbound = true,
            "--" => {
                o.args = it.map(|a| a.map(str::to_owned)).collect::<Result<_, _>>()?;
                break;
            }
            _ => return Err(usage()),
        }
    }
    if o.module.as_os_str().is_empty() || o.dir.as_os_str().is_empty() {
        return Err(usage());
    }
    Ok(o)
}

/// Runs the host with the arguments after the subcommand. Never returns.
pub fn run(args: &[OsString]) -> ! {
    match load(args) {
        Ok(loaded) => loaded.serve(),
        Err(e) => {
            eprintln!("tenement wasm: {e}");
            std::process::exit(127)
        }
    }
}

/// A compiled component, loaded and ready to serve: what the shim's child does as root,
/// before it becomes the instance's user (the artifact is readable by root alone).
pub struct Loaded {
    pre: ProxyPre<State>,
    engine: Engine,
    options: Options,
}

/// Parses `args` (after the subcommand) and loads the artifact they name.
pub fn load(args: &[OsString]) -> Result<Loaded, String> {
    let options = parse(args)?;
    let mut pool = PoolingAllocationConfig::new();
    let n = options.concurrency;
    pool.total_component_instances(n)
        .total_core_instances(n * 16)
        .total_memories(n * 4)
        .total_tables(n * 16)
        .total_stacks(n)
        .max_memory_size((options.memory_mb << 20) as usize);
    let mut config = crate::config();
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    let engine = Engine::new(&config).map_err(|e| format!("wasmtime: {e:#}"))?;
    // SAFETY: the artifact is one `ten serve` compiled with the same settings into its own
    // cache (0700, files 0600: no tenant can write or read one) and checked against its
    // digest before this start (crate::cache).
    let component =
        unsafe { Component::deserialize_file(&engine, &options.module) }.map_err(|e| {
            let hint = match format!("{e:#}").contains("exceeds the limit") {
                true => format!(
                    " (memory_limit_mb = {} is below what it needs)",
                    options.memory_mb
                ),
                false => String::new(),
            };
            format!("loading {}: {e:#}{hint}", options.module.display())
        })?;
    let linker = crate::state::linker(&engine).map_err(|e| format!("wasmtime: {e:#}"))?;
    let pre = linker
        .instantiate_pre(&component)
        .and_then(ProxyPre::new)
        .map_err(|e| format!("{}: {e:#}", options.module.display()))?;
    Ok(Loaded {
        pre,
        engine,
        options,
    })
}

impl Loaded {
    /// Listens on `SOCKET_PATH` and serves until the process is killed.
    pub fn serve(self) -> ! {
        let err = match self.try_serve() {
            Ok(never) => match never {},
            Err(e) => e,
        };
        eprintln!("tenement wasm: {err}");
        std::process::exit(127)
    }

    fn try_serve(self) -> Result<Infallible, String> {
        let socket = std::env::var_os("SOCKET_PATH").ok_or("SOCKET_PATH is not set")?;
        let env = std::env::vars().filter(|(k, _)| k != "PATH").collect();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("tokio: {e}"))?;
        let Loaded {
            pre,
            engine,
            options,
        } = self;
        let host = Arc::new(Host {
            pre,
            ticker: Ticker::start(engine.clone()),
            budget: Budget::new(options.memory_mb),
            engine,
            places: Arc::new(tokio::sync::Semaphore::new(options.concurrency as usize)),
            options,
            env,
        });
        runtime.block_on(async move {
            let listener = tokio::net::UnixListener::bind(&socket)
                .map_err(|e| format!("listening on {}: {e}", PathBuf::from(&socket).display()))?;
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let host = host.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let host = host.clone();
                        async move { Ok::<_, Infallible>(host.handle(req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .with_upgrades()
                        .await;
                });
            }
        })
    }
}

struct Host {
    pre: ProxyPre<State>,
    engine: Engine,
    options: Options,
    env: Vec<(String, String)>,
    /// Places for requests in flight: a request keeps its place until its handler returns
    /// (which may be after its response began), as long as it holds a pooled instance.
    places: Arc<tokio::sync::Semaphore>,
    ticker: Ticker,
    /// Linear memory all requests in flight may hold together.
    budget: Arc<Budget>,
}

impl Host {
    async fn handle(&self, req: hyper::Request<Incoming>) -> hyper::Response<HyperOutgoingBody> {
        let what = format!("{} {}", req.method(), req.uri().path());
        match self.run(req).await {
            Ok(response) => response,
            Err(Failed { status, why }) => {
                eprintln!("tenement wasm: {what}: {why}");
                // The client gets the first line; the backtrace is for the tenant's logs.
                answer(status, why.lines().next().unwrap_or_default())
            }
        }
    }

    async fn run(
        &self,
        req: hyper::Request<Incoming>,
    ) -> Result<hyper::Response<HyperOutgoingBody>, Failed> {
        let place = self
            .places
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Failed::internal("shutting down".into()))?;
        let mut store = self
            .store()
            .map_err(|e| Failed::internal(format!("{e:#}")))?;
        let (sender, receiver) = tokio::sync::oneshot::channel();
        let http = store.data_mut();
        let incoming = http
            .http()
            .new_incoming_request(Scheme::Http, req)
            .map_err(|e| Failed::internal(format!("{e:#}")))?;
        let out = http
            .http()
            .new_response_outparam(sender)
            .map_err(|e| Failed::internal(format!("{e:#}")))?;
        let pre = self.pre.clone();
        let cpu_ms = self.options.cpu_ms;
        let running = self.ticker.running();
        // A task of its own: the guest may go on writing the body after it set the response.
        let task = tokio::task::spawn(async move {
            let _held = (running, place);
            let proxy = pre.instantiate_async(&mut store).await?;
            proxy
                .wasi_http_incoming_handler()
                .call_handle(&mut store, incoming, out)
                .await
        });
        // A client that leaves before the response takes its request with it (the front
        // door's upstream timeout included): the guest stops at its next yield.
        let mut abort = AbortUnlessAnswered(Some(task.abort_handle()));
        match receiver.await {
            Ok(Ok(response)) => {
                abort.0 = None; // the guest goes on writing the body
                Ok(response)
            }
            Ok(Err(code)) => Err(Failed {
                status: 500,
                why: format!("the handler answered with an error: {code:?}"),
            }),
            Err(_) => Err(match task.await {
                Ok(Ok(())) => {
                    Failed::internal("the handler returned without setting a response".into())
                }
                Ok(Err(e))
                    if e.downcast_ref::<wasmtime::Trap>() == Some(&wasmtime::Trap::Interrupt) =>
                {
                    Failed {
                        status: 504,
                        why: format!(
                            "the handler ran past its CPU time limit ({cpu_ms} ms) and was stopped"
                        ),
                    }
                }
                Ok(Err(e)) => match e.downcast_ref::<wasmtime::Trap>() {
                    Some(trap) => Failed::internal(format!("the handler failed\n({trap}) {e:?}")),
                    None => Failed::internal(format!("the handler failed\n{e:#}")),
                },
                Err(e) => Failed::internal(format!("the handler failed\n(its task: {e})")),
            }),
        }
    }

    /// A store for one request: its capabilities and limits.
    fn store(&self) -> wasmtime::Result<Store<State>> {
        let o = &self.options;
        let mut wasi = WasiCtx::builder();
        wasi.inherit_stdout()
            .inherit_stderr()
            .envs(&self.env)
            .args(&o.args)
            .preopened_dir(&o.dir, o.dir.to_string_lossy(), FsPerms::ReadWrite)?;
        if o.outbound {
            wasi.allow_tcp(true)
                .allow_udp(true)
                .allow_ip_name_lookup(true)
                .socket_addr_check(|addr, _| Box::pin(async move { public(addr) }));
        }
        let limits = Limits {
            store: StoreLimitsBuilder::new()
                .memory_size((o.memory_mb << 20) as usize)
                .trap_on_grow_failure(false)
                .build(),
            budget: self.budget.clone(),
            held: 0,
        };
        let mut store = Store::new(
            &self.engine,
            State {
                wasi: wasi.build(),
                http: wasmtime_wasi_http::WasiHttpCtx::new(),
                table: ResourceTable::new(),
                limits,
                hooks: Outbound {
                    allowed: o.outbound,
                },
                ticks: 0,
            },
        );
        store.limiter(|s| &mut s.limits);
        let allowed = o.cpu_ms.div_ceil(crate::TICK.as_millis() as u64);
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |mut cx| {
            let state = cx.data_mut();
            state.ticks += 1;
            Ok(match state.ticks > allowed {
                true => UpdateDeadline::Interrupt,
                false => UpdateDeadline::Yield(1),
            })
        });
        Ok(store)
    }
}

struct AbortUnlessAnswered(Option<tokio::task::AbortHandle>);

impl Drop for AbortUnlessAnswered {
    fn drop(&mut self) {
        if let Some(task) = self.0.take() {
            task.abort();
        }
    }
}

struct Failed {
    status: u16,
    why: String,
}

impl Failed {
    fn internal(why: String) -> Self {
        Self { status: 500, why }
    }
}

fn answer(status: u16, why: &str) -> hyper::Response<HyperOutgoingBody> {
    let body = Full::new(Bytes::from(format!("{why}\n")))
        .map_err(|never| match never {})
        .boxed_unsync();
    hyper::Response::builder()
        .status(status)
        .header("content-type", "text/plain; charset=utf-8")
        .body(body)
        .expect("a valid status and header")
}

/// Ticks the engine's epoch every [`crate::TICK`] while any request is in flight, and sleeps
/// otherwise.
struct Ticker {
    inflight: Arc<AtomicUsize>,
    thread: std::thread::Thread,
}

/// A request in flight, for the ticker.
struct Running {
    inflight: Arc<AtomicUsize>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.inflight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Ticker {
    fn start(engine: Engine) -> Self {
        let inflight = Arc::new(AtomicUsize::new(0));
        let seen = inflight.clone();
        let thread = std::thread::Builder::new()
            .name("epoch".into())
            .spawn(move || {
                loop {
                    if seen.load(Ordering::Acquire) == 0 {
                        std::thread::park();
                        continue;
                    }
                    std::thread::sleep(crate::TICK);
                    engine.increment_epoch();
                }
            })
            .expect("spawning the epoch thread")
            .thread()
            .clone();
        Self { inflight, thread }
    }

    fn running(&self) -> Running {
        if self.inflight.fetch_add(1, Ordering::AcqRel) == 0 {
            self.thread.unpark();
        }
        Running {
            inflight: self.inflight.clone(),
        }
    }
}

/// The linear memory of every request in flight, together: at most `memory_limit_mb` less a
/// reserve for the host itself, so that requests that each stay within the limit cannot add
/// up past the instance's cgroup (an out-of-memory kill of every request at once). A grow
/// past it fails for that request alone.
pub struct Budget {
    left: std::sync::atomic::AtomicUsize,
}

impl Budget {
    fn new(memory_mb: u64) -> Arc<Self> {
        let total = (memory_mb as usize) << 20;
        let reserve = (total / 8).max(4 << 20);
        Arc::new(Self {
            left: AtomicUsize::new(total.saturating_sub(reserve)),
        })
    }

    fn take(&self, bytes: usize) -> bool {
        self.left
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |left| {
                left.checked_sub(bytes)
            })
            .is_ok()
    }

    fn give(&self, bytes: usize) {
        self.left.fetch_add(bytes, Ordering::AcqRel);
    }
}

/// One store's limits: wasmtime's own (each memory at most `memory_limit_mb`), and its
/// share of the [`Budget`], given back when the store goes.
pub struct Limits {
    store: wasmtime::StoreLimits,
    budget: Arc<Budget>,
    held: usize,
}

impl wasmtime::ResourceLimiter for Limits {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if !self.store.memory_growing(current, desired, maximum)? {
            return Ok(false);
        }
        let more = desired.saturating_sub(current);
        if !self.budget.take(more) {
            return Ok(false);
        }
        self.held += more;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.store.table_growing(current, desired, maximum)
    }

    fn instances(&self) -> usize {
        self.store.instances()
    }

    fn tables(&self) -> usize {
        self.store.tables()
    }

    fn memories(&self) -> usize {
        self.store.memories()
    }
}

impl Drop for Limits {
    fn drop(&mut self) {
        self.budget.give(self.held);
    }
}
