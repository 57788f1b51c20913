//! `crypto/signature-fixtures.json` and `crypto/w3c_didkey_*.json`.

mod common;

use atproto::crypto::{Algorithm, Keypair, PublicKey};
use atproto::identity::DidDocument;
use base64::Engine;

fn b64(s: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(s.trim_end_matches('='))
        .expect("base64")
}

#[test]
fn signature_fixtures() {
    let cases = common::read_json("crypto/signature-fixtures.json");
    let cases = cases.as_array().expect("array");
    assert!(cases.len() >= 6);
    for c in cases {
        let name = c["comment"].as_str().expect("comment");
        let msg = b64(c["messageBase64"].as_str().expect("message"));
        let sig = b64(c["signatureBase64"].as_str().expect("signature"));
        let valid = c["validSignature"].as_bool().expect("validSignature");

        let from_did = PublicKey::from_did_key(c["publicKeyDid"].as_str().expect("did"))
            .expect("did:key parses");
        let from_legacy = PublicKey::from_legacy(
            c["didDocSuite"].as_str().expect("suite"),
            c["publicKeyMultibase"].as_str().expect("multibase"),
        )
        .expect("legacy multibase parses");
        assert_eq!(
            from_did, from_legacy,
            "{name}: both key shapes name the same key"
        );
        let want_alg = match c["algorithm"].as_str().expect("alg") {
            "ES256" => Algorithm::P256,
            "ES256K" => Algorithm::K256,
            other => panic!("unexpected algorithm {other}"),
        };
        assert_eq!(from_did.algorithm(), want_alg);

        // Also through a DID document in each shape.
        for (kind, mb) in [
            ("Multikey", from_did.multikey()),
            (
                c["didDocSuite"].as_str().expect("suite"),
                c["publicKeyMultibase"].as_str().expect("mb").to_string(),
            ),
        ] {
            let doc = serde_json::json!({
                "id": "did:plc:fixture",
                "verificationMethod": [{"id": "did:plc:fixture#atproto", "type": kind, "controller": "did:plc:fixture", "publicKeyMultibase": mb}],
            });
            let doc =
                DidDocument::parse("did:plc:fixture", doc.to_string().as_bytes()).expect("doc");
            assert_eq!(
                doc.signing_key().expect("key"),
                from_did,
                "{name}: {kind} document"
            );
        }

        let result = from_did.verify(&msg, &sig);
        assert_eq!(result.is_ok(), valid, "{name}: {result:?}");
    }
}

#[test]
fn w3c_did_key_k256() {
    let cases = common::read_json("crypto/w3c_didkey_K256.json");
    let cases = cases.as_array().expect("array");
    assert!(!cases.is_empty());
    for c in cases {
        let secret = hex(c["privateKeyBytesHex"].as_str().expect("hex"));
        let kp = Keypair::from_secret_bytes(Algorithm::K256, &secret).expect("secret key");
        assert_eq!(
            kp.public_key().did_key(),
            c["publicDidKey"].as_str().expect("did")
        );
    }
}

#[test]
fn w3c_did_key_p256() {
    let cases = common::read_json("crypto/w3c_didkey_P256.json");
    let cases = cases.as_array().expect("array");
    assert!(!cases.is_empty());
    for c in cases {
        let secret = bs58(c["privateKeyBytesBase58"].as_str().expect("base58"));
        let kp = Keypair::from_secret_bytes(Algorithm::P256, &secret).expect("secret key");
        assert_eq!(
            kp.public_key().did_key(),
            c["publicDidKey"].as_str().expect("did")
        );
    }
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

fn bs58(s: &str) -> Vec<u8> {
    multibase::Base::Base58Btc.decode(s).expect("base58")
}
