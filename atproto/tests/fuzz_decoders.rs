//! Property tests for everything that decodes untrusted bytes: firehose frames, CAR files,
//! MST nodes, and whole `#commit` events. Arbitrary and mutated inputs must be refused with
//! an error, never a panic, and a mutated event must never verify. Bounded (a few hundred
//! cases each) so they run in CI on every change.

use atproto::car::{read_car, write_car, BlockMap, CarLimits};
use atproto::commit::{verify_commit_event, RepoWriter, Write};
use atproto::crypto::{Algorithm, Keypair};
use atproto::frame::{decode_frame, encode_frame, Frame};
use atproto::mst::Mst;
use proptest::prelude::*;

fn sample_event() -> (
    Vec<u8>,
    atproto::frame::CommitEvent,
    atproto::crypto::PublicKey,
) {
    let mut w = RepoWriter::new(
        "did:plc:ewvi7nxzyoun6zhxrhs64oiz",
        Keypair::generate(Algorithm::K256),
    )
    .expect("repo");
    for i in 0..40 {
        let rkey = w.next_rkey().to_string();
        let record = atproto::data::to_cbor(
            &serde_json::json!({"$type": "agent.memory.note", "text": format!("n{i}")}),
        )
        .expect("cbor");
        w.commit(
            &[Write::Create {
                collection: "agent.memory.note".into(),
                rkey,
                record,
            }],
            "2026-11-24T08:00:00.000Z",
        )
        .expect("commit");
    }
    let rkey = w.next_rkey().to_string();
    let record =
        atproto::data::to_cbor(&serde_json::json!({"$type": "agent.memory.note", "text": "last"}))
            .expect("cbor");
    let ev = w
        .commit(
            &[Write::Create {
                collection: "agent.memory.note".into(),
                rkey,
                record,
            }],
            "2026-11-24T08:00:00.000Z",
        )
        .expect("commit");
    let frame = encode_frame(&Frame::Commit(Box::new(ev.clone()))).expect("encode");
    (frame, ev, w.key().public_key())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = decode_frame(&bytes);
        let _ = read_car(&bytes, CarLimits::FIREHOSE);
        let mut blocks = BlockMap::new();
        let cid = atproto::data::cid_for_cbor(&bytes);
        blocks.insert(cid, bytes.clone());
        if let Ok(mut tree) = Mst::load(cid, &blocks) {
            let _ = tree.entries(&blocks);
        }
    }

    #[test]
    fn mutated_frames_never_panic_and_never_verify_wrongly(
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
        cut in any::<usize>(),
    ) {
        let (frame, ev, key) = sample_event();
        let mut bytes = frame.clone();
        for (pos, x) in &flips {
            let i = pos % bytes.len();
            bytes[i] ^= x | 1;
        }
        if cut % 4 == 0 {
            bytes.truncate(cut % bytes.len());
        }
        if let Ok(Frame::Commit(mutated)) = decode_frame(&bytes) {
            if let Ok(v) = verify_commit_event(&mutated, &key, CarLimits::FIREHOSE) {
                // Only a change that leaves everything signed and proven may verify: the
                // commit itself must be the original one.
                prop_assert_eq!(v.commit.data, atproto::data::from_cbor::<atproto::commit::Commit>(
                    &read_car(&ev.blocks, CarLimits::FIREHOSE).expect("car").blocks[&ev.commit]).expect("commit").data);
                prop_assert_eq!(&mutated.ops, &ev.ops);
            }
        }
    }

    #[test]
    fn mutated_cars_are_refused_or_consistent(
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6),
    ) {
        let (_, ev, _) = sample_event();
        let mut bytes = ev.blocks.to_vec();
        for (pos, x) in &flips {
            let i = pos % bytes.len();
            bytes[i] ^= x | 1;
        }
        if let Ok(car) = read_car(&bytes, CarLimits::FIREHOSE) {
            // Whatever survives still hashes correctly: re-writing it reads back the same.
            let again = write_car(&car.roots, car.blocks.iter().map(|(c, b)| (c, b.as_slice()))).expect("write");
            let back = read_car(&again, CarLimits::FIREHOSE).expect("re-read");
            prop_assert_eq!(back.blocks, car.blocks);
        }
    }
}
