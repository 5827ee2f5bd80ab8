//! The PROXY protocol, versions 1 and 2 (haproxy, "The PROXY protocol", versions 1 & 2): the
//! header a TCP-mode load balancer (haproxy `send-proxy`/`send-proxy-v2`, LVS, cloud load
//! balancers) writes before the client's own bytes, so that the proxy learns the client's
//! address. [`parse`] is the byte parser (no I/O, no allocation, never panics); [`read_header`]
//! reads a header off a freshly accepted connection under the header deadline and hands the
//! bytes read past it back to the connection (they are the start of the TLS ClientHello or of
//! the HTTP request).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::time::Instant;

use crate::net::deadline::{read_by, ReadError};
use crate::net::TcpIo;

/// The 12-byte signature that starts every version 2 header (spec §2.2). It cannot be the start
/// of an HTTP request or of a TLS record, nor of a version 1 header.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// The longest version 1 header, CRLF included (spec §2.1: "a receiver may reject an incomplete
/// line which does not contain the CRLF sequence in the first 107 characters").
pub const V1_MAX: usize = 107;

/// The longest version 2 header accepted, signature and TLVs included. The protocol allows 16 +
/// 65535 bytes; the addresses take at most 216 and the TLVs load balancers send in practice
/// (ALPN, authority, cloud endpoint ids) a few hundred, so anything longer is refused rather
/// than buffered.
pub const V2_MAX: usize = 4096;

/// What a complete header says about the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Addresses {
    /// Keep the socket's own endpoints: v2 `LOCAL` (the balancer's own health check), v1
    /// `UNKNOWN`, or a v2 family or transport other than TCP over IPv4/IPv6 (spec §2.2: the
    /// receiver must then use the real connection endpoints).
    Keep,
    /// The connection was relayed for this client, to this destination.
    Tcp { src: SocketAddr, dst: SocketAddr },
}

/// A complete header: what it says, and how many bytes of the input it took.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub version: u8,
    pub addresses: Addresses,
    pub len: usize,
}

impl Header {
    /// The client address the header vouches for, if any.
    pub fn source(&self) -> Option<SocketAddr> {
        match self.addresses {
            Addresses::Tcp { src, .. } => Some(src),
            Addresses::Keep => None,
        }
    }
}

/// Why a header was refused (the reason goes to the log, the connection is closed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Malformed(pub &'static str);

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

/// Parses a header at the start of `buf`. `Ok(None)`: every byte so far is a valid start of a
/// header, read more. Bytes after the header are not looked at.
pub fn parse(buf: &[u8]) -> Result<Option<Header>, Malformed> {
    match buf.first() {
        None => Ok(None),
        Some(b'P') => parse_v1(buf),
        Some(b'\r') => parse_v2(buf),
        Some(_) => Err(Malformed("no PROXY protocol signature")),
    }
}

fn parse_v1(buf: &[u8]) -> Result<Option<Header>, Malformed> {
    const PREFIX: &[u8] = b"PROXY ";
    let n = buf.len().min(PREFIX.len());
    if buf[..n] != PREFIX[..n] {
        return Err(Malformed("no PROXY protocol signature"));
    }
    let window = &buf[..buf.len().min(V1_MAX)];
    // The line ends at CRLF only; a bare LF would make the reader swallow the request that
    // follows into the header, so it is refused at once.
    let Some(cr) = window.iter().position(|&b| b == b'\r' || b == b'\n') else {
        return if buf.len() >= V1_MAX {
            Err(Malformed("v1 header longer than 107 bytes"))
        } else {
            Ok(None)
        };
    };
    if buf[cr] == b'\n' {
        return Err(Malformed("v1 header: LF without CR"));
    }
    match buf.get(cr + 1) {
        None => return Ok(None),
        Some(b'\n') => {}
        Some(_) => return Err(Malformed("v1 header: CR not followed by LF")),
    }
    let len = cr + 2;
    let line = buf.get(PREFIX.len()..cr).unwrap_or_default();
    // Fields are separated by exactly one space (spec §2.1).
    let mut fields = line.split(|&b| b == b' ');
    let proto = fields.next().unwrap_or_default();
    let addresses = match proto {
        // "the receiver must ignore anything presented before the CRLF is found".
        b"UNKNOWN" => Addresses::Keep,
        b"TCP4" | b"TCP6" => {
            let v6 = proto == b"TCP6";
            let mut next = || fields.next().ok_or(Malformed("v1 header: missing field"));
            let src_ip = v1_ip(next()?, v6)?;
            let dst_ip = v1_ip(next()?, v6)?;
            let src_port = v1_port(next()?)?;
            let dst_port = v1_port(next()?)?;
            if fields.next().is_some() {
                return Err(Malformed("v1 header: extra field"));
            }
            Addresses::Tcp {
                src: SocketAddr::new(src_ip, src_port),
                dst: SocketAddr::new(dst_ip, dst_port),
            }
        }
        _ => return Err(Malformed("v1 header: unknown protocol")),
    };
    Ok(Some(Header {
        version: 1,
        addresses,
        len,
    }))
}

fn v1_ip(field: &[u8], v6: bool) -> Result<IpAddr, Malformed> {
    let s = std::str::from_utf8(field).map_err(|_| Malformed("v1 header: bad address"))?;
    let ip = if v6 {
        s.parse::<Ipv6Addr>().map(IpAddr::V6)
    } else {
        s.parse::<Ipv4Addr>().map(IpAddr::V4)
    };
    ip.map_err(|_| Malformed("v1 header: bad address"))
}

/// A port: decimal, 0 to 65535 (spec §2.1). Leading zeros are refused, like haproxy does, so
/// that one port has one spelling.
fn v1_port(field: &[u8]) -> Result<u16, Malformed> {
    let bad = Malformed("v1 header: bad port");
    if field.is_empty()
        || field.len() > 5
        || !field.iter().all(u8::is_ascii_digit)
        || (field.len() > 1 && field[0] == b'0')
    {
        return Err(bad);
    }
    let n = field
        .iter()
        .fold(0u32, |n, &d| n * 10 + u32::from(d - b'0'));
    u16::try_from(n).map_err(|_| bad)
}

fn parse_v2(buf: &[u8]) -> Result<Option<Header>, Malformed> {
    let n = buf.len().min(V2_SIGNATURE.len());
    if buf[..n] != V2_SIGNATURE[..n] {
        return Err(Malformed("no PROXY protocol signature"));
    }
    let Some(fixed) = buf.get(..16) else {
        return Ok(None);
    };
    let (ver_cmd, fam, len) = (
        fixed[12],
        fixed[13],
        u16::from_be_bytes([fixed[14], fixed[15]]),
    );
    if ver_cmd >> 4 != 2 {
        return Err(Malformed("v2 header: version is not 2"));
    }
    // Command: 0 LOCAL, 1 PROXY; "receivers must drop connections presenting unexpected
    // values here". Family 0..=3 (UNSPEC, INET, INET6, UNIX), transport 0..=2 (UNSPEC, STREAM,
    // DGRAM); "other values ... must be rejected as invalid by receivers".
    let local = match ver_cmd & 0x0f {
        0 => true,
        1 => false,
        _ => return Err(Malformed("v2 header: unknown command")),
    };
    if fam >> 4 > 3 || fam & 0x0f > 2 {
        return Err(Malformed("v2 header: unknown address family or transport"));
    }
    let total = 16 + usize::from(len);
    if total > V2_MAX {
        return Err(Malformed("v2 header longer than the 4096 bytes accepted"));
    }
    // The address block must fit in the announced length whatever the command (spec §2.2:
    // the length "is the number of following bytes part of the header").
    let addr_len = match fam >> 4 {
        1 => 12,
        2 => 36,
        3 => 216,
        _ => 0,
    };
    if usize::from(len) < addr_len {
        return Err(Malformed("v2 header: length shorter than its addresses"));
    }
    let Some(body) = buf.get(16..total) else {
        return Ok(None);
    };
    let addresses = if local {
        Addresses::Keep
    } else {
        match fam {
            0x11 => {
                let ip = |o: usize| {
                    IpAddr::V4(Ipv4Addr::new(
                        body[o],
                        body[o + 1],
                        body[o + 2],
                        body[o + 3],
                    ))
                };
                let port = |o: usize| u16::from_be_bytes([body[o], body[o + 1]]);
                Addresses::Tcp {
                    src: SocketAddr::new(ip(0), port(8)),
                    dst: SocketAddr::new(ip(4), port(10)),
                }
            }
            0x21 => {
                let ip = |o: usize| {
                    let mut a = [0u8; 16];
                    a.copy_from_slice(&body[o..o + 16]);
                    IpAddr::V6(Ipv6Addr::from(a))
                };
                let port = |o: usize| u16::from_be_bytes([body[o], body[o + 1]]);
                Addresses::Tcp {
                    src: SocketAddr::new(ip(0), port(32)),
                    dst: SocketAddr::new(ip(16), port(34)),
                }
            }
            // UNSPEC, UNIX, or a datagram/unspecified transport: nothing a TCP peer address
            // can be taken from.
            _ => Addresses::Keep,
        }
    };
    // TLVs (the rest of the length) are skipped: nothing here uses them.
    Ok(Some(Header {
        version: 2,
        addresses,
        len: total,
    }))
}

/// Why no header could be read.
#[derive(Debug)]
pub enum ReadHeaderError {
    /// The header deadline passed (the socket has been shut down).
    Timeout,
    /// The peer closed before a complete header.
    Closed,
    Io(std::io::Error),
    Malformed(Malformed),
}

impl fmt::Display for ReadHeaderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadHeaderError::Timeout => f.write_str("no complete PROXY header before the deadline"),
            ReadHeaderError::Closed => f.write_str("closed before a complete PROXY header"),
            ReadHeaderError::Io(e) => write!(f, "reading the PROXY header: {e}"),
            ReadHeaderError::Malformed(m) => write!(f, "malformed PROXY header: {m}"),
        }
    }
}

/// Reads one header from `io` before `deadline`. Bytes that arrived with it but follow it are
/// put back in front of `io`'s next reads ([`TcpIo::unread`]), so the TLS handshake or the
/// request head sees them first.
pub async fn read_header(io: &TcpIo, deadline: Instant) -> Result<Header, ReadHeaderError> {
    // Enough for a v1 header or a v2 one with IPv6 addresses and a few TLVs in one read.
    let mut buf = Vec::with_capacity(512);
    loop {
        match parse(&buf) {
            Ok(Some(h)) => {
                buf.drain(..h.len);
                io.unread(buf);
                return Ok(h);
            }
            Ok(None) => {}
            Err(m) => return Err(ReadHeaderError::Malformed(m)),
        }
        if buf.len() == buf.capacity() {
            // Bounded: parse refuses anything longer than V2_MAX before it is all read.
            buf.reserve(buf.len().min(V2_MAX - 512));
        }
        match read_by(io, buf, deadline).await {
            Ok((0, _)) => return Err(ReadHeaderError::Closed),
            Ok((_, b)) => buf = b,
            Err((ReadError::Timeout, _)) => return Err(ReadHeaderError::Timeout),
            Err((ReadError::Io(e), _)) => return Err(ReadHeaderError::Io(e)),
        }
    }
}

#[cfg(test)]
mod tests;
