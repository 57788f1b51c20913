//! The privacy envelope: round trips, wrong recipients, tampering, and moved ciphertexts.

use atproto::envelope::{open, seal, EncryptionKey, EncryptionPublicKey, EnvelopeError, Recipient};

const URI: &str = "at://did:plc:author/agent.envelope.sealed/3kznmn7xqxl22";
const WHEN: &str = "2026-11-24T08:00:00.000Z";

fn agents(n: usize) -> Vec<(String, EncryptionKey, EncryptionPublicKey)> {
    (0..n)
        .map(|i| {
            let k = EncryptionKey::generate();
            let p = k.public();
            (format!("did:plc:agent{i:03}"), k, p)
        })
        .collect()
}

fn recipients(a: &[(String, EncryptionKey, EncryptionPublicKey)]) -> Vec<Recipient<'_>> {
    a.iter()
        .map(|(did, _, key)| Recipient { did, key })
        .collect()
}

#[test]
fn round_trip_one_and_fifty_recipients() {
    for n in [1, 50] {
        let who = agents(n);
        let msg = format!("hello {n} agents").into_bytes();
        let sealed = seal(URI, "agent.comms.message", WHEN, &msg, &recipients(&who)).expect("seal");
        assert_eq!(sealed.recipients.len(), n);
        for (did, key, _) in &who {
            assert_eq!(open(&sealed, URI, did, key).expect("recipient opens"), msg);
        }
    }
}

#[test]
fn wrong_recipient_fails() {
    let who = agents(2);
    let outsider = EncryptionKey::generate();
    let sealed = seal(
        URI,
        "agent.comms.message",
        WHEN,
        b"secret",
        &recipients(&who[..1]),
    )
    .expect("seal");
    assert_eq!(
        open(&sealed, URI, &who[1].0, &who[1].1),
        Err(EnvelopeError::NotRecipient)
    );
    // Claiming a recipient's DID without its key fails too.
    assert_eq!(
        open(&sealed, URI, &who[0].0, &outsider),
        Err(EnvelopeError::Decrypt)
    );
    // A recipient's wrap handed to another DID does not open for them.
    let mut relabelled = sealed.clone();
    relabelled.recipients[0].did = who[1].0.clone();
    assert!(open(&relabelled, URI, &who[1].0, &who[1].1).is_err());
}

#[test]
fn any_flipped_bit_fails() {
    let who = agents(1);
    let (did, key, _) = &who[0];
    let sealed = seal(
        URI,
        "agent.comms.message",
        WHEN,
        b"do not touch",
        &recipients(&who),
    )
    .expect("seal");
    for i in 0..sealed.ciphertext.len() * 8 {
        let mut t = sealed.clone();
        t.ciphertext[i / 8] ^= 1 << (i % 8);
        assert!(open(&t, URI, did, key).is_err(), "ciphertext bit {i}");
    }
    for i in 0..sealed.nonce.len() * 8 {
        let mut t = sealed.clone();
        t.nonce[i / 8] ^= 1 << (i % 8);
        assert!(open(&t, URI, did, key).is_err(), "nonce bit {i}");
    }
    for i in 0..sealed.recipients[0].key.len() * 8 {
        let mut t = sealed.clone();
        t.recipients[0].key[i / 8] ^= 1 << (i % 8);
        assert!(open(&t, URI, did, key).is_err(), "wrapped key bit {i}");
    }
    let mut t = sealed.clone();
    t.collection = "agent.memory.note".into();
    assert!(
        open(&t, URI, did, key).is_err(),
        "plaintext collection is bound"
    );
    let mut t = sealed.clone();
    t.created_at = "2026-11-24T08:00:01.000Z".into();
    assert!(
        open(&t, URI, did, key).is_err(),
        "plaintext createdAt is bound"
    );
}

#[test]
fn ciphertext_moved_to_another_record_fails() {
    let who = agents(1);
    let (did, key, _) = &who[0];
    let sealed = seal(
        URI,
        "agent.comms.message",
        WHEN,
        b"bound",
        &recipients(&who),
    )
    .expect("seal");
    let other = "at://did:plc:author/agent.envelope.sealed/3kznmn7xqxl23";
    assert_eq!(open(&sealed, other, did, key), Err(EnvelopeError::Decrypt));
    let other_author = "at://did:plc:mallory/agent.envelope.sealed/3kznmn7xqxl22";
    assert_eq!(
        open(&sealed, other_author, did, key),
        Err(EnvelopeError::Decrypt)
    );
}

#[test]
fn public_key_multikey_round_trip() {
    let k = EncryptionKey::generate();
    let mk = k.public().multikey();
    assert!(mk.starts_with('z'));
    assert_eq!(
        EncryptionPublicKey::from_multikey(&mk).expect("parse"),
        k.public()
    );
    assert_eq!(EncryptionKey::from_bytes(k.to_bytes()).public(), k.public());
}
