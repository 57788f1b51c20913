//! Conversational traffic for the demo network: agents that publish their encryption keys,
//! then message, ask, answer, hand off, broadcast and remember, at all three privacy levels
//! (public; shared with named agents and the appview; private to the author), with texts
//! drawn from a small set of work topics so semantic recall has something to find.

use std::collections::VecDeque;
use std::sync::Mutex;

use atproto::envelope::{seal, EncryptionKey, EncryptionPublicKey, Recipient};
use lexicons::Record;
use rand::Rng;
use serde_json::{json, Value};

/// Work topics: (topic, a sentence about it). Recall queries paraphrase these.
const TOPICS: &[(&str, &str)] = &[
    (
        "billing",
        "The billing service latency doubled after yesterday's deploy.",
    ),
    (
        "billing",
        "Invoices for the enterprise tier are generated twice on retries.",
    ),
    (
        "security",
        "Rotate the database credentials before the audit on Friday.",
    ),
    (
        "security",
        "A leaked API token was found in the build logs and revoked.",
    ),
    (
        "search",
        "Search results lose relevance when queries contain typos.",
    ),
    (
        "search",
        "Rebuild the product search index with the new embeddings.",
    ),
    (
        "infra",
        "The Kubernetes cluster is running out of memory on the ingest nodes.",
    ),
    (
        "infra",
        "Disk usage on the log volume will hit its limit within two days.",
    ),
    (
        "research",
        "Summarise the papers on retrieval-augmented generation from this week.",
    ),
    (
        "research",
        "Compare the accuracy of the three summarisation models on our test set.",
    ),
    (
        "support",
        "A customer in Berlin cannot reset their password from the mobile app.",
    ),
    (
        "support",
        "Refund requests are piling up because the payment provider is down.",
    ),
    (
        "planning",
        "Draft the roadmap for the next quarter with the mobile team's input.",
    ),
    (
        "planning",
        "Move the launch of the analytics dashboard to the first week of March.",
    ),
];

/// What a synthetic agent writes next.
pub struct Written {
    /// The repo collection (`agent.envelope.sealed` for sealed records).
    pub collection: String,
    /// The record's DAG-CBOR.
    pub record: Vec<u8>,
}

/// The demo's agents' keys and open requests.
pub struct Conversation {
    keys: Vec<EncryptionKey>,
    appview: Option<(String, EncryptionPublicKey)>,
    /// Requests waiting for their assignee: (assignee index, request URI, sender DID).
    open: Mutex<VecDeque<(usize, String, String)>>,
}

fn cbor(v: &Value) -> Vec<u8> {
    atproto::data::json_to_ipld(v)
        .ok()
        .and_then(|d| atproto::data::to_cbor(&d).ok())
        .unwrap_or_default()
}

impl Conversation {
    /// Keys for `agents` agents; shared records also name `appview` so it can index them.
    pub fn new(agents: usize, appview: Option<(String, EncryptionPublicKey)>) -> Self {
        Conversation {
            keys: (0..agents).map(|_| EncryptionKey::generate()).collect(),
            appview,
            open: Mutex::new(VecDeque::new()),
        }
    }

    /// Agent `i`'s `agent.envelope.key` record.
    pub fn key_record(&self, i: usize) -> Vec<u8> {
        cbor(&json!({
            "$type": "agent.envelope.key",
            "publicKey": self.keys[i].public().multikey(),
            "createdAt": atproto::syntax::datetime_now(),
        }))
    }

    /// Agent `i` (of `dids`) writes one record under `rkey`.
    pub fn next(&self, i: usize, dids: &[String], rkey: &str) -> Written {
        let mut rng = rand::thread_rng();
        let me = &dids[i];
        let now = atproto::syntax::datetime_now();
        let other = {
            let j = rng.gen_range(0..dids.len().max(2) - 1);
            if j >= i {
                (j + 1) % dids.len()
            } else {
                j
            }
        };
        let peer = &dids[other];
        let (topic, text) = TOPICS[rng.gen_range(0..TOPICS.len())];
        // Answer an open request addressed to this agent first.
        let answer = {
            let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
            open.iter()
                .position(|(a, _, _)| *a == i)
                .and_then(|at| open.remove(at))
        };
        if let Some((_, request, sender)) = answer {
            let status = ["ok", "ok", "partial", "error"][rng.gen_range(0..4)];
            let record = json!({"$type": "agent.comms.response", "sender": me, "request": request,
                "status": status, "result": {"note": format!("done: {text}")}, "createdAt": now});
            return self.written(i, dids, rkey, &record, &[sender], rng.gen_bool(0.5));
        }
        let roll = rng.gen_range(0..100);
        let (record, shared_with, shared, request): (Value, Vec<String>, bool, bool) = match roll {
            0..=24 => (
                json!({"$type": "agent.comms.message", "sender": me, "recipient": peer,
                    "content": {"kind": "text", "text": text}, "createdAt": now}),
                vec![peer.clone()],
                rng.gen_bool(0.5),
                false,
            ),
            25..=44 => (
                json!({"$type": "agent.comms.request", "sender": me, "assignee": peer,
                    "task": text, "createdAt": now}),
                vec![peer.clone()],
                rng.gen_bool(0.5),
                true,
            ),
            45..=54 => (
                json!({"$type": "agent.comms.handoff", "from": me, "to": peer,
                    "session": format!("{topic}-{}", rng.gen_range(1..20)), "summary": text, "createdAt": now}),
                vec![peer.clone()],
                rng.gen_bool(0.5),
                false,
            ),
            55..=69 => (
                json!({"$type": "agent.comms.broadcast", "sender": me, "topic": topic,
                    "audience": [format!("role:{topic}")], "content": {"kind": "text", "text": text}, "createdAt": now}),
                Vec::new(),
                false,
                false,
            ),
            70..=84 => {
                // Private memory: sealed for the author alone, never indexed.
                let record = json!({"$type": "agent.memory.note", "summary": topic, "text": text, "createdAt": now});
                return self.written(i, dids, rkey, &record, &[], true);
            }
            _ => (
                json!({"$type": "agent.memory.decision", "decision": text, "rationale": format!("agreed with {peer}"),
                    "createdAt": now}),
                vec![peer.clone()],
                rng.gen_bool(0.3),
                false,
            ),
        };
        if request {
            let collection = if shared {
                "agent.envelope.sealed"
            } else {
                "agent.comms.request"
            };
            let uri = format!("at://{me}/{collection}/{rkey}");
            self.open
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push_back((other, uri, me.clone()));
        }
        self.written(i, dids, rkey, &record, &shared_with, shared)
    }

    /// `record` as written: plain when not `sealed`, else sealed for the author, `to`
    /// (fleet agents, by their place in `dids`) and the appview when shared.
    fn written(
        &self,
        i: usize,
        dids: &[String],
        rkey: &str,
        record: &Value,
        to: &[String],
        sealed: bool,
    ) -> Written {
        let me = &dids[i];
        let collection = record["$type"].as_str().unwrap_or_default().to_string();
        if !sealed {
            return Written {
                collection,
                record: cbor(record),
            };
        }
        let mut keys: Vec<(String, EncryptionPublicKey)> =
            vec![(me.to_string(), self.keys[i].public())];
        for did in to {
            if let Some(j) = dids.iter().position(|d| d == did) {
                keys.push((did.clone(), self.keys[j].public()));
            }
        }
        if !to.is_empty() {
            if let Some((did, key)) = &self.appview {
                keys.push((did.clone(), *key));
            }
        }
        let recipients: Vec<Recipient<'_>> = keys
            .iter()
            .map(|(did, key)| Recipient { did, key })
            .collect();
        let uri = format!("at://{me}/agent.envelope.sealed/{rkey}");
        let sealed = seal(
            &uri,
            &collection,
            &atproto::syntax::datetime_now(),
            &cbor(record),
            &recipients,
        )
        .ok()
        .and_then(|s| s.to_cbor().ok());
        Written {
            collection: "agent.envelope.sealed".into(),
            record: sealed.unwrap_or_default(),
        }
    }
}
