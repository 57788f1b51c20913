//! Record-building helpers shared by the indexer's tests.

#![allow(dead_code)]

pub mod suite;

use atproto::envelope::{seal, Recipient};
use lexicons::Record;

/// A record's DAG-CBOR from its JSON form.
pub fn cbor(v: &serde_json::Value) -> Vec<u8> {
    atproto::data::to_cbor(&atproto::data::json_to_ipld(v).expect("data")).expect("cbor")
}

/// `inner` sealed for `to`, bound to `author`'s `agent.envelope.sealed/{rkey}`, as the
/// DAG-CBOR of the sealed record.
pub fn sealed_record(
    author: &str,
    rkey: &str,
    created_at: &str,
    inner: &serde_json::Value,
    to: &[Recipient<'_>],
) -> Vec<u8> {
    let uri = format!("at://{author}/agent.envelope.sealed/{rkey}");
    let collection = inner["$type"].as_str().expect("$type");
    seal(&uri, collection, created_at, &cbor(inner), to)
        .expect("seal")
        .to_cbor()
        .expect("cbor")
}
