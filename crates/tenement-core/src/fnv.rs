//! FNV-1a, for maps looked up on every proxied request (the front door's connection pool,
//! the supervisor's registry). Their keys come from the configuration and the management API
//! (and `spawn_on_request`, capped by `max_instances`), never freely from clients: a client
//! can look keys up but not add colliding ones, so a DoS-resistant hash buys nothing there,
//! and SipHash cost ~500 instructions per request.

use std::hash::{BuildHasherDefault, Hasher};

/// A `HashMap` hasher: `HashMap<K, V, Fnv>`.
pub type Fnv = BuildHasherDefault<FnvHasher>;

#[derive(Default)]
pub struct FnvHasher(u64);

impl Hasher for FnvHasher {
    fn write(&mut self, bytes: &[u8]) {
        if self.0 == 0 {
            self.0 = 0xcbf2_9ce4_8422_2325;
        }
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}
