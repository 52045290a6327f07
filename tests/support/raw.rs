//! A raw HTTP/1.1 connection, for seeing exactly what the server sends and how
//! it closes: a clean EOF or a reset.

use std::io;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Bounds every read, so a broken server fails a test instead of hanging it.
pub const READ_LIMIT: Duration = Duration::from_secs(15);

#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn closes(&self) -> bool {
        self.header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
    }
}

/// How a connection ended when we read past the last response.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    /// FIN: the server closed cleanly.
    Eof,
    /// RST: what a client sees as "connection reset by peer".
    Reset,
    /// More bytes came instead.
    Data(Vec<u8>),
}

pub struct RawConn<S> {
    pub stream: S,
    buf: Vec<u8>,
}

impl RawConn<tokio::net::TcpStream> {
    pub async fn connect(addr: std::net::SocketAddr) -> io::Result<Self> {
        Ok(Self::new(tokio::net::TcpStream::connect(addr).await?))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> RawConn<S> {
    pub fn new(stream: S) -> Self {
        Self {
            stream,
            buf: Vec::new(),
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes).await
    }

    pub async fn get(&mut self, path: &str) -> io::Result<RawResponse> {
        self.send(format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes())
            .await?;
        self.response().await
    }

    async fn fill(&mut self) -> io::Result<usize> {
        let mut chunk = [0u8; 8192];
        let n = tokio::time::timeout(READ_LIMIT, self.stream.read(&mut chunk))
            .await
            .map_err(|_| {
                io::Error::new(io::ErrorKind::TimedOut, "no bytes within the read limit")
            })??;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    /// Reads one response with a Content-Length or chunked body.
    pub async fn response(&mut self) -> io::Result<RawResponse> {
        let mut response = self.head().await?;
        self.body(&mut response).await?;
        Ok(response)
    }

    /// Reads a response's status line and headers only: for a streamed body,
    /// proof that the server is serving the request.
    pub async fn head(&mut self) -> io::Result<RawResponse> {
        let head_end = loop {
            if let Some(pos) = find(&self.buf, b"\r\n\r\n") {
                break pos;
            }
            if self.fill().await? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("closed before a response head ({} bytes)", self.buf.len()),
                ));
            }
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).into_owned();
        self.buf.drain(..head_end + 4);
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let status = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| io::Error::other(format!("bad status line {status_line:?}")))?;
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
            .collect();
        Ok(RawResponse {
            status,
            headers,
            body: Vec::new(),
        })
    }

    /// Reads the body of a response whose head [`Self::head`] read.
    pub async fn body(&mut self, response: &mut RawResponse) -> io::Result<()> {
        if let Some(len) = response.header("content-length") {
            let len: usize = len.parse().map_err(io::Error::other)?;
            while self.buf.len() < len {
                if self.fill().await? == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
            }
            response.body = self.buf.drain(..len).collect();
        } else if response.header("transfer-encoding") == Some("chunked") {
            response.body = self.chunked().await?;
        }
        Ok(())
    }

    async fn chunked(&mut self) -> io::Result<Vec<u8>> {
        let mut body = Vec::new();
        loop {
            let line_end = loop {
                if let Some(pos) = find(&self.buf, b"\r\n") {
                    break pos;
                }
                if self.fill().await? == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
            };
            let size =
                usize::from_str_radix(String::from_utf8_lossy(&self.buf[..line_end]).trim(), 16)
                    .map_err(io::Error::other)?;
            self.buf.drain(..line_end + 2);
            while self.buf.len() < size + 2 {
                if self.fill().await? == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
            }
            body.extend(self.buf.drain(..size));
            self.buf.drain(..2);
            if size == 0 {
                return Ok(body);
            }
        }
    }

    /// Reads until the server ends the connection, and says how.
    pub async fn end(&mut self) -> io::Result<End> {
        if !self.buf.is_empty() {
            return Ok(End::Data(std::mem::take(&mut self.buf)));
        }
        match self.fill().await {
            Ok(0) => Ok(End::Eof),
            Ok(_) => Ok(End::Data(std::mem::take(&mut self.buf))),
            Err(err) if err.kind() == io::ErrorKind::ConnectionReset => Ok(End::Reset),
            Err(err) => Err(err),
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
