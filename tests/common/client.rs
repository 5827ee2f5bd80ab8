//! A raw-socket HTTP/1.1 client: the tests write exact bytes (malformed ones included) and this
//! reads the answer with its own parser (Content-Length, chunked, close-delimited), so nothing
//! between the test and the proxy normalises either side.
//!
//! Requests name `Host: kcd.test` unless the client is told another host
//! ([`Client::with_host`]).
//!
//! Every read and write has a timeout ([`IO_TIMEOUT`] unless changed); reading methods return a
//! `Result<_, String>` whose error says what was received so far, and the panicking shorthands
//! ([`Client::request`], [`Client::read_final`]) put that in the failure message.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;

use super::{local, IO_TIMEOUT};

/// How a response body was delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// No body by definition (1xx, 204, 304, a response to HEAD).
    NoBody,
    Length(u64),
    Chunked,
    /// Read until the server closed the connection.
    Close,
}

/// A response head.
#[derive(Clone, Debug)]
pub struct Head {
    pub version: String,
    pub status: u16,
    pub reason: String,
    pub headers: Vec<(String, String)>,
    pub framing: Framing,
}

impl Head {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every value of header `name`, in order.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// Whether the server announced that it closes the connection after this response.
    pub fn connection_close(&self) -> bool {
        self.header_all("connection")
            .iter()
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("close"))
    }
}

/// A complete response.
#[derive(Clone, Debug)]
pub struct Response {
    pub head: Head,
    pub body: Vec<u8>,
    /// Status codes of the interim (1xx) responses that came before this one.
    pub interim: Vec<u16>,
}

impl Response {
    pub fn status(&self) -> u16 {
        self.head.status
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.header(name)
    }

    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.head.header_all(name)
    }

    /// See [`Head::connection_close`].
    pub fn connection_close(&self) -> bool {
        self.head.connection_close()
    }

    /// The `WWW-Authenticate` values, in order.
    pub fn challenges(&self) -> Vec<&str> {
        self.header_all("www-authenticate")
    }

    /// The decoded token of the first `WWW-Authenticate: SCHEME <base64>` (scheme compared
    /// case-insensitively).
    pub fn token(&self, scheme: &str) -> Option<Vec<u8>> {
        self.challenges().iter().find_map(|v| {
            let (s, t) = v.split_once(' ')?;
            if s.eq_ignore_ascii_case(scheme) {
                B64.decode(t.trim()).ok()
            } else {
                None
            }
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The value of the first `key=value` line of a text body (the lab backend's echo reports
    /// `x_kcd_user=`, `body_length=`, `body_sha256=`… that way).
    pub fn body_line(&self, key: &str) -> Option<String> {
        self.text()
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")).map(str::to_string))
    }

    /// The body as JSON (the echo server's answers); panics with the body if it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "response body is not JSON ({e}): status {} headers {:?} body {:?}",
                self.head.status,
                self.head.headers,
                preview(&self.body)
            )
        })
    }

    /// A one-line summary for assertion messages.
    pub fn summary(&self) -> String {
        format!(
            "{} {} {:?} headers={:?} body={:?}",
            self.head.status,
            self.head.reason,
            self.head.framing,
            self.head.headers,
            preview(&self.body)
        )
    }
}

/// The first 300 bytes of `b`, escaped, for messages.
pub fn preview(b: &[u8]) -> String {
    let s = String::from_utf8_lossy(&b[..b.len().min(300)]).into_owned();
    if b.len() > 300 {
        format!("{s}… ({} bytes)", b.len())
    } else {
        s
    }
}

/// Whether an I/O error means "nothing arrived before the timeout".
pub fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// One client connection.
pub struct Client {
    s: TcpStream,
    peer: SocketAddr,
    /// The `Host` of the requests it writes.
    host: String,
    buf: Vec<u8>,
    pos: usize,
    /// Whether the request being answered was HEAD (its response has no body).
    head_request: bool,
}

impl Client {
    /// Connects to 127.0.0.1:`port`, panicking with the reason on failure.
    #[track_caller]
    pub fn connect(port: u16) -> Client {
        Client::open(local(port))
    }

    pub fn try_connect(port: u16) -> io::Result<Client> {
        Client::try_open(local(port))
    }

    /// Connects to `addr`, panicking with the reason on failure.
    #[track_caller]
    pub fn open(addr: SocketAddr) -> Client {
        Client::try_open(addr).unwrap_or_else(|e| panic!("connect to {addr}: {e}"))
    }

    pub fn try_open(peer: SocketAddr) -> io::Result<Client> {
        let s = TcpStream::connect_timeout(&peer, Duration::from_secs(5))?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(IO_TIMEOUT))?;
        s.set_write_timeout(Some(IO_TIMEOUT))?;
        Ok(Client {
            s,
            peer,
            host: "kcd.test".into(),
            buf: Vec::new(),
            pos: 0,
            head_request: false,
        })
    }

    /// Names `host` in the `Host` header of the requests [`Client::request`] and
    /// [`Client::send_head`] write (bytes given to [`Client::send`] are sent as they are).
    pub fn with_host(mut self, host: &str) -> Client {
        self.host = host.into();
        self
    }

    pub fn set_read_timeout(&self, d: Duration) {
        self.s.set_read_timeout(Some(d)).expect("set_read_timeout");
    }

    pub fn stream(&self) -> &TcpStream {
        &self.s
    }

    /// Sends `bytes`; panics if the connection fails.
    #[track_caller]
    pub fn send(&mut self, bytes: &[u8]) {
        self.try_send(bytes)
            .unwrap_or_else(|e| panic!("send {} bytes to {}: {e}", bytes.len(), self.peer));
    }

    pub fn try_send(&mut self, bytes: &[u8]) -> io::Result<()> {
        if bytes.starts_with(b"HEAD ") {
            self.head_request = true;
        }
        self.s.write_all(bytes)
    }

    /// Marks the next response as the answer to a HEAD request (no body). [`Client::send`]
    /// does this by itself when the bytes start with `HEAD `; pipelined bursts need it said.
    pub fn next_response_answers_head(&mut self) {
        self.head_request = true;
    }

    /// A request head: the request line, `Host`, `headers` in order, then `Content-Length` if
    /// `content_length` is given.
    fn head_bytes(
        &self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        content_length: Option<usize>,
    ) -> Vec<u8> {
        let mut req = format!("{method} {target} HTTP/1.1\r\nHost: {}\r\n", self.host);
        for (n, v) in headers {
            req.push_str(&format!("{n}: {v}\r\n"));
        }
        if let Some(n) = content_length {
            req.push_str(&format!("Content-Length: {n}\r\n"));
        }
        req.push_str("\r\n");
        req.into_bytes()
    }

    /// Sends a request head only: the request line, `Host`, `headers` in order, then
    /// `Content-Length` if `content_length` is given. The body, if any, is the caller's to send.
    #[track_caller]
    pub fn send_head(
        &mut self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        content_length: Option<usize>,
    ) {
        let bytes = self.head_bytes(method, target, headers, content_length);
        self.send(&bytes);
    }

    /// Sends a request with a Content-Length body (none if `body` is empty and the method is
    /// GET/HEAD) and reads the final response. `headers` come after `Host`.
    #[track_caller]
    pub fn request(
        &mut self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Response {
        let content_length =
            (!body.is_empty() || !matches!(method, "GET" | "HEAD")).then_some(body.len());
        let mut bytes = self.head_bytes(method, target, headers, content_length);
        bytes.extend_from_slice(body);
        self.send(&bytes);
        self.read_final()
            .unwrap_or_else(|e| panic!("{method} {target}: {e}"))
    }

    #[track_caller]
    pub fn get(&mut self, target: &str) -> Response {
        self.request("GET", target, &[], b"")
    }

    /// Reads the next response head (interim 1xx responses included).
    pub fn read_head(&mut self) -> Result<Head, String> {
        let start = self.pos;
        let end = loop {
            if let Some(i) = find(&self.buf[self.pos..], b"\r\n\r\n") {
                break self.pos + i + 4;
            }
            if self.buf.len() - start > 1 << 20 {
                return Err("response head larger than 1 MiB".into());
            }
            match self.more() {
                Ok(0) => {
                    return Err(format!(
                        "connection closed before a complete response head; received {:?}",
                        preview(&self.buf[start..])
                    ))
                }
                Ok(_) => {}
                Err(e) => {
                    return Err(format!(
                        "reading a response head: {e}; received {:?}",
                        preview(&self.buf[start..])
                    ))
                }
            }
        };
        let head = String::from_utf8_lossy(&self.buf[start..end - 4]).into_owned();
        self.pos = end;
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or("");
        let mut parts = status_line.splitn(3, ' ');
        let version = parts.next().unwrap_or("").to_string();
        let status: u16 = parts
            .next()
            .and_then(|s| s.parse().ok())
            .filter(|_| version.starts_with("HTTP/1."))
            .ok_or_else(|| format!("bad status line {status_line:?}"))?;
        let reason = parts.next().unwrap_or("").to_string();
        let mut headers = Vec::new();
        for l in lines {
            let (n, v) = l
                .split_once(':')
                .ok_or_else(|| format!("bad response header line {l:?}"))?;
            headers.push((n.to_string(), v.trim().to_string()));
        }
        let mut head = Head {
            version,
            status,
            reason,
            headers,
            framing: Framing::NoBody,
        };
        head.framing = if status < 200 || status == 204 || status == 304 || self.head_request {
            Framing::NoBody
        } else if let Some(te) = head.header("transfer-encoding") {
            if te
                .rsplit(',')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("chunked"))
            {
                Framing::Chunked
            } else {
                Framing::Close
            }
        } else if let Some(cl) = head.header("content-length") {
            Framing::Length(
                cl.parse()
                    .map_err(|_| format!("bad response Content-Length {cl:?}"))?,
            )
        } else {
            Framing::Close
        };
        self.compact();
        Ok(head)
    }

    /// Reads the body of `head`, handing it to `sink` piece by piece. Returns its length.
    pub fn read_body_with(
        &mut self,
        head: &Head,
        sink: &mut dyn FnMut(&[u8]),
    ) -> Result<u64, String> {
        let n = match head.framing {
            Framing::NoBody => 0,
            Framing::Length(n) => {
                self.take_exact(n, sink)?;
                n
            }
            Framing::Close => {
                let mut n = 0;
                loop {
                    if self.pos == self.buf.len() {
                        match self.more() {
                            Ok(0) => break,
                            Ok(_) => {}
                            Err(e) => {
                                return Err(format!(
                                    "reading a close-delimited body after {n} bytes: {e}"
                                ))
                            }
                        }
                    }
                    sink(&self.buf[self.pos..]);
                    n += (self.buf.len() - self.pos) as u64;
                    self.pos = self.buf.len();
                    self.compact();
                }
                n
            }
            Framing::Chunked => self.read_chunked(sink)?,
        };
        if head.status >= 200 {
            self.head_request = false;
        }
        Ok(n)
    }

    /// Reads one complete response (it may be an interim 1xx one).
    pub fn read_response(&mut self) -> Result<Response, String> {
        let head = self.read_head()?;
        let mut body = Vec::new();
        self.read_body_with(&head, &mut |b| body.extend_from_slice(b))
            .map_err(|e| format!("{e} (response head: {} {:?})", head.status, head.headers))?;
        Ok(Response {
            head,
            body,
            interim: Vec::new(),
        })
    }

    /// Reads responses until a final (non-1xx) one, recording the interim ones.
    pub fn read_final(&mut self) -> Result<Response, String> {
        let mut interim = Vec::new();
        loop {
            let mut r = self.read_response()?;
            if r.head.status >= 200 {
                r.interim = interim;
                return Ok(r);
            }
            if r.head.status == 101 {
                return Err("unexpected 101 Switching Protocols".into());
            }
            interim.push(r.head.status);
        }
    }

    /// Reads until the peer closes. Ok(bytes received meanwhile) if it closes (FIN or reset)
    /// within `timeout`; Err with what was received if it is still open then.
    pub fn wait_closed(&mut self, timeout: Duration) -> Result<Vec<u8>, String> {
        let r = self.wait_closed_inner(timeout);
        let _ = self.s.set_read_timeout(Some(IO_TIMEOUT));
        r
    }

    fn wait_closed_inner(&mut self, timeout: Duration) -> Result<Vec<u8>, String> {
        let deadline = Instant::now() + timeout;
        let mut got = self.buf[self.pos..].to_vec();
        self.pos = self.buf.len();
        let mut tmp = [0u8; 16384];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!(
                    "connection still open after {timeout:?}; received {:?}",
                    preview(&got)
                ));
            }
            self.s
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .expect("set_read_timeout");
            match self.s.read(&mut tmp) {
                Ok(0) => return Ok(got),
                Ok(n) => got.extend_from_slice(&tmp[..n]),
                Err(e) if is_timeout(&e) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Ok(got), // reset: closed too
            }
        }
    }

    /// Reads more bytes into the buffer (at the end). Ok(0) on EOF.
    fn more(&mut self) -> io::Result<usize> {
        let old = self.buf.len();
        self.buf.resize(old + 64 * 1024, 0);
        loop {
            match self.s.read(&mut self.buf[old..]) {
                Ok(n) => {
                    self.buf.truncate(old + n);
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.buf.truncate(old);
                    return Err(e);
                }
            }
        }
    }

    /// Drops consumed bytes from the buffer.
    fn compact(&mut self) {
        if self.pos > 0 && (self.pos == self.buf.len() || self.pos > 256 * 1024) {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
    }

    fn take_exact(&mut self, mut n: u64, sink: &mut dyn FnMut(&[u8])) -> Result<(), String> {
        let total = n;
        while n > 0 {
            if self.pos == self.buf.len() {
                match self.more() {
                    Ok(0) => {
                        return Err(format!(
                            "connection closed after {} of {total} body bytes",
                            total - n
                        ))
                    }
                    Ok(_) => {}
                    Err(e) => {
                        return Err(format!("reading body byte {} of {total}: {e}", total - n))
                    }
                }
            }
            let take = ((self.buf.len() - self.pos) as u64).min(n) as usize;
            sink(&self.buf[self.pos..self.pos + take]);
            self.pos += take;
            n -= take as u64;
            self.compact();
        }
        Ok(())
    }

    /// Reads a CRLF-terminated line (without the CRLF).
    fn line(&mut self, what: &str) -> Result<Vec<u8>, String> {
        loop {
            if let Some(i) = find(&self.buf[self.pos..], b"\r\n") {
                let l = self.buf[self.pos..self.pos + i].to_vec();
                self.pos += i + 2;
                return Ok(l);
            }
            if self.buf.len() - self.pos > 64 * 1024 {
                return Err(format!("{what}: line longer than 64 KiB"));
            }
            match self.more() {
                Ok(0) => {
                    return Err(format!(
                        "{what}: connection closed mid-line; have {:?}",
                        preview(&self.buf[self.pos..])
                    ))
                }
                Ok(_) => {}
                Err(e) => return Err(format!("{what}: {e}")),
            }
        }
    }

    fn read_chunked(&mut self, sink: &mut dyn FnMut(&[u8])) -> Result<u64, String> {
        let mut total = 0u64;
        loop {
            let line = self.line("chunk size line")?;
            let size_part = line.split(|&b| b == b';').next().unwrap_or(&[]);
            let text = String::from_utf8_lossy(size_part).trim().to_string();
            let size = u64::from_str_radix(&text, 16).map_err(|_| {
                format!(
                    "bad chunk size line {:?} after {total} body bytes",
                    String::from_utf8_lossy(&line)
                )
            })?;
            if size == 0 {
                // Trailer fields up to the empty line.
                while !self.line("trailer")?.is_empty() {}
                self.compact();
                return Ok(total);
            }
            self.take_exact(size, sink)
                .map_err(|e| format!("in a chunk of {size} bytes after {total}: {e}"))?;
            total += size;
            let crlf = self.line("chunk end")?;
            if !crlf.is_empty() {
                return Err(format!(
                    "chunk data not followed by CRLF: {:?}",
                    preview(&crlf)
                ));
            }
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
