//! Desired state in SQLite (`{data_dir}/tenement.db`, WAL): which instances exist and their
//! weights. Written before a request is acknowledged, so a crash never loses it.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, params};
use tenement_core::InstanceKey;

use crate::Error;

#[derive(Clone)]
pub struct Store {
    path: PathBuf,
    conn: Arc<Mutex<Connection>>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS instances (
    service    TEXT NOT NULL,
    id         TEXT NOT NULL,
    weight     INTEGER NOT NULL DEFAULT 100,
    created_at INTEGER NOT NULL DEFAULT (unixepoch()),
    PRIMARY KEY (service, id)
);
CREATE TABLE IF NOT EXISTS users (
    service    TEXT NOT NULL,
    id         TEXT NOT NULL,
    uid        INTEGER NOT NULL UNIQUE,
    PRIMARY KEY (service, id)
);
CREATE TABLE IF NOT EXISTS tokens (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    hash       TEXT NOT NULL,
    created_at INTEGER NOT NULL DEFAULT (unixepoch()),
    tenant     TEXT
);
";

impl Store {
    pub fn open(path: &Path) -> Result<Store, Error> {
        let fail = |source| Error::Store {
            path: path.display().to_string(),
            source,
        };
        let conn = Connection::open(path).map_err(fail)?;
        // Token hashes and the tenants' names: not for other local users (its WAL and SHM files
        // take the same mode).
        let _ = std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600));
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(fail)?;
        // FULL: an acknowledged spawn survives power loss, not just a crash of ten serve.
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(fail)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(fail)?;
        conn.execute_batch(SCHEMA).map_err(fail)?;
        // Stores from before tenant tokens lack the column.
        let has_tenant: bool = conn
            .query_row(
                "SELECT count(*) FROM pragma_table_info('tokens') WHERE name = 'tenant'",
                [],
                |r| r.get::<_, i64>(0),
            )
            .map_err(fail)?
            > 0;
        if !has_tenant {
            conn.execute_batch("ALTER TABLE tokens ADD COLUMN tenant TEXT")
                .map_err(fail)?;
        }
        // `stopped`: an `[instances]` entry the user stopped, kept down across restarts.
        let has_stopped: bool = conn
            .query_row(
                "SELECT count(*) FROM pragma_table_info('instances') WHERE name = 'stopped'",
                [],
                |r| r.get::<_, i64>(0),
            )
            .map_err(fail)?
            > 0;
        if !has_stopped {
            conn.execute_batch(
                "ALTER TABLE instances ADD COLUMN stopped INTEGER NOT NULL DEFAULT 0",
            )
            .map_err(fail)?;
        }
        Ok(Store {
            path: path.to_path_buf(),
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    fn with<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T, Error> {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        f(&conn).map_err(|source| Error::Store {
            path: self.path.display().to_string(),
            source,
        })
    }

    pub fn remove(&self, key: &InstanceKey) -> Result<(), Error> {
        self.with(|c| {
            c.execute(
                "DELETE FROM instances WHERE service = ?1 AND id = ?2",
                params![key.service.as_str(), key.id.as_str()],
            )
            .map(drop)
        })
    }

    /// Whether `key` is recorded (running, asleep or kept down).
    pub fn contains(&self, key: &InstanceKey) -> Result<bool, Error> {
        self.with(|c| {
            c.query_row(
                "SELECT count(*) FROM instances WHERE service = ?1 AND id = ?2",
                params![key.service.as_str(), key.id.as_str()],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n > 0)
        })
    }

    /// Like [`Store::remove`] for an instance the configuration's `[instances]` lists: the row
    /// stays, marked stopped, so that the next `ten serve` does not start it again.
    pub fn keep_down(&self, key: &InstanceKey) -> Result<(), Error> {
        self.with(|c| {
            c.execute(
                "INSERT INTO instances (service, id, weight, stopped) VALUES (?1, ?2, 0, 1)
                 ON CONFLICT (service, id) DO UPDATE SET stopped = 1",
                params![key.service.as_str(), key.id.as_str()],
            )
            .map(drop)
        })
    }

    /// Instances kept down by [`Store::keep_down`].
    pub fn kept_down(&self) -> Result<Vec<InstanceKey>, Error> {
        let rows: Vec<String> = self.with(|c| {
            let mut stmt =
                c.prepare("SELECT service || ':' || id FROM instances WHERE stopped = 1")?;
            stmt.query_map([], |r| r.get(0))?.collect()
        })?;
        Ok(rows.iter().filter_map(|k| k.parse().ok()).collect())
    }

    /// Sets several weights in one transaction.
    pub fn set_weights(&self, weights: &[(InstanceKey, u8)]) -> Result<(), Error> {
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let fail = |source| Error::Store {
            path: self.path.display().to_string(),
            source,
        };
        let tx = conn.transaction().map_err(fail)?;
        for (key, weight) in weights {
            tx.execute(
                "UPDATE instances SET weight = ?3 WHERE service = ?1 AND id = ?2",
                params![key.service.as_str(), key.id.as_str(), weight],
            )
            .map_err(fail)?;
        }
        tx.commit().map_err(fail)
    }

    /// Inserts `key` with `weight`, or updates the weight if it exists.
    pub fn insert_with_weight(&self, key: &InstanceKey, weight: u8) -> Result<(), Error> {
        self.with(|c| {
            c.execute(
                "INSERT INTO instances (service, id, weight) VALUES (?1, ?2, ?3)
                 ON CONFLICT (service, id) DO UPDATE SET weight = excluded.weight, stopped = 0",
                params![key.service.as_str(), key.id.as_str(), weight],
            )
            .map(drop)
        })
    }

    /// Records the uid given to `key`'s app (kept while its data is: see [`crate::users`]).
    pub fn set_uid(&self, key: &InstanceKey, uid: u32) -> Result<(), Error> {
        self.with(|c| {
            c.execute(
                "INSERT INTO users (service, id, uid) VALUES (?1, ?2, ?3)
                 ON CONFLICT (service, id) DO UPDATE SET uid = excluded.uid",
                params![key.service.as_str(), key.id.as_str(), uid],
            )
            .map(drop)
        })
    }

    pub fn remove_uid(&self, key: &InstanceKey) -> Result<(), Error> {
        self.with(|c| {
            c.execute(
                "DELETE FROM users WHERE service = ?1 AND id = ?2",
                params![key.service.as_str(), key.id.as_str()],
            )
            .map(drop)
        })
    }

    /// Every recorded uid.
    pub fn uids(&self) -> Result<Vec<(InstanceKey, u32)>, Error> {
        let rows: Vec<(String, u32)> = self.with(|c| {
            let mut stmt = c.prepare("SELECT service || ':' || id, uid FROM users")?;
            stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect()
        })?;
        Ok(rows
            .into_iter()
            .filter_map(|(k, uid)| Some((k.parse().ok()?, uid)))
            .collect())
    }

    /// Stores a token hash (and the tenant it is limited to); returns the token's id.
    pub fn insert_token(&self, hash: &str, tenant: Option<&str>) -> Result<i64, Error> {
        self.with(|c| {
            c.execute(
                "INSERT INTO tokens (hash, tenant) VALUES (?1, ?2)",
                params![hash, tenant],
            )?;
            Ok(c.last_insert_rowid())
        })
    }

    /// Every token's id, hash and tenant (read once, when the server starts).
    pub fn token_hashes(&self) -> Result<Vec<(i64, String, Option<String>)>, Error> {
        self.with(|c| {
            let mut stmt = c.prepare("SELECT id, hash, tenant FROM tokens")?;
            stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect()
        })
    }

    /// Replaces token `id`'s hash (migrating it to the current scheme).
    pub fn set_token_hash(&self, id: i64, hash: &str) -> Result<(), Error> {
        self.with(|c| {
            c.execute(
                "UPDATE tokens SET hash = ?2 WHERE id = ?1",
                params![id, hash],
            )
            .map(drop)
        })
    }

    /// Every token: (id, tenant, created_at in seconds since the epoch).
    pub fn tokens(&self) -> Result<Vec<(i64, Option<String>, i64)>, Error> {
        self.with(|c| {
            let mut stmt = c.prepare("SELECT id, tenant, created_at FROM tokens ORDER BY id")?;
            stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect()
        })
    }

    /// Deletes token `id`; whether it existed.
    pub fn delete_token(&self, id: i64) -> Result<bool, Error> {
        self.with(|c| {
            c.execute("DELETE FROM tokens WHERE id = ?1", params![id])
                .map(|n| n > 0)
        })
    }

    /// Every instance that should exist, with its weight. Rows that are not valid ids (the
    /// database edited by hand) are skipped with a warning rather than trusted as paths.
    pub fn list(&self) -> Result<Vec<(InstanceKey, u8)>, Error> {
        let rows: Vec<(String, String, i64)> = self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT service, id, weight FROM instances WHERE stopped = 0
                 ORDER BY created_at, service, id",
            )?;
            stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect()
        })?;
        Ok(rows
            .into_iter()
            .filter_map(|(service, id, weight)| {
                match format!("{service}:{id}").parse::<InstanceKey>() {
                    Ok(key) => Some((key, weight.clamp(0, 100) as u8)),
                    Err(e) => {
                        tracing::warn!(error = %e, "skipping invalid instance in state store");
                        None
                    }
                }
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let a: InstanceKey = "api:prod".parse().unwrap();
        let b: InstanceKey = "api:staging".parse().unwrap();
        {
            let s = Store::open(&path).unwrap();
            s.insert_with_weight(&a, 100).unwrap();
            s.insert_with_weight(&b, 100).unwrap();
            s.insert_with_weight(&a, 100).unwrap();
            s.set_weights(&[(b.clone(), 30), ("x:y".parse().unwrap(), 1)])
                .unwrap();
        }
        let s = Store::open(&path).unwrap();
        assert_eq!(s.list().unwrap(), vec![(a.clone(), 100), (b.clone(), 30)]);
        s.remove(&a).unwrap();
        assert_eq!(s.list().unwrap(), vec![(b.clone(), 30)]);
        // Kept down: listed as such, not as wanted, until spawned again.
        s.keep_down(&b).unwrap();
        assert_eq!(
            (s.list().unwrap(), s.kept_down().unwrap()),
            (vec![], vec![b.clone()])
        );
        s.insert_with_weight(&b, 100).unwrap();
        assert_eq!(
            (s.list().unwrap(), s.kept_down().unwrap()),
            (vec![(b, 100)], vec![])
        );
        s.with(|c| c.execute("INSERT INTO instances (service, id) VALUES ('..', 'x')", []))
            .unwrap();
        assert_eq!(s.list().unwrap().len(), 1, "invalid rows are skipped");
    }
}
