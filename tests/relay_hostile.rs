//! Hostile hosts and failing peers against the relay, each on the synthetic fleet (real keys,
//! real commits): a host claiming another host's accounts, a did:web account with a port
//! whose chain breaks, a repair that keeps failing, a DID document that answers slowly,
//! and firehose clients that ping, close, or go silent. Each leaves the rest working with
//! the reason visible.

mod inproc;

use std::time::{Duration, Instant};

use atproto::frame::Frame;
use futures::{SinkExt, StreamExt};
use inproc::{
    frames, get_json, host_status_path, http_full, published, relay_args, start_relay, tempdir,
    wait_for, FleetHandle, RelayHandle,
};
use tokio_tungstenite::tungstenite::Message;

fn status_path(did: &str) -> String {
    format!(
        "/xrpc/com.atproto.sync.getRepoStatus?did={}",
        atproto::net::percent_encode(did)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_cannot_touch_another_hosts_accounts() {
    let mut hostile = FleetHandle::start(2, false).await;
    // The victim: a Cloudflare-style host whose account is did:web with a port.
    let mut victim = FleetHandle::start(1, true).await;
    let (relay, data) = start_relay(&[&hostile, &victim], "hostile", &[]).await;
    hostile.fleet.genesis().await.expect("genesis");
    victim.fleet.genesis().await.expect("genesis");
    let victim_did = victim.fleet.dids().await[0].clone();
    assert!(victim_did.contains("%3A"), "{victim_did}");
    // 2 accounts × 3 from the hostile host (its foreign account's 3 are refused) + 1.
    published(&relay, 7.0).await;
    let wrong_host = "relay_events_dropped_total{reason=\"wrong_host\"}";
    let before = relay.metric(wrong_host).await;

    for kind in [
        "claim_account",
        "claim_identity",
        "claim_sync",
        "claim_commit",
    ] {
        let counted = hostile.fleet.claim(kind, &victim_did).await.expect("claim");
        assert_eq!(counted, "wrong_host");
    }
    wait_for("every claim to be refused", async || {
        relay.metric(wrong_host).await >= before + 4.0
    })
    .await;

    // The victim is untouched: still active, still bound to its own host, still flowing.
    let status = get_json(relay.port, &status_path(&victim_did)).await;
    assert_eq!(status["active"], true, "{status}");
    assert!(status["status"].is_null(), "{status}");
    let out = relay.metric("relay_events_out_total").await;
    for _ in 0..2 {
        victim.fleet.write_one(0).await.expect("write");
    }
    published(&relay, out + 2.0).await;

    // getRepo redirects where the DID document says, with the DID percent-encoded.
    let (code, head, _) = http_full(
        relay.port,
        "GET",
        &format!(
            "/xrpc/com.atproto.sync.getRepo?did={}",
            atproto::net::percent_encode(&victim_did)
        ),
        &[],
        "",
    )
    .await
    .expect("reply");
    assert_eq!(code, 307);
    let location = head
        .lines()
        .find_map(|l| l.strip_prefix("location: "))
        .expect("a location");
    assert_eq!(
        location,
        atproto::net::xrpc_url(
            victim.fleet.url(),
            "com.atproto.sync.getRepo",
            &[("did", &victim_did)]
        )
    );

    // Nothing the hostile host said about the victim was published.
    let n = relay.metric("relay_events_out_total").await as usize;
    let all = frames(&relay.ws("?cursor=0"), n, Duration::from_secs(5)).await;
    let about_victim: Vec<&Frame> = all
        .iter()
        .filter(|f| f.did() == Some(victim_did.as_str()))
        .collect();
    assert_eq!(about_victim.len(), 3, "the victim's own three commits");
    assert!(about_victim.iter().all(|f| matches!(f, Frame::Commit(c)
        if !c.ops.iter().any(|op| op.path.starts_with("agent.memory.note")))));
    relay.stop().await;
    hostile.stop().await;
    victim.stop().await;
    let _ = std::fs::remove_dir_all(&data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_chain_on_a_did_web_host_with_a_port_is_repaired() {
    let mut host = FleetHandle::start(1, true).await;
    let (relay, data) = start_relay(&[&host], "didweb-repair", &[]).await;
    host.fleet.genesis().await.expect("genesis");
    published(&relay, 1.0).await;
    let did = host.fleet.dids().await[0].clone();

    // A commit the host made but never emitted: the next one does not follow on.
    host.fleet.inject("skip_commit").await.expect("inject");
    host.fleet.write_one(0).await.expect("write");
    wait_for("the account to be repaired", async || {
        relay.metric("relay_resyncs_total").await >= 1.0
    })
    .await;
    published(&relay, 2.0).await;
    assert_eq!(host.fleet.get_repo_calls(), 1, "one getRepo, answered");
    host.fleet.write_one(0).await.expect("write");
    published(&relay, 3.0).await;

    let f = frames(&relay.ws("?cursor=0"), 3, Duration::from_secs(5)).await;
    assert!(matches!(&f[0], Frame::Commit(_)));
    assert!(
        matches!(&f[1], Frame::Sync(s) if s.did == did),
        "the repair is published as #sync: {:?}",
        f[1]
    );
    assert!(
        matches!(&f[2], Frame::Commit(c) if c.repo == did),
        "and the chain goes on"
    );
    let status = get_json(relay.port, &status_path(&did)).await;
    assert_eq!(status["active"], true, "{status}");
    assert_eq!(
        status["rev"].as_str(),
        host.fleet.last_rev(0).await.as_deref()
    );
    relay.stop().await;
    host.stop().await;
    let _ = std::fs::remove_dir_all(&data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_repair_marks_the_account_desynchronized_until_a_retry_succeeds() {
    let mut host = FleetHandle::start(3, false).await;
    let (relay, data) = start_relay(
        &[&host],
        "repair-retry",
        &[
            "--repair-min-backoff-ms",
            "300",
            "--repair-max-backoff-secs",
            "1",
        ],
    )
    .await;
    host.fleet.genesis().await.expect("genesis");
    published(&relay, 9.0).await;
    let dids = host.fleet.dids().await;

    host.fleet.fail_get_repo(3);
    // The first injected fault goes to account 0.
    host.fleet.inject("skip_commit").await.expect("inject");
    host.fleet.write_one(0).await.expect("write");
    wait_for("account 0 to be marked desynchronized", async || {
        let s = get_json(relay.port, &status_path(&dids[0])).await;
        s["active"] == false && s["status"] == "desynchronized"
    })
    .await;
    let hs = get_json(relay.port, &host_status_path(host.fleet.url())).await;
    assert_eq!(hs["desynchronizedAccounts"], 1, "{hs}");

    // The other accounts are not held up meanwhile.
    let out = relay.metric("relay_events_out_total").await;
    host.fleet.write_one(1).await.expect("write");
    host.fleet.write_one(2).await.expect("write");
    published(&relay, out + 2.0).await;

    // Retried with backoff until getRepo answers, then the account is whole again.
    wait_for("the repair to succeed on a retry", async || {
        get_json(relay.port, &status_path(&dids[0])).await["active"] == true
    })
    .await;
    assert_eq!(
        host.fleet.get_repo_calls(),
        4,
        "three failures, then success"
    );
    assert_eq!(relay.metric("relay_repair_failures_total").await, 3.0);
    assert_eq!(relay.metric("relay_resyncs_total").await, 1.0);
    let hs = get_json(relay.port, &host_status_path(host.fleet.url())).await;
    assert_eq!(hs["desynchronizedAccounts"], 0, "{hs}");
    let out = relay.metric("relay_events_out_total").await;
    host.fleet.write_one(0).await.expect("write");
    published(&relay, out + 1.0).await;
    let status = get_json(relay.port, &status_path(&dids[0])).await;
    assert_eq!(
        status["rev"].as_str(),
        host.fleet.last_rev(0).await.as_deref()
    );

    let n = relay.metric("relay_events_out_total").await as usize;
    let all = frames(&relay.ws("?cursor=0"), n, Duration::from_secs(5)).await;
    assert_eq!(
        all.iter().filter_map(Frame::seq).collect::<Vec<_>>(),
        (1..=n as i64).collect::<Vec<_>>()
    );
    assert_eq!(
        all.iter()
            .filter(|f| matches!(f, Frame::Sync(s) if s.did == dids[0]))
            .count(),
        1
    );
    relay.stop().await;
    host.stop().await;
    let _ = std::fs::remove_dir_all(&data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_did_lookup_holds_the_cursor_and_stalls_no_one() {
    let mut host = FleetHandle::start(4, false).await;
    let (relay, data) = start_relay(&[&host], "slow-did", &[]).await;
    let dids = host.fleet.dids().await;
    host.fleet.slow_document(&dids[0], Duration::from_secs(4));
    let started = Instant::now();
    // Account 0's #identity is the host's event 1.
    host.fleet.genesis().await.expect("genesis");
    // Accounts 1–3 go through while account 0's document is still on its way.
    published(&relay, 9.0).await;
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "nobody waited for the slow lookup"
    );
    let hs = get_json(relay.port, &host_status_path(host.fleet.url())).await;
    assert_eq!(
        hs["seq"], 0,
        "the stored cursor stays below the event in flight: {hs}"
    );
    assert!(hs["inFlightEvents"].as_u64() >= Some(1), "{hs}");

    published(&relay, 12.0).await;
    let emitted = host.fleet.emitted() as i64;
    wait_for("the cursor to reach the host's head", async || {
        get_json(relay.port, &host_status_path(host.fleet.url())).await["seq"] == emitted
    })
    .await;
    let all = frames(&relay.ws("?cursor=0"), 12, Duration::from_secs(5)).await;
    let mine: Vec<&str> = all
        .iter()
        .filter(|f| f.did() == Some(dids[0].as_str()))
        .map(Frame::kind)
        .collect();
    assert_eq!(mine, ["#identity", "#account", "#commit"], "in order");
    relay.stop().await;
    host.stop().await;
    let _ = std::fs::remove_dir_all(&data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn firehose_answers_pings_and_close_and_drops_silent_peers() {
    let mut host = FleetHandle::start(1, false).await;
    let (relay, data) = start_relay(
        &[&host],
        "keepalive",
        &["--subscriber-ping-secs", "1", "--subscriber-dead-secs", "3"],
    )
    .await;
    host.fleet.genesis().await.expect("genesis");
    published(&relay, 3.0).await;

    // The fleet, as the PDS it stands in for, answers its subscribers' pings too.
    let (mut to_host, _) = tokio_tungstenite::connect_async(format!(
        "{}/xrpc/com.atproto.sync.subscribeRepos",
        host.fleet.url().replacen("http", "ws", 1)
    ))
    .await
    .expect("subscribe to the fleet");
    to_host
        .send(Message::Ping(vec![9].into()))
        .await
        .expect("ping");
    let pong = tokio::time::timeout(Duration::from_secs(3), async {
        while let Some(Ok(msg)) = to_host.next().await {
            if let Message::Pong(p) = msg {
                return p.as_ref() == [9];
            }
        }
        false
    })
    .await;
    assert_eq!(pong, Ok(true), "the fleet answered the ping");
    drop(to_host);

    // A silent peer: upgrades, then never reads or writes (so never answers a ping).
    let (silent, _) = tokio_tungstenite::connect_async(relay.ws(""))
        .await
        .expect("subscribe");

    // A client with keepalive pings of its own, holding its subscription through several
    // of the relay's dead-peer periods: every ping is answered (within the relay's
    // once-a-second read) and events keep coming.
    let (mut ws, _) = tokio_tungstenite::connect_async(relay.ws(""))
        .await
        .expect("subscribe");
    let mut frames_seen = 0;
    for i in 0..12u8 {
        ws.send(Message::Ping(vec![i].into())).await.expect("ping");
        if i % 3 == 0 {
            host.fleet.write_one(0).await.expect("write");
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            let msg = tokio::time::timeout_at(deadline.into(), ws.next())
                .await
                .unwrap_or_else(|_| panic!("pong {i} in time"))
                .expect("open")
                .expect("ok");
            match msg {
                Message::Pong(p) if p.as_ref() == [i] => break,
                Message::Binary(_) => frames_seen += 1,
                Message::Close(c) => panic!("closed while pinging: {c:?}"),
                _ => {}
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(frames_seen, 4, "every commit written while subscribed");
    assert_eq!(
        relay.metric("relay_dead_subscribers_total").await,
        1.0,
        "the silent peer was dropped"
    );
    drop(silent);

    // The close handshake: our Close is answered promptly.
    let asked = Instant::now();
    ws.send(Message::Close(None)).await.expect("close");
    let reply = tokio::time::timeout(Duration::from_secs(2), async {
        while let Some(msg) = ws.next().await {
            if let Ok(Message::Close(_)) = msg {
                return true;
            }
        }
        false
    })
    .await
    .expect("a reply in time");
    assert!(reply, "the relay answered Close with Close");
    assert!(asked.elapsed() < Duration::from_secs(2));
    wait_for("both subscribers to be gone", async || {
        relay.metric("relay_subscribers").await == 0.0
    })
    .await;
    relay.stop().await;
    host.stop().await;
    let _ = std::fs::remove_dir_all(&data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_that_stall_or_break_off_mid_frame_hold_up_no_one() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use tokio::io::AsyncWriteExt;
    // A host that takes the connection and never answers the upgrade.
    let stall = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let stall_url = format!("http://{}", stall.local_addr().expect("addr"));
    let stalled = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = stall.accept().await {
            held.push(s);
        }
    });
    // A host that upgrades, then sends half a frame and hangs up.
    let half = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let half_url = format!("http://{}", half.local_addr().expect("addr"));
    let attempts = Arc::new(AtomicUsize::new(0));
    let seen = attempts.clone();
    let halfway = tokio::spawn(async move {
        while let Ok((s, _)) = half.accept().await {
            seen.fetch_add(1, Ordering::SeqCst);
            if let Ok(mut ws) = tokio_tungstenite::accept_async(s).await {
                // A binary frame header announcing 4,096 bytes, then three of them.
                let _ = ws
                    .get_mut()
                    .write_all(&[0x82, 0x7e, 0x10, 0x00, 1, 2, 3])
                    .await;
                let _ = ws.get_mut().shutdown().await;
            }
        }
    });
    let mut good = FleetHandle::start(2, false).await;
    let data = tempdir("stalling");
    let mut args = relay_args(&data, &good.fleet);
    args.extend(
        [
            "--host",
            &stall_url,
            "--host",
            &half_url,
            "--idle-timeout-secs",
            "2",
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let relay = RelayHandle::start(&args).await;
    wait_for("the relay to subscribe", async || {
        good.fleet.subscribers() >= 1
    })
    .await;
    good.fleet.genesis().await.expect("genesis");
    published(&relay, 6.0).await;

    wait_for("both bad hosts to be shown offline, with why", async || {
        let a = get_json(relay.port, &host_status_path(&stall_url)).await;
        let b = get_json(relay.port, &host_status_path(&half_url)).await;
        a["status"] == "offline"
            && a["lastError"]
                .as_str()
                .is_some_and(|e| e.contains("timed out"))
            && b["status"] == "offline"
            && b["lastError"].is_string()
    })
    .await;
    assert!(
        attempts.load(Ordering::SeqCst) >= 3,
        "the broken host is retried"
    );
    // The good host was never held up.
    let out = relay.metric("relay_events_out_total").await;
    for i in 0..4 {
        good.fleet.write_one(i % 2).await.expect("write");
    }
    published(&relay, out + 4.0).await;
    relay.stop().await;
    good.stop().await;
    stalled.abort();
    halfway.abort();
    let _ = std::fs::remove_dir_all(&data);
}
