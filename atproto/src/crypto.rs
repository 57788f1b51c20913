//! Signing keys and signatures: secp256k1 and P-256 ECDSA (atproto's two curves) and
//! Ed25519 (agent-native repos), as `did:key`, Multikey and the legacy DID-document shapes.
//!
//! Verification is the relay's hot path, so each curve uses the fastest well-kept library
//! measured on our hardware (see `benches/protocol.rs` and BENCHMARKS.md): libsecp256k1
//! through `secp256k1`, `ring` for P-256, `ed25519-dalek` for Ed25519. ECDSA signatures must
//! be 64-byte compact and low-S; the low-S rule is checked here, not left to the library.

use std::fmt;

use sha2::{Digest, Sha256};
use thiserror::Error;

/// The signature algorithms accepted for repo signing keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// ECDSA over secp256k1 with SHA-256 (JWT `ES256K`).
    K256,
    /// ECDSA over NIST P-256 with SHA-256 (JWT `ES256`).
    P256,
    /// Ed25519 (JWT `EdDSA`).
    Ed25519,
}

impl Algorithm {
    /// Multicodec code of the public key type.
    pub fn multicodec(self) -> u16 {
        match self {
            Algorithm::K256 => 0xe7,
            Algorithm::P256 => 0x1200,
            Algorithm::Ed25519 => 0xed,
        }
    }

    /// The JWT `alg` name.
    pub fn jwt_alg(self) -> &'static str {
        match self {
            Algorithm::K256 => "ES256K",
            Algorithm::P256 => "ES256",
            Algorithm::Ed25519 => "EdDSA",
        }
    }
}

/// Why a key or signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CryptoError {
    /// The key encoding is not understood.
    #[error("invalid public key: {0}")]
    InvalidKey(&'static str),
    /// The signature is malformed (wrong length, DER, high-S) or does not verify.
    #[error("invalid signature: {0}")]
    InvalidSignature(&'static str),
}

/// A public key able to verify signatures. Parsed once (and for P-256 decompressed once),
/// then reused for every verification.
#[derive(Clone)]
pub enum PublicKey {
    /// secp256k1.
    K256(secp256k1::PublicKey),
    /// P-256, kept compressed (for `did:key`) and uncompressed (for `ring`).
    P256 {
        /// SEC1 compressed point.
        compressed: [u8; 33],
        /// SEC1 uncompressed point, the form `ring` verifies with.
        uncompressed: [u8; 65],
    },
    /// Ed25519.
    Ed25519(ed25519_dalek::VerifyingKey),
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.did_key())
    }
}

impl PartialEq for PublicKey {
    fn eq(&self, other: &Self) -> bool {
        self.algorithm() == other.algorithm() && self.compressed_bytes() == other.compressed_bytes()
    }
}

impl Eq for PublicKey {}

/// Half the order of P-256: a low-S signature has `s <= N_HALF`.
const P256_N_HALF: [u8; 32] = [
    0x7f, 0xff, 0xff, 0xff, 0x80, 0x00, 0x00, 0x00, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xde, 0x73, 0x7d, 0x56, 0xd3, 0x8b, 0xcf, 0x42, 0x79, 0xdc, 0xe5, 0x61, 0x7e, 0x31, 0x92, 0xa8,
];
/// Half the order of secp256k1.
const K256_N_HALF: [u8; 32] = [
    0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0x5d, 0x57, 0x6e, 0x73, 0x57, 0xa4, 0x50, 0x1d, 0xdf, 0xe9, 0x2f, 0x46, 0x68, 0x1b, 0x20, 0xa0,
];

fn varint_prefix(code: u16) -> Vec<u8> {
    let mut out = Vec::with_capacity(3);
    let mut v = code;
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return out;
        }
        out.push(byte | 0x80);
    }
}

impl PublicKey {
    /// Parses raw key bytes: SEC1 (compressed or uncompressed) for ECDSA, 32 bytes for
    /// Ed25519.
    pub fn from_bytes(alg: Algorithm, bytes: &[u8]) -> Result<Self, CryptoError> {
        match alg {
            Algorithm::K256 => secp256k1::PublicKey::from_slice(bytes)
                .map(PublicKey::K256)
                .map_err(|_| CryptoError::InvalidKey("not a secp256k1 point")),
            Algorithm::P256 => {
                let point = p256::PublicKey::from_sec1_bytes(bytes)
                    .map_err(|_| CryptoError::InvalidKey("not a P-256 point"))?;
                use p256::elliptic_curve::sec1::ToEncodedPoint;
                let mut compressed = [0u8; 33];
                compressed.copy_from_slice(point.to_encoded_point(true).as_bytes());
                let mut uncompressed = [0u8; 65];
                uncompressed.copy_from_slice(point.to_encoded_point(false).as_bytes());
                Ok(PublicKey::P256 {
                    compressed,
                    uncompressed,
                })
            }
            Algorithm::Ed25519 => {
                let raw: [u8; 32] = bytes
                    .try_into()
                    .map_err(|_| CryptoError::InvalidKey("Ed25519 key is 32 bytes"))?;
                ed25519_dalek::VerifyingKey::from_bytes(&raw)
                    .map(PublicKey::Ed25519)
                    .map_err(|_| CryptoError::InvalidKey("not an Ed25519 point"))
            }
        }
    }

    /// Parses a `did:key:z…` string.
    pub fn from_did_key(did: &str) -> Result<Self, CryptoError> {
        let mb = did
            .strip_prefix("did:key:")
            .ok_or(CryptoError::InvalidKey("not a did:key"))?;
        Self::from_multikey(mb)
    }

    /// Parses a Multikey `publicKeyMultibase`: base58btc, multicodec-prefixed, compressed.
    pub fn from_multikey(multibase: &str) -> Result<Self, CryptoError> {
        if !multibase.starts_with('z') {
            return Err(CryptoError::InvalidKey("multikey must be base58btc ('z')"));
        }
        let (_, bytes) =
            multibase::decode(multibase).map_err(|_| CryptoError::InvalidKey("bad multibase"))?;
        for alg in [Algorithm::K256, Algorithm::P256, Algorithm::Ed25519] {
            if let Some(key) = bytes.strip_prefix(varint_prefix(alg.multicodec()).as_slice()) {
                return Self::from_bytes(alg, key);
            }
        }
        Err(CryptoError::InvalidKey("unsupported multicodec key type"))
    }

    /// Parses a legacy verification method (`EcdsaSecp256k1VerificationKey2019`,
    /// `EcdsaSecp256r1VerificationKey2019`, `Ed25519VerificationKey2020`): a multibase key
    /// without a multicodec prefix, possibly uncompressed.
    pub fn from_legacy(method_type: &str, multibase: &str) -> Result<Self, CryptoError> {
        let alg = match method_type {
            "EcdsaSecp256k1VerificationKey2019" => Algorithm::K256,
            "EcdsaSecp256r1VerificationKey2019" => Algorithm::P256,
            "Ed25519VerificationKey2020" => Algorithm::Ed25519,
            _ => {
                return Err(CryptoError::InvalidKey(
                    "unsupported verification method type",
                ))
            }
        };
        let (_, bytes) =
            multibase::decode(multibase).map_err(|_| CryptoError::InvalidKey("bad multibase"))?;
        Self::from_bytes(alg, &bytes)
    }

    /// The key's algorithm.
    pub fn algorithm(&self) -> Algorithm {
        match self {
            PublicKey::K256(_) => Algorithm::K256,
            PublicKey::P256 { .. } => Algorithm::P256,
            PublicKey::Ed25519(_) => Algorithm::Ed25519,
        }
    }

    /// Compressed key bytes (33 for ECDSA, 32 for Ed25519).
    pub fn compressed_bytes(&self) -> Vec<u8> {
        match self {
            PublicKey::K256(k) => k.serialize().to_vec(),
            PublicKey::P256 { compressed, .. } => compressed.to_vec(),
            PublicKey::Ed25519(k) => k.to_bytes().to_vec(),
        }
    }

    /// The Multikey form: base58btc of the multicodec-prefixed compressed key.
    pub fn multikey(&self) -> String {
        let mut bytes = varint_prefix(self.algorithm().multicodec());
        bytes.extend(self.compressed_bytes());
        multibase::encode(multibase::Base::Base58Btc, bytes)
    }

    /// The `did:key:` form.
    pub fn did_key(&self) -> String {
        format!("did:key:{}", self.multikey())
    }

    /// Verifies `sig` over `msg` (hashed with SHA-256 for ECDSA).
    pub fn verify(&self, msg: &[u8], sig: &[u8]) -> Result<(), CryptoError> {
        match self {
            PublicKey::K256(key) => {
                let compact = ecdsa_compact(sig, &K256_N_HALF)?;
                let sig = secp256k1::ecdsa::Signature::from_compact(compact)
                    .map_err(|_| CryptoError::InvalidSignature("malformed"))?;
                let digest: [u8; 32] = Sha256::digest(msg).into();
                secp256k1::SECP256K1
                    .verify_ecdsa(&secp256k1::Message::from_digest(digest), &sig, key)
                    .map_err(|_| CryptoError::InvalidSignature("does not verify"))
            }
            PublicKey::P256 { uncompressed, .. } => {
                let compact = ecdsa_compact(sig, &P256_N_HALF)?;
                ring::signature::UnparsedPublicKey::new(
                    &ring::signature::ECDSA_P256_SHA256_FIXED,
                    uncompressed,
                )
                .verify(msg, compact)
                .map_err(|_| CryptoError::InvalidSignature("does not verify"))
            }
            PublicKey::Ed25519(key) => {
                let raw: [u8; 64] = sig
                    .try_into()
                    .map_err(|_| CryptoError::InvalidSignature("not 64 bytes"))?;
                key.verify_strict(msg, &ed25519_dalek::Signature::from_bytes(&raw))
                    .map_err(|_| CryptoError::InvalidSignature("does not verify"))
            }
        }
    }
}

/// Checks the compact form and the low-S rule, returning the signature bytes.
fn ecdsa_compact<'a>(sig: &'a [u8], n_half: &[u8; 32]) -> Result<&'a [u8], CryptoError> {
    if sig.len() != 64 {
        return Err(CryptoError::InvalidSignature(
            "ECDSA signature must be 64-byte compact",
        ));
    }
    if sig[32..] > n_half[..] {
        return Err(CryptoError::InvalidSignature("high-S signature"));
    }
    Ok(sig)
}

/// A private signing key. Signatures come out compact and, for ECDSA, low-S.
pub enum Keypair {
    /// secp256k1.
    K256(secp256k1::SecretKey),
    /// P-256.
    P256(p256::ecdsa::SigningKey),
    /// Ed25519.
    Ed25519(ed25519_dalek::SigningKey),
}

impl fmt::Debug for Keypair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Keypair({})", self.public_key().did_key())
    }
}

impl Keypair {
    /// A fresh random key.
    pub fn generate(alg: Algorithm) -> Self {
        let mut rng = rand::thread_rng();
        match alg {
            Algorithm::K256 => Keypair::K256(secp256k1::SecretKey::new(&mut rng)),
            Algorithm::P256 => Keypair::P256(p256::ecdsa::SigningKey::random(&mut rng)),
            Algorithm::Ed25519 => Keypair::Ed25519(ed25519_dalek::SigningKey::generate(&mut rng)),
        }
    }

    /// A key from its 32 secret bytes.
    pub fn from_secret_bytes(alg: Algorithm, bytes: &[u8]) -> Result<Self, CryptoError> {
        let bad = || CryptoError::InvalidKey("bad secret key");
        Ok(match alg {
            Algorithm::K256 => {
                Keypair::K256(secp256k1::SecretKey::from_slice(bytes).map_err(|_| bad())?)
            }
            Algorithm::P256 => {
                Keypair::P256(p256::ecdsa::SigningKey::from_slice(bytes).map_err(|_| bad())?)
            }
            Algorithm::Ed25519 => {
                let raw: [u8; 32] = bytes.try_into().map_err(|_| bad())?;
                Keypair::Ed25519(ed25519_dalek::SigningKey::from_bytes(&raw))
            }
        })
    }

    /// The 32 secret bytes, for storing the key.
    pub fn secret_bytes(&self) -> [u8; 32] {
        match self {
            Keypair::K256(k) => k.secret_bytes(),
            Keypair::P256(k) => k.to_bytes().into(),
            Keypair::Ed25519(k) => k.to_bytes(),
        }
    }

    /// The matching public key.
    pub fn public_key(&self) -> PublicKey {
        match self {
            Keypair::K256(k) => PublicKey::K256(k.public_key(secp256k1::SECP256K1)),
            Keypair::P256(k) => {
                let point = k.verifying_key().to_encoded_point(true);
                PublicKey::from_bytes(Algorithm::P256, point.as_bytes())
                    .expect("a signing key's public point is valid")
            }
            Keypair::Ed25519(k) => PublicKey::Ed25519(k.verifying_key()),
        }
    }

    /// Signs `msg` (hashed with SHA-256 for ECDSA): 64 bytes, low-S for ECDSA.
    pub fn sign(&self, msg: &[u8]) -> Vec<u8> {
        match self {
            Keypair::K256(k) => {
                let digest: [u8; 32] = Sha256::digest(msg).into();
                let sig =
                    secp256k1::SECP256K1.sign_ecdsa(&secp256k1::Message::from_digest(digest), k);
                sig.serialize_compact().to_vec()
            }
            Keypair::P256(k) => {
                use p256::ecdsa::signature::Signer;
                let sig: p256::ecdsa::Signature = k.sign(msg);
                sig.normalize_s().unwrap_or(sig).to_bytes().to_vec()
            }
            Keypair::Ed25519(k) => {
                use ed25519_dalek::Signer;
                k.sign(msg).to_bytes().to_vec()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_verify_every_algorithm() {
        for alg in [Algorithm::K256, Algorithm::P256, Algorithm::Ed25519] {
            let kp = Keypair::generate(alg);
            let pk = kp.public_key();
            for i in 0..20u8 {
                let msg = [i; 40];
                let sig = kp.sign(&msg);
                assert_eq!(sig.len(), 64);
                pk.verify(&msg, &sig).expect("own signature verifies");
                let mut bad = sig.clone();
                bad[5] ^= 1;
                assert!(pk.verify(&msg, &bad).is_err());
                assert!(pk.verify(b"other", &sig).is_err());
            }
            let again = PublicKey::from_did_key(&pk.did_key()).expect("did:key round trip");
            assert_eq!(again, pk);
            let restored = Keypair::from_secret_bytes(alg, &kp.secret_bytes()).expect("restore");
            assert_eq!(restored.public_key(), pk);
        }
    }
}
