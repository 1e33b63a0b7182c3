//! TCP ports for `PORT` / `{port}`, from 30000-40000.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, TcpListener};
use std::ops::RangeInclusive;

pub const RANGE: RangeInclusive<u16> = 30000..=40000;

#[derive(Debug, Default)]
pub struct Ports {
    taken: BTreeSet<u16>,
    cursor: u16,
}

impl Ports {
    /// A port no other instance has; with `free`, also one that nothing on this host listens
    /// on right now (for an app that will listen on it: `listen = "tcp"`). Without, the port
    /// is only the `PORT` variable of an app that listens on its Unix socket: a tenant that
    /// binds every port of the range (tenants share the host's network) cannot keep other
    /// instances from starting.
    pub fn allocate(&mut self, free: bool) -> Option<u16> {
        let span = RANGE.end() - RANGE.start() + 1;
        for step in 0..span {
            let port = RANGE.start() + (self.cursor + step) % span;
            if self.taken.contains(&port)
                || (free && TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_err())
            {
                continue;
            }
            self.taken.insert(port);
            self.cursor = (port - RANGE.start() + 1) % span;
            return Some(port);
        }
        None
    }

    /// Takes `port` (an adopted instance's) if no other instance has it.
    pub fn claim(&mut self, port: u16) -> bool {
        RANGE.contains(&port) && self.taken.insert(port)
    }

    pub fn release(&mut self, port: u16) {
        self.taken.remove(&port);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distinct_and_reusable() {
        let mut p = Ports::default();
        let a = p.allocate(true).unwrap();
        let b = p.allocate(false).unwrap();
        assert_ne!(a, b);
        // A port something listens on is given only to an app that will not listen on it.
        let (port, _busy) = RANGE
            .clone()
            .find_map(|p| Some((p, TcpListener::bind((Ipv4Addr::LOCALHOST, p)).ok()?)))
            .unwrap();
        let at = |cursor| Ports {
            cursor,
            ..Ports::default()
        };
        assert_ne!(at(port - RANGE.start()).allocate(true), Some(port));
        assert_eq!(at(port - RANGE.start()).allocate(false), Some(port));
        assert!(RANGE.contains(&a) && RANGE.contains(&b));
        p.release(a);
        assert!(!p.taken.contains(&a));
    }
}
