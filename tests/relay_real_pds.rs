//! The relay against the reference PDS, checked by the `@atproto/sync` firehose client:
//! every op arrives, verified, in order; kill -9 and restart lose nothing and duplicate
//! nothing.

mod support;

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::{http_get, ops_by_did, tempdir, Client, Pds, Relay};

/// Reads client lines until every expected op was seen, returning commit lines in order.
fn collect(client: &Client, expected: usize, timeout: Duration) -> Vec<Value> {
    let deadline = Instant::now() + timeout;
    let mut commits = Vec::new();
    while commits.len() < expected {
        let left = deadline
            .checked_duration_since(Instant::now())
            .unwrap_or_default();
        let Some(line) = client.out.next_json(left) else {
            panic!(
                "timed out with {} of {expected} ops: {commits:?}",
                commits.len()
            );
        };
        assert!(
            line.get("error").is_none(),
            "firehose client reported: {line}"
        );
        if line["event"] == "commit" {
            commits.push(line);
        }
    }
    commits
}

/// Each seq once; per account strictly increasing. (The client processes accounts in
/// parallel partitions, so its output interleaves accounts out of global seq order.)
fn assert_seqs_unique_and_increasing(commits: &[Value]) {
    let mut seen = HashSet::new();
    let mut last: BTreeMap<&str, u64> = BTreeMap::new();
    for c in commits {
        let seq = c["seq"].as_u64().expect("seq");
        assert!(seen.insert(seq), "seq {seq} delivered twice");
        let did = c["did"].as_str().expect("did");
        let prev = last.insert(did, seq).unwrap_or(0);
        assert!(seq > prev, "{did}: seq {seq} after {prev}");
    }
}

#[test]
fn relay_verifies_and_republishes_reference_pds_commits() {
    let mut pds = Pds::start();
    let dir = tempdir("relay-real-pds");
    let relay = Relay::start(support::free_port(), &dir, &pds);
    pds.call(json!({"op": "accounts", "names": ["alice", "bob", "carol"]}));
    let client = Client::start(&relay.ws(), &pds.plc, Some(0));
    let expected = pds.call(json!({"op": "scenario", "rounds": 3}))["ops"]
        .as_array()
        .expect("ops")
        .clone();
    assert_eq!(expected.len(), 36);

    let commits = collect(&client, expected.len(), Duration::from_secs(90));
    assert_eq!(
        ops_by_did(&commits),
        ops_by_did(&expected),
        "every op, in order per account"
    );
    assert_seqs_unique_and_increasing(&commits);

    let metrics = http_get(relay.port, "/metrics").expect("metrics");
    assert!(metrics.contains("relay_events_out_total"), "{metrics}");
    let repos: Value = serde_json::from_str(
        &http_get(relay.port, "/xrpc/com.atproto.sync.listRepos").expect("listRepos"),
    )
    .expect("json");
    assert_eq!(repos["repos"].as_array().expect("repos").len(), 3);
}

#[test]
fn kill9_mid_stream_loses_nothing_and_duplicates_nothing() {
    let mut pds = Pds::start();
    let dir = tempdir("relay-kill9");
    let port = support::free_port();
    let mut relay = Relay::start(port, &dir, &pds);
    pds.call(json!({"op": "accounts", "names": ["dora", "eve"]}));
    let client = Client::start(&relay.ws(), &pds.plc, Some(0));

    // Keep the PDS writing while the relay dies and comes back.
    pds.send(json!({"op": "scenario", "rounds": 6}));
    let first = collect(&client, 10, Duration::from_secs(60));
    relay.kill9();
    std::thread::sleep(Duration::from_millis(500));
    let relay = Relay::start(port, &dir, &pds);
    let expected = pds.reply(Duration::from_secs(120))["ops"]
        .as_array()
        .expect("ops")
        .clone();
    assert_eq!(expected.len(), 48);

    let rest = collect(
        &client,
        expected.len() - first.len(),
        Duration::from_secs(120),
    );
    let all: Vec<Value> = first.into_iter().chain(rest).collect();
    assert_seqs_unique_and_increasing(&all);
    assert_eq!(
        ops_by_did(&all),
        ops_by_did(&expected),
        "every op once, in order per account"
    );
    drop(relay);
}
