//! DNS-01 answers by RFC 2136 dynamic update (signed with TSIG, RFC 8945): the vendor-neutral
//! way to put `_acme-challenge.NAME TXT` records into a zone, which BIND, Knot, PowerDNS and
//! many DNS services accept. Needed for wildcard certificates (`*.api.example.com`).

use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use hickory_client::client::{Client, ClientHandle};
use hickory_client::proto::dnssec::rdata::tsig::TsigAlgorithm;
use hickory_client::proto::dnssec::tsig::TSigner;
use hickory_client::proto::op::ResponseCode;
use hickory_client::proto::rr::rdata::TXT;
use hickory_client::proto::rr::{Name, RData, Record};
use hickory_client::proto::runtime::TokioRuntimeProvider;
use hickory_client::proto::tcp::TcpClientStream;

/// A primary server that takes signed updates for `zone`.
#[derive(Debug, Clone)]
pub struct Rfc2136 {
    pub server: SocketAddr,
    /// The zone to update (`example.com`).
    pub zone: String,
    /// The TSIG key's name and secret (base64, as `tsig-keygen` prints it), `hmac-sha256`.
    pub key_name: String,
    pub key_secret: Vec<u8>,
}

/// How long the answer records live (the CA reads them once, within seconds).
const TTL: u32 = 60;

impl Rfc2136 {
    /// Adds `TXT value` at `_acme-challenge.{name}` (`name` without its `*.`).
    pub async fn set(&self, name: &str, value: &str) -> Result<(), String> {
        self.update(name, value, true).await
    }

    /// Removes that record again.
    pub async fn clear(&self, name: &str, value: &str) -> Result<(), String> {
        self.update(name, value, false).await
    }

    async fn update(&self, name: &str, value: &str, add: bool) -> Result<(), String> {
        let record_name = Name::from_str(&format!("_acme-challenge.{name}."))
            .map_err(|e| format!("{name}: {e}"))?;
        let zone = Name::from_str(&format!("{}.", self.zone.trim_end_matches('.')))
            .map_err(|e| format!("zone {}: {e}", self.zone))?;
        let signer = TSigner::new(
            self.key_secret.clone(),
            TsigAlgorithm::HmacSha256,
            Name::from_str(&self.key_name).map_err(|e| format!("key name: {e}"))?,
            300,
        )
        .map_err(|e| format!("TSIG key: {e}"))?;
        // TCP: an update and its answer are never lost or cut as UDP ones can be.
        let (stream, sender) = TcpClientStream::new(
            self.server,
            None,
            Some(Duration::from_secs(10)),
            TokioRuntimeProvider::new(),
        );
        let connect = Client::new(stream, sender, Some(Arc::new(signer)));
        let (mut client, background) = tokio::time::timeout(Duration::from_secs(10), connect)
            .await
            .map_err(|_| format!("DNS server {} did not answer", self.server))?
            .map_err(|e| format!("DNS server {}: {e}", self.server))?;
        let task = tokio::spawn(background);
        let record = Record::from_rdata(record_name, TTL, RData::TXT(TXT::new(vec![value.into()])));
        let answer = match add {
            true => client.append(record, zone, false).await,
            false => client.delete_by_rdata(record, zone).await,
        };
        task.abort();
        let answer = answer.map_err(|e| format!("DNS update at {}: {e}", self.server))?;
        match answer.response_code() {
            ResponseCode::NoError => Ok(()),
            code => Err(format!(
                "DNS update of _acme-challenge.{name} at {} refused: {code}",
                self.server
            )),
        }
    }
}
