//! [`SlumDb`]: slum's state in one SQLite file (WAL, `synchronous = FULL`, foreign keys on).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OptionalExtension, params};

use crate::{Capacity, Error, Server, ServerState, Tenant};

mod fleet;
mod store;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS servers (
    id              TEXT PRIMARY KEY,
    url             TEXT NOT NULL,
    state           TEXT NOT NULL DEFAULT 'new',
    memory_mb       INTEGER NOT NULL DEFAULT 0,
    free_memory_mb  INTEGER NOT NULL DEFAULT 0,
    cpus            INTEGER NOT NULL DEFAULT 0,
    instances       INTEGER NOT NULL DEFAULT 0,
    last_seen_ms    INTEGER NOT NULL DEFAULT 0,
    -- What a joined server proves itself with on each heartbeat (given at join).
    secret          TEXT,
    domain          TEXT NOT NULL DEFAULT '',
    up_since_ms     INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS tenants (
    domain          TEXT PRIMARY KEY,
    server_id       TEXT NOT NULL REFERENCES servers(id),
    process         TEXT NOT NULL,
    instance_id     TEXT NOT NULL,
    created_ms      INTEGER NOT NULL,
    epoch           INTEGER NOT NULL DEFAULT 1,
    status          TEXT NOT NULL DEFAULT 'pending',
    error           TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS tenants_by_server ON tenants(server_id);
-- One server runs one instance of a name: two tenants cannot share it.
CREATE UNIQUE INDEX IF NOT EXISTS tenants_instance ON tenants(server_id, process, instance_id);
-- `version`: bumped by every change of where tenants are (servers follow it).
CREATE TABLE IF NOT EXISTS meta (
    k               TEXT PRIMARY KEY,
    v               INTEGER NOT NULL
);
INSERT OR IGNORE INTO meta (k, v) VALUES ('version', 1);
";

/// Columns added since a store was first made: (table, column, declaration).
const ADDED: [(&str, &str, &str); 5] = [
    ("servers", "domain", "TEXT NOT NULL DEFAULT ''"),
    ("servers", "up_since_ms", "INTEGER NOT NULL DEFAULT 0"),
    ("tenants", "epoch", "INTEGER NOT NULL DEFAULT 1"),
    ("tenants", "status", "TEXT NOT NULL DEFAULT 'pending'"),
    ("tenants", "error", "TEXT NOT NULL DEFAULT ''"),
];

/// Brings a store made by an earlier slum up to date (columns are only ever added).
fn migrate(c: &Connection) -> rusqlite::Result<()> {
    for (table, column, decl) in ADDED {
        let has: bool = c.query_row(
            &format!("SELECT count(*) FROM pragma_table_info('{table}') WHERE name = ?1"),
            [column],
            |r| r.get::<_, i64>(0).map(|n| n > 0),
        )?;
        if !has {
            c.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {decl}"))?;
        }
    }
    Ok(())
}

/// The embedded store. Cheap to clone; every call runs on tokio's blocking pool.
#[derive(Clone)]
pub struct SlumDb {
    path: PathBuf,
    conn: Arc<Mutex<Connection>>,
}

impl SlumDb {
    /// Opens (creating if needed) the store at `path`.
    pub async fn init(path: impl AsRef<Path>) -> Result<Self, Error> {
        let path = path.as_ref().to_path_buf();
        let opened = path.clone();
        let conn = tokio::task::spawn_blocking(move || -> rusqlite::Result<Connection> {
            // Root's alone: it holds what servers prove themselves with. SQLite makes the
            // -wal and -shm files with the database's mode.
            {
                use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
                let _ = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .mode(0o600)
                    .open(&opened);
                for suffix in ["", "-wal", "-shm"] {
                    let f = format!("{}{suffix}", opened.display());
                    let _ = std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600));
                }
            }
            let conn = Connection::open(&opened)?;
            conn.execute_batch(
                "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON; \
                 PRAGMA busy_timeout = 5000;",
            )?;
            // The tables first (an old store lacks columns the indexes want).
            let (tables, rest) = SCHEMA.split_at(SCHEMA.find("CREATE INDEX").expect("schema"));
            conn.execute_batch(tables)?;
            migrate(&conn)?;
            conn.execute_batch(rest)?;
            Ok(conn)
        })
        .await
        .expect("the store's open task")
        .map_err(|source| Error::Store {
            path: path.display().to_string(),
            source,
        })?;
        Ok(Self {
            path,
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// Runs `f` with the connection on the blocking pool.
    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, Error> + Send + 'static,
    ) -> Result<T, Error> {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = conn.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut conn)
        })
        .await
        .expect("a store task")
    }

    fn fail(&self) -> impl Fn(rusqlite::Error) -> Error + Send + 'static {
        let path = self.path.display().to_string();
        move |source| Error::Store {
            path: path.clone(),
            source,
        }
    }
}

fn server_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Server> {
    Ok(Server {
        id: r.get(0)?,
        url: r.get(1)?,
        state: ServerState::parse(&r.get::<_, String>(2)?).unwrap_or_default(),
        capacity: Capacity {
            memory_mb: r.get(3)?,
            free_memory_mb: r.get(4)?,
            cpus: r.get(5)?,
            instances: r.get(6)?,
        },
        last_seen_ms: r.get(7)?,
        domain: r.get(8)?,
        up_since_ms: r.get(9)?,
    })
}

const SERVER_COLUMNS: &str =
    "id, url, state, memory_mb, free_memory_mb, cpus, instances, last_seen_ms, domain, up_since_ms";

fn tenant_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Tenant> {
    Ok(Tenant {
        domain: r.get(0)?,
        server_id: r.get(1)?,
        process: r.get(2)?,
        instance_id: r.get(3)?,
        created_ms: r.get(4)?,
        epoch: r.get(5)?,
        status: r.get(6)?,
        error: r.get(7)?,
    })
}

/// The tenant `domain`, if there is one.
fn tenant_of(c: &Connection, domain: &str) -> rusqlite::Result<Option<Tenant>> {
    c.query_row(
        &format!("SELECT {TENANT_COLUMNS} FROM tenants WHERE domain = ?1"),
        [domain],
        tenant_row,
    )
    .optional()
}

/// Every tenant, by domain.
fn all_tenants(c: &Connection) -> rusqlite::Result<Vec<Tenant>> {
    let mut st = c.prepare(&format!(
        "SELECT {TENANT_COLUMNS} FROM tenants ORDER BY domain"
    ))?;
    let rows = st.query_map([], tenant_row)?;
    rows.collect()
}

/// Every server, by id.
fn all_servers(c: &Connection) -> rusqlite::Result<Vec<Server>> {
    let mut st = c.prepare(&format!("SELECT {SERVER_COLUMNS} FROM servers ORDER BY id"))?;
    let rows = st.query_map([], server_row)?;
    rows.collect()
}

const TENANT_COLUMNS: &str =
    "domain, server_id, process, instance_id, created_ms, epoch, status, error";

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A name slum and tenement accept: `[a-z0-9]` first, then `[a-z0-9_-]`, at most 63.
fn check_name(field: &'static str, value: &str) -> Result<(), Error> {
    match crate::valid_name(value) {
        true => Ok(()),
        false => Err(Error::Invalid {
            field,
            why: format!("{value:?} is not a name (lowercase letters, digits, `-`, `_`)"),
        }),
    }
}

/// A host name: dot-separated labels of letters, digits and `-`, lowercase.
fn check_domain(domain: &str) -> Result<(), Error> {
    // The last label is not all digits: an address is not a domain (and a tenant named
    // `10.0.0.2` would be answered where that server's own API is).
    let tld = domain.rsplit('.').next().unwrap_or_default();
    let ok = domain.len() <= 253
        && domain.contains('.')
        && !tld.bytes().all(|b| b.is_ascii_digit())
        && domain.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        });
    match ok {
        true => Ok(()),
        false => Err(Error::Invalid {
            field: "domain",
            why: format!("{domain:?} is not a lowercase host name with a dot"),
        }),
    }
}

impl SlumDb {
    pub async fn add_server(&self, server: &Server) -> Result<(), Error> {
        check_name("server id", &server.id)?;
        check_url(&server.url)?;
        let (s, fail) = (server.clone(), self.fail());
        self.with(move |c| {
            let added = c
                .execute(
                    "INSERT INTO servers (id, url, state, memory_mb, free_memory_mb, cpus, instances, last_seen_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT(id) DO NOTHING",
                    params![
                        s.id,
                        s.url,
                        s.state.name(),
                        s.capacity.memory_mb,
                        s.capacity.free_memory_mb,
                        s.capacity.cpus,
                        s.capacity.instances,
                        s.last_seen_ms
                    ],
                )
                .map_err(&fail)?;
            match added {
                0 => Err(Error::ServerExists(s.id)),
                _ => Ok(()),
            }
        })
        .await
    }

    pub async fn server(&self, id: &str) -> Result<Server, Error> {
        let (id, fail) = (id.to_owned(), self.fail());
        self.with(move |c| {
            c.query_row(
                &format!("SELECT {SERVER_COLUMNS} FROM servers WHERE id = ?1"),
                [&id],
                server_row,
            )
            .optional()
            .map_err(fail)?
            .ok_or(Error::UnknownServer(id))
        })
        .await
    }

    pub async fn servers(&self) -> Result<Vec<Server>, Error> {
        let fail = self.fail();
        self.with(move |c| all_servers(c).map_err(&fail)).await
    }

    pub async fn remove_server(&self, id: &str) -> Result<(), Error> {
        let (id, fail) = (id.to_owned(), self.fail());
        self.with(move |c| {
            let tx = c.transaction().map_err(&fail)?;
            let tenants: usize = tx
                .query_row(
                    "SELECT count(*) FROM tenants WHERE server_id = ?1",
                    [&id],
                    |r| r.get(0),
                )
                .map_err(&fail)?;
            if tenants > 0 {
                return Err(Error::ServerInUse(id, tenants));
            }
            if tx
                .execute("DELETE FROM servers WHERE id = ?1", [&id])
                .map_err(&fail)?
                == 0
            {
                return Err(Error::UnknownServer(id));
            }
            tx.commit().map_err(&fail)
        })
        .await
    }

    pub async fn add_tenant(&self, tenant: &Tenant) -> Result<(), Error> {
        check_tenant(tenant)?;
        let (t, fail) = (tenant.clone(), self.fail());
        self.with(move |c| {
            let tx = c.transaction().map_err(&fail)?;
            let server: Option<String> = tx
                .query_row(
                    "SELECT id FROM servers WHERE id = ?1",
                    [&t.server_id],
                    |r| r.get(0),
                )
                .optional()
                .map_err(&fail)?;
            if server.is_none() {
                return Err(Error::UnknownServer(t.server_id));
            }
            free_domain(&tx, &t.domain).map_err(&fail)??;
            taken_instance(&tx, &t.server_id, &t.process, &t.instance_id).map_err(&fail)??;
            tx.execute(
                "INSERT INTO tenants (domain, server_id, process, instance_id, created_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![t.domain, t.server_id, t.process, t.instance_id, now_ms()],
            )
            .map_err(&fail)?;
            bump(&tx).map_err(&fail)?;
            tx.commit().map_err(&fail)
        })
        .await
    }

    pub async fn tenant(&self, domain: &str) -> Result<Tenant, Error> {
        let (domain, fail) = (domain.to_owned(), self.fail());
        self.with(move |c| {
            tenant_of(c, &domain)
                .map_err(fail)?
                .ok_or(Error::UnknownTenant(domain))
        })
        .await
    }

    pub async fn tenants(&self) -> Result<Vec<Tenant>, Error> {
        let fail = self.fail();
        self.with(move |c| all_tenants(c).map_err(&fail)).await
    }

    pub async fn move_tenant(&self, domain: &str, server_id: &str) -> Result<Tenant, Error> {
        let (domain, to, fail) = (domain.to_owned(), server_id.to_owned(), self.fail());
        self.with(move |c| {
            let tx = c.transaction().map_err(&fail)?;
            let exists: Option<String> = tx
                .query_row("SELECT id FROM servers WHERE id = ?1", [&to], |r| r.get(0))
                .optional()
                .map_err(&fail)?;
            if exists.is_none() {
                return Err(Error::UnknownServer(to));
            }
            let (process, instance): (String, String) = tx
                .query_row(
                    "SELECT process, instance_id FROM tenants WHERE domain = ?1",
                    [&domain],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()
                .map_err(&fail)?
                .ok_or_else(|| Error::UnknownTenant(domain.clone()))?;
            let others = tx
                .query_row(
                    "SELECT count(*) FROM tenants WHERE server_id = ?1 AND process = ?2
                       AND instance_id = ?3 AND domain != ?4",
                    params![to, process, instance, domain],
                    |r| r.get::<_, i64>(0),
                )
                .map_err(&fail)?;
            if others > 0 {
                return Err(instance_taken(&to, &process, &instance));
            }
            tx.execute(
                "UPDATE tenants SET server_id = ?2, epoch = epoch + 1, status = 'pending', error = ''
                 WHERE domain = ?1",
                params![domain, to],
            )
            .map_err(&fail)?;
            bump(&tx).map_err(&fail)?;
            let t = tenant_of(&tx, &domain).map_err(&fail)?.expect("just moved");
            tx.commit().map_err(&fail)?;
            Ok(t)
        })
        .await
    }

    pub async fn remove_tenant(&self, domain: &str) -> Result<Tenant, Error> {
        let (domain, fail) = (domain.to_owned(), self.fail());
        self.with(move |c| {
            let tx = c.transaction().map_err(&fail)?;
            let t = tenant_of(&tx, &domain)
                .map_err(&fail)?
                .ok_or_else(|| Error::UnknownTenant(domain.clone()))?;
            tx.execute("DELETE FROM tenants WHERE domain = ?1", [&domain])
                .map_err(&fail)?;
            bump(&tx).map_err(&fail)?;
            tx.commit().map_err(&fail)?;
            Ok(t)
        })
        .await
    }
}

pub(crate) fn random_hex() -> Result<String, Error> {
    let mut bytes = [0u8; 24];
    getrandom::fill(&mut bytes).map_err(|e| Error::Invalid {
        field: "secret",
        why: format!("no randomness: {e}"),
    })?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// A tenant's names, checked.
fn check_tenant(t: &Tenant) -> Result<(), Error> {
    check_domain(&t.domain)?;
    check_name("process", &t.process)?;
    check_name("instance id", &t.instance_id)
}

/// `Err(DomainTaken)` if some tenant has `domain` already, `Err(Invalid)` if it is (or is
/// under) a server's routing domain: that name is the server's own (its instances' names:
/// a tenant there would take another tenant's traffic, or make a hop hop again).
fn free_domain(
    tx: &rusqlite::Transaction<'_>,
    domain: &str,
) -> rusqlite::Result<Result<(), Error>> {
    let covering: Option<String> = tx
        .query_row(
            "SELECT id FROM servers WHERE domain != '' AND (?1 = domain OR ?1 LIKE '%.' || domain)",
            [domain],
            |r| r.get(0),
        )
        .optional()?;
    if let Some(server) = covering {
        return Ok(Err(Error::Invalid {
            field: "domain",
            why: format!(
                "{domain:?} is under the routing domain of server {server:?} (its instances' own names)"
            ),
        }));
    }
    let owner: Option<String> = tx
        .query_row(
            "SELECT server_id FROM tenants WHERE domain = ?1",
            [domain],
            |r| r.get(0),
        )
        .optional()?;
    Ok(match owner {
        Some(owner) => Err(Error::DomainTaken(domain.to_owned(), owner)),
        None => Ok(()),
    })
}

/// Bumps the version servers follow (in the caller's transaction).
fn bump(tx: &rusqlite::Transaction<'_>) -> rusqlite::Result<()> {
    tx.execute("UPDATE meta SET v = v + 1 WHERE k = 'version'", [])
        .map(drop)
}

fn instance_taken(server: &str, process: &str, instance: &str) -> Error {
    Error::InstanceTaken(server.to_owned(), format!("{process}:{instance}"))
}

/// `Err` if `server` has a tenant on `process:instance` already.
fn taken_instance(
    tx: &rusqlite::Transaction<'_>,
    server: &str,
    process: &str,
    instance: &str,
) -> rusqlite::Result<Result<(), Error>> {
    let n: i64 = tx.query_row(
        "SELECT count(*) FROM tenants WHERE server_id = ?1 AND process = ?2 AND instance_id = ?3",
        params![server, process, instance],
        |r| r.get(0),
    )?;
    Ok(match n {
        0 => Ok(()),
        _ => Err(instance_taken(server, process, instance)),
    })
}

/// `http://HOST[:PORT]` (or https): a server's front door, nothing else (no user, no path).
fn check_url(url: &str) -> Result<(), Error> {
    let authority = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .map(|a| a.strip_suffix('/').unwrap_or(a));
    match authority {
        Some(a) if !a.is_empty() && !a.contains(['/', '@', '?', '#', ' ']) => Ok(()),
        _ => Err(Error::Invalid {
            field: "url",
            why: format!("{url:?} is not http://HOST[:PORT] (or https://)"),
        }),
    }
}

/// The address a server URL names, if it names one (`http://10.0.0.2:8080`).
pub(crate) fn url_ip(url: &str) -> Option<std::net::IpAddr> {
    let a = url.split("://").nth(1)?.trim_end_matches('/');
    let host = match a.strip_prefix('[') {
        Some(v6) => v6.split(']').next()?,
        None => a.rsplit_once(':').map_or(a, |(h, _)| h),
    };
    host.parse().ok()
}
