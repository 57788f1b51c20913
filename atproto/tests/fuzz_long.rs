//! A mutational fuzzer for everything that decodes untrusted bytes: firehose frames, CAR
//! files, DAG-CBOR blocks, MST nodes and whole `#commit` events. The corpus is real: frames
//! captured from the reference PDS and sync 1.1 commits made here with all three key types.
//! Each case mutates a corpus entry (bit flips, byte changes, insertions, deletions,
//! truncation, splices of two entries, or fresh random bytes) and runs every decoder on it;
//! a panic is a failure, and so is a mutated commit that still verifies as something else.
//!
//! `AGENTNET_FUZZ_CASES` sets the number of cases (default 20,000, as CI runs it;
//! RELIABILITY.md has the long run) and `AGENTNET_FUZZ_SEED` the seed. Peak memory is
//! reported so a run shows it stays bounded.

use std::panic::{catch_unwind, AssertUnwindSafe};

use atproto::car::{read_car, BlockMap, CarLimits};
use atproto::commit::{verify_commit_event, RepoWriter, Write};
use atproto::crypto::{Algorithm, Keypair, PublicKey};
use atproto::frame::{decode_frame, encode_frame, Frame};
use atproto::mst::Mst;
use base64::Engine;
use rand::{Rng, SeedableRng};

/// A corpus entry: bytes, and for commit frames the key that signs them.
struct Entry {
    bytes: Vec<u8>,
    key: Option<PublicKey>,
}

fn corpus() -> Vec<Entry> {
    let mut out = Vec::new();
    // Frames from the reference PDS.
    let fixture: serde_json::Value =
        serde_json::from_str(include_str!("fixtures/reference-pds-frames.json")).expect("fixture");
    for f in fixture["frames"].as_array().expect("frames") {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(f.as_str().expect("base64"))
            .expect("base64");
        out.push(Entry { bytes, key: None });
    }
    // Commits with several ops and deep trees, for every key type; their CARs and blocks.
    for (n, alg) in [Algorithm::K256, Algorithm::P256, Algorithm::Ed25519]
        .into_iter()
        .enumerate()
    {
        let mut w = RepoWriter::new("did:plc:ewvi7nxzyoun6zhxrhs64oiz", Keypair::generate(alg))
            .expect("repo");
        for i in 0..60 {
            let writes: Vec<Write> = (0..(1 + (i + n) % 4))
                .map(|j| {
                    let rkey = w.next_rkey().to_string();
                    let record = atproto::data::to_cbor(&serde_json::json!({
                        "$type": "agent.comms.message",
                        "text": format!("message {i}.{j}"),
                        "n": i * 10 + j,
                        "tags": ["a", "b"],
                    }))
                    .expect("cbor");
                    Write::Create {
                        collection: "agent.comms.message".into(),
                        rkey,
                        record,
                    }
                })
                .collect();
            let ev = w
                .commit(&writes, "2026-12-02T08:00:00.000Z")
                .expect("commit");
            if i % 12 == 11 {
                let frame = encode_frame(&Frame::Commit(Box::new(ev.clone()))).expect("encode");
                out.push(Entry {
                    bytes: frame,
                    key: Some(w.key().public_key()),
                });
                out.push(Entry {
                    bytes: ev.blocks.to_vec(),
                    key: None,
                });
                if let Ok(car) = read_car(&ev.blocks, CarLimits::FIREHOSE) {
                    for block in car.blocks.values().take(4) {
                        out.push(Entry {
                            bytes: block.clone(),
                            key: None,
                        });
                    }
                }
            }
        }
    }
    out
}

fn mutate(rng: &mut rand::rngs::StdRng, corpus: &[Entry]) -> (Vec<u8>, usize) {
    let i = rng.gen_range(0..corpus.len());
    let mut b = corpus[i].bytes.clone();
    let rounds = rng.gen_range(1..=4);
    for _ in 0..rounds {
        if b.is_empty() {
            b.push(rng.gen());
        }
        let len = b.len();
        match rng.gen_range(0..8) {
            0 => {
                let p = rng.gen_range(0..len);
                b[p] ^= 1 << rng.gen_range(0..8);
            }
            1 => {
                let p = rng.gen_range(0..len);
                b[p] = rng.gen();
            }
            2 => {
                // An interesting byte: CBOR major-type heads and lengths.
                let p = rng.gen_range(0..len);
                b[p] = [
                    0x00, 0x17, 0x18, 0x19, 0x1a, 0x1b, 0x1f, 0x5f, 0x7f, 0x9f, 0xbf, 0xd8, 0xf6,
                    0xff,
                ][rng.gen_range(0..14)];
            }
            3 => {
                let p = rng.gen_range(0..=len);
                let n = rng.gen_range(1..16);
                let fill: Vec<u8> = (0..n).map(|_| rng.gen()).collect();
                b.splice(p..p, fill);
            }
            4 => {
                let p = rng.gen_range(0..len);
                let n = rng.gen_range(1..=16.min(len - p));
                b.drain(p..p + n);
            }
            5 => b.truncate(rng.gen_range(0..len)),
            6 => {
                // Splice the tail of another entry in.
                let other = &corpus[rng.gen_range(0..corpus.len())].bytes;
                if !other.is_empty() {
                    let p = rng.gen_range(0..len);
                    let q = rng.gen_range(0..other.len());
                    b.truncate(p);
                    b.extend_from_slice(&other[q..]);
                }
            }
            _ => {
                let n = rng.gen_range(0..512);
                b = (0..n).map(|_| rng.gen()).collect();
            }
        }
    }
    (b, i)
}

/// Runs every decoder on `bytes`; a mutated commit that still verifies must be the
/// original event (a mutation in bytes nobody reads).
fn decode_everything(bytes: &[u8], original: &Entry) -> Result<(), String> {
    if let Ok(frame) = decode_frame(bytes) {
        if let (Frame::Commit(ev), Some(key)) = (&frame, &original.key) {
            if verify_commit_event(ev, key, CarLimits::FIREHOSE).is_ok() {
                // Only what is neither signed nor proven (seq, time) may differ.
                let Ok(Frame::Commit(orig)) = decode_frame(&original.bytes) else {
                    return Err("the corpus commit does not decode".into());
                };
                if (&ev.repo, &ev.rev, &ev.commit, &ev.ops)
                    != (&orig.repo, &orig.rev, &orig.commit, &orig.ops)
                {
                    return Err("a mutated commit verified as a different event".into());
                }
            }
        }
        let _ = encode_frame(&frame);
    }
    if let Ok(car) = read_car(bytes, CarLimits::FIREHOSE) {
        if let Some(root) = car.roots.first() {
            if let Ok(mut tree) = Mst::load(*root, &car.blocks) {
                let _ = tree.entries(&car.blocks);
            }
        }
    }
    let _ = atproto::data::from_cbor::<atproto::Ipld>(bytes);
    let mut blocks = BlockMap::new();
    let cid = atproto::data::cid_for_cbor(bytes);
    blocks.insert(cid, bytes.to_vec());
    if let Ok(mut tree) = Mst::load(cid, &blocks) {
        let _ = tree.entries(&blocks);
    }
    Ok(())
}

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

#[test]
fn mutated_inputs_never_panic_and_never_verify_as_something_else() {
    let cases: u64 = std::env::var("AGENTNET_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let seed: u64 = std::env::var("AGENTNET_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(rand::random);
    let corpus = corpus();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    // Panics are caught and counted; keep the default hook from printing each one.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let started = std::time::Instant::now();
    let rss_start = peak_rss_kib();
    let mut failures: Vec<String> = Vec::new();
    for case in 0..cases {
        let (bytes, from) = mutate(&mut rng, &corpus);
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            decode_everything(&bytes, &corpus[from])
        }));
        let failure = match outcome {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e),
            Err(_) => Some("panic".to_string()),
        };
        if let Some(why) = failure {
            failures.push(format!(
                "case {case} (seed {seed}): {why}: {}",
                bytes
                    .iter()
                    .take(64)
                    .map(|b| format!("{b:02x}"))
                    .collect::<String>()
            ));
            if failures.len() >= 5 {
                break;
            }
        }
    }
    std::panic::set_hook(hook);
    let secs = started.elapsed().as_secs_f64();
    println!(
        "fuzz: {cases} cases from {} corpus entries, seed {seed}, {:.0} cases/s, peak RSS {} KiB (at start {} KiB), failures {}",
        corpus.len(),
        cases as f64 / secs,
        peak_rss_kib(),
        rss_start,
        failures.len()
    );
    assert!(failures.is_empty(), "{failures:#?}");
}
