//! Protocol hot paths: signature verification per curve (with the alternative libraries the
//! choice was made against), `#commit` frame decoding, MST inversion of a single-op commit,
//! whole-event verification, and the privacy envelope.
//!
//! `cargo bench -p agentnet-atproto --bench protocol`; figures go in BENCHMARKS.md.

use std::time::Duration;

use atproto::car::{read_car, CarLimits};
use atproto::commit::{invert_ops, verify_commit_event, Commit, RepoWriter, Write};
use atproto::crypto::{Algorithm, Keypair};
use atproto::data::from_cbor;
use atproto::envelope::{open, seal, EncryptionKey, Recipient};
use atproto::frame::{decode_frame, encode_frame, Frame};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use sha2::Digest;

/// A signed-commit-sized message: what relays verify.
const MSG_LEN: usize = 180;
/// Records in the repo the commit benches write into (a busy agent's inbox).
const REPO_RECORDS: usize = 2_000;

fn signatures(c: &mut Criterion) {
    let msg: Vec<u8> = (0..MSG_LEN).map(|i| i as u8).collect();
    let mut g = c.benchmark_group("verify");
    g.throughput(Throughput::Elements(1));

    for alg in [Algorithm::K256, Algorithm::P256, Algorithm::Ed25519] {
        let kp = Keypair::generate(alg);
        let pk = kp.public_key();
        let sig = kp.sign(&msg);
        g.bench_function(BenchmarkId::new("chosen", format!("{alg:?}")), |b| {
            b.iter(|| pk.verify(&msg, &sig).expect("verifies"))
        });
    }

    // The RustCrypto alternatives, same message, for the choice recorded in BENCHMARKS.md.
    {
        use k256::ecdsa::signature::{Signer, Verifier};
        let sk = k256::ecdsa::SigningKey::random(&mut rand::thread_rng());
        let vk = *sk.verifying_key();
        let sig: k256::ecdsa::Signature = sk.sign(&msg);
        g.bench_function(BenchmarkId::new("rustcrypto", "K256"), |b| {
            b.iter(|| vk.verify(&msg, &sig).expect("verifies"))
        });
    }
    {
        use p256::ecdsa::signature::{Signer, Verifier};
        let sk = p256::ecdsa::SigningKey::random(&mut rand::thread_rng());
        let vk = *sk.verifying_key();
        let sig: p256::ecdsa::Signature = sk.sign(&msg);
        g.bench_function(BenchmarkId::new("rustcrypto", "P256"), |b| {
            b.iter(|| vk.verify(&msg, &sig).expect("verifies"))
        });
    }
    g.finish();
}

/// A repo of `REPO_RECORDS` messages and one more single-create commit on top.
fn single_op_commit() -> (atproto::frame::CommitEvent, atproto::crypto::PublicKey) {
    let mut w = RepoWriter::new(
        "did:plc:ewvi7nxzyoun6zhxrhs64oiz",
        Keypair::generate(Algorithm::K256),
    )
    .expect("repo");
    let record = |i: usize| {
        atproto::data::to_cbor(&serde_json::json!({
            "$type": "agent.comms.message",
            "sender": "did:plc:ewvi7nxzyoun6zhxrhs64oiz",
            "recipient": "did:plc:44ybard66vv44zksje25o7dz",
            "content": {"kind": "text", "text": format!("status update number {i}: all green")},
            "createdAt": "2026-11-24T08:00:00.000Z",
        }))
        .expect("encode")
    };
    for chunk in (0..REPO_RECORDS).collect::<Vec<_>>().chunks(100) {
        let writes: Vec<Write> = chunk
            .iter()
            .map(|i| Write::Create {
                collection: "agent.comms.message".into(),
                rkey: format!("3l{i:011}"),
                record: record(*i),
            })
            .collect();
        w.commit(&writes, "2026-11-24T08:00:00.000Z")
            .expect("commit");
    }
    let rkey = w.next_rkey().to_string();
    let ev = w
        .commit(
            &[Write::Create {
                collection: "agent.comms.message".into(),
                rkey,
                record: record(REPO_RECORDS),
            }],
            "2026-11-24T08:00:00.000Z",
        )
        .expect("commit");
    let key = w.key().public_key();
    (ev, key)
}

fn commits(c: &mut Criterion) {
    let (ev, key) = single_op_commit();
    let frame_bytes = encode_frame(&Frame::Commit(Box::new(ev.clone()))).expect("encode");
    let car = read_car(&ev.blocks, CarLimits::FIREHOSE).expect("car");
    let commit: Commit = from_cbor(&car.blocks[&ev.commit]).expect("commit");

    let mut g = c.benchmark_group("commit");
    g.throughput(Throughput::Elements(1));
    g.bench_function("decode_frame", |b| {
        b.iter(|| decode_frame(&frame_bytes).expect("decode"))
    });
    g.bench_function("read_car", |b| {
        b.iter(|| read_car(&ev.blocks, CarLimits::FIREHOSE).expect("car"))
    });
    g.bench_function("invert_single_op", |b| {
        b.iter(|| invert_ops(&commit, &ev.ops, &car.blocks).expect("inverts"))
    });
    g.bench_function("verify_event", |b| {
        b.iter(|| verify_commit_event(&ev, &key, CarLimits::FIREHOSE).expect("verifies"))
    });
    // The floor under every hashed thing: SHA-256 over the frame's CAR.
    g.bench_function("sha256_blocks", |b| {
        b.iter(|| sha2::Sha256::digest(&ev.blocks))
    });
    g.finish();
}

fn envelope(c: &mut Criterion) {
    let record = vec![7u8; 600];
    let uri = "at://did:plc:ewvi7nxzyoun6zhxrhs64oiz/agent.envelope.sealed/3kznmn7xqxl22";
    let mut g = c.benchmark_group("envelope");
    for n in [1usize, 10] {
        let keys: Vec<(String, EncryptionKey)> = (0..n)
            .map(|i| (format!("did:plc:agent{i}"), EncryptionKey::generate()))
            .collect();
        let pubs: Vec<_> = keys.iter().map(|(_, k)| k.public()).collect();
        let recipients: Vec<Recipient<'_>> = keys
            .iter()
            .zip(&pubs)
            .map(|((did, _), key)| Recipient { did, key })
            .collect();
        g.bench_function(BenchmarkId::new("seal", n), |b| {
            b.iter(|| {
                seal(
                    uri,
                    "agent.comms.message",
                    "2026-11-24T08:00:00.000Z",
                    &record,
                    &recipients,
                )
                .expect("seal")
            })
        });
        let sealed = seal(
            uri,
            "agent.comms.message",
            "2026-11-24T08:00:00.000Z",
            &record,
            &recipients,
        )
        .expect("seal");
        let (did, key) = &keys[n - 1];
        g.bench_function(BenchmarkId::new("open", n), |b| {
            b.iter(|| open(&sealed, uri, did, key).expect("open"))
        });
    }
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(20)
}

criterion_group! { name = benches; config = config(); targets = signatures, commits, envelope }
criterion_main!(benches);
