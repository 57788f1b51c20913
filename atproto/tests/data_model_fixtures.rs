//! `data-model/*`: JSON ⇄ DAG-CBOR round trips to the exact bytes and CIDs; invalid data is
//! refused; valid data accepted.

mod common;

use atproto::data::{cid_for_cbor, from_cbor, ipld_to_json, json_to_ipld, to_cbor};
use atproto::Ipld;
use base64::Engine;

#[test]
fn fixtures_round_trip_to_exact_bytes_and_cids() {
    let fixtures = common::read_json("data-model/data-model-fixtures.json");
    let fixtures = fixtures.as_array().expect("array");
    assert!(!fixtures.is_empty());
    for f in fixtures {
        let json = &f["json"];
        let want_cbor = base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(
                f["cbor_base64"]
                    .as_str()
                    .expect("cbor_base64")
                    .trim_end_matches('='),
            )
            .expect("base64");
        let want_cid = f["cid"].as_str().expect("cid");

        let value = json_to_ipld(json).expect("fixture JSON is valid data");
        let cbor = to_cbor(&value).expect("encode");
        assert_eq!(cbor, want_cbor, "CBOR bytes for {json}");
        assert_eq!(cid_for_cbor(&cbor).to_string(), want_cid);

        let decoded: Ipld = from_cbor(&want_cbor).expect("decode");
        assert_eq!(decoded, value);
        assert_eq!(&ipld_to_json(&decoded), json, "JSON round trip");
    }
}

#[test]
fn invalid_data_is_refused() {
    let fixtures = common::read_json("data-model/data-model-invalid.json");
    let fixtures = fixtures.as_array().expect("array");
    assert!(fixtures.len() >= 10);
    for f in fixtures {
        let result = json_to_ipld(&f["json"]).and_then(|v| match v {
            Ipld::Map(_) => Ok(v),
            _ => Err(atproto::data::DataError::Invalid(
                "top level must be an object",
            )),
        });
        assert!(result.is_err(), "accepted invalid data: {}", f["note"]);
    }
}

#[test]
fn valid_data_is_accepted() {
    let fixtures = common::read_json("data-model/data-model-valid.json");
    let fixtures = fixtures.as_array().expect("array");
    assert!(!fixtures.is_empty());
    for f in fixtures {
        let value = json_to_ipld(&f["json"])
            .unwrap_or_else(|e| panic!("refused valid data {}: {e}", f["note"]));
        let bytes = to_cbor(&value).expect("encode");
        let back: Ipld = from_cbor(&bytes).expect("decode");
        assert_eq!(back, value);
    }
}
