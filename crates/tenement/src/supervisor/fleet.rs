//! The supervisor's side of a slum fleet (`crate::fleet`): the table, lease and secret kept
//! in the state store, and putting a fenced tenant to sleep.

use tenement_core::InstanceKey;
use tracing::warn;

use super::Supervisor;
use crate::fleet::Fleet;
use crate::{Error, Store};

/// The fleet as the state store kept it (a restart routes on with it).
pub(super) fn kept(store: &Store) -> Fleet {
    let fleet = Fleet::new(match store.fleet_value("table") {
        Ok(table) => table.and_then(|t| serde_json::from_str(&t).ok()),
        Err(e) => {
            warn!(error = %e, "cannot read the fleet's table from the state store");
            None
        }
    });
    if let Ok(Some(until)) = store.fleet_value("held_until") {
        fleet.hold_until(until.parse().unwrap_or(0));
    }
    fleet
}

impl Supervisor {
    /// This server's view of its slum fleet (empty outside one).
    pub fn fleet(&self) -> &crate::fleet::Fleet {
        &self.inner.fleet
    }

    /// Keeps the fleet's lease in the state store, and its table too when `table_changed`
    /// (a restart routes on with them; the table is not rewritten at every heartbeat).
    pub async fn keep_fleet(&self, table_changed: bool) -> Result<(), Error> {
        let table = table_changed
            .then(|| serde_json::to_string(&*self.fleet().table()).expect("a table serializes"));
        let until = self.fleet().held_until().to_string();
        let store = self.inner.store.clone();
        tokio::task::spawn_blocking(move || {
            if let Some(table) = table {
                store.set_fleet_value("table", &table)?;
            }
            store.set_fleet_value("held_until", &until)
        })
        .await
        .expect("store task")
    }

    /// The secret this server's last fleet join got (kept in the state store: a restart
    /// joins again with it, which is how slum knows it is the same server).
    pub async fn fleet_secret(&self) -> Option<String> {
        let store = self.inner.store.clone();
        tokio::task::spawn_blocking(move || store.fleet_value("secret").ok().flatten())
            .await
            .expect("store task")
    }

    pub async fn keep_fleet_secret(&self, secret: &str) -> Result<(), Error> {
        let (store, secret) = (self.inner.store.clone(), secret.to_owned());
        tokio::task::spawn_blocking(move || store.set_fleet_value("secret", &secret))
            .await
            .expect("store task")
    }

    /// Puts `key` to sleep now, as if it had been idle (a fenced fleet tenant): its process
    /// stops, its data stays, and a request wakes it again.
    pub async fn put_to_sleep(&self, key: &InstanceKey) -> Result<(), Error> {
        let handle = self.handle(key)?;
        let _ = handle
            .inputs
            .send(tenement_core::lifecycle::Input::Idle)
            .await;
        Ok(())
    }
}
