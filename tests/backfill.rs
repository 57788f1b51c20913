//! `agentnet backfill` as a user runs it: against the reference PDS (every repo it lists,
//! verified and indexed; a second run skips what is current, a third takes what changed)
//! and against the synthetic fleet (a run killed midway and resumed loses nothing and
//! fetches nothing twice; the account the fleet lists but does not host is refused; failed
//! fetches are tried again). The index is then read directly.

mod inproc;
mod support;

use std::collections::BTreeSet;
use std::process::Stdio;
use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};

/// The appview key every run of one test is given (a fresh one per test).
fn appview_key() -> String {
    atproto::envelope::EncryptionKey::generate().to_base64()
}

/// `agentnet backfill` with the flags every run here needs, plus `extra`.
fn backfill(
    data: &std::path::Path,
    plc: &str,
    key: &str,
    extra: &[&str],
) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_agentnet"));
    cmd.args(["backfill", "--dev", "--plc-url", plc, "--appview-key", key])
        .arg("--data-dir")
        .arg(data)
        .args(["--progress", "log", "--progress-secs", "1"])
        .args(extra)
        .env("AGENTNET_LOG", "info")
        .env("AGENTNET_LOG_FORMAT", "json")
        .kill_on_drop(true);
    cmd
}

/// The numbers of the summary line a finished run prints.
#[derive(Debug, Default, PartialEq)]
struct Summary {
    accounts: u64,
    written: u64,
    records: u64,
    current: u64,
    not_hosts: u64,
    failed: u64,
}

fn summary(stdout: &str) -> Summary {
    let line = stdout
        .lines()
        .find(|l| l.starts_with("backfill: "))
        .unwrap_or_else(|| panic!("no summary line in {stdout:?}"));
    let number_before = |what: &str| -> u64 {
        let at = line
            .find(what)
            .unwrap_or_else(|| panic!("{what:?} not in {line:?}"));
        line[..at]
            .split(|c: char| !c.is_ascii_digit())
            .rfind(|w| !w.is_empty())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no number before {what:?} in {line:?}"))
    };
    Summary {
        accounts: number_before(" accounts:"),
        written: number_before(" written"),
        records: number_before(" records,"),
        current: number_before(" already current"),
        not_hosts: number_before(" not the host's"),
        failed: number_before(" failed"),
    }
}

/// Runs to the end; its summary (the run must succeed).
async fn run_to_end(mut cmd: tokio::process::Command) -> Summary {
    let out = tokio::time::timeout(Duration::from_secs(300), cmd.output())
        .await
        .expect("backfill finishes")
        .expect("backfill runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "backfill failed: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    summary(&stdout)
}

/// The index in `data`, opened after every run has ended (one chDB engine per process).
fn visible(data: &std::path::Path) -> (BTreeSet<String>, usize) {
    let lib = std::env::var("AGENTNET_CHDB_LIB")
        .expect("AGENTNET_CHDB_LIB must name libchdb.so (scripts/test.sh sets it)");
    let records = store::open_embedded_records(lib.as_ref(), &data.join("clickhouse"))
        .expect("the backfilled index opens");
    let uris = records
        .all_visible()
        .expect("records")
        .into_iter()
        .map(|(uri, _)| uri)
        .collect();
    (uris, records.backfilled().expect("progress").len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfills_the_reference_pds_and_resumes_where_repos_changed() {
    let (data, key) = (support::tempdir("backfill-pds"), appview_key());
    let mut pds = tokio::task::spawn_blocking(support::Pds::start)
        .await
        .expect("PDS");
    let (mut pds, ops) = tokio::task::spawn_blocking(move || {
        pds.call(json!({"op": "accounts", "names": ["alice", "bob", "carol"]}));
        let ops = pds.call(json!({"op": "scenario", "rounds": 2}))["ops"].clone();
        (pds, ops)
    })
    .await
    .expect("scenario");
    let (url, plc) = (pds.url.clone(), pds.plc.clone());
    let host = ["--host", url.as_str()];

    // Each account's repo holds its requests (its messages were deleted).
    let first = run_to_end(backfill(&data, &plc, &key, &host)).await;
    assert_eq!(
        first,
        Summary {
            accounts: 3,
            written: 3,
            records: 6,
            ..Summary::default()
        }
    );
    // Nothing changed: nothing fetched again.
    let second = run_to_end(backfill(&data, &plc, &key, &host)).await;
    assert_eq!((second.written, second.current), (0, 3), "{second:?}");

    // One more round: every repo moved on, so every account is taken again.
    let (_pds, more) = tokio::task::spawn_blocking(move || {
        let more = pds.call(json!({"op": "scenario", "rounds": 1}))["ops"].clone();
        (pds, more)
    })
    .await
    .expect("scenario");
    let third = run_to_end(backfill(&data, &plc, &key, &host)).await;
    assert_eq!((third.written, third.current, third.records), (3, 0, 9));

    let requests: BTreeSet<String> = ops
        .as_array()
        .into_iter()
        .chain(more.as_array())
        .flatten()
        .filter(|op| op["action"] == "create")
        .filter_map(|op| {
            let path = op["path"].as_str()?;
            path.starts_with("agent.comms.request/")
                .then(|| format!("at://{}/{path}", op["did"].as_str().unwrap_or_default()))
        })
        .collect();
    assert_eq!(requests.len(), 9);
    let (indexed, progress) = visible(&data);
    assert_eq!(indexed, requests, "every request, and nothing deleted");
    assert_eq!(progress, 3);
    let _ = std::fs::remove_dir_all(&data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_backfill_resumes_without_losing_or_refetching() {
    let (data, key) = (support::tempdir("backfill-fleet"), appview_key());
    let accounts = 24;
    let fleet = inproc::FleetHandle::start(accounts, false).await;
    fleet.fleet.genesis().await.expect("genesis");
    // The fleet's last account (one past `accounts`) is hosted elsewhere by its DID
    // document, yet the fleet lists it: its repo must not be believed.
    for i in 0..=accounts * 3 {
        fleet
            .fleet
            .write_one(i % (accounts + 1))
            .await
            .expect("write");
    }
    let expected = fleet.created(accounts).await;
    assert!(expected.len() >= accounts * 3, "{}", expected.len());
    let (fleet_url, plc) = (fleet.fleet.url().to_string(), fleet.fleet.plc_url());

    // A slow run (one repo at a time, a few requests a second), killed once some accounts
    // are written.
    let mut slow = backfill(
        &data,
        &plc,
        &key,
        &[
            "--host",
            &fleet_url,
            "--concurrency",
            "1",
            "--host-requests-per-second",
            "4",
        ],
    );
    let mut child = slow
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("backfill starts");
    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let done_before_kill = tokio::time::timeout(Duration::from_secs(120), async {
        while let Ok(Some(line)) = lines.next_line().await {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            let done = v["done"].as_u64().unwrap_or(0);
            if v["message"] == "backfilling" && done >= 4 {
                return done;
            }
        }
        panic!("the backfill ended before it was killed");
    })
    .await
    .expect("progress lines");
    child.start_kill().expect("kill -9");
    child.wait().await.expect("reaped");
    assert!(done_before_kill < accounts as u64, "killed midway");

    // Resumed, with the fleet failing the next two repo fetches (tried again).
    fleet.fleet.fail_get_repo(2);
    let resumed = run_to_end(backfill(&data, &plc, &key, &["--host", &fleet_url])).await;
    assert!(
        resumed.current >= done_before_kill,
        "what was written before the kill is not fetched again: {resumed:?}"
    );
    assert_eq!(resumed.accounts, accounts as u64 + 1, "{resumed:?}");
    assert_eq!(
        resumed.current + resumed.written,
        accounts as u64,
        "{resumed:?}"
    );
    assert_eq!((resumed.not_hosts, resumed.failed), (1, 0), "{resumed:?}");

    let (indexed, progress) = visible(&data);
    assert_eq!(
        indexed, expected,
        "every record of the hosted accounts, once"
    );
    assert_eq!(progress, accounts);
    let _ = std::fs::remove_dir_all(&data);
}
