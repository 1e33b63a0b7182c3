//! Output capture: stdout/stderr read line by line into a bounded per-instance tail.
//!
//! Lines longer than [`MAX_LINE`] are cut (the rest of the line is skipped and counted), invalid
//! UTF-8 is replaced, and the reader never stops reading, so a chatty or binary-spewing app can
//! neither block on a full pipe nor break capture.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tenement_core::InstanceKey;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::sync::broadcast;

/// Longest line kept, in bytes; the rest is dropped and noted.
pub const MAX_LINE: usize = 16 * 1024;
/// Lines kept per instance.
const TAIL_LINES: usize = 1000;
/// Bytes kept per instance.
const TAIL_BYTES: usize = 256 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    Stdout,
    Stderr,
}

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

/// Reads `pipe` until EOF, line by line, into `tail` and `sink`.
pub async fn capture(
    pipe: impl AsyncRead + Unpin,
    instance: Arc<InstanceKey>,
    stream: Stream,
    tail: Arc<Tail>,
    sink: Sink,
) {
    let mut reader = BufReader::with_capacity(4096, pipe);
    let mut line: Vec<u8> = Vec::new();
    let mut dropped = 0usize;
    loop {
        let (done, used, eof) = match reader.fill_buf().await {
            Ok([]) | Err(_) => (!line.is_empty() || dropped > 0, 0, true),
            Ok(buf) => match memchr(buf) {
                Some(i) => {
                    keep(&mut line, &mut dropped, &buf[..i]);
                    (true, i + 1, false)
                }
                None => {
                    keep(&mut line, &mut dropped, buf);
                    (false, buf.len(), false)
                }
            },
        };
        reader.consume(used);
        if done {
            let mut text = String::from_utf8_lossy(&line).into_owned();
            if dropped > 0 {
                text.push_str(&format!(" [line truncated: {dropped} more bytes dropped]"));
            }
            let entry = Arc::new(LogLine {
                instance: instance.clone(),
                ts_ms: now_ms(),
                stream,
                text,
            });
            sink.send(&tail, entry);
            line.clear();
            if line.capacity() > 2 * 4096 {
                line.shrink_to(256);
            }
            dropped = 0;
        }
        if eof {
            return;
        }
    }
}

fn keep(line: &mut Vec<u8>, dropped: &mut usize, bytes: &[u8]) {
    let room = MAX_LINE.saturating_sub(line.len());
    let take = room.min(bytes.len());
    line.extend_from_slice(&bytes[..take]);
    *dropped += bytes.len() - take;
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
        input.extend_from_slice(b"\nbad \xff\xfe utf8\nlast without newline");
        let tail = Arc::new(Tail::default());
        let sink = Sink {
            feed: broadcast::channel(4).0,
            store: None,
        };
        let key = Arc::new("api:prod".parse().unwrap());
        capture(&input[..], key, Stream::Stdout, tail.clone(), sink).await;
        let lines: Vec<String> = tail.last(10).iter().map(|l| l.text.clone()).collect();
        assert_eq!(
            lines.len(),
            4,
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
        assert_eq!(lines[3], "last without newline");
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
