//! Signed commits and `#commit` verification across the three algorithms: honest events
//! verify; forged signatures, tampered ops, wrong repos and incomplete proofs are refused.

use atproto::car::{read_car, write_car, CarLimits};
use atproto::commit::{verify_commit_event, CommitError, RepoWriter, Write};
use atproto::crypto::{Algorithm, Keypair};
use atproto::data::to_cbor;
use atproto::frame::{decode_frame, encode_frame, Frame};

const NOW: &str = "2026-11-24T08:00:00.000Z";

fn record(text: &str) -> Vec<u8> {
    to_cbor(&serde_json::json!({"$type": "agent.comms.message", "text": text, "createdAt": NOW}))
        .expect("encode")
}

fn writer(alg: Algorithm) -> RepoWriter {
    RepoWriter::new("did:plc:ewvi7nxzyoun6zhxrhs64oiz", Keypair::generate(alg)).expect("repo")
}

fn create(w: &mut RepoWriter, text: &str) -> (Write, String) {
    let rkey = w.next_rkey().to_string();
    (
        Write::Create {
            collection: "agent.comms.message".into(),
            rkey: rkey.clone(),
            record: record(text),
        },
        rkey,
    )
}

#[test]
fn honest_commits_verify_for_every_algorithm() {
    for alg in [Algorithm::K256, Algorithm::P256, Algorithm::Ed25519] {
        let mut w = writer(alg);
        let key = w.key().public_key();
        let mut rkeys = Vec::new();
        for i in 0..60 {
            let (op, rkey) = create(&mut w, &format!("message {i}"));
            rkeys.push(rkey);
            let ev = w.commit(&[op], NOW).expect("commit");
            let verified = verify_commit_event(&ev, &key, CarLimits::FIREHOSE).expect("verifies");
            assert_eq!(verified.prev_data, ev.prev_data);
            // The event survives a frame round trip byte for byte.
            let frame = Frame::Commit(Box::new(ev.clone()));
            let bytes = encode_frame(&frame).expect("encode");
            assert_eq!(decode_frame(&bytes).expect("decode"), frame);
        }
        // Multi-op commits mixing updates and deletes.
        let writes = vec![
            Write::Update {
                collection: "agent.comms.message".into(),
                rkey: rkeys[3].clone(),
                record: record("edited"),
            },
            Write::Delete {
                collection: "agent.comms.message".into(),
                rkey: rkeys[10].clone(),
            },
            Write::Delete {
                collection: "agent.comms.message".into(),
                rkey: rkeys[40].clone(),
            },
        ];
        let ev = w.commit(&writes, NOW).expect("commit");
        verify_commit_event(&ev, &key, CarLimits::FIREHOSE).expect("multi-op commit verifies");

        // The exported repo holds exactly the live records under a signed head.
        let car = read_car(&w.export_car().expect("export"), CarLimits::REPO).expect("repo CAR");
        let (head, data) = w.head().expect("head");
        assert_eq!(car.roots, vec![head]);
        let commit: atproto::commit::Commit =
            atproto::data::from_cbor(&car.blocks[&head]).expect("commit");
        commit.verify(&key).expect("head signature");
        let mut tree = atproto::mst::Mst::load(data, &car.blocks).expect("tree");
        let entries = tree.entries(&car.blocks).expect("whole tree present");
        assert_eq!(entries.len(), 58);
        assert!(
            entries.iter().all(|(_, cid)| car.blocks.contains_key(cid)),
            "every record present"
        );

        // Read as a whole repo: verified by the account's key, refused by any other, and
        // refused as another account's.
        let repo = atproto::commit::RepoSnapshot::read_verified(w.did(), &car, &key)
            .expect("the account's own repo verifies");
        assert_eq!(
            repo.entries,
            entries
                .iter()
                .map(|(k, c)| (String::from_utf8_lossy(k).into_owned(), *c))
                .collect::<Vec<_>>()
        );
        let other = Keypair::generate(alg).public_key();
        assert!(matches!(
            atproto::commit::RepoSnapshot::read_verified(w.did(), &car, &other),
            Err(CommitError::Signature(_))
        ));
        assert!(
            atproto::commit::RepoSnapshot::read_verified("did:plc:someoneelse", &car, &key)
                .is_err()
        );
    }
}

#[test]
fn forged_and_tampered_events_are_refused() {
    let mut w = writer(Algorithm::K256);
    let key = w.key().public_key();
    for i in 0..20 {
        let (op, _) = create(&mut w, &format!("m{i}"));
        w.commit(&[op], NOW).expect("commit");
    }
    let (op, _) = create(&mut w, "target");
    let ev = w.commit(&[op], NOW).expect("commit");

    // Signed by someone else.
    let other = Keypair::generate(Algorithm::K256).public_key();
    assert!(matches!(
        verify_commit_event(&ev, &other, CarLimits::FIREHOSE),
        Err(CommitError::Signature(_))
    ));

    // prevData that the ops do not invert to.
    let mut wrong_prev = ev.clone();
    wrong_prev.prev_data = Some(atproto::data::cid_for_cbor(b"not the previous root"));
    assert!(matches!(
        verify_commit_event(&wrong_prev, &key, CarLimits::FIREHOSE),
        Err(CommitError::InversionMismatch)
    ));

    // An op that claims a different record than the tree holds.
    let mut wrong_op = ev.clone();
    wrong_op.ops[0].cid = Some(atproto::data::cid_for_cbor(b"other record"));
    assert!(verify_commit_event(&wrong_op, &key, CarLimits::FIREHOSE).is_err());

    // An op hidden from the event: the remaining ops do not explain the tree.
    let mut hidden = ev.clone();
    hidden.ops.clear();
    assert!(verify_commit_event(&hidden, &key, CarLimits::FIREHOSE).is_err());

    // Event fields that disagree with the signed commit.
    let mut wrong_repo = ev.clone();
    wrong_repo.repo = "did:plc:aaaaaaaaaaaaaaaaaaaaaaaa".into();
    assert!(matches!(
        verify_commit_event(&wrong_repo, &key, CarLimits::FIREHOSE),
        Err(CommitError::Inconsistent(_))
    ));
    let mut wrong_rev = ev.clone();
    wrong_rev.rev = "3kznmn7xqxl22".into();
    assert!(matches!(
        verify_commit_event(&wrong_rev, &key, CarLimits::FIREHOSE),
        Err(CommitError::Inconsistent(_))
    ));

    // A proof with an MST node left out.
    let car = read_car(&ev.blocks, CarLimits::FIREHOSE).expect("car");
    let commit: atproto::commit::Commit =
        atproto::data::from_cbor(&car.blocks[&ev.commit]).expect("commit");
    let without_root: Vec<_> = car
        .blocks
        .iter()
        .filter(|(c, _)| **c != commit.data)
        .map(|(c, b)| (c, b.as_slice()))
        .collect();
    let mut incomplete = ev.clone();
    incomplete.blocks = write_car(&[ev.commit], without_root).expect("car").into();
    assert!(matches!(
        verify_commit_event(&incomplete, &key, CarLimits::FIREHOSE),
        Err(CommitError::Mst(_))
    ));

    // Oversized blocks.
    let tiny = CarLimits {
        max_bytes: 100,
        max_blocks: 100,
    };
    assert!(matches!(
        verify_commit_event(&ev, &key, tiny),
        Err(CommitError::Car(_))
    ));

    // The honest event still verifies.
    verify_commit_event(&ev, &key, CarLimits::FIREHOSE).expect("verifies");
}
