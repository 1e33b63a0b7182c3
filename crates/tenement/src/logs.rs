//! Output capture: stdout/stderr read line by line into a bounded per-instance tail.
//!
//! Lines longer than [`MAX_LINE`] are cut (the rest of the line is skipped and counted), invalid
//! UTF-8 is replaced, and the reader never stops reading, so a chatty or binary-spewing app can
//! neither block on a full pipe nor break capture.

use std::collections::VecDeque;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tenement_core::InstanceKey;
use tokio::sync::broadcast;

/// Longest line kept, in bytes; the rest is dropped and noted.
pub const MAX_LINE: usize = 16 * 1024;
/// Lines kept per instance.
const TAIL_LINES: usize = 1000;
/// Bytes kept per instance.
const TAIL_BYTES: usize = 256 * 1024;

pub use tenement_api::Stream;

#[derive(Debug, Clone, Serialize)]
pub struct LogLine {
    pub instance: Arc<InstanceKey>,
    /// Milliseconds since the Unix epoch.
    pub ts_ms: u64,
    pub stream: Stream,
    pub text: String,
}

/// The last lines of one instance.
#[derive(Default)]
pub struct Tail {
    inner: Mutex<TailInner>,
}

#[derive(Default)]
struct TailInner {
    lines: VecDeque<Arc<LogLine>>,
    bytes: usize,
}

impl Tail {
    fn push(&self, line: Arc<LogLine>) {
        let mut t = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        t.bytes += line.text.len();
        t.lines.push_back(line);
        while t.lines.len() > TAIL_LINES || t.bytes > TAIL_BYTES {
            match t.lines.pop_front() {
                Some(old) => t.bytes -= old.text.len(),
                None => break,
            }
        }
    }

    /// The newest `limit` lines, oldest first.
    pub fn last(&self, limit: usize) -> Vec<Arc<LogLine>> {
        let t = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let skip = t.lines.len().saturating_sub(limit);
        t.lines.iter().skip(skip).cloned().collect()
    }
}

/// Where captured lines go besides the instance's tail: the live feed (`-f`, SSE) and the
/// persistent store.
#[derive(Clone)]
pub struct Sink {
    pub feed: broadcast::Sender<Arc<LogLine>>,
    pub store: Option<crate::LogStore>,
}

impl Sink {
    pub fn send(&self, tail: &Tail, line: Arc<LogLine>) {
        tail.push(line.clone());
        if let Some(store) = &self.store {
            store.push(line.clone());
        }
        let _ = self.feed.send(line);
    }
}

/// Reads `pipe` until EOF or `stop`, line by line, into `tail` and `sink`; after `stop`,
/// gives the pipe back (for a successor server).
///
/// An idle pipe holds no buffer: bytes are read into a stack buffer only once the pipe is
/// readable, so a thousand quiet instances do not keep two 4 KB read buffers each (that was a
/// third of the supervisor's memory per instance).
pub async fn capture(
    pipe: OwnedFd,
    instance: Arc<InstanceKey>,
    stream: Stream,
    tail: Arc<Tail>,
    sink: Sink,
    stop: tokio_util::sync::CancellationToken,
) -> Option<OwnedFd> {
    let mut lines = Lines {
        instance,
        stream,
        tail,
        sink,
        line: Vec::new(),
        dropped: 0,
    };
    let pipe = match tokio::net::unix::pipe::Receiver::from_owned_fd(pipe) {
        Ok(pipe) => pipe,
        Err(e) => {
            tracing::warn!(instance = %lines.instance, ?stream, error = %e, "cannot capture output");
            return None;
        }
    };
    let mut stopped = false;
    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => {
                stopped = true;
                break;
            }
            ready = pipe.readable() => if ready.is_err() { break },
        }
        // `readable()` takes no part in tokio's cooperative budget: under a flood it is
        // always ready, and without this the loop would hold its worker thread forever,
        // starving the tasks queued behind it (other instances' capture, probes).
        tokio::task::consume_budget().await;
        let mut chunk = [0u8; 4096];
        match pipe.try_read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => lines.feed(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => break,
        }
    }
    lines.finish();
    stopped.then(|| pipe.into_nonblocking_fd().ok()).flatten()
}

/// Cuts a byte stream into log lines.
struct Lines {
    instance: Arc<InstanceKey>,
    stream: Stream,
    tail: Arc<Tail>,
    sink: Sink,
    /// The line so far (empty, with no allocation, between lines).
    line: Vec<u8>,
    /// Bytes of the current line beyond [`MAX_LINE`].
    dropped: usize,
}

impl Lines {
    fn feed(&mut self, mut bytes: &[u8]) {
        while let Some(i) = memchr(bytes) {
            self.keep(&bytes[..i]);
            self.emit();
            bytes = &bytes[i + 1..];
        }
        self.keep(bytes);
    }

    /// The unterminated last line, if any.
    fn finish(&mut self) {
        if !self.line.is_empty() || self.dropped > 0 {
            self.emit();
        }
    }

    fn keep(&mut self, bytes: &[u8]) {
        let room = MAX_LINE.saturating_sub(self.line.len());
        let take = room.min(bytes.len());
        self.line.extend_from_slice(&bytes[..take]);
        self.dropped += bytes.len() - take;
    }

    fn emit(&mut self) {
        if self.dropped > 0 {
            // The cut may split a character: its first bytes go with the dropped rest.
            if let Err(e) = std::str::from_utf8(&self.line)
                && e.error_len().is_none()
            {
                self.dropped += self.line.len() - e.valid_up_to();
                self.line.truncate(e.valid_up_to());
            }
        } else if self.line.last() == Some(&b'\r') {
            self.line.pop(); // a CRLF line end
        }
        let mut text = match String::from_utf8(std::mem::take(&mut self.line)) {
            Ok(text) => text,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        };
        if self.dropped > 0 {
            text.push_str(&format!(
                " [line truncated: {} more bytes dropped]",
                self.dropped
            ));
            self.dropped = 0;
        }
        let entry = Arc::new(LogLine {
            instance: self.instance.clone(),
            ts_ms: now_ms(),
            stream: self.stream,
            text,
        });
        self.sink.send(&self.tail, entry);
    }
}

fn memchr(buf: &[u8]) -> Option<usize> {
    buf.iter().position(|&b| b == b'\n')
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn long_lines_and_bad_utf8() {
        let mut input = Vec::new();
        input.extend_from_slice(b"first\n");
        input.extend(std::iter::repeat_n(b'x', 10 * 1024 * 1024));
        input.extend_from_slice(b"\nbad \xff\xfe utf8\ncrlf\r\n");
        // Cut inside the two bytes of an e-acute: the whole character goes with the rest.
        input.extend(std::iter::repeat_n(b'b', MAX_LINE - 1));
        input.extend_from_slice("\u{e9}bbbbbbbbbb\nlast without newline".as_bytes());
        let tail = Arc::new(Tail::default());
        let sink = Sink {
            feed: broadcast::channel(4).0,
            store: None,
        };
        let key = Arc::new("api:prod".parse().unwrap());
        // Through a real pipe, written from another thread.
        let (read, write) = nix::unistd::pipe().unwrap();
        let writer = std::thread::spawn(move || {
            std::io::Write::write_all(&mut std::fs::File::from(write), &input).unwrap()
        });
        capture(
            read,
            key,
            Stream::Stdout,
            tail.clone(),
            sink,
            Default::default(),
        )
        .await;
        writer.join().unwrap();
        let lines: Vec<String> = tail.last(10).iter().map(|l| l.text.clone()).collect();
        assert_eq!(
            lines.len(),
            6,
            "{:?}",
            lines.iter().map(|l| l.len()).collect::<Vec<_>>()
        );
        assert_eq!(lines[0], "first");
        assert!(lines[1].starts_with(&"x".repeat(MAX_LINE)));
        assert!(lines[1].ends_with(&format!(
            "[line truncated: {} more bytes dropped]",
            10 * 1024 * 1024 - MAX_LINE
        )));
        assert_eq!(lines[2], "bad \u{fffd}\u{fffd} utf8");
        assert_eq!(lines[3], "crlf");
        let cut = format!(
            "{} [line truncated: 12 more bytes dropped]",
            "b".repeat(MAX_LINE - 1)
        );
        assert_eq!(lines[4], cut);
        assert_eq!(lines[5], "last without newline");
    }

    #[test]
    fn tail_is_bounded() {
        let tail = Tail::default();
        let key = Arc::new("api:prod".parse::<InstanceKey>().unwrap());
        for i in 0..5000 {
            tail.push(Arc::new(LogLine {
                instance: key.clone(),
                ts_ms: 0,
                stream: Stream::Stderr,
                text: format!("line {i}"),
            }));
        }
        let last = tail.last(usize::MAX);
        assert_eq!(last.len(), TAIL_LINES);
        assert_eq!(last.last().unwrap().text, "line 4999");
        assert_eq!(tail.last(2).len(), 2);
    }
}
