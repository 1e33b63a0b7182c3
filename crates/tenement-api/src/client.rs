//! A typed client of the management API: over the control socket (trusted by its file mode),
//! or to a remote server over HTTP with a bearer token.

use std::path::PathBuf;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tenement_core::{InstanceId, InstanceKey};

use crate::types::*;

/// Where the server is.
#[derive(Debug, Clone)]
pub enum Target {
    /// Its control socket (`{data_dir}/ten.sock`).
    Socket(PathBuf),
    /// `host:port` of its public listener, and a token for `/api/`.
    Tcp {
        authority: String,
        token: Option<String>,
    },
}

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server answered with an error: its status, its `code` and its message.
    #[error("{message}")]
    Api {
        status: StatusCode,
        code: String,
        message: String,
    },
    /// The control socket refused this user (it belongs to `ten serve`'s).
    #[error(
        "cannot use the control socket {} ({source}): it is for ten serve's own user; run as that user, or use --server URL with an API token",
        path.display()
    )]
    NotYours {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Nothing listens on the control socket.
    #[error("no ten server is running at {} ({source}); start one with `ten serve`", path.display())]
    NoServer {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot reach ten server at http://{authority} ({source})")]
    Unreachable {
        authority: String,
        source: std::io::Error,
    },
    #[error("talking to ten serve: {0}")]
    Http(#[from] hyper::Error),
    #[error("unexpected answer from server: {0}")]
    Decode(String),
}

impl Error {
    /// The server's error code (`not_found`, `forbidden`, ...), if it answered with one.
    pub fn code(&self) -> Option<&str> {
        match self {
            Error::Api { code, .. } => Some(code),
            _ => None,
        }
    }
}

type Result<T> = std::result::Result<T, Error>;

/// A client of one server.
#[derive(Debug, Clone)]
pub struct Client {
    target: Target,
}

impl Client {
    pub fn new(target: Target) -> Self {
        Self { target }
    }

    pub fn target(&self) -> &Target {
        &self.target
    }

    /// `GET /api/instances` (a tenant's token sees its own).
    pub async fn instances(&self) -> Result<Vec<InstanceStatus>> {
        self.call(Method::GET, "/instances", None::<&()>).await
    }

    pub async fn instance(&self, key: &InstanceKey) -> Result<InstanceStatus> {
        self.call(Method::GET, &format!("/instances/{key}"), None::<&()>)
            .await
    }

    pub async fn spawn(&self, key: &InstanceKey) -> Result<InstanceStatus> {
        let body = SpawnRequest {
            service: key.service.to_string(),
            id: key.id.to_string(),
        };
        self.call(Method::POST, "/instances", Some(&body)).await
    }

    pub async fn stop(&self, key: &InstanceKey) -> Result<()> {
        self.call(Method::DELETE, &format!("/instances/{key}"), None::<&()>)
            .await
    }

    pub async fn restart(&self, key: &InstanceKey) -> Result<InstanceStatus> {
        let path = format!("/instances/{key}/restart");
        self.call(Method::POST, &path, None::<&()>).await
    }

    pub async fn set_weight(&self, key: &InstanceKey, weight: u32) -> Result<InstanceStatus> {
        let path = format!("/instances/{key}/weight");
        self.call(Method::POST, &path, Some(&WeightRequest { weight }))
            .await
    }

    pub async fn route(&self, req: &RouteRequest) -> Result<RouteAnswer> {
        self.call(Method::POST, "/route", Some(req)).await
    }

    pub async fn deploy(&self, req: &DeployRequest) -> Result<InstanceStatus> {
        self.call(Method::POST, "/deploy", Some(req)).await
    }

    pub async fn reload(&self) -> Result<ReloadReport> {
        self.call(Method::POST, "/reload", None::<&()>).await
    }

    pub async fn upgrade(&self) -> Result<Upgraded> {
        self.call(Method::POST, "/upgrade", None::<&()>).await
    }

    pub async fn tokens(&self) -> Result<Vec<TokenInfo>> {
        self.call(Method::GET, "/tokens", None::<&()>).await
    }

    pub async fn token_gen(&self, tenant: Option<&InstanceId>) -> Result<TokenCreated> {
        let body = TokenRequest {
            tenant: tenant.map(ToString::to_string),
        };
        self.call(Method::POST, "/tokens", Some(&body)).await
    }

    pub async fn token_revoke(&self, id: i64) -> Result<()> {
        self.call(Method::DELETE, &format!("/tokens/{id}"), None::<&()>)
            .await
    }

    /// Routes the custom domain `name` to `instance` (and gets its certificate, with HTTPS).
    pub async fn domain_add(&self, name: &str, instance: &InstanceKey) -> Result<Domain> {
        let body = Domain {
            name: name.to_owned(),
            instance: instance.clone(),
        };
        self.call(Method::POST, "/domains", Some(&body)).await
    }

    pub async fn domain_remove(&self, name: &str) -> Result<()> {
        let path = format!("/domains/{}", crate::types::encode(name));
        self.call(Method::DELETE, &path, None::<&()>).await
    }

    pub async fn domains(&self) -> Result<Vec<Domain>> {
        self.call(Method::GET, "/domains", None::<&()>).await
    }

    /// `GET /api/logs`: stored lines, newest first.
    pub async fn logs(&self, params: &LogParams) -> Result<Vec<StoredLine>> {
        let path = format!("/logs?{}", params.to_query());
        self.call(Method::GET, &path, None::<&()>).await
    }

    /// `GET /api/logs?follow=true`: the answer, a stream of server-sent events (`log` with a
    /// [`StoredLine`], `lagged`, `end`), once the server has accepted the query.
    pub async fn follow_logs(&self, params: &LogParams) -> Result<Response<Incoming>> {
        let params = LogParams {
            follow: true,
            ..params.clone()
        };
        let res = self
            .send(Method::GET, &format!("/logs?{}", params.to_query()), None)
            .await?;
        if res.status().is_success() {
            return Ok(res);
        }
        let status = res.status();
        let body = res.into_body().collect().await?.to_bytes();
        Err(api_error(status, &body))
    }

    /// A request whose answer is JSON (or empty: `()`); an error answer becomes [`Error::Api`].
    pub async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<T> {
        let body = body
            .map(serde_json::to_vec)
            .transpose()
            .map_err(|e| Error::Decode(e.to_string()))?;
        let res = self.send(method, path, body).await?;
        let status = res.status();
        let bytes = res.into_body().collect().await?.to_bytes();
        if !status.is_success() {
            return Err(api_error(status, &bytes));
        }
        let bytes: &[u8] = if bytes.is_empty() { b"null" } else { &bytes };
        serde_json::from_slice(bytes).map_err(|e| Error::Decode(e.to_string()))
    }

    /// Sends `method /api{path}` with a JSON `body`.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Response<Incoming>> {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("/api{path}"))
            .header(hyper::header::CONTENT_TYPE, "application/json");
        let io: Box<dyn IoStream> = match &self.target {
            Target::Socket(path) => {
                req = req.header(hyper::header::HOST, "localhost");
                let stream = tokio::net::UnixStream::connect(path).await.map_err(|e| {
                    let path = path.clone();
                    match e.kind() {
                        std::io::ErrorKind::PermissionDenied => Error::NotYours { path, source: e },
                        _ => Error::NoServer { path, source: e },
                    }
                })?;
                Box::new(TokioIo::new(stream))
            }
            Target::Tcp { authority, token } => {
                req = req.header(hyper::header::HOST, authority.as_str());
                if let Some(t) = token {
                    req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {t}"));
                }
                let stream = tokio::net::TcpStream::connect(authority.as_str())
                    .await
                    .map_err(|source| Error::Unreachable {
                        authority: authority.clone(),
                        source,
                    })?;
                Box::new(TokioIo::new(stream))
            }
        };
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await?;
        tokio::spawn(conn);
        let body = Full::new(Bytes::from(body.unwrap_or_default()));
        let req = req
            .body(body)
            .map_err(|e| Error::Decode(format!("bad request: {e}")))?;
        Ok(sender.send_request(req).await?)
    }
}

/// An error answer as [`Error::Api`]: the server's JSON body, or (from something that is not
/// tenement, such as a proxy in between) the body's text.
fn api_error(status: StatusCode, body: &[u8]) -> Error {
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(e) => Error::Api {
            status,
            code: e.code,
            message: e.error,
        },
        Err(_) => Error::Api {
            status,
            code: String::new(),
            message: match String::from_utf8_lossy(body).trim() {
                "" => format!("the server answered {status}"),
                text => text.to_owned(),
            },
        },
    }
}

trait IoStream: hyper::rt::Read + hyper::rt::Write + Unpin + Send {}
impl<T: hyper::rt::Read + hyper::rt::Write + Unpin + Send> IoStream for T {}
