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
    reserve: Arc<crate::reserve::Reserve>,
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
CREATE TABLE IF NOT EXISTS fleet (
    k          TEXT PRIMARY KEY,
    v          TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS domains (
    name       TEXT PRIMARY KEY,
    instance   TEXT NOT NULL,
    created_at INTEGER NOT NULL DEFAULT (unixepoch())
);
";

impl Store {
    /// Opens the state store, refusing one that is damaged ([`Damaged`]): a server that
    /// started with no instances because its records could not be read would be a silent
    /// outage.
    pub fn open_checked(path: &Path) -> Result<Store, OpenError> {
        let store = Self::open(path).map_err(|e| match e {
            Error::Store { source, .. } if crate::logstore::damaged(&source) => {
                OpenError::Damaged(Damaged::of(path, source.to_string()))
            }
            e => OpenError::Other(e),
        })?;
        let check: String = store
            .with(|c| c.query_row("PRAGMA quick_check", [], |r| r.get(0)))
            .map_err(|e| OpenError::Damaged(Damaged::of(path, e.to_string())))?;
        if check != "ok" {
            return Err(OpenError::Damaged(Damaged::of(path, check)));
        }
        Ok(store)
    }

    /// Takes the disk reserve back if it was given away and there is room again (called
    /// every few seconds: between a full disk and the next write there may be none).
    pub fn keep_reserve(&self) {
        self.reserve.take();
    }

    /// Writes a consistent copy of the store to its backup file ([`backup_path`]), atomically
    /// (a new file renamed over the old one).
    pub fn back_up(&self) -> Result<(), Error> {
        let to = backup_path(&self.path);
        let tmp = to.with_extension("bak.tmp");
        let _ = std::fs::remove_file(&tmp);
        // Not through `with`: a backup is not worth the reserve.
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        conn.execute("VACUUM INTO ?1", params![tmp.to_string_lossy()])
            .map_err(|source| Error::Store {
                path: tmp.display().to_string(),
                source,
            })?;
        drop(conn);
        let _ = std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o600));
        std::fs::rename(&tmp, &to).map_err(|e| Error::Store {
            path: to.display().to_string(),
            source: rusqlite::Error::ToSqlConversionFailure(Box::new(e)),
        })
    }

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
        let reserve = path.with_file_name(".reserve");
        Ok(Store {
            path: path.to_path_buf(),
            conn: Arc::new(Mutex::new(conn)),
            reserve: Arc::new(crate::reserve::Reserve::new(reserve)),
        })
    }

    /// Runs `f` on the connection; a write that fails for lack of space is tried once more
    /// with the reserve given back ([`crate::reserve`]).
    fn with<T>(&self, f: impl Fn(&Connection) -> rusqlite::Result<T>) -> Result<T, Error> {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let full = |r: &rusqlite::Result<T>| matches!(r, Err(e) if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull));
        let mut result = f(&conn);
        if full(&result) && self.reserve.release() {
            result = f(&conn);
        }
        if result.is_ok() {
            self.reserve.take();
        }
        result.map_err(|source| Error::Store {
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
        self.with(|c| {
            let tx = c.unchecked_transaction()?;
            for (key, weight) in weights {
                tx.execute(
                    "UPDATE instances SET weight = ?3 WHERE service = ?1 AND id = ?2",
                    params![key.service.as_str(), key.id.as_str(), weight],
                )?;
            }
            tx.commit()
        })
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

    /// Routes custom domain `name` to `instance`; false if `name` is taken already.
    pub fn insert_domain(&self, name: &str, instance: &InstanceKey) -> Result<bool, Error> {
        self.with(|c| {
            c.execute(
                "INSERT OR IGNORE INTO domains (name, instance) VALUES (?1, ?2)",
                params![name, instance.to_string()],
            )
            .map(|n| n > 0)
        })
    }

    /// Removes custom domain `name`; whether it existed.
    pub fn delete_domain(&self, name: &str) -> Result<bool, Error> {
        self.with(|c| {
            c.execute("DELETE FROM domains WHERE name = ?1", params![name])
                .map(|n| n > 0)
        })
    }

    /// A value of the fleet's (`ten serve --slum`): its table, its lease.
    pub fn fleet_value(&self, k: &str) -> Result<Option<String>, Error> {
        use rusqlite::OptionalExtension;
        self.with(|c| {
            c.query_row("SELECT v FROM fleet WHERE k = ?1", [k], |r| r.get(0))
                .optional()
        })
    }

    pub fn set_fleet_value(&self, k: &str, v: &str) -> Result<(), Error> {
        self.with(|c| {
            c.execute(
                "INSERT INTO fleet (k, v) VALUES (?1, ?2) ON CONFLICT(k) DO UPDATE SET v = ?2",
                params![k, v],
            )
            .map(drop)
        })
    }

    /// Every custom domain and its instance (rows that do not parse are skipped).
    pub fn domains(&self) -> Result<Vec<(String, InstanceKey)>, Error> {
        let rows: Vec<(String, String)> = self.with(|c| {
            let mut stmt = c.prepare("SELECT name, instance FROM domains ORDER BY name")?;
            stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect()
        })?;
        Ok(rows
            .into_iter()
            .filter_map(|(name, key)| Some((name, key.parse().ok()?)))
            .collect())
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

/// `{data_dir}/tenement.db.bak`: the last good copy of the state store.
pub fn backup_path(store: &Path) -> PathBuf {
    store.with_extension("db.bak")
}

/// Why the state store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Damaged(Damaged),
    #[error(transparent)]
    Other(Error),
}

/// A damaged state store, with the way back.
#[derive(Debug, thiserror::Error)]
#[error("{}", self.message())]
pub struct Damaged {
    pub path: PathBuf,
    pub why: String,
    /// The backup and when it was written, if there is one.
    pub backup: Option<(PathBuf, std::time::SystemTime)>,
}

impl Damaged {
    fn of(path: &Path, why: String) -> Self {
        let bak = backup_path(path);
        let backup = std::fs::metadata(&bak)
            .and_then(|m| m.modified())
            .ok()
            .map(|t| (bak, t));
        Self {
            path: path.to_path_buf(),
            why,
            backup,
        }
    }

    fn message(&self) -> String {
        let path = self.path.display();
        let recover = match &self.backup {
            Some((bak, at)) => format!(
                "its last good copy is {} (written {}): `ten serve --restore-state` puts it back (the damaged file is kept as {path}.corrupt-SECONDS); or move {path} aside to start with no instances",
                bak.display(),
                humantime::format_rfc3339_seconds(*at)
            ),
            None => format!(
                "there is no backup of it: move {path} aside to start with no instances (they are then spawned again by hand, or from [instances])"
            ),
        };
        format!(
            "state store {path} is damaged ({}); ten serve will not start with its instances unknown: {recover}",
            self.why
        )
    }
}

/// Replaces the state store at `path` by its backup, keeping the damaged file (and its WAL)
/// as `path.corrupt-SECONDS`; returns that name.
pub fn restore_backup(path: &Path) -> std::io::Result<PathBuf> {
    let bak = backup_path(path);
    if !bak.exists() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("no backup at {}", bak.display()),
        ));
    }
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let aside = PathBuf::from(format!("{}.corrupt-{secs}", path.display()));
    for suffix in ["", "-wal", "-shm"] {
        let from = PathBuf::from(format!("{}{suffix}", path.display()));
        if from.exists() {
            std::fs::rename(&from, format!("{}{suffix}", aside.display()))?;
        }
    }
    std::fs::copy(&bak, path)?;
    Ok(aside)
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

    #[test]
    fn a_damaged_store_is_refused_and_its_backup_restored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tenement.db");
        let a: InstanceKey = "api:prod".parse().unwrap();
        {
            let s = Store::open_checked(&path).unwrap();
            s.insert_with_weight(&a, 100).unwrap();
            s.back_up().unwrap();
        }
        // Scrambled pages after the header.
        let mut bytes = std::fs::read(&path).unwrap();
        let n = bytes.len();
        bytes[4096.min(n / 2)..].iter_mut().for_each(|b| *b ^= 0x5a);
        std::fs::write(&path, bytes).unwrap();
        for suffix in ["-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
        let e = Store::open_checked(&path).err().expect("refused");
        let msg = e.to_string();
        assert!(
            msg.contains("is damaged") && msg.contains("--restore-state"),
            "{msg}"
        );
        let aside = restore_backup(&path).unwrap();
        assert!(aside.exists());
        let s = Store::open_checked(&path).unwrap();
        assert_eq!(s.list().unwrap(), vec![(a, 100)]);
    }
}
