//! The CLI's HTTP client: the control socket by default, or a remote server with a token.

use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow, bail};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;

pub enum Target {
    Socket(PathBuf),
    Tcp {
        authority: String,
        token: Option<String>,
    },
}

pub struct Client {
    target: Target,
}

/// Path of the control socket in a data directory.
pub fn control_socket(data_dir: &Path) -> PathBuf {
    data_dir.join("ten.sock")
}

impl Client {
    /// The local data directory when no server answers on its control socket (so the
    /// caller may work on the files directly); `None` for a remote server or a live one.
    pub fn offline_data_dir(&self) -> Option<PathBuf> {
        match &self.target {
            Target::Socket(sock) => match std::os::unix::net::UnixStream::connect(sock) {
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                    ) =>
                {
                    sock.parent().map(Path::to_path_buf)
                }
                _ => None,
            },
            Target::Tcp { .. } => None,
        }
    }

    pub fn resolve(
        config: Option<&Path>,
        data_dir: Option<PathBuf>,
        server: Option<String>,
        token: Option<String>,
    ) -> anyhow::Result<Self> {
        if let Some(url) = server.filter(|s| !s.is_empty()) {
            let authority = url
                .strip_prefix("http://")
                .ok_or_else(|| anyhow!("--server must be an http:// URL, got {url:?}"))?
                .trim_end_matches('/')
                .to_owned();
            return Ok(Self {
                target: Target::Tcp { authority, token },
            });
        }
        // No configuration anywhere: the default data_dir. A configuration that exists but
        // does not load is reported, not guessed around (its data_dir may be elsewhere).
        let data_dir = match data_dir {
            Some(d) => d,
            None => match crate::config_file::find(config) {
                Ok(_) => {
                    crate::config_file::load_for_client(config)?
                        .settings
                        .data_dir
                }
                Err(_) => PathBuf::from("/var/lib/tenement"),
            },
        };
        Ok(Self {
            target: Target::Socket(control_socket(&data_dir)),
        })
    }

    pub async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> anyhow::Result<Response<Incoming>> {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let mut req = Request::builder()
            .method(method)
            .uri(format!("/api{path}"))
            .header(hyper::header::CONTENT_TYPE, "application/json");
        let io = match &self.target {
            Target::Socket(path) => {
                req = req.header(hyper::header::HOST, "localhost");
                let stream = tokio::net::UnixStream::connect(path).await.map_err(|e| {
                    match e.kind() {
                        std::io::ErrorKind::PermissionDenied => anyhow!(
                            "cannot use the control socket {} ({e}): it is for ten serve's own user; run as that user, or use --server URL with an API token",
                            path.display()
                        ),
                        _ => anyhow!(
                            "no ten server is running at {} ({e}); start one with `ten serve`",
                            path.display()
                        ),
                    }
                })?;
                Box::new(TokioIo::new(stream)) as Box<dyn IoStream>
            }
            Target::Tcp { authority, token } => {
                req = req.header(hyper::header::HOST, authority.as_str());
                if let Some(t) = token {
                    req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {t}"));
                }
                let stream = tokio::net::TcpStream::connect(authority.as_str())
                    .await
                    .with_context(|| format!("cannot reach ten server at http://{authority}"))?;
                Box::new(TokioIo::new(stream))
            }
        };
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await?;
        tokio::spawn(conn);
        Ok(sender
            .send_request(req.body(Full::new(Bytes::from(body)))?)
            .await?)
    }

    /// A request whose answer is JSON; an error answer becomes the server's message.
    pub async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> anyhow::Result<T> {
        let res = self.request(method, path, body).await?;
        let status = res.status();
        let bytes = res.into_body().collect().await?.to_bytes();
        if !status.is_success() {
            let msg = serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
                .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
            bail!("{msg}");
        }
        let bytes = if bytes.is_empty() {
            Bytes::from_static(b"null")
        } else {
            bytes
        };
        serde_json::from_slice(&bytes).context("unexpected answer from server")
    }
}

trait IoStream: hyper::rt::Read + hyper::rt::Write + Unpin + Send {}
impl<T: hyper::rt::Read + hyper::rt::Write + Unpin + Send> IoStream for T {}
