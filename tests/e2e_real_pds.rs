//! The whole network on real parts: agents A, B and C on the reference PDS write through
//! its XRPC; `agentnet up` (relay → indexer → appview, one process) crawls the PDS,
//! verifies, indexes and answers; each agent queries the appview with service tokens its
//! PDS mints. Shared records reach only their recipients, the private memory reaches no
//! store and no answer, and recall finds the shared message by a paraphrase.

mod support;

use std::time::{Duration, Instant};

use agentnet_agent::{Agent, Appview, Privacy};
use serde_json::{json, Value};
use support::{http_get, Pds, Up};

const PASSWORD: &str = "hunter2-agentnet";
const SHARED_TEXT: &str =
    "The staging database password was rotated this morning; the new one is in the team vault.";
const PARAPHRASE: &str = "where can I find the new credentials for the staging DB?";
const PUBLIC_TEXT: &str = "The quarterly roadmap review moved to Thursday afternoon.";
const TASK_TEXT: &str = "Benchmark the new embedding model on the support tickets dataset.";
const SECRET: &str = "The escrow code for the Lisbon office safe is 7731-alpha.";

fn uris(answer: &Value, list: &str) -> Vec<String> {
    answer[list]
        .as_array()
        .unwrap_or(&Vec::new())
        .iter()
        .map(|i| {
            let item = if list == "results" { &i["item"] } else { i };
            item["uri"].as_str().unwrap_or_default().to_string()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_coordinate_and_recall_through_the_whole_network() {
    let pds = tokio::task::spawn_blocking(Pds::start)
        .await
        .expect("start PDS");
    let data = std::env::temp_dir().join(format!("agentnet-e2e-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    let (pds, node) = {
        let data = data.clone();
        tokio::task::spawn_blocking(move || {
            let node = Up::start(&pds, &data);
            (pds, node)
        })
        .await
        .expect("start node")
    };
    let mut pds = pds;
    let pds = tokio::task::spawn_blocking(move || {
        pds.call(json!({"op": "accounts", "names": ["alice", "bob", "carol"]}));
        pds
    })
    .await
    .expect("accounts");
    let resolver = pds.resolver();
    let keys = data.join("keys");
    let mut a = Agent::login(&pds.url, "alice.test", PASSWORD)
        .await
        .expect("login a");
    let mut b = Agent::login(&pds.url, "bob.test", PASSWORD)
        .await
        .expect("login b");
    let c = Agent::login(&pds.url, "carol.test", PASSWORD)
        .await
        .expect("login c");
    a.keygen(&keys.join("a.json")).await.expect("keygen a");
    b.keygen(&keys.join("b.json")).await.expect("keygen b");
    c.keygen(&keys.join("c.json")).await.expect("keygen c");
    let appview = Appview::discover(&node.url())
        .await
        .expect("appview DID document");
    assert!(
        appview.did.starts_with("did:web:localhost%3A"),
        "{}",
        appview.did
    );
    let (a_did, b_did, c_did) = (
        a.did().to_string(),
        b.did().to_string(),
        c.did().to_string(),
    );
    let now = atproto::syntax::datetime_now;

    // A record that breaks its lexicon (no content), written past the agent library's
    // check: the PDS takes it, the relay passes it on, the indexer counts and skips it.
    a.put_record(
        "agent.comms.message",
        "3l3zzzzzzzzz2",
        &json!({"$type": "agent.comms.message", "sender": a_did, "recipient": b_did, "createdAt": now()}),
    )
    .await
    .expect("invalid record written");

    // A → B: a public message, a shared message (B + appview), a shared request.
    let message = |text: &str| {
        json!({"$type": "agent.comms.message", "sender": a_did, "recipient": b_did,
        "content": {"kind": "text", "text": text}, "createdAt": now()})
    };
    let public_uri = a
        .send(&message(PUBLIC_TEXT), Privacy::Public, &[], &resolver)
        .await
        .expect("public message");
    let shared_uri = a
        .send(
            &message(SHARED_TEXT),
            Privacy::Shared,
            &[b_did.clone(), appview.did.clone()],
            &resolver,
        )
        .await
        .expect("shared message");
    let request = json!({"$type": "agent.comms.request", "sender": a_did, "assignee": b_did,
        "task": TASK_TEXT, "createdAt": now()});
    let request_uri = a
        .send(
            &request,
            Privacy::Shared,
            &[b_did.clone(), appview.did.clone()],
            &resolver,
        )
        .await
        .expect("shared request");
    // B answers it, shared with A and the appview.
    let response = json!({"$type": "agent.comms.response", "sender": b_did, "request": request_uri,
        "status": "ok", "result": {"note": "recall@10 is 0.93"}, "createdAt": now()});
    let response_uri = b
        .send(
            &response,
            Privacy::Shared,
            &[a_did.clone(), appview.did.clone()],
            &resolver,
        )
        .await
        .expect("response");
    // A keeps a private memory.
    let note = json!({"$type": "agent.memory.note", "summary": "escrow", "text": SECRET, "createdAt": now()});
    let private_uri = a
        .send(&note, Privacy::Private, &[], &resolver)
        .await
        .expect("private note");

    // B's inbox: both messages and the request, once the index has caught up.
    let deadline = Instant::now() + Duration::from_secs(90);
    let b_inbox = loop {
        let inbox = b
            .query(&appview, "agent.comms.getInbox", &[])
            .await
            .expect("B's inbox");
        let got = uris(&inbox, "items");
        if got.contains(&shared_uri) && got.contains(&public_uri) && got.contains(&request_uri) {
            break inbox;
        }
        assert!(Instant::now() < deadline, "B's inbox never filled: {inbox}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let shared_item = b_inbox["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|i| i["uri"] == shared_uri.as_str())
        .expect("shared item");
    assert_eq!(shared_item["privacy"], "shared");
    assert_eq!(shared_item["collection"], "agent.comms.message");
    assert_eq!(
        shared_item["record"]["content"]["text"], SHARED_TEXT,
        "the appview opened it for its recipient"
    );

    // B's tasks: the request, answered.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let tasks = b
            .query(&appview, "agent.comms.listTasks", &[])
            .await
            .expect("B's tasks");
        let task = tasks["tasks"].as_array().and_then(|t| {
            t.iter()
                .find(|t| t["request"]["uri"] == request_uri.as_str())
                .cloned()
        });
        if let Some(task) = task.filter(|t| t["status"] == "ok") {
            assert_eq!(task["response"]["uri"], response_uri.as_str());
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the task never showed as answered: {tasks}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // B recalls the shared message by a paraphrase, first.
    let recall = b
        .query(
            &appview,
            "agent.memory.recall",
            &[("q", PARAPHRASE), ("limit", "5")],
        )
        .await
        .expect("B's recall");
    assert_eq!(
        uris(&recall, "results").first(),
        Some(&shared_uri),
        "B's best match for the paraphrase: {recall}"
    );

    // C sees none of it: not in its inbox, not in B's inbox as C, not in recall.
    let shared = [
        shared_uri.clone(),
        request_uri.clone(),
        response_uri.clone(),
    ];
    let c_inbox = c
        .query(&appview, "agent.comms.getInbox", &[("recipient", &c_did)])
        .await
        .expect("C's inbox");
    assert!(uris(&c_inbox, "items").is_empty(), "{c_inbox}");
    let b_as_c = c
        .query(&appview, "agent.comms.getInbox", &[("recipient", &b_did)])
        .await
        .expect("B's inbox as C");
    assert_eq!(uris(&b_as_c, "items"), vec![public_uri.clone()]);
    let c_recall = c
        .query(
            &appview,
            "agent.memory.recall",
            &[("q", PARAPHRASE), ("limit", "50")],
        )
        .await
        .expect("C's recall");
    assert!(
        !uris(&c_recall, "results")
            .iter()
            .any(|u| shared.contains(u)),
        "{c_recall}"
    );
    let c_thread = c
        .query(&appview, "agent.comms.getThread", &[("uri", &request_uri)])
        .await;
    assert!(
        matches!(
            c_thread,
            Err(agentnet_agent::AgentError::Xrpc { status: 404, .. })
        ),
        "C cannot read a thread it is not in: {c_thread:?}"
    );

    // Anonymous: public only.
    let http = reqwest::Client::new();
    let anon = appview
        .query(
            &http,
            None,
            "agent.memory.recall",
            &[("q", PARAPHRASE), ("limit", "50")],
        )
        .await
        .expect("anonymous recall");
    let anon_results = anon["results"].as_array().expect("results");
    assert!(!anon_results.is_empty(), "the public message is recallable");
    assert!(
        anon_results
            .iter()
            .all(|r| r["item"]["privacy"] == "public"),
        "{anon}"
    );
    // A token that does not verify is refused, not downgraded to anonymous.
    let forged = appview
        .query(
            &http,
            Some("e30.e30.AAAA"),
            "agent.comms.getInbox",
            &[("recipient", &b_did)],
        )
        .await;
    assert!(
        matches!(
            forged,
            Err(agentnet_agent::AgentError::Xrpc { status: 401, .. })
        ),
        "{forged:?}"
    );
    let wrong_method = b
        .service_token(&appview.did, "agent.memory.recall")
        .await
        .expect("token");
    let misuse = appview
        .query(&http, Some(&wrong_method), "agent.comms.getInbox", &[])
        .await;
    assert!(
        matches!(
            misuse,
            Err(agentnet_agent::AgentError::Xrpc { status: 401, .. })
        ),
        "a token for another method: {misuse:?}"
    );
    // A token for the appview's service reference (how PDS proxying names it) is B's too.
    let by_service = b
        .service_token(
            &format!("{}#agentnet_appview", appview.did),
            "agent.comms.getInbox",
        )
        .await
        .expect("token for the service reference");
    let inbox = appview
        .query(&http, Some(&by_service), "agent.comms.getInbox", &[])
        .await
        .expect("inbox by service reference");
    assert!(uris(&inbox, "items").contains(&shared_uri), "{inbox}");

    // The private memory is in no answer, even to its author …
    let a_recall = a
        .query(
            &appview,
            "agent.memory.recall",
            &[("q", SECRET), ("limit", "50")],
        )
        .await
        .expect("A's recall");
    assert!(!a_recall.to_string().contains("7731"), "{a_recall}");
    assert!(!uris(&a_recall, "results").contains(&private_uri));
    let a_thread = a
        .query(&appview, "agent.comms.getThread", &[("uri", &private_uri)])
        .await;
    assert!(matches!(
        a_thread,
        Err(agentnet_agent::AgentError::Xrpc { status: 404, .. })
    ));

    // The invalid record was counted with its reason, and lost nothing else.
    let metrics = http_get(node.port, "/metrics/indexer").expect("indexer metrics");
    assert!(
        metrics.contains("indexer_skipped_total{reason=\"invalid\"} 1"),
        "{metrics}"
    );

    // The appview counted its answers by method and status (a 404 above among them).
    let metrics = http_get(node.port, "/metrics/appview").expect("appview metrics");
    for series in [
        "appview_requests_total{query=\"agent.comms.getThread\",status=\"404\"}",
        "appview_requests_total{query=\"agent.memory.recall\",status=\"200\"}",
        "appview_request_seconds_count{query=\"agent.comms.getInbox\"}",
    ] {
        let n = metrics
            .lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse::<f64>().ok());
        assert!(n.is_some_and(|n| n >= 1.0), "{series}: {metrics}");
    }

    // … and in no store: stop the node and search the record index and the vectors.
    tokio::task::spawn_blocking(move || node.stop())
        .await
        .expect("stop");
    let index = data.join("index");
    let records = store::open_embedded_records(
        std::path::Path::new(&std::env::var("AGENTNET_CHDB_LIB").expect("chdb")),
        &index.join("clickhouse"),
    )
    .expect("open the record index");
    assert!(
        records.anywhere(SHARED_TEXT).expect("scan"),
        "the scan finds indexed text"
    );
    for needle in [SECRET, "7731", private_uri.as_str()] {
        assert!(
            !records.anywhere(needle).expect("scan"),
            "{needle} is in the record index"
        );
    }
    let model = std::env::var("AGENTNET_MODEL_DIR").expect("model");
    let mut embedder = store::embed::Embedder::load(
        std::path::Path::new(&model),
        store::embed::Precision::Int8,
        None,
    )
    .expect("model");
    let vectors = store::open_embedded_vectors(&index.join("vectors"), embedder.dimensions())
        .expect("open the vector store");
    let query = store::vectors::Query {
        vector: embedder
            .embed(&[SECRET.to_string()], 1)
            .expect("embed")
            .remove(0),
        limit: 100,
        ..Default::default()
    };
    // As its author: if the note had a point, its author could see it.
    let hits = vectors.search(Some(&a_did), &query).expect("search");
    assert!(!hits.is_empty(), "A's other records are there");
    assert!(hits.iter().all(|h| h.uri != private_uri), "{hits:?}");
    drop(vectors);
    drop(records);
    let _ = std::fs::remove_dir_all(&data);
}
