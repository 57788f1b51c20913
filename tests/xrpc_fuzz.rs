//! Random XRPC against a running node (`agentnet up --demo`: relay, indexer and appview on
//! one listener, synthetic agents writing): every endpoint, known and unknown parameters
//! with hostile values (huge, negative, unicode, broken percent-encoding, DIDs with ports,
//! bad cursors), garbage bodies and tokens. No request may get a 5xx other than 501/503,
//! the node must stay healthy and keep relaying, and its memory must stay bounded.
//!
//! `AGENTNET_FUZZ_REQUESTS` sets the count (default 3,000, as CI runs it; RELIABILITY.md
//! has the long run), `AGENTNET_FUZZ_SEED` the seed, and `AGENTNET_FUZZ_AGENTS=0` runs the
//! node without its demo agents (to tell request-driven memory from ingest). Needs
//! `AGENTNET_CHDB_LIB`.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};

struct Node(Child);

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

const ENDPOINTS: &[&str] = &[
    "/xrpc/com.atproto.sync.subscribeRepos",
    "/xrpc/com.atproto.sync.listRepos",
    "/xrpc/com.atproto.sync.getLatestCommit",
    "/xrpc/com.atproto.sync.getRepoStatus",
    "/xrpc/com.atproto.sync.getRepo",
    "/xrpc/com.atproto.sync.listHosts",
    "/xrpc/com.atproto.sync.getHostStatus",
    "/xrpc/com.atproto.sync.listReposByCollection",
    "/xrpc/com.atproto.sync.requestCrawl",
    "/xrpc/agent.comms.getInbox",
    "/xrpc/agent.comms.getThread",
    "/xrpc/agent.comms.listTasks",
    "/xrpc/agent.comms.listHandoffs",
    "/xrpc/agent.comms.listBroadcasts",
    "/xrpc/agent.comms.listAgents",
    "/xrpc/agent.memory.recall",
    "/admin/hosts",
    "/admin/hosts/limits",
    "/admin/hosts/ban",
    "/admin/hosts/reset-cursor",
    "/.well-known/did.json",
    "/metrics",
    "/metrics/indexer",
    "/",
    "/xrpc/no.such.method",
    "/xrpc/",
];

const KEYS: &[&str] = &[
    "did",
    "cursor",
    "limit",
    "collection",
    "hostname",
    "recipient",
    "since",
    "uri",
    "q",
    "author",
    "status",
    "assignee",
    "topic",
    "audience",
    "wantedDids",
    "wantedCollections",
    "session",
    "x",
];

fn value(rng: &mut rand::rngs::StdRng, dids: &[String]) -> String {
    match rng.gen_range(0..16) {
        0 => rng.gen::<i64>().to_string(),
        1 => "-1".into(),
        2 => "99999999999999999999999999".into(),
        3 => "%zz%".into(),
        4 => "%00%0a%ff".into(),
        5 => "did:web:localhost%253A8798".into(),
        6 => "did:plc:".to_string() + &"a".repeat(rng.gen_range(0..40)),
        7 => "at://did:plc:aaaaaaaaaaaaaaaaaaaaaaaa/agent.comms.message/3l3aaaaaaaaa2".into(),
        8 => "2026-12-02T08:00:00.000Z".into(),
        9 => "nope|at://x".into(),
        10 => "%E2%9C%93%F0%9F%A6%80".into(),
        11 => "x".repeat(rng.gen_range(0..8000)),
        12 => "agent.comms.*".into(),
        13 => dids
            .get(rng.gen_range(0..dids.len().max(1)))
            .cloned()
            .unwrap_or_default(),
        14 => "".into(),
        _ => (0..rng.gen_range(1..30))
            .map(|_| {
                let c = rng.gen_range(0x21u8..0x7f);
                if c.is_ascii_alphanumeric() {
                    (c as char).to_string()
                } else {
                    format!("%{c:02X}")
                }
            })
            .collect(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_xrpc_never_breaks_the_node() {
    let chdb = std::env::var("AGENTNET_CHDB_LIB").expect(
        "AGENTNET_CHDB_LIB is not set: run infra/chdb/setup.sh (the README's test command does)",
    );
    let requests: usize = std::env::var("AGENTNET_FUZZ_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3000);
    let seed: u64 = std::env::var("AGENTNET_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(rand::random);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let data = std::env::temp_dir().join(format!("agentnet-xrpc-fuzz-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    let agents = std::env::var("AGENTNET_FUZZ_AGENTS").map_or(true, |v| v != "0");
    let node = Node(
        Command::new(env!("CARGO_BIN_EXE_agentnet"))
            .arg("up")
            .args(if agents {
                &["--demo", "--demo-rate", "20", "--demo-agents", "6"][..]
            } else {
                &[][..]
            })
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .arg("--data-dir")
            .arg(&data)
            .args(["--chdb-lib", &chdb])
            .args([
                "--appview-rate-per-ip",
                "1000000",
                "--appview-rate-per-did",
                "1000000",
            ])
            .env("AGENTNET_LOG", "error")
            .env_remove("AGENTNET_MODEL_DIR")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("agentnet up"),
    );
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let up = client.get(format!("{base}/_health")).send().await;
        if up.is_ok_and(|r| r.status().is_success()) {
            break;
        }
        assert!(Instant::now() < deadline, "the node did not start");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Some real DIDs to aim at, once the demo agents have written.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let dids: Vec<String> = client
        .get(format!("{base}/xrpc/com.atproto.sync.listRepos"))
        .send()
        .await
        .expect("listRepos")
        .json::<serde_json::Value>()
        .await
        .expect("json")["repos"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|r| r["did"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let out_before = events_out(&client, &base).await;
    let rss_start = rss_kib(node.0.id());

    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut by_status: std::collections::BTreeMap<u16, usize> = Default::default();
    let mut bad: Vec<String> = Vec::new();
    for _ in 0..requests {
        let path = ENDPOINTS[rng.gen_range(0..ENDPOINTS.len())];
        let mut query = String::new();
        for i in 0..rng.gen_range(0..5) {
            query.push(if i == 0 { '?' } else { '&' });
            query.push_str(KEYS[rng.gen_range(0..KEYS.len())]);
            query.push('=');
            query.push_str(&value(&mut rng, &dids));
        }
        let url = format!("{base}{path}{query}");
        let post = rng.gen_bool(0.3);
        let mut req = if post {
            let body = match rng.gen_range(0..4) {
                0 => format!(
                    "{{\"hostname\":\"{}\"}}",
                    value(&mut rng, &dids).replace('"', "")
                ),
                1 => "{\"url\": 7}".to_string(),
                2 => "not json".to_string(),
                _ => "{}".to_string(),
            };
            client
                .post(&url)
                .header("content-type", "application/json")
                .body(body)
        } else {
            client.get(&url)
        };
        match rng.gen_range(0..6) {
            0 => req = req.header("authorization", "Bearer eyJhbGciOiJFUzI1NksifQ.e30.c2ln"),
            1 => {
                req = req.header(
                    "authorization",
                    format!("Bearer {}", value(&mut rng, &dids)),
                )
            }
            2 => req = req.header("authorization", "Basic Zm9vOmJhcg=="),
            _ => {}
        }
        let status = match req.send().await {
            Ok(resp) => resp.status().as_u16(),
            Err(e) => {
                bad.push(format!("{url}: no answer: {e}"));
                continue;
            }
        };
        *by_status.entry(status).or_default() += 1;
        if status >= 500 && status != 501 && status != 503 {
            bad.push(format!(
                "{status} for {} {url}",
                if post { "POST" } else { "GET" }
            ));
        }
        if bad.len() >= 10 {
            break;
        }
    }
    let rss_end = rss_kib(node.0.id());
    println!(
        "xrpc fuzz: {requests} requests, seed {seed}, statuses {by_status:?}, RSS {rss_start} → {rss_end} KiB"
    );
    assert!(bad.is_empty(), "{bad:#?}");
    // Still healthy, still relaying.
    let health = client
        .get(format!("{base}/_health"))
        .send()
        .await
        .expect("health");
    assert!(health.status().is_success());
    let deadline = Instant::now() + Duration::from_secs(30);
    while agents && events_out(&client, &base).await <= out_before {
        assert!(Instant::now() < deadline, "the node stopped relaying");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        rss_end < rss_start + 256 * 1024,
        "memory grew from {rss_start} to {rss_end} KiB"
    );
    drop(node);
    let _ = std::fs::remove_dir_all(&data);
}

async fn events_out(client: &reqwest::Client, base: &str) -> f64 {
    let Ok(resp) = client.get(format!("{base}/metrics")).send().await else {
        return 0.0;
    };
    resp.text()
        .await
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("relay_events_out_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}
