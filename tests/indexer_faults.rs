//! The indexer as a complete consumer, on embedded ClickHouse (one engine per process, so
//! the scenarios run in one test over one index, each with its own accounts):
//! - a batch's ops reach every sink in commit order (delete then re-create leaves the
//!   record; create then delete leaves nothing);
//! - `#account` hides an inactive account's records from every query, reactivation shows
//!   them again, and a deleted account's records and vectors are purged;
//! - a batch a sink refuses is retried until written, never skipped;
//! - an error frame from the relay (FutureCursor) backs off instead of reconnecting in a loop;
//! - the index refuses to follow another relay than the one it was built from.
//!
//! Needs AGENTNET_CHDB_LIB, ORT_DYLIB_PATH and the model (scripts/test.sh sets them).

mod inproc;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use agentnet_indexer::extract::Extractor;
use agentnet_indexer::pipeline::{follow, Sinks};
use atproto::commit::{RepoWriter, Write};
use atproto::crypto::{Algorithm, Keypair};
use atproto::frame::{AccountEvent, Frame};
use inproc::{published, relay_in, tempdir, wait_for, FleetHandle};
use serde_json::json;
use store::embed::{Embedder, Precision};
use store::records::Page;
use store::vectors::{ExactStore, Query, VectorStore};

const NOW: &str = "2026-12-02T08:00:00.000Z";

fn model_dir() -> std::path::PathBuf {
    std::env::var("AGENTNET_MODEL_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| {
            std::path::PathBuf::from(
                std::env::var("CARGO_MANIFEST_DIR")
                    .unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_string()),
            )
            .join("../shared/models/all-minilm-l6-v2")
        })
}

/// The exact store, refusing the first `fail` upserts.
#[derive(Default)]
struct Flaky {
    inner: ExactStore,
    fail: AtomicUsize,
    refused: AtomicUsize,
}

impl VectorStore for Flaky {
    fn upsert(
        &self,
        points: &[store::vectors::VectorPoint],
    ) -> Result<(), store::vectors::VectorError> {
        if self
            .fail
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            self.refused.fetch_add(1, Ordering::SeqCst);
            return Err(store::vectors::VectorError::Backend(
                "injected failure".into(),
            ));
        }
        self.inner.upsert(points)
    }
    fn delete(&self, uris: &[String]) -> Result<(), store::vectors::VectorError> {
        self.inner.delete(uris)
    }
    fn search(
        &self,
        caller: Option<&str>,
        query: &Query,
    ) -> Result<Vec<store::vectors::Hit>, store::vectors::VectorError> {
        self.inner.search(caller, query)
    }
    fn optimize(&self) -> Result<(), store::vectors::VectorError> {
        Ok(())
    }
}

fn message(did: &str, text: &str) -> Vec<u8> {
    atproto::data::to_cbor(&json!({
        "$type": "agent.comms.message", "sender": did, "recipient": did,
        "content": {"kind": "text", "text": text}, "createdAt": NOW,
    }))
    .expect("cbor")
}

fn create(w: &mut RepoWriter, rkey: &str, text: &str) -> Frame {
    let did = w.did().to_string();
    let ev = w
        .commit(
            &[Write::Create {
                collection: "agent.comms.message".into(),
                rkey: rkey.into(),
                record: message(&did, text),
            }],
            NOW,
        )
        .expect("commit");
    Frame::Commit(Box::new(ev))
}

fn delete(w: &mut RepoWriter, rkey: &str) -> Frame {
    let ev = w
        .commit(
            &[Write::Delete {
                collection: "agent.comms.message".into(),
                rkey: rkey.into(),
            }],
            NOW,
        )
        .expect("commit");
    Frame::Commit(Box::new(ev))
}

fn account(did: &str, seq: i64, active: bool, status: Option<&str>) -> Frame {
    Frame::Account(AccountEvent {
        seq,
        did: did.into(),
        time: NOW.into(),
        active,
        status: status.map(str::to_string),
    })
}

fn vectors_of(store: &dyn VectorStore, author: &str) -> usize {
    store
        .search(
            Some(author),
            &Query {
                vector: (0..384).map(|i| if i == 0 { 1.0 } else { 0.0 }).collect(),
                limit: 100,
                author: Some(author.into()),
                ..Query::default()
            },
        )
        .expect("search")
        .len()
}

fn visible(sinks: &Sinks<store::Sql>, did: &str) -> usize {
    sinks
        .records
        .inbox(None, did, None, &Page::first(100))
        .expect("inbox")
        .rows
        .len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_indexer_is_a_complete_consumer() {
    let lib = std::env::var("AGENTNET_CHDB_LIB")
        .expect("AGENTNET_CHDB_LIB must name libchdb.so: run infra/chdb/setup.sh");
    let data = tempdir("indexer-faults");
    let flaky = Arc::new(Flaky::default());
    let mut sinks = Sinks {
        extractor: Extractor::new(lexicons::catalog().expect("catalog"), None),
        records: store::open_embedded_records(std::path::Path::new(&lib), &data.join("clickhouse"))
            .expect("chdb"),
        vectors: Some((
            Embedder::load(&model_dir(), Precision::Int8, Some(1)).expect("model"),
            flaky.clone() as Arc<dyn VectorStore>,
        )),
        stats: agentnet_indexer::Stats::new(),
        optimize: agentnet_indexer::pipeline::Optimizer::every(0),
        repos: None,
    };
    let vectors = flaky.clone() as Arc<dyn VectorStore>;

    // Commit order within one batch.
    let mut a = RepoWriter::new(
        "did:plc:aaaaaaaaaaaaaaaaaaaaaaaa",
        Keypair::generate(Algorithm::K256),
    )
    .expect("repo");
    let did_a = a.did().to_string();
    let batch = vec![
        create(&mut a, "3l3aaaaaaaaa2", "first words"),
        delete(&mut a, "3l3aaaaaaaaa2"),
        create(&mut a, "3l3aaaaaaaaa2", "said again"),
        create(&mut a, "3l3aaaaaaaaa3", "short-lived"),
        delete(&mut a, "3l3aaaaaaaaa3"),
    ];
    sinks.index(&batch, "test", 5, 1).expect("batch");
    assert_eq!(
        visible(&sinks, &did_a),
        1,
        "the re-created record stays, the deleted one goes"
    );
    assert_eq!(
        vectors_of(vectors.as_ref(), &did_a),
        1,
        "and so in the vector store"
    );
    let row = sinks
        .records
        .get(
            None,
            &format!("at://{did_a}/agent.comms.message/3l3aaaaaaaaa2"),
        )
        .expect("get")
        .expect("the record");
    assert_eq!(row.text.as_deref(), Some("said again"));

    // #account: hidden while inactive, back when active, purged when deleted.
    let mut b = RepoWriter::new(
        "did:plc:bbbbbbbbbbbbbbbbbbbbbbbb",
        Keypair::generate(Algorithm::P256),
    )
    .expect("repo");
    let did_b = b.did().to_string();
    let batch = vec![
        create(&mut b, "3l3bbbbbbbbb2", "status report"),
        create(&mut b, "3l3bbbbbbbbb3", "another report"),
        account(&did_b, 10, false, Some("takendown")),
    ];
    sinks.index(&batch, "test", 10, 1).expect("batch");
    assert_eq!(visible(&sinks, &did_b), 0, "a taken-down account is hidden");
    assert!(sinks
        .records
        .agents(None, 100, None)
        .expect("agents")
        .iter()
        .all(|a| a.did != did_b));
    sinks
        .index(&[account(&did_b, 11, true, None)], "test", 11, 1)
        .expect("batch");
    assert_eq!(visible(&sinks, &did_b), 2, "reactivated: shown again");
    sinks
        .index(
            &[account(&did_b, 12, false, Some("deleted"))],
            "test",
            12,
            1,
        )
        .expect("batch");
    assert_eq!(visible(&sinks, &did_b), 0);
    assert!(sinks
        .records
        .all_visible()
        .expect("rows")
        .iter()
        .all(|(uri, _)| !uri.contains(&did_b)));
    assert_eq!(
        vectors_of(vectors.as_ref(), &did_b),
        0,
        "a deleted account's vectors are purged"
    );
    assert_eq!(visible(&sinks, &did_a), 1, "nobody else is touched");

    // A relay with the fleet's agents; the vector store refuses the first three writes.
    let mut fleet = FleetHandle::start(3, false).await;
    let relay = relay_in(&[&fleet], &data.join("relay"), &[]).await;
    fleet.fleet.genesis().await.expect("genesis");
    for i in 0..6 {
        fleet.fleet.write_one(i % 3).await.expect("write");
    }
    published(&relay, 15.0).await;
    flaky.fail.store(3, Ordering::SeqCst);
    let relay_url = format!("ws://127.0.0.1:{}", relay.port);
    sinks.repos = Some(
        agentnet_indexer::pipeline::RepoSource::new(
            &relay_url,
            &atproto::net::Egress::new(atproto::net::EgressPolicy::new(true)),
            &fleet.fleet.plc_url(),
            true,
        )
        .expect("repo source"),
    );
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let url = relay_url.clone();
    let task =
        tokio::spawn(
            async move { follow(&url, sinks, 64, Duration::from_millis(50), stopped).await },
        );
    let dids = fleet.fleet.dids().await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let _ = stop.send(true);
    let sinks = task.await.expect("join").expect("indexer ran cleanly");
    assert_eq!(flaky.refused.load(Ordering::SeqCst), 3, "three refusals");
    let prometheus = sinks.stats.prometheus();
    assert!(
        prometheus.contains("indexer_failed_batches_total 3"),
        "{prometheus}"
    );
    for did in &dids[..3] {
        assert_eq!(
            visible(&sinks, did),
            3,
            "every message, despite the refusals: {did}"
        );
    }
    assert_eq!(
        sinks.records.cursor(&relay_url).expect("cursor"),
        Some(15),
        "the cursor followed the batches it covers"
    );

    // #sync: a commit the host made but never emitted reaches the index through the repo.
    fleet.fleet.inject("skip_commit").await.expect("inject"); // account 0
    fleet.fleet.write_one(0).await.expect("write");
    wait_for("the relay to repair the account", async || {
        relay.metric("relay_resyncs_total").await >= 1.0
    })
    .await;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let url = relay_url.clone();
    let task =
        tokio::spawn(
            async move { follow(&url, sinks, 64, Duration::from_millis(50), stopped).await },
        );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let _ = stop.send(true);
    let sinks = task.await.expect("join").expect("indexer ran cleanly");
    assert!(
        sinks.stats.prometheus().contains("indexer_syncs_total 1"),
        "{}",
        sinks.stats.prometheus()
    );
    assert_eq!(
        visible(&sinks, &dids[0]),
        5,
        "the skipped commit's message and the one the repair answered are indexed from the repo"
    );

    // A #sync whose repo comes back signed by another key (a host serving a forged repo)
    // changes nothing: the sync counts as failed and the account's rows stay as they were.
    let forged = {
        let mut forger =
            RepoWriter::new(dids[1].as_str(), Keypair::generate(Algorithm::K256)).expect("forger");
        for text in ["forged one", "forged two"] {
            let rkey = forger.next_rkey().to_string();
            let record = json!({"$type": "agent.comms.message", "sender": dids[1], "recipient": dids[1],
                "content": {"kind": "text", "text": text}, "createdAt": NOW});
            let write = Write::Create {
                collection: "agent.comms.message".into(),
                rkey,
                record: atproto::data::to_cbor(
                    &atproto::data::json_to_ipld(&record).expect("data"),
                )
                .expect("cbor"),
            };
            forger.commit(&[write], NOW).expect("commit");
        }
        forger.export_car().expect("repo")
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let forger_url = format!("ws://{}", listener.local_addr().expect("addr"));
    let forger = axum::Router::new().route(
        "/xrpc/com.atproto.sync.getRepo",
        axum::routing::get(move || {
            let car = forged.clone();
            async move { car }
        }),
    );
    let server = tokio::spawn(async move { axum::serve(listener, forger).await });
    let mut sinks = sinks;
    sinks.repos = Some(
        agentnet_indexer::pipeline::RepoSource::new(
            &forger_url,
            &atproto::net::Egress::new(atproto::net::EgressPolicy::new(true)),
            &fleet.fleet.plc_url(),
            true,
        )
        .expect("repo source"),
    );
    let uris_of = |sinks: &Sinks<store::Sql>| -> Vec<String> {
        let page = sinks.records.inbox(None, &dids[1], None, &Page::first(100));
        page.expect("inbox")
            .rows
            .into_iter()
            .map(|r| r.uri)
            .collect()
    };
    let before = uris_of(&sinks);
    assert!(!before.is_empty());
    let failures = |sinks: &Sinks<store::Sql>| {
        sinks
            .stats
            .prometheus()
            .lines()
            .find_map(|l| {
                l.strip_prefix("indexer_sync_failures_total ")?
                    .parse::<u64>()
                    .ok()
            })
            .unwrap_or(0)
    };
    let failed_before = failures(&sinks);
    let sync = Frame::Sync(atproto::frame::SyncEvent {
        seq: 1,
        did: dids[1].clone(),
        blocks: Default::default(),
        // Older than any repo: only the signature stands between the forgery and the index.
        rev: "2222222222222".into(),
        time: NOW.into(),
    });
    let (sinks, indexed) = tokio::task::spawn_blocking(move || {
        let indexed = sinks.index(&[sync], "forged-repo-test", 1, 1);
        (sinks, indexed)
    })
    .await
    .expect("join");
    indexed.expect("a forged repo fails the sync, not the batch");
    assert_eq!(failures(&sinks), failed_before + 1);
    assert_eq!(
        uris_of(&sinks),
        before,
        "the account's records as they were"
    );
    assert!(
        !sinks.records.anywhere("forged one").expect("scan"),
        "nothing of the forgery indexed"
    );
    server.abort();

    // A cursor ahead of the relay: FutureCursor, answered with growing waits, not a loop.
    sinks
        .records
        .save_cursor("ws://future.test", 0)
        .expect("cursor");
    sinks
        .records
        .save_cursor(&relay_url, 1_000_000)
        .expect("cursor");
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let url = relay_url.clone();
    let task =
        tokio::spawn(
            async move { follow(&url, sinks, 64, Duration::from_millis(50), stopped).await },
        );
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let _ = stop.send(true);
    let sinks = task.await.expect("join").expect("indexer stopped cleanly");
    let frames_seen = sinks
        .stats
        .prometheus()
        .lines()
        .find_map(|l| l.strip_prefix("indexer_error_frames_total "))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    assert!(
        (1..=3).contains(&frames_seen),
        "{frames_seen} FutureCursor answers in 3.5 s: the indexer backs off"
    );

    // Another relay than the index was built from: refused unless forced.
    use clap::Parser;
    #[derive(clap::Parser)]
    struct Args {
        #[command(flatten)]
        indexer: agentnet_indexer::Config,
    }
    let config = Args::parse_from([
        "indexer",
        "--relay-url",
        "ws://127.0.0.1:9",
        "--data-dir",
        data.to_str().expect("utf-8"),
    ])
    .indexer;
    let stores = agentnet_indexer::Stores {
        records: sinks.records.clone(),
        vectors: None,
    };
    let refused = agentnet_indexer::run_with(
        config,
        stores,
        None,
        atproto::envelope::EncryptionKey::generate(),
        agentnet_indexer::Stats::new(),
        std::future::pending(),
    )
    .await;
    assert!(
        matches!(&refused, Err(agentnet_indexer::Error::Upstream(m)) if m.contains("--force-upstream")),
        "{refused:?}"
    );
    relay.stop().await;
    fleet.stop().await;
    let _ = std::fs::remove_dir_all(&data);
}
