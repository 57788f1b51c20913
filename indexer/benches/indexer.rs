//! Indexer benchmarks, with baselines measured in the same run:
//!
//! 1. Embedding: the batcher serving single-text requests vs. the model called directly on
//!    whole batches of the same texts (the floor the pipeline adds overhead to), int8 and
//!    fp32.
//! 2. Indexing throughput: commits through extract → (embed) → vectors → ClickHouse → cursor,
//!    without embeddings, with int8, with fp32.
//! 3. Recall latency: p50/p99 of filtered searches at N vectors, qdrant-edge after
//!    `optimize()` vs. the exact store.
//! 4. Inbox query latency on embedded ClickHouse at the indexed size.
//!
//! With AGENTNET_BENCH_CLICKHOUSE_URL (an empty ClickHouse server), section 2 also indexes
//! the same commits into the server and reports its records/s against chDB's.
//!
//! Needs AGENTNET_CHDB_LIB, ORT_DYLIB_PATH and the model (AGENTNET_MODEL_DIR or
//! ../shared/models/all-minilm-l6-v2). `cargo bench -p agentnet-indexer --bench indexer`;
//! sizes via AGENTNET_BENCH_COMMITS (default 2000) and AGENTNET_BENCH_VECTORS (100000).

use std::time::{Duration, Instant};

#[path = "common/sentences.rs"]
mod sentences;
use sentences::varied_sentence;

use agentnet_indexer::extract::Extractor;
use agentnet_indexer::pipeline::Sinks;
use atproto::commit::{RepoWriter, Write};
use atproto::crypto::{Algorithm, Keypair};
use atproto::frame::Frame;
use store::chdb::Chdb;
use store::embed::{BatchConfig, Batcher, Embedder, Precision};
use store::records::{Page, RecordStore};
use store::vectors::{EdgeStore, ExactStore, Query, VectorPoint, VectorStore};

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn model_dir() -> std::path::PathBuf {
    std::env::var("AGENTNET_MODEL_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| {
            std::path::PathBuf::from(
                std::env::var("CARGO_MANIFEST_DIR")
                    .unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_string()),
            )
            .join("../../shared/models/all-minilm-l6-v2")
        })
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let texts: Vec<String> = (0..1024).map(|i| varied_sentence(i * 7919)).collect();
    let sections =
        std::env::var("AGENTNET_BENCH_SECTIONS").unwrap_or_else(|_| "embed,index,recall".into());
    let run = |name: &str| sections.split(',').any(|s| s.trim() == name);

    // 1. Embedding pipeline vs. direct batches.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    for precision in [Precision::Int8, Precision::Fp32] {
        if !run("embed") {
            break;
        }
        // The baseline: ONNX Runtime alone on the same batches of 32. fastembed's
        // `transform` is tokenization + the session run; tokenization is timed on its own
        // and taken out.
        let mut direct = Embedder::load(&model_dir(), precision, None).expect("model");
        direct.embed(&texts[..32], 32).expect("warm up");
        let model = direct.fastembed();
        let (mut tokenize, mut transform) = (0.0, 0.0);
        {
            for batch in texts.chunks(32) {
                let refs: Vec<&str> = batch.iter().map(String::as_str).collect();
                let t = Instant::now();
                let encoded = model.tokenizer.encode_batch(refs, true).expect("tokenize");
                tokenize += t.elapsed().as_secs_f64();
                drop(encoded);
                let t = Instant::now();
                drop(model.transform(batch, Some(32)).expect("run"));
                transform += t.elapsed().as_secs_f64();
            }
        }
        let ort_rate = texts.len() as f64 / (transform - tokenize);
        let t = Instant::now();
        direct.embed(&texts, 32).expect("embed");
        let direct_rate = texts.len() as f64 / t.elapsed().as_secs_f64();
        let (batcher, thread) = Batcher::start(
            Embedder::load(&model_dir(), precision, None).expect("model"),
            BatchConfig {
                max_batch: 32,
                max_wait: Duration::from_millis(5),
            },
        );
        let requests = |texts: &[String]| {
            rt.block_on(async {
                let handles: Vec<_> = texts
                    .iter()
                    .cloned()
                    .map(|s| {
                        let b = batcher.clone();
                        tokio::spawn(async move { b.embed(s).await })
                    })
                    .collect();
                for h in handles {
                    h.await.expect("join").expect("embedded");
                }
            })
        };
        // Warm up as the direct model was: the first batch of a shape allocates.
        requests(&texts[..32]);
        let t = Instant::now();
        requests(&texts);
        let batched_rate = texts.len() as f64 / t.elapsed().as_secs_f64();
        drop(batcher);
        thread.join().expect("batcher");
        println!(
            "embedding {precision:?}: ONNX Runtime alone {ort_rate:.0} texts/s (tokenization {:.0} % of fastembed's transform); \
             fastembed batches of 32 {direct_rate:.0} texts/s = {:.0} %; batcher (single-text requests) {batched_rate:.0} texts/s = {:.0} % of ONNX Runtime alone",
            100.0 * tokenize / transform,
            100.0 * direct_rate / ort_rate,
            100.0 * batched_rate / ort_rate
        );
    }

    if run("index") {
        index_and_inbox();
    }
    if run("recall") {
        recall();
    }
}

/// Sinks writing rows to `records` and nothing else (vectors are set per pass).
fn records_only<T: store::records::SqlTransport>(records: RecordStore<T>) -> Sinks<T> {
    Sinks {
        extractor: Extractor::new(lexicons::catalog().expect("catalog"), None),
        records,
        vectors: None,
        stats: agentnet_indexer::Stats::new(),
        optimize: Default::default(),
        repos: None,
    }
}

/// Indexing throughput without and with embeddings, then inbox latency at that size.
fn index_and_inbox() {
    let commits = env_or("AGENTNET_BENCH_COMMITS", 2000);
    let mut frames = Vec::with_capacity(commits);
    let mut writers: Vec<RepoWriter> = (0..20)
        .map(|i| {
            RepoWriter::new(
                format!("did:plc:{:0>24}", format!("bench{i}")).replace('0', "a"),
                Keypair::generate(Algorithm::K256),
            )
            .expect("repo")
        })
        .collect();
    for i in 0..commits {
        let w = &mut writers[i % 20];
        let did = w.did().to_string();
        let rkey = w.next_rkey().to_string();
        let record = serde_json::json!({"$type": "agent.comms.message", "sender": did, "recipient": did, "content": {"kind": "text", "text": varied_sentence(i * 7919)}, "createdAt": "2026-11-24T08:00:00.000Z"});
        let record = atproto::data::to_cbor(&atproto::data::json_to_ipld(&record).expect("data"))
            .expect("cbor");
        let mut ev = w
            .commit(
                &[Write::Create {
                    collection: "agent.comms.message".into(),
                    rkey,
                    record,
                }],
                "2026-11-24T08:00:00.000Z",
            )
            .expect("commit");
        ev.seq = i as i64 + 1;
        frames.push(Frame::Commit(Box::new(ev)));
    }
    let lib = std::env::var("AGENTNET_CHDB_LIB").expect("AGENTNET_CHDB_LIB");
    let dir = std::env::temp_dir().join(format!("agentnet-index-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let db = Chdb::open(std::path::Path::new(&lib), &dir.join("clickhouse")).expect("chdb");
    let mut sinks = records_only(RecordStore::open(db).expect("schema"));
    let mut chdb_rate = f64::NAN;
    for (label, precision) in [
        ("no embeddings", None),
        ("int8", Some(Precision::Int8)),
        ("fp32", Some(Precision::Fp32)),
    ] {
        sinks.vectors = precision.map(|p| {
            let e = Embedder::load(&model_dir(), p, None).expect("model");
            let store: std::sync::Arc<dyn VectorStore> = std::sync::Arc::new(
                EdgeStore::open(&dir.join(format!("vectors-{label}")), e.dimensions())
                    .expect("edge"),
            );
            (e, store)
        });
        let t = Instant::now();
        for (i, chunk) in frames.chunks(256).enumerate() {
            sinks
                .index(chunk, label, ((i + 1) * 256) as u64, 0)
                .expect("index");
        }
        let rate = commits as f64 / t.elapsed().as_secs_f64();
        println!(
            "indexing, {label}: {commits} commits in {:.2}s = {rate:.0} records/s",
            t.elapsed().as_secs_f64(),
        );
        if precision.is_none() {
            chdb_rate = rate;
        }
    }

    // The same commits, without embeddings, into a ClickHouse server (an empty database),
    // against the chDB pass above.
    if let Ok(url) = std::env::var("AGENTNET_BENCH_CLICKHOUSE_URL") {
        let config = store::server::ServerConfig {
            url: url.clone(),
            user: String::new(),
            password: String::new(),
            database: String::new(),
        };
        let mut server =
            records_only(store::open_server_records(&config).expect("ClickHouse server"));
        let t = Instant::now();
        for (i, chunk) in frames.chunks(256).enumerate() {
            server
                .index(chunk, "server", ((i + 1) * 256) as u64, 0)
                .expect("index");
        }
        let rate = commits as f64 / t.elapsed().as_secs_f64();
        println!(
            "indexing, no embeddings, ClickHouse server {url}: {rate:.0} records/s = {:.0} % of embedded chDB's {chdb_rate:.0}",
            100.0 * rate / chdb_rate
        );
    }

    // 4. Inbox latency at the indexed size.
    let did = writers[3].did().to_string();
    let mut lat = Vec::new();
    for _ in 0..200 {
        let t = Instant::now();
        let rows = sinks
            .records
            .inbox(Some(&did), &did, None, &Page::first(50))
            .expect("inbox");
        lat.push(t.elapsed().as_secs_f64() * 1000.0);
        assert!(!rows.rows.is_empty());
    }
    lat.sort_by(|a, b| a.total_cmp(b));
    println!(
        "inbox query ({} rows indexed, 3 passes): p50 {:.2} ms, p99 {:.2} ms",
        commits * 3,
        percentile(&lat, 0.5),
        percentile(&lat, 0.99)
    );

    drop(sinks);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Recall latency and quality at N vectors: qdrant-edge (HNSW, after optimize) against an
/// exact scan, with the caller's access filter in every query.
fn recall() {
    let dir = std::env::temp_dir().join(format!("agentnet-recall-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let n = env_or("AGENTNET_BENCH_VECTORS", 100_000);
    let n_queries = env_or("AGENTNET_BENCH_QUERIES", 200);
    let kind = std::env::var("AGENTNET_BENCH_VECTOR_KIND").unwrap_or_else(|_| "sentences".into());
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut rnd = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed >> 11) as f32 / (1u64 << 53) as f32
    };
    // Sentence-derived vectors: up to 20k real embeddings of distinct sentences, and beyond
    // that blends of two of them (normalised), which stay on the model's manifold. Queries are
    // embeddings of sentences not in the set. Random vectors: uniform, the hardest case for
    // HNSW and the least like real text.
    let (base, queries): (Vec<Vec<f32>>, Vec<Vec<f32>>) = if kind == "random" {
        let mut r = || (0..384).map(|_| rnd() - 0.5).collect::<Vec<f32>>();
        (
            (0..n.min(20_000)).map(|_| r()).collect(),
            (0..n_queries).map(|_| r()).collect(),
        )
    } else {
        let mut model = Embedder::load(&model_dir(), Precision::Int8, None).expect("model");
        let t = Instant::now();
        let texts: Vec<String> = (0..n.min(20_000))
            .map(|i| varied_sentence(i * 7 + 3))
            .collect();
        let base = model.embed(&texts, 256).expect("embed");
        let queries: Vec<String> = (0..n_queries)
            .map(|k| varied_sentence(200_000 + k * 131))
            .collect();
        let queries = model.embed(&queries, 256).expect("embed");
        println!(
            "recall corpus: {} sentence embeddings in {:.1}s",
            base.len(),
            t.elapsed().as_secs_f64()
        );
        (base, queries)
    };
    let edge = EdgeStore::open(&dir.join("recall"), 384).expect("edge");
    let exact = ExactStore::new();
    let t = Instant::now();
    for chunk in 0..n.div_ceil(1000) {
        let points: Vec<VectorPoint> = (chunk * 1000..((chunk + 1) * 1000).min(n))
            .map(|i| {
                let vector = if i < base.len() {
                    base[i].clone()
                } else {
                    let (x, y) = (
                        &base[(rnd() * base.len() as f32) as usize % base.len()],
                        &base[(rnd() * base.len() as f32) as usize % base.len()],
                    );
                    let w = 0.3 + 0.4 * rnd();
                    let mut v: Vec<f32> = x
                        .iter()
                        .zip(y)
                        .map(|(a, b)| w * a + (1.0 - w) * b)
                        .collect();
                    let norm = v.iter().map(|a| a * a).sum::<f32>().sqrt().max(1e-6);
                    v.iter_mut().for_each(|a| *a /= norm);
                    v
                };
                VectorPoint {
                    uri: format!("at://did:plc:x/agent.memory.note/{i}"),
                    author: format!("did:plc:author{}", i % 100),
                    collection: if i % 2 == 0 {
                        "agent.memory.note"
                    } else {
                        "agent.comms.message"
                    }
                    .into(),
                    visibility: if i % 3 == 0 { "shared" } else { "public" }.into(),
                    recipients: if i % 3 == 0 {
                        vec![format!("did:plc:author{}", (i + 1) % 100)]
                    } else {
                        vec![]
                    },
                    created_ms: i as i64,
                    vector,
                }
            })
            .collect();
        edge.upsert(&points).expect("upsert");
        exact.upsert(&points).expect("upsert");
    }
    let upsert_secs = t.elapsed().as_secs_f64();
    let t = Instant::now();
    edge.optimize().expect("optimize");
    let optimize_secs = t.elapsed().as_secs_f64();
    let query = |i: usize| Query {
        vector: queries[i].clone(),
        limit: 10,
        ..Query::default()
    };
    let caller = |i: usize| format!("did:plc:author{}", i % 100);
    // Ground truth once per query, timing the exact scan as it goes.
    let mut exact_lat = Vec::new();
    let truth: Vec<Vec<String>> = (0..queries.len())
        .map(|i| {
            let t = Instant::now();
            let hits = exact.search(Some(&caller(i)), &query(i)).expect("search");
            exact_lat.push(t.elapsed().as_secs_f64() * 1000.0);
            hits.into_iter().map(|h| h.uri).collect()
        })
        .collect();
    // One cold pass (the store's files come into memory), then the timed warm pass.
    let mut cold = Vec::new();
    for i in 0..queries.len() {
        let t = Instant::now();
        edge.search(Some(&caller(i)), &query(i)).expect("search");
        cold.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    cold.sort_by(|a, b| a.total_cmp(b));
    let mut lat = Vec::new();
    let mut found = 0usize;
    for (i, truth) in truth.iter().enumerate() {
        let t = Instant::now();
        let hits = edge.search(Some(&caller(i)), &query(i)).expect("search");
        lat.push(t.elapsed().as_secs_f64() * 1000.0);
        found += hits.iter().filter(|h| truth.contains(&h.uri)).count();
    }
    lat.sort_by(|a, b| a.total_cmp(b));
    exact_lat.sort_by(|a, b| a.total_cmp(b));
    println!(
        "recall at {n} {kind} vectors, {} queries, caller's filter: qdrant-edge (HNSW) p50 {:.2} ms, p99 {:.2} ms, recall@10 {:.3}; exact scan p50 {:.2} ms, p99 {:.2} ms",
        queries.len(),
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        found as f64 / (10 * queries.len()) as f64,
        percentile(&exact_lat, 0.5),
        percentile(&exact_lat, 0.99),
    );
    println!(
        "  (qdrant-edge: upsert {n} points in {upsert_secs:.1}s, with the exact store; optimize {optimize_secs:.1}s; \
         first, cold pass p50 {:.2} ms, p99 {:.2} ms)",
        percentile(&cold, 0.5),
        percentile(&cold, 0.99)
    );
    // Close the store before its files go (qdrant-edge flushes on drop).
    drop(edge);
    let _ = std::fs::remove_dir_all(&dir);
}
