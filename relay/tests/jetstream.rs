//! The JSON stream's events against Jetstream's own: the ten events a production Jetstream
//! sent (`../shared/jetstream/golden_v1.jsonl`) are rebuilt as the firehose frames they came
//! from, and the relay's JSON for each must be the same JSON (key order free). Also: the
//! dictionary the relay compresses with is Jetstream's published one.

use std::path::PathBuf;

use agentnet_relay::jetstream::{convert, json_events, ZSTD_DICTIONARY};
use agentnet_relay::store::Logged;
use atproto::frame::{AccountEvent, CommitEvent, Frame, IdentityEvent, RepoOp};
use serde_json::Value;

fn jetstream_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("AGENTNET_JETSTREAM_DIR") {
        return PathBuf::from(dir);
    }
    PathBuf::from(
        std::env::var("CARGO_MANIFEST_DIR")
            .unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_string()),
    )
    .join("../../shared/jetstream")
}

fn read(name: &str) -> Vec<u8> {
    let path = jetstream_dir().join(name);
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "Jetstream reference file {} is missing ({e}): put ../shared beside the checkout \
             or set AGENTNET_JETSTREAM_DIR",
            path.display()
        )
    })
}

fn golden() -> Vec<Value> {
    String::from_utf8(read("golden_v1.jsonl"))
        .expect("UTF-8")
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("golden line is JSON"))
        .collect()
}

fn s(v: &Value) -> String {
    v.as_str().expect("a string").to_string()
}

/// The firehose frame a golden event was made from: a commit with the record as its only
/// block, or the identity/account event with the same fields.
fn frame_for(event: &Value) -> Frame {
    let did = s(&event["did"]);
    match event["kind"].as_str() {
        Some("commit") => {
            let c = &event["commit"];
            let path = format!("{}/{}", s(&c["collection"]), s(&c["rkey"]));
            let (blocks, cid, prev) = match c.get("record") {
                Some(record) => {
                    let ipld = atproto::data::json_to_ipld(record).expect("record is data");
                    let bytes = atproto::data::to_cbor(&ipld).expect("encodes");
                    let cid = atproto::data::cid_for_cbor(&bytes);
                    // The record's JSON round-trips to the very bytes its author signed.
                    assert_eq!(cid.to_string(), s(&c["cid"]), "CID of {path}");
                    let car =
                        atproto::car::write_car(&[cid], [(&cid, bytes.as_slice())]).expect("car");
                    (car, Some(cid), None)
                }
                None => {
                    let placeholder = atproto::data::cid_for_cbor(b"\xa0");
                    let car = atproto::car::write_car(
                        &[placeholder],
                        [(&placeholder, b"\xa0".as_slice())],
                    )
                    .expect("car");
                    (car, None, Some(placeholder))
                }
            };
            let action = s(&c["operation"]);
            let prev = prev.or(if action == "update" { cid } else { None });
            Frame::Commit(Box::new(CommitEvent {
                seq: 7,
                rebase: false,
                too_big: false,
                repo: did,
                commit: atproto::data::cid_for_cbor(b"\xa1"),
                rev: s(&c["rev"]),
                since: None,
                blocks: blocks.into(),
                ops: vec![RepoOp {
                    action,
                    path,
                    cid,
                    prev,
                }],
                blobs: vec![],
                prev_data: None,
                time: "2026-05-25T14:23:29.000Z".into(),
            }))
        }
        Some("identity") => {
            let i = &event["identity"];
            Frame::Identity(IdentityEvent {
                seq: i["seq"].as_i64().expect("seq"),
                did,
                time: s(&i["time"]),
                handle: i.get("handle").map(s),
            })
        }
        Some("account") => {
            let a = &event["account"];
            Frame::Account(AccountEvent {
                seq: a["seq"].as_i64().expect("seq"),
                did,
                time: s(&a["time"]),
                active: a["active"].as_bool().expect("active"),
                status: a.get("status").map(s),
            })
        }
        other => panic!("golden event of kind {other:?}"),
    }
}

#[test]
fn events_match_what_jetstream_sent_for_the_same_records() {
    let golden = golden();
    assert_eq!(golden.len(), 10, "the ten reference events");
    for want in &golden {
        let time_us = want["time_us"].as_u64().expect("time_us");
        let mut made = Vec::new();
        json_events(&frame_for(want), time_us, &mut made);
        assert_eq!(made.len(), 1, "one event for {want}");
        let (did, collection, json) = &made[0];
        let got: Value = serde_json::from_str(json).expect("JSON");
        assert_eq!(&got, want, "the relay's JSON against Jetstream's");
        assert_eq!(**did, *want["did"].as_str().expect("did"));
        assert_eq!(
            collection.as_deref(),
            want["commit"]["collection"].as_str(),
            "commit events carry their collection for filtering"
        );
    }
}

#[test]
fn every_op_of_a_commit_is_its_own_event_and_sync_has_none() {
    let golden = golden();
    let creates: Vec<&Value> = golden
        .iter()
        .filter(|e| e["commit"]["operation"] == "create")
        .take(2)
        .collect();
    // Two creates of different repos put into one commit of the first repo.
    let mut blocks = Vec::new();
    let mut ops = Vec::new();
    for e in &creates {
        let c = &e["commit"];
        let bytes = atproto::data::to_cbor(
            &atproto::data::json_to_ipld(&c["record"]).expect("record is data"),
        )
        .expect("encodes");
        let cid = atproto::data::cid_for_cbor(&bytes);
        ops.push(RepoOp {
            action: "create".into(),
            path: format!("{}/{}", s(&c["collection"]), s(&c["rkey"])),
            cid: Some(cid),
            prev: None,
        });
        blocks.push((cid, bytes));
    }
    // A third op whose record is not in the blocks is skipped, the others still go out.
    ops.push(RepoOp {
        action: "create".into(),
        path: "app.bsky.feed.like/3mmoojpmissing".into(),
        cid: Some(atproto::data::cid_for_cbor(b"\xa2")),
        prev: None,
    });
    let car = atproto::car::write_car(
        &[blocks[0].0],
        blocks.iter().map(|(c, b)| (c, b.as_slice())),
    )
    .expect("car");
    let frame = Frame::Commit(Box::new(CommitEvent {
        seq: 9,
        rebase: false,
        too_big: false,
        repo: "did:plc:mcc5yghbk7tixqryac2yxku7".into(),
        commit: atproto::data::cid_for_cbor(b"\xa1"),
        rev: "3mmoojp7vgo2g".into(),
        since: None,
        blocks: car.into(),
        ops,
        blobs: vec![],
        prev_data: None,
        time: "2026-05-25T14:23:29.000Z".into(),
    }));
    let logged = Logged {
        seq: 9,
        time_us: 1_779_719_009_132_431,
        frame: atproto::frame::encode_frame(&frame).expect("frame").into(),
    };
    let item = convert(&logged, None);
    assert_eq!(item.seq, 9);
    assert_eq!(item.events.len(), 2, "two records found, one missing");
    for (event, want) in item.events.iter().zip(&creates) {
        let got: Value = serde_json::from_str(&event.json).expect("JSON");
        assert_eq!(
            got["time_us"], 1_779_719_009_132_431u64,
            "the commit's time"
        );
        assert_eq!(got["commit"]["record"], want["commit"]["record"]);
        assert_eq!(got["commit"]["cid"], want["commit"]["cid"]);
        assert_eq!(got["did"], "did:plc:mcc5yghbk7tixqryac2yxku7");
        assert!(event.zstd.get().is_none(), "not compressed unless asked");
    }

    let sync = Frame::Sync(atproto::frame::SyncEvent {
        seq: 10,
        did: "did:plc:mcc5yghbk7tixqryac2yxku7".into(),
        blocks: bytes::Bytes::new(),
        rev: "3mmoojp7vgo2g".into(),
        time: "2026-05-25T14:23:29.000Z".into(),
    });
    let logged = Logged {
        seq: 10,
        time_us: 1,
        frame: atproto::frame::encode_frame(&sync).expect("frame").into(),
    };
    assert!(
        convert(&logged, None).events.is_empty(),
        "#sync has no Jetstream form"
    );
}

#[test]
fn the_dictionary_is_jetstreams_and_compressed_events_open_with_it() {
    assert_eq!(
        ZSTD_DICTIONARY,
        read("legacy_subscribe.zdict").as_slice(),
        "the relay's dictionary is the published one, byte for byte"
    );
    let id = zstd::zstd_safe::get_dict_id_from_dict(ZSTD_DICTIONARY).map(|n| n.get());
    assert_eq!(id, Some(1_612_007_021));

    let want = &golden()[0];
    let mut made = Vec::new();
    json_events(
        &frame_for(want),
        want["time_us"].as_u64().expect("time"),
        &mut made,
    );
    let logged = Logged {
        seq: 1,
        time_us: want["time_us"].as_u64().expect("time"),
        frame: atproto::frame::encode_frame(&frame_for(want))
            .expect("frame")
            .into(),
    };
    let mut compressor =
        zstd::bulk::Compressor::with_dictionary(3, ZSTD_DICTIONARY).expect("compressor");
    let item = convert(&logged, Some(&mut compressor));
    let z = item.events[0].zstd.get().expect("compressed");
    assert_eq!(
        zstd::zstd_safe::get_dict_id_from_frame(z).map(|n| n.get()),
        Some(1_612_007_021),
        "the frame names the dictionary"
    );
    let mut d = zstd::bulk::Decompressor::with_dictionary(&read("legacy_subscribe.zdict"))
        .expect("decompressor");
    let plain = d.decompress(z, 1 << 20).expect("opens with the dictionary");
    assert_eq!(plain, made[0].2.as_bytes());
    assert!(
        z.len() < plain.len(),
        "the dictionary pays: {} → {}",
        plain.len(),
        z.len()
    );
    // Without the dictionary the frame does not open.
    assert!(zstd::bulk::decompress(z, 1 << 20).is_err());
}
