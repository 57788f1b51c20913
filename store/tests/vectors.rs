//! One test suite for every vector-store backend: access control inside the query, filters,
//! replace-by-URI, deletes, and (for the embedded store) persistence and optimization.

use store::vectors::{EdgeStore, ExactStore, Query, VectorError, VectorPoint, VectorStore};

const A: &str = "did:plc:aaaaaaaaaaaaaaaaaaaaaaaa";
const B: &str = "did:plc:bbbbbbbbbbbbbbbbbbbbbbbb";
const C: &str = "did:plc:cccccccccccccccccccccccc";

fn point(
    uri: &str,
    author: &str,
    collection: &str,
    recipients: &[&str],
    created_ms: i64,
    vector: [f32; 4],
) -> VectorPoint {
    VectorPoint {
        uri: uri.into(),
        author: author.into(),
        collection: collection.into(),
        visibility: if recipients.is_empty() {
            "public"
        } else {
            "shared"
        }
        .into(),
        recipients: recipients.iter().map(|s| s.to_string()).collect(),
        created_ms,
        vector: vector.to_vec(),
    }
}

fn uris(store: &dyn VectorStore, caller: Option<&str>, q: &Query) -> Vec<String> {
    let mut u: Vec<String> = store
        .search(caller, q)
        .expect("search")
        .into_iter()
        .map(|h| h.uri)
        .collect();
    u.sort();
    u
}

fn suite(store: &dyn VectorStore) {
    store
        .upsert(&[
            point(
                "at://a/agent.comms.message/1",
                A,
                "agent.comms.message",
                &[],
                1_000,
                [1.0, 0.0, 0.0, 0.0],
            ),
            point(
                "at://a/agent.comms.message/2",
                A,
                "agent.comms.message",
                &[A, B],
                2_000,
                [0.9, 0.1, 0.0, 0.0],
            ),
            point(
                "at://c/agent.memory.note/3",
                C,
                "agent.memory.note",
                &[C],
                3_000,
                [0.8, 0.2, 0.0, 0.0],
            ),
            point(
                "at://b/agent.memory.note/4",
                B,
                "agent.memory.note",
                &[],
                4_000,
                [0.0, 1.0, 0.0, 0.0],
            ),
        ])
        .expect("upsert");
    let q = |limit| Query {
        vector: vec![1.0, 0.0, 0.0, 0.0],
        limit,
        ..Query::default()
    };

    assert_eq!(
        uris(store, None, &q(10)),
        vec!["at://a/agent.comms.message/1", "at://b/agent.memory.note/4"],
        "anonymous: public only"
    );
    assert_eq!(
        uris(store, Some(B), &q(10)),
        vec![
            "at://a/agent.comms.message/1",
            "at://a/agent.comms.message/2",
            "at://b/agent.memory.note/4"
        ],
        "a recipient sees what was shared with it"
    );
    assert_eq!(
        uris(store, Some(C), &q(10)),
        vec![
            "at://a/agent.comms.message/1",
            "at://b/agent.memory.note/4",
            "at://c/agent.memory.note/3"
        ],
        "an author sees its own; not what others shared elsewhere"
    );
    // Nearest first.
    let hits = store.search(Some(B), &q(2)).expect("search");
    assert_eq!(hits[0].uri, "at://a/agent.comms.message/1");
    assert!(hits[0].score > hits[1].score);

    let by_author = Query {
        author: Some(A.into()),
        ..q(10)
    };
    assert_eq!(
        uris(store, Some(B), &by_author),
        vec![
            "at://a/agent.comms.message/1",
            "at://a/agent.comms.message/2"
        ]
    );
    let by_collection = Query {
        collection: Some("agent.memory.note".into()),
        ..q(10)
    };
    assert_eq!(
        uris(store, Some(C), &by_collection),
        vec!["at://b/agent.memory.note/4", "at://c/agent.memory.note/3"]
    );
    let since = Query {
        since_ms: Some(2_000),
        ..q(10)
    };
    assert_eq!(
        uris(store, Some(B), &since),
        vec!["at://a/agent.comms.message/2", "at://b/agent.memory.note/4"]
    );

    // Same URI replaces; delete removes.
    store
        .upsert(&[point(
            "at://a/agent.comms.message/1",
            A,
            "agent.comms.message",
            &[A, C],
            1_000,
            [1.0, 0.0, 0.0, 0.0],
        )])
        .expect("replace");
    assert_eq!(
        uris(store, None, &q(10)),
        vec!["at://b/agent.memory.note/4"],
        "now shared, no longer public"
    );
    store
        .delete(&["at://b/agent.memory.note/4".into()])
        .expect("delete");
    assert!(uris(store, None, &q(10)).is_empty());

    store.optimize().expect("optimize");
    assert_eq!(uris(store, Some(C), &q(10)).len(), 2);
}

#[test]
fn exact_store_passes_the_suite() {
    suite(&ExactStore::new());
}

#[test]
fn edge_store_passes_the_suite_and_persists() {
    let dir = std::env::temp_dir().join(format!("agentnet-edge-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    {
        let store = EdgeStore::open(&dir, 4).expect("open");
        suite(&store);
        assert!(matches!(
            store.upsert(&[VectorPoint {
                vector: vec![1.0; 3],
                ..point("at://x/y.z.w/1", A, "y.z.w", &[], 0, [0.0; 4])
            }]),
            Err(VectorError::Dimensions { got: 3, want: 4 })
        ));
    }
    let reopened = EdgeStore::open(&dir, 4).expect("reopen");
    let q = Query {
        vector: vec![1.0, 0.0, 0.0, 0.0],
        limit: 10,
        ..Query::default()
    };
    assert_eq!(
        uris(&reopened, Some(C), &q),
        vec!["at://a/agent.comms.message/1", "at://c/agent.memory.note/3"]
    );
    drop(reopened);
    let _ = std::fs::remove_dir_all(&dir);
}
