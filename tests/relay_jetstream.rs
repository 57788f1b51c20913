//! The relay's Jetstream-compatible JSON stream (`/subscribe`) against the in-process fleet:
//! the same events as the CBOR firehose, time cursors, filters in the query and changed
//! by `options_update`, `requireHello`, `maxMessageSizeBytes`, zstd with Jetstream's
//! dictionary, and bad requests refused.

mod inproc;

use std::time::Duration;

use atproto::frame::Frame;
use futures::{SinkExt, StreamExt};
use inproc::{frames, http, published, start_relay, wait_for, FleetHandle, RelayHandle};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

fn url(relay: &RelayHandle, query: &str) -> String {
    format!("ws://127.0.0.1:{}/subscribe{query}", relay.port)
}

async fn connect(url: &str) -> Socket {
    tokio_tungstenite::connect_async(url)
        .await
        .expect("subscribe")
        .0
}

/// What arrives until `n` events came or the stream was quiet for `idle`: text messages
/// parsed as JSON (a binary message fails the test, as does JSON that does not parse).
async fn events(ws: &mut Socket, n: usize, idle: Duration) -> Vec<Value> {
    let mut out = Vec::new();
    while out.len() < n {
        match tokio::time::timeout(idle, ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => {
                out.push(serde_json::from_str(&t).expect("every message is JSON"))
            }
            Ok(Some(Ok(Message::Binary(_)))) => {
                panic!("a binary message on an uncompressed stream")
            }
            Ok(Some(Ok(_))) => {}
            _ => break,
        }
    }
    out
}

/// The (did, operation, collection/rkey) of every commit event, in order.
fn ops(events: &[Value]) -> Vec<(String, String, String)> {
    events
        .iter()
        .filter(|e| e["kind"] == "commit")
        .map(|e| {
            let c = &e["commit"];
            (
                e["did"].as_str().expect("did").to_string(),
                c["operation"].as_str().expect("operation").to_string(),
                format!(
                    "{}/{}",
                    c["collection"].as_str().expect("collection"),
                    c["rkey"].as_str().expect("rkey")
                ),
            )
        })
        .collect()
}

/// The same from the CBOR firehose's frames.
fn firehose_ops(frames: &[Frame]) -> Vec<(String, String, String)> {
    frames
        .iter()
        .filter_map(|f| match f {
            Frame::Commit(c) => Some(c),
            _ => None,
        })
        .flat_map(|c| {
            c.ops
                .iter()
                .map(|op| (c.repo.clone(), op.action.clone(), op.path.clone()))
        })
        .collect()
}

async fn setup(name: &str) -> (FleetHandle, RelayHandle, std::path::PathBuf, Vec<String>) {
    let fleet = FleetHandle::start(3, false).await;
    let (relay, data) = start_relay(&[&fleet], name, &[]).await;
    fleet.fleet.genesis().await.expect("genesis");
    for i in 0..12 {
        fleet.fleet.write_one(i % 3).await.expect("write");
    }
    // 3 × (#identity, #account, genesis) + 12 commits.
    published(&relay, 21.0).await;
    let dids = fleet.fleet.dids().await;
    (fleet, relay, data, dids)
}

async fn teardown(relay: RelayHandle, mut fleet: FleetHandle, data: &std::path::Path) {
    relay.stop().await;
    fleet.stop().await;
    let _ = std::fs::remove_dir_all(data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_json_stream_replays_by_time_and_matches_the_firehose() {
    let (fleet, relay, data, dids) = setup("jetstream-replay").await;
    let cbor = frames(&relay.ws("?cursor=0"), 21, Duration::from_secs(5)).await;
    let mut ws = connect(&url(&relay, "?cursor=0")).await;
    let all = events(&mut ws, usize::MAX, Duration::from_secs(2)).await;

    // Every op of every commit, in the firehose's order, with identity and account events.
    assert_eq!(ops(&all), firehose_ops(&cbor));
    for did in dids.iter().take(3) {
        for kind in ["identity", "account"] {
            assert!(
                all.iter()
                    .any(|e| e["kind"] == kind && e["did"] == **did && e[kind]["did"] == **did),
                "{kind} event of {did}"
            );
        }
    }
    // Creates carry the record and its CID (the record's JSON encodes back to that CID).
    for e in all.iter().filter(|e| e["commit"]["operation"] == "create") {
        let c = &e["commit"];
        let bytes = atproto::data::to_cbor(
            &atproto::data::json_to_ipld(&c["record"]).expect("the record is atproto data"),
        )
        .expect("encodes");
        assert_eq!(
            atproto::data::cid_for_cbor(&bytes).to_string(),
            c["cid"].as_str().expect("cid"),
            "{e}"
        );
        assert_eq!(c["record"]["$type"], c["collection"]);
    }
    // Times never go back, and are wall-clock microseconds.
    let times: Vec<u64> = all
        .iter()
        .map(|e| e["time_us"].as_u64().expect("time_us"))
        .collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
    let now_us = atproto::syntax::now_millis() as u64 * 1000;
    assert!(times.iter().all(|t| now_us - t < 600_000_000), "{times:?}");

    // A cursor from the middle replays from the first event at that time, inclusive.
    let cursor = times[times.len() / 2];
    let mut ws = connect(&url(&relay, &format!("?cursor={cursor}"))).await;
    let tail = events(&mut ws, usize::MAX, Duration::from_secs(2)).await;
    let from = times.iter().position(|t| *t >= cursor).expect("in range");
    assert_eq!(tail, all[from..], "the log from the cursor on");

    // A cursor past the newest event follows live: nothing old, then what comes next.
    let future = now_us + 3_600_000_000;
    let mut ws = connect(&url(&relay, &format!("?cursor={future}"))).await;
    assert!(events(&mut ws, 1, Duration::from_millis(500))
        .await
        .is_empty());
    fleet.fleet.write_one(0).await.expect("write");
    let live = events(&mut ws, 1, Duration::from_secs(5)).await;
    assert_eq!(live.len(), 1, "the new commit, live");
    assert_eq!(live[0]["did"], *dids[0]);
    assert!(live[0]["time_us"].as_u64().expect("time") > *times.last().expect("times"));

    teardown(relay, fleet, &data).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_options_updates_hello_and_size_limits() {
    let (fleet, relay, data, dids) = setup("jetstream-filters").await;
    let mut ws = connect(&url(&relay, "?cursor=0")).await;
    let all = events(&mut ws, usize::MAX, Duration::from_secs(2)).await;
    let of =
        |did: &str| -> Vec<Value> { all.iter().filter(|e| e["did"] == did).cloned().collect() };

    // wantedDids: every event of that account, nothing of the others.
    let mut ws = connect(&url(&relay, &format!("?cursor=0&wantedDids={}", dids[1]))).await;
    assert_eq!(
        events(&mut ws, usize::MAX, Duration::from_secs(2)).await,
        of(&dids[1])
    );

    // wantedCollections filters commits only: a prefix nobody writes leaves the identity
    // and account events; the prefix of what the fleet writes takes every commit too.
    let mut ws = connect(&url(&relay, "?cursor=0&wantedCollections=app.bsky.*")).await;
    let none = events(&mut ws, usize::MAX, Duration::from_secs(2)).await;
    assert!(none.iter().all(|e| e["kind"] != "commit"), "{none:?}");
    assert_eq!(
        none.len(),
        all.iter().filter(|e| e["kind"] != "commit").count()
    );
    let mut ws = connect(&url(&relay, "?cursor=0&wantedCollections=agent.*")).await;
    assert_eq!(
        events(&mut ws, usize::MAX, Duration::from_secs(2)).await,
        all
    );

    // maxMessageSizeBytes: larger messages are skipped, the rest arrive.
    let sizes: Vec<usize> = all.iter().map(|e| e.to_string().len()).collect();
    let limit = sizes.iter().copied().min().expect("events") + 1;
    let mut ws = connect(&url(
        &relay,
        &format!("?cursor=0&maxMessageSizeBytes={limit}"),
    ))
    .await;
    let small = events(&mut ws, usize::MAX, Duration::from_secs(2)).await;
    assert!(
        !small.is_empty() && small.len() < all.len(),
        "{} of {}",
        small.len(),
        all.len()
    );
    assert!(small.iter().all(|e| e.to_string().len() <= limit));

    // requireHello: nothing until the first options_update, which sets the filters.
    let mut ws = connect(&url(&relay, "?cursor=0&requireHello=true")).await;
    assert!(events(&mut ws, 1, Duration::from_millis(700))
        .await
        .is_empty());
    let hello = json!({"type": "options_update", "payload": {"wantedDids": [dids[2]]}});
    ws.send(Message::text(hello.to_string()))
        .await
        .expect("hello");
    assert_eq!(
        events(&mut ws, usize::MAX, Duration::from_secs(2)).await,
        of(&dids[2])
    );

    // An options_update while live replaces the filters; leaving a filter out clears it.
    let mut ws = connect(&url(&relay, &format!("?wantedDids={}", dids[0]))).await;
    let update = json!({"type": "options_update", "payload": {"wantedDids": [dids[1]]}});
    ws.send(Message::text(update.to_string()))
        .await
        .expect("update");
    // The update is read within a second of being sent, even while events flow.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    fleet.fleet.write_one(0).await.expect("write");
    fleet.fleet.write_one(1).await.expect("write");
    let live = events(&mut ws, usize::MAX, Duration::from_secs(2)).await;
    assert!(
        !live.is_empty() && live.iter().all(|e| e["did"] == *dids[1]),
        "{live:?}"
    );
    let clear = json!({"type": "options_update", "payload": {}});
    ws.send(Message::text(clear.to_string()))
        .await
        .expect("update");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    fleet.fleet.write_one(0).await.expect("write");
    fleet.fleet.write_one(2).await.expect("write");
    let live = events(&mut ws, 2, Duration::from_secs(5)).await;
    let from: Vec<&str> = live
        .iter()
        .map(|e| e["did"].as_str().expect("did"))
        .collect();
    assert_eq!(from, [dids[0].as_str(), dids[2].as_str()]);

    // An options_update that does not parse closes the stream with the reason.
    let mut ws = connect(&url(&relay, "")).await;
    ws.send(Message::text("{not json")).await.expect("send");
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(Ok(msg)) = ws.next().await {
            if let Message::Close(frame) = msg {
                return frame.map(|f| f.reason.to_string());
            }
        }
        None
    })
    .await
    .expect("the relay closes the stream");
    assert!(
        closed.is_some_and(|r| r.contains("unmarshal")),
        "close reason"
    );

    // Bad query parameters are refused before the upgrade, with the reason.
    for query in [
        "?cursor=yesterday",
        "?wantedCollections=not..an.nsid",
        "?wantedDids=alice",
    ] {
        let (status, body) = http(relay.port, "GET", &format!("/subscribe{query}"), &[], "")
            .await
            .expect("answer");
        assert_eq!(status, 400, "{query}: {body}");
        assert!(!body.is_empty());
    }

    teardown(relay, fleet, &data).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_streams_are_zstd_with_jetstreams_dictionary() {
    let (fleet, relay, data, _) = setup("jetstream-zstd").await;
    let mut ws = connect(&url(&relay, "?cursor=0")).await;
    let plain = events(&mut ws, usize::MAX, Duration::from_secs(2)).await;
    let dictionary = agentnet_relay::jetstream::ZSTD_DICTIONARY;

    // By query and by header: binary zstd frames that open with the dictionary to the
    // same events, replayed and then live (the hub compresses for live subscribers).
    let header = {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut req = url(&relay, "?cursor=0")
            .into_client_request()
            .expect("request");
        req.headers_mut()
            .insert("Socket-Encoding", "zstd".parse().expect("header"));
        req
    };
    let by_query = connect(&url(&relay, "?cursor=0&compress=true")).await;
    let by_header = tokio_tungstenite::connect_async(header)
        .await
        .expect("subscribe")
        .0;
    for mut ws in [by_query, by_header] {
        let mut d = zstd::bulk::Decompressor::with_dictionary(dictionary).expect("decompressor");
        let mut got = Vec::new();
        let mut live_sent = false;
        while got.len() < plain.len() + 1 {
            if got.len() == plain.len() && !live_sent {
                fleet.fleet.write_one(1).await.expect("write");
                live_sent = true;
            }
            let msg = tokio::time::timeout(Duration::from_secs(5), ws.next())
                .await
                .expect("events arrive")
                .expect("open")
                .expect("frame");
            let Message::Binary(z) = msg else {
                assert!(!msg.is_text(), "text on a compressed stream");
                continue;
            };
            let json = d
                .decompress(&z, 1 << 20)
                .expect("opens with the dictionary");
            got.push(serde_json::from_slice::<Value>(&json).expect("JSON"));
        }
        assert_eq!(got[..plain.len()], plain[..]);
        assert_eq!(got[plain.len()]["kind"], "commit", "the live commit");
    }
    wait_for("subscribers to leave", async || {
        relay.metric("relay_subscribers").await <= 1.0
    })
    .await;
    teardown(relay, fleet, &data).await;
}
