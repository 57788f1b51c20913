//! The record index on embedded ClickHouse (chDB): extracted changes are written, inbox and
//! lookups answer each caller only what it may see, replays do not duplicate, deletes
//! apply, and a private record leaves no trace in any column. Needs AGENTNET_CHDB_LIB.

mod common;

use agentnet_indexer::extract::{AppviewKey, Extractor};
use atproto::commit::{RepoWriter, Write};
use atproto::crypto::{Algorithm, Keypair};
use atproto::envelope::{EncryptionKey, Recipient};
use common::{cbor, sealed_record};
use serde_json::json;
use store::chdb::Chdb;
use store::records::Change;
use store::records::{Page, RecordStore};

const NOW: &str = "2026-11-24T08:00:00.000Z";
const APPVIEW: &str = "did:web:appview.agentnet.test";
const B: &str = "did:plc:bbbbbbbbbbbbbbbbbbbbbbbb";
const C: &str = "did:plc:cccccccccccccccccccccccc";
const SECRET: &str = "private: the escrow code is 4242";

#[test]
fn inbox_access_control_replay_delete_and_no_private_trace() {
    let lib = std::env::var("AGENTNET_CHDB_LIB")
        .expect("AGENTNET_CHDB_LIB must name libchdb.so: run infra/chdb/setup.sh");
    let dir = std::env::temp_dir().join(format!("agentnet-records-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let store = RecordStore::open(Chdb::open(std::path::Path::new(&lib), &dir).expect("chdb"))
        .expect("schema");

    let mut repo = RepoWriter::new(
        "did:plc:aaaaaaaaaaaaaaaaaaaaaaaa",
        Keypair::generate(Algorithm::K256),
    )
    .expect("repo");
    let a = repo.did().to_string();
    let (a_key, b_key, c_key, av_key) = (
        EncryptionKey::generate(),
        EncryptionKey::generate(),
        EncryptionKey::generate(),
        EncryptionKey::generate(),
    );
    let (a_pub, b_pub, c_pub, av_pub) = (
        a_key.public(),
        b_key.public(),
        c_key.public(),
        av_key.public(),
    );
    let sealed = |rkey: &str, inner: &serde_json::Value, to: &[Recipient<'_>]| {
        sealed_record(&a, rkey, NOW, inner, to)
    };
    let msg = |to: &str, text: &str| json!({"$type": "agent.comms.message", "sender": a, "recipient": to, "content": {"kind": "text", "text": text}, "createdAt": NOW});
    let req = json!({"$type": "agent.comms.request", "sender": a, "assignee": C, "task": "audit the ledger", "createdAt": NOW});
    let note = json!({"$type": "agent.memory.note", "text": SECRET, "createdAt": NOW});
    let writes = vec![
        Write::Create {
            collection: "agent.comms.message".into(),
            rkey: "3l3aaaaaaaaa2".into(),
            record: cbor(&msg(B, "public hello")),
        },
        Write::Create {
            collection: "agent.envelope.sealed".into(),
            rkey: "3l3aaaaaaaaa3".into(),
            record: sealed(
                "3l3aaaaaaaaa3",
                &msg(B, "shared hello"),
                &[
                    Recipient {
                        did: &a,
                        key: &a_pub,
                    },
                    Recipient {
                        did: B,
                        key: &b_pub,
                    },
                    Recipient {
                        did: APPVIEW,
                        key: &av_pub,
                    },
                ],
            ),
        },
        Write::Create {
            collection: "agent.envelope.sealed".into(),
            rkey: "3l3aaaaaaaaa4".into(),
            record: sealed(
                "3l3aaaaaaaaa4",
                &req,
                &[
                    Recipient {
                        did: &a,
                        key: &a_pub,
                    },
                    Recipient {
                        did: C,
                        key: &c_pub,
                    },
                ],
            ),
        },
        Write::Create {
            collection: "agent.envelope.sealed".into(),
            rkey: "3l3aaaaaaaaa5".into(),
            record: sealed(
                "3l3aaaaaaaaa5",
                &note,
                &[Recipient {
                    did: &a,
                    key: &a_pub,
                }],
            ),
        },
    ];
    let ev = repo.commit(&writes, NOW).expect("commit");
    let extractor = Extractor::new(
        lexicons::catalog().expect("catalog"),
        Some(AppviewKey {
            did: APPVIEW.into(),
            key: av_key,
        }),
    );
    let (changes, _) = extractor.extract(&ev);
    store.apply(&changes, 1).expect("apply");
    store
        .apply(&changes, 2)
        .expect("replaying a batch is harmless");

    let uris =
        |rows: Vec<store::records::RecordRow>| rows.into_iter().map(|r| r.rkey).collect::<Vec<_>>();
    let mut b_inbox = uris(
        store
            .inbox(Some(B), B, None, &Page::first(50))
            .expect("inbox")
            .rows,
    );
    b_inbox.sort();
    assert_eq!(
        b_inbox,
        vec!["3l3aaaaaaaaa2", "3l3aaaaaaaaa3"],
        "B: the public and the shared message, once each"
    );
    assert_eq!(
        uris(
            store
                .inbox(None, B, None, &Page::first(50))
                .expect("inbox")
                .rows
        ),
        vec!["3l3aaaaaaaaa2"],
        "anonymous: public only"
    );
    assert_eq!(
        uris(
            store
                .inbox(Some(C), B, None, &Page::first(50))
                .expect("inbox")
                .rows
        ),
        vec!["3l3aaaaaaaaa2"],
        "C cannot see what A shared with B"
    );
    assert_eq!(
        uris(
            store
                .inbox(Some(C), C, None, &Page::first(50))
                .expect("inbox")
                .rows
        ),
        vec!["3l3aaaaaaaaa4"],
        "C's request, sealed for C"
    );

    let shared_uri = format!("at://{a}/agent.envelope.sealed/3l3aaaaaaaaa3");
    assert!(store.get(Some(C), &shared_uri).expect("get").is_none());
    let for_b = store
        .get(Some(B), &shared_uri)
        .expect("get")
        .expect("B may see it");
    assert_eq!(for_b.text.as_deref(), Some("shared hello"));
    assert!(
        for_b.sealed.is_some(),
        "the envelope is kept for recipients to open"
    );

    assert!(
        !store.anywhere(SECRET).expect("scan"),
        "the private note's text is nowhere"
    );
    assert!(
        !store.anywhere("3l3aaaaaaaaa5").expect("scan"),
        "nor its URI"
    );
    assert!(
        store.anywhere("public hello").expect("scan"),
        "the scan does find stored text"
    );

    let del = repo
        .commit(
            &[Write::Delete {
                collection: "agent.comms.message".into(),
                rkey: "3l3aaaaaaaaa2".into(),
            }],
            NOW,
        )
        .expect("delete");
    let (changes, _) = extractor.extract(&del);
    assert!(matches!(changes.as_slice(), [Change::Delete { .. }]));
    store.apply(&changes, 3).expect("apply delete");
    assert_eq!(
        uris(
            store
                .inbox(Some(B), B, None, &Page::first(50))
                .expect("inbox")
                .rows
        ),
        vec!["3l3aaaaaaaaa3"]
    );
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
}
