//! A minimal HTTP/1.1 client connection: requests are written as pre-built
//! bytes, responses are parsed just enough to find where they end
//! (Content-Length or chunked), and bodies are counted and dropped.
//!
//! Deliberately not hyper: pre-serialized requests make the per-request cost
//! of the load generator a write and a read, which matters when the load
//! tool shares two cores with the proxy and the upstream.

use std::io;
use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest response head accepted.
const MAX_HEAD: usize = 64 << 10;

pub struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

pub struct Response {
    pub status: u16,
    pub body_len: u64,
    /// The server will close the connection after this response.
    pub close: bool,
    /// The first bytes of the body of a non-2xx response, for diagnostics.
    pub error_body: Option<String>,
}

impl Conn {
    pub async fn connect(addr: SocketAddr, buf_size: usize) -> io::Result<Self> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Self {
            stream,
            buf: vec![0; buf_size.max(MAX_HEAD)],
            start: 0,
            end: 0,
        })
    }

    pub async fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes).await
    }

    /// Reads more bytes into the buffer, compacting it first if needed.
    async fn fill(&mut self) -> io::Result<()> {
        if self.start > 0 && self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        if self.end == self.buf.len() {
            if self.start == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "response head too large",
                ));
            }
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let n = self.stream.read(&mut self.buf[self.end..]).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed mid-response",
            ));
        }
        self.end += n;
        Ok(())
    }

    /// Reads a line ending in CRLF (without it) from the buffer.
    async fn line(&mut self) -> io::Result<Vec<u8>> {
        loop {
            if let Some(i) = find(&self.buf[self.start..self.end], b"\r\n") {
                let line = self.buf[self.start..self.start + i].to_vec();
                self.start += i + 2;
                return Ok(line);
            }
            self.fill().await?;
        }
    }

    /// Discards `n` body bytes; returns how many were read.
    async fn skip(&mut self, mut n: u64, keep: &mut Option<Vec<u8>>) -> io::Result<()> {
        while n > 0 {
            if self.start == self.end {
                self.start = 0;
                self.end = 0;
                self.fill().await?;
            }
            let avail = (self.end - self.start) as u64;
            let take = avail.min(n) as usize;
            if let Some(k) = keep.as_mut() {
                let room = 512usize.saturating_sub(k.len()).min(take);
                k.extend_from_slice(&self.buf[self.start..self.start + room]);
            }
            self.start += take;
            n -= take as u64;
        }
        Ok(())
    }

    pub async fn read_response(&mut self, head_only: bool) -> io::Result<Response> {
        // Head.
        let head_end = loop {
            if let Some(i) = find(&self.buf[self.start..self.end], b"\r\n\r\n") {
                break self.start + i + 4;
            }
            self.fill().await?;
        };
        let head = &self.buf[self.start..head_end];
        let bad = || io::Error::new(io::ErrorKind::InvalidData, "malformed response head");
        if head.len() < 12 || !head.starts_with(b"HTTP/1.") {
            return Err(bad());
        }
        let status: u16 = std::str::from_utf8(&head[9..12])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(bad)?;
        let mut content_length: Option<u64> = None;
        let mut chunked = false;
        let mut close = head.starts_with(b"HTTP/1.0");
        for line in head.split(|&b| b == b'\n').skip(1) {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let Some(colon) = line.iter().position(|&b| b == b':') else {
                continue;
            };
            let name = &line[..colon];
            let value = trim(&line[colon + 1..]);
            if name.eq_ignore_ascii_case(b"content-length") {
                content_length = std::str::from_utf8(value).ok().and_then(|v| v.parse().ok());
            } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
                chunked = value.eq_ignore_ascii_case(b"chunked");
            } else if name.eq_ignore_ascii_case(b"connection") {
                close = value.eq_ignore_ascii_case(b"close");
            }
        }
        self.start = head_end;
        let mut keep = (!(200..300).contains(&status)).then(Vec::new);
        let no_body = head_only || status == 204 || status == 304 || (100..200).contains(&status);
        let mut body_len = 0u64;
        if no_body {
        } else if chunked {
            loop {
                let line = self.line().await?;
                let size_part = line.split(|&b| b == b';').next().unwrap_or(&[]);
                let size = std::str::from_utf8(trim(size_part))
                    .ok()
                    .and_then(|s| u64::from_str_radix(s, 16).ok())
                    .ok_or_else(bad)?;
                if size == 0 {
                    // Trailers until an empty line.
                    while !self.line().await?.is_empty() {}
                    break;
                }
                self.skip(size, &mut keep).await?;
                body_len += size;
                if !self.line().await?.is_empty() {
                    return Err(bad());
                }
            }
        } else if let Some(n) = content_length {
            self.skip(n, &mut keep).await?;
            body_len = n;
        } else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "response without length (read-until-close is not supported)",
            ));
        }
        Ok(Response {
            status,
            body_len,
            close,
            error_body: keep.map(|k| String::from_utf8_lossy(&k).into_owned()),
        })
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn trim(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}
