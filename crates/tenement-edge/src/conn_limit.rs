//! Caps on front-door connections, so that clients can never take the file descriptors that
//! health checks, spawns, log pipes and the API need.
//!
//! `max_connections` (0: sized from the file descriptor limit, see [`ConnLimit::auto`]) caps
//! all client connections, `max_connections_per_ip` those of one address, so one address
//! cannot take them all. A connection over a cap is closed as soon as it is accepted. An idle
//! connection is closed after `header_timeout` in any case.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};

use prometheus_client::metrics::counter::Counter;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tenement_core::config::Settings;
use tracing::warn;

pub struct ConnLimit {
    max: usize,
    per_ip: usize,
    open: AtomicUsize,
    by_ip: Mutex<HashMap<IpAddr, u32>>,
    refused: Counter,
    warned: Mutex<Option<Instant>>,
}

/// One admitted connection; dropping it frees its place.
pub struct Admitted {
    limit: Arc<ConnLimit>,
    ip: IpAddr,
}

impl ConnLimit {
    pub fn new(max: usize, per_ip: usize, refused: Counter) -> Arc<Self> {
        Arc::new(Self {
            max,
            per_ip,
            open: AtomicUsize::new(0),
            by_ip: Mutex::default(),
            refused,
            warned: Mutex::default(),
        })
    }

    /// From `[settings]`, with `max_connections = 0` sized from the descriptor limit.
    pub fn from_settings(s: &Settings, refused: Counter) -> Arc<Self> {
        let max = match s.max_connections {
            0 => Self::auto(fd_limit()),
            n => n as usize,
        };
        let per_ip = match s.max_connections_per_ip {
            0 => usize::MAX,
            n => n as usize,
        };
        Self::new(max, per_ip, refused)
    }

    /// A proxied connection holds two descriptors (client and instance); a quarter of the
    /// limit (at least 1,024) stays for everything else: instances' pipes and sockets, health
    /// checks, the log and state stores, the API.
    pub fn auto(fd_limit: u64) -> usize {
        let reserve = (fd_limit / 4).max(1024);
        (fd_limit.saturating_sub(reserve) / 2).max(64) as usize
    }

    pub fn max(&self) -> usize {
        self.max
    }

    /// Admits a connection from `ip`, or `None` when a cap is reached.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<Admitted> {
        let over_total = self.open.fetch_add(1, Ordering::AcqRel) >= self.max;
        let over_ip = !over_total && {
            let mut by_ip = self.by_ip.lock().unwrap_or_else(|p| p.into_inner());
            let n = by_ip.entry(ip).or_default();
            if (*n as usize) < self.per_ip {
                *n += 1;
                false
            } else {
                true
            }
        };
        if over_total || over_ip {
            self.open.fetch_sub(1, Ordering::AcqRel);
            self.refuse(ip, over_total);
            return None;
        }
        Some(Admitted {
            limit: self.clone(),
            ip,
        })
    }

    fn refuse(&self, ip: IpAddr, total: bool) {
        let n = self.refused.inc() + 1;
        let mut warned = self.warned.lock().unwrap_or_else(|p| p.into_inner());
        if warned.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
            *warned = Some(Instant::now());
            let (cap, value) = match total {
                true => ("max_connections", self.max),
                false => ("max_connections_per_ip", self.per_ip),
            };
            warn!(client = %ip, cap, value, refused_so_far = n, "front door full: closing new connections");
        }
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.limit.open.fetch_sub(1, Ordering::AcqRel);
        let mut by_ip = self.limit.by_ip.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = by_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                by_ip.remove(&self.ip);
            }
        }
    }
}

/// The soft limit on open descriptors of this process.
fn fd_limit() -> u64 {
    nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map_or(1024, |(soft, _)| soft)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_in_total_and_per_address() {
        let limit = ConnLimit::new(3, 2, Counter::default());
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let a1 = limit.admit(a).unwrap();
        let _a2 = limit.admit(a).unwrap();
        assert!(limit.admit(a).is_none(), "per address");
        let _b1 = limit.admit(b).unwrap();
        assert!(limit.admit(b).is_none(), "in total");
        drop(a1);
        assert!(limit.admit(b).is_some(), "a place freed");
        assert_eq!(limit.refused.get(), 2);
        assert_eq!(ConnLimit::auto(20_000), 7_500);
        assert_eq!(ConnLimit::auto(1_024), 64);
    }
}
