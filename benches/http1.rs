//! HTTP/1 hot paths: head parsing (small, Negotiate-sized, 32 KB Kerberos header), framing
//! validation, backend head encoding, and chunked decoding at three chunk sizes.
//!
//! Throughput is in input bytes (payload bytes for chunked), so MB/s figures compare across
//! input sizes. Run: `cargo bench --bench http1 -- --quick`.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use kcdproxy::http1::{
    encode_request_head, parse_request, request_meta, write_chunk_header, BodyFraming,
    ChunkedDecoder, ForwardInfo, Limits, CHUNK_END, LAST_CHUNK,
};

/// Deterministic base64-alphabet filler standing in for SPNEGO tokens.
fn token(len: usize) -> Vec<u8> {
    const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut x: u32 = 0x1234_5678;
    (0..len)
        .map(|_| {
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            B64[(x >> 26) as usize]
        })
        .collect()
}

fn small_get() -> Vec<u8> {
    b"GET /owa/ HTTP/1.1\r\nHost: mail.example.com\r\nAccept: */*\r\nUser-Agent: bench\r\n\r\n"
        .to_vec()
}

/// An EWS POST as Outlook sends it, with a Kerberos-in-SPNEGO token: about 2 KB.
fn negotiate_post() -> Vec<u8> {
    let mut buf = b"POST /EWS/Exchange.asmx HTTP/1.1\r\n\
        Cache-Control: no-cache\r\n\
        Pragma: no-cache\r\n\
        Content-Type: text/xml; charset=utf-8\r\n\
        User-Agent: Microsoft Office/16.0 (Windows NT 10.0; Microsoft Outlook 16.0.17328; Pro)\r\n\
        X-AnchorMailbox: user@example.com\r\n\
        Accept: */*\r\n\
        Host: mail.example.com\r\n\
        Content-Length: 1234\r\n\
        Connection: Keep-Alive\r\n\
        Cookie: ClientId=0123456789ABCDEF0123456789ABCDEF; X-BackEndCookie=abc\r\n\
        Authorization: Negotiate "
        .to_vec();
    buf.extend_from_slice(&token(1500));
    buf.extend_from_slice(b"\r\n\r\n");
    buf
}

/// A 32 KB Kerberos `Authorization` header (large PAC): the size the proxy must accept.
fn big_auth() -> Vec<u8> {
    let mut buf =
        b"POST /mapi/emsmdb/?MailboxId=x@example.com HTTP/1.1\r\nHost: mail.example.com\r\n\
        Content-Length: 0\r\nAuthorization: Negotiate "
            .to_vec();
    buf.extend_from_slice(&token(32 * 1024));
    buf.extend_from_slice(b"\r\n\r\n");
    buf
}

fn bench_parse(c: &mut Criterion) {
    let limits = Limits::default();
    let mut g = c.benchmark_group("parse_request");
    for (name, buf) in [
        ("small_get", small_get()),
        ("negotiate_2k", negotiate_post()),
        ("auth_32k", big_auth()),
    ] {
        g.throughput(Throughput::Bytes(buf.len() as u64));
        g.bench_function(name, |b| b.iter(|| parse_request(black_box(&buf), &limits)));
    }
    g.finish();
}

fn bench_meta_and_encode(c: &mut Criterion) {
    let buf = negotiate_post();
    let head = parse_request(&buf, &Limits::default())
        .expect("valid")
        .expect("complete");
    let mut g = c.benchmark_group("negotiate_2k");
    g.throughput(Throughput::Bytes(head.head_len as u64));
    g.bench_function("request_meta", |b| {
        b.iter(|| request_meta(black_box(&buf), black_box(&head)))
    });
    let info = ForwardInfo {
        client_ip: IpAddr::V4(Ipv4Addr::new(198, 51, 100, 23)),
        proto: "https",
        host_override: Some("exch01.corp.example.com:443"),
        framing: BodyFraming::Length(1234),
        drop_headers: &["authorization"],
        extra_headers: &[("Authorization", b"Negotiate YIIGhgYJKoZIhvcSAQICAQBuggZ1MIIGcaADAgEFoQMCAQ6iBwMFACAAAACjggSDYYIEfzCCBHugAwIBBaEPGw1DT1JQLkVYQU1QTEUu")],
    };
    let mut out = Vec::with_capacity(4096);
    g.bench_function("encode_request_head", |b| {
        b.iter(|| {
            out.clear();
            encode_request_head(black_box(&buf), black_box(&head), &info, &mut out);
            out.len()
        })
    });
    g.finish();
}

fn bench_chunked(c: &mut Criterion) {
    const BODY: usize = 1 << 20;
    let payload = token(BODY);
    let mut g = c.benchmark_group("chunked_decode_1MiB");
    g.throughput(Throughput::Bytes(BODY as u64));
    for chunk in [64usize, 4096, 65536] {
        let mut wire = Vec::with_capacity(BODY + BODY / chunk * 8 + 16);
        for piece in payload.chunks(chunk) {
            write_chunk_header(piece.len(), &mut wire);
            wire.extend_from_slice(piece);
            wire.extend_from_slice(CHUNK_END);
        }
        wire.extend_from_slice(LAST_CHUNK);
        g.bench_with_input(BenchmarkId::from_parameter(chunk), &wire, |b, wire| {
            b.iter(|| {
                let mut dec = ChunkedDecoder::new();
                let mut got = 0usize;
                // Fed in 16 KiB reads, as a TLS record-sized read buffer would deliver it.
                for read in wire.chunks(16 * 1024) {
                    let _ = dec.feed(black_box(read), |d| got += d.len());
                }
                assert!(dec.is_done() && got == BODY);
                got
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench_parse, bench_meta_and_encode, bench_chunked);
criterion_main!(benches);
