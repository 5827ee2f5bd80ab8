use super::*;

fn v4(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// A v2 header: `ver_cmd`, `fam`, then `body` (addresses and TLVs) with its length.
fn v2(ver_cmd: u8, fam: u8, body: &[u8]) -> Vec<u8> {
    let mut h = V2_SIGNATURE.to_vec();
    h.push(ver_cmd);
    h.push(fam);
    h.extend_from_slice(&(body.len() as u16).to_be_bytes());
    h.extend_from_slice(body);
    h
}

fn v2_tcp4_body() -> Vec<u8> {
    // 192.0.2.7:51000 → 10.0.0.1:443
    let mut b = vec![192, 0, 2, 7, 10, 0, 0, 1];
    b.extend_from_slice(&51000u16.to_be_bytes());
    b.extend_from_slice(&443u16.to_be_bytes());
    b
}

fn v2_tcp6_body() -> Vec<u8> {
    let src: Ipv6Addr = "2001:db8::7".parse().unwrap();
    let dst: Ipv6Addr = "2001:db8::1".parse().unwrap();
    let mut b = src.octets().to_vec();
    b.extend_from_slice(&dst.octets());
    b.extend_from_slice(&51000u16.to_be_bytes());
    b.extend_from_slice(&443u16.to_be_bytes());
    b
}

fn tcp(src: &str, dst: &str) -> Addresses {
    Addresses::Tcp {
        src: src.parse().unwrap(),
        dst: dst.parse().unwrap(),
    }
}

#[test]
fn valid_headers() {
    let mut tlv = v2_tcp4_body();
    // A PP2_TYPE_AUTHORITY TLV (spec §2.2.2) and a NOOP: skipped.
    tlv.extend_from_slice(&[0x02, 0x00, 0x04, b'h', b'o', b's', b't', 0x04, 0x00, 0x00]);
    let mut unix = vec![0u8; 216];
    unix[0] = b'/';
    let cases: Vec<(Vec<u8>, u8, Addresses)> = vec![
        (
            b"PROXY TCP4 192.0.2.7 10.0.0.1 51000 443\r\n".to_vec(),
            1,
            tcp("192.0.2.7:51000", "10.0.0.1:443"),
        ),
        (
            b"PROXY TCP6 2001:db8::7 2001:db8::1 0 65535\r\n".to_vec(),
            1,
            tcp("[2001:db8::7]:0", "[2001:db8::1]:65535"),
        ),
        (b"PROXY UNKNOWN\r\n".to_vec(), 1, Addresses::Keep),
        (
            b"PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n".to_vec(),
            1,
            Addresses::Keep,
        ),
        (
            v2(0x21, 0x11, &v2_tcp4_body()),
            2,
            tcp("192.0.2.7:51000", "10.0.0.1:443"),
        ),
        (
            v2(0x21, 0x21, &v2_tcp6_body()),
            2,
            tcp("[2001:db8::7]:51000", "[2001:db8::1]:443"),
        ),
        (
            v2(0x21, 0x11, &tlv),
            2,
            tcp("192.0.2.7:51000", "10.0.0.1:443"),
        ),
        // LOCAL: the balancer's own connection (health check), addresses ignored.
        (v2(0x20, 0x00, &[]), 2, Addresses::Keep),
        (v2(0x20, 0x11, &v2_tcp4_body()), 2, Addresses::Keep),
        // PROXY over UNSPEC, UNIX or UDP: the real endpoints are kept.
        (v2(0x21, 0x00, &[]), 2, Addresses::Keep),
        (v2(0x21, 0x31, &unix), 2, Addresses::Keep),
        (v2(0x21, 0x12, &v2_tcp4_body()), 2, Addresses::Keep),
    ];
    for (input, version, addresses) in cases {
        let want = Header {
            version,
            addresses,
            len: input.len(),
        };
        assert_eq!(parse(&input), Ok(Some(want)), "{input:?}");
        // Bytes after the header are not part of it.
        let mut more = input.clone();
        more.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
        assert_eq!(parse(&more), Ok(Some(want)), "{input:?} + request");
        // Every strict prefix is incomplete, never an error nor a header.
        for n in 0..input.len() {
            assert_eq!(parse(&input[..n]), Ok(None), "{input:?} cut at {n}");
        }
    }
    assert_eq!(
        parse(b"PROXY TCP4 192.0.2.7 10.0.0.1 51000 443\r\n")
            .unwrap()
            .unwrap()
            .source(),
        Some(v4("192.0.2.7:51000"))
    );
}

#[test]
fn malformed_headers() {
    let mut long_v1 = b"PROXY UNKNOWN ".to_vec();
    long_v1.resize(V1_MAX, b'x');
    let mut max_v1 = b"PROXY UNKNOWN ".to_vec();
    max_v1.resize(V1_MAX - 2, b'x');
    max_v1.extend_from_slice(b"\r\n");
    assert!(parse(&max_v1).unwrap().is_some(), "107 bytes is the limit");
    let mut too_long_v2 = v2(0x21, 0x11, &[]);
    too_long_v2[14..16].copy_from_slice(&((V2_MAX - 15) as u16).to_be_bytes());
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"GET / HTTP/1.1\r\n".to_vec(), "signature"),
        (b"\x16\x03\x01\x02\x00".to_vec(), "signature"),
        (b"PROXZ".to_vec(), "signature"),
        (b"PROXY\r\n".to_vec(), "signature"),
        (b"\r\n\r\n\0\r\nQUIX".to_vec(), "signature"),
        (b"\r\n\r\nGET".to_vec(), "signature"),
        (long_v1, "107"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX".to_vec(), "LF"),
        (
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n".to_vec(),
            "LF without CR",
        ),
        (
            b"PROXY UNKNOWN\nGET / HTTP/1.1\r\n".to_vec(),
            "LF without CR",
        ),
        (b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n".to_vec(), "protocol"),
        (b"PROXY tcp4 1.2.3.4 5.6.7.8 1 2\r\n".to_vec(), "protocol"),
        (b"PROXY \r\n".to_vec(), "protocol"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n".to_vec(), "missing"),
        (b"PROXY TCP4 1.2.3.4\r\n".to_vec(), "missing"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n".to_vec(), "extra"),
        (b"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n".to_vec(), "address"),
        (b"PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n".to_vec(), "address"),
        (b"PROXY TCP4 ::1 ::1 1 2\r\n".to_vec(), "address"),
        (b"PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n".to_vec(), "address"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n".to_vec(), "port"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n".to_vec(), "port"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n".to_vec(), "port"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 \r\n".to_vec(), "port"),
        (
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 99999999\r\n".to_vec(),
            "port",
        ),
        (v2(0x11, 0x11, &v2_tcp4_body()), "version"),
        (v2(0x31, 0x11, &v2_tcp4_body()), "version"),
        (v2(0x22, 0x11, &v2_tcp4_body()), "command"),
        (v2(0x21, 0x41, &v2_tcp4_body()), "family"),
        (v2(0x21, 0x13, &v2_tcp4_body()), "family"),
        (v2(0x21, 0x11, &v2_tcp4_body()[..11]), "shorter"),
        (v2(0x21, 0x21, &v2_tcp4_body()), "shorter"),
        (v2(0x20, 0x31, &[0; 100]), "shorter"),
        (too_long_v2, "longer"),
    ];
    for (input, why) in cases {
        match parse(&input) {
            Err(Malformed(reason)) => assert!(
                reason.contains(why),
                "{input:?}: reason `{reason}` lacks `{why}`"
            ),
            other => panic!("{input:?}: expected an error about {why}, got {other:?}"),
        }
    }
}

/// A small deterministic generator (xorshift): the mutation loop needs no dependency and
/// reproduces exactly.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Mutations of valid headers (byte flips, insertions, deletions, truncations, random length
/// fields) never panic, and whatever is accepted stays inside the input and its bounds.
#[test]
fn mutations_never_panic() {
    let seeds = [
        b"PROXY TCP4 192.0.2.7 10.0.0.1 51000 443\r\nGET".to_vec(),
        b"PROXY TCP6 2001:db8::7 2001:db8::1 0 65535\r\n".to_vec(),
        b"PROXY UNKNOWN\r\n".to_vec(),
        v2(0x21, 0x11, &v2_tcp4_body()),
        v2(0x21, 0x21, &v2_tcp6_body()),
        v2(0x20, 0x00, &[1, 2, 3]),
    ];
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut accepted = 0;
    for round in 0..200_000 {
        let mut b = seeds[round % seeds.len()].clone();
        for _ in 0..1 + rng.below(4) {
            let i = rng.below(b.len() + 1);
            match rng.below(5) {
                0 if i < b.len() => b[i] = rng.next() as u8,
                1 => b.insert(i, rng.next() as u8),
                2 if i < b.len() => {
                    b.remove(i);
                }
                3 => b.truncate(i),
                // The v2 length field, where it matters most.
                _ if b.len() >= 16 && b[0] == b'\r' => {
                    b[14] = rng.next() as u8;
                    b[15] = rng.next() as u8;
                }
                _ => {}
            }
        }
        if let Ok(Some(h)) = parse(&b) {
            accepted += 1;
            assert!(h.len <= b.len(), "{b:?}");
            assert!(h.len <= V1_MAX.max(V2_MAX), "{b:?}");
            assert!(h.version == 1 || h.version == 2);
        }
    }
    // The loop exercised the accepting paths too, not only the refusals.
    assert!(accepted > 1000, "only {accepted} mutants accepted");
}

/// Over a real socket: a header written in pieces is read whole, the bytes after it come back
/// from the stream's next reads (even into a buffer too small to take them at once), and a
/// malformed header is refused.
#[test]
fn read_header_keeps_the_bytes_after_it() {
    use std::io::Write;
    use std::time::Duration;

    use crate::net::Io;

    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let header = v2(0x21, 0x11, &v2_tcp4_body());
    let pieces: Vec<Vec<u8>> = vec![
        header[..5].to_vec(),
        header[5..14].to_vec(),
        [&header[14..], b"GET / HTTP/1.1\r\n".as_slice()].concat(),
    ];
    let client = std::thread::spawn(move || {
        let mut s = std::net::TcpStream::connect(addr).expect("connect");
        s.set_nodelay(true).expect("nodelay");
        for p in pieces {
            s.write_all(&p).expect("write");
            std::thread::sleep(Duration::from_millis(30));
        }
        s.write_all(b"Host: h\r\n\r\n").expect("write");
        let mut bad = std::net::TcpStream::connect(addr).expect("connect");
        bad.write_all(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 99999\r\n")
            .expect("write");
        std::thread::sleep(Duration::from_millis(200));
    });
    tokio_uring::start(async {
        let l = tokio_uring::net::TcpListener::from_std(listener);
        let deadline = Instant::now() + Duration::from_secs(5);

        let (tcp, _) = l.accept().await.expect("accept");
        let io = TcpIo::new(tcp);
        let h = read_header(&io, deadline).await.expect("header");
        assert_eq!(h.source(), Some(v4("192.0.2.7:51000")));
        // A 4-byte buffer: the leftover comes back in order, in pieces, before the socket.
        let mut got = Vec::new();
        while !got.ends_with(b"\r\n\r\n") {
            let (n, b) = io.read(Vec::with_capacity(4)).await;
            assert!(n.expect("read") > 0);
            got.extend_from_slice(&b);
        }
        assert_eq!(got, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n");

        let (tcp, _) = l.accept().await.expect("accept");
        let io = TcpIo::new(tcp);
        match read_header(&io, deadline).await {
            Err(ReadHeaderError::Malformed(Malformed(why))) => assert!(why.contains("port")),
            other => panic!("expected a malformed header, got {other:?}"),
        }
    });
    client.join().expect("client");
}
