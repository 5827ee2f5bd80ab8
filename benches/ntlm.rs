//! NTLM acceptor costs: parsing an AUTHENTICATE, issuing a CHALLENGE, verifying NTLMv2 with a
//! MIC against the local hash store, and the whole server-side handshake.
//!
//! The client's work (building the AUTHENTICATE) is excluded everywhere: `iter_batched` builds
//! it in the setup, and the handshake bench times only the acceptor's calls (`iter_custom`).
//! Goal: a full handshake's server-side work under 20 µs.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use kcdproxy::auth::ntlm::client::NtlmClient;
use kcdproxy::auth::ntlm::crypto::nt_hash;
use kcdproxy::auth::ntlm::message::AuthenticateMessage;
use kcdproxy::auth::ntlm::{
    FileTime, LocalBackend, NtHashStore, NtlmAcceptor, NtlmConfig, VerifyPolicy,
};

const PASSWORD: &str = "Passw0rd!";

fn setup() -> (NtlmAcceptor, LocalBackend, NtlmClient) {
    let config = NtlmConfig {
        nb_domain: "EXAMPLE".into(),
        nb_computer: "KCDPROXY".into(),
        dns_domain: "example.test".into(),
        dns_computer: "kcdproxy.example.test".into(),
    };
    let hash = hex::encode(nt_hash(PASSWORD).expose());
    // A store of realistic size, so the lookup is not a one-entry special case.
    let mut text = String::new();
    for i in 0..10_000 {
        text.push_str(&format!("EXAMPLE\\user{i}:{hash}\n"));
    }
    text.push_str(&format!("EXAMPLE\\alice:{hash}\n"));
    let store = NtHashStore::parse(&text).expect("store");
    let backend = LocalBackend::new(store, &config);
    let acceptor = NtlmAcceptor::new(&config, VerifyPolicy::default()).expect("config");
    (
        acceptor,
        backend,
        NtlmClient::new("alice", "EXAMPLE", PASSWORD),
    )
}

fn benches(c: &mut Criterion) {
    let (acceptor, backend, client) = setup();
    let negotiate = client.negotiate();
    let now = FileTime::now();

    // One valid exchange, to size and parse.
    let state = acceptor.challenge(&negotiate, now).expect("challenge");
    let auth = client
        .authenticate(&negotiate, state.message())
        .expect("authenticate")
        .message;
    acceptor
        .verify(state, &auth, &backend, now)
        .expect("the bench exchange verifies");

    let mut g = c.benchmark_group("ntlm");
    g.throughput(Throughput::Bytes(auth.len() as u64));
    g.bench_function("parse_authenticate", |b| {
        b.iter(|| AuthenticateMessage::parse(black_box(&auth)).expect("parse"))
    });

    g.throughput(Throughput::Elements(1));
    g.bench_function("negotiate_to_challenge", |b| {
        b.iter(|| {
            acceptor
                .challenge(black_box(&negotiate), now)
                .expect("challenge")
        })
    });

    g.bench_function("verify_ntlmv2_mic_local", |b| {
        b.iter_batched(
            || {
                let state = acceptor.challenge(&negotiate, now).expect("challenge");
                let auth = client
                    .authenticate(&negotiate, state.message())
                    .expect("authenticate")
                    .message;
                (state, auth)
            },
            |(state, auth)| {
                acceptor
                    .verify(state, black_box(&auth), &backend, now)
                    .expect("verify")
            },
            BatchSize::SmallInput,
        )
    });

    // The server's whole share of a handshake: NEGOTIATE → CHALLENGE, AUTHENTICATE → verified.
    g.bench_function("handshake_server_side", |b| {
        b.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            for _ in 0..iters {
                let t = Instant::now();
                let state = acceptor
                    .challenge(black_box(&negotiate), now)
                    .expect("challenge");
                spent += t.elapsed();
                let auth = client
                    .authenticate(&negotiate, state.message())
                    .expect("authenticate")
                    .message;
                let t = Instant::now();
                let v = acceptor
                    .verify(state, black_box(&auth), &backend, now)
                    .expect("verify");
                black_box(v);
                spent += t.elapsed();
            }
            spent
        })
    });
    g.finish();
}

criterion_group!(ntlm, benches);
criterion_main!(ntlm);
