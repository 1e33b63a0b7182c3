//! How a response body ends (RFC 9112 §6): a length, `chunked` coding, or the connection's
//! close; and the decoding of a body's pieces out of the bytes read so far.

use bytes::{Buf, Bytes, BytesMut};

use crate::upstream::{UpstreamError, malformed};

/// Longest chunk-size line or trailer section accepted.
const MAX_CHUNK_META: usize = 16 * 1024;

/// How the rest of a response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// This many bytes still to come.
    Length(u64),
    /// `Transfer-Encoding: chunked`, at this step of decoding.
    Chunked(Chunk),
    /// Until the instance closes the connection.
    Close,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunk {
    /// Expecting a chunk-size line.
    Size,
    /// Inside a chunk, with this many bytes to come.
    Data(u64),
    /// Expecting the CRLF that ends a chunk.
    DataEnd,
    /// After the last chunk: trailer lines until an empty one.
    Trailers,
    Done,
}

impl Framing {
    pub fn is_done(self) -> bool {
        matches!(self, Framing::Length(0) | Framing::Chunked(Chunk::Done))
    }
}

pub enum Piece {
    Data(Bytes),
    End,
    /// More bytes are needed.
    More,
}

/// Takes the next piece of body out of `buf`.
pub fn decode(framing: &mut Framing, buf: &mut BytesMut) -> Result<Piece, UpstreamError> {
    loop {
        match framing {
            Framing::Length(0) | Framing::Chunked(Chunk::Done) => return Ok(Piece::End),
            _ if buf.is_empty() => return Ok(Piece::More),
            Framing::Close => return Ok(Piece::Data(buf.split().freeze())),
            Framing::Length(left) => {
                let n = (*left).min(buf.len() as u64);
                *left -= n;
                return Ok(Piece::Data(buf.split_to(n as usize).freeze()));
            }
            Framing::Chunked(Chunk::Data(left)) => {
                let n = (*left).min(buf.len() as u64);
                *left -= n;
                if *left == 0 {
                    *framing = Framing::Chunked(Chunk::DataEnd);
                }
                return Ok(Piece::Data(buf.split_to(n as usize).freeze()));
            }
            Framing::Chunked(step) => {
                let consumed = match step {
                    Chunk::Size => match httparse::parse_chunk_size(buf) {
                        Ok(httparse::Status::Complete((used, size))) => {
                            *step = if size == 0 {
                                Chunk::Trailers
                            } else {
                                Chunk::Data(size)
                            };
                            Some(used)
                        }
                        Ok(httparse::Status::Partial) => None,
                        Err(_) => return Err(malformed("bad chunk size")),
                    },
                    Chunk::DataEnd if buf.len() < 2 => None,
                    Chunk::DataEnd if buf.starts_with(b"\r\n") => {
                        *step = Chunk::Size;
                        Some(2)
                    }
                    Chunk::DataEnd => return Err(malformed("chunk without its CRLF")),
                    // Trailers are not forwarded: skip lines up to the empty one.
                    Chunk::Trailers => buf.windows(2).position(|w| w == b"\r\n").map(|at| {
                        if at == 0 {
                            *step = Chunk::Done;
                        }
                        at + 2
                    }),
                    Chunk::Data(_) | Chunk::Done => unreachable!("handled above"),
                };
                match consumed {
                    Some(n) => {
                        buf.advance(n);
                    }
                    None if buf.len() > MAX_CHUNK_META => {
                        return Err(malformed("chunk metadata too long"));
                    }
                    None => return Ok(Piece::More),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes `wire` fed in pieces of `step` bytes; returns the body, or the error.
    fn decode_all(mut framing: Framing, wire: &[u8], step: usize) -> Result<Vec<u8>, String> {
        let (mut buf, mut body) = (BytesMut::new(), Vec::new());
        let mut feed = wire.chunks(step);
        loop {
            match decode(&mut framing, &mut buf).map_err(|e| e.to_string())? {
                Piece::Data(d) => body.extend_from_slice(&d),
                Piece::End => return Ok(body),
                Piece::More => match feed.next() {
                    Some(piece) => buf.extend_from_slice(piece),
                    None if framing == Framing::Close => return Ok(body),
                    None => return Err("ran out".into()),
                },
            }
        }
    }

    #[test]
    fn chunked_bodies_decode_in_any_split() {
        let wire = b"5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\nx-trailer: 1\r\n\r\n";
        for step in [1, 2, 3, 7, wire.len()] {
            assert_eq!(
                decode_all(Framing::Chunked(Chunk::Size), wire, step).unwrap(),
                b"hello, world",
                "fed {step} bytes at a time"
            );
        }
        assert!(decode_all(Framing::Chunked(Chunk::Size), b"zz\r\n", 4).is_err());
        assert!(decode_all(Framing::Chunked(Chunk::Size), b"2\r\nabXY", 8).is_err());
        assert!(decode_all(Framing::Chunked(Chunk::Size), b"5\r\nhel", 8).is_err());
    }

    #[test]
    fn length_and_close_framing() {
        assert_eq!(
            decode_all(Framing::Length(3), b"abcdef", 2).unwrap(),
            b"abc"
        );
        assert_eq!(decode_all(Framing::Length(0), b"", 1).unwrap(), b"");
        assert_eq!(
            decode_all(Framing::Close, b"all of it", 4).unwrap(),
            b"all of it"
        );
    }
}
