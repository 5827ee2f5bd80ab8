//! The target: its URL, the request bytes sent on every exchange, and how to open a connection
//! to it (TCP, optionally TLS with rustls), plus one request/response exchange on a connection.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::parse::{Outcome, ParseError, ResponseReader};

/// `http://host[:port]/path` or `https://...`, split into the parts the generator needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    pub tls: bool,
    /// Host as written, without brackets for IPv6 (what SNI and name checks use).
    pub host: String,
    pub port: u16,
    /// `host[:port]` as written in the URL: the Host header.
    pub authority: String,
    pub path: String,
}

impl Url {
    pub fn parse(s: &str) -> Result<Url, String> {
        let (tls, rest) = if let Some(r) = s.strip_prefix("http://") {
            (false, r)
        } else if let Some(r) = s.strip_prefix("https://") {
            (true, r)
        } else {
            return Err(format!("{s}: URL must start with http:// or https://"));
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let (host, port) = if let Some(r) = authority.strip_prefix('[') {
            let (h, after) = r
                .split_once(']')
                .ok_or_else(|| format!("{s}: unclosed ["))?;
            (h, after.strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        let port = match port {
            Some(p) => p.parse().map_err(|_| format!("{s}: bad port {p:?}"))?,
            None if tls => 443,
            None => 80,
        };
        if host.is_empty() {
            return Err(format!("{s}: no host"));
        }
        Ok(Url {
            tls,
            host: host.to_string(),
            port,
            authority: authority.to_string(),
            path: path.to_string(),
        })
    }
}

/// The GET sent on every exchange. `close` asks the server to close after answering.
pub fn request_bytes(url: &Url, headers: &[String], close: bool) -> Vec<u8> {
    let mut r = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: kcdload\r\n",
        url.path, url.authority
    );
    for h in headers {
        r.push_str(h.trim());
        r.push_str("\r\n");
    }
    if close {
        r.push_str("Connection: close\r\n");
    }
    r.push_str("\r\n");
    r.into_bytes()
}

/// Builds the rustls client: the CAs in `cacert` are the only roots; SNI comes from the URL.
pub fn tls_connector(
    cacert: Option<&std::path::Path>,
    resumption: bool,
) -> Result<TlsConnector, String> {
    let mut roots = rustls::RootCertStore::empty();
    if let Some(path) = cacert {
        let certs =
            CertificateDer::pem_file_iter(path).map_err(|e| format!("{}: {e}", path.display()))?;
        for c in certs {
            let c = c.map_err(|e| format!("{}: {e}", path.display()))?;
            roots
                .add(c)
                .map_err(|e| format!("{}: {e}", path.display()))?;
        }
    }
    if roots.is_empty() {
        return Err("TLS needs --cacert with at least one CA certificate".into());
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    if !resumption {
        config.resumption = rustls::client::Resumption::disabled();
    }
    Ok(TlsConnector::from(Arc::new(config)))
}

/// Where and how to connect; cloned into nothing: shared by reference from every task.
pub struct Dialer {
    pub addr: SocketAddr,
    pub tls: Option<(TlsConnector, ServerName<'static>)>,
}

/// Which step of opening a connection failed.
#[derive(Debug)]
pub enum DialError {
    Connect(io::Error),
    Tls(io::Error),
}

impl Dialer {
    pub async fn dial(&self) -> Result<Stream, DialError> {
        let tcp = TcpStream::connect(self.addr)
            .await
            .map_err(DialError::Connect)?;
        tcp.set_nodelay(true).map_err(DialError::Connect)?;
        match &self.tls {
            None => Ok(Stream::Plain(tcp)),
            Some((connector, name)) => {
                let tls = connector
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(DialError::Tls)?;
                Ok(Stream::Tls(Box::new(tls)))
            }
        }
    }
}

/// A connection, plain or TLS.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Stream {
    /// Protocol version and cipher suite, for the result line.
    pub fn tls_description(&self) -> Option<String> {
        match self {
            Stream::Plain(_) => None,
            Stream::Tls(s) => {
                let conn = s.get_ref().1;
                Some(format!(
                    "{:?} {:?}",
                    conn.protocol_version()?,
                    conn.negotiated_cipher_suite()?.suite()
                ))
            }
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// A connection's receive buffer. Bytes in `[start, end)` are received and not yet consumed.
pub struct RecvBuf {
    buf: Box<[u8]>,
    start: usize,
    end: usize,
}

impl RecvBuf {
    pub fn new(size: usize) -> Self {
        RecvBuf {
            buf: vec![0; size].into_boxed_slice(),
            start: 0,
            end: 0,
        }
    }

    /// Forgets any bytes (a new connection starts empty).
    pub fn clear(&mut self) {
        self.start = 0;
        self.end = 0;
    }
}

/// Why an exchange failed.
#[derive(Debug)]
pub enum ExchangeError {
    Io(io::Error),
    Parse(ParseError),
    HeadTooLarge,
}

impl From<io::Error> for ExchangeError {
    fn from(e: io::Error) -> Self {
        ExchangeError::Io(e)
    }
}

impl From<ParseError> for ExchangeError {
    fn from(e: ParseError) -> Self {
        ExchangeError::Parse(e)
    }
}

/// Sends `request` and reads one whole response. Returns the outcome and the bytes received.
pub async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    request: &[u8],
    rb: &mut RecvBuf,
    reader: &mut ResponseReader,
) -> Result<(Outcome, u64), ExchangeError> {
    stream.write_all(request).await?;
    stream.flush().await?;
    reader.reset();
    let mut received = 0u64;
    loop {
        if rb.start < rb.end {
            let step = reader.advance(&rb.buf[rb.start..rb.end])?;
            rb.start += step.consumed;
            if rb.start == rb.end {
                rb.clear();
            }
            if step.done {
                return Ok((reader.outcome(), received));
            }
        }
        if rb.end == rb.buf.len() {
            // Only an incomplete head stays unconsumed: move it to the front to make room.
            if rb.start == 0 {
                return Err(ExchangeError::HeadTooLarge);
            }
            rb.buf.copy_within(rb.start..rb.end, 0);
            rb.end -= rb.start;
            rb.start = 0;
        }
        let n = stream.read(&mut rb.buf[rb.end..]).await?;
        if n == 0 {
            let mut outcome = reader.eof()?;
            outcome.close = true;
            return Ok((outcome, received));
        }
        rb.end += n;
        received += n as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// tls, host, port, authority, path.
    type Parts<'a> = (bool, &'a str, u16, &'a str, &'a str);

    #[test]
    fn urls_parse() {
        #[rustfmt::skip]
        let table: &[(&str, Option<Parts>)] = &[
            ("http://127.0.0.1:8080/16k", Some((false, "127.0.0.1", 8080, "127.0.0.1:8080", "/16k"))),
            ("https://localhost/", Some((true, "localhost", 443, "localhost", "/"))),
            ("http://example", Some((false, "example", 80, "example", "/"))),
            ("https://[::1]:8443/a?b", Some((true, "::1", 8443, "[::1]:8443", "/a?b"))),
            ("ftp://x/", None),
            ("http://:80/", None),
            ("http://h:x/", None),
        ];
        for (s, want) in table {
            let got = Url::parse(s)
                .ok()
                .map(|u| (u.tls, u.host, u.port, u.authority, u.path));
            let want = want
                .map(|(t, h, p, a, path)| (t, h.to_string(), p, a.to_string(), path.to_string()));
            assert_eq!(got, want, "{s}");
        }
    }

    #[test]
    fn request_has_host_headers_and_close() {
        let u = Url::parse("http://127.0.0.1:1/x").unwrap();
        let r = request_bytes(&u, &["Authorization: Basic YQ==".into()], true);
        assert_eq!(
            r,
            b"GET /x HTTP/1.1\r\nHost: 127.0.0.1:1\r\nUser-Agent: kcdload\r\nAuthorization: Basic YQ==\r\nConnection: close\r\n\r\n"
        );
    }
}
