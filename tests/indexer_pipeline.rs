//! Synthetic agents → relay → indexer: every commit lands in the record index and the vector
//! store, the cursor follows, and a restart resumes where it stopped without duplicates.
//! Needs AGENTNET_CHDB_LIB, ORT_DYLIB_PATH and the model (scripts/test.sh sets them).

mod inproc;

use std::time::Duration;

use agentnet_indexer::extract::Extractor;
use agentnet_indexer::pipeline::{follow, Sinks};
use inproc::{relay_args, tempdir, wait_for, FleetHandle, RelayHandle};
use store::chdb::Chdb;
use store::embed::{Embedder, Precision};
use store::records::{Page, RecordStore};
use store::vectors::{ExactStore, Query, VectorStore};

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

/// Follows the relay for a few seconds (long enough to drain what it holds), then stops.
async fn follow_for_a_while(sinks: Sinks<Chdb>, relay: &str) -> Sinks<Chdb> {
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let url = relay.to_string();
    let task =
        tokio::spawn(
            async move { follow(&url, sinks, 64, Duration::from_millis(50), stopped).await },
        );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let _ = stop.send(true);
    task.await.expect("join").expect("indexer ran cleanly")
}

/// The exact store, counting index builds.
#[derive(Default)]
struct Counted {
    inner: ExactStore,
    builds: std::sync::atomic::AtomicUsize,
}

impl VectorStore for Counted {
    fn upsert(
        &self,
        points: &[store::vectors::VectorPoint],
    ) -> Result<(), store::vectors::VectorError> {
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
        self.builds
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_to_relay_to_index_and_resume() {
    let lib = std::env::var("AGENTNET_CHDB_LIB")
        .expect("AGENTNET_CHDB_LIB must name libchdb.so: run infra/chdb/setup.sh");
    let mut fleet = FleetHandle::start(3, false).await;
    let data = tempdir("indexer-pipeline");
    let args = relay_args(&data.join("relay"), &fleet.fleet);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let relay = RelayHandle::start(&args).await;
    wait_for("the relay to subscribe", async || {
        fleet.fleet.subscribers() >= 1
    })
    .await;
    fleet.fleet.genesis().await.expect("genesis");
    for i in 0..12 {
        fleet.fleet.write_one(i % 3).await.expect("write");
    }
    wait_for("relay to publish", async || {
        relay.metric("relay_events_out_total").await >= 21.0
    })
    .await;
    let dids = fleet.fleet.dids().await;

    let counted = std::sync::Arc::new(Counted::default());
    let sinks = Sinks {
        extractor: Extractor::new(lexicons::catalog().expect("catalog"), None),
        records: RecordStore::open(
            Chdb::open(std::path::Path::new(&lib), &data.join("clickhouse")).expect("chdb"),
        )
        .expect("schema"),
        vectors: Some((
            Embedder::load(&model_dir(), Precision::Int8, Some(1)).expect("model"),
            counted.clone() as std::sync::Arc<dyn VectorStore>,
        )),
        stats: agentnet_indexer::Stats::new(),
        // Every 10 vectors: the 15 of the first pass start one build.
        optimize: agentnet_indexer::pipeline::Optimizer::every(10),
        repos: None,
    };
    let relay_url = format!("ws://127.0.0.1:{}", relay.port);
    let sinks = follow_for_a_while(sinks, &relay_url).await;

    // The fleet's messages are addressed to their senders: each account's inbox holds its
    // own genesis and round-robin messages, 5 each.
    for did in &dids[..3] {
        let inbox = sinks
            .records
            .inbox(None, did, None, &Page::first(100))
            .expect("inbox")
            .rows;
        assert_eq!(inbox.len(), 5, "{did}: {inbox:?}");
    }
    let cursor = sinks
        .records
        .cursor(&relay_url)
        .expect("cursor")
        .expect("saved");
    assert!(cursor >= 21, "cursor {cursor}");
    let (embedder, store) = sinks.vectors.as_ref().expect("vectors");
    let _ = embedder;
    let hits = store
        .search(
            None,
            &Query {
                vector: vec![0.0; 384]
                    .into_iter()
                    .enumerate()
                    .map(|(i, _)| if i == 0 { 1.0 } else { 0.0 })
                    .collect(),
                limit: 100,
                ..Query::default()
            },
        )
        .expect("search");
    assert_eq!(hits.len(), 15, "one vector per message");
    let mut sinks = sinks;
    sinks.optimize.finish().expect("index build");
    assert_eq!(
        counted.builds.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "the index was built once the new vectors passed the threshold"
    );

    // More writes while stopped; a restart resumes from the cursor without duplicates.
    for i in 0..6 {
        fleet.fleet.write_one(i % 3).await.expect("write");
    }
    wait_for("relay to publish", async || {
        relay.metric("relay_events_out_total").await >= 27.0
    })
    .await;
    let sinks = follow_for_a_while(sinks, &relay_url).await;
    for did in &dids[..3] {
        assert_eq!(
            sinks
                .records
                .inbox(None, did, None, &Page::first(100))
                .expect("inbox")
                .rows
                .len(),
            7,
            "{did}"
        );
    }
    relay.stop().await;
    fleet.stop().await;
    drop(sinks);
    let _ = std::fs::remove_dir_all(&data);
}
