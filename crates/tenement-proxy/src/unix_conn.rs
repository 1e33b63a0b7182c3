//! A Unix-socket connection to an instance that the event loop watches for reads only, until a
//! write would block.
//!
//! Why: a Unix socket signals "writable" every time its peer reads (the kernel's
//! `unix_write_space` runs for each buffer the app consumes), so a socket registered for
//! writes too, as tokio's `UnixStream` is, costs the front door one more epoll event (and,
//! when its thread sleeps, a wakeup) per proxied request, for nothing: a request head fits
//! the socket buffer. Writes here go straight to the socket; only one that would block adds
//! write interest (a second descriptor of the socket, registered for writes) for the rest of
//! the connection's life: a large upload.

use std::io::{self, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use crate::endpoint::{Endpoint, Io, connect_unix};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};

pub struct UnixConn {
    /// Registered for reads only.
    stream: AsyncFd<UnixStream>,
    /// A second descriptor of the same socket, registered for writes: made when a write
    /// first blocks.
    writer: Option<AsyncFd<UnixStream>>,
}

/// Connects to an instance for the proxy: a Unix socket as a [`UnixConn`].
pub async fn connect(endpoint: &Endpoint) -> io::Result<Box<dyn Io>> {
    match endpoint {
        Endpoint::Unix(path, peer) => {
            Ok(Box::new(UnixConn::new(connect_unix(path, &**peer).await?)?))
        }
        tcp => tcp.connect().await,
    }
}

impl UnixConn {
    /// Takes over a connected stream (it leaves its own reactor registration).
    pub fn new(stream: tokio::net::UnixStream) -> io::Result<Self> {
        Ok(Self {
            stream: register(stream.into_std()?, Interest::READABLE)?,
            writer: None,
        })
    }
}

fn register(stream: UnixStream, interest: Interest) -> io::Result<AsyncFd<UnixStream>> {
    // SAFETY: the stream owns its descriptor, which stays open and the same until the
    // `AsyncFd` that owns the stream is dropped.
    unsafe { AsyncFd::register_with_interest(stream, interest) }.map_err(|e| e.into_parts().1)
}

impl AsyncRead for UnixConn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut ready = ready!(self.stream.poll_read_ready(cx))?;
            // SAFETY: only the bytes read(2) reports are marked filled, below.
            let unfilled = unsafe { buf.unfilled_mut() };
            let room = unfilled.len();
            match ready.try_io(|fd| read(fd.as_raw_fd(), unfilled)) {
                Ok(Ok(n)) => {
                    // Less than asked for: the socket is drained (epoll says when more comes),
                    // which saves the read that would only say EAGAIN. (tokio does the same.)
                    if n > 0 && n < room {
                        ready.clear_ready();
                    }
                    // SAFETY: read(2) wrote these `n` bytes.
                    unsafe { buf.assume_init(n) };
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

/// read(2) into a buffer that need not be initialised (as tokio's own sockets read).
fn read(fd: RawFd, into: &mut [MaybeUninit<u8>]) -> io::Result<usize> {
    // SAFETY: the kernel writes at most `into.len()` bytes, into memory `into` owns.
    let n = unsafe { libc::read(fd, into.as_mut_ptr().cast(), into.len()) };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

impl AsyncWrite for UnixConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            if let Some(writer) = &self.writer {
                let mut ready = ready!(writer.poll_write_ready(cx))?;
                match ready.try_io(|fd| fd.get_ref().write(data)) {
                    Ok(written) => return Poll::Ready(written),
                    Err(_would_block) => continue,
                }
            }
            match self.stream.get_ref().write(data) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let dup = self.stream.get_ref().try_clone()?;
                    self.writer = Some(register(dup, Interest::WRITABLE)?);
                }
                written => return Poll::Ready(written),
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.stream.get_ref().shutdown(std::net::Shutdown::Write))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_write_that_blocks_waits_for_room_and_reads_still_come() {
        let (ours, mut theirs) = tokio::net::UnixStream::pair().unwrap();
        let mut conn = UnixConn::new(ours).unwrap();
        // Far more than a socket buffer holds: the write blocks until the peer has read.
        let data: Vec<u8> = (0..4 << 20).map(|i: u32| i as u8).collect();
        let len = data.len();
        let peer = tokio::spawn(async move {
            let mut got = vec![0; len];
            theirs.read_exact(&mut got).await.unwrap();
            theirs.write_all(b"thanks").await.unwrap();
            let mut rest = Vec::new();
            theirs.read_to_end(&mut rest).await.unwrap();
            (got, rest)
        });
        conn.write_all(&data).await.unwrap();
        assert!(conn.writer.is_some(), "the write never blocked");
        let mut reply = [0; 6];
        conn.read_exact(&mut reply).await.unwrap();
        assert_eq!(&reply, b"thanks");
        conn.write_all(b"bye").await.unwrap();
        conn.shutdown().await.unwrap();
        let (got, rest) = peer.await.unwrap();
        assert!(got == data, "the bytes arrived changed");
        assert_eq!(rest, b"bye", "then the end of the stream");
    }

    #[tokio::test]
    async fn reads_end_when_the_peer_closes() {
        let (ours, mut theirs) = tokio::net::UnixStream::pair().unwrap();
        let mut conn = UnixConn::new(ours).unwrap();
        theirs.write_all(b"last words").await.unwrap();
        drop(theirs);
        let mut got = Vec::new();
        conn.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"last words");
    }
}
