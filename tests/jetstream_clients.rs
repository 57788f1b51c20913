//! Jetstream clients from npm reading the relay's JSON stream (`/subscribe`) of the
//! reference PDS's commits: the unmodified `@atcute/jetstream` client (it says
//! `requireHello`, sends its filters as an `options_update`, validates every event against
//! Jetstream's shapes and resumes from `time_us` cursors), with and without a collection
//! filter, from a cursor and live; and a plain WebSocket asking for zstd, whose messages
//! Node's own zstd opens with Jetstream's published dictionary.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::{tempdir, Client, Pds, Relay};

/// An `@atcute/jetstream` subscription from `cursor`, wanting `collections` (none: all).
fn atcute(relay: &Relay, cursor: u64, collections: &[&str]) -> Client {
    let mut args = vec![
        "atcute".to_string(),
        format!("http://127.0.0.1:{}", relay.port),
        cursor.to_string(),
    ];
    args.extend(collections.iter().map(|c| c.to_string()));
    Client::script("jetstream-client.mjs", &args)
}

/// A plain WebSocket on `/subscribe?QUERY` with `Socket-Encoding: zstd`.
fn zstd(relay: &Relay, query: &str) -> Client {
    let dictionary = support::root().join("relay/assets/jetstream/legacy_subscribe.zdict");
    let url = format!("ws://127.0.0.1:{}/subscribe{query}", relay.port);
    let args = ["zstd".to_string(), url, dictionary.display().to_string()];
    Client::script("jetstream-client.mjs", &args)
}

/// Events a client prints until `commits` commit events came, then whatever else arrives
/// within `settle` (so that extra events would be seen). A line reporting an error (the
/// client's validation of an event, a failed decompression) fails the test.
fn read(client: &Client, commits: usize, settle: Duration) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut out: Vec<Value> = Vec::new();
    let count = |out: &[Value]| out.iter().filter(|e| e["kind"] == "commit").count();
    while count(&out) < commits {
        let left = deadline
            .checked_duration_since(Instant::now())
            .unwrap_or_default();
        let Some(event) = client.out.next_json(left) else {
            panic!(
                "timed out with {} of {commits} commits: {out:?}",
                count(&out)
            );
        };
        assert!(event.get("error").is_none(), "client reported: {event}");
        out.push(event);
    }
    while let Some(event) = client.out.next_json(settle) {
        assert!(event.get("error").is_none(), "client reported: {event}");
        out.push(event);
    }
    out
}

/// Each account's (operation, collection/rkey) in order.
fn by_did(events: &[Value]) -> BTreeMap<String, Vec<(String, String)>> {
    let mut out: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    for e in events.iter().filter(|e| e["kind"] == "commit") {
        let c = &e["commit"];
        out.entry(e["did"].as_str().expect("did").to_string())
            .or_default()
            .push((
                c["operation"].as_str().expect("operation").to_string(),
                format!(
                    "{}/{}",
                    c["collection"].as_str().expect("collection"),
                    c["rkey"].as_str().expect("rkey")
                ),
            ));
    }
    out
}

fn ops(pds: &mut Pds, rounds: u64) -> Vec<Value> {
    pds.call(json!({"op": "scenario", "rounds": rounds}))["ops"]
        .as_array()
        .expect("ops")
        .clone()
}

#[test]
fn jetstream_clients_read_the_relays_json_stream() {
    let mut pds = Pds::start();
    let dir = tempdir("jetstream-clients");
    let relay = Relay::start(support::free_port(), &dir, &pds);
    pds.call(json!({"op": "accounts", "names": ["alice", "bob"]}));
    let written = ops(&mut pds, 2);
    assert_eq!(written.len(), 16);
    let settle = Duration::from_millis(1500);

    // Everything from the start: every op of every account in order, each create and
    // update with its record, each account's identity and account events, times in order.
    let everything = atcute(&relay, 0, &[]);
    let all = read(&everything, written.len(), settle);
    assert_eq!(by_did(&all), support::ops_by_did(&written));
    for did in support::ops_by_did(&written).keys() {
        for kind in ["identity", "account"] {
            assert!(
                all.iter().any(|e| e["kind"] == kind && e["did"] == **did),
                "{kind} event of {did}: {all:?}"
            );
        }
    }
    for e in all.iter().filter(|e| e["kind"] == "commit") {
        let c = &e["commit"];
        match c["operation"].as_str() {
            Some("create" | "update") => {
                assert_eq!(c["record"]["$type"], c["collection"], "{e}");
                assert!(c["cid"].is_string(), "{e}");
            }
            _ => assert!(c.get("record").is_none() && c.get("cid").is_none(), "{e}"),
        }
    }
    let edited = all
        .iter()
        .filter(|e| e["commit"]["operation"] == "update")
        .all(|e| {
            let text = e["commit"]["record"]["content"]["text"].as_str();
            text.is_some_and(|t| t.ends_with(", edited"))
        });
    assert!(edited, "updates carry the new record");
    let times: Vec<u64> = all
        .iter()
        .map(|e| e["time_us"].as_u64().expect("time_us"))
        .collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");

    // A collection filter (sent in the client's options_update): only those commits.
    let requests = atcute(&relay, 0, &["agent.comms.request"]);
    let wanted = read(&requests, 4, settle);
    let commits: Vec<&Value> = wanted.iter().filter(|e| e["kind"] == "commit").collect();
    assert_eq!(commits.len(), 4, "{wanted:?}");
    assert!(commits
        .iter()
        .all(|e| e["commit"]["collection"] == "agent.comms.request"));

    // From a cursor: the events from the first at or after that time, as before.
    let middle = times[times.len() / 2];
    let from = times.iter().position(|t| *t >= middle).expect("in range");
    let tail_commits = all[from..].iter().filter(|e| e["kind"] == "commit").count();
    let resumed = atcute(&relay, middle, &[]);
    assert_eq!(read(&resumed, tail_commits, settle), all[from..]);

    // Compressed: the same events, each a zstd frame made with Jetstream's dictionary.
    let compressed = zstd(&relay, "?cursor=0");
    assert_eq!(read(&compressed, written.len(), settle), all);

    // Live: the next round reaches every subscriber, filtered as each asked.
    let more = ops(&mut pds, 1);
    let live = read(&everything, more.len(), settle);
    assert_eq!(by_did(&live), support::ops_by_did(&more));
    let live_requests = read(&requests, 2, settle);
    assert!(
        live_requests.len() == 2
            && live_requests
                .iter()
                .all(|e| e["commit"]["collection"] == "agent.comms.request"),
        "{live_requests:?}"
    );
    assert_eq!(read(&compressed, more.len(), settle), live);

    drop(relay);
    let _ = std::fs::remove_dir_all(&dir);
}
