//! A request body on its way to an instance, and the clock the upstream timeout reads from it.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Instant;

use bytes::{Buf, Bytes, BytesMut};
use hyper::body::{Body as HttpBody, Incoming};
use tokio::io::AsyncWrite;

use crate::endpoint::Io;

use crate::upstream::UpstreamError;

/// A request body on its way to the instance: framed as the client sent it with
/// `Content-Length`, else chunked. It is sent while the answer comes back: an app may answer
/// before it has read the whole body, or stream its answer as it reads.
pub struct Upload {
    body: Incoming,
    chunked: bool,
    /// Bytes taken from the client's body and not yet written.
    out: Bytes,
    sent: usize,
    max: usize,
    ended: bool,
    clock: Clock,
}

impl Upload {
    pub fn new(body: Incoming, chunked: bool, max: usize) -> Self {
        Self {
            body,
            chunked,
            out: Bytes::new(),
            sent: 0,
            max,
            ended: false,
            clock: Clock::new(),
        }
    }

    /// When the body last moved: what the upstream timeout counts from.
    pub fn clock(&self) -> Clock {
        self.clock.clone()
    }

    /// Writes as much of the body to `io` as is available; ready once all of it is sent.
    pub(crate) fn poll_send(
        &mut self,
        cx: &mut Context<'_>,
        io: &mut Box<dyn Io>,
    ) -> Poll<Result<(), UpstreamError>> {
        loop {
            if !self.out.is_empty() {
                let written = Pin::new(&mut *io).poll_write(cx, &self.out);
                self.clock.moved(written.is_ready(), false);
                match ready!(written)? {
                    0 => return Poll::Ready(Err(io::Error::from(io::ErrorKind::WriteZero).into())),
                    n => {
                        self.out.advance(n);
                        continue;
                    }
                }
            }
            if self.ended {
                return Poll::Ready(Ok(()));
            }
            let frame = Pin::new(&mut self.body).poll_frame(cx);
            self.clock.moved(frame.is_ready(), frame.is_pending());
            match ready!(frame) {
                Some(Ok(frame)) => {
                    let Ok(data) = frame.into_data() else {
                        continue; // trailers are not forwarded
                    };
                    self.sent += data.len();
                    if self.sent > self.max {
                        return Poll::Ready(Err(UpstreamError::TooLarge));
                    }
                    self.out = if self.chunked && !data.is_empty() {
                        let mut c = BytesMut::with_capacity(data.len() + 20);
                        c.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
                        c.extend_from_slice(&data);
                        c.extend_from_slice(b"\r\n");
                        c.freeze()
                    } else {
                        data
                    };
                }
                Some(Err(e)) => return Poll::Ready(Err(UpstreamError::Client(e))),
                None => {
                    self.ended = true;
                    if self.chunked {
                        self.out = Bytes::from_static(b"0\r\n\r\n");
                    }
                }
            }
        }
    }
}

/// When a request body last moved (a piece read from the client, or written to the instance),
/// and whether it is waiting for the client: the upstream timeout counts from its last move, so
/// an upload that keeps moving never expires, and the instance's time to answer starts when
/// the body has all been sent.
#[derive(Clone)]
pub struct Clock(Arc<Mutex<(Instant, bool)>>);

impl Clock {
    fn new() -> Self {
        Self(Arc::new(Mutex::new((Instant::now(), false))))
    }

    /// `moved`: a piece went through; `waiting_for_client`: the client's body has nothing yet.
    fn moved(&self, moved: bool, waiting_for_client: bool) {
        let mut state = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if moved {
            state.0 = Instant::now();
        }
        state.1 = waiting_for_client;
    }

    /// The last move, and whether the body then waited for the client.
    pub fn last(&self) -> (Instant, bool) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}
