//! Persistent, searchable logs: every captured line goes to SQLite (`{data_dir}/logs.db`, WAL)
//! with an FTS5 index, written in batches by one background thread.
//!
//! A chatty app can never block or kill itself or tenement: capture hands lines over without
//! waiting; pending lines are queued per instance, each queue bounded, and when one is full its
//! *oldest* unwritten line is dropped (and counted). One instance flooding therefore cannot
//! push out another's lines. The writer commits at least every [`FLUSH_EVERY`], so a crash of
//! `ten serve` loses at most that much. Retention deletes by age and total size.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use rusqlite::{Connection, params, params_from_iter};

use tenement_core::InstanceKey;

use crate::Error;
use crate::logs::{LogLine, Stream};

/// Longest time a captured line waits before it is committed.
pub const FLUSH_EVERY: Duration = Duration::from_millis(250);
/// Unwritten lines kept per instance before the oldest are dropped...
const PENDING_PER_INSTANCE: usize = 50_000;
/// ...and unwritten bytes: a flood of 16 KB lines must not grow the server by gigabytes.
const PENDING_BYTES_PER_INSTANCE: usize = 4 << 20;
/// Most lines (and bytes) of one instance in one write: a flooding instance's backlog is
/// written a slice at a time, between everyone else's lines, instead of in one long
/// transaction.
const BATCH_PER_INSTANCE: usize = 20_000;
const BATCH_BYTES_PER_INSTANCE: usize = 1 << 20;
const RETENTION_EVERY: Duration = Duration::from_secs(10);

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS logs (
    id       INTEGER PRIMARY KEY,
    ts_ms    INTEGER NOT NULL,
    service  TEXT NOT NULL,
    instance TEXT NOT NULL,
    stream   TEXT NOT NULL,
    text     TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS logs_instance ON logs (instance, id);
CREATE INDEX IF NOT EXISTS logs_service ON logs (service, id);
CREATE INDEX IF NOT EXISTS logs_ts ON logs (ts_ms);
CREATE VIRTUAL TABLE IF NOT EXISTS logs_fts USING fts5 (text, content = '', contentless_delete = 1);
";

/// How long logs are kept.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    pub max_age: Duration,
    pub max_bytes: u64,
}

/// A query: every field optional; newest first.
#[derive(Debug, Clone, Default)]
pub struct LogQuery {
    pub instance: Option<InstanceKey>,
    pub service: Option<String>,
    /// Only these instance ids (a tenant's view); `None` = all.
    pub ids: Option<Vec<String>>,
    pub stream: Option<Stream>,
    pub since_ms: Option<u64>,
    pub until_ms: Option<u64>,
    /// Full-text search, as a phrase.
    pub search: Option<String>,
    pub limit: usize,
}

impl LogQuery {
    /// Whether lines of instance `k` can be in this query's answer.
    pub fn covers(&self, k: &InstanceKey) -> bool {
        self.instance.as_ref().is_none_or(|i| i == k)
            && self
                .service
                .as_deref()
                .is_none_or(|s| s == k.service.as_str())
            && self
                .ids
                .as_ref()
                .is_none_or(|ids| ids.iter().any(|i| i == k.id.as_str()))
    }
}

pub use tenement_api::StoredLine;

struct Pending {
    queues: HashMap<Arc<InstanceKey>, Queue>,
    total: usize,
}

impl Pending {
    /// Queues a line; returns how many of its instance's oldest lines went to make room.
    fn add(&mut self, line: Arc<LogLine>) -> u64 {
        let queue = self.queues.entry(line.instance.clone()).or_default();
        queue.bytes += line.text.len();
        queue.lines.push_back(line);
        queue.pushed += 1;
        self.total += 1;
        let mut dropped = 0;
        while queue.lines.len() > PENDING_PER_INSTANCE
            || (queue.bytes > PENDING_BYTES_PER_INSTANCE && queue.lines.len() > 1)
        {
            if let Some(old) = queue.lines.pop_front() {
                queue.bytes -= old.text.len();
            }
            queue.done += 1;
            self.total -= 1;
            dropped += 1;
        }
        dropped
    }
}

/// One instance's unwritten lines, and counts of its lines ever queued and done with
/// (written, dropped, or lost to a failed write), for [`LogStore::flush`].
#[derive(Default)]
struct Queue {
    lines: VecDeque<Arc<LogLine>>,
    /// Bytes of text in `lines`.
    bytes: usize,
    pushed: u64,
    done: u64,
}

struct Shared {
    pending: Mutex<Pending>,
    wake: Condvar,
    dropped: AtomicU64,
    written: AtomicU64,
    closed: AtomicBool,
}

#[derive(Clone)]
pub struct LogStore {
    path: PathBuf,
    shared: Arc<Shared>,
    reader: Arc<Mutex<Connection>>,
    writer: Arc<Mutex<Option<std::thread::JoinHandle<()>>>>,
}

/// Largest log store checked page by page at start (`PRAGMA quick_check` reads all of it).
const CHECK_AT_START_MAX: u64 = 256 << 20;

/// What `PRAGMA quick_check` finds wrong with the database at `path`, if it is small enough to
/// check at start ([`CHECK_AT_START_MAX`]) and not sound. A bigger one is found out by its
/// first failed write (logged as an error).
fn damaged_pages(path: &Path) -> Option<String> {
    let size = std::fs::metadata(path).ok()?.len();
    if size > CHECK_AT_START_MAX {
        return None;
    }
    let conn = Connection::open(path).ok()?;
    match conn.query_row("PRAGMA quick_check", [], |r| r.get::<_, String>(0)) {
        Ok(ok) if ok == "ok" => None,
        Ok(problem) => Some(problem),
        Err(e) => damaged(&e).then(|| e.to_string()),
    }
}

/// Whether an SQLite error says the file is not a (sound) database.
pub(crate) fn damaged(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase)
    )
}

fn open_conn(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    // Every tenant's output: not for other local users.
    let _ = std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600));
    // Pages freed by retention go back to the file system (`retain` runs `incremental_vacuum`).
    // Settable only on a new file, before WAL mode: a logs.db made before keeps its largest size.
    conn.pragma_update(None, "auto_vacuum", 2)?; // INCREMENTAL
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // NORMAL in WAL mode survives a crash of the process (not of the machine): the promise.
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    // The WAL file is cut back to this after a checkpoint, instead of keeping its largest size.
    conn.pragma_update(None, "journal_size_limit", 32 * 1024 * 1024)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    Ok(conn)
}

impl LogStore {
    /// Opens the log store at `path`; one that is damaged (not a database, corrupt) is set
    /// aside as `path.corrupt-SECONDS` and a new one begins: logs are worth less than the
    /// server starting. The second value says what happened, for the server's log.
    pub fn open_or_set_aside(
        path: &Path,
        retention: Retention,
    ) -> Result<(LogStore, Option<String>), Error> {
        let why = match damaged_pages(path) {
            Some(why) => why,
            None => match Self::open(path, retention) {
                Ok(store) => return Ok((store, None)),
                Err(Error::LogStore { source, .. }) if damaged(&source) => source.to_string(),
                Err(e) => return Err(e),
            },
        };
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let aside = path.with_extension(format!("db.corrupt-{secs}"));
        for suffix in ["", "-wal", "-shm"] {
            let from = format!("{}{suffix}", path.display());
            let _ = std::fs::rename(&from, format!("{}{suffix}", aside.display()));
        }
        let store = Self::open(path, retention)?;
        let why = format!(
            "log store {} is damaged ({why}): set aside as {}; a new log store begins (earlier lines are in the file set aside)",
            path.display(),
            aside.display()
        );
        Ok((store, Some(why)))
    }

    pub fn open(path: &Path, retention: Retention) -> Result<LogStore, Error> {
        let fail = |source| Error::LogStore {
            path: path.display().to_string(),
            source,
        };
        let conn = open_conn(path).map_err(fail)?;
        conn.execute_batch(SCHEMA).map_err(fail)?;
        let reader = open_conn(path).map_err(fail)?;
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending {
                queues: HashMap::new(),
                total: 0,
            }),
            wake: Condvar::new(),
            dropped: AtomicU64::new(0),
            written: AtomicU64::new(0),
            closed: AtomicBool::new(false),
        });
        let s = shared.clone();
        let writer = std::thread::Builder::new()
            .name("log-writer".into())
            .spawn(move || write_loop(conn, s, retention))
            .map_err(|e| fail(rusqlite::Error::ToSqlConversionFailure(Box::new(e))))?;
        Ok(LogStore {
            path: path.to_path_buf(),
            shared,
            reader: Arc::new(Mutex::new(reader)),
            writer: Arc::new(Mutex::new(Some(writer))),
        })
    }

    /// Queues a line for writing; never blocks for longer than a mutex push.
    pub fn push(&self, line: Arc<LogLine>) {
        let mut p = self
            .shared
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let dropped = p.add(line);
        if dropped > 0 {
            self.shared.dropped.fetch_add(dropped, Ordering::Relaxed);
        }
        if p.total >= 10_000 {
            self.shared.wake.notify_one();
        }
    }

    /// Lines dropped under overload so far.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Lines written so far.
    pub fn written(&self) -> u64 {
        self.shared.written.load(Ordering::Relaxed)
    }

    /// Waits (at most 1 s; blocking) until every line pushed so far by the instances `of`
    /// selects is written or dropped, so a query sees what they printed before it. Another
    /// instance's flood is not waited for.
    pub fn flush(&self, of: impl Fn(&InstanceKey) -> bool) {
        let pending = || {
            self.shared
                .pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
        };
        let targets: Vec<(Arc<InstanceKey>, u64)> = pending()
            .queues
            .iter()
            .filter(|(k, q)| of(k) && q.done < q.pushed)
            .map(|(k, q)| (k.clone(), q.pushed))
            .collect();
        let until = Instant::now() + Duration::from_secs(1);
        loop {
            self.shared.wake.notify_one();
            let done = {
                let p = pending();
                targets
                    .iter()
                    .all(|(k, n)| p.queues.get(k).is_none_or(|q| q.done >= *n))
            };
            if done || Instant::now() >= until {
                return;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Writes what is pending and stops the writer (at shutdown).
    pub fn close(&self) {
        self.shared.closed.store(true, Ordering::SeqCst);
        self.shared.wake.notify_one();
        if let Some(w) = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = w.join();
        }
    }

    /// Runs a query (blocking: call from a blocking thread).
    pub fn query(&self, q: &LogQuery) -> Result<Vec<StoredLine>, Error> {
        let mut sql =
            String::from("SELECT l.id, l.ts_ms, l.instance, l.stream, l.text FROM logs l");
        let mut args: Vec<rusqlite::types::Value> = Vec::new();
        let mut conds: Vec<String> = Vec::new();
        if let Some(search) = q.search.as_deref().filter(|s| !s.trim().is_empty()) {
            sql.push_str(" JOIN logs_fts f ON f.rowid = l.id");
            conds.push("logs_fts MATCH ?".into());
            args.push(phrase(search).into());
        }
        if let Some(k) = &q.instance {
            conds.push("l.instance = ?".into());
            args.push(k.to_string().into());
        }
        if let Some(s) = &q.service {
            conds.push("l.service = ?".into());
            args.push(s.clone().into());
        }
        if let Some(ids) = &q.ids {
            let marks = vec!["?"; ids.len().max(1)].join(",");
            conds.push(format!(
                "substr(l.instance, instr(l.instance, ':') + 1) IN ({marks})"
            ));
            if ids.is_empty() {
                args.push(rusqlite::types::Value::Null);
            }
            args.extend(ids.iter().map(|i| i.clone().into()));
        }
        if let Some(st) = q.stream {
            conds.push("l.stream = ?".into());
            args.push(stream_name(st).to_owned().into());
        }
        if let Some(t) = q.since_ms {
            conds.push("l.ts_ms >= ?".into());
            args.push((t as i64).into());
        }
        if let Some(t) = q.until_ms {
            conds.push("l.ts_ms <= ?".into());
            args.push((t as i64).into());
        }
        if !conds.is_empty() {
            sql.push_str(" WHERE ");
            sql.push_str(&conds.join(" AND "));
        }
        // With a search, the FTS index drives the scan in rowid order, newest first, so a
        // common word stops after `limit` matches instead of sorting all of them.
        sql.push_str(
            if q.search.as_deref().is_some_and(|s| !s.trim().is_empty()) {
                " ORDER BY f.rowid DESC LIMIT ?"
            } else {
                " ORDER BY l.id DESC LIMIT ?"
            },
        );
        args.push((q.limit.min(10_000) as i64).into());
        let conn = self.reader.lock().unwrap_or_else(|e| e.into_inner());
        let fail = |source| Error::LogStore {
            path: self.path.display().to_string(),
            source,
        };
        let mut stmt = conn.prepare_cached(&sql).map_err(fail)?;
        let rows = stmt
            .query_map(params_from_iter(args), |r| {
                let stream: String = r.get(3)?;
                Ok(StoredLine {
                    id: r.get(0)?,
                    ts_ms: r.get::<_, i64>(1)? as u64,
                    instance: r.get(2)?,
                    stream: if stream == "stderr" {
                        Stream::Stderr
                    } else {
                        Stream::Stdout
                    },
                    text: r.get(4)?,
                })
            })
            .map_err(fail)?;
        rows.collect::<Result<_, _>>().map_err(fail)
    }
}

fn stream_name(s: Stream) -> &'static str {
    match s {
        Stream::Stdout => "stdout",
        Stream::Stderr => "stderr",
    }
}

/// User text as one FTS5 phrase: no query syntax gets through.
fn phrase(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

fn write_loop(mut conn: Connection, shared: Arc<Shared>, retention: Retention) {
    let mut last_retention = Instant::now();
    let mut taken: Vec<(Arc<InstanceKey>, u64)> = Vec::new();
    loop {
        let batch: Vec<Arc<LogLine>> = {
            let mut p = shared.pending.lock().unwrap_or_else(|e| e.into_inner());
            if p.total == 0 && !shared.closed.load(Ordering::SeqCst) {
                p = shared
                    .wake
                    .wait_timeout(p, FLUSH_EVERY)
                    .map(|(g, _)| g)
                    .unwrap_or_else(|e| e.into_inner().0);
            }
            // A slice of every instance's queue, so nobody waits behind a flood.
            let mut batch = Vec::new();
            for (key, q) in p.queues.iter_mut() {
                let (mut n, mut bytes) = (0, 0);
                for line in q.lines.iter().take(BATCH_PER_INSTANCE) {
                    if n > 0 && bytes + line.text.len() > BATCH_BYTES_PER_INSTANCE {
                        break;
                    }
                    n += 1;
                    bytes += line.text.len();
                }
                if n > 0 {
                    q.bytes -= bytes;
                    batch.extend(q.lines.drain(..n));
                    taken.push((key.clone(), n as u64));
                }
            }
            p.total -= batch.len();
            batch
        };
        if !batch.is_empty() {
            match insert(&mut conn, &batch) {
                Ok(()) => {
                    shared
                        .written
                        .fetch_add(batch.len() as u64, Ordering::Relaxed);
                }
                Err(e) if damaged(&e) => {
                    tracing::error!(error = %e, lines = batch.len(), "the log store is damaged: lines are lost; restart ten serve to set it aside and begin a new one")
                }
                Err(e) => {
                    tracing::warn!(error = %e, lines = batch.len(), "could not write log lines")
                }
            }
            let mut p = shared.pending.lock().unwrap_or_else(|e| e.into_inner());
            for (key, n) in taken.drain(..) {
                if let Some(q) = p.queues.get_mut(&key) {
                    q.done += n;
                }
            }
            // Queues with nothing left go (with the memory a flood made them grow to).
            p.queues
                .retain(|_, q| !(q.lines.is_empty() && q.done == q.pushed));
        }
        if last_retention.elapsed() >= RETENTION_EVERY {
            last_retention = Instant::now();
            if let Err(e) = retain(&conn, retention) {
                tracing::warn!(error = %e, "log retention failed");
            }
        }
        if shared.closed.load(Ordering::SeqCst)
            && shared.pending.lock().map(|p| p.total == 0).unwrap_or(true)
        {
            return;
        }
    }
}

fn insert(conn: &mut Connection, batch: &[Arc<LogLine>]) -> rusqlite::Result<()> {
    let mut sorted: Vec<&Arc<LogLine>> = batch.iter().collect();
    sorted.sort_by_key(|l| l.ts_ms);
    let tx = conn.transaction()?;
    {
        let mut line_stmt = tx.prepare_cached(
            "INSERT INTO logs (ts_ms, service, instance, stream, text) VALUES (?1, ?2, ?3, ?4, ?5)",
        )?;
        let mut fts_stmt =
            tx.prepare_cached("INSERT INTO logs_fts (rowid, text) VALUES (?1, ?2)")?;
        for l in sorted {
            line_stmt.execute(params![
                l.ts_ms as i64,
                l.instance.service.as_str(),
                l.instance.to_string(),
                stream_name(l.stream),
                l.text
            ])?;
            fts_stmt.execute(params![tx.last_insert_rowid(), l.text])?;
        }
    }
    tx.commit()
}

/// Deletes lines older than `max_age`, then the oldest tenth while the file is over `max_bytes`.
pub fn retain(conn: &Connection, r: Retention) -> rusqlite::Result<()> {
    let cutoff = crate::logs::now_ms().saturating_sub(r.max_age.as_millis() as u64) as i64;
    let upto: Option<i64> = conn.query_row(
        "SELECT max(id) FROM logs WHERE ts_ms < ?1",
        [cutoff],
        |row| row.get(0),
    )?;
    if let Some(id) = upto {
        delete_upto(conn, id)?;
    }
    for _ in 0..20 {
        let size: i64 = conn.query_row(
            "SELECT page_count * page_size FROM pragma_page_count, pragma_page_size",
            [],
            |r| r.get(0),
        )?;
        let free: i64 = conn.query_row(
            "SELECT freelist_count * page_size FROM pragma_freelist_count, pragma_page_size",
            [],
            |r| r.get(0),
        )?;
        if ((size - free) as u64) <= r.max_bytes {
            break;
        }
        let (lo, hi): (Option<i64>, Option<i64>) =
            conn.query_row("SELECT min(id), max(id) FROM logs", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?;
        let (Some(lo), Some(hi)) = (lo, hi) else {
            break;
        };
        delete_upto(conn, lo + (hi - lo) / 10 + 1)?;
    }
    // Give the freed pages back, so `max_bytes` also bounds the file.
    // (Stepped to the end: each step gives back some of the pages.)
    let mut vacuum = conn.prepare("PRAGMA incremental_vacuum")?;
    let mut steps = vacuum.raw_query();
    while steps.next()?.is_some() {}
    Ok(())
}

fn delete_upto(conn: &Connection, id: i64) -> rusqlite::Result<()> {
    conn.execute("DELETE FROM logs_fts WHERE rowid <= ?1", [id])?;
    conn.execute("DELETE FROM logs WHERE id <= ?1", [id])?;
    Ok(())
}

#[cfg(test)]
mod tests;
