//! A real HTTP/1.1 origin server for the tests: std threads and sockets, one thread per
//! connection, keep-alive, optional TLS (rustls).
//!
//! It parses requests and decodes bodies itself (its own chunked decoder, independent of the
//! proxy's), hashes every body with SHA-256 as it streams in, and answers with JSON describing
//! what it received (`server` is the echo server's own port):
//!
//! ```json
//! {"method":"POST","target":"/x?y=1","version":"HTTP/1.1","headers":[["Host","a"],...],
//!  "framing":"chunked","body_len":5,"body_sha256":"…","pattern_mismatch":0,"trailers":[],
//!  "server":41234,"request":3,"connection":1,"conn_request":2}
//! ```
//!
//! `pattern_mismatch` is the offset of the first body byte that differs from
//! [`pattern`] (null if the body is a prefix of the pattern): large uploads are checked with it
//! instead of hashing on both sides. The same facts come as `X-Echo-*` response headers. `request` counts complete requests
//! over the server's life, `connection` numbers the TCP connection (1-based, in accept order) and
//! `conn_request` the request on it: together they prove backend connection reuse.
//!
//! Endpoints (path before `?`; the request body is always read and hashed first):
//!
//! | path | answer |
//! | --- | --- |
//! | anything else | the echo JSON, Content-Length (HEAD: the length, no body) |
//! | any `?pad=N` | adds an `X-Pad` response header of N bytes (default echo, `/status/N`) |
//! | `/status/N` | the echo JSON with status N (no body for 204/304) |
//! | `/slow?ms=N` | sleeps N ms, then the echo JSON |
//! | `/download?bytes=N[&chunked=1][&chunk=K]` | N bytes of [`pattern`], Content-Length or chunked (HEAD: the head only) |
//! | `/close[?bytes=N]` | the echo JSON (or N pattern bytes) delimited by closing the connection |
//! | `/chunked-echo` | the echo JSON, chunked in 7-byte chunks |
//! | `/drip?chunks=N&ms=M&size=S` | chunked: N chunks of S pattern bytes, M ms apart |
//! | `/hop` | the echo JSON plus hop-by-hop response headers a proxy must remove |
//! | `/garbage` | bytes that are not HTTP, then close |
//! | `/truncate?bytes=N` | announces N bytes (Content-Length), sends N/2, closes |
//! | `/quietclose` | the echo JSON as a keep-alive response, then closes anyway |
//! | `/interim` | `102 Processing`, then `103 Early Hints`, then the echo JSON |
//! | `/cl-and-te` | the echo JSON chunked, with a wrong Content-Length beside it |
//!
//! A request the echo server finds malformed gets `400` with an `X-Echo-Error` header saying why,
//! and the connection is closed: a proxy that forwards bad framing shows up as that header.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::certs::{self, CertPair};
use super::pattern;

/// How long an echo connection waits for the next byte (idle keep-alive included) and for a
/// write to make progress.
const ECHO_IO_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest request head the echo server reads.
const MAX_HEAD: usize = 1 << 20;

/// A request line and its header fields, in order.
pub type RequestHead = (String, Vec<(String, String)>);

#[derive(Default)]
struct Shared {
    stop: AtomicBool,
    port: u16,
    connections: AtomicU64,
    closed: AtomicU64,
    requests: AtomicU64,
    /// The request line and header fields of the latest request head, as soon as it is read
    /// (before its body): lets a test look at a request whose body never completes.
    last_head: Mutex<Option<RequestHead>>,
}

/// A running echo server; stops accepting when dropped.
pub struct Echo {
    addr: SocketAddr,
    tls: bool,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl Echo {
    /// Starts a plain HTTP echo server on a free port of 127.0.0.1.
    pub fn start() -> Echo {
        Echo::spawn(None)
    }

    /// Starts an HTTPS echo server presenting `pair`.
    pub fn start_tls(pair: &CertPair) -> Echo {
        Echo::spawn(Some(certs::server_config(pair)))
    }

    /// Starts a plain HTTP echo server on `port` of 127.0.0.1 (a backend that comes back).
    pub fn start_on(port: u16) -> Echo {
        let listener = TcpListener::bind(("127.0.0.1", port))
            .unwrap_or_else(|e| panic!("echo: bind 127.0.0.1:{port}: {e}"));
        Echo::serve_on(listener, None)
    }

    fn spawn(tls: Option<Arc<rustls::ServerConfig>>) -> Echo {
        let listener = TcpListener::bind("127.0.0.1:0").expect("echo: bind 127.0.0.1:0");
        Echo::serve_on(listener, tls)
    }

    fn serve_on(listener: TcpListener, tls: Option<Arc<rustls::ServerConfig>>) -> Echo {
        let addr = listener.local_addr().expect("echo: local_addr");
        let shared = Arc::new(Shared {
            port: addr.port(),
            ..Shared::default()
        });
        let is_tls = tls.is_some();
        let sh = shared.clone();
        let accept = std::thread::Builder::new()
            .name(format!("echo-accept-{}", addr.port()))
            .spawn(move || accept_loop(listener, sh, tls))
            .expect("echo: spawn accept thread");
        Echo {
            addr,
            tls: is_tls,
            shared,
            accept: Some(accept),
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `http://127.0.0.1:PORT` (or `https://…`), as a proxy route's backend.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.addr.port())
    }

    /// `/=URL`, a catch-all `--route` to this server.
    pub fn route(&self) -> String {
        format!("/={}", self.url())
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// TCP connections the server has closed (or seen closed) so far.
    pub fn closed(&self) -> u64 {
        self.shared.closed.load(Ordering::SeqCst)
    }

    /// Complete requests (head and body read) so far.
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::SeqCst)
    }

    /// The request line and fields of the latest request head read, even if its body is still
    /// coming (or never comes).
    pub fn last_head(&self) -> Option<RequestHead> {
        self.shared.last_head.lock().expect("echo lock").clone()
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>, tls: Option<Arc<rustls::ServerConfig>>) {
    for conn in listener.incoming() {
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(tcp) = conn else { continue };
        let id = shared.connections.fetch_add(1, Ordering::SeqCst) + 1;
        let _ = tcp.set_nodelay(true);
        let _ = tcp.set_read_timeout(Some(ECHO_IO_TIMEOUT));
        let _ = tcp.set_write_timeout(Some(ECHO_IO_TIMEOUT));
        let sh = shared.clone();
        let tls = tls.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("echo-conn-{id}"))
            .spawn(move || {
                match tls {
                    None => serve(Conn::new(Plain(tcp)), id, &sh),
                    Some(cfg) => match rustls::ServerConnection::new(cfg) {
                        Ok(sc) => serve(Conn::new(Tls(rustls::StreamOwned::new(sc, tcp))), id, &sh),
                        Err(e) => eprintln!("echo: TLS setup failed: {e}"),
                    },
                }
                // The socket was dropped when `serve` returned.
                sh.closed.fetch_add(1, Ordering::SeqCst);
            });
        if let Err(e) = spawned {
            eprintln!("echo: cannot spawn a connection thread: {e}");
        }
    }
}

/// A byte stream the echo server can serve, and end cleanly.
trait Stream: Read + Write {
    /// Ends the response stream: TLS close_notify, then TCP FIN.
    fn finish(&mut self);
}

struct Plain(TcpStream);
struct Tls(rustls::StreamOwned<rustls::ServerConnection, TcpStream>);

impl Read for Plain {
    fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
        self.0.read(b)
    }
}
impl Write for Plain {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.0.write(b)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
impl Stream for Plain {
    fn finish(&mut self) {
        let _ = self.0.shutdown(Shutdown::Write);
    }
}
impl Read for Tls {
    fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
        self.0.read(b)
    }
}
impl Write for Tls {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.0.write(b)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}
impl Stream for Tls {
    fn finish(&mut self) {
        self.0.conn.send_close_notify();
        let _ = self.0.flush();
        let _ = self.0.sock.shutdown(Shutdown::Write);
    }
}

/// A buffered connection: reads through a buffer, writes straight to the stream.
struct Conn<S> {
    s: S,
    buf: Vec<u8>,
    pos: usize,
    end: usize,
}

/// Why a request could not be read.
enum ReadError {
    /// The peer closed (or the socket failed) before a complete request: just stop.
    Gone,
    /// The request is malformed: answer 400 with this reason, then close.
    Bad(String),
}

impl<S: Stream> Conn<S> {
    fn new(s: S) -> Self {
        Conn {
            s,
            buf: vec![0; 64 * 1024],
            pos: 0,
            end: 0,
        }
    }

    /// Makes at least one unread byte available. Ok(false) on a clean EOF.
    fn fill(&mut self) -> io::Result<bool> {
        if self.pos < self.end {
            return Ok(true);
        }
        self.pos = 0;
        self.end = 0;
        loop {
            match self.s.read(&mut self.buf) {
                Ok(0) => return Ok(false),
                Ok(n) => {
                    self.end = n;
                    return Ok(true);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Reads one line ending in LF (CRLF or bare LF), without the terminator.
    /// `Ok(None)` if the stream ended before any byte of the line.
    fn read_line(&mut self, limit: usize) -> Result<Option<Vec<u8>>, ReadError> {
        let mut line = Vec::new();
        loop {
            match self.fill() {
                Ok(true) => {}
                Ok(false) if line.is_empty() => return Ok(None),
                Ok(false) | Err(_) => return Err(ReadError::Gone),
            }
            let avail = &self.buf[self.pos..self.end];
            if let Some(i) = avail.iter().position(|&b| b == b'\n') {
                line.extend_from_slice(&avail[..i]);
                self.pos += i + 1;
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return Ok(Some(line));
            }
            line.extend_from_slice(avail);
            self.pos = self.end;
            if line.len() > limit {
                return Err(ReadError::Bad(format!("line longer than {limit} bytes")));
            }
        }
    }

    /// Reads exactly `n` bytes into `sink`, piece by piece.
    fn read_exact_into(
        &mut self,
        mut n: u64,
        sink: &mut dyn FnMut(&[u8]),
    ) -> Result<(), ReadError> {
        while n > 0 {
            match self.fill() {
                Ok(true) => {}
                _ => return Err(ReadError::Gone),
            }
            let take = ((self.end - self.pos) as u64).min(n) as usize;
            sink(&self.buf[self.pos..self.pos + take]);
            self.pos += take;
            n -= take as u64;
        }
        Ok(())
    }

    fn write_all(&mut self, b: &[u8]) -> io::Result<()> {
        self.s.write_all(b)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.s.flush()
    }
}

/// What the echo server read of one request.
struct Request {
    method: String,
    target: String,
    version: String,
    headers: Vec<(String, String)>,
    framing: &'static str,
    body_len: u64,
    body_sha256: String,
    /// Offset of the first body byte that differs from [`pattern`], if any.
    pattern_mismatch: Option<u64>,
    trailers: Vec<(String, String)>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }

    fn query(&self, key: &str) -> Option<&str> {
        let q = self.target.split_once('?')?.1;
        q.split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v)
    }

    fn query_u64(&self, key: &str) -> Option<u64> {
        self.query(key).and_then(|v| v.parse().ok())
    }

    fn wants_close(&self) -> bool {
        let conn = self.header("connection").unwrap_or("").to_ascii_lowercase();
        let tokens: Vec<&str> = conn.split(',').map(str::trim).collect();
        if self.version == "HTTP/1.0" {
            !tokens.contains(&"keep-alive")
        } else {
            tokens.contains(&"close")
        }
    }
}

fn serve<S: Stream>(mut c: Conn<S>, conn_id: u64, shared: &Shared) {
    let mut conn_request = 0u64;
    loop {
        let req = match read_request(&mut c, shared) {
            Ok(Some(r)) => r,
            Ok(None) | Err(ReadError::Gone) => return,
            Err(ReadError::Bad(why)) => {
                let msg = format!(
                    "HTTP/1.1 400 Bad Request\r\nX-Echo-Error: {}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    why.replace(['\r', '\n'], " ")
                );
                let _ = c.write_all(msg.as_bytes());
                let _ = c.flush();
                c.s.finish();
                return;
            }
        };
        conn_request += 1;
        let request_no = shared.requests.fetch_add(1, Ordering::SeqCst) + 1;
        let ids = Ids {
            server: shared.port,
            request: request_no,
            connection: conn_id,
            conn_request,
        };
        match respond(&mut c, &req, &ids) {
            Ok(true) if !req.wants_close() => {}
            _ => {
                c.s.finish();
                return;
            }
        }
    }
}

struct Ids {
    /// The echo server's own port: tells which origin answered.
    server: u16,
    request: u64,
    connection: u64,
    conn_request: u64,
}

fn bad(msg: impl Into<String>) -> ReadError {
    ReadError::Bad(msg.into())
}

/// Reads one request: head, then the whole body (hashed, not kept).
fn read_request<S: Stream>(c: &mut Conn<S>, shared: &Shared) -> Result<Option<Request>, ReadError> {
    // Request line (tolerating empty lines before it, RFC 9112 §2.2).
    let line = loop {
        match c.read_line(MAX_HEAD)? {
            None => return Ok(None),
            Some(l) if l.is_empty() => continue,
            Some(l) => break l,
        }
    };
    let line = String::from_utf8(line).map_err(|_| bad("request line is not UTF-8"))?;
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad(format!("bad request line {line:?}")));
    };
    if method.is_empty() || !method.bytes().all(is_tchar) {
        return Err(bad(format!("bad method {method:?}")));
    }
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return Err(bad(format!("bad version {version:?}")));
    }
    let headers = read_fields(c)?;
    *shared.last_head.lock().expect("echo lock") = Some((line.clone(), headers.clone()));
    let mut req = Request {
        method: method.to_string(),
        target: target.to_string(),
        version: version.to_string(),
        headers,
        framing: "none",
        body_len: 0,
        body_sha256: String::new(),
        pattern_mismatch: None,
        trailers: Vec::new(),
    };

    // Framing, strictly: a proxy must never send an ambiguous request.
    let te: Vec<&str> = req
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("transfer-encoding"))
        .map(|(_, v)| v.as_str())
        .collect();
    let cl: Vec<&str> = req
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .map(|(_, v)| v.as_str())
        .collect();
    if !te.is_empty() && !cl.is_empty() {
        return Err(bad("both Transfer-Encoding and Content-Length"));
    }
    let mut hasher = Sha256::new();
    let mut len = 0u64;
    let mut mismatch = None;
    let mut sink = |b: &[u8]| {
        hasher.update(b);
        if mismatch.is_none() {
            mismatch = pattern::check(len, b).err();
        }
        len += b.len() as u64;
    };
    if !te.is_empty() {
        let joined = te.join(",").to_ascii_lowercase();
        if joined.split(',').map(str::trim).collect::<Vec<_>>() != ["chunked"] {
            return Err(bad(format!("unsupported Transfer-Encoding {joined:?}")));
        }
        req.framing = "chunked";
        continue_if_expected(c, &req)?;
        req.trailers = read_chunked(c, &mut sink)?;
    } else if !cl.is_empty() {
        let first = cl[0];
        if cl.iter().any(|v| *v != first) {
            return Err(bad(format!("differing Content-Length values {cl:?}")));
        }
        if first.is_empty() || !first.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad(format!("bad Content-Length {first:?}")));
        }
        let n: u64 = first
            .parse()
            .map_err(|_| bad(format!("Content-Length overflows: {first:?}")))?;
        req.framing = "length";
        continue_if_expected(c, &req)?;
        c.read_exact_into(n, &mut sink)?;
    }
    req.body_len = len;
    req.body_sha256 = hex::encode(hasher.finalize());
    req.pattern_mismatch = mismatch;
    Ok(Some(req))
}

/// Sends `100 Continue` when the request asks for it (only a proxy that forgot to handle
/// `Expect` itself makes the echo server do this).
fn continue_if_expected<S: Stream>(c: &mut Conn<S>, req: &Request) -> Result<(), ReadError> {
    if req
        .header("expect")
        .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"))
    {
        c.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            .and_then(|_| c.flush())
            .map_err(|_| ReadError::Gone)?;
    }
    Ok(())
}

/// RFC 9110 token characters.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Reads header (or trailer) fields up to the empty line.
fn read_fields<S: Stream>(c: &mut Conn<S>) -> Result<Vec<(String, String)>, ReadError> {
    let mut fields = Vec::new();
    let mut total = 0;
    loop {
        let line = c.read_line(MAX_HEAD)?.ok_or(ReadError::Gone)?;
        if line.is_empty() {
            return Ok(fields);
        }
        total += line.len() + 2;
        if total > MAX_HEAD {
            return Err(bad("head too large"));
        }
        if line[0] == b' ' || line[0] == b'\t' {
            return Err(bad("obs-fold in a field"));
        }
        let colon = line
            .iter()
            .position(|&b| b == b':')
            .ok_or_else(|| bad("field line without a colon"))?;
        let name = &line[..colon];
        if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
            return Err(bad(format!(
                "bad field name {:?}",
                String::from_utf8_lossy(name)
            )));
        }
        let value = &line[colon + 1..];
        if value.iter().any(|&b| b == 0 || b == b'\r' || b == b'\n') {
            return Err(bad("NUL or CR in a field value"));
        }
        let value = String::from_utf8_lossy(value)
            .trim_matches([' ', '\t'])
            .to_string();
        fields.push((String::from_utf8_lossy(name).into_owned(), value));
    }
}

/// Decodes a chunked body into `sink`; returns the trailer fields.
fn read_chunked<S: Stream>(
    c: &mut Conn<S>,
    sink: &mut dyn FnMut(&[u8]),
) -> Result<Vec<(String, String)>, ReadError> {
    loop {
        let line = c.read_line(4096)?.ok_or(ReadError::Gone)?;
        let size_part = match line.iter().position(|&b| b == b';') {
            Some(i) => &line[..i],
            None => &line[..],
        };
        // BWS before a chunk extension is tolerated.
        let mut digits = size_part;
        while let [rest @ .., b' ' | b'\t'] = digits {
            digits = rest;
        }
        if digits.is_empty() || !digits.iter().all(u8::is_ascii_hexdigit) {
            return Err(bad(format!(
                "bad chunk size line {:?}",
                String::from_utf8_lossy(&line)
            )));
        }
        let digits = std::str::from_utf8(digits).expect("hex digits are ASCII");
        let size = u64::from_str_radix(digits, 16)
            .map_err(|_| bad(format!("chunk size overflows: {digits:?}")))?;
        if size == 0 {
            return read_fields(c);
        }
        c.read_exact_into(size, sink)?;
        match c.read_line(0)? {
            Some(l) if l.is_empty() => {}
            _ => return Err(bad("chunk data not followed by CRLF")),
        }
    }
}

/// Writes the answer for `req`. Ok(true) when the connection may carry another request.
fn respond<S: Stream>(c: &mut Conn<S>, req: &Request, ids: &Ids) -> io::Result<bool> {
    let path = req.path().to_string();
    let mut status = 200u16;
    let mut extra: Vec<(String, String)> = Vec::new();
    if let Some(n) = req.query_u64("pad") {
        // A large response header (SharePoint's FedAuth cookies can be tens of KB).
        extra.push(("X-Pad".into(), "p".repeat(n as usize)));
    }

    if let Some(code) = path.strip_prefix("/status/") {
        status = code.parse().unwrap_or(500);
    }
    match path.as_str() {
        "/slow" => {
            std::thread::sleep(Duration::from_millis(req.query_u64("ms").unwrap_or(1000)));
        }
        "/download" => {
            let n = req.query_u64("bytes").unwrap_or(0);
            let chunked = req.query("chunked") == Some("1");
            let chunk = req.query_u64("chunk").unwrap_or(64 * 1024).max(1) as usize;
            if req.method == "HEAD" {
                // The head a GET would get, without the body.
                let framing = if chunked {
                    "Transfer-Encoding: chunked".to_string()
                } else {
                    format!("Content-Length: {n}")
                };
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n\
                     X-Pattern-Len: {n}\r\n{framing}\r\n\r\n"
                );
                c.write_all(head.as_bytes())?;
                c.flush()?;
                return Ok(true);
            }
            return send_pattern(c, n, chunked, chunk, Duration::ZERO);
        }
        "/drip" => {
            let chunks = req.query_u64("chunks").unwrap_or(3);
            let size = req.query_u64("size").unwrap_or(100).max(1) as usize;
            let pause = Duration::from_millis(req.query_u64("ms").unwrap_or(500));
            return send_pattern(c, chunks * size as u64, true, size, pause);
        }
        "/truncate" => {
            // Announces N bytes, sends half, and closes.
            let n = req.query_u64("bytes").unwrap_or(1000);
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {n}\r\n\r\n"
            );
            c.write_all(head.as_bytes())?;
            c.write_all(&pattern::bytes((n / 2) as usize))?;
            c.flush()?;
            return Ok(false);
        }
        "/quietclose" => {
            // A complete keep-alive response (no `Connection: close`), then the connection is
            // closed anyway, as a backend's idle timeout would.
            let body = echo_json(req, ids);
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n{}Content-Length: {}\r\n\r\n",
                echo_headers(req, ids),
                body.len()
            );
            c.write_all(head.as_bytes())?;
            c.write_all(&body)?;
            c.flush()?;
            return Ok(false);
        }
        "/cl-and-te" => {
            // Both framings (HTTP.sys has been seen doing this): chunked wins (RFC 9112 §6.3),
            // the Content-Length is wrong on purpose.
            let body = echo_json(req, ids);
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n{}Content-Length: 3\r\n\
                 Transfer-Encoding: chunked\r\n\r\n{:x}\r\n",
                echo_headers(req, ids),
                body.len()
            );
            c.write_all(head.as_bytes())?;
            c.write_all(&body)?;
            c.write_all(b"\r\n0\r\n\r\n")?;
            c.flush()?;
            return Ok(true);
        }
        "/interim" => {
            // Interim responses before the final one (SharePoint's WebDAV sends 102).
            c.write_all(b"HTTP/1.1 102 Processing\r\n\r\n")?;
            c.flush()?;
            std::thread::sleep(Duration::from_millis(100));
            c.write_all(b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n")?;
            c.flush()?;
        }
        "/garbage" => {
            c.write_all(b"THIS IS NOT HTTP\r\n\r\n")?;
            c.flush()?;
            return Ok(false);
        }
        "/close" => {
            let body = match req.query_u64("bytes") {
                Some(n) => pattern::bytes(n as usize),
                None => echo_json(req, ids),
            };
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n{}Connection: close\r\n\r\n",
                echo_headers(req, ids)
            );
            c.write_all(head.as_bytes())?;
            c.write_all(&body)?;
            c.flush()?;
            return Ok(false);
        }
        "/chunked-echo" => {
            let body = echo_json(req, ids);
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n{}Transfer-Encoding: chunked\r\n\r\n",
                echo_headers(req, ids)
            );
            c.write_all(head.as_bytes())?;
            for piece in body.chunks(7) {
                c.write_all(format!("{:x}\r\n", piece.len()).as_bytes())?;
                c.write_all(piece)?;
                c.write_all(b"\r\n")?;
            }
            c.write_all(b"0\r\n\r\n")?;
            c.flush()?;
            return Ok(true);
        }
        "/hop" => {
            for (n, v) in [
                ("Connection", "X-Resp-Hop"),
                ("X-Resp-Hop", "must-not-reach-the-client"),
                ("Keep-Alive", "timeout=99"),
                ("Proxy-Connection", "keep-alive"),
                ("Proxy-Authenticate", "Basic realm=\"hop\""),
                ("Upgrade", "kcdtest/1"),
                ("Trailer", "X-Never-Sent"),
                ("X-Resp-Keep", "end-to-end"),
            ] {
                extra.push((n.into(), v.into()));
            }
        }
        _ => {}
    }

    let body = if status == 204 || status == 304 {
        Vec::new()
    } else {
        echo_json(req, ids)
    };
    // A response to HEAD announces the length of the body it does not send.
    let send_body = req.method != "HEAD";
    let mut head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\n{}",
        reason_phrase(status),
        echo_headers(req, ids)
    );
    for (n, v) in &extra {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    if status != 204 && status != 304 {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    c.write_all(head.as_bytes())?;
    if send_body {
        c.write_all(&body)?;
    }
    c.flush()?;
    Ok(true)
}

/// Streams `n` pattern bytes, Content-Length or chunked (`piece` bytes per chunk), pausing
/// `pause` after each chunk.
fn send_pattern<S: Stream>(
    c: &mut Conn<S>,
    n: u64,
    chunked: bool,
    piece: usize,
    pause: Duration,
) -> io::Result<bool> {
    let mut head = String::from("HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n");
    head.push_str(&format!("X-Pattern-Len: {n}\r\n"));
    if n <= 4 << 20 {
        let sha = hex::encode(Sha256::digest(pattern::bytes(n as usize)));
        head.push_str(&format!("X-Body-Sha256: {sha}\r\n"));
    }
    if chunked {
        head.push_str("Transfer-Encoding: chunked\r\n\r\n");
    } else {
        head.push_str(&format!("Content-Length: {n}\r\n\r\n"));
    }
    c.write_all(head.as_bytes())?;
    let mut buf = vec![0u8; piece.min(1 << 20)];
    let mut off = 0u64;
    while off < n {
        let len = ((n - off) as usize).min(buf.len());
        pattern::fill(off, &mut buf[..len]);
        if chunked {
            c.write_all(format!("{len:x}\r\n").as_bytes())?;
            c.write_all(&buf[..len])?;
            c.write_all(b"\r\n")?;
        } else {
            c.write_all(&buf[..len])?;
        }
        off += len as u64;
        if !pause.is_zero() {
            c.flush()?;
            if off < n {
                std::thread::sleep(pause);
            }
        }
    }
    if chunked {
        c.write_all(b"0\r\n\r\n")?;
    }
    c.flush()?;
    Ok(true)
}

fn echo_headers(req: &Request, ids: &Ids) -> String {
    format!(
        "X-Echo-Method: {}\r\nX-Echo-Body-Len: {}\r\nX-Echo-Body-Sha256: {}\r\n\
         X-Echo-Server: {}\r\nX-Echo-Request: {}\r\nX-Echo-Conn: {}\r\nX-Echo-Conn-Request: {}\r\n",
        req.method,
        req.body_len,
        req.body_sha256,
        ids.server,
        ids.request,
        ids.connection,
        ids.conn_request
    )
}

fn echo_json(req: &Request, ids: &Ids) -> Vec<u8> {
    let pairs = |v: &[(String, String)]| -> Vec<[String; 2]> {
        v.iter().map(|(n, v)| [n.clone(), v.clone()]).collect()
    };
    let v = serde_json::json!({
        "method": req.method,
        "target": req.target,
        "version": req.version,
        "headers": pairs(&req.headers),
        "framing": req.framing,
        "body_len": req.body_len,
        "body_sha256": req.body_sha256,
        "pattern_mismatch": req.pattern_mismatch,
        "trailers": pairs(&req.trailers),
        "server": ids.server,
        "request": ids.request,
        "connection": ids.connection,
        "conn_request": ids.conn_request,
    });
    let mut out = serde_json::to_vec(&v).expect("serialize echo JSON");
    out.push(b'\n');
    out
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Whatever",
    }
}
