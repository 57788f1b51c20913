//! `lexicon/*`: schema documents accepted or refused, and record data validated against the
//! catalog, by the JSON-driven validator.

mod common;

use atproto::data::json_to_ipld;
use atproto::lexicon::{Catalog, LexiconDoc};

fn catalog() -> Catalog {
    let mut catalog = Catalog::new();
    for name in [
        "record",
        "query",
        "procedure",
        "subscription",
        "permission-set",
    ] {
        let doc = common::read_json(&format!("lexicon/catalog/{name}.json"));
        catalog
            .add(&doc)
            .unwrap_or_else(|e| panic!("catalog/{name}.json: {e}"));
    }
    catalog
}

#[test]
fn valid_lexicons_are_accepted() {
    let cases = common::read_json("lexicon/lexicon-valid.json");
    for c in cases.as_array().expect("array") {
        LexiconDoc::parse(&c["lexicon"]).unwrap_or_else(|e| panic!("{}: {e}", c["name"]));
    }
}

#[test]
fn invalid_lexicons_are_refused() {
    let cases = common::read_json("lexicon/lexicon-invalid.json");
    let cases = cases.as_array().expect("array");
    assert!(cases.len() >= 7);
    for c in cases {
        assert!(
            LexiconDoc::parse(&c["lexicon"]).is_err(),
            "accepted: {}",
            c["name"]
        );
    }
}

#[test]
fn valid_records_pass() {
    let catalog = catalog();
    let cases = common::read_json("lexicon/record-data-valid.json");
    for c in cases.as_array().expect("array") {
        let data = json_to_ipld(&c["data"]).expect("data model");
        let collection = c["data"]["$type"].as_str().expect("$type");
        catalog
            .validate_record(collection, c["rkey"].as_str().expect("rkey"), &data)
            .unwrap_or_else(|e| panic!("{}: {e}", c["name"]));
    }
}

#[test]
fn invalid_records_fail() {
    let catalog = catalog();
    let cases = common::read_json("lexicon/record-data-invalid.json");
    let cases = cases.as_array().expect("array");
    assert!(cases.len() >= 40);
    for c in cases {
        let rkey = c["rkey"].as_str().expect("rkey");
        let result = json_to_ipld(&c["data"])
            .map_err(|e| e.to_string())
            .and_then(|data| {
                catalog
                    .validate_record("example.lexicon.record", rkey, &data)
                    .map_err(|e| e.to_string())
            });
        assert!(result.is_err(), "accepted invalid record: {}", c["name"]);
    }
}
