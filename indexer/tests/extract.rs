//! Commit → index changes: public records in full, shared ones as metadata (plus content
//! when the appview is a recipient), private ones not at all; invalid and foreign records
//! skipped with a reason.

mod common;

use agentnet_indexer::extract::{AppviewKey, Extractor, Skipped};
use atproto::commit::{RepoWriter, Write};
use atproto::crypto::{Algorithm, Keypair};
use atproto::envelope::{seal, EncryptionKey, Recipient};
use common::{cbor, sealed_record};
use lexicons::Record;
use serde_json::json;
use store::records::{Change, Visibility};

const NOW: &str = "2026-11-24T08:00:00.000Z";
const APPVIEW: &str = "did:web:appview.agentnet.test";
const B: &str = "did:plc:bbbbbbbbbbbbbbbbbbbbbbbb";
const SECRET: &str = "the private memory says the launch code is 0000";

fn create(collection: &str, rkey: &str, record: Vec<u8>) -> Write {
    Write::Create {
        collection: collection.into(),
        rkey: rkey.into(),
        record,
    }
}

#[test]
fn privacy_levels_validation_and_deletes() {
    let mut repo = RepoWriter::new(
        "did:plc:aaaaaaaaaaaaaaaaaaaaaaaa",
        Keypair::generate(Algorithm::K256),
    )
    .expect("repo");
    let a = repo.did().to_string();
    let (a_key, b_key, av_key) = (
        EncryptionKey::generate(),
        EncryptionKey::generate(),
        EncryptionKey::generate(),
    );
    let (a_pub, b_pub, av_pub) = (a_key.public(), b_key.public(), av_key.public());

    let message = |text: &str| json!({"$type": "agent.comms.message", "sender": a, "recipient": B, "content": {"kind": "text", "text": text}, "createdAt": NOW});
    let sealed_at = |rkey: &str, inner: &serde_json::Value, to: &[Recipient<'_>]| {
        sealed_record(&a, rkey, NOW, inner, to)
    };
    let with_appview = [
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
    ];
    let without_appview = [
        Recipient {
            did: &a,
            key: &a_pub,
        },
        Recipient {
            did: B,
            key: &b_pub,
        },
    ];
    let only_author = [Recipient {
        did: &a,
        key: &a_pub,
    }];
    let request = json!({"$type": "agent.comms.request", "sender": a, "assignee": B, "task": "rotate the staging keys", "createdAt": NOW});
    let note = json!({"$type": "agent.memory.note", "text": SECRET, "createdAt": NOW});

    let writes = vec![
        create(
            "agent.comms.message",
            "3l2aaaaaaaaa2",
            cbor(&message("the build is green")),
        ),
        create(
            "agent.envelope.sealed",
            "3l2aaaaaaaaa3",
            sealed_at(
                "3l2aaaaaaaaa3",
                &message("meet at the usual place"),
                &with_appview,
            ),
        ),
        create(
            "agent.envelope.sealed",
            "3l2aaaaaaaaa4",
            sealed_at("3l2aaaaaaaaa4", &request, &without_appview),
        ),
        create(
            "agent.envelope.sealed",
            "3l2aaaaaaaaa5",
            sealed_at("3l2aaaaaaaaa5", &note, &only_author),
        ),
        // Sealed (for the appview too) as if for another record: the appview cannot open it.
        create(
            "agent.envelope.sealed",
            "3l2aaaaaaaaa6",
            sealed_at("3l2aaaaaaaaa7", &message("moved"), &with_appview),
        ),
        create(
            "agent.comms.message",
            "3l2aaaaaaaaa8",
            cbor(&json!({"$type": "agent.comms.message", "sender": a, "createdAt": NOW})),
        ),
        create(
            "app.bsky.feed.post",
            "3l2aaaaaaaaa9",
            cbor(&json!({"$type": "app.bsky.feed.post", "text": "hi", "createdAt": NOW})),
        ),
    ];
    let ev = repo.commit(&writes, NOW).expect("commit");
    let catalog = lexicons::catalog().expect("catalog");
    let extractor = Extractor::new(
        catalog,
        Some(AppviewKey {
            did: APPVIEW.into(),
            key: av_key,
        }),
    );
    let (changes, skipped) = extractor.extract(&ev);

    let rows: Vec<_> = changes
        .iter()
        .map(|c| match c {
            Change::Upsert(r) => r.as_ref().clone(),
            Change::Delete { .. } => panic!("no deletes yet"),
        })
        .collect();
    assert_eq!(rows.len(), 4, "{rows:#?}");
    let row = |rkey: &str| {
        rows.iter()
            .find(|r| r.rkey == rkey)
            .unwrap_or_else(|| panic!("row {rkey}"))
    };

    let public = row("3l2aaaaaaaaa2");
    assert_eq!(public.visibility, Visibility::Public);
    assert_eq!(public.text.as_deref(), Some("the build is green"));
    assert_eq!(public.created_at, NOW);

    let shared = row("3l2aaaaaaaaa3");
    assert_eq!(
        (shared.visibility, shared.collection.as_str()),
        (Visibility::Shared, "agent.comms.message")
    );
    assert_eq!(
        shared.recipients,
        vec![a.clone(), B.to_string(), APPVIEW.to_string()]
    );
    assert_eq!(
        shared.text.as_deref(),
        Some("meet at the usual place"),
        "opened by the appview"
    );
    assert!(shared.sealed.is_some());

    let metadata_only = row("3l2aaaaaaaaa4");
    assert_eq!(metadata_only.collection, "agent.comms.request");
    assert_eq!(
        (metadata_only.record.as_ref(), metadata_only.text.as_ref()),
        (None, None),
        "not addressed to the appview"
    );

    let moved = row("3l2aaaaaaaaa6");
    assert_eq!(
        (moved.record.as_ref(), moved.text.as_ref()),
        (None, None),
        "bound to another record: not opened"
    );

    let reasons: Vec<(&str, &str)> = skipped
        .iter()
        .map(|(p, s)| (p.as_str(), s.reason()))
        .collect();
    assert!(
        reasons.contains(&("agent.envelope.sealed/3l2aaaaaaaaa5", "private")),
        "{reasons:?}"
    );
    assert!(
        reasons.contains(&("agent.comms.message/3l2aaaaaaaaa8", "invalid")),
        "{reasons:?}"
    );
    assert!(
        reasons.contains(&("app.bsky.feed.post/3l2aaaaaaaaa9", "not_agent")),
        "{reasons:?}"
    );

    // The private record leaves no trace: not its text, not its URI.
    let everything = serde_json::to_string(&changes).expect("json");
    assert!(!everything.contains(SECRET) && !everything.contains("3l2aaaaaaaaa5"));

    // Deletes become deletes, versioned by the commit's rev.
    let del = repo
        .commit(
            &[Write::Delete {
                collection: "agent.comms.message".into(),
                rkey: "3l2aaaaaaaaa2".into(),
            }],
            NOW,
        )
        .expect("delete");
    let (changes, _) = extractor.extract(&del);
    assert_eq!(
        changes,
        vec![Change::Delete {
            uri: format!("at://{a}/agent.comms.message/3l2aaaaaaaaa2"),
            rev: del.rev.clone()
        }]
    );
    assert!(matches!(Skipped::Private.reason(), "private"));
}

#[test]
fn without_an_appview_key_shared_records_are_metadata_only() {
    let mut repo = RepoWriter::new(
        "did:plc:cccccccccccccccccccccccc",
        Keypair::generate(Algorithm::Ed25519),
    )
    .expect("repo");
    let a = repo.did().to_string();
    let a_key = EncryptionKey::generate();
    let a_pub = a_key.public();
    let b_pub = EncryptionKey::generate().public();
    let inner = json!({"$type": "agent.comms.handoff", "from": a, "to": B, "session": "s1", "summary": "half way", "createdAt": NOW});
    let uri = format!("at://{a}/agent.envelope.sealed/3l2bbbbbbbbb2");
    let sealed = seal(
        &uri,
        "agent.comms.handoff",
        NOW,
        &cbor(&inner),
        &[
            Recipient {
                did: &a,
                key: &a_pub,
            },
            Recipient {
                did: B,
                key: &b_pub,
            },
        ],
    )
    .expect("seal");
    let ev = repo
        .commit(
            &[create(
                "agent.envelope.sealed",
                "3l2bbbbbbbbb2",
                sealed.to_cbor().expect("cbor"),
            )],
            NOW,
        )
        .expect("commit");
    let (changes, skipped) =
        Extractor::new(lexicons::catalog().expect("catalog"), None).extract(&ev);
    assert!(skipped.is_empty());
    let [Change::Upsert(row)] = changes.as_slice() else {
        panic!("{changes:?}")
    };
    assert_eq!(row.collection, "agent.comms.handoff");
    assert!(row.record.is_none() && row.text.is_none());
    assert!(!serde_json::to_string(&changes)
        .expect("json")
        .contains("half way"));
}
