//! The relay's serving contract: cursor rules, the replay/live seam, filters, slow
//! consumers, the sync XRPC endpoints, host management, Cloudflare-style hosts, and
//! reconnecting to a host that restarts.

mod inproc;

use std::time::Duration;

use atproto::frame::Frame;
use futures::StreamExt;
use inproc::{frames, http, http_get, relay_args, tempdir, wait_for, FleetHandle, RelayHandle};

async fn setup(
    name: &str,
    accounts: usize,
    extra: &[&str],
) -> (FleetHandle, RelayHandle, std::path::PathBuf) {
    let fleet = FleetHandle::start(accounts, false).await;
    let data = tempdir(name);
    let mut args = relay_args(&data, &fleet.fleet);
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let relay = RelayHandle::start(&args).await;
    // Attached at the host, not only connected: a live-tail subscriber misses what the
    // host emits before it attaches, and this host's genesis is emitted only once.
    wait_for("the relay to subscribe", async || {
        fleet.fleet.subscribers() >= 1
    })
    .await;
    fleet.fleet.genesis().await.expect("genesis");
    (fleet, relay, data)
}

async fn teardown(relay: RelayHandle, mut fleet: FleetHandle, data: &std::path::Path) {
    relay.stop().await;
    fleet.stop().await;
    let _ = std::fs::remove_dir_all(data);
}

async fn published(relay: &RelayHandle, at_least: f64) {
    wait_for(&format!("{at_least} events out"), async || {
        relay.metric("relay_events_out_total").await >= at_least
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cursor_rules_and_seamless_replay() {
    let (fleet, relay, data) = setup("cursor", 4, &[]).await;
    // 4 accounts × (#identity, #account, genesis commit); the foreign account's events are
    // refused (its DID document names another PDS).
    published(&relay, 12.0).await;
    for i in 0..20 {
        fleet.fleet.write_one(i % 4).await.expect("write");
    }
    published(&relay, 32.0).await;

    // A cursor ahead of the stream: FutureCursor, then the stream closes.
    let f = frames(&relay.ws("?cursor=100000"), 10, Duration::from_secs(5)).await;
    assert!(
        matches!(f.as_slice(), [Frame::Error(e)] if e.error == "FutureCursor"),
        "{f:?}"
    );

    // A cursor in the window: everything after it, in order.
    let f = frames(&relay.ws("?cursor=10"), 22, Duration::from_secs(5)).await;
    let seqs: Vec<i64> = f.iter().filter_map(Frame::seq).collect();
    assert_eq!(seqs, (11..=32).collect::<Vec<_>>());

    // Replay then live with writes landing during the replay: no gap, no duplicate.
    let writer = fleet.fleet.clone();
    let writes = tokio::spawn(async move {
        for i in 0..200 {
            writer.write_one(i % 4).await.expect("write");
        }
    });
    let f = frames(&relay.ws("?cursor=0"), 232, Duration::from_secs(10)).await;
    writes.await.expect("writer");
    let seqs: Vec<i64> = f.iter().filter_map(Frame::seq).collect();
    assert_eq!(
        seqs,
        (1..=232).collect::<Vec<_>>(),
        "replay joins live at the exact seq"
    );

    // No cursor: live tail only.
    let (mut ws, _) = tokio_tungstenite::connect_async(relay.ws(""))
        .await
        .expect("subscribe");
    fleet.fleet.write_one(0).await.expect("write");
    let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .expect("in time")
        .expect("open")
        .expect("ok");
    assert_eq!(
        atproto::frame::decode_frame(&msg.into_data())
            .expect("frame")
            .seq(),
        Some(233)
    );

    teardown(relay, fleet, &data).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outdated_cursor_starts_at_the_oldest_retained_event() {
    let (fleet, relay, data) = setup(
        "outdated",
        2,
        &["--retention-events", "5", "--retention-interval-secs", "1"],
    )
    .await;
    for i in 0..10 {
        fleet.fleet.write_one(i % 2).await.expect("write");
    }
    published(&relay, 16.0).await;
    wait_for("retention to prune", async || {
        relay.metric("relay_log_events").await == 5.0
    })
    .await;
    let f = frames(&relay.ws("?cursor=1"), 6, Duration::from_secs(5)).await;
    assert!(
        matches!(&f[0], Frame::Info(i) if i.name == "OutdatedCursor"),
        "{:?}",
        f[0]
    );
    let seqs: Vec<i64> = f[1..].iter().filter_map(Frame::seq).collect();
    assert_eq!(seqs, (12..=16).collect::<Vec<_>>());
    teardown(relay, fleet, &data).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_select_frames_without_changing_them() {
    let (fleet, relay, data) = setup("filters", 3, &[]).await;
    let dids = fleet.fleet.dids().await;
    for i in 0..9 {
        fleet.fleet.write_one(i % 3).await.expect("write");
    }
    // 3 × 2 announcements + 3 genesis + 9 commits.
    published(&relay, 18.0).await;
    let all = frames(&relay.ws("?cursor=0"), 18, Duration::from_secs(5)).await;

    let url = relay.ws(&format!(
        "?cursor=0&wantedDids={}",
        dids[1].replace(':', "%3A")
    ));
    let mine = frames(&url, 100, Duration::from_secs(2)).await;
    assert!(!mine.is_empty());
    assert!(mine.iter().all(|f| f.did() == Some(dids[1].as_str())));
    let expected: Vec<&Frame> = all
        .iter()
        .filter(|f| f.did() == Some(dids[1].as_str()))
        .collect();
    assert_eq!(
        mine.iter().collect::<Vec<_>>(),
        expected,
        "same frames, byte-identical content"
    );

    let comms = frames(
        &relay.ws("?cursor=0&wantedCollections=agent.comms.*"),
        100,
        Duration::from_secs(2),
    )
    .await;
    assert_eq!(
        comms
            .iter()
            .filter(|f| matches!(f, Frame::Commit(_)))
            .count(),
        12
    );
    let none = frames(
        &relay.ws("?cursor=0&wantedCollections=agent.memory.note"),
        100,
        Duration::from_secs(2),
    )
    .await;
    assert_eq!(
        none.iter()
            .filter(|f| matches!(f, Frame::Commit(_)))
            .count(),
        0
    );

    let (status, body) = http(
        relay.port,
        "GET",
        "/xrpc/com.atproto.sync.subscribeRepos?wantedDids=nope",
        &[],
        "",
    )
    .await
    .expect("reply");
    assert_eq!(status, 400, "{body}");
    teardown(relay, fleet, &data).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_subscriber_is_dropped_and_nobody_waits() {
    let (fleet, relay, data) = setup(
        "slow",
        2,
        &["--subscriber-send-timeout-secs", "1", "--live-buffer", "64"],
    )
    .await;
    published(&relay, 6.0).await;
    // Connects and never reads.
    let (stalled, _) = tokio_tungstenite::connect_async(relay.ws(""))
        .await
        .expect("subscribe");
    let healthy_url = relay.ws("");
    let healthy = tokio::spawn(async move {
        frames(&healthy_url, 3000, Duration::from_secs(20))
            .await
            .len()
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    for i in 0..3000 {
        fleet.fleet.write_one(i % 2).await.expect("write");
    }
    wait_for("the stalled subscriber to be dropped", async || {
        relay.metric("relay_slow_consumers_total").await >= 1.0
    })
    .await;
    assert_eq!(
        healthy.await.expect("join"),
        3000,
        "the reading subscriber got everything"
    );
    drop(stalled);
    teardown(relay, fleet, &data).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_xrpc_and_host_management() {
    let (fleet, relay, data) = setup("xrpc", 2, &["--admin-token", "s3cret"]).await;
    published(&relay, 6.0).await;
    let dids = fleet.fleet.dids().await;

    let repos: serde_json::Value = serde_json::from_str(
        &http_get(relay.port, "/xrpc/com.atproto.sync.listRepos?limit=1")
            .await
            .expect("listRepos"),
    )
    .expect("json");
    assert_eq!(repos["repos"].as_array().expect("repos").len(), 1);
    let next = repos["cursor"].as_str().expect("cursor with a full page");
    let page2: serde_json::Value = serde_json::from_str(
        &http_get(
            relay.port,
            &format!("/xrpc/com.atproto.sync.listRepos?limit=10&cursor={next}"),
        )
        .await
        .expect("page 2"),
    )
    .expect("json");
    assert_eq!(
        page2["repos"].as_array().expect("repos").len(),
        1,
        "the two regular accounts; the foreign one's announcements were refused"
    );

    let latest: serde_json::Value = serde_json::from_str(
        &http_get(
            relay.port,
            &format!("/xrpc/com.atproto.sync.getLatestCommit?did={}", dids[0]),
        )
        .await
        .expect("getLatestCommit"),
    )
    .expect("json");
    assert!(
        latest["rev"].is_string() && latest["cid"].is_string(),
        "{latest}"
    );
    let (status, body) = http(
        relay.port,
        "GET",
        "/xrpc/com.atproto.sync.getRepoStatus?did=did:plc:aaaaaaaaaaaaaaaaaaaaaaaa",
        &[],
        "",
    )
    .await
    .expect("reply");
    assert_eq!(status, 404);
    assert!(body.contains("RepoNotFound"), "{body}");
    let (status, _) = http(
        relay.port,
        "GET",
        &format!("/xrpc/com.atproto.sync.getRepo?did={}", dids[0]),
        &[],
        "",
    )
    .await
    .expect("reply");
    assert_eq!(status, 307, "getRepo redirects to the PDS");

    let by_collection: serde_json::Value = serde_json::from_str(
        &http_get(
            relay.port,
            "/xrpc/com.atproto.sync.listReposByCollection?collection=agent.comms.message",
        )
        .await
        .expect("listReposByCollection"),
    )
    .expect("json");
    let mut listed: Vec<&str> = by_collection["repos"]
        .as_array()
        .expect("repos")
        .iter()
        .filter_map(|r| r["did"].as_str())
        .collect();
    listed.sort();
    let mut regular: Vec<&str> = dids[..2].iter().map(String::as_str).collect();
    regular.sort();
    assert_eq!(
        listed, regular,
        "the repos holding agent.comms.message records"
    );
    let none = http_get(
        relay.port,
        "/xrpc/com.atproto.sync.listReposByCollection?collection=agent.memory.note",
    )
    .await
    .expect("listReposByCollection");
    assert!(none.contains("\"repos\":[]"), "{none}");

    let hosts = http_get(relay.port, "/xrpc/com.atproto.sync.listHosts")
        .await
        .expect("listHosts");
    assert!(hosts.contains(fleet.fleet.url()), "{hosts}");
    let status = http_get(
        relay.port,
        &format!(
            "/xrpc/com.atproto.sync.getHostStatus?hostname={}",
            fleet.fleet.url()
        ),
    )
    .await
    .expect("getHostStatus");
    assert!(status.contains("\"seq\""), "{status}");
    // When the host's newest event arrived, and how far behind the host's own clock.
    let status: serde_json::Value = serde_json::from_str(&status).expect("json");
    let lag = status["lagSeconds"].as_f64().expect("lagSeconds");
    assert!((0.0..30.0).contains(&lag), "{status}");
    let at =
        atproto::syntax::datetime_to_millis(status["lastEventAt"].as_str().expect("lastEventAt"))
            .expect("a datetime");
    assert!(
        (atproto::syntax::now_millis() - at).abs() < 120_000,
        "{status}"
    );
    assert!(
        relay.metric("relay_host_lag_seconds_count").await >= 1.0,
        "every event's lag is in the histogram"
    );

    // requestCrawl: a hostname becomes https on the default port, and the host must
    // answer describeServer before it is taken (this one cannot be reached from here).
    let (status, body) = http(
        relay.port,
        "POST",
        "/xrpc/com.atproto.sync.requestCrawl",
        &[("content-type", "application/json")],
        r#"{"hostname":"pds.example.com"}"#,
    )
    .await
    .expect("reply");
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("HostNotReachable"), "{body}");
    // Admin: bearer token required.
    let body = r#"{"url":"http://127.0.0.1:9"}"#;
    let (status, _) = http(
        relay.port,
        "POST",
        "/admin/hosts",
        &[("content-type", "application/json")],
        body,
    )
    .await
    .expect("reply");
    assert_eq!(status, 401);
    let (status, _) = http(
        relay.port,
        "POST",
        "/admin/hosts",
        &[
            ("content-type", "application/json"),
            ("authorization", "Bearer s3cret"),
        ],
        body,
    )
    .await
    .expect("reply");
    assert_eq!(status, 200);
    wait_for("the added host to be listed", async || {
        http_get(relay.port, "/xrpc/com.atproto.sync.listHosts")
            .await
            .unwrap_or_default()
            .contains("127.0.0.1:9")
    })
    .await;
    teardown(relay, fleet, &data).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_limits_apply_and_change_without_restart() {
    let fleet = FleetHandle::start(4, false).await;
    let data = tempdir("limits");
    let mut args = relay_args(&data, &fleet.fleet);
    let at = args
        .iter()
        .position(|a| a == "--host-accounts")
        .expect("flag")
        + 1;
    args[at] = "2".into();
    args.extend(["--admin-token".to_string(), "t0ken".to_string()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let relay = RelayHandle::start(&args).await;
    // Attached at the host, not only connected: a live-tail subscriber misses what the
    // host emits before it attaches, and this host's genesis is emitted only once.
    wait_for("the relay to subscribe", async || {
        fleet.fleet.subscribers() >= 1
    })
    .await;
    fleet.fleet.genesis().await.expect("genesis");
    // Two of the four regular accounts fit; the other two (and the foreign one) do not.
    let series = "relay_events_dropped_total{reason=\"account_limit\"}";
    wait_for("new accounts over the limit to be refused", async || {
        relay.metric(series).await >= 2.0
    })
    .await;
    let url = format!(
        "/xrpc/com.atproto.sync.getHostStatus?hostname={}",
        fleet.fleet.url()
    );
    let status: serde_json::Value =
        serde_json::from_str(&http_get(relay.port, &url).await.expect("status")).expect("json");
    assert_eq!(status["accountCount"], 2);
    assert_eq!(status["limits"]["accounts"], 2);

    let body = format!(
        r#"{{"url":"{}","accounts":10,"perSecond":500}}"#,
        fleet.fleet.url()
    );
    let auth = [
        ("content-type", "application/json"),
        ("authorization", "Bearer t0ken"),
    ];
    let (code, reply) = http(relay.port, "POST", "/admin/hosts/limits", &auth, &body)
        .await
        .expect("reply");
    assert_eq!(code, 200, "{reply}");
    let before = relay.metric("relay_events_out_total").await;
    for i in 0..4 {
        fleet.fleet.write_one(i).await.expect("write");
    }
    wait_for("all four accounts to be accepted", async || {
        relay.metric("relay_events_out_total").await >= before + 4.0
    })
    .await;
    let status: serde_json::Value =
        serde_json::from_str(&http_get(relay.port, &url).await.expect("status")).expect("json");
    assert_eq!(status["accountCount"], 4);
    assert_eq!(status["limits"]["perSecond"], 500);
    teardown(relay, fleet, &data).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloudflare_style_host_without_prev_data() {
    let fleet = FleetHandle::start(1, true).await;
    let data = tempdir("cloudflare");
    let args = relay_args(&data, &fleet.fleet);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let relay = RelayHandle::start(&args).await;
    // Attached at the host, not only connected: a live-tail subscriber misses what the
    // host emits before it attaches, and this host's genesis is emitted only once.
    wait_for("the relay to subscribe", async || {
        fleet.fleet.subscribers() >= 1
    })
    .await;
    fleet.fleet.genesis().await.expect("genesis");
    for _ in 0..20 {
        fleet.fleet.write_one(0).await.expect("write");
    }
    // did:web account, no #identity/#account at boot, commits without prevData: every
    // commit is still verified (continuity from inversion against the stored root).
    published(&relay, 21.0).await;
    let f = frames(&relay.ws("?cursor=0"), 21, Duration::from_secs(5)).await;
    assert!(f.iter().all(
        |f| matches!(f, Frame::Commit(c) if c.prev_data.is_none() && c.repo.starts_with("did:web:"))
    ));
    assert_eq!(relay.metric("relay_resyncs_total").await, 0.0);
    teardown(relay, fleet, &data).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_restart_reconnects_and_resumes() {
    let (mut fleet, relay, data) = setup("restart", 2, &[]).await;
    published(&relay, 6.0).await;
    fleet.stop().await;
    // Written while the host is down: served from its log once it is back.
    for i in 0..10 {
        fleet.fleet.write_one(i % 2).await.expect("write");
    }
    let fleet = FleetHandle::serve(fleet.fleet.clone(), fleet.addr).await;
    for i in 0..10 {
        fleet.fleet.write_one(i % 2).await.expect("write");
    }
    published(&relay, 26.0).await;
    assert!(relay.metric("relay_upstream_connects_total").await >= 2.0);
    let f = frames(&relay.ws("?cursor=0"), 26, Duration::from_secs(5)).await;
    assert_eq!(
        f.iter().filter_map(Frame::seq).collect::<Vec<_>>(),
        (1..=26).collect::<Vec<_>>()
    );
    teardown(relay, fleet, &data).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_are_seeded_from_another_relays_list() {
    let (mut fleet, first, data) = setup("seed-a", 2, &[]).await;
    published(&first, 6.0).await;
    let data_b = tempdir("seed-b");
    let seed = format!("http://127.0.0.1:{}", first.port);
    let plc = fleet.fleet.plc_url();
    let second = RelayHandle::start(&[
        "--dev",
        "--data-dir",
        data_b.to_str().expect("utf-8"),
        "--plc-url",
        &plc,
        "--seed-relay",
        &seed,
    ])
    .await;
    wait_for("the seeded host to be crawled", async || {
        second.metric("relay_upstream_connects_total").await >= 1.0
    })
    .await;
    for i in 0..4 {
        fleet.fleet.write_one(i % 2).await.expect("write");
    }
    wait_for("events through the seeded host", async || {
        second.metric("relay_events_out_total").await >= 4.0
    })
    .await;
    let hosts = http_get(second.port, "/xrpc/com.atproto.sync.listHosts")
        .await
        .expect("listHosts");
    assert!(hosts.contains(fleet.fleet.url()), "{hosts}");
    second.stop().await;
    first.stop().await;
    fleet.stop().await;
    let _ = std::fs::remove_dir_all(&data);
    let _ = std::fs::remove_dir_all(&data_b);
}
