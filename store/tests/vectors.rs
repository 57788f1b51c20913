//! One test suite for every vector-store backend: access control inside the query, filters,
//! replace-by-URI, deletes, and (for the embedded store) persistence and optimization.
//!
//! No Qdrant server can run here, so the Qdrant backend's requests go through the suite
//! instead: [`QdrantRequests`] builds every upsert, delete and search exactly as the
//! Qdrant store sends them and evaluates them the way Qdrant documents (keyword match on a
//! value or any array element, integer range, nested should/must). An existing collection's
//! check (size, distance, payload indexes to add) is tested on the descriptions Qdrant
//! returns. What that leaves untested: the gRPC transport and Qdrant's own HNSW.

use std::collections::HashMap;
use std::sync::Mutex;

use qdrant_client::qdrant::condition::ConditionOneOf;
use qdrant_client::qdrant::point_id::PointIdOptions;
use qdrant_client::qdrant::points_selector::PointsSelectorOneOf;
use qdrant_client::qdrant::r#match::MatchValue;
use qdrant_client::qdrant::value::Kind;
use qdrant_client::qdrant::{Condition, Filter, Value};
use store::qdrant::{delete_request, search_request, upsert_request};
use store::vectors::{
    point_id, EdgeStore, ExactStore, Hit, Query, VectorError, VectorPoint, VectorStore,
};

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

/// A point as the requests carry it: its payload and its vector.
type Stored = (HashMap<String, Value>, Vec<f32>);

/// The Qdrant store's requests, evaluated in memory (see the module comment).
#[derive(Default)]
struct QdrantRequests {
    points: Mutex<HashMap<u64, Stored>>,
}

fn num_id(id: &qdrant_client::qdrant::PointId) -> u64 {
    match id.point_id_options {
        Some(PointIdOptions::Num(n)) => n,
        _ => panic!("the store sends numeric ids"),
    }
}

fn values(v: &Value) -> Vec<&Value> {
    match &v.kind {
        Some(Kind::ListValue(l)) => l.values.iter().collect(),
        _ => vec![v],
    }
}

fn holds(payload: &HashMap<String, Value>, c: &Condition) -> bool {
    match c.condition_one_of.as_ref().expect("condition") {
        ConditionOneOf::Filter(f) => passes(payload, f),
        ConditionOneOf::Field(f) => {
            let Some(v) = payload.get(&f.key) else {
                return false;
            };
            if let Some(m) = &f.r#match {
                let Some(MatchValue::Keyword(k)) = &m.match_value else {
                    panic!("the store matches keywords only");
                };
                return values(v)
                    .iter()
                    .any(|x| matches!(&x.kind, Some(Kind::StringValue(s)) if s == k));
            }
            let r = f.range.as_ref().expect("match or range");
            let Some(Kind::IntegerValue(n)) = v.kind else {
                return false;
            };
            let n = n as f64;
            r.gte.is_none_or(|g| n >= g)
                && r.gt.is_none_or(|g| n > g)
                && r.lte.is_none_or(|l| n <= l)
                && r.lt.is_none_or(|l| n < l)
        }
        other => panic!("the store sends no {other:?}"),
    }
}

fn passes(payload: &HashMap<String, Value>, f: &Filter) -> bool {
    f.must.iter().all(|c| holds(payload, c))
        && (f.should.is_empty() || f.should.iter().any(|c| holds(payload, c)))
        && !f.must_not.iter().any(|c| holds(payload, c))
}

impl VectorStore for QdrantRequests {
    fn upsert(&self, points: &[VectorPoint]) -> Result<(), VectorError> {
        let request = upsert_request("agentnet", points)?;
        assert_eq!(request.collection_name, "agentnet");
        assert_eq!(
            request.wait,
            Some(true),
            "writes are acknowledged when applied"
        );
        let mut map = self.points.lock().expect("lock");
        for (sent, p) in request.points.iter().zip(points) {
            let id = num_id(sent.id.as_ref().expect("id"));
            assert_eq!(
                id,
                point_id(&p.uri),
                "ids come from the URI, as in the embedded store"
            );
            map.insert(id, (sent.payload.clone(), p.vector.clone()));
        }
        Ok(())
    }

    fn delete(&self, uris: &[String]) -> Result<(), VectorError> {
        let request = delete_request("agentnet", uris);
        let Some(PointsSelectorOneOf::Points(list)) =
            request.points.and_then(|p| p.points_selector_one_of)
        else {
            panic!("deletes name points by id");
        };
        let mut map = self.points.lock().expect("lock");
        for id in &list.ids {
            map.remove(&num_id(id));
        }
        Ok(())
    }

    fn search(&self, caller: Option<&str>, query: &Query) -> Result<Vec<Hit>, VectorError> {
        let request = search_request("agentnet", caller, query);
        let filter = request.filter.as_ref().expect("every search is filtered");
        assert!(request.params.and_then(|p| p.hnsw_ef).is_some());
        let map = self.points.lock().expect("lock");
        let mut hits: Vec<Hit> = map
            .values()
            .filter(|(payload, _)| passes(payload, filter))
            .map(|(payload, vector)| Hit {
                uri: match payload.get("uri").and_then(|v| v.kind.as_ref()) {
                    Some(Kind::StringValue(s)) => s.clone(),
                    _ => panic!("every point carries its URI"),
                },
                score: store::embed::cosine(vector, &request.vector),
            })
            .collect();
        hits.sort_by(|a, b| b.score.total_cmp(&a.score));
        hits.truncate(request.limit as usize);
        Ok(hits)
    }

    fn optimize(&self) -> Result<(), VectorError> {
        Ok(())
    }
}

#[test]
fn qdrant_requests_pass_the_suite() {
    suite(&QdrantRequests::default());
}

#[test]
fn an_unreachable_qdrant_is_a_clear_error() {
    let err = store::qdrant::QdrantStore::connect("http://127.0.0.1:9", "", "agentnet", 4)
        .err()
        .expect("nothing listens on port 9");
    assert!(matches!(err, VectorError::Backend(_)), "{err}");
}

/// A collection as Qdrant describes it: one unnamed vector and these payload indexes.
fn collection_info(
    size: u64,
    distance: qdrant_client::qdrant::Distance,
    indexes: &[(&str, qdrant_client::qdrant::PayloadSchemaType)],
) -> qdrant_client::qdrant::CollectionInfo {
    use qdrant_client::qdrant::{
        vectors_config, CollectionConfig, CollectionInfo, CollectionParams, PayloadSchemaInfo,
        VectorParams, VectorsConfig,
    };
    CollectionInfo {
        config: Some(CollectionConfig {
            params: Some(CollectionParams {
                vectors_config: Some(VectorsConfig {
                    config: Some(vectors_config::Config::Params(VectorParams {
                        size,
                        distance: distance as i32,
                        ..Default::default()
                    })),
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        payload_schema: indexes
            .iter()
            .map(|(field, kind)| {
                (
                    field.to_string(),
                    PayloadSchemaInfo {
                        data_type: *kind as i32,
                        ..Default::default()
                    },
                )
            })
            .collect(),
        ..Default::default()
    }
}

#[test]
fn an_existing_qdrant_collection_is_checked_and_completed() {
    use qdrant_client::qdrant::{Distance, FieldType, PayloadSchemaType as T};
    use store::qdrant::{missing_indexes, payload_indexes};
    let all: Vec<(&str, T)> = payload_indexes()
        .map(|(f, k)| {
            let t = if k == FieldType::Integer {
                T::Integer
            } else {
                T::Keyword
            };
            (f, t)
        })
        .collect();
    assert!(all.iter().any(|(f, _)| *f == "recipients"));
    assert!(all.iter().any(|(f, _)| *f == "created_ms"));

    // What agentnet made itself: nothing to add.
    let complete = collection_info(384, Distance::Cosine, &all);
    assert!(missing_indexes("agentnet", &complete, 384)
        .expect("usable")
        .is_empty());

    // Made by hand without payload indexes: every one is added, with its type.
    let bare = collection_info(384, Distance::Cosine, &[]);
    let missing = missing_indexes("agentnet", &bare, 384).expect("usable");
    assert_eq!(
        missing,
        payload_indexes().collect::<Vec<_>>(),
        "every filter field gets its index"
    );
    // Some present: only the others.
    let some = collection_info(384, Distance::Cosine, &all[..2]);
    let missing = missing_indexes("agentnet", &some, 384).expect("usable");
    assert_eq!(missing.len(), all.len() - 2);
    assert!(missing
        .iter()
        .all(|(f, _)| !all[..2].iter().any(|(g, _)| g == f)));

    // Another model's size, or another distance: refused at start with what differs.
    let err = missing_indexes(
        "agentnet",
        &collection_info(768, Distance::Cosine, &all),
        384,
    )
    .expect_err("another size");
    let text = err.to_string();
    assert!(text.contains("768") && text.contains("384"), "{text}");
    assert!(text.contains("--qdrant-collection"), "{text}");
    let err = missing_indexes("agentnet", &collection_info(384, Distance::Dot, &all), 384)
        .expect_err("another distance");
    assert!(err.to_string().contains("Dot"), "{err}");

    // A filter field indexed as another type would make every filtered search fail.
    let mut wrong = all.clone();
    wrong[0].1 = T::Text;
    let err = missing_indexes(
        "agentnet",
        &collection_info(384, Distance::Cosine, &wrong),
        384,
    )
    .expect_err("wrong index type");
    assert!(err.to_string().contains(wrong[0].0), "{err}");

    // No vector configuration at all (named vectors, or nothing): refused too.
    let mut none = complete.clone();
    none.config = None;
    assert!(missing_indexes("agentnet", &none, 384).is_err());
}
