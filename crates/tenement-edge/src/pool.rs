//! A small keep-alive connection pool per instance endpoint.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tenement::probe::Endpoint;

/// Idle connections kept per instance.
const IDLE_PER_INSTANCE: usize = 16;

#[derive(Clone, Default)]
pub struct Pool {
    idle: Arc<Mutex<HashMap<Endpoint, Vec<SendRequest<Body>>>>>,
}

impl Pool {
    /// An idle connection to `endpoint`, or a new one.
    pub async fn checkout(&self, endpoint: &Endpoint) -> std::io::Result<SendRequest<Body>> {
        loop {
            let candidate = self.idle.lock().unwrap_or_else(|p| p.into_inner()).get_mut(endpoint).and_then(Vec::pop);
            match candidate {
                Some(sender) if sender.is_ready() => return Ok(sender),
                Some(_) => continue, // closed by the instance; drop it
                None => break,
            }
        }
        connect(endpoint, false).await
    }

    /// Gives `sender` back once its current response is finished, if the connection is still
    /// usable then.
    pub fn checkin(&self, endpoint: Endpoint, mut sender: SendRequest<Body>) {
        let idle = self.idle.clone();
        tokio::spawn(async move {
            if sender.ready().await.is_ok() {
                let mut idle = idle.lock().unwrap_or_else(|p| p.into_inner());
                let list = idle.entry(endpoint).or_default();
                if list.len() < IDLE_PER_INSTANCE {
                    list.push(sender);
                }
            }
        });
    }

    /// Forgets every idle connection to `endpoint` (the instance went away).
    pub fn clear(&self, endpoint: &Endpoint) {
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).remove(endpoint);
    }
}

/// A new HTTP/1 connection; with `upgrades`, able to switch protocols.
pub async fn connect(endpoint: &Endpoint, upgrades: bool) -> std::io::Result<SendRequest<Body>> {
    let io = endpoint.connect().await?;
    let (sender, conn) = http1::handshake(TokioIo::new(io)).await.map_err(std::io::Error::other)?;
    if upgrades {
        tokio::spawn(conn.with_upgrades());
    } else {
        tokio::spawn(conn);
    }
    Ok(sender)
}
