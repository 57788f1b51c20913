//! Bad input against the relay, from the synthetic fleet (real keys, real commits): each
//! fault is dropped with its counted reason, the account is repaired where it fell out of
//! sync, and the relay keeps serving a gap-free firehose.

use std::time::{Duration, Instant};

use agentnet_fleet::{Fleet, FleetConfig};
use futures::StreamExt;

async fn http_get(port: u16, path: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.ok()?;
    let (head, body) = buf.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_string())
}

/// A counter's value from the Prometheus text (0 when absent).
async fn metric(port: u16, series: &str) -> f64 {
    let text = http_get(port, "/metrics").await.unwrap_or_default();
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.trim().parse().ok())
        })
        .unwrap_or(0.0)
}

async fn wait_for(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fault_is_dropped_counted_and_survived() {
    let fleet_listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let fleet_addr = fleet_listener.local_addr().expect("addr");
    let fleet = Fleet::new(
        FleetConfig {
            listen: fleet_addr,
            accounts: 6,
            rate: 0.0,
            keys: "mix".into(),
            cloudflare: false,
            ops_per_commit: 1,
        },
        fleet_addr,
    )
    .expect("fleet");
    let server = fleet.clone();
    let (fleet_stop, fleet_stopped) = tokio::sync::oneshot::channel::<()>();
    let fleet_task = tokio::spawn(async move {
        server
            .serve(fleet_listener, async move {
                let _ = fleet_stopped.await;
            })
            .await
    });

    let relay_listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = relay_listener.local_addr().expect("addr").port();
    let data = std::env::temp_dir().join(format!("agentnet-faults-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    let config = relay_config(&data, fleet.url(), &fleet.plc_url());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let relay = tokio::spawn(agentnet_relay::run_on(config, relay_listener, async move {
        let _ = stop_rx.await;
    }));
    wait_for("the relay to subscribe to the fleet", async || {
        metric(port, "relay_upstream_connects_total").await >= 1.0
    })
    .await;

    fleet.genesis().await.expect("genesis");
    // 7 accounts (one claims another PDS) × (#identity, #account, commit), less the foreign
    // account's commit, which is refused.
    wait_for("genesis to be relayed", async || {
        metric(port, "relay_events_out_total").await >= 20.0
    })
    .await;

    for kind in [
        "forged_signature",
        "bad_inversion",
        "replayed_rev",
        "oversized",
        "garbage",
        "truncated",
        "wrong_host",
        "flood",
    ] {
        let reason = fleet.inject(kind).await.expect("inject");
        let series = format!("relay_events_dropped_total{{reason=\"{reason}\"}}");
        wait_for(&format!("{kind} to be counted as {reason}"), async || {
            metric(port, &series).await >= 1.0
        })
        .await;
        tokio::time::sleep(Duration::from_millis(1100)).await; // let the per-second host limit reset
                                                               // Good commits from every account still go through afterwards.
        let before = metric(port, "relay_events_out_total").await;
        for i in 0..6 {
            fleet.write_one(i).await.expect("write");
        }
        wait_for(&format!("good events after {kind}"), async || {
            metric(port, "relay_events_out_total").await >= before + 1.0
        })
        .await;
        tokio::time::sleep(Duration::from_millis(1100)).await; // let the per-second host limit reset
    }
    assert!(
        metric(port, "relay_resyncs_total").await >= 1.0,
        "desynchronized accounts were repaired"
    );

    // The published stream is gap-free from the start and every frame decodes.
    let (mut ws, _) = tokio_tungstenite::connect_async(format!(
        "ws://127.0.0.1:{port}/xrpc/com.atproto.sync.subscribeRepos?cursor=0"
    ))
    .await
    .expect("subscribe");
    let published = metric(port, "relay_events_out_total").await as i64;
    let mut expect = 1;
    while expect <= published {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("frame in time")
            .expect("open")
            .expect("ok");
        let frame = atproto::frame::decode_frame(&msg.into_data()).expect("relay frames decode");
        assert_eq!(frame.seq(), Some(expect), "gap-free from the first event");
        expect += 1;
    }

    let _ = stop_tx.send(());
    relay.await.expect("join").expect("relay ran cleanly");
    let _ = fleet_stop.send(());
    fleet_task.await.expect("join").expect("fleet ran cleanly");
    let _ = std::fs::remove_dir_all(&data);
}

fn relay_config(data: &std::path::Path, host: &str, plc: &str) -> agentnet_relay::Config {
    use clap::Parser;
    #[derive(clap::Parser)]
    struct Args {
        #[command(flatten)]
        relay: agentnet_relay::Config,
    }
    Args::parse_from([
        "relay",
        "--dev",
        "--data-dir",
        data.to_str().expect("utf-8 path"),
        "--host",
        host,
        "--plc-url",
        plc,
        "--host-events-per-second",
        "100",
        "--verifier-threads",
        "2",
    ])
    .relay
}
