//! The crash suite: `kill -9` of the relay and of the indexer at random moments while the
//! fleet's agents keep writing (public, shared and private records), again and again. Then:
//! the relay's log has every seq once, from 1 without a gap; every event the fleet's
//! hosts emitted for their accounts is in it exactly once (no repair needed); the index
//! holds exactly what one clean pass over the fleet's commits gives; and no private record
//! is anywhere in it.
//!
//! `AGENTNET_CRASH_ITERATIONS` sets the number of kills (default 10, as CI runs it;
//! RELIABILITY.md has a longer run) and `AGENTNET_CRASH_SEED` the random schedule.
//! Needs `AGENTNET_CHDB_LIB` (the README's test command sets it).

mod inproc;

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use agentnet_fleet::{Fleet, FleetConfig};
use atproto::frame::Frame;
use inproc::{frames, free_port, http_get, tempdir, wait_for, FleetHandle};
use rand::{Rng, SeedableRng};
use store::records::Change;

/// A child `agentnet` process, killed with SIGKILL on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Proc {
    fn kill9(&mut self) {
        self.0.kill().expect("kill -9");
        self.0.wait().expect("reap");
    }
}

fn relay(port: u16, data: &std::path::Path, fleet: &Fleet) -> Proc {
    let child = Command::new(env!("CARGO_BIN_EXE_agentnet"))
        .args(["relay", "--dev", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--data-dir")
        .arg(data)
        .args(["--host", fleet.url(), "--plc-url", &fleet.plc_url()])
        .args(["--host-events-per-second", "100000"])
        .args(["--host-events-per-hour", "100000000"])
        .args(["--host-events-per-day", "100000000"])
        .args(["--host-accounts", "100000"])
        .env("AGENTNET_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("starting agentnet relay");
    Proc(child)
}

fn indexer(relay_port: u16, data: &std::path::Path, chdb: &str, metrics: u16) -> Proc {
    let child = Command::new(env!("CARGO_BIN_EXE_agentnet"))
        .args([
            "indexer",
            "--relay-url",
            &format!("ws://127.0.0.1:{relay_port}"),
        ])
        .arg("--data-dir")
        .arg(data)
        .args(["--chdb-lib", chdb, "--batch", "32", "--batch-wait-ms", "20"])
        .args(["--metrics-listen", &format!("127.0.0.1:{metrics}")])
        // The appview's key, the same on every restart (the indexer makes none of its own).
        .args([
            "--appview-key",
            "AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA=",
        ])
        .env("AGENTNET_LOG", "error")
        .env_remove("AGENTNET_MODEL_DIR")
        .env_remove("AGENTNET_MODEL_NAME")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("starting agentnet indexer");
    Proc(child)
}

async fn healthy(port: u16) {
    wait_for("the relay to answer", async || {
        http_get(port, "/_health").await.is_some()
    })
    .await;
}

/// What identifies an event across the fleet's log and the relay's.
fn identity(f: &Frame) -> Option<(String, String, String)> {
    Some(match f {
        Frame::Commit(c) => (c.repo.clone(), "#commit".into(), c.rev.clone()),
        Frame::Identity(e) => (
            e.did.clone(),
            "#identity".into(),
            format!("{} {}", e.time, e.handle.as_deref().unwrap_or_default()),
        ),
        Frame::Account(e) => (e.did.clone(), "#account".into(), e.time.clone()),
        Frame::Sync(e) => (e.did.clone(), "#sync".into(), e.rev.clone()),
        _ => return None,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_loses_and_duplicates_nothing() {
    let chdb = std::env::var("AGENTNET_CHDB_LIB").expect(
        "AGENTNET_CHDB_LIB is not set: run infra/chdb/setup.sh (the README's test command does)",
    );
    let iterations: usize = std::env::var("AGENTNET_CRASH_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let seed: u64 = std::env::var("AGENTNET_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(rand::random);
    println!("crash suite: {iterations} kills, seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);

    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let fleet = Fleet::new(
        FleetConfig {
            listen: addr,
            accounts: 8,
            rate: 150.0,
            keys: "mix".into(),
            cloudflare: false,
            ops_per_commit: 1,
            traffic: "conversation".into(),
            appview: None,
        },
        addr,
    )
    .expect("fleet");
    let mut host = FleetHandle::serve(fleet.clone(), addr).await;
    let data = tempdir("crash");
    let (relay_dir, index_dir) = (data.join("relay"), data.join("index"));
    let port = free_port();
    let mut relay_proc = relay(port, &relay_dir, &fleet);
    healthy(port).await;
    wait_for("the relay to subscribe", async || fleet.subscribers() >= 1).await;
    let metrics = free_port();
    let mut indexer_proc = indexer(port, &index_dir, &chdb, metrics);
    fleet.genesis().await.expect("genesis");
    let writing = tokio_util::sync::CancellationToken::new();
    let writer = {
        let (fleet, cancel) = (fleet.clone(), writing.clone());
        tokio::spawn(async move { fleet.generate(cancel).await })
    };
    // One account's DID document answers slowly and its identity keeps changing, so an
    // event of it is nearly always in flight on a shard while later events of other
    // accounts are already in the log: each kill then leaves the host's cursor below
    // events the relay has published, which the restarted relay must recognise.
    let slow = fleet.dids().await[0].clone();
    fleet.slow_document(&slow, Duration::from_millis(300));
    let announcer = {
        let (fleet, cancel) = (fleet.clone(), writing.clone());
        tokio::spawn(async move {
            while !cancel.is_cancelled() {
                fleet.announce(0).await;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
    };

    let (mut relay_kills, mut indexer_kills) = (0, 0);
    for _ in 0..iterations {
        tokio::time::sleep(Duration::from_millis(rng.gen_range(150..900))).await;
        if rng.gen_bool(0.6) {
            relay_proc.kill9();
            relay_kills += 1;
            tokio::time::sleep(Duration::from_millis(rng.gen_range(0..300))).await;
            relay_proc = relay(port, &relay_dir, &fleet);
            healthy(port).await;
        } else {
            indexer_proc.kill9();
            indexer_kills += 1;
            tokio::time::sleep(Duration::from_millis(rng.gen_range(0..300))).await;
            indexer_proc = indexer(port, &index_dir, &chdb, metrics);
        }
    }
    writing.cancel();
    writer.await.expect("join").expect("fleet wrote");
    announcer.await.expect("join");

    // The fleet's own log: what its accounts emitted (the foreign account's are refused).
    let emitted: Vec<Frame> = fleet
        .frames()
        .iter()
        .map(|b| atproto::frame::decode_frame(b).expect("fleet frames decode"))
        .collect();
    let foreign = fleet.dids().await.last().cloned().expect("accounts");
    let expected: BTreeSet<(String, String, String)> = emitted
        .iter()
        .filter(|f| f.did() != Some(foreign.as_str()))
        .filter_map(identity)
        .collect();
    assert_eq!(
        expected.len(),
        emitted
            .iter()
            .filter(|f| f.did() != Some(foreign.as_str()))
            .count(),
        "fleet events are distinct"
    );

    // Everything reaches the relay's log, once, with gap-free seqs.
    let ws = format!("ws://127.0.0.1:{port}/xrpc/com.atproto.sync.subscribeRepos?cursor=0");
    let deadline = Instant::now() + Duration::from_secs(60);
    let logged = loop {
        let logged = frames(&ws, expected.len() + 1000, Duration::from_secs(2)).await;
        if logged.len() >= expected.len() || Instant::now() > deadline {
            break logged;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let seqs: Vec<i64> = logged.iter().filter_map(Frame::seq).collect();
    assert_eq!(
        seqs,
        (1..=logged.len() as i64).collect::<Vec<_>>(),
        "seqs from 1, no gap, no duplicate"
    );
    let mut seen: BTreeMap<(String, String, String), usize> = BTreeMap::new();
    for f in &logged {
        if let Some(id) = identity(f) {
            *seen.entry(id).or_default() += 1;
        }
    }
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "published more than once: {twice:?}");
    let missing: Vec<_> = expected
        .iter()
        .filter(|id| !seen.contains_key(*id))
        .collect();
    assert!(
        missing.is_empty(),
        "{} events lost: {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    let extra: Vec<_> = seen.keys().filter(|id| !expected.contains(*id)).collect();
    assert!(
        extra.is_empty(),
        "events the hosts never emitted: {extra:?}"
    );

    // The index catches up to the relay's head and stops cleanly; then it is compared with
    // one clean pass.
    let head = logged.len() as u64;
    wait_for("the index to reach the relay's head", async || {
        http_get(metrics, "/metrics")
            .await
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("indexer_last_seq "))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .is_some_and(|seq| seq >= head)
    })
    .await;
    let status = Command::new("kill")
        .args(["-TERM", &indexer_proc.0.id().to_string()])
        .status()
        .expect("kill -TERM");
    assert!(status.success());
    let exited = indexer_proc.0.wait().expect("the indexer stops");
    assert!(exited.success(), "the indexer stopped cleanly: {exited}");
    relay_proc.kill9();
    host.stop().await;
    let records =
        store::open_embedded_records(std::path::Path::new(&chdb), &index_dir.join("clickhouse"))
            .expect("the indexer's store");
    let source = format!("ws://127.0.0.1:{port}");
    let cursor = records.cursor(&source).expect("cursor").unwrap_or(0);
    assert!(
        cursor <= head,
        "cursor {cursor} past the relay's head {head}"
    );

    let extractor =
        agentnet_indexer::extract::Extractor::new(lexicons::catalog().expect("catalog"), None);
    let mut oracle: BTreeMap<String, Option<String>> = BTreeMap::new();
    let mut private: Vec<String> = Vec::new();
    for f in logged
        .iter()
        .filter(|f| f.seq().is_some_and(|s| s as u64 <= cursor))
    {
        if let Frame::Commit(c) = f {
            let (changes, skipped) = extractor.extract(c);
            for change in changes {
                match change {
                    Change::Upsert(r) => {
                        oracle.insert(r.uri.clone(), Some(r.cid.clone()));
                    }
                    Change::Delete { uri, .. } => {
                        oracle.insert(uri, None);
                    }
                }
            }
            for (path, why) in skipped {
                if why == agentnet_indexer::extract::Skipped::Private {
                    private.push(format!("at://{}/{path}", c.repo));
                }
            }
        }
    }
    let want: BTreeSet<(String, String)> = oracle
        .into_iter()
        .filter_map(|(uri, cid)| cid.map(|c| (uri, c)))
        .collect();
    let have: BTreeSet<(String, String)> =
        records.all_visible().expect("rows").into_iter().collect();
    assert_eq!(have, want, "the index is what one clean pass gives");
    assert!(!private.is_empty(), "the agents wrote private records");
    for uri in &private {
        assert!(
            !records.anywhere(uri).expect("scan"),
            "private record {uri} is in the index"
        );
    }
    println!(
        "crash suite: {relay_kills} relay and {indexer_kills} indexer kills; {} events, each once; {} records indexed up to seq {cursor}; {} private records nowhere",
        expected.len(),
        want.len(),
        private.len()
    );
    let _ = std::fs::remove_dir_all(&data);
}
