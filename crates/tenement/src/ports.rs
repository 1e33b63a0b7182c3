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
    /// A port no other instance has and that nothing on this host listens on right now.
    pub fn allocate(&mut self) -> Option<u16> {
        let span = RANGE.end() - RANGE.start() + 1;
        for step in 0..span {
            let port = RANGE.start() + (self.cursor + step) % span;
            if self.taken.contains(&port) || TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_err()
            {
                continue;
            }
            self.taken.insert(port);
            self.cursor = (port - RANGE.start() + 1) % span;
            return Some(port);
        }
        None
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
        let a = p.allocate().unwrap();
        let b = p.allocate().unwrap();
        assert_ne!(a, b);
        assert!(RANGE.contains(&a) && RANGE.contains(&b));
        p.release(a);
        assert!(!p.taken.contains(&a));
    }
}
