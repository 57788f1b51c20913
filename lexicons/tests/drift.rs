//! The Rust types and the JSON documents cannot drift: every file is embedded and loads,
//! every type serializes to a record that validates, and field sets match property sets.

use std::collections::BTreeSet;

use atproto::data::{from_cbor, to_cbor};
use atproto::envelope::{seal, EncryptionKey, Recipient};
use atproto::Ipld;
use lexicons::*;
use serde_json::json;

const DID_A: &str = "did:plc:ewvi7nxzyoun6zhxrhs64oiz";
const DID_B: &str = "did:web:agent-b.example.com";
const NOW: &str = "2026-11-24T08:00:00.000Z";
const URI: &str = "at://did:plc:ewvi7nxzyoun6zhxrhs64oiz/agent.comms.request/3kznmn7xqxl22";

fn ipld<T: Record>(r: &T) -> Ipld {
    from_cbor(&r.to_cbor().expect("encode")).expect("decode")
}

fn keys(v: &Ipld) -> BTreeSet<String> {
    match v {
        Ipld::Map(m) => m.keys().filter(|k| *k != "$type").cloned().collect(),
        _ => panic!("not a map"),
    }
}

fn schema_props(catalog_doc: &str, def: &str, record: bool) -> BTreeSet<String> {
    let (_, text) = DOCUMENTS
        .iter()
        .find(|(n, _)| *n == catalog_doc)
        .expect("embedded");
    let doc: serde_json::Value = serde_json::from_str(text).expect("json");
    let d = &doc["defs"][def];
    let obj = if record { &d["record"] } else { d };
    obj["properties"]
        .as_object()
        .expect("properties")
        .keys()
        .cloned()
        .collect()
}

fn check<T: Record>(full: &T, minimal: &T) {
    let catalog = catalog().expect("catalog");
    let rkey = if T::NSID == KEY_NSID {
        "self"
    } else {
        "3kznmn7xqxl22"
    };
    let value = ipld(full);
    catalog
        .validate_record(T::NSID, rkey, &value)
        .unwrap_or_else(|e| panic!("{}: {e}", T::NSID));
    assert_eq!(
        keys(&value),
        schema_props(T::NSID, "main", true),
        "{}: Rust fields = lexicon properties",
        T::NSID
    );
    let min = ipld(minimal);
    catalog
        .validate_record(T::NSID, rkey, &min)
        .unwrap_or_else(|e| panic!("{} minimal: {e}", T::NSID));
    // Dropping any field of the minimal form must break a required rule.
    if let Ipld::Map(m) = &min {
        for k in keys(&min) {
            let mut without = m.clone();
            without.remove(&k);
            assert!(
                catalog
                    .validate_record(T::NSID, rkey, &Ipld::Map(without))
                    .is_err(),
                "{}: {k} is required",
                T::NSID
            );
        }
    }
}

#[test]
fn every_schema_file_is_embedded_and_named_for_its_id() {
    // The directory cargo gives at run time: a shared build directory may hold a binary
    // compiled in another checkout.
    let root = std::path::PathBuf::from(
        std::env::var("CARGO_MANIFEST_DIR")
            .unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_string()),
    )
    .join("schemas");
    let mut on_disk = BTreeSet::new();
    let mut stack = vec![root.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "json") {
                let rel = path
                    .strip_prefix(&root)
                    .expect("under root")
                    .with_extension("");
                on_disk.insert(rel.to_string_lossy().replace('/', "."));
            }
        }
    }
    let embedded: BTreeSet<String> = DOCUMENTS.iter().map(|(n, _)| n.to_string()).collect();
    assert_eq!(on_disk, embedded);
    for (nsid, text) in DOCUMENTS {
        let doc: serde_json::Value = serde_json::from_str(text).expect("json");
        assert_eq!(doc["id"], *nsid);
    }
    let catalog = catalog().expect("every document passes the Lexicon rules");
    for t in RECORD_TYPES {
        assert!(catalog.get(t).is_some(), "{t}");
    }
}

#[test]
fn message() {
    let full = Message {
        sender: DID_A.into(),
        recipient: DID_B.into(),
        content: Content {
            kind: "json".into(),
            text: Some("hi".into()),
            mime_type: Some("application/json".into()),
            data: Some(json!({"a": 1})),
        },
        created_at: NOW.into(),
        sender_handle: Some("a.example.com".into()),
        recipient_handle: Some("b.example.com".into()),
        thread: Some("3kznmn7xqxl22".into()),
        in_reply_to: Some(URI.into()),
        context: Some(vec![URI.into()]),
        priority: Some(3),
        expires_at: Some(NOW.into()),
    };
    let minimal = Message {
        sender: DID_A.into(),
        recipient: DID_B.into(),
        content: Content::text("hi"),
        created_at: NOW.into(),
        ..Message::default()
    };
    check(&full, &minimal);
    let content = &ipld(&full);
    let Ipld::Map(m) = content else { panic!() };
    let mut content_keys = keys(&m["content"]);
    content_keys.insert("blob".into()); // blobs are referenced, not embedded in the Rust type
    assert_eq!(
        content_keys,
        schema_props("agent.comms.defs", "content", false)
    );

    // Out-of-range values are refused by the lexicon.
    let catalog = catalog().expect("catalog");
    let bad = Message {
        priority: Some(9),
        ..minimal.clone()
    };
    assert!(catalog
        .validate_record(Message::NSID, "3kznmn7xqxl22", &ipld(&bad))
        .is_err());
    let bad = Message {
        sender: "not a did".into(),
        ..minimal
    };
    assert!(catalog
        .validate_record(Message::NSID, "3kznmn7xqxl22", &ipld(&bad))
        .is_err());
}

#[test]
fn broadcast() {
    let full = Broadcast {
        sender: DID_A.into(),
        content: Content::text("deploy at noon"),
        created_at: NOW.into(),
        audience: Some(vec!["role:deployer".into()]),
        topic: Some("deploys".into()),
        severity: Some("notice".into()),
        ttl_seconds: Some(3600),
        expires_at: Some(NOW.into()),
    };
    check(
        &full,
        &Broadcast {
            sender: DID_A.into(),
            content: Content::text("x"),
            created_at: NOW.into(),
            ..Broadcast::default()
        },
    );
}

#[test]
fn request_and_response() {
    let full = Request {
        sender: DID_A.into(),
        assignee: DID_B.into(),
        task: "summarize".into(),
        created_at: NOW.into(),
        params: Some(RequestParams {
            schema: Some("agent.tasks.summarize".into()),
            data: Some(json!({"uri": URI})),
        }),
        context: Some(vec![URI.into()]),
        priority: Some(1),
        deadline: Some(NOW.into()),
    };
    check(
        &full,
        &Request {
            sender: DID_A.into(),
            assignee: DID_B.into(),
            task: "t".into(),
            created_at: NOW.into(),
            ..Request::default()
        },
    );
    let Ipld::Map(m) = ipld(&full) else { panic!() };
    assert_eq!(
        keys(&m["params"]),
        schema_props("agent.comms.request", "params", false)
    );

    let full = Response {
        sender: DID_B.into(),
        request: URI.into(),
        status: "error".into(),
        created_at: NOW.into(),
        result: Some(json!({"summary": "…"})),
        error: Some(ResponseError {
            code: "timeout".into(),
            message: "took too long".into(),
            retryable: Some(true),
        }),
        artifacts: Some(vec!["https://example.com/report".into()]),
        metrics: Some(ResponseMetrics {
            duration_ms: Some(1200),
            token_usage: Some(5000),
        }),
    };
    check(
        &full,
        &Response {
            sender: DID_B.into(),
            request: URI.into(),
            status: "ok".into(),
            created_at: NOW.into(),
            ..Response::default()
        },
    );
    let Ipld::Map(m) = ipld(&full) else { panic!() };
    assert_eq!(
        keys(&m["error"]),
        schema_props("agent.comms.response", "error", false)
    );
    assert_eq!(
        keys(&m["metrics"]),
        schema_props("agent.comms.response", "metrics", false)
    );
}

#[test]
fn handoff() {
    let full = Handoff {
        from: DID_A.into(),
        to: DID_B.into(),
        session: "s-1".into(),
        summary: "half done".into(),
        created_at: NOW.into(),
        state: Some(json!({"step": 3})),
        context: Some(vec![URI.into()]),
        artifacts: Some(vec![
            "at://did:plc:ewvi7nxzyoun6zhxrhs64oiz/agent.memory.note/3kznmn7xqxl22".into(),
        ]),
        expires_at: Some(NOW.into()),
    };
    check(
        &full,
        &Handoff {
            from: DID_A.into(),
            to: DID_B.into(),
            session: "s".into(),
            summary: "x".into(),
            created_at: NOW.into(),
            ..Handoff::default()
        },
    );
}

#[test]
fn memory() {
    let full = Note {
        text: "the deploy key rotates monthly".into(),
        created_at: NOW.into(),
        summary: Some("key rotation".into()),
        tags: Some(vec!["ops".into()]),
        source: Some(URI.into()),
    };
    check(
        &full,
        &Note {
            text: "x".into(),
            created_at: NOW.into(),
            ..Note::default()
        },
    );
    let full = Decision {
        decision: "use ed25519".into(),
        created_at: NOW.into(),
        context: Some("new agents".into()),
        options: Some(vec!["k256".into(), "ed25519".into()]),
        rationale: Some("fast".into()),
        status: Some("accepted".into()),
    };
    check(
        &full,
        &Decision {
            decision: "x".into(),
            created_at: NOW.into(),
            ..Decision::default()
        },
    );
}

#[test]
fn envelope_records() {
    let key = EncryptionKey::generate();
    let record = EncryptionKeyRecord {
        public_key: key.public().multikey(),
        created_at: NOW.into(),
    };
    check(&record, &record);

    let pk = key.public();
    let inner = Note {
        text: "secret".into(),
        created_at: NOW.into(),
        ..Note::default()
    }
    .to_cbor()
    .expect("encode");
    let sealed = seal(
        URI,
        Note::NSID,
        NOW,
        &inner,
        &[Recipient {
            did: DID_A,
            key: &pk,
        }],
    )
    .expect("seal");
    check(&sealed, &sealed);
    let Ipld::Map(m) = ipld(&sealed) else {
        panic!()
    };
    let Ipld::List(recipients) = &m["recipients"] else {
        panic!()
    };
    assert_eq!(
        keys(&recipients[0]),
        schema_props(SEALED_NSID, "recipient", false)
    );
    // The published type round-trips through DAG-CBOR.
    let back: atproto::envelope::Sealed =
        from_cbor(&to_cbor(&sealed).expect("encode")).expect("decode");
    assert_eq!(back, sealed);
}
