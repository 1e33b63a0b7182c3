//! Health probes over an instance's Unix socket: a connect, or an HTTP GET.

use std::path::Path;
use std::time::Duration;

use http_body_util::Empty;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;

/// Why a probe failed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("connect: {0}")]
    Connect(std::io::Error),
    #[error("http: {0}")]
    Http(#[from] hyper::Error),
    #[error("answered {0}")]
    Status(u16),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// Whether something accepts connections on `socket`.
pub async fn connect(socket: &Path) -> Result<UnixStream, ProbeError> {
    UnixStream::connect(socket)
        .await
        .map_err(ProbeError::Connect)
}

/// `GET path` over `socket`; success is a 2xx answer within `timeout`.
pub async fn http_get(socket: &Path, path: &str, timeout: Duration) -> Result<(), ProbeError> {
    let attempt = async {
        let stream = connect(socket).await?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        let conn = tokio::spawn(conn);
        let req = hyper::Request::get(path)
            .header(hyper::header::HOST, "localhost")
            .header(hyper::header::USER_AGENT, "tenement-health")
            .body(Empty::<Bytes>::new())
            .expect("a static request is valid");
        let res = sender.send_request(req).await;
        conn.abort();
        let status = res?.status();
        if status.is_success() {
            Ok(())
        } else {
            Err(ProbeError::Status(status.as_u16()))
        }
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .unwrap_or(Err(ProbeError::Timeout(timeout)))
}

/// Polls until the instance is ready: the socket accepts and, with a health path, answers 2xx.
/// Never gives up by itself; the caller bounds it with `startup_timeout`.
pub async fn until_ready(socket: &Path, health: Option<&str>) {
    // Connecting to a socket that is not there yet costs microseconds: poll every millisecond
    // for the first half second (most apps are up by then), then back off.
    let mut attempts = 0u32;
    loop {
        let ok = match health {
            Some(path) => http_get(socket, path, Duration::from_secs(2)).await.is_ok(),
            None => connect(socket).await.is_ok(),
        };
        if ok {
            return;
        }
        attempts += 1;
        let pause = if attempts < 500 { 1 } else { 20 };
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
}
