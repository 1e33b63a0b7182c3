//! The fleet's moving parts on [`SlumDb`]: servers joining and heartbeating, leases,
//! placement by free capacity, failover, and the table each server follows.

use rusqlite::{OptionalExtension, params};
use serde_json::{Value, json};

use super::{
    SlumDb, all_servers, all_tenants, bump, check_domain, check_name, check_tenant, check_url,
    free_domain, now_ms, random_hex, taken_instance, tenant_of,
};
use crate::{Capacity, Error, Report, Tenant};

impl SlumDb {
    /// A server joins (or joins again after a restart): it is added if new, its URL, routing
    /// domain and capacity are taken, it is `up`, and it gets a new secret for its heartbeats.
    /// A server that has joined before joins again only with the secret it has (`ServerLive`
    /// otherwise, whether it is up or down): the join token does not let anyone take its
    /// place. Secrets are kept as their SHA-256.
    pub async fn join(
        &self,
        id: &str,
        url: &str,
        domain: &str,
        capacity: Capacity,
        secret: &str,
    ) -> Result<String, Error> {
        check_name("server id", id)?;
        check_url(url)?;
        check_routing_domain(domain)?;
        let (shown, secret) = (digest(secret), random_hex()?);
        let (id, url, domain, given, fail) = (
            id.to_owned(),
            url.to_owned(),
            domain.to_owned(),
            digest(&secret),
            self.fail(),
        );
        self.with(move |c| {
            let now = now_ms();
            let tx = c.transaction().map_err(&fail)?;
            if let Some(current) = secret_of(&tx, &id).map_err(&fail)?
                && !crate::same(current.as_bytes(), shown.as_bytes())
            {
                return Err(Error::ServerLive(id));
            }
            // Its routing domain must not take a tenant's name (LIKE: `_` and `%` cannot be in
            // a checked domain).
            let covered: Option<String> = tx
                .query_row(
                    "SELECT domain FROM tenants WHERE domain = ?1 OR domain LIKE '%.' || ?1",
                    [&domain],
                    |r| r.get(0),
                )
                .optional()
                .map_err(&fail)?;
            if let Some(tenant) = covered {
                let why = format!("{domain:?} would cover the tenant {tenant:?}");
                return Err(Error::Invalid {
                    field: "domain",
                    why,
                });
            }
            tx.execute(
                "INSERT INTO servers (id, url, state, memory_mb, free_memory_mb, cpus, instances,
                   last_seen_ms, secret, domain, up_since_ms)
                 VALUES (?1, ?2, 'up', ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?7)
                 ON CONFLICT(id) DO UPDATE SET url = ?2, memory_mb = ?3, free_memory_mb = ?4,
                   cpus = ?5, instances = ?6, last_seen_ms = ?7, secret = ?8, domain = ?9,
                   up_since_ms = CASE WHEN state = 'up' THEN up_since_ms ELSE ?7 END, state = 'up'",
                params![
                    id,
                    url,
                    capacity.memory_mb,
                    capacity.free_memory_mb,
                    capacity.cpus,
                    capacity.instances,
                    now,
                    given,
                    domain
                ],
            )
            .map_err(&fail)?;
            // Its URL or domain may have changed (a restart on another port): the others'
            // routes follow.
            bump(&tx).map_err(&fail)?;
            tx.commit().map_err(&fail)
        })
        .await?;
        Ok(secret)
    }

    /// A joined server says it is alive: its capacity is taken, its lease renewed and its
    /// reports on its placements recorded (only those about the current placement count).
    /// `Unauthorized` unless `secret` is the one its last join got. Whether a tenant's status
    /// changed.
    /// `url` and `domain`, when not empty, are where it is now (a restart on another address
    /// heartbeats with its secret rather than joining again).
    pub async fn heartbeat(
        &self,
        id: &str,
        secret: &str,
        at: (&str, &str),
        capacity: Capacity,
        reports: Vec<Report>,
    ) -> Result<bool, Error> {
        let (url, domain) = at;
        if !url.is_empty() {
            check_url(url)?;
        }
        if !domain.is_empty() {
            check_routing_domain(domain)?;
        }
        let (url, domain) = (url.to_owned(), domain.to_owned());
        let (id, secret, fail) = (id.to_owned(), digest(secret), self.fail());
        self.with(move |c| {
            let tx = c.transaction().map_err(&fail)?;
            match secret_of(&tx, &id).map_err(&fail)? {
                Some(s) if crate::same(s.as_bytes(), secret.as_bytes()) => {}
                _ => return Err(Error::Unauthorized),
            }
            let now = now_ms();
            // A server coming back, or moving: the others' tables follow.
            let moved: bool = tx
                .query_row(
                    "SELECT state != 'up' OR (?2 != '' AND url != ?2) OR (?3 != '' AND domain != ?3)
                     FROM servers WHERE id = ?1",
                    params![id, url, domain],
                    |r| r.get(0),
                )
                .map_err(&fail)?;
            if moved {
                tx.execute(
                    "UPDATE servers SET url = CASE WHEN ?2 = '' THEN url ELSE ?2 END,
                       domain = CASE WHEN ?3 = '' THEN domain ELSE ?3 END WHERE id = ?1",
                    params![id, url, domain],
                )
                .map_err(&fail)?;
                bump(&tx).map_err(&fail)?;
            }
            tx.execute(
                "UPDATE servers SET memory_mb = ?2, free_memory_mb = ?3, cpus = ?4,
                   instances = ?5, last_seen_ms = ?6,
                   up_since_ms = CASE WHEN state = 'up' THEN up_since_ms ELSE ?6 END,
                   state = 'up' WHERE id = ?1",
                params![
                    id,
                    capacity.memory_mb,
                    capacity.free_memory_mb,
                    capacity.cpus,
                    capacity.instances,
                    now
                ],
            )
            .map_err(&fail)?;
            let mut changed = 0;
            for r in &reports {
                let status = match r.state.as_str() {
                    "running" => "running",
                    "failed" => "failed",
                    _ => continue,
                };
                changed += tx
                    .execute(
                        "UPDATE tenants SET status = ?4, error = ?5 WHERE domain = ?1
                           AND server_id = ?2 AND epoch = ?3 AND (status != ?4 OR error != ?5)",
                        params![r.domain, id, r.epoch, status, r.error],
                    )
                    .map_err(&fail)?;
            }
            tx.commit().map_err(&fail)?;
            Ok(changed > 0)
        })
        .await
    }

    /// Marks `down` every `up` server not heard from for `lease_ms`; returns their ids.
    pub async fn expire(&self, lease_ms: u64) -> Result<Vec<String>, Error> {
        let fail = self.fail();
        self.with(move |c| {
            let cutoff = now_ms().saturating_sub(lease_ms);
            let mut st = c
                .prepare("UPDATE servers SET state = 'down' WHERE state = 'up' AND last_seen_ms < ?1 RETURNING id")
                .map_err(&fail)?;
            let rows = st.query_map([cutoff], |r| r.get(0)).map_err(&fail)?;
            let down: Vec<String> = rows.collect::<rusqlite::Result<_>>().map_err(&fail)?;
            drop(st);
            if !down.is_empty() {
                // The servers' tables say who is up: a server that lost slum asks only those.
                c.execute("UPDATE meta SET v = v + 1 WHERE k = 'version'", [])
                    .map_err(&fail)?;
            }
            Ok(down)
        })
        .await
    }

    /// A control plane that starts again gives every `up` server a full lease from now: it
    /// heard nothing while it was down, which says nothing about the servers.
    pub async fn grace(&self) -> Result<(), Error> {
        let fail = self.fail();
        self.with(move |c| {
            c.execute(
                "UPDATE servers SET last_seen_ms = ?1 WHERE state = 'up'",
                [now_ms()],
            )
            .map(drop)
            .map_err(fail)
        })
        .await
    }

    /// The version servers follow: it changes whenever a tenant is placed, moved or removed.
    pub async fn version(&self) -> Result<u64, Error> {
        let fail = self.fail();
        self.with(move |c| {
            c.query_row("SELECT v FROM meta WHERE k = 'version'", [], |r| r.get(0))
                .map_err(fail)
        })
        .await
    }

    /// Places `tenant`: on its `server_id` if named (which must be up), else on the up server
    /// with the most free memory per tenant ([`pick`]). Recorded `pending` with a new epoch;
    /// the server starts it when its heartbeat brings the new table.
    pub async fn place(&self, tenant: &Tenant) -> Result<Tenant, Error> {
        check_tenant(tenant)?;
        let (t, fail) = (tenant.clone(), self.fail());
        self.with(move |c| {
            let tx = c.transaction().map_err(&fail)?;
            free_domain(&tx, &t.domain).map_err(&fail)??;
            let server = match t.server_id.as_str() {
                "" => pick(&tx, &t.process, &t.instance_id, "", now_ms())
                    .map_err(&fail)?
                    .ok_or_else(|| {
                        Error::NoRoom(
                            format!("{}:{}", t.process, t.instance_id),
                            "no server is up (or every one has that instance already)".into(),
                        )
                    })?,
                named => {
                    let state: Option<String> = tx
                        .query_row("SELECT state FROM servers WHERE id = ?1", [named], |r| {
                            r.get(0)
                        })
                        .optional()
                        .map_err(&fail)?;
                    match state.as_deref() {
                        None => return Err(Error::UnknownServer(named.into())),
                        Some("up") => {}
                        Some("new") => {
                            return Err(Error::NotUp(named.into(), "new (never joined)"));
                        }
                        Some(_) => return Err(Error::NotUp(named.into(), "down")),
                    }
                    taken_instance(&tx, named, &t.process, &t.instance_id).map_err(&fail)??;
                    named.to_owned()
                }
            };
            tx.execute(
                "INSERT INTO tenants (domain, server_id, process, instance_id, created_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![t.domain, server, t.process, t.instance_id, now_ms()],
            )
            .map_err(&fail)?;
            bump(&tx).map_err(&fail)?;
            let placed = tenant_of(&tx, &t.domain)
                .map_err(&fail)?
                .expect("just placed");
            tx.commit().map_err(&fail)?;
            Ok(placed)
        })
        .await
    }

    /// Removes the tenant `domain` if it is still at placement `epoch` (a placement that
    /// failed leaves no record); whether it did.
    pub async fn unplace(&self, domain: &str, epoch: u64) -> Result<bool, Error> {
        let (domain, fail) = (domain.to_owned(), self.fail());
        self.with(move |c| {
            let tx = c.transaction().map_err(&fail)?;
            let n = tx
                .execute(
                    "DELETE FROM tenants WHERE domain = ?1 AND epoch = ?2",
                    params![domain, epoch],
                )
                .map_err(&fail)?;
            if n > 0 {
                bump(&tx).map_err(&fail)?;
            }
            tx.commit().map_err(&fail)?;
            Ok(n > 0)
        })
        .await
    }

    /// Moves every tenant of a `down` server to an up server that has been up for at least
    /// `lease_ms` (so a server cut off from slum, which asks its peers before it fences
    /// itself, has had a full lease to hear that they are up: see `tenement::fleet`).
    /// Returns (domain, from, to) for each move; a tenant no server can take stays, and is
    /// tried again next time.
    pub async fn fail_over(&self, lease_ms: u64) -> Result<Vec<(String, String, String)>, Error> {
        let fail = self.fail();
        self.with(move |c| {
            let tx = c.transaction().map_err(&fail)?;
            let stranded: Vec<(String, String, String, String)> = {
                let mut st = tx
                    .prepare(
                        "SELECT t.domain, t.server_id, t.process, t.instance_id FROM tenants t
                         JOIN servers s ON s.id = t.server_id WHERE s.state = 'down'
                         ORDER BY t.created_ms",
                    )
                    .map_err(&fail)?;
                let rows = st
                    .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
                    .map_err(&fail)?;
                rows.collect::<rusqlite::Result<_>>().map_err(&fail)?
            };
            let settled = now_ms().saturating_sub(lease_ms);
            let mut moves = Vec::new();
            for (domain, from, process, instance) in stranded {
                let Some(to) = pick(&tx, &process, &instance, &from, settled).map_err(&fail)?
                else {
                    continue;
                };
                tx.execute(
                    "UPDATE tenants SET server_id = ?2, epoch = epoch + 1, status = 'pending',
                       error = '' WHERE domain = ?1",
                    params![domain, to],
                )
                .map_err(&fail)?;
                moves.push((domain, from, to));
            }
            if !moves.is_empty() {
                bump(&tx).map_err(&fail)?;
            }
            tx.commit().map_err(&fail)?;
            Ok(moves)
        })
        .await
    }

    /// What server `me` follows: every tenant (where it lives, under which placement) and
    /// every server (its URL, routing domain and state), at the current version.
    pub async fn table(&self, me: &str) -> Result<Value, Error> {
        let (me, fail) = (me.to_owned(), self.fail());
        self.with(move |c| {
            let tx = c.transaction().map_err(&fail)?;
            let version: u64 = tx
                .query_row("SELECT v FROM meta WHERE k = 'version'", [], |r| r.get(0))
                .map_err(&fail)?;
            let tenants = all_tenants(&tx).map_err(&fail)?;
            let servers = all_servers(&tx).map_err(&fail)?;
            Ok(json!({
                "version": version,
                "me": me,
                "tenants": tenants.iter().map(|t| json!({
                    "domain": t.domain, "server_id": t.server_id, "process": t.process,
                    "instance_id": t.instance_id, "epoch": t.epoch,
                })).collect::<Vec<_>>(),
                "servers": servers.iter().map(|s| json!({
                    "id": s.id, "url": s.url, "domain": s.domain, "state": s.state.name(),
                })).collect::<Vec<_>>(),
            }))
        })
        .await
    }
}

/// The up server (up since `settled` or earlier, not `except`, without a tenant on
/// `process:instance`) with the most free memory per tenant slum placed on it; ties go to
/// the one running fewer instances, then by id.
fn pick(
    tx: &rusqlite::Transaction<'_>,
    process: &str,
    instance: &str,
    except: &str,
    settled: u64,
) -> rusqlite::Result<Option<String>> {
    tx.query_row(
        "SELECT s.id FROM servers s WHERE s.state = 'up' AND s.up_since_ms <= ?1 AND s.id != ?2
           AND NOT EXISTS (SELECT 1 FROM tenants t WHERE t.server_id = s.id AND t.process = ?3
                           AND t.instance_id = ?4)
         ORDER BY s.free_memory_mb * 1.0 /
                    (1 + (SELECT count(*) FROM tenants t WHERE t.server_id = s.id)) DESC,
                  s.instances, s.id
         LIMIT 1",
        params![settled, except, process, instance],
        |r| r.get(0),
    )
    .optional()
}

/// The digest of server `id`'s secret, if it has joined.
fn secret_of(tx: &rusqlite::Transaction<'_>, id: &str) -> rusqlite::Result<Option<String>> {
    let known: Option<Option<String>> = tx
        .query_row("SELECT secret FROM servers WHERE id = ?1", [id], |r| {
            r.get(0)
        })
        .optional()?;
    Ok(known.flatten())
}

/// A secret as slum keeps it: its SHA-256 (hex). Secrets are random: no salt or stretching
/// needed; a copy of the database does not let anyone heartbeat for a server.
fn digest(secret: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(secret.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A server's routing domain: a host name (`example.com`) or one label (`localhost`).
fn check_routing_domain(domain: &str) -> Result<(), Error> {
    match check_domain(domain) {
        Ok(()) => Ok(()),
        Err(_) if !domain.contains('.') && check_name("domain", domain).is_ok() => Ok(()),
        Err(e) => Err(e),
    }
}
