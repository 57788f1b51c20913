//! The live inbox (`agent.comms.subscribeInbox`) as subscribers see it: agents hold
//! WebSocket subscriptions on a loopback appview over embedded chDB while an in-process
//! writer (the indexer's place in `agentnet up`) applies batches of distinct records, most of
//! them for agents that are not connected, public and shared mixed. Reported: the delay from
//! a batch's write to each item's arrival at its recipient's socket (p50, p99), and items
//! delivered per second, with few and with many subscribers in the same run, each with a
//! cold and a warm pass on different records.
//!
//! `AGENTNET_CHDB_LIB=$(infra/chdb/setup.sh) cargo bench -p agentnet-appview --bench live_inbox`
//! (`LIVE_SUBSCRIBERS=10,400`, `LIVE_BATCHES=40`, `LIVE_BATCH=50` to change the shape).

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agentnet_appview::Limits;
use atproto::crypto::{Algorithm, Keypair};
use futures::StreamExt;
use store::records::{Change, RecordRow, Visibility};

/// Share of records addressed to a connected agent; the rest are for agents that are not.
const FOR_CONNECTED: f64 = 0.2;

fn env_list(name: &str, default: &[usize]) -> Vec<usize> {
    std::env::var(name)
        .ok()
        .map(|v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .filter(|v: &Vec<usize>| !v.is_empty())
        .unwrap_or_else(|| default.to_vec())
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Arrival times by URI, shared by every subscriber's reader.
type Arrivals = Arc<Mutex<HashMap<String, Instant>>>;

struct Pass {
    p50_ms: f64,
    p99_ms: f64,
    delivered: usize,
    expected: usize,
    per_second: f64,
}

fn row(i: u64, author: &str, to: &str, shared: bool) -> RecordRow {
    let rkey = atproto::syntax::Tid::from_u64((1 << 60) + i).to_string();
    let text = format!(
        "Item {i}: please look at ticket {} before the {} sync.",
        i * 7 % 9973,
        ["morning", "noon", "evening"][(i % 3) as usize]
    );
    let record = serde_json::json!({"$type": "agent.comms.message", "sender": author, "recipient": to,
        "content": {"kind": "text", "text": text}, "createdAt": "2026-12-03T08:00:00.000Z"});
    RecordRow {
        uri: format!(
            "at://{author}/{}/{rkey}",
            if shared {
                "agent.envelope.sealed"
            } else {
                "agent.comms.message"
            }
        ),
        cid: "bafyreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy".into(),
        author: author.into(),
        collection: "agent.comms.message".into(),
        rkey: rkey.clone(),
        rev: rkey,
        created_at: "2026-12-03T08:00:00.000Z".into(),
        visibility: if shared {
            Visibility::Shared
        } else {
            Visibility::Public
        },
        recipients: if shared {
            vec![author.into(), to.into()]
        } else {
            vec![]
        },
        sealed: shared.then(|| serde_json::json!({"ciphertext": "…"})),
        record: Some(record),
        text: Some(text),
        indexed_ms: 0,
    }
}

#[allow(clippy::too_many_arguments)]
async fn pass(
    records: &store::Records,
    subscribers: &[String],
    offline: &[String],
    arrivals: &Arrivals,
    batches: usize,
    batch: usize,
    first: u64,
) -> Pass {
    let author = "did:plc:writerwriterwriterwriter";
    let mut written: HashMap<String, Instant> = HashMap::new();
    let mut rng_state = first.wrapping_mul(6364136223846793005).wrapping_add(1);
    let mut next = || {
        rng_state = rng_state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (rng_state >> 33) as usize
    };
    let started = Instant::now();
    let mut i = first;
    for _ in 0..batches {
        let mut changes = Vec::with_capacity(batch);
        let mut addressed = Vec::new();
        for _ in 0..batch {
            let connected = (next() % 1000) as f64 / 1000.0 < FOR_CONNECTED;
            let to = if connected {
                &subscribers[next() % subscribers.len()]
            } else {
                &offline[next() % offline.len()]
            };
            let r = row(i, author, to, next() % 2 == 0);
            if connected {
                addressed.push(r.uri.clone());
            }
            changes.push(Change::Upsert(Box::new(r)));
            i += 1;
        }
        let store = records.clone();
        tokio::task::spawn_blocking(move || store.apply(&changes, now_ms()))
            .await
            .expect("writer")
            .expect("apply");
        let at = Instant::now();
        for uri in addressed {
            written.insert(uri, at);
        }
        // The indexer writes a batch every few tens of milliseconds under load.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Let the last deliveries land (bounded).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got = {
            let a = arrivals.lock().expect("arrivals");
            written.keys().filter(|u| a.contains_key(*u)).count()
        };
        if got == written.len() || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let a = arrivals.lock().expect("arrivals");
    let mut delays: Vec<f64> = written
        .iter()
        .filter_map(|(u, w)| {
            a.get(u)
                .map(|t| t.saturating_duration_since(*w).as_secs_f64() * 1000.0)
        })
        .collect();
    delays.sort_by(|x, y| x.total_cmp(y));
    let pct = |p: f64| {
        delays
            .get(((delays.len() as f64 - 1.0) * p).round() as usize)
            .copied()
            .unwrap_or(f64::NAN)
    };
    Pass {
        p50_ms: pct(0.5),
        p99_ms: pct(0.99),
        delivered: delays.len(),
        expected: written.len(),
        per_second: delays.len() as f64 / elapsed,
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let lib = std::env::var("AGENTNET_CHDB_LIB")
        .expect("AGENTNET_CHDB_LIB must name libchdb.so: AGENTNET_CHDB_LIB=$(infra/chdb/setup.sh)");
    let counts = env_list("LIVE_SUBSCRIBERS", &[10, 400]);
    let batches = env_list("LIVE_BATCHES", &[40])[0];
    let batch = env_list("LIVE_BATCH", &[50])[0];
    let dir = std::env::temp_dir().join(format!("agentnet-live-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let records = store::open_embedded_records(std::path::Path::new(&lib), &dir).expect("chDB");
    let max = counts.iter().copied().max().unwrap_or(1);
    let keys: Vec<(String, Keypair)> = (0..max)
        .map(|i| (common::plc_did(i + 1), Keypair::generate(Algorithm::P256)))
        .collect();
    let offline: Vec<String> = (0..2000).map(|i| common::plc_did(100_000 + i)).collect();
    let (plc_url, _) = common::plc(keys.iter().map(|(d, k)| (d.clone(), k)).collect()).await;
    let limits = Limits {
        max_queries: 16,
        per_ip: 1_000_000,
        per_did: 1_000_000,
        issuer_lookups: 1_000_000,
        max_subscribers: 100_000,
        ..Limits::default()
    };
    let port = common::appview(&records, &plc_url, limits).await;
    println!("live inbox: {batches} batches of {batch} records per pass, {:.0} % for connected agents, public and shared mixed", FOR_CONNECTED * 100.0);
    println!("| subscribers | pass | delivered | p50 ms | p99 ms | items/s |");
    println!("| --- | --- | --- | --- | --- | --- |");
    let mut first = 0u64;
    let mut baseline = None;
    for &n in &counts {
        let arrivals: Arrivals = Arc::default();
        let mut readers = Vec::new();
        for (did, key) in keys.iter().take(n) {
            use tokio_tungstenite::tungstenite::client::IntoClientRequest;
            let token = common::token(did, key, "agent.comms.subscribeInbox");
            let mut request = format!("ws://127.0.0.1:{port}/xrpc/agent.comms.subscribeInbox")
                .into_client_request()
                .expect("request");
            request.headers_mut().insert(
                "authorization",
                format!("Bearer {token}").parse().expect("header"),
            );
            let (mut socket, _) = tokio_tungstenite::connect_async(request)
                .await
                .expect("subscribe");
            let arrivals = arrivals.clone();
            readers.push(tokio::spawn(async move {
                while let Some(Ok(msg)) = socket.next().await {
                    let tokio_tungstenite::tungstenite::Message::Binary(bytes) = msg else {
                        continue;
                    };
                    let Ok(atproto::frame::Frame::Unknown { body, .. }) =
                        atproto::frame::decode_frame(&bytes)
                    else {
                        continue;
                    };
                    let Ok(body) = atproto::data::from_cbor::<atproto::Ipld>(&body) else {
                        continue;
                    };
                    let body = atproto::data::ipld_to_json(&body);
                    if let Some(uri) = body["item"]["uri"].as_str() {
                        arrivals
                            .lock()
                            .expect("arrivals")
                            .insert(uri.to_string(), Instant::now());
                    }
                }
            }));
        }
        // Each socket's first look (and each caller's first DID lookup) happens on connect:
        // let those settle, so that the passes measure delivery.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let dids: Vec<String> = keys.iter().take(n).map(|(d, _)| d.clone()).collect();
        for name in ["cold", "warm"] {
            let p = pass(&records, &dids, &offline, &arrivals, batches, batch, first).await;
            first += (batches * batch) as u64;
            println!(
                "| {n} | {name} | {}/{} | {:.0} | {:.0} | {:.0} |",
                p.delivered, p.expected, p.p50_ms, p.p99_ms, p.per_second
            );
            if name == "warm" && baseline.is_none() {
                baseline = Some(p.p50_ms);
            } else if name == "warm" {
                println!(
                    "  warm p50 with {n} subscribers: {:.2}x the first count's",
                    p.p50_ms / baseline.unwrap_or(f64::NAN)
                );
            }
        }
        for r in readers {
            r.abort();
        }
        // The sockets close; give the appview a moment to let them go.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let _ = std::fs::remove_dir_all(&dir);
}
