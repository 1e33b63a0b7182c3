//! This server's view of a slum fleet (`ten serve --slum`): which tenant (a custom domain)
//! lives on which server as which instance, which of them slum placed here, and whether this
//! server may serve those (its lease).
//!
//! The table comes with slum's heartbeat replies and is kept in the state store, so a restart
//! (or slum being down) keeps routing. The front door asks [`Fleet::route`] for a host that is
//! not one of this server's own custom domains: a tenant placed here is served here, a tenant
//! placed elsewhere goes one hop to its owner under the owner's own name for it.
//!
//! **Fencing.** A tenant placed here is served only while this server holds its lease (its
//! last heartbeat was sent less than `lease_ms` ago: slum marks it down no earlier), or while
//! every peer says it has lost slum too (then slum is down and cannot move anything). Outside
//! those, its requests get 503, whichever name they use, from the very moment the lease ends:
//! the check is on the request path, not in a task that may not have run yet.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};
use tenement_core::InstanceKey;

/// The fleet as slum last described it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Table {
    /// Changes whenever a tenant is placed, moved or removed.
    pub version: u64,
    /// This server's id in the fleet.
    pub me: String,
    pub lease_ms: u64,
    pub tenants: Vec<Placed>,
    pub servers: Vec<Peer>,
}

/// A tenant: its domain, and the instance that serves it on one server.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Placed {
    pub domain: String,
    pub server_id: String,
    pub process: String,
    pub instance_id: String,
    /// Bumped at every placement of the tenant: a report names the placement it is about.
    pub epoch: u64,
}

impl Placed {
    pub fn key(&self) -> Option<InstanceKey> {
        format!("{}:{}", self.process, self.instance_id)
            .parse()
            .ok()
    }
}

/// Another server of the fleet (or this one).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Peer {
    pub id: String,
    /// Its front door (`http://10.0.0.2:8080`).
    pub url: String,
    /// Its routing domain: an instance there is `{id}.{service}.{domain}`.
    pub domain: String,
    /// `new`, `up` or `down`, as slum saw it.
    pub state: String,
}

/// Where a fleet tenant's request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dest {
    /// Placed here: this instance.
    Here(InstanceKey),
    /// Placed here, but this server does not hold its lease: 503.
    Fenced(InstanceKey),
    /// Placed on another server: one hop to `addr` with `host`.
    There(Arc<Hop>),
}

#[derive(Debug, PartialEq, Eq)]
pub struct Hop {
    pub server: String,
    /// The tenant's service (what the metrics count it under).
    pub service: String,
    pub addr: SocketAddr,
    /// The owner's own name for the instance (`prod.api.east.example.com`).
    pub host: String,
}

#[derive(Default)]
struct Routes {
    domains: HashMap<String, Dest>,
    /// Instances placed here.
    here: HashSet<InstanceKey>,
    /// Instances that were placed here and are being stopped (moved or removed): refused.
    leaving: HashSet<InstanceKey>,
    /// Instance names of tenants placed on other servers.
    elsewhere: HashSet<InstanceKey>,
}

#[derive(Default)]
pub struct Fleet {
    table: RwLock<Arc<Table>>,
    routes: RwLock<Routes>,
    /// Whether this server is in a fleet at all: most are not, and pay nothing per request.
    any: AtomicBool,
    /// Unix milliseconds until which this server holds its lease.
    valid_until: AtomicU64,
    /// Every peer has lost slum too: slum is down and moves nothing.
    slum_down: AtomicBool,
    /// What peers prove themselves with when they ask about this server's lease (the fleet's
    /// join token).
    peer_token: std::sync::OnceLock<String>,
}

impl Fleet {
    /// The fleet as last kept (`table`), its lease not held until a heartbeat or
    /// [`Fleet::hold_until`] says so.
    pub fn new(table: Option<Table>) -> Self {
        let fleet = Fleet::default();
        if let Some(t) = table {
            fleet.set(t);
        }
        fleet
    }

    /// The table in force.
    pub fn table(&self) -> Arc<Table> {
        self.table.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Takes `table` (routes are built once here, not per request). A peer's URL that names
    /// no address (`http://east.example.com:8080`) is resolved now.
    pub fn set(&self, table: Table) {
        let peers: HashMap<&str, &Peer> =
            table.servers.iter().map(|p| (p.id.as_str(), p)).collect();
        let mut routes = Routes::default();
        // A tenant's name may not be an address or a server's own name (its instances' names):
        // slum refuses those, and a server does not take them from a table either.
        let servers_own = |d: &str| {
            table.servers.iter().any(|p| {
                !p.domain.is_empty() && (d == p.domain || d.ends_with(&format!(".{}", p.domain)))
            })
        };
        for t in &table.tenants {
            let Some(key) = t.key() else { continue };
            let literal = t.domain.parse::<std::net::IpAddr>().is_ok()
                || t.domain
                    .rsplit('.')
                    .next()
                    .is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()));
            if literal || servers_own(&t.domain) {
                tracing::warn!(domain = %t.domain, "a fleet tenant's domain is an address or a server's own name: not routed");
                continue;
            }
            let dest = if t.server_id == table.me {
                routes.here.insert(key.clone());
                Dest::Here(key)
            } else {
                routes.elsewhere.insert(key);
                let Some(peer) = peers.get(t.server_id.as_str()) else {
                    continue;
                };
                let Some(addr) = address(&peer.url) else {
                    tracing::warn!(server = %peer.id, url = %peer.url, "a fleet server's URL names no address: its tenants do not route from here");
                    continue;
                };
                Dest::There(Arc::new(Hop {
                    server: peer.id.clone(),
                    service: t.process.clone(),
                    addr,
                    host: format!("{}.{}.{}", t.instance_id, t.process, peer.domain),
                }))
            };
            routes.domains.insert(t.domain.clone(), dest);
        }
        let mut current = self.routes.write().unwrap_or_else(|p| p.into_inner());
        routes.leaving = (current.here.iter().chain(&current.leaving))
            .filter(|k| !routes.here.contains(*k))
            .cloned()
            .collect();
        self.any.store(
            !routes.domains.is_empty() || !routes.leaving.is_empty(),
            Ordering::Relaxed,
        );
        *current = routes;
        drop(current);
        *self.table.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(table);
    }

    /// Where a request for `host` goes, if it is a fleet tenant's domain.
    pub fn route(&self, host: &str) -> Option<Dest> {
        if !self.any.load(Ordering::Relaxed) {
            return None;
        }
        let host = host.rsplit_once(':').map_or(host, |(h, _)| h);
        let host = host.strip_suffix('.').unwrap_or(host);
        let routes = self.routes.read().unwrap_or_else(|p| p.into_inner());
        // No allocation on the request path unless the client wrote capitals.
        let dest = match routes.domains.get(host) {
            None if host.bytes().any(|b| b.is_ascii_uppercase()) => {
                routes.domains.get(&host.to_ascii_lowercase())
            }
            found => found,
        };
        match dest? {
            Dest::Here(key) if !self.serving() => Some(Dest::Fenced(key.clone())),
            dest => Some(dest.clone()),
        }
    }

    /// Whether `key` was placed here by slum and may not be served now (whatever name a
    /// request for it uses).
    pub fn fenced(&self, key: &InstanceKey) -> bool {
        if !self.any.load(Ordering::Relaxed) {
            return false;
        }
        let routes = self.routes.read().unwrap_or_else(|p| p.into_inner());
        routes.leaving.contains(key) || (routes.here.contains(key) && !self.serving())
    }

    /// Whether `key` names a tenant slum placed on another server and not here: a request
    /// for it here (a peer's stale table) must not start a copy of it (`spawn_on_request`).
    pub fn placed_elsewhere(&self, key: &InstanceKey) -> bool {
        if !self.any.load(Ordering::Relaxed) {
            return false;
        }
        let routes = self.routes.read().unwrap_or_else(|p| p.into_inner());
        routes.elsewhere.contains(key) && !routes.here.contains(key)
    }

    /// `key`, no longer placed here, has been stopped: its name is this server's again.
    pub fn left(&self, key: &InstanceKey) {
        let mut routes = self.routes.write().unwrap_or_else(|p| p.into_inner());
        routes.leaving.remove(key);
        let any = !routes.domains.is_empty() || !routes.leaving.is_empty();
        self.any.store(any, Ordering::Relaxed);
    }

    /// The instances slum placed here.
    pub fn here(&self) -> Vec<InstanceKey> {
        let routes = self.routes.read().unwrap_or_else(|p| p.into_inner());
        routes.here.iter().cloned().collect()
    }

    /// Whether this server may serve its fleet tenants now.
    pub fn serving(&self) -> bool {
        self.lease_held() || self.slum_down.load(Ordering::Relaxed)
    }

    /// Whether this server's own last heartbeat is within its lease.
    pub fn lease_held(&self) -> bool {
        crate::now_ms() < self.valid_until.load(Ordering::Relaxed)
    }

    /// The lease holds until `unix_ms` (a heartbeat sent at `t` holds it until `t + lease`).
    pub fn hold_until(&self, unix_ms: u64) {
        self.valid_until.store(unix_ms, Ordering::Relaxed);
        self.slum_down.store(false, Ordering::Relaxed);
    }

    /// Until when the lease holds (Unix milliseconds).
    pub fn held_until(&self) -> u64 {
        self.valid_until.load(Ordering::Relaxed)
    }

    /// Every peer has lost slum too (`true`), or some peer still hears from it or could not
    /// be asked (`false`).
    pub fn set_slum_down(&self, down: bool) {
        self.slum_down.store(down, Ordering::Relaxed);
    }
}

impl Fleet {
    /// Peers asking about this server's lease must show `token` (the fleet's join token).
    pub fn set_peer_token(&self, token: &str) {
        let _ = self.peer_token.set(token.to_owned());
    }

    /// Whether `token` is the peers' (compared in constant time); false outside a fleet.
    pub fn is_peer_token(&self, token: &str) -> bool {
        self.peer_token.get().is_some_and(|t| {
            t.len() == token.len()
                && t.bytes()
                    .zip(token.bytes())
                    .fold(0, |acc, (a, b)| acc | (a ^ b))
                    == 0
        })
    }
}

/// The socket address of `http://HOST:PORT` (port 80 by default), resolving a name.
fn address(url: &str) -> Option<SocketAddr> {
    let rest = url.strip_prefix("http://")?;
    let authority = rest.split('/').next()?;
    let with_port = match authority.rsplit_once(':') {
        Some((_, p)) if p.bytes().all(|b| b.is_ascii_digit()) && !authority.ends_with(']') => {
            authority.to_owned()
        }
        _ => format!("{authority}:80"),
    };
    std::net::ToSocketAddrs::to_socket_addrs(&with_port)
        .ok()?
        .next()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> Table {
        let peer = |id: &str, url: &str| Peer {
            id: id.into(),
            url: url.into(),
            domain: format!("{id}.example.com"),
            state: "up".into(),
        };
        let placed = |domain: &str, server: &str| Placed {
            domain: domain.into(),
            server_id: server.into(),
            process: "api".into(),
            instance_id: "prod".into(),
            epoch: 1,
        };
        Table {
            version: 3,
            me: "east".into(),
            lease_ms: 3000,
            tenants: vec![
                placed("a.customer.org", "east"),
                placed("b.customer.org", "west"),
            ],
            servers: vec![
                peer("east", "http://10.0.0.1:8080"),
                peer("west", "http://10.0.0.2"),
            ],
        }
    }

    #[test]
    fn here_there_and_fenced() {
        let fleet = Fleet::new(Some(table()));
        let key: InstanceKey = "api:prod".parse().unwrap();
        assert_eq!(
            fleet.route("A.customer.org:8080"),
            Some(Dest::Fenced(key.clone()))
        );
        assert!(fleet.fenced(&key));
        fleet.hold_until(crate::now_ms() + 10_000);
        assert_eq!(
            fleet.route("a.customer.org."),
            Some(Dest::Here(key.clone()))
        );
        assert!(!fleet.fenced(&key));
        let Some(Dest::There(hop)) = fleet.route("b.customer.org") else {
            panic!("b is west's")
        };
        assert_eq!(hop.addr, "10.0.0.2:80".parse().unwrap());
        assert_eq!(hop.host, "prod.api.west.example.com");
        assert_eq!(fleet.route("c.customer.org"), None);
        // west's tenant is app:prod too: here it is ours, so it is not "elsewhere".
        assert!(!fleet.placed_elsewhere(&key));
        fleet.hold_until(1);
        assert!(fleet.fenced(&key));
        fleet.set_slum_down(true);
        assert!(!fleet.fenced(&key), "slum is down: nothing can move it");
        // a.customer.org moves away: its instance is refused here until it has stopped.
        let mut only_west = table();
        only_west.tenants.remove(0);
        fleet.set(only_west);
        assert!(fleet.placed_elsewhere(&key) && fleet.fenced(&key));
        fleet.left(&key);
        assert!(!fleet.fenced(&key));
    }

    #[test]
    fn no_fleet_routes_nothing() {
        let fleet = Fleet::new(None);
        assert_eq!(fleet.route("a.customer.org"), None);
        assert!(!fleet.fenced(&"api:prod".parse().unwrap()));
    }
}
