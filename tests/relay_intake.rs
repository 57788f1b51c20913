//! Hosts are admitted, not assumed: `requestCrawl` checks, probes and bounds what it takes;
//! the operator bans, unbans, removes and rewinds hosts; a host that goes away is shown
//! offline and taken back when it returns; a host that behaves outgrows its account limit.

mod inproc;

use std::time::Duration;

use inproc::{
    get_json, http, published, relay_args, start_relay, tempdir, wait_for, FleetHandle, RelayHandle,
};

const ADMIN: &str = "Bearer 0p3rator";

async fn crawl(relay: &RelayHandle, hostname: &str) -> (u16, String) {
    http(
        relay.port,
        "POST",
        "/xrpc/com.atproto.sync.requestCrawl",
        &[("content-type", "application/json")],
        &serde_json::json!({ "hostname": hostname }).to_string(),
    )
    .await
    .expect("reply")
}

async fn admin(relay: &RelayHandle, path: &str, body: serde_json::Value) -> (u16, String) {
    http(
        relay.port,
        "POST",
        path,
        &[
            ("content-type", "application/json"),
            ("authorization", ADMIN),
        ],
        &body.to_string(),
    )
    .await
    .expect("reply")
}

fn host_status(url: &str) -> String {
    format!(
        "/xrpc/com.atproto.sync.getHostStatus?hostname={}",
        atproto::net::percent_encode(url)
    )
}

async fn listed(relay: &RelayHandle) -> Vec<serde_json::Value> {
    get_json(relay.port, "/xrpc/com.atproto.sync.listHosts").await["hosts"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_crawl_checks_probes_and_bounds_what_it_takes() {
    let first = FleetHandle::start(1, false).await;
    let second = FleetHandle::start(1, false).await;
    let (relay, data) = start_relay(
        &[&first],
        "intake",
        &["--max-hosts", "2", "--crawl-requests-per-minute", "12"],
    )
    .await;

    for bad in [
        "not a host",
        "-x-.example.com",
        "localhost",
        "10.0.0.1",
        "a..b.com",
    ] {
        let (code, body) = crawl(&relay, bad).await;
        assert_eq!(code, 400, "{bad}: {body}");
        assert!(body.contains("InvalidRequest"), "{bad}: {body}");
    }
    // A name that does not resolve, and a server that is no PDS (the relay itself).
    let (code, body) = crawl(&relay, "pds.invalid").await;
    assert!(code == 400 && body.contains("HostNotReachable"), "{body}");
    let (code, body) = crawl(&relay, &format!("http://127.0.0.1:{}", relay.port)).await;
    assert!(code == 400 && body.contains("HostNotReachable"), "{body}");
    assert_eq!(listed(&relay).await.len(), 1, "nothing refused was stored");

    // A PDS that answers describeServer is taken and crawled.
    let (code, body) = crawl(&relay, second.fleet.url()).await;
    assert_eq!(code, 200, "{body}");
    wait_for("the new host to be crawled", async || {
        second.fleet.subscribers() >= 1
    })
    .await;
    assert_eq!(listed(&relay).await.len(), 2);

    // At the host cap, a third host is refused; asking again for a known one is fine.
    let third = FleetHandle::start(1, false).await;
    let (code, body) = crawl(&relay, third.fleet.url()).await;
    assert!(code == 503 && body.contains("TooManyHosts"), "{body}");
    let (code, _) = crawl(&relay, second.fleet.url()).await;
    assert_eq!(code, 200);

    // Twelve requests a minute (ten made so far): a burst soon gets 429.
    let mut refused = None;
    for _ in 0..5 {
        let (code, body) = crawl(&relay, second.fleet.url()).await;
        if code == 429 {
            refused = Some(body);
            break;
        }
        assert_eq!(code, 200, "{body}");
    }
    let body = refused.expect("a 429 within the burst");
    assert!(body.contains("RateLimitExceeded"), "{body}");
    relay.stop().await;
    let _ = std::fs::remove_dir_all(&data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_bans_rewinds_and_removes_hosts_and_sees_them_go_offline() {
    let mut first = FleetHandle::start(2, false).await;
    // A did:web host of its own (the fleets' did:plc accounts share one directory).
    let mut second = FleetHandle::start(1, true).await;
    let (relay, data) = start_relay(
        &[&first, &second],
        "lifecycle",
        &["--admin-token", "0p3rator"],
    )
    .await;
    first.fleet.genesis().await.expect("genesis");
    second.fleet.genesis().await.expect("genesis");
    // 2 accounts × 3 events (the foreign account's are refused) + the did:web genesis.
    published(&relay, 7.0).await;
    let b = second.fleet.url().to_string();
    // What an operator's dashboard reads: the head of the log, the time to make batches
    // durable, DID resolutions and how long they took.
    assert_eq!(
        relay.metric("relay_head_seq").await,
        relay.metric("relay_events_out_total").await,
        "a fresh log's head is the count published"
    );
    assert!(relay.metric("relay_log_write_seconds_count").await >= 1.0);
    assert!(
        relay.metric("relay_identity_resolve_seconds_count").await >= 3.0,
        "every account's DID was resolved"
    );
    assert!(
        relay
            .metric("relay_identity_resolve_seconds_bucket{le=\"30\"}")
            .await
            >= 3.0,
        "latency buckets reach past one second"
    );

    // Without the token, every admin endpoint says no.
    for path in ["ban", "unban", "remove", "reset-cursor"] {
        let (code, _) = http(
            relay.port,
            "POST",
            &format!("/admin/hosts/{path}"),
            &[
                ("content-type", "application/json"),
                ("authorization", "Bearer guess"),
            ],
            &serde_json::json!({ "url": b }).to_string(),
        )
        .await
        .expect("reply");
        assert_eq!(code, 401, "{path}");
    }

    // Ban: the host is dropped and refused; its status says so, across listHosts too.
    let (code, body) = admin(&relay, "/admin/hosts/ban", serde_json::json!({ "url": b })).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        get_json(relay.port, &host_status(&b)).await["status"],
        "banned"
    );
    assert!(listed(&relay)
        .await
        .iter()
        .any(|h| h["hostname"] == b && h["status"] == "banned"));
    let (code, body) = crawl(&relay, &b).await;
    assert!(code == 403 && body.contains("HostBanned"), "{body}");
    let out = relay.metric("relay_events_out_total").await;
    second.fleet.write_one(0).await.expect("write");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        relay.metric("relay_events_out_total").await,
        out,
        "nothing from a banned host"
    );

    // Unban: crawled again from its cursor, so the commit written meanwhile arrives.
    let (code, _) = admin(
        &relay,
        "/admin/hosts/unban",
        serde_json::json!({ "url": b }),
    )
    .await;
    assert_eq!(code, 200);
    wait_for("the commit written while banned", async || {
        relay.metric("relay_events_out_total").await >= out + 1.0
    })
    .await;
    assert_eq!(
        get_json(relay.port, &host_status(&b)).await["status"],
        "active"
    );

    // Rewind the first host to its start: every event comes again and none is published
    // twice (each is recognised as already in the log).
    let out = relay.metric("relay_events_out_total").await;
    let a = first.fleet.url().to_string();
    let (code, _) = admin(
        &relay,
        "/admin/hosts/reset-cursor",
        serde_json::json!({ "url": a, "cursor": 0 }),
    )
    .await;
    assert_eq!(code, 200);
    wait_for("the first host's six events to be re-read", async || {
        relay.metric("relay_events_redelivered_total").await >= 6.0
    })
    .await;
    first.fleet.write_one(1).await.expect("write");
    wait_for("the next commit", async || {
        relay.metric("relay_events_out_total").await >= out + 1.0
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        relay.metric("relay_events_out_total").await,
        out + 1.0,
        "no duplicates"
    );

    // A host that goes away is shown offline, with why, and retried until it returns.
    second.stop().await;
    wait_for("the host to be shown offline", async || {
        let s = get_json(relay.port, &host_status(&b)).await;
        s["status"] == "offline" && s["lastError"].is_string()
    })
    .await;
    let second = FleetHandle::serve(second.fleet.clone(), second.addr).await;
    wait_for("the relay to resubscribe", async || {
        second.fleet.subscribers() >= 1
    })
    .await;
    let before = relay.metric("relay_events_out_total").await;
    second.fleet.write_one(0).await.expect("write");
    wait_for("the host to be taken back", async || {
        get_json(relay.port, &host_status(&b)).await["status"] == "active"
    })
    .await;
    wait_for("its commit to be published", async || {
        relay.metric("relay_events_out_total").await >= before + 1.0
    })
    .await;

    // Remove: not crawled, not listed.
    let (code, _) = admin(
        &relay,
        "/admin/hosts/remove",
        serde_json::json!({ "url": b }),
    )
    .await;
    assert_eq!(code, 200);
    assert!(!listed(&relay).await.iter().any(|h| h["hostname"] == b));
    // (The crawler lets the host go as soon as it reads the command.)
    tokio::time::sleep(Duration::from_millis(200)).await;
    let out = relay.metric("relay_events_out_total").await;
    second.fleet.write_one(0).await.expect("write");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        relay.metric("relay_events_out_total").await,
        out,
        "nothing from a removed host"
    );
    relay.stop().await;
    first.stop().await;
    let _ = std::fs::remove_dir_all(&data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_that_behaves_outgrows_its_account_limit() {
    let fleet = FleetHandle::start(4, false).await;
    let data = tempdir("growth");
    let mut args = relay_args(&data, &fleet.fleet);
    let at = args
        .iter()
        .position(|a| a == "--host-accounts")
        .expect("flag")
        + 1;
    args[at] = "2".into();
    args.extend(["--host-accounts-growth-secs".to_string(), "3".to_string()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let relay = RelayHandle::start(&args).await;
    wait_for("the relay to subscribe", async || {
        fleet.fleet.subscribers() >= 1
    })
    .await;
    fleet.fleet.genesis().await.expect("genesis");
    // Two accounts fit; the next two are refused, and the foreign account's events fail
    // verification, which restarts the host's clean stretch.
    wait_for("accounts over the limit to be refused", async || {
        relay
            .metric("relay_events_dropped_total{reason=\"account_limit\"}")
            .await
            >= 2.0
    })
    .await;
    let url = host_status(fleet.fleet.url());
    let s = get_json(relay.port, &url).await;
    assert_eq!(s["accountCount"], 2, "{s}");
    assert_eq!(s["accountLimitGrows"], true, "{s}");
    assert!(s["refusedAccounts"].as_u64() >= Some(2), "{s}");

    // After three clean seconds the limit doubles when the host reaches it.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    // (Which two accounts got in first depends on how the shards interleaved.)
    let out = relay.metric("relay_events_out_total").await;
    for i in 0..4 {
        fleet.fleet.write_one(i).await.expect("write");
    }
    wait_for("every account to be taken", async || {
        relay.metric("relay_events_out_total").await >= out + 4.0
    })
    .await;
    let s = get_json(relay.port, &url).await;
    assert_eq!(s["accountCount"], 4, "{s}");
    assert_eq!(s["limits"]["accounts"], 4, "{s}");
    assert_eq!(s["accountLimitRaises"], 1, "{s}");
    relay.stop().await;
    let _ = std::fs::remove_dir_all(&data);
}
