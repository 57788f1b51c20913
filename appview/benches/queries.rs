//! The coordination queries at scale, as agents see them: `getInbox` and `listTasks`
//! through the appview's HTTP endpoint (service-token check, the store query, JSON) over a
//! record index of distinct records with the real mix of kinds and privacy levels: half
//! of what is addressed to someone is shared (sealed for its recipients, readable by the
//! appview), the rest public; private records are never indexed. Each caller asks for its
//! own inbox and tasks, so the caller-as-recipient branch of the visibility rule is what is
//! timed. A cold pass and a warm pass, each on callers not asked before.
//!
//! Then recall (`agent.memory.recall`) through HTTP as agents ask it: the query embedded
//! (int8 model), the caller's filter in the vector search (qdrant-edge, HNSW built), the
//! hits' records read with the caller's rule, JSON. `AGENTNET_BENCH_VECTORS` points (default
//! 100,000), one per record of the index above: the model's embeddings of 20,000 distinct
//! sentences and, beyond those, blends of two. Distinct query sentences and callers in the
//! cold and the warm pass. Needs ORT_DYLIB_PATH and the model (AGENTNET_MODEL_DIR);
//! skipped, saying so, without them.
//!
//! ```sh
//! AGENTNET_CHDB_LIB=$(infra/chdb/setup.sh) cargo bench -p agentnet-appview --bench queries
//! # another size, or a ClickHouse server instead of embedded chDB:
//! AGENTNET_BENCH_RECORDS=1000000 AGENTNET_BENCH_CLICKHOUSE_URL=http://127.0.0.1:8123 …
//! ```

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../../indexer/benches/common/sentences.rs"]
mod sentences;

use std::time::{Duration, Instant};

use agentnet_appview::Limits;
use atproto::crypto::{Algorithm, Keypair};
use serde_json::{json, Value};
use store::embed::{Embedder, Precision};
use store::records::{Change, RecordRow, Visibility};
use store::vectors::{EdgeStore, VectorPoint, VectorStore};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

const CID: &str = "bafyreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy";

/// A well-spread hash of `x` (splitmix64), so who writes to whom does not follow the kind.
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Record `i` of the generated index: its kind by `i % 20` (half messages, then requests,
/// responses, handoffs, broadcasts and notes), from one agent to another, every second
/// addressed record shared.
fn record(i: usize, agents: &[String]) -> RecordRow {
    let n = agents.len();
    let author = &agents[mix(i as u64) as usize % n];
    let to = &agents[mix(!(i as u64)) as usize % n];
    let to = if to == author {
        &agents[(i + 1) % n]
    } else {
        to
    };
    let created_at = {
        // One record a second from 2026-01-01, so pages are newest first by a real order.
        let s = i as i64;
        let (d, rem) = (s / 86_400, s % 86_400);
        format!(
            "2026-{:02}-{:02}T{:02}:{:02}:{:02}.000Z",
            1 + (d / 28) % 12,
            1 + d % 28,
            rem / 3600,
            rem % 3600 / 60,
            rem % 60
        )
    };
    let text = format!(
        "Item {i}: please look at ticket {} before the {} sync.",
        i * 7 % 9973,
        ["morning", "noon", "evening"][i % 3]
    );
    let (collection, mut body) = match i % 20 {
        0..=9 => (
            "agent.comms.message",
            json!({"sender": author, "recipient": to, "content": {"kind": "text", "text": text}}),
        ),
        10..=12 => ("agent.comms.request", json!({"assignee": to, "task": text})),
        13 | 14 => {
            // The answer to the request written three records before, by its assignee.
            let request = i - (i % 20 - 10);
            let asked = record(request, agents);
            (
                "agent.comms.response",
                json!({"request": asked.uri, "status": if i % 2 == 0 { "done" } else { "accepted" }, "text": text}),
            )
        }
        15 => (
            "agent.comms.handoff",
            json!({"to": to, "session": format!("s{}", i % 977), "summary": text}),
        ),
        16 | 17 => (
            "agent.comms.broadcast",
            json!({"topic": "ops", "text": text}),
        ),
        _ => ("agent.memory.note", json!({"text": text})),
    };
    let author = if collection == "agent.comms.response" {
        // Only the assignee's answer settles a task.
        let request = i - (i % 20 - 10);
        let asked = record(request, agents);
        asked
            .record
            .as_ref()
            .and_then(|r| r["assignee"].as_str())
            .map(String::from)
            .unwrap_or_else(|| author.clone())
    } else {
        author.clone()
    };
    body["$type"] = json!(collection);
    body["createdAt"] = json!(created_at);
    let addressed = !matches!(collection, "agent.comms.broadcast" | "agent.memory.note");
    let shared = addressed && (i / 20) % 2 == 0;
    let rkey = atproto::syntax::Tid::from_u64((1 << 60) + i as u64).to_string();
    RecordRow {
        uri: format!(
            "at://{author}/{}/{rkey}",
            if shared {
                "agent.envelope.sealed"
            } else {
                collection
            }
        ),
        cid: CID.into(),
        author: author.clone(),
        collection: collection.into(),
        rkey: rkey.clone(),
        rev: rkey,
        created_at,
        visibility: if shared {
            Visibility::Shared
        } else {
            Visibility::Public
        },
        recipients: if shared {
            vec![author.clone(), to.clone()]
        } else {
            vec![]
        },
        sealed: shared.then(|| json!({"ciphertext": "…"})),
        text: Some(text),
        record: Some(body),
        indexed_ms: 0,
    }
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * q).round() as usize]
}

/// One pass: each caller asks once for its inbox, its tasks, the `ops` broadcasts, and the
/// thread of the newest item in its inbox: (query, p50 ms, p99 ms, items per answer).
async fn pass(
    http: &reqwest::Client,
    port: u16,
    callers: &[(String, Keypair)],
) -> Vec<(String, f64, f64, f64)> {
    const QUERIES: [(&str, &str, &str); 4] = [
        ("getInbox", "agent.comms.getInbox", "items"),
        ("listTasks", "agent.comms.listTasks", "tasks"),
        ("listBroadcasts", "agent.comms.listBroadcasts", "items"),
        ("getThread", "agent.comms.getThread", "items"),
    ];
    let mut times: [Vec<f64>; 4] = Default::default();
    let mut found = [0usize; 4];
    for (did, key) in callers {
        let mut newest: Option<String> = None;
        for (q, (_, method, list)) in QUERIES.iter().enumerate() {
            let params = match *method {
                "agent.comms.listBroadcasts" => "topic=ops&limit=50".to_string(),
                "agent.comms.getThread" => match &newest {
                    Some(uri) => format!("uri={}", uri.replace(':', "%3A").replace('/', "%2F")),
                    None => continue,
                },
                _ => "limit=50".to_string(),
            };
            let token = common::token(did, key, method);
            let started = Instant::now();
            let answer = http
                .get(format!("http://127.0.0.1:{port}/xrpc/{method}?{params}"))
                .bearer_auth(token)
                .send()
                .await
                .expect("query");
            assert!(
                answer.status().is_success(),
                "{method}: {}",
                answer.status()
            );
            let body: Value = answer.json().await.expect("json");
            times[q].push(started.elapsed().as_secs_f64() * 1000.0);
            found[q] += body[*list].as_array().map_or(0, Vec::len);
            if *method == "agent.comms.getInbox" {
                newest = body["items"][0]["uri"].as_str().map(String::from);
            }
        }
    }
    QUERIES
        .iter()
        .zip(times.iter_mut().zip(found))
        .filter(|(_, (t, _))| !t.is_empty())
        .map(|((name, _, _), (t, n))| {
            t.sort_by(f64::total_cmp);
            let answers = t.len() as f64;
            (
                name.to_string(),
                quantile(t, 0.5),
                quantile(t, 0.99),
                n as f64 / answers,
            )
        })
        .collect()
}

fn main() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let dir = runtime.block_on(run());
    // The appviews' server tasks hold the stores: end them before removing their files.
    drop(runtime);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Both parts; returns the directory the stores used.
async fn run() -> std::path::PathBuf {
    let total = env_usize("AGENTNET_BENCH_RECORDS", 200_000);
    let agents_n = env_usize("AGENTNET_BENCH_AGENTS", 2_000);
    let per_pass = env_usize("AGENTNET_BENCH_CALLERS", 100);
    let dir = std::env::temp_dir().join(format!("agentnet-query-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (records, backend) = match std::env::var("AGENTNET_BENCH_CLICKHOUSE_URL") {
        Ok(url) => (
            store::open_server_records(&store::server::ServerConfig {
                url: url.clone(),
                user: std::env::var("AGENTNET_BENCH_CLICKHOUSE_USER").unwrap_or_default(),
                password: String::new(),
                database: String::new(),
            })
            .expect("ClickHouse server"),
            format!("ClickHouse server {url}"),
        ),
        Err(_) => {
            let lib = std::env::var("AGENTNET_CHDB_LIB").expect(
                "AGENTNET_CHDB_LIB must name libchdb.so: AGENTNET_CHDB_LIB=$(infra/chdb/setup.sh)",
            );
            (
                store::open_embedded_records(std::path::Path::new(&lib), &dir).expect("chDB"),
                "embedded chDB".to_string(),
            )
        }
    };
    let keys: Vec<(String, Keypair)> = (0..agents_n)
        .map(|i| (common::plc_did(i + 1), Keypair::generate(Algorithm::P256)))
        .collect();
    let agents: Vec<String> = keys.iter().map(|(d, _)| d.clone()).collect();

    let started = Instant::now();
    let have = records
        .counts()
        .map(|c| c.iter().map(|(_, _, n)| *n as usize).sum())
        .unwrap_or(0);
    if have < total {
        // Fill up to `total` distinct records (a server keeps what an earlier run wrote).
        let batch = 10_000;
        let mut i = have;
        while i < total {
            let end = (i + batch).min(total);
            let changes: Vec<Change> = (i..end)
                .map(|j| Change::Upsert(Box::new(record(j, &agents))))
                .collect();
            records.apply(&changes, 1).expect("write");
            i = end;
        }
    }
    println!(
        "{backend}: {total} records ({} written in {:.1} s), {agents_n} agents",
        total.saturating_sub(have),
        started.elapsed().as_secs_f64()
    );

    // Callers not asked before in each pass; the PLC directory knows them all.
    let (plc_url, _) = common::plc(keys.iter().map(|(d, k)| (d.clone(), k)).collect()).await;
    let limits = Limits {
        per_ip: 1_000_000,
        per_did: 1_000_000,
        issuer_lookups: 1_000_000,
        ..Limits::default()
    };
    let port = common::appview(&records, &plc_url, limits).await;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("client");
    println!("| pass | query | p50 ms | p99 ms | items per answer |");
    println!("| --- | --- | ---: | ---: | ---: |");
    for (n, name) in ["cold", "warm"].iter().enumerate() {
        let callers = &keys[n * per_pass..(n + 1) * per_pass];
        for (query, p50, p99, found) in pass(&http, port, callers).await {
            println!("| {name} | {query} | {p50:.1} | {p99:.1} | {found:.1} |");
        }
    }
    recall(&records, &keys, &plc_url, &dir, &http, total).await;
    dir
}

/// The recall part (see the top of the file).
async fn recall(
    records: &store::Records,
    keys: &[(String, Keypair)],
    plc_url: &str,
    dir: &std::path::Path,
    http: &reqwest::Client,
    total: usize,
) {
    let model = std::path::PathBuf::from(
        std::env::var("AGENTNET_MODEL_DIR")
            .unwrap_or_else(|_| "../shared/models/all-minilm-l6-v2".into()),
    );
    if std::env::var_os("ORT_DYLIB_PATH").is_none() || !model.join("tokenizer.json").exists() {
        println!("recall: skipped (set ORT_DYLIB_PATH and AGENTNET_MODEL_DIR)");
        return;
    }
    let n = env_usize("AGENTNET_BENCH_VECTORS", 100_000).min(total);
    let per_pass = env_usize("AGENTNET_BENCH_QUERIES", 100);
    let agents: Vec<String> = keys.iter().map(|(d, _)| d.clone()).collect();
    let mut embedder = Embedder::load(&model, Precision::Int8, None).expect("model");
    let started = Instant::now();
    let texts: Vec<String> = (0..n.min(20_000))
        .map(|i| sentences::varied_sentence(i * 7 + 3))
        .collect();
    let base = embedder.embed(&texts, 256).expect("embed");
    let dimensions = base[0].len();
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut pick = move |n: usize| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % n as u64) as usize
    };
    let edge = EdgeStore::open(&dir.join("vectors"), dimensions).expect("qdrant-edge");
    for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
        let points: Vec<VectorPoint> = chunk
            .iter()
            .map(|&i| {
                let row = record(i, &agents);
                let vector = if i < base.len() {
                    base[i].clone()
                } else {
                    let (x, y) = (&base[pick(base.len())], &base[pick(base.len())]);
                    let w = 0.3 + 0.4 * (pick(1000) as f32 / 1000.0);
                    let v: Vec<f32> = x
                        .iter()
                        .zip(y)
                        .map(|(a, b)| w * a + (1.0 - w) * b)
                        .collect();
                    let norm = v.iter().map(|a| a * a).sum::<f32>().sqrt().max(1e-6);
                    v.into_iter().map(|a| a / norm).collect()
                };
                VectorPoint {
                    created_ms: atproto::syntax::datetime_to_millis(&row.created_at).unwrap_or(0),
                    uri: row.uri,
                    author: row.author,
                    collection: row.collection,
                    visibility: match row.visibility {
                        Visibility::Public => "public",
                        Visibility::Shared => "shared",
                    }
                    .into(),
                    recipients: row.recipients,
                    vector,
                }
            })
            .collect();
        edge.upsert(&points).expect("upsert");
    }
    let filled = started.elapsed().as_secs_f64();
    let t = Instant::now();
    edge.optimize().expect("optimize");
    println!(
        "recall: {n} vectors ({} sentence embeddings) written in {filled:.1} s, HNSW built in {:.1} s",
        base.len(),
        t.elapsed().as_secs_f64()
    );
    let vectors: store::Vectors = std::sync::Arc::new(edge);
    let (batcher, _thread) = store::embed::Batcher::start(embedder, agentnet_appview::QUERY_BATCH);
    let limits = Limits {
        per_ip: 1_000_000,
        per_did: 1_000_000,
        issuer_lookups: 1_000_000,
        ..Limits::default()
    };
    let port =
        common::appview_with_recall(records, Some((batcher, vectors)), plc_url, limits).await;
    println!("| pass | recall p50 ms | p99 ms | hits per answer |");
    println!("| --- | ---: | ---: | ---: |");
    // Callers after those the inbox passes used; query sentences not in the corpus.
    let first_caller = 2 * env_usize("AGENTNET_BENCH_CALLERS", 100);
    for (pass, name) in ["cold", "warm"].iter().enumerate() {
        let mut times = Vec::new();
        let mut hits = 0usize;
        for k in 0..per_pass {
            let q = pass * per_pass + k;
            let (did, key) = &keys[(first_caller + q) % keys.len()];
            let token = common::token(did, key, "agent.memory.recall");
            let text = sentences::varied_sentence(200_000 + q * 131);
            let started = Instant::now();
            let answer = http
                .get(format!("http://127.0.0.1:{port}/xrpc/agent.memory.recall"))
                .query(&[("q", text.as_str()), ("limit", "10")])
                .bearer_auth(token)
                .send()
                .await
                .expect("recall");
            assert!(answer.status().is_success(), "recall: {}", answer.status());
            let body: Value = answer.json().await.expect("json");
            times.push(started.elapsed().as_secs_f64() * 1000.0);
            hits += body["results"].as_array().map_or(0, Vec::len);
        }
        times.sort_by(f64::total_cmp);
        println!(
            "| {name} | {:.1} | {:.1} | {:.1} |",
            quantile(&times, 0.5),
            quantile(&times, 0.99),
            hits as f64 / per_pass as f64
        );
    }
}
