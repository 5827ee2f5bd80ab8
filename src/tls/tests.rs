//! TLS tests over real loopback sockets on tokio-uring, with certificates made by rcgen.

use std::future::Future;
use std::io::Read as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::join;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::client::Tls12Resumption;
use rustls::{
    ClientConfig, HandshakeKind, ProtocolVersion, RootCertStore, SupportedProtocolVersion,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use super::sni::{dns_names, SniResolver};
use super::stream::TlsStream;
use super::{client_config, server_config};
use crate::net::{bufpool, Io, TcpIo};

const HANDSHAKE: Duration = Duration::from_secs(5);
/// Every test is bounded: a hang is a failure, not a stuck CI run.
const TEST_LIMIT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------------
// Fixtures

/// A scratch directory, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "kcdproxy-tls-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Ca(CertifiedIssuer<'static, KeyPair>);

struct Leaf {
    cert_pem: String,
    key_pem: String,
    der: Vec<u8>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        Ca(CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap())
    }

    fn pem(&self) -> String {
        self.0.pem()
    }

    fn der(&self) -> CertificateDer<'static> {
        self.0.der().clone()
    }

    /// A server certificate for `names` (DNS names, or IP addresses), signed by this CA.
    fn leaf(&self, names: &[&str]) -> Leaf {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "kcdproxy test server");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.0).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().to_vec(),
        }
    }
}

/// A CA, a `localhost` server certificate and its key, written to files.
struct Pki {
    _dir: Scratch,
    ca: Ca,
    ca_file: PathBuf,
    cert_file: PathBuf,
    key_file: PathBuf,
    leaf: Leaf,
}

fn pki(tag: &str) -> Pki {
    let dir = Scratch::new(tag);
    let ca = Ca::new("kcdproxy test CA");
    let leaf = ca.leaf(&["localhost", "127.0.0.1"]);
    Pki {
        ca_file: dir.write("ca.pem", &ca.pem()),
        cert_file: dir.write("server.pem", &leaf.cert_pem),
        key_file: dir.write("server.key", &leaf.key_pem),
        _dir: dir,
        ca,
        leaf,
    }
}

impl Pki {
    fn server(&self) -> Arc<rustls::ServerConfig> {
        server_config(&[(self.cert_file.clone(), self.key_file.clone())]).unwrap()
    }

    fn client(&self) -> Arc<ClientConfig> {
        client_config(Some(&self.ca_file)).unwrap()
    }

    /// A client limited to some protocol versions (and a TLS 1.2 resumption mode), trusting
    /// this CA.
    fn client_with(
        &self,
        versions: &[&'static SupportedProtocolVersion],
        tls12: Tls12Resumption,
    ) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca.der()).unwrap();
        let mut cfg =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_protocol_versions(versions)
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        cfg.resumption = rustls::client::Resumption::default().tls12_resumption(tls12);
        Arc::new(cfg)
    }
}

/// Runs a test body on a tokio-uring runtime, failing it if it takes too long.
fn run(body: impl Future<Output = ()>) {
    tokio_uring::start(async {
        tokio::time::timeout(TEST_LIMIT, body)
            .await
            .expect("test hung");
    });
}

fn listen() -> (tokio_uring::net::TcpListener, SocketAddr) {
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = std_listener.local_addr().unwrap();
    (tokio_uring::net::TcpListener::from_std(std_listener), addr)
}

fn dns(name: &str) -> ServerName<'static> {
    ServerName::try_from(name.to_owned()).unwrap()
}

fn localhost_ip() -> ServerName<'static> {
    ServerName::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST).into())
}

type Handshook = std::io::Result<TlsStream<TcpIo>>;

/// Connects a client to a server over loopback and runs both handshakes.
async fn handshake(
    server_cfg: Arc<rustls::ServerConfig>,
    client_cfg: Arc<ClientConfig>,
    name: ServerName<'static>,
) -> (Handshook, Handshook) {
    let (listener, addr) = listen();
    let server = async {
        let (tcp, _) = listener.accept().await.unwrap();
        TlsStream::accept(TcpIo::new(tcp), server_cfg, HANDSHAKE).await
    };
    let client = async {
        let tcp = TcpIo::connect(addr).await.unwrap();
        TlsStream::connect(tcp, client_cfg, name, HANDSHAKE).await
    };
    join(server, client).await
}

/// Both handshakes must succeed.
async fn connected(
    server_cfg: Arc<rustls::ServerConfig>,
    client_cfg: Arc<ClientConfig>,
    name: ServerName<'static>,
) -> (TlsStream<TcpIo>, TlsStream<TcpIo>) {
    let (server, client) = handshake(server_cfg, client_cfg, name).await;
    (
        server.expect("server handshake"),
        client.expect("client handshake"),
    )
}

/// Reads exactly `n` bytes.
async fn read_exact(io: &impl Io, n: usize) -> Vec<u8> {
    let mut buf = Vec::with_capacity(n);
    while buf.len() < n {
        let (res, b) = io.read(buf).await;
        buf = b;
        assert!(
            res.expect("read") > 0,
            "EOF after {} of {n} bytes",
            buf.len()
        );
    }
    buf
}

/// Reads until end of stream.
async fn read_to_end(io: &impl Io) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(4096);
    loop {
        buf.reserve(4096);
        let (res, b) = io.read(buf).await;
        buf = b;
        if res? == 0 {
            return Ok(buf);
        }
    }
}

async fn write(io: &impl Io, data: &[u8]) {
    let (res, _) = io.write_all(data.to_vec()).await;
    res.expect("write");
}

// ---------------------------------------------------------------------------------------------
// Handshakes

#[test]
fn echo_both_directions() {
    let pki = pki("echo");
    run(async {
        let (server, client) = connected(pki.server(), pki.client(), dns("localhost")).await;
        assert_eq!(server.sni().as_deref(), Some("localhost"));
        assert_eq!(client.sni(), None);
        assert_eq!(client.peer_end_entity_cert(), Some(pki.leaf.der.clone()));
        assert_eq!(
            server.peer_end_entity_cert(),
            None,
            "no client certificates"
        );

        let echo = async {
            let request = read_exact(&server, 5).await;
            write(&server, &[&request[..], b" pong"].concat()).await;
        };
        let ask = async {
            write(&client, b"ping!").await;
            read_exact(&client, 10).await
        };
        let ((), answer) = join(echo, ask).await;
        assert_eq!(answer, b"ping! pong");
    });
}

#[test]
fn alpn_is_http11_on_both_sides() {
    let pki = pki("alpn");
    run(async {
        let (server, client) = connected(pki.server(), pki.client(), dns("localhost")).await;
        assert_eq!(server.conn().alpn_protocol(), Some(&b"http/1.1"[..]));
        assert_eq!(client.conn().alpn_protocol(), Some(&b"http/1.1"[..]));
    });
}

/// Forces each protocol version from the client side, checks both ends agree, that data flows,
/// and that a second connection resumes the session (tickets, and TLS 1.2 session IDs).
#[test]
fn tls12_and_tls13_forced_and_resumed() {
    let pki = pki("versions");
    let cases: [(
        &[&'static SupportedProtocolVersion],
        Tls12Resumption,
        ProtocolVersion,
    ); 3] = [
        (
            &[&rustls::version::TLS13],
            Tls12Resumption::SessionIdOrTickets,
            ProtocolVersion::TLSv1_3,
        ),
        (
            &[&rustls::version::TLS12],
            Tls12Resumption::SessionIdOrTickets,
            ProtocolVersion::TLSv1_2,
        ),
        // No tickets: resumption through the server's session cache.
        (
            &[&rustls::version::TLS12],
            Tls12Resumption::SessionIdOnly,
            ProtocolVersion::TLSv1_2,
        ),
    ];
    run(async {
        let server_cfg = pki.server();
        for (versions, tls12, expected) in cases {
            let client_cfg = pki.client_with(versions, tls12);
            for round in 0..2 {
                let (server, client) =
                    connected(server_cfg.clone(), client_cfg.clone(), dns("localhost")).await;
                for side in [&server, &client] {
                    let conn = side.conn();
                    assert_eq!(conn.protocol_version(), Some(expected));
                    let kind = conn.handshake_kind();
                    let want = if round == 0 {
                        HandshakeKind::Full
                    } else {
                        HandshakeKind::Resumed
                    };
                    assert_eq!(kind, Some(want), "{expected:?} {tls12:?} round {round}");
                }
                // Data both ways; the client's read also takes in TLS 1.3 session tickets.
                let (_, got) = join(write(&server, b"hello"), read_exact(&client, 5)).await;
                assert_eq!(got, b"hello");
                let (_, got) = join(write(&client, b"world"), read_exact(&server, 5)).await;
                assert_eq!(got, b"world");
            }
        }
    });
}

#[test]
fn sni_selects_the_matching_certificate() {
    let dir = Scratch::new("sni");
    let ca = Ca::new("sni CA");
    let alpha = ca.leaf(&["alpha.test", "127.0.0.1"]);
    let beta = ca.leaf(&["*.beta.test", "127.0.0.1"]);
    let pairs = [
        (
            dir.write("alpha.pem", &alpha.cert_pem),
            dir.write("alpha.key", &alpha.key_pem),
        ),
        (
            dir.write("beta.pem", &beta.cert_pem),
            dir.write("beta.key", &beta.key_pem),
        ),
    ];
    let server_cfg = server_config(&pairs).unwrap();
    let ca_file = dir.write("ca.pem", &ca.pem());
    let client_cfg = client_config(Some(&ca_file)).unwrap();
    run(async {
        for (name, want, sni) in [
            (dns("alpha.test"), &alpha.der, Some("alpha.test")),
            (dns("www.beta.test"), &beta.der, Some("www.beta.test")),
            // An IP address sends no SNI: the first pair.
            (localhost_ip(), &alpha.der, None),
        ] {
            let (server, client) = connected(server_cfg.clone(), client_cfg.clone(), name).await;
            assert_eq!(server.sni().as_deref(), sni);
            assert_eq!(
                client.peer_end_entity_cert().as_ref(),
                Some(want),
                "{sni:?}"
            );
        }
    });
}

#[test]
fn sni_lookup_prefers_exact_names_then_wildcards_then_the_first_pair() {
    let ca = Ca::new("lookup CA");
    let provider = rustls::crypto::ring::default_provider();
    let key = |names: &[&str]| {
        let leaf = ca.leaf(names);
        rustls::sign::CertifiedKey::from_der(
            vec![leaf.der.into()],
            PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap(),
            &provider,
        )
        .unwrap()
    };
    let resolver = SniResolver::new(vec![
        key(&["default.test"]),
        key(&["*.beta.test"]),
        key(&["exact.beta.test", "w*.beta.test"]),
        key(&["Alpha.Test", "*.beta.test"]),
    ]);
    for (sni, want) in [
        ("default.test", Some(0)),
        ("alpha.test", Some(3)),
        ("ALPHA.test.", Some(3)),
        ("exact.beta.test", Some(2)),
        ("x.beta.test", Some(1)),
        ("www.beta.test", Some(1)),
        ("beta.test", None),
        ("a.b.beta.test", None),
        ("nomatch.test", None),
        ("", None),
    ] {
        assert_eq!(resolver.lookup(sni), want, "{sni:?}");
    }
}

#[test]
fn client_rejects_a_certificate_from_an_unknown_ca() {
    let pki = pki("unknown-ca");
    let dir = Scratch::new("other-ca");
    let other_ca = dir.write("other.pem", &Ca::new("some other CA").pem());
    run(async {
        for client_cfg in [
            client_config(Some(&other_ca)).unwrap(),
            // No CA file: nothing is trusted.
            client_config(None).unwrap(),
        ] {
            let (server, client) = handshake(pki.server(), client_cfg, dns("localhost")).await;
            let err = client.err().expect("client must reject the certificate");
            assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
            assert!(
                err.to_string().contains("UnknownIssuer"),
                "unexpected error: {err}"
            );
            // The server learns why from the client's alert.
            let err = server.err().expect("server handshake must fail too");
            assert!(err.to_string().contains("alert"), "unexpected error: {err}");
        }
    });
}

#[test]
fn client_rejects_a_certificate_for_another_name() {
    let pki = pki("wrong-name");
    run(async {
        let (_, client) = handshake(pki.server(), pki.client(), dns("other.test")).await;
        let err = client.err().expect("client must reject the certificate");
        assert!(err.to_string().contains("not valid for name"), "{err}");
    });
}

#[test]
fn server_handshake_times_out_promptly_when_the_client_is_silent() {
    let pki = pki("timeout");
    run(async {
        let (listener, addr) = listen();
        let mut silent = std::net::TcpStream::connect(addr).unwrap();
        let (tcp, _) = listener.accept().await.unwrap();
        let started = Instant::now();
        let err = TlsStream::accept(TcpIo::new(tcp), pki.server(), Duration::from_millis(200))
            .await
            .err()
            .expect("must time out");
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
        let took = started.elapsed();
        assert!(
            (Duration::from_millis(190)..Duration::from_secs(2)).contains(&took),
            "{took:?}"
        );
        // The connection was shut down: the silent client sees EOF, not a hang.
        silent
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let mut byte = [0u8; 1];
        assert_eq!(silent.read(&mut byte).unwrap(), 0);
    });
}

#[test]
fn client_handshake_times_out_when_the_server_never_answers() {
    let pki = pki("timeout-client");
    run(async {
        // Connections complete in the kernel's backlog; nobody ever answers the ClientHello.
        let mute = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let tcp = TcpIo::connect(mute.local_addr().unwrap()).await.unwrap();
        let started = Instant::now();
        let err = TlsStream::connect(
            tcp,
            pki.client(),
            dns("localhost"),
            Duration::from_millis(200),
        )
        .await
        .err()
        .expect("must time out");
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
        assert!(started.elapsed() < Duration::from_secs(2));
    });
}

#[test]
fn eof_during_the_handshake_is_an_error() {
    let pki = pki("hs-eof");
    run(async {
        let (listener, addr) = listen();
        let quitter = std::net::TcpStream::connect(addr).unwrap();
        let (tcp, _) = listener.accept().await.unwrap();
        drop(quitter);
        let err = TlsStream::accept(TcpIo::new(tcp), pki.server(), HANDSHAKE)
            .await
            .err()
            .expect("must fail");
        assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof);
    });
}

#[test]
fn garbage_instead_of_a_client_hello_is_an_error() {
    let pki = pki("garbage");
    run(async {
        let (listener, addr) = listen();
        let client = async {
            let tcp = TcpIo::connect(addr).await.unwrap();
            write(&tcp, b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n").await;
            // Whatever the server answers (an alert), it then closes.
            read_to_end(&tcp).await.ok()
        };
        let server = async {
            let (tcp, _) = listener.accept().await.unwrap();
            TlsStream::accept(TcpIo::new(tcp), pki.server(), HANDSHAKE).await
        };
        let (server, _) = join(server, client).await;
        let err = server.err().expect("must fail");
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
    });
}

// ---------------------------------------------------------------------------------------------
// Data and end of stream

/// The byte at position `i` of the stream sent by side `seed`.
fn pattern(seed: u64, i: u64) -> u8 {
    (i.wrapping_mul(2_654_435_761).wrapping_add(seed) >> 7) as u8
}

/// Sends `total` bytes of the pattern in chunks of uneven sizes, reusing one buffer.
async fn send_pattern(io: &impl Io, total: usize, seed: u64) {
    const SIZES: [usize; 6] = [1, 1500, 16 * 1024, 64 * 1024, 70_000, 5];
    let mut buf = Vec::with_capacity(70_000);
    let mut sent = 0;
    for size in SIZES.iter().cycle() {
        if sent == total {
            break;
        }
        let n = (*size).min(total - sent);
        buf.clear();
        buf.extend((sent..sent + n).map(|i| pattern(seed, i as u64)));
        let (res, b) = io.write_all(buf).await;
        res.expect("write");
        buf = b;
        sent += n;
    }
}

/// Receives `total` bytes and checks them against the pattern, with buffers of uneven sizes
/// (small ones read through the small ciphertext buffer, big ones through a pool buffer).
async fn recv_pattern(io: &impl Io, total: usize, seed: u64) {
    const CAPACITIES: [usize; 4] = [bufpool::STREAM_BUF, 100, 20_000, 3 * bufpool::STREAM_BUF];
    let mut received = 0;
    for cap in CAPACITIES.iter().cycle() {
        if received == total {
            break;
        }
        let (res, buf) = io.read(Vec::with_capacity(*cap)).await;
        let n = res.expect("read");
        assert!(n > 0, "EOF after {received} of {total} bytes");
        assert_eq!(n, buf.len());
        for (k, &b) in buf.iter().enumerate() {
            let i = (received + k) as u64;
            assert_eq!(b, pattern(seed, i), "byte {i}");
        }
        received += n;
    }
    assert_eq!(received, total);
}

/// 8 MiB each way at once through one connection, with each end's read and write futures
/// joined in one task as the proxy does; then close_notify each way.
#[test]
fn eight_mib_each_way_concurrently() {
    const TOTAL: usize = 8 << 20;
    let pki = pki("bulk");
    run(async {
        let (server, client) = connected(pki.server(), pki.client(), dns("localhost")).await;
        async fn duplex(io: &TlsStream<TcpIo>, mine: u64, theirs: u64) {
            join(
                send_pattern(io, TOTAL, mine),
                recv_pattern(io, TOTAL, theirs),
            )
            .await;
        }
        join(duplex(&server, 1, 2), duplex(&client, 2, 1)).await;

        // Idle now: no pool-sized ciphertext buffer stays with either stream.
        for side in [&server, &client] {
            assert!(side.rx_capacity() < bufpool::STREAM_BUF);
        }

        // Half-close each way: close_notify reads as Ok(0), the other direction still works.
        let (_, rest) = join(client.close(), read_to_end(&server)).await;
        assert!(rest.unwrap().is_empty());
        let (_, rest) = join(
            async {
                write(&server, b"bye").await;
                server.close().await
            },
            read_to_end(&client),
        )
        .await;
        assert_eq!(rest.unwrap(), b"bye");
    });
}

/// TLS 1.3 KeyUpdates (each asking the peer to answer with its own) in both directions while
/// both ends read and write at once. The readers switch keys mid-stream and rustls sends each
/// answer ahead of that side's next record: any reordering of records between the concurrent
/// paths would fail decryption.
#[test]
fn key_updates_during_a_concurrent_transfer() {
    const TOTAL: usize = 4 << 20;
    /// Sends the pattern in 64 KiB chunks, asking for a key update every 4 chunks.
    async fn send_with_key_updates(io: &TlsStream<TcpIo>, seed: u64) {
        const CHUNK: usize = 64 * 1024;
        for (n, start) in (0..TOTAL).step_by(CHUNK).enumerate() {
            if n % 4 == 3 {
                io.conn().refresh_traffic_keys().expect("key update");
            }
            let chunk: Vec<u8> = (start..start + CHUNK)
                .map(|i| pattern(seed, i as u64))
                .collect();
            let (res, _) = io.write_all(chunk).await;
            res.expect("write");
        }
    }
    async fn duplex(io: &TlsStream<TcpIo>, mine: u64, theirs: u64) {
        join(
            send_with_key_updates(io, mine),
            recv_pattern(io, TOTAL, theirs),
        )
        .await;
    }
    let pki = pki("key-update");
    run(async {
        let (server, client) = connected(pki.server(), pki.client(), dns("localhost")).await;
        join(duplex(&server, 3, 4), duplex(&client, 4, 3)).await;
    });
}

#[test]
fn close_notify_reads_as_end_of_stream() {
    let pki = pki("close-notify");
    run(async {
        let (server, client) = connected(pki.server(), pki.client(), dns("localhost")).await;
        let sender = async {
            write(&client, b"last words").await;
            client.close().await;
        };
        let (_, got) = join(sender, read_to_end(&server)).await;
        assert_eq!(got.unwrap(), b"last words");
        // And again: still the end.
        let (res, _) = server.read(Vec::with_capacity(10)).await;
        assert_eq!(res.unwrap(), 0);
    });
}

/// A TCP FIN right after a complete record, without close_notify, as many HTTP clients do.
#[test]
fn tcp_eof_between_records_reads_as_end_of_stream() {
    let pki = pki("eof-boundary");
    run(async {
        let (server, client) = connected(pki.server(), pki.client(), dns("localhost")).await;
        let sender = async {
            write(&client, b"no goodbye").await;
            client.get_ref().close().await;
        };
        let (_, got) = join(sender, read_to_end(&server)).await;
        assert_eq!(got.unwrap(), b"no goodbye");
    });
}

/// A TCP FIN in the middle of a record is a truncation, reported as UnexpectedEof.
#[test]
fn tcp_eof_inside_a_record_is_an_error() {
    let pki = pki("eof-mid-record");
    run(async {
        let (server, client) = connected(pki.server(), pki.client(), dns("localhost")).await;
        let sender = async {
            write(&client, b"complete").await;
            // The header of a 64-byte application data record, and 3 bytes of it.
            write(client.get_ref(), &[0x17, 0x03, 0x03, 0x00, 0x40, 1, 2, 3]).await;
            client.get_ref().close().await;
        };
        let (_, got) = join(sender, async {
            let first = read_exact(&server, 8).await;
            (first, read_to_end(&server).await)
        })
        .await;
        assert_eq!(got.0, b"complete");
        let err = got.1.expect_err("truncated record");
        assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof);
    });
}

/// A corrupted record fails the read with rustls' reason, and the peer gets an alert.
#[test]
fn a_corrupted_record_is_an_error_not_a_hang() {
    let pki = pki("corrupt");
    run(async {
        let (server, client) = connected(pki.server(), pki.client(), dns("localhost")).await;
        let mut record = vec![0x17, 0x03, 0x03, 0x00, 0x20];
        record.extend_from_slice(&[0xAB; 0x20]);
        let (_, (server_res, client_res)) = join(
            write(client.get_ref(), &record),
            join(read_to_end(&server), read_to_end(&client)),
        )
        .await;
        let err = server_res.expect_err("bad record MAC");
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("cannot decrypt"), "{err}");
        let err = client_res.expect_err("the server's alert");
        assert!(err.to_string().contains("alert"), "{err}");
    });
}

#[test]
fn a_second_concurrent_read_is_refused() {
    let pki = pki("two-reads");
    run(async {
        let (server, client) = connected(pki.server(), pki.client(), dns("localhost")).await;
        let first = server.read(Vec::with_capacity(16));
        let second = async {
            let (res, _) = server.read(Vec::with_capacity(16)).await;
            assert!(res.is_err(), "a second read must be refused");
            write(&client, b"x").await;
        };
        let ((res, buf), ()) = join(first, second).await;
        assert_eq!(res.unwrap(), 1);
        assert_eq!(buf, b"x");
    });
}

// ---------------------------------------------------------------------------------------------
// Configuration

#[test]
fn server_config_reports_every_bad_file() {
    let dir = Scratch::new("bad-config");
    let ca = Ca::new("config CA");
    let good = ca.leaf(&["good.test"]);
    let other = ca.leaf(&["other.test"]);
    let good_pem = dir.write("good.pem", &good.cert_pem);
    let good_key = dir.write("good.key", &good.key_pem);
    let other_key = dir.write("other.key", &other.key_pem);
    let no_pem = dir.write("empty.pem", "not PEM at all\n");
    let cert_only = dir.write("cert-only.pem", &good.cert_pem);
    let broken = dir.write(
        "broken.pem",
        "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
    );
    let missing_cert = dir.path("missing.pem");
    let missing_key = dir.path("missing.key");

    let pairs = [
        (good_pem.clone(), good_key.clone()),
        (missing_cert.clone(), missing_key.clone()),
        (no_pem.clone(), good_key.clone()),
        (good_pem.clone(), other_key.clone()),
        (good_pem.clone(), cert_only.clone()),
        (broken.clone(), good_key.clone()),
    ];
    let errors = server_config(&pairs).expect_err("bad files");
    let expected: [(&str, &Path); 6] = [
        ("cannot read certificate file", &missing_cert),
        ("cannot read private key file", &missing_key),
        ("no certificate in", &no_pem),
        ("key does not match certificate", &other_key),
        ("no private key in", &cert_only),
        ("bad PEM in certificate file", &broken),
    ];
    assert_eq!(errors.len(), expected.len(), "{errors:#?}");
    for ((what, file), error) in expected.iter().zip(&errors) {
        assert!(error.contains(what), "{error:?} should say {what:?}");
        assert!(
            error.contains(&*file.display().to_string()),
            "{error:?} should name {}",
            file.display()
        );
    }
    // The mismatch names both files.
    assert!(errors[3].contains(&*good_pem.display().to_string()));

    assert_eq!(
        server_config(&[]).expect_err("nothing configured"),
        ["no TLS certificate configured"]
    );
}

#[test]
fn server_config_rejects_a_second_certificate_sni_can_never_select() {
    let dir = Scratch::new("no-san");
    let ca = Ca::new("no-san CA");
    let named = ca.leaf(&["named.test"]);
    let unnamed = ca.leaf(&[]);
    let pairs = [
        (
            dir.write("named.pem", &named.cert_pem),
            dir.write("named.key", &named.key_pem),
        ),
        (
            dir.write("unnamed.pem", &unnamed.cert_pem),
            dir.write("unnamed.key", &unnamed.key_pem),
        ),
    ];
    let missing = (dir.path("missing.pem"), dir.path("missing.key"));
    let errors = server_config(&[missing.clone(), pairs[0].clone(), pairs[1].clone()])
        .expect_err("unreachable certificate");
    // Reported together with the other pair's problems.
    assert_eq!(errors.len(), 3, "{errors:#?}");
    assert!(errors[2].contains("unnamed.pem") && errors[2].contains("no DNS subjectAltName"));
    // Alone, a certificate without names is fine: it is the default.
    assert!(server_config(&pairs[1..]).is_ok());
}

#[test]
fn server_config_accepts_chain_and_key_in_one_file_with_the_chain() {
    let dir = Scratch::new("combined");
    let ca = Ca::new("combined CA");
    let leaf = ca.leaf(&["combined.test"]);
    let combined = dir.write(
        "combined.pem",
        &format!("{}{}{}", leaf.cert_pem, ca.pem(), leaf.key_pem),
    );
    assert!(server_config(&[(combined.clone(), combined)]).is_ok());
}

#[test]
fn client_config_reports_bad_ca_files() {
    let dir = Scratch::new("bad-ca");
    let missing = dir.path("missing.pem");
    let err = client_config(Some(&missing)).expect_err("missing");
    assert!(
        err.contains("cannot read CA file") && err.contains("missing.pem"),
        "{err}"
    );
    let empty = dir.write("empty.pem", "");
    let err = client_config(Some(&empty)).expect_err("empty");
    assert!(
        err.contains("no certificate in") && err.contains("empty.pem"),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------------------
// Pieces

#[test]
fn dns_names_reads_only_dns_subject_alt_names() {
    let ca = Ca::new("san CA");
    let leaf = ca.leaf(&["a.test", "*.b.test", "10.1.2.3", "c.test"]);
    assert_eq!(dns_names(&leaf.der), ["a.test", "*.b.test", "c.test"]);
    assert!(dns_names(&ca.der()).is_empty(), "the CA has no SAN");
    // Truncated or corrupted input gives fewer names, never a panic.
    for end in 0..leaf.der.len() {
        let _ = dns_names(&leaf.der[..end]);
    }
    let mut flipped = leaf.der.clone();
    for i in 0..flipped.len() {
        flipped[i] ^= 0xff;
        let _ = dns_names(&flipped);
        flipped[i] ^= 0xff;
    }
    // Real-world certificates, when the machine has some: no panic.
    if let Ok(dir) = std::fs::read_dir("/etc/ssl/certs") {
        for entry in dir.flatten() {
            if let Ok(data) = std::fs::read(entry.path()) {
                for cert in CertificateDer::pem_slice_iter(&data).flatten() {
                    let _ = dns_names(&cert);
                }
            }
        }
    }
}

#[test]
fn record_tracker_follows_record_boundaries_across_splits() {
    use super::stream::RecordTracker;
    let mut stream = Vec::new();
    for len in [0u16, 1, 300, 16_401] {
        stream.extend_from_slice(&[0x17, 0x03, 0x03]);
        stream.extend_from_slice(&len.to_be_bytes());
        stream.resize(stream.len() + usize::from(len), 0);
    }
    let boundaries = [5, 11, 316, stream.len()];
    for step in [1, 2, 5, 7, 4096, stream.len()] {
        let mut tracker = RecordTracker::default();
        let mut fed = 0;
        for chunk in stream.chunks(step) {
            tracker.advance(chunk);
            fed += chunk.len();
            assert_eq!(
                tracker.at_boundary(),
                boundaries.contains(&fed),
                "{step} {fed}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A real client

/// curl (OpenSSL) against a tiny HTTP server on TlsStream: TLS 1.3 and 1.2, two requests on
/// one keep-alive connection each.
#[test]
fn curl_fetches_over_tls() {
    if std::process::Command::new("curl")
        .arg("--version")
        .output()
        .is_err()
    {
        println!("curl not found: skipping curl_fetches_over_tls");
        return;
    }
    const BODY: &str = "hello from kcdproxy\n";
    let pki = pki("curl");
    run(async {
        let (listener, addr) = listen();
        let server_cfg = pki.server();
        for tls_max in ["1.3", "1.2"] {
            let url = format!("https://localhost:{}/", addr.port());
            let curl = std::process::Command::new("curl")
                .args(["--silent", "--show-error", "--max-time", "20"])
                .args(["--tls-max", tls_max, "--cacert"])
                .arg(&pki.ca_file)
                .arg("--resolve")
                .arg(format!("localhost:{}:127.0.0.1", addr.port()))
                .args([&url, &url])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();

            let (tcp, _) = listener.accept().await.unwrap();
            let tls = TlsStream::accept(TcpIo::new(tcp), server_cfg.clone(), HANDSHAKE)
                .await
                .expect("handshake with curl");
            let version = tls.conn().protocol_version();
            let want = if tls_max == "1.3" {
                ProtocolVersion::TLSv1_3
            } else {
                ProtocolVersion::TLSv1_2
            };
            assert_eq!(version, Some(want));
            let mut requests = 0;
            let mut head = Vec::with_capacity(8192);
            loop {
                let (res, buf) = tls.read(head).await;
                head = buf;
                if res.expect("read from curl") == 0 {
                    break;
                }
                while let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                    assert!(head.starts_with(b"GET / HTTP/1.1\r\n"));
                    head.drain(..end + 4);
                    requests += 1;
                    let response = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: text/plain\r\n\r\n{BODY}",
                        BODY.len()
                    );
                    write(&tls, response.as_bytes()).await;
                }
                if requests == 2 {
                    tls.close().await;
                    break;
                }
            }
            assert_eq!(requests, 2);

            let out = curl.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "curl --tls-max {tls_max}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert_eq!(String::from_utf8_lossy(&out.stdout), BODY.repeat(2));
        }
    });
}
