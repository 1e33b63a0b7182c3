//! Calls to slum's API (the `slum` CLI, and `ten serve` joining a fleet).

use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use serde_json::Value;

/// slum's API at `url` (`http://host:port`), with a bearer token.
pub struct Client {
    pub url: String,
    pub token: String,
    /// How long an answer may take (a placement waits for its server).
    pub patience: Duration,
}

impl Client {
    pub fn new(url: &str, token: &str) -> Self {
        Self {
            url: url.trim_end_matches('/').to_owned(),
            token: token.to_owned(),
            patience: Duration::from_secs(90),
        }
    }

    /// One call: (status, the JSON answer or `null`). Gives up after 2 s to connect and
    /// [`Client::patience`] to answer.
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Value), String> {
        let authority = self
            .url
            .strip_prefix("http://")
            .ok_or_else(|| format!("{}: only http:// URLs for now", self.url))?;
        let unreachable = |e: String| format!("cannot reach slum at {}: {e}", self.url);
        let stream = tokio::time::timeout(
            Duration::from_secs(2),
            tokio::net::TcpStream::connect(authority),
        )
        .await
        .map_err(|_| unreachable("no connection within 2 s".into()))?
        .map_err(|e| unreachable(e.to_string()))?;
        let (mut send, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", authority)
            .header("authorization", format!("Bearer {}", self.token))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(
                body.map(Value::to_string).unwrap_or_default(),
            )))
            .map_err(|e| e.to_string())?;
        let res = tokio::time::timeout(self.patience, send.send_request(req))
            .await
            .map_err(|_| unreachable(format!("no answer within {:?}", self.patience)))?
            .map_err(|e| e.to_string())?;
        let status = res.status().as_u16();
        let bytes = res
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok((
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        ))
    }

    /// [`Client::send`], an error answer becoming its message.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, String> {
        let (status, value) = self.send(method, path, body.as_ref()).await?;
        if !(200..300).contains(&status) {
            return Err(value["error"]
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| format!("{method} {path}: {status}")));
        }
        Ok(value)
    }
}
