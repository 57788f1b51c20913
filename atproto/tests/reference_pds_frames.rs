//! Frames captured from the reference PDS (`infra/pds/capture-frames.mjs`; the file is the
//! project's own fixture): each decodes, re-encodes to the same bytes, and every `#commit`
//! and `#sync` verifies against the account's key, with MST inversion from its blocks.

use std::collections::{BTreeMap, HashMap};

use atproto::car::{read_car, CarLimits};
use atproto::commit::{verify_commit_event, Commit};
use atproto::crypto::PublicKey;
use atproto::data::from_cbor;
use atproto::frame::{decode_frame, encode_frame, split_frame, with_seq, Frame};
use base64::Engine;

/// This crate's directory, as cargo gives it when it runs the test (a build directory
/// shared between checkouts may hold a binary compiled in another one).
fn manifest_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into())
}

#[test]
fn committed_reference_pds_frames_round_trip_and_verify() {
    check_frames(&manifest_dir().join("tests/fixtures/reference-pds-frames.json"));
}

/// Captures afresh from a reference PDS started for this test (infra/pds must be set up:
/// `infra/pds/setup.sh`, which the README's test command runs), so a change in what the
/// reference implementation sends shows up here, not in production.
#[test]
fn live_reference_pds_frames_round_trip_and_verify() {
    let root = manifest_dir().join("..");
    assert!(
        root.join("infra/pds/node_modules/@atproto/dev-env").is_dir(),
        "the reference PDS is not installed: run infra/pds/setup.sh (the README's test command does)"
    );
    let out = std::env::temp_dir().join(format!("agentnet-frames-{}.json", std::process::id()));
    let status = std::process::Command::new(root.join("infra/pds/node.sh"))
        .arg(root.join("infra/pds/capture-frames.mjs"))
        .arg(&out)
        .status()
        .expect("starting the reference PDS capture");
    assert!(status.success(), "reference PDS capture failed: {status}");
    check_frames(&out);
    let _ = std::fs::remove_file(&out);
}

fn check_frames(path: &std::path::Path) {
    let fixture: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("captured frames"))
            .expect("JSON");
    let keys: HashMap<String, PublicKey> = fixture["keys"]
        .as_object()
        .expect("keys")
        .iter()
        .map(|(did, k)| {
            let mb = k["publicKeyMultibase"].as_str().expect("multibase");
            let key = match k["type"].as_str().expect("type") {
                "Multikey" => PublicKey::from_multikey(mb),
                legacy => PublicKey::from_legacy(legacy, mb),
            }
            .expect("key parses");
            (did.clone(), key)
        })
        .collect();

    let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
    let mut last_seq = 0;
    let mut last_rev: HashMap<String, String> = HashMap::new();
    for b64 in fixture["frames"].as_array().expect("frames") {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64.as_str().expect("base64"))
            .expect("base64");
        let (header, _) = split_frame(&bytes).expect("header");
        let frame = decode_frame(&bytes).expect("frame decodes");
        if header.op == 1 {
            assert_eq!(header.t.as_deref(), Some(frame.kind()));
        }
        assert_eq!(
            encode_frame(&frame).expect("encode"),
            bytes,
            "{} re-encodes byte for byte",
            frame.kind()
        );
        if let Some(seq) = frame.seq() {
            // Re-sequencing in place gives what a full re-encode with the new seq gives.
            for new_seq in [1, 23, 24, 255, 256, 65_536, seq + 1_000_000, (1 << 53) - 1] {
                let mut renumbered = frame.clone();
                renumbered.set_seq(new_seq);
                assert_eq!(
                    with_seq(&bytes, new_seq).expect("with_seq"),
                    encode_frame(&renumbered).expect("encode")
                );
            }
        }
        *kinds.entry(frame.kind().to_string()).or_default() += 1;

        if let Frame::Error(e) = &frame {
            assert_eq!(e.error, "FutureCursor");
            continue;
        }
        let seq = frame.seq().expect("PDS events carry seq");
        assert!(seq > last_seq, "seq strictly increasing");
        last_seq = seq;

        match &frame {
            Frame::Commit(ev) => {
                let key = &keys[&ev.repo];
                let verified = verify_commit_event(ev, key, CarLimits::FIREHOSE)
                    .unwrap_or_else(|e| panic!("commit seq {seq} by {}: {e}", ev.repo));
                if let Some(prev) = last_rev.get(&ev.repo) {
                    assert_eq!(
                        ev.since.as_ref(),
                        Some(prev),
                        "since follows the previous rev"
                    );
                    assert!(ev.prev_data.is_some(), "sync 1.1 commits carry prevData");
                }
                assert!(verified.prev_data.is_some());
                last_rev.insert(ev.repo.clone(), ev.rev.clone());
            }
            Frame::Sync(ev) => {
                let car = read_car(&ev.blocks, CarLimits::FIREHOSE).expect("sync CAR");
                let commit: Commit = from_cbor(&car.blocks[&car.roots[0]]).expect("commit block");
                commit
                    .verify(&keys[&ev.did])
                    .expect("sync commit signature");
                assert_eq!(commit.rev, ev.rev);
                last_rev.insert(ev.did.clone(), ev.rev.clone());
            }
            _ => {}
        }
    }
    for kind in ["#commit", "#sync", "#identity", "#account", "error"] {
        assert!(
            kinds.get(kind).copied().unwrap_or(0) > 0,
            "no {kind} frame captured: {kinds:?}"
        );
    }
}
