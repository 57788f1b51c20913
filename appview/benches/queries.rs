//! The coordination queries at scale, as agents see them: `getInbox` and `listTasks`
//! through the appview's HTTP endpoint (service-token check, the store query, JSON) over a
//! record index of distinct records with the real mix of kinds and privacy levels: half
//! of what is addressed to someone is shared (sealed for its recipients, readable by the
//! appview), the rest public; private records are never indexed. Each caller asks for its
//! own inbox and tasks, so the caller-as-recipient branch of the visibility rule is what is
//! timed. A cold pass and a warm pass, each on callers not asked before.
//!
//! ```sh
//! AGENTNET_CHDB_LIB=$(infra/chdb/setup.sh) cargo bench -p agentnet-appview --bench queries
//! # another size, or a ClickHouse server instead of embedded chDB:
//! AGENTNET_BENCH_RECORDS=1000000 AGENTNET_BENCH_CLICKHOUSE_URL=http://127.0.0.1:8123 …
//! ```

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use agentnet_appview::Limits;
use atproto::crypto::{Algorithm, Keypair};
use serde_json::{json, Value};
use store::records::{Change, RecordRow, Visibility};

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

/// One pass: each caller asks once for its inbox and once for its tasks.
async fn pass(
    http: &reqwest::Client,
    port: u16,
    callers: &[(String, Keypair)],
) -> [(String, f64, f64, f64); 2] {
    let mut inbox = Vec::new();
    let mut tasks = Vec::new();
    let (mut items, mut listed) = (0usize, 0usize);
    for (did, key) in callers {
        for (method, times) in [
            ("agent.comms.getInbox", &mut inbox),
            ("agent.comms.listTasks", &mut tasks),
        ] {
            let token = common::token(did, key, method);
            let started = Instant::now();
            let answer = http
                .get(format!("http://127.0.0.1:{port}/xrpc/{method}?limit=50"))
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
            times.push(started.elapsed().as_secs_f64() * 1000.0);
            match method {
                "agent.comms.getInbox" => items += body["items"].as_array().map_or(0, Vec::len),
                _ => listed += body["tasks"].as_array().map_or(0, Vec::len),
            }
        }
    }
    let mut out = Vec::new();
    for (name, mut times, found) in [("getInbox", inbox, items), ("listTasks", tasks, listed)] {
        times.sort_by(f64::total_cmp);
        out.push((
            name.to_string(),
            quantile(&times, 0.5),
            quantile(&times, 0.99),
            found as f64 / callers.len() as f64,
        ));
    }
    [out.remove(0), out.remove(0)]
}

#[tokio::main]
async fn main() {
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
    let _ = std::fs::remove_dir_all(&dir);
}
