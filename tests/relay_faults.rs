//! Bad input against the relay, from the synthetic fleet (real keys, real commits): each
//! fault is dropped with its counted reason, the account is repaired where it fell out of
//! sync, and the relay keeps serving a gap-free firehose.

mod inproc;

use std::time::Duration;

use inproc::{frames, relay_args, tempdir, wait_for, FleetHandle, RelayHandle};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fault_is_dropped_counted_and_survived() {
    let mut fleet = FleetHandle::start(6, false).await;
    let data = tempdir("faults");
    let mut args = relay_args(&data, &fleet.fleet);
    let limit = args
        .iter()
        .position(|a| a == "--host-events-per-second")
        .expect("flag")
        + 1;
    args[limit] = "100".into();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let relay = RelayHandle::start(&args).await;
    wait_for("the relay to subscribe", async || {
        fleet.fleet.subscribers() >= 1
    })
    .await;

    fleet.fleet.genesis().await.expect("genesis");
    // 7 accounts × (#identity, #account, commit), less the three events of the account
    // whose DID document names another PDS: host authority holds for every kind.
    wait_for("genesis to be relayed", async || {
        relay.metric("relay_events_out_total").await >= 18.0
    })
    .await;
    assert_eq!(
        relay
            .metric("relay_events_dropped_total{reason=\"wrong_host\"}")
            .await,
        3.0,
        "the foreign account's #identity, #account and #commit are refused"
    );

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
        let reason = fleet.fleet.inject(kind).await.expect("inject");
        let series = format!("relay_events_dropped_total{{reason=\"{reason}\"}}");
        wait_for(&format!("{kind} to be counted as {reason}"), async || {
            relay.metric(&series).await >= 1.0
        })
        .await;
        tokio::time::sleep(Duration::from_millis(1100)).await; // let the per-second host limit reset
                                                               // Good commits from every account still go through afterwards.
        let before = relay.metric("relay_events_out_total").await;
        for i in 0..6 {
            fleet.fleet.write_one(i).await.expect("write");
        }
        wait_for(&format!("good events after {kind}"), async || {
            relay.metric("relay_events_out_total").await >= before + 6.0
        })
        .await;
    }
    assert!(
        relay.metric("relay_resyncs_total").await >= 1.0,
        "desynchronized accounts were repaired"
    );

    // The published stream is gap-free from the start and every frame decodes.
    let published = relay.metric("relay_events_out_total").await as usize;
    let all = frames(&relay.ws("?cursor=0"), published, Duration::from_secs(5)).await;
    assert_eq!(all.len(), published);
    for (i, f) in all.iter().enumerate() {
        assert_eq!(f.seq(), Some(i as i64 + 1), "gap-free from the first event");
    }
    relay.stop().await;
    fleet.stop().await;
    let _ = std::fs::remove_dir_all(&data);
}
