//! [`SlumDb`] as a [`Store`]: the trait's methods are its inherent ones.

use super::SlumDb;
use crate::{Capacity, Error, Server, Store, Tenant};

/// The trait's methods are the inherent ones (so `use slum::{SlumDb, Server, Tenant}` is all
/// the documented calls need).
impl Store for SlumDb {
    async fn add_server(&self, server: &Server) -> Result<(), Error> {
        SlumDb::add_server(self, server).await
    }
    async fn server(&self, id: &str) -> Result<Server, Error> {
        SlumDb::server(self, id).await
    }
    async fn servers(&self) -> Result<Vec<Server>, Error> {
        SlumDb::servers(self).await
    }
    async fn remove_server(&self, id: &str) -> Result<(), Error> {
        SlumDb::remove_server(self, id).await
    }
    async fn add_tenant(&self, tenant: &Tenant) -> Result<(), Error> {
        SlumDb::add_tenant(self, tenant).await
    }
    async fn tenant(&self, domain: &str) -> Result<Tenant, Error> {
        SlumDb::tenant(self, domain).await
    }
    async fn tenants(&self) -> Result<Vec<Tenant>, Error> {
        SlumDb::tenants(self).await
    }
    async fn move_tenant(&self, domain: &str, server_id: &str) -> Result<Tenant, Error> {
        SlumDb::move_tenant(self, domain, server_id).await
    }
    async fn remove_tenant(&self, domain: &str) -> Result<Tenant, Error> {
        SlumDb::remove_tenant(self, domain).await
    }
    async fn join(
        &self,
        id: &str,
        url: &str,
        domain: &str,
        capacity: Capacity,
        secret: &str,
    ) -> Result<String, Error> {
        SlumDb::join(self, id, url, domain, capacity, secret).await
    }
    async fn heartbeat(
        &self,
        id: &str,
        secret: &str,
        at: (&str, &str),
        capacity: Capacity,
        reports: Vec<crate::Report>,
    ) -> Result<bool, Error> {
        SlumDb::heartbeat(self, id, secret, at, capacity, reports).await
    }
    async fn expire(&self, lease_ms: u64) -> Result<Vec<String>, Error> {
        SlumDb::expire(self, lease_ms).await
    }
    async fn grace(&self) -> Result<(), Error> {
        SlumDb::grace(self).await
    }
    async fn version(&self) -> Result<u64, Error> {
        SlumDb::version(self).await
    }
    async fn place(&self, tenant: &Tenant) -> Result<Tenant, Error> {
        SlumDb::place(self, tenant).await
    }
    async fn unplace(&self, domain: &str, epoch: u64) -> Result<bool, Error> {
        SlumDb::unplace(self, domain, epoch).await
    }
    async fn fail_over(&self, lease_ms: u64) -> Result<Vec<(String, String, String)>, Error> {
        SlumDb::fail_over(self, lease_ms).await
    }
    async fn table(&self, me: &str) -> Result<serde_json::Value, Error> {
        SlumDb::table(self, me).await
    }
}
