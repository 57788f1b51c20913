//! The privacy envelope: sealing a record for named recipients.
//!
//! The record is encrypted once with AES-256-GCM under a fresh 32-byte data key (DEK). For
//! each recipient the DEK is wrapped ECIES-style: an ephemeral X25519 key, ECDH with the
//! recipient's X25519 key, HKDF-SHA256 (random 16-byte salt, info
//! `atproto-agent-network:dek`) to a wrapping key, AES-256-GCM over the DEK, packed as
//! `version (1) | salt (16) | nonce (12) | ephemeral public key (32) | ciphertext (48)`.
//!
//! Binding: the content's associated data is the DAG-CBOR of the record's AT-URI and every
//! field left in plaintext (inner collection, recipients, createdAt), and each wrap's
//! associated data is the AT-URI, that recipient's DID and the ephemeral key. A ciphertext moved to another
//! record, a recipient list edited, or a wrap handed to another recipient fails to open.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use hkdf::Hkdf;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use thiserror::Error;
use x25519_dalek::{PublicKey as XPublic, StaticSecret};

/// The `$type` of a sealed record.
pub const SEALED_TYPE: &str = "agent.envelope.sealed";
/// Envelope format version (first byte of each wrapped key).
pub const WRAP_VERSION: u8 = 1;
/// HKDF info string for the wrapping key.
pub const HKDF_INFO: &[u8] = b"atproto-agent-network:dek";
/// Multicodec code of an X25519 public key.
pub const X25519_MULTICODEC: [u8; 2] = [0xec, 0x01];
/// Most recipients one record may name.
pub const MAX_RECIPIENTS: usize = 256;
/// Largest plaintext sealed, in bytes (records are small; blobs travel separately).
pub const MAX_PLAINTEXT: usize = 1_000_000;
const WRAP_LEN: usize = 1 + 16 + 12 + 32 + 48;

/// Why sealing or opening failed. Opening failures are deliberately not more specific.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EnvelopeError {
    /// Not addressed to this recipient.
    #[error("not a recipient of this record")]
    NotRecipient,
    /// Authentication failed: wrong key, tampered data, or moved to another record.
    #[error("envelope does not open")]
    Decrypt,
    /// Structurally invalid input.
    #[error("malformed envelope: {0}")]
    Malformed(&'static str),
}

/// An agent's X25519 key for receiving sealed records.
#[derive(Clone)]
pub struct EncryptionKey(StaticSecret);

impl std::fmt::Debug for EncryptionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EncryptionKey({})", self.public().multikey())
    }
}

impl EncryptionKey {
    /// A fresh random key.
    pub fn generate() -> Self {
        EncryptionKey(StaticSecret::random_from_rng(rand::thread_rng()))
    }

    /// A key from its 32 secret bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        EncryptionKey(StaticSecret::from(bytes))
    }

    /// The 32 secret bytes, for storing the key.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    /// The public half, to publish.
    pub fn public(&self) -> EncryptionPublicKey {
        EncryptionPublicKey(XPublic::from(&self.0).to_bytes())
    }
}

/// The private key as kept on disk: `{"did", "x25519_secret": base64}`, mode 0600.
#[derive(Serialize, Deserialize)]
struct KeyFile {
    did: String,
    x25519_secret: String,
}

impl EncryptionKey {
    /// The secret as base64, the form the key file holds and `--appview-key` takes.
    pub fn to_base64(&self) -> String {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(self.to_bytes())
    }

    /// Parses [`EncryptionKey::to_base64`]'s form.
    pub fn from_base64(text: &str) -> Result<Self, String> {
        use base64::Engine;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .map_err(|e| format!("not base64: {e}"))?;
        let raw: [u8; 32] = bytes
            .try_into()
            .map_err(|_| "secret is not 32 bytes".to_string())?;
        Ok(EncryptionKey::from_bytes(raw))
    }

    /// Reads the key kept for `did` at `path`.
    pub fn load(path: &std::path::Path, did: &str) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
        let file: KeyFile = serde_json::from_str(&text).map_err(|e| e.to_string())?;
        if file.did != did {
            return Err(format!("holds the key of {}, not {did}", file.did));
        }
        EncryptionKey::from_base64(&file.x25519_secret)
    }

    /// Writes the key for `did` at `path`, readable by its owner only.
    pub fn save(&self, path: &std::path::Path, did: &str) -> Result<(), String> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        }
        let file = KeyFile {
            did: did.into(),
            x25519_secret: self.to_base64(),
        };
        std::fs::write(
            path,
            serde_json::to_string_pretty(&file).map_err(|e| e.to_string())?,
        )
        .map_err(|e| e.to_string())?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// The key kept for `did` at `path`, created (and saved) if there is none.
    pub fn load_or_create(path: &std::path::Path, did: &str) -> Result<Self, String> {
        match Self::load(path, did) {
            Ok(k) => Ok(k),
            Err(_) if !path.exists() => {
                let k = EncryptionKey::generate();
                k.save(path, did)?;
                Ok(k)
            }
            Err(e) => Err(e),
        }
    }
}

/// A recipient's published X25519 key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EncryptionPublicKey(pub [u8; 32]);

impl EncryptionPublicKey {
    /// Multibase (base58btc) of the multicodec-prefixed key.
    pub fn multikey(&self) -> String {
        let mut bytes = X25519_MULTICODEC.to_vec();
        bytes.extend_from_slice(&self.0);
        multibase::encode(multibase::Base::Base58Btc, bytes)
    }

    /// Parses the multikey form.
    pub fn from_multikey(s: &str) -> Result<Self, EnvelopeError> {
        let (base, bytes) =
            multibase::decode(s).map_err(|_| EnvelopeError::Malformed("multibase"))?;
        if base != multibase::Base::Base58Btc {
            return Err(EnvelopeError::Malformed("X25519 key must be base58btc"));
        }
        let raw = bytes
            .strip_prefix(X25519_MULTICODEC.as_slice())
            .ok_or(EnvelopeError::Malformed("not an X25519 multikey"))?;
        Ok(EncryptionPublicKey(
            raw.try_into()
                .map_err(|_| EnvelopeError::Malformed("key length"))?,
        ))
    }
}

/// One recipient's wrapped data key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WrappedKey {
    /// The recipient.
    pub did: String,
    /// `version | salt | nonce | ephemeral public key | ciphertext`.
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
}

/// A sealed record, as stored in the author's repo (`$type` [`SEALED_TYPE`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Sealed {
    /// The inner record's collection NSID.
    pub collection: String,
    /// Who can open it, with their wrapped keys.
    pub recipients: Vec<WrappedKey>,
    /// Content nonce.
    #[serde(with = "serde_bytes")]
    pub nonce: Vec<u8>,
    /// The encrypted DAG-CBOR of the inner record.
    #[serde(with = "serde_bytes")]
    pub ciphertext: Vec<u8>,
    /// When it was sealed.
    pub created_at: String,
}

impl Sealed {
    /// The recipients' DIDs.
    pub fn recipient_dids(&self) -> impl Iterator<Item = &str> {
        self.recipients.iter().map(|r| r.did.as_str())
    }

    /// Private: sealed for its author alone.
    pub fn is_private_to(&self, author: &str) -> bool {
        self.recipients.iter().all(|r| r.did == author)
    }
}

/// Someone a record is sealed for.
#[derive(Debug, Clone, Copy)]
pub struct Recipient<'a> {
    /// Their DID.
    pub did: &'a str,
    /// Their published X25519 key.
    pub key: &'a EncryptionPublicKey,
}

#[derive(Serialize)]
struct ContentAad<'a> {
    uri: &'a str,
    collection: &'a str,
    recipients: Vec<&'a str>,
    #[serde(rename = "createdAt")]
    created_at: &'a str,
}

fn content_aad(
    uri: &str,
    collection: &str,
    recipients: Vec<&str>,
    created_at: &str,
) -> Result<Vec<u8>, EnvelopeError> {
    crate::data::to_cbor(&ContentAad {
        uri,
        collection,
        recipients,
        created_at,
    })
    .map_err(|_| EnvelopeError::Malformed("associated data"))
}

/// A wrap is bound to the record, to its recipient, and to the exact ephemeral key bytes
/// (X25519 ignores the top bit of a public key, so without this a flipped bit would pass).
fn wrap_aad(uri: &str, did: &str, ephemeral: &[u8; 32]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(uri.len() + did.len() + 34);
    aad.extend_from_slice(uri.as_bytes());
    aad.push(0);
    aad.extend_from_slice(did.as_bytes());
    aad.push(0);
    aad.extend_from_slice(ephemeral);
    aad
}

fn wrapping_key(shared: &[u8; 32], salt: &[u8]) -> Aes256Gcm {
    let mut okm = [0u8; 32];
    Hkdf::<Sha256>::new(Some(salt), shared)
        .expand(HKDF_INFO, &mut okm)
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    Aes256Gcm::new(&okm.into())
}

/// Seals `plaintext` (the inner record's DAG-CBOR) for `recipients`, bound to the record
/// that will hold it (`uri`, the sealed record's own AT-URI).
pub fn seal(
    uri: &str,
    collection: &str,
    created_at: &str,
    plaintext: &[u8],
    recipients: &[Recipient<'_>],
) -> Result<Sealed, EnvelopeError> {
    if recipients.is_empty() || recipients.len() > MAX_RECIPIENTS {
        return Err(EnvelopeError::Malformed("1 to 256 recipients"));
    }
    if plaintext.len() > MAX_PLAINTEXT {
        return Err(EnvelopeError::Malformed("plaintext too large"));
    }
    let mut rng = rand::thread_rng();
    let mut dek = [0u8; 32];
    rng.fill_bytes(&mut dek);
    let mut nonce = [0u8; 12];
    rng.fill_bytes(&mut nonce);
    let dids: Vec<&str> = recipients.iter().map(|r| r.did).collect();
    let aad = content_aad(uri, collection, dids, created_at)?;
    let ciphertext = Aes256Gcm::new(&dek.into())
        .encrypt(
            &Nonce::from(nonce),
            Payload {
                msg: plaintext,
                aad: &aad,
            },
        )
        .map_err(|_| EnvelopeError::Malformed("encrypt"))?;

    let mut wrapped = Vec::with_capacity(recipients.len());
    for r in recipients {
        let eph = StaticSecret::random_from_rng(&mut rng);
        let eph_pub = XPublic::from(&eph);
        let shared = eph.diffie_hellman(&XPublic::from(r.key.0));
        let mut salt = [0u8; 16];
        rng.fill_bytes(&mut salt);
        let mut wnonce = [0u8; 12];
        rng.fill_bytes(&mut wnonce);
        let sealed_dek = wrapping_key(shared.as_bytes(), &salt)
            .encrypt(
                &Nonce::from(wnonce),
                Payload {
                    msg: &dek,
                    aad: &wrap_aad(uri, r.did, eph_pub.as_bytes()),
                },
            )
            .map_err(|_| EnvelopeError::Malformed("wrap"))?;
        let mut key = Vec::with_capacity(WRAP_LEN);
        key.push(WRAP_VERSION);
        key.extend_from_slice(&salt);
        key.extend_from_slice(&wnonce);
        key.extend_from_slice(eph_pub.as_bytes());
        key.extend_from_slice(&sealed_dek);
        wrapped.push(WrappedKey {
            did: r.did.to_string(),
            key,
        });
    }
    Ok(Sealed {
        collection: collection.to_string(),
        recipients: wrapped,
        nonce: nonce.to_vec(),
        ciphertext,
        created_at: created_at.to_string(),
    })
}

/// Opens a sealed record found at `uri`, as recipient `did` holding `key`.
pub fn open(
    sealed: &Sealed,
    uri: &str,
    did: &str,
    key: &EncryptionKey,
) -> Result<Vec<u8>, EnvelopeError> {
    if sealed.recipients.len() > MAX_RECIPIENTS {
        return Err(EnvelopeError::Malformed("too many recipients"));
    }
    let wrap = sealed
        .recipients
        .iter()
        .find(|r| r.did == did)
        .ok_or(EnvelopeError::NotRecipient)?;
    let w = &wrap.key;
    if w.len() != WRAP_LEN || w[0] != WRAP_VERSION || sealed.nonce.len() != 12 {
        return Err(EnvelopeError::Malformed("wrapped key layout"));
    }
    let (salt, rest) = w[1..].split_at(16);
    let (wnonce, rest) = rest.split_at(12);
    let (eph, sealed_dek) = rest.split_at(32);
    let eph: [u8; 32] = eph
        .try_into()
        .map_err(|_| EnvelopeError::Malformed("ephemeral key"))?;
    let wnonce: [u8; 12] = wnonce
        .try_into()
        .map_err(|_| EnvelopeError::Malformed("nonce"))?;
    let nonce: [u8; 12] = sealed
        .nonce
        .as_slice()
        .try_into()
        .map_err(|_| EnvelopeError::Malformed("nonce"))?;
    let shared = key.0.diffie_hellman(&XPublic::from(eph));
    let dek = wrapping_key(shared.as_bytes(), salt)
        .decrypt(
            &Nonce::from(wnonce),
            Payload {
                msg: sealed_dek,
                aad: &wrap_aad(uri, did, &eph),
            },
        )
        .map_err(|_| EnvelopeError::Decrypt)?;
    let dek: [u8; 32] = dek.try_into().map_err(|_| EnvelopeError::Decrypt)?;
    let aad = content_aad(
        uri,
        &sealed.collection,
        sealed.recipient_dids().collect(),
        &sealed.created_at,
    )?;
    Aes256Gcm::new(&dek.into())
        .decrypt(
            &Nonce::from(nonce),
            Payload {
                msg: &sealed.ciphertext,
                aad: &aad,
            },
        )
        .map_err(|_| EnvelopeError::Decrypt)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_round_trip_through_base64_and_bad_ones_are_refused() {
        let key = EncryptionKey::generate();
        let text = key.to_base64();
        let back = EncryptionKey::from_base64(&format!(" {text}\n")).expect("parses");
        assert_eq!(back.public(), key.public());
        assert!(EncryptionKey::from_base64("not base64!").is_err());
        // 31 bytes: refused, not padded.
        assert!(
            EncryptionKey::from_base64("AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHw==").is_err()
        );
    }
}
