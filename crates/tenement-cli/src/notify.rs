//! systemd's notify protocol (sd_notify(3)), for `Type=notify` units (`ten install`): a
//! datagram of `KEY=VALUE` lines to the socket in `$NOTIFY_SOCKET` (a path, or `@name` in
//! the abstract namespace). Without the variable every call does nothing.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// Sends `state` (e.g. `READY=1`); errors are ignored, as sd_notify's callers do.
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let path = path.to_string_lossy();
    let addr = match path.strip_prefix('@') {
        Some(name) => SocketAddr::from_abstract_name(name.as_bytes()),
        None => SocketAddr::from_pathname(path.as_ref()),
    };
    if let (Ok(addr), Ok(socket)) = (addr, UnixDatagram::unbound()) {
        let _ = socket.send_to_addr(state.as_bytes(), &addr);
    }
}

/// `RELOADING=1` with the monotonic time systemd asks for (systemd.service(5), Type=notify).
pub fn reloading() {
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000 + t.tv_nsec() as u64 / 1_000)
        .unwrap_or(0);
    notify(&format!("RELOADING=1\nMONOTONIC_USEC={now}"));
}

/// The watchdog interval systemd wants pings at (half of `WATCHDOG_USEC`), if it set one for
/// this process.
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    let pid_ok = std::env::var("WATCHDOG_PID")
        .ok()
        .is_none_or(|p| p.parse() == Ok(std::process::id()));
    (pid_ok && usec > 0).then(|| Duration::from_micros(usec / 2))
}
