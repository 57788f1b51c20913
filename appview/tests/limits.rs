//! The appview under load and bad callers: bursts from one address, one caller, or tokens
//! naming unknown issuers get 429 `RateLimitExceeded`; more queries than the stores may run
//! get 503 after their wait; anonymous visitors see public aggregates only. Runs on
//! embedded ClickHouse (chDB; `AGENTNET_CHDB_LIB`, set by the README's test command), one
//! engine per process, so the scenarios share one index and run in one test.

mod common;

use std::sync::atomic::Ordering;

use agentnet_appview::Limits;
use atproto::crypto::{Algorithm, Keypair};
use common::{appview, plc, plc_did, token};
use store::records::{Change, RecordRow, Visibility};

/// A fresh embedded index holding one shared record.
fn index() -> store::Records {
    let lib = std::env::var("AGENTNET_CHDB_LIB").expect(
        "AGENTNET_CHDB_LIB is not set: run infra/chdb/setup.sh (the README's test command does)",
    );
    let dir = std::env::temp_dir().join(format!("agentnet-limits-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let records = store::open_embedded_records(std::path::Path::new(&lib), &dir).expect("chDB");
    let shared = RecordRow {
        uri: "at://did:plc:aaaaaaaaaaaaaaaaaaaaaaaa/agent.envelope.sealed/3l3aaaaaaaaa2".into(),
        cid: "bafyreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy".into(),
        author: "did:plc:aaaaaaaaaaaaaaaaaaaaaaaa".into(),
        collection: "agent.comms.handoff".into(),
        rkey: "3l3aaaaaaaaa2".into(),
        rev: "3l3aaaaaaaaa2".into(),
        created_at: "2026-11-24T08:00:00.000Z".into(),
        visibility: Visibility::Shared,
        recipients: vec!["did:plc:bbbbbbbbbbbbbbbbbbbbbbbb".into()],
        record: None,
        sealed: Some(serde_json::json!({"ciphertext": "…"})),
        text: None,
        indexed_ms: 0,
    };
    records
        .apply(&[Change::Upsert(Box::new(shared))], 1)
        .expect("write");
    records
}

async fn get(port: u16, path: &str, token: Option<&str>) -> (u16, String) {
    let client = reqwest::Client::new();
    let mut req = client.get(format!("http://127.0.0.1:{port}{path}"));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.expect("reply");
    (
        resp.status().as_u16(),
        resp.text().await.unwrap_or_default(),
    )
}

fn roomy() -> Limits {
    Limits {
        max_queries: 64,
        query_queue_ms: 10_000,
        per_ip: 10_000,
        per_did: 10_000,
        issuer_lookups: 10_000,
        ..Limits::default()
    }
}

const BROADCASTS: &str = "/xrpc/agent.comms.listBroadcasts";

/// One series' value in a Prometheus text exposition (0 when absent).
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

async fn one_address_is_held_to_its_rate(records: &store::Records) {
    let (plc_url, _) = plc(vec![]).await;
    let port = appview(
        records,
        &plc_url,
        Limits {
            per_ip: 5,
            ..roomy()
        },
    )
    .await;
    let mut codes = Vec::new();
    for _ in 0..30 {
        let (code, body) = get(port, BROADCASTS, None).await;
        if code == 429 {
            assert!(body.contains("RateLimitExceeded"), "{body}");
        }
        codes.push(code);
    }
    assert!(
        codes.iter().filter(|c| **c == 200).count() >= 5,
        "{codes:?}"
    );
    assert!(codes.contains(&429), "{codes:?}");
}

async fn one_caller_is_held_to_its_rate_and_others_are_not(records: &store::Records) {
    let (a, b) = (
        Keypair::generate(Algorithm::K256),
        Keypair::generate(Algorithm::P256),
    );
    let (did_a, did_b) = (
        "did:plc:aaaaaaaaaaaaaaaaaaaaaaaa".to_string(),
        "did:plc:bbbbbbbbbbbbbbbbbbbbbbbb".to_string(),
    );
    let (plc_url, _) = plc(vec![(did_a.clone(), &a), (did_b.clone(), &b)]).await;
    let port = appview(
        records,
        &plc_url,
        Limits {
            per_did: 3,
            ..roomy()
        },
    )
    .await;
    let mut refused = 0;
    for _ in 0..12 {
        let t = token(&did_a, &a, "agent.comms.listBroadcasts");
        let (code, body) = get(port, BROADCASTS, Some(&t)).await;
        match code {
            200 => {}
            429 => {
                assert!(body.contains("RateLimitExceeded"), "{body}");
                refused += 1;
            }
            other => panic!("{other}: {body}"),
        }
    }
    assert!(refused >= 1, "caller A was held to its rate");
    let t = token(&did_b, &b, "agent.comms.listBroadcasts");
    let (code, body) = get(port, BROADCASTS, Some(&t)).await;
    assert_eq!(code, 200, "caller B has its own budget: {body}");
}

async fn tokens_naming_unknown_issuers_cannot_make_a_fetcher_of_the_appview(
    records: &store::Records,
) {
    let (plc_url, lookups) = plc(vec![]).await;
    let port = appview(
        records,
        &plc_url,
        Limits {
            issuer_lookups: 2,
            ..roomy()
        },
    )
    .await;
    let key = Keypair::generate(Algorithm::K256);
    let mut codes = Vec::new();
    for i in 0..20 {
        let t = token(&plc_did(i), &key, "agent.comms.listBroadcasts");
        codes.push(get(port, BROADCASTS, Some(&t)).await.0);
    }
    assert!(codes.contains(&429), "{codes:?}");
    assert!(codes.iter().all(|c| *c == 401 || *c == 429), "{codes:?}");
    // Every answer is counted by method and status; each refused token by its reason.
    let count = |code: u16| codes.iter().filter(|c| **c == code).count() as f64;
    let (refused, limited) = (count(401), count(429));
    let metrics = get(port, "/metrics", None).await.1;
    let series = |s: &str| metric(&metrics, s);
    assert_eq!(
        series("appview_requests_total{query=\"agent.comms.listBroadcasts\",status=\"401\"}"),
        refused
    );
    assert_eq!(
        series("appview_requests_total{query=\"agent.comms.listBroadcasts\",status=\"429\"}"),
        limited
    );
    assert_eq!(
        series("appview_auth_failures_total{reason=\"invalid\"}"),
        refused
    );
    assert_eq!(
        series("appview_request_seconds_count{query=\"agent.comms.listBroadcasts\"}"),
        20.0
    );
    let fetched = lookups.load(Ordering::Relaxed);
    assert!(
        fetched <= 6,
        "{fetched} DID documents fetched for 20 forged issuers"
    );
    // The same unknown issuer again: its failure is remembered, no new fetch.
    let before = lookups.load(Ordering::Relaxed);
    let did = "did:plc:qqqqqqqqqqqqqqqqqqqqqqqq";
    for _ in 0..3 {
        get(
            port,
            BROADCASTS,
            Some(&token(did, &key, "agent.comms.listBroadcasts")),
        )
        .await;
    }
    assert!(lookups.load(Ordering::Relaxed) <= before + 1);
}

async fn more_queries_than_the_stores_may_run_wait_then_get_503(records: &store::Records) {
    let (plc_url, _) = plc(vec![]).await;
    let port = appview(
        records,
        &plc_url,
        Limits {
            max_queries: 1,
            query_queue_ms: 0,
            ..roomy()
        },
    )
    .await;
    let burst: Vec<_> = (0..40)
        .map(|_| tokio::spawn(async move { get(port, BROADCASTS, None).await }))
        .collect();
    let mut codes = Vec::new();
    for r in burst {
        let (code, body) = r.await.expect("join");
        if code == 503 {
            assert!(body.contains("ServiceUnavailable"), "{body}");
        }
        codes.push(code);
    }
    assert!(codes.contains(&200), "{codes:?}");
    assert!(codes.contains(&503), "{codes:?}");
    assert!(codes.iter().all(|c| *c == 200 || *c == 503), "{codes:?}");
    let metrics = get(port, "/metrics", None).await.1;
    let busy = codes.iter().filter(|c| **c == 503).count() as f64;
    assert_eq!(
        metric(
            &metrics,
            "appview_requests_total{query=\"agent.comms.listBroadcasts\",status=\"503\"}"
        ),
        busy
    );
}

async fn anonymous_visitors_see_public_aggregates_only(records: &store::Records) {
    let (plc_url, _) = plc(vec![]).await;
    let port = appview(records, &plc_url, roomy()).await;
    let (code, page) = get(port, "/", None).await;
    assert_eq!(code, 200);
    assert!(
        !page.contains("agent.comms.handoff"),
        "no shared record types: {page}"
    );
    assert!(page.contains("0 public records"), "{page}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_appview_under_load_and_bad_callers() {
    let records = index();
    one_address_is_held_to_its_rate(&records).await;
    one_caller_is_held_to_its_rate_and_others_are_not(&records).await;
    tokens_naming_unknown_issuers_cannot_make_a_fetcher_of_the_appview(&records).await;
    more_queries_than_the_stores_may_run_wait_then_get_503(&records).await;
    anonymous_visitors_see_public_aggregates_only(&records).await;
}
