//! Custom domains: a name of a customer's own (`shop.customer.org`) routed to one instance,
//! kept in the state store (written before it is acknowledged) and in memory for the front
//! door, which looks a request's host up here before the routing rules.

use std::collections::HashMap;
use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, Ordering};

use tenement_core::InstanceKey;

use crate::{Error, Supervisor};

#[derive(Default)]
pub struct Domains {
    map: RwLock<HashMap<String, InstanceKey>>,
    /// Whether there is any: most servers have none, and pay nothing per request.
    any: AtomicBool,
}

impl Domains {
    pub(crate) fn new(list: Vec<(String, InstanceKey)>) -> Self {
        let d = Self::default();
        d.any.store(!list.is_empty(), Ordering::Relaxed);
        *d.map.write().unwrap_or_else(|p| p.into_inner()) = list.into_iter().collect();
        d
    }

    /// The instance `host` (as a Host header or SNI has it: any case, a port, a final dot)
    /// routes to, if it is a custom domain.
    pub fn get(&self, host: &str) -> Option<InstanceKey> {
        if !self.any.load(Ordering::Relaxed) {
            return None;
        }
        let host = host.rsplit_once(':').map_or(host, |(h, _)| h);
        let host = host.strip_suffix('.').unwrap_or(host);
        let map = self.map.read().unwrap_or_else(|p| p.into_inner());
        match map.get(host) {
            Some(key) => Some(key.clone()),
            None if host.bytes().any(|b| b.is_ascii_uppercase()) => {
                map.get(&host.to_ascii_lowercase()).cloned()
            }
            None => None,
        }
    }

    pub fn list(&self) -> Vec<(String, InstanceKey)> {
        let map = self.map.read().unwrap_or_else(|p| p.into_inner());
        let mut list: Vec<_> = map.iter().map(|(n, k)| (n.clone(), k.clone())).collect();
        list.sort();
        list
    }
}

impl Supervisor {
    /// Routes `name` to `key` from now on (and after restarts). The name must be a host name
    /// outside the server's routing domain (whose names route by their labels), not taken,
    /// and the instance must exist.
    pub fn add_domain(&self, name: &str, key: &InstanceKey) -> Result<String, Error> {
        let name = tenement_core::route::parse_domain(name).map_err(Error::BadDomain)?;
        let tld = name.rsplit('.').next().unwrap_or_default();
        if !name.contains('.') || tld.bytes().all(|b| b.is_ascii_digit()) {
            return Err(Error::BadDomain(format!(
                "`{name}` is not a fully qualified domain name"
            )));
        }
        let own = self.routing_domain();
        if name == own || name.ends_with(&format!(".{own}")) {
            return Err(Error::BadDomain(format!(
                "`{name}` is under this server's own domain {own}: it routes by its labels already"
            )));
        }
        self.get(key)?;
        let domains = self.domains();
        let mut map = domains.map.write().unwrap_or_else(|p| p.into_inner());
        if let Some(other) = map.get(&name) {
            return Err(Error::DomainTaken(name, other.clone()));
        }
        if !self.store().insert_domain(&name, key)? {
            return Err(Error::DomainTaken(name, key.clone()));
        }
        map.insert(name.clone(), key.clone());
        domains.any.store(true, Ordering::Relaxed);
        Ok(name)
    }

    /// Stops routing `name`.
    pub fn remove_domain(&self, name: &str) -> Result<InstanceKey, Error> {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        let domains = self.domains();
        let mut map = domains.map.write().unwrap_or_else(|p| p.into_inner());
        if !map.contains_key(&name) {
            return Err(Error::UnknownDomain(name));
        }
        self.store().delete_domain(&name)?;
        let key = map.remove(&name).expect("checked above");
        domains.any.store(!map.is_empty(), Ordering::Relaxed);
        Ok(key)
    }
}
