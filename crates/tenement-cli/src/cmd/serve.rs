//! `ten serve`: load the configuration, open the state store, listen on the control socket and
//! the public port, bring instances back, and on SIGTERM/SIGINT stop them all gracefully.

use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use nix::fcntl::{Flock, FlockArg};
use tenement::{LogStore, Retention, Store, Supervisor};
use tenement_edge::{Access, bind, front_door, serve};
use tenement_runtime::Runtimes;
use tenement_runtime::cgroup::Cgroups;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::client::control_socket;
use crate::cmd::upgrade::{Handed, Successor};
use crate::config_file;

#[derive(clap::Args)]
pub struct Args {
    /// TCP port of the HTTP front door (default 8080; with TLS, [settings.tls] http_port,
    /// which answers ACME challenges and redirects to HTTPS).
    #[arg(long)]
    port: Option<u16>,
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0")]
    bind: IpAddr,
    /// Domain for subdomain routing (`prod.api.DOMAIN`; default: [settings.tls] domain when
    /// TLS is on, else localhost).
    #[arg(long, value_parser = tenement_core::route::parse_domain)]
    domain: Option<String>,
    /// Turn on HTTPS with certificates from ACME ([settings.tls] enabled).
    #[arg(long)]
    tls: bool,
    /// ACME account email ([settings.tls] acme_email).
    #[arg(long, value_name = "EMAIL")]
    email: Option<String>,
    /// Use the ACME staging environment ([settings.tls] staging).
    #[arg(long)]
    staging: bool,
    /// Put back the last good copy of a damaged state store (tenement.db.bak), keeping the
    /// damaged file as tenement.db.corrupt-SECONDS.
    #[arg(long)]
    restore_state: bool,
    #[command(flatten)]
    slum: crate::cmd::fleet::SlumArgs,
}

pub async fn run(
    config: Option<PathBuf>,
    data_dir: Option<PathBuf>,
    args: Args,
) -> anyhow::Result<ExitCode> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TENEMENT_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    // SIGHUP (also what a closed terminal sends) must not end the server and its tenants,
    // not even while it starts: handled (reload) from here on.
    // Descriptors whoever started us left open are not the tenants' (every instance would
    // inherit them): closed on exec from here on.
    close_on_exec_from(3);
    let mut hup = signal(SignalKind::hangup())?;
    let mut usr2 = signal(SignalKind::user_defined2())?;
    // Started by `ten upgrade`: the predecessor's sockets and lock are ours.
    let mut inherited = crate::cmd::upgrade::Inherited::from_env()?;
    let mut config = config_file::load(config.as_deref(), data_dir)?;
    let tls = &mut config.settings.tls;
    tls.enabled |= args.tls;
    tls.staging |= args.staging;
    if args.email.is_some() {
        tls.acme_email = args.email.clone();
    }
    if args.staging && tls.directory_url == tenement_core::config::LETS_ENCRYPT {
        tls.directory_url = tenement_core::config::LETS_ENCRYPT_STAGING.into();
    }
    if tls.enabled && tls.acme_email.is_none() {
        bail!("TLS needs an email for the ACME account: --email, or acme_email in [settings.tls]");
    }
    if tls.enabled && args.domain.is_none() && tls.domain.is_none() {
        bail!("TLS needs a domain: --domain, or domain in [settings.tls]");
    }

    let domain = match (&args.domain, &tls.domain) {
        (Some(d), _) => d.clone(),
        (None, Some(d)) if tls.enabled => d.clone(),
        _ => "localhost".to_owned(),
    };
    let port = args
        .port
        .unwrap_or(if tls.enabled { tls.http_port } else { 8080 });
    if config.settings.tls.enabled
        && let Some((name, msg)) =
            tenement_core::config::cache_in_service(&config.settings, config.services.keys())
    {
        bail!("service {name}: {msg}");
    }
    let data_dir = config.settings.data_dir.clone();
    let fresh = !data_dir.exists();
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("cannot create data_dir {}", data_dir.display()))?;
    if fresh {
        // Logs, token hashes and every tenant's data: not listable by others. Traversable
        // (0711), so that an app running as a user of its own (`user`, under `process`) reaches
        // its own directory below; every file and instance directory in it has its own mode.
        std::fs::set_permissions(&data_dir, std::fs::Permissions::from_mode(0o711))?;
    }
    check_data_dir(&data_dir)?;
    let (_lock, lock_fd) = match &inherited {
        Some(i) => (None, i.lock.as_raw_fd()),
        None => {
            let l = lock(&data_dir)?;
            let fd = l.as_raw_fd();
            (Some(l), fd)
        }
    };
    let fds = raise_fd_limit();
    let wanted = 4 * config.instances.len() as u64 + 1024;
    if fds < wanted {
        warn!(
            limit = fds,
            instances = config.instances.len(),
            "the open-files limit is low for this many instances (4 descriptors each): raise it (LimitNOFILE, ulimit -n)"
        );
    }

    let state = data_dir.join("tenement.db");
    // Only a damaged store is replaced: a sound one is newer than its backup (a flag left in
    // a unit file must not roll the state back at every start).
    if args.restore_state {
        match Store::open_checked(&state) {
            Ok(_) => warn!(
                "--restore-state: {} is sound; kept (its backup is older)",
                state.display()
            ),
            Err(_) => {
                let aside = tenement::restore_backup(&state)
                    .with_context(|| format!("cannot restore {}", state.display()))?;
                warn!(damaged = %aside.display(), "state store restored from its last good copy");
            }
        }
    }
    let store = match Store::open_checked(&state) {
        Ok(store) => store,
        Err(tenement::OpenError::Damaged(d)) => bail!("{d}"),
        Err(tenement::OpenError::Other(e)) => return Err(e.into()),
    };
    back_up_now_and_then(store.clone());
    // Read once: after a new binary is installed over it, /proc/self/exe says "(deleted)".
    let exe = std::env::current_exe().context("cannot find the ten executable")?;
    let runtimes: &'static Runtimes =
        Box::leak(Box::new(Runtimes::new(exe.clone(), &config.settings)));
    let users = crate::cmd::config::unknown_users(&config);
    for problem in crate::cmd::config::unavailable(&config, runtimes)
        .into_iter()
        .chain(users)
    {
        tracing::warn!("{problem}. Its instances will fail to start.");
    }
    let scope = Cgroups::scope_for(&data_dir);
    // TENEMENT_NO_CGROUPS=1: diagnostics and benchmarks only (instances run without cgroups).
    let disabled = std::env::var_os("TENEMENT_NO_CGROUPS").is_some_and(|v| v == "1");
    let detected = if disabled {
        None
    } else {
        Cgroups::detect(&scope)
    };
    let cgroups: Option<&'static Cgroups> = detected.map(|c| &*Box::leak(Box::new(c)));
    match cgroups {
        Some(c) => info!(
            version = c.version(),
            scope, "instances get their own cgroups"
        ),
        None => warn!("no usable cgroups: memory_limit_mb/cpu_shares cannot be enforced here"),
    }
    let retention = Retention {
        max_age: std::time::Duration::from_secs(config.settings.log_retention_days * 86_400),
        max_bytes: config.settings.log_max_mb * 1024 * 1024,
    };
    let (logs, set_aside) = LogStore::open_or_set_aside(&data_dir.join("logs.db"), retention)?;
    if let Some(why) = set_aside {
        warn!("{why}");
    }
    let supervisor =
        Supervisor::new(Arc::new(config), store, runtimes, cgroups).with_log_store(logs.clone());

    let handed_to_us = match inherited.as_mut() {
        // Ready: from here the predecessor stops accepting and hands its instances over.
        Some(i) => i.take_over().await?,
        None => Vec::new(),
    };
    let looking = std::time::Instant::now();
    // Instances an earlier server left running (a crash, an upgrade) are ours from here on;
    // what is theirs survives the clean-up of its other leftovers.
    let (running, kept) = tenement::find_running(&data_dir, handed_to_us)
        .await
        .with_context(|| {
            format!(
                "cannot look for running instances in {}",
                data_dir.display()
            )
        })?;
    let adopted = running.len();
    if !running.is_empty() {
        let ms = looking.elapsed().as_secs_f64() * 1000.0;
        info!(instances = running.len(), ms, "found running: adopting");
    }
    runtimes.clean_stale(&kept.keys);
    // Quota mounts of a server that was killed are still there: start from a clean slate.
    tenement_runtime::storage::clean_stale(&data_dir, &kept.dirs);
    if let Some(c) = cgroups {
        c.clean_stale(&kept.cgroups);
    }
    let supervisor = supervisor.with_adopted(running);
    supervisor.set_routing_domain(&domain);

    let socket_path = control_socket(&data_dir);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    // Every TCP listener before the control socket: a port in use leaves nothing behind.
    let secure = inherited.as_mut().map(|i| std::mem::take(&mut i.secure));
    let https = crate::cmd::https::front(&supervisor, &domain, secure, args.bind, threads)?;
    let (control, front_listeners) = match inherited.as_mut() {
        Some(i) => (
            tokio::net::UnixListener::from_std(i.control.take().context("no control socket")?)?,
            std::mem::take(&mut i.front),
        ),
        None => {
            let front = bind(std::net::SocketAddr::new(args.bind, port), threads)
                .with_context(|| format!("cannot listen on {}:{port}", args.bind))?;
            let _ = std::fs::remove_file(&socket_path); // stale: the lock proves no server owns it
            let control = tokio::net::UnixListener::bind(&socket_path)
                .with_context(|| format!("cannot listen on {}", socket_path.display()))?;
            std::fs::set_permissions(&socket_path, std::fs::Permissions::from_mode(0o600))?;
            (control, front)
        }
    };
    let handed = Handed {
        lock: lock_fd,
        control: control.as_raw_fd(),
        front: front_listeners.iter().map(|l| l.as_raw_fd()).collect(),
        secure: https
            .iter()
            .flat_map(|h| &h.0)
            .map(|l| l.as_raw_fd())
            .collect(),
    };
    let http_addr = front_listeners[0].local_addr()?;
    match &https {
        Some((l, _)) => {
            let https_addr = l[0].local_addr()?;
            info!(control = %socket_path.display(), http = %http_addr, https = %https_addr, %domain, "ten serve listening (HTTPS; HTTP answers ACME challenges and redirects)");
        }
        None => {
            info!(control = %socket_path.display(), http = %http_addr, %domain, "ten serve listening")
        }
    }

    // Instances come back while we listen, so that `ten ps` shows them starting; a list asked
    // for before they are all registered waits for that (`Supervisor::registered`).
    let restoring = tokio::spawn(supervisor.restore());
    if inherited.is_some() {
        // Connections wait in the sockets' queues until every instance is known here.
        supervisor.registered(Duration::from_secs(30)).await;
        let ms = looking.elapsed().as_secs_f64() * 1000.0;
        info!(ms, "every instance registered");
    }
    let mut upgrades = supervisor.upgrade_requests();
    let (stop_control, stop_front) = (CancellationToken::new(), CancellationToken::new());
    let control = tokio::spawn(serve(
        control,
        supervisor.clone(),
        Access::ControlSocket,
        https.as_ref().map(|h| h.1.tls.clone()),
        stop_control.clone(),
    ));
    let front = tokio::spawn({
        let (s, domain, stop) = (supervisor.clone(), domain.clone(), stop_front.clone());
        async move { front_door(front_listeners, https, s, &domain, stop).await }
    });

    if let Some(mut i) = inherited.take() {
        i.serving(adopted).await;
        // Held for this process's life (and handed on at the next upgrade).
        std::mem::forget(i.lock);
    }
    crate::cmd::fleet::start(&args.slum, supervisor.clone(), http_addr)
        .map_err(anyhow::Error::msg)?;
    crate::notify::notify(&format!("READY=1\nSTATUS=serving on {http_addr}"));
    if let Some(every) = crate::notify::watchdog_interval() {
        // Pings from this runtime: if it stops making progress, systemd notices.
        tokio::spawn(async move {
            loop {
                crate::notify::notify("WATCHDOG=1");
                tokio::time::sleep(every).await;
            }
        });
    }
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut handed_over = None;
    loop {
        tokio::select! {
            _ = term.recv() => info!("SIGTERM: stopping every instance"),
            _ = int.recv() => info!("SIGINT: stopping every instance"),
            request = upgrades.recv() => {
                let Some(reply) = request else { continue };
                match hand_over(&supervisor, &exe, &handed, &stop_front, &stop_control).await {
                    Ok(done) => {
                        let _ = reply.send(Ok(done.clone()));
                        handed_over = Some(done);
                    }
                    Err((e, past_return)) => {
                        warn!("upgrade failed: {e}");
                        let _ = reply.send(Err(e.clone()));
                        if past_return {
                            bail!("upgrade failed after this server let go: {e}; the next ten serve adopts the instances");
                        }
                        continue;
                    }
                }
            }
            _ = usr2.recv() => {
                info!("SIGUSR2: upgrading");
                match hand_over(&supervisor, &exe, &handed, &stop_front, &stop_control).await {
                    Ok(done) => handed_over = Some(done),
                    Err((e, false)) => { warn!("upgrade failed: {e}"); continue }
                    Err((e, true)) => bail!("upgrade failed after this server let go: {e}; the next ten serve adopts the instances"),
                }
            }
            _ = hup.recv() => {
                info!("SIGHUP: reloading the configuration");
                let s = supervisor.clone();
                crate::notify::reloading();
                tokio::spawn(async move {
                    if let Err(errors) = s.reload_from_file().await {
                        warn!("reload refused, nothing changed: {errors}");
                    }
                    crate::notify::notify("READY=1");
                });
                continue;
            }
        }
        break;
    }
    if let Some(done) = handed_over {
        // The successor serves; this server finishes what it has in flight and leaves
        // everything else (instances, sockets, the lock) to it.
        crate::notify::notify(&format!("MAINPID={}", done.pid));
        restoring.abort();
        // The front door waits for its connections, websockets and streams.
        let drained = tokio::time::timeout(UPGRADE_DRAIN + Duration::from_secs(1), front);
        if drained.await.is_err() {
            warn!("requests still in flight after {UPGRADE_DRAIN:?}: cut");
        }
        let _ = tokio::task::spawn_blocking(move || logs.close()).await;
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, control).await;
        info!(successor = done.pid, "handed over; ten serve exits");
        return Ok(ExitCode::SUCCESS);
    }
    crate::notify::notify("STOPPING=1");
    restoring.abort();
    // In order: stop accepting, let requests in flight finish (each front-door thread waits
    // for its connections, at most 10 s), then stop the instances. The control socket serves
    // until the end (`ten ps` shows the shutdown).
    stop_front.cancel();
    if tokio::time::timeout(SHUTDOWN_GRACE + Duration::from_secs(1), front)
        .await
        .is_err()
    {
        warn!("front door connections still open after {SHUTDOWN_GRACE:?}: cut");
    }
    supervisor.shutdown().await;
    let _ = tokio::task::spawn_blocking(move || logs.close()).await;
    stop_control.cancel();
    // Whatever is still open after the grace period (a client that never reads, say) is cut
    // when the process exits.
    match tokio::time::timeout(SHUTDOWN_GRACE, control).await {
        Ok(Ok(Err(e))) => warn!(error = %e, "control socket ended with an error"),
        Err(_) => warn!("control socket connections still open after {SHUTDOWN_GRACE:?}: cut"),
        _ => {}
    }
    let _ = std::fs::remove_file(&socket_path);
    if let Some(c) = cgroups {
        c.remove_scope();
    }
    info!("ten serve stopped");
    Ok(ExitCode::SUCCESS)
}

/// `ten upgrade`: starts the successor, stops accepting once it is ready, and lets it adopt
/// every instance. The error says whether this server had already stopped accepting.
async fn hand_over(
    supervisor: &Supervisor,
    exe: &Path,
    handed: &Handed,
    stop_front: &CancellationToken,
    stop_control: &CancellationToken,
) -> Result<tenement::Upgraded, (String, bool)> {
    let mut next = Successor::start(exe, handed)
        .await
        .map_err(|e| (format!("{e:#}"), false))?;
    let stopped = std::time::Instant::now();
    stop_front.cancel();
    stop_control.cancel();
    let running = supervisor.hand_over().await;
    let ms = stopped.elapsed().as_secs_f64() * 1000.0;
    info!(
        instances = running.len(),
        ms, "upgrade: every instance let go of"
    );
    let (adopted, waited) = next
        .go(running, stopped)
        .await
        .map_err(|e| (format!("{e:#}"), true))?;
    let done = tenement::Upgraded {
        pid: next.pid(),
        adopted,
        handover_ms: waited.as_secs_f64() * 1000.0,
    };
    info!(
        successor = done.pid,
        adopted,
        handover_ms = done.handover_ms,
        "upgrade: the new server serves"
    );
    Ok(done)
}

/// Marks every descriptor from `first` on close-on-exec (close_range(2)).
fn close_on_exec_from(first: u32) {
    // SAFETY: close_range(2) with CLOSE_RANGE_CLOEXEC closes nothing; it only sets a flag.
    let r = unsafe { libc::close_range(first, u32::MAX, libc::CLOSE_RANGE_CLOEXEC as i32) };
    if r == 0 {
        return;
    }
    // Before Linux 5.11: one by one.
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    let fds: Vec<i32> = dir
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .filter(|fd| *fd >= first as i32)
        .collect();
    for fd in fds {
        // SAFETY: fcntl(2) on a number; one that is closed meanwhile fails harmlessly.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
}

/// Keeps `tenement.db.bak`, the last good copy of the state store: written now (the store
/// was just found sound) and every [`BACKUP_EVERY`]. A failure (disk full) is a warning; the
/// copy before it stays. Also takes the store's disk reserve back as soon as there is room.
fn back_up_now_and_then(store: Store) {
    let s = store.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            let s = s.clone();
            let _ = tokio::task::spawn_blocking(move || s.keep_reserve()).await;
        }
    });
    tokio::spawn(async move {
        loop {
            let s = store.clone();
            match tokio::task::spawn_blocking(move || s.back_up()).await {
                Ok(Err(e)) => warn!(error = %e, "cannot back up the state store"),
                Err(e) => warn!(error = %e, "state store backup task failed"),
                Ok(Ok(())) => {}
            }
            tokio::time::sleep(BACKUP_EVERY).await;
        }
    });
}

const BACKUP_EVERY: Duration = Duration::from_secs(600);

/// How long what the old server has in flight (websockets included) may take to finish
/// after `ten upgrade`.
const UPGRADE_DRAIN: Duration = Duration::from_secs(60);

/// How long connections in flight may take to finish at shutdown.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// data_dir holds the state, tokens and every tenant's data: one that someone else owns, or
/// may write to, or that is a symlink, could hand all of it to them (a token they planted, a
/// socket they swap). Refused with the reason.
fn check_data_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(dir)
        .with_context(|| format!("cannot read data_dir {}", dir.display()))?;
    let me = nix::unistd::geteuid().as_raw();
    let why = if meta.file_type().is_symlink() {
        Some("it is a symbolic link".to_string())
    } else if meta.uid() != me && meta.uid() != 0 {
        Some(format!(
            "it is owned by uid {}, not by the server's user",
            meta.uid()
        ))
    } else if meta.mode() & 0o022 != 0 {
        Some(format!(
            "mode {:04o} lets others write in it",
            meta.mode() & 0o7777
        ))
    } else {
        None
    };
    match why {
        Some(why) => bail!(
            "unsafe data_dir {}: {why}; use a directory of the server's own (it is created mode 0711 when missing)",
            dir.display()
        ),
        None => Ok(()),
    }
}

/// One server per data directory: a second `ten serve` fails at once instead of fighting over
/// the instances.
fn lock(data_dir: &Path) -> anyhow::Result<Flock<std::fs::File>> {
    let path = data_dir.join("ten.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(lock),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
            bail!(
                "another ten serve is already running with data_dir {}",
                data_dir.display()
            )
        }
        Err((_, e)) => bail!("cannot lock {}: {e}", path.display()),
    }
}

/// Each running instance holds four descriptors here (its shim's connection, two pipes, a
/// kept health-check connection): the soft limit goes up to the hard one, which is the
/// operator's to set (the systemd unit's `LimitNOFILE=1048576`). Returns the limit.
fn raise_fd_limit() -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return 0;
    };
    match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
        Ok(()) => hard,
        Err(_) => soft,
    }
}
