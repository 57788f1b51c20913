//! atproto inter-service authentication: short-lived JWTs signed with the caller's repo
//! signing key (ES256K, ES256 or EdDSA), with the called service's DID as `aud` and the
//! XRPC method as `lxm`. A PDS mints them with `com.atproto.server.getServiceAuth`; the
//! appview verifies them against the caller's DID document.

use base64::Engine;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::crypto::{Algorithm, Keypair, PublicKey};
use crate::identity::{CachingResolver, DidResolver};

/// Longest token accepted, in bytes.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;
/// Clock skew tolerated on `exp` and `iat`, in seconds.
pub const CLOCK_SKEW_SECS: i64 = 30;
/// Longest lifetime accepted for a token, in seconds (PDSes mint 60 s by default and allow
/// up to an hour).
pub const MAX_LIFETIME_SECS: i64 = 3600;

/// Why a token was refused. Callers see only "authentication failed"; the reason is logged.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AuthError {
    /// Not three base64url parts of JSON, or too long.
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    /// `alg` unknown, or not the algorithm of the issuer's key.
    #[error("token algorithm does not match the issuer's key")]
    Algorithm,
    /// Expired, not yet valid, or valid for too long.
    #[error("token expired or not yet valid")]
    Expired,
    /// Meant for another service.
    #[error("token audience is another service")]
    Audience,
    /// Meant for another method.
    #[error("token is for another method")]
    Method,
    /// The issuer could not be resolved.
    #[error("issuer could not be resolved: {0}")]
    Issuer(String),
    /// The signature does not verify, even after re-resolving the issuer.
    #[error("bad token signature")]
    Signature,
}

#[derive(Debug, Serialize, Deserialize)]
struct Header {
    alg: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    typ: Option<String>,
}

/// The claims of a verified token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The caller: a DID, possibly with a `#service` fragment.
    pub iss: String,
    /// The service called.
    pub aud: String,
    /// Expiry, seconds since the epoch.
    pub exp: i64,
    /// Issued at, seconds since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<i64>,
    /// The XRPC method the token is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lxm: Option<String>,
    /// A nonce.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
}

impl Claims {
    /// The caller's DID (the issuer without a fragment).
    pub fn did(&self) -> &str {
        self.iss.split('#').next().unwrap_or(&self.iss)
    }
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
}

fn algorithm(name: &str) -> Result<Algorithm, AuthError> {
    match name {
        "ES256K" => Ok(Algorithm::K256),
        "ES256" => Ok(Algorithm::P256),
        "EdDSA" => Ok(Algorithm::Ed25519),
        _ => Err(AuthError::Algorithm),
    }
}

/// Mints a token (what a PDS's `getServiceAuth` returns), for agents that hold their own
/// repo key and for tests.
pub fn mint(key: &Keypair, claims: &Claims) -> String {
    let header = Header {
        alg: key.public_key().algorithm().jwt_alg().to_string(),
        typ: Some("JWT".into()),
    };
    let h = b64().encode(serde_json::to_vec(&header).unwrap_or_default());
    let c = b64().encode(serde_json::to_vec(claims).unwrap_or_default());
    let input = format!("{h}.{c}");
    let sig = b64().encode(key.sign(input.as_bytes()));
    format!("{input}.{sig}")
}

/// A token split and decoded, not yet verified.
#[derive(Debug, Clone)]
pub struct Unverified {
    /// The algorithm named in the header.
    pub algorithm: Algorithm,
    /// The claims.
    pub claims: Claims,
    signing_input: String,
    signature: Vec<u8>,
}

impl Unverified {
    /// Splits and decodes a token.
    pub fn parse(token: &str) -> Result<Self, AuthError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(AuthError::Malformed("too long"));
        }
        let mut parts = token.split('.');
        let (Some(h), Some(c), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(AuthError::Malformed("not three parts"));
        };
        let header: Header = serde_json::from_slice(
            &b64()
                .decode(h)
                .map_err(|_| AuthError::Malformed("header encoding"))?,
        )
        .map_err(|_| AuthError::Malformed("header"))?;
        let claims: Claims = serde_json::from_slice(
            &b64()
                .decode(c)
                .map_err(|_| AuthError::Malformed("claims encoding"))?,
        )
        .map_err(|_| AuthError::Malformed("claims"))?;
        let signature = b64()
            .decode(s)
            .map_err(|_| AuthError::Malformed("signature encoding"))?;
        crate::syntax::validate_did(claims.did())
            .map_err(|_| AuthError::Malformed("iss is not a DID"))?;
        Ok(Unverified {
            algorithm: algorithm(&header.alg)?,
            claims,
            signing_input: format!("{h}.{c}"),
            signature,
        })
    }

    /// Checks audience, method and time (no signature yet).
    pub fn check_claims(&self, aud: &str, lxm: Option<&str>, now: i64) -> Result<(), AuthError> {
        let c = &self.claims;
        if c.aud != aud {
            return Err(AuthError::Audience);
        }
        if let Some(method) = lxm {
            // New PDSes always bind tokens to a method; one without is refused too.
            if c.lxm.as_deref() != Some(method) {
                return Err(AuthError::Method);
            }
        }
        if c.exp + CLOCK_SKEW_SECS < now || c.exp > now + MAX_LIFETIME_SECS + CLOCK_SKEW_SECS {
            return Err(AuthError::Expired);
        }
        if c.iat.is_some_and(|iat| iat > now + CLOCK_SKEW_SECS) {
            return Err(AuthError::Expired);
        }
        Ok(())
    }

    /// Verifies the signature with `key`, whose algorithm must be the token's.
    pub fn verify_signature(&self, key: &PublicKey) -> Result<(), AuthError> {
        if key.algorithm() != self.algorithm {
            return Err(AuthError::Algorithm);
        }
        key.verify(self.signing_input.as_bytes(), &self.signature)
            .map_err(|_| AuthError::Signature)
    }
}

/// Verifies a token for service `aud` and method `lxm` against the issuer's current DID
/// document, re-resolving once if the signature fails (the key may have rotated).
pub async fn verify<R: DidResolver>(
    token: &str,
    aud: &str,
    lxm: Option<&str>,
    resolver: &CachingResolver<R>,
    now: i64,
) -> Result<Claims, AuthError> {
    let t = Unverified::parse(token)?;
    t.check_claims(aud, lxm, now)?;
    let did = t.claims.did().to_string();
    let id = resolver
        .identity(&did)
        .await
        .map_err(|e| AuthError::Issuer(e.to_string()))?;
    if t.verify_signature(&id.signing_key).is_ok() {
        return Ok(t.claims);
    }
    let fresh = resolver
        .refresh(&did)
        .await
        .map_err(|e| AuthError::Issuer(e.to_string()))?;
    t.verify_signature(&fresh.signing_key)?;
    Ok(t.claims)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp: i64) -> Claims {
        Claims {
            iss: "did:plc:ewvi7nxzyoun6zhxrhs64oiz".into(),
            aud: "did:web:appview.example.com".into(),
            exp,
            iat: Some(exp - 60),
            lxm: Some("agent.comms.getInbox".into()),
            jti: Some("n1".into()),
        }
    }

    #[test]
    fn mint_parse_verify_every_algorithm() {
        for alg in [Algorithm::K256, Algorithm::P256, Algorithm::Ed25519] {
            let key = Keypair::generate(alg);
            let token = mint(&key, &claims(1_000_060));
            let t = Unverified::parse(&token).expect("parses");
            assert_eq!(t.algorithm, alg);
            t.check_claims(
                "did:web:appview.example.com",
                Some("agent.comms.getInbox"),
                1_000_000,
            )
            .expect("claims");
            t.verify_signature(&key.public_key()).expect("signature");
            assert_eq!(
                t.verify_signature(&Keypair::generate(alg).public_key()),
                Err(AuthError::Signature)
            );
        }
    }

    #[test]
    fn claims_are_enforced() {
        let key = Keypair::generate(Algorithm::K256);
        let t = Unverified::parse(&mint(&key, &claims(1_000_060))).expect("parses");
        assert_eq!(
            t.check_claims(
                "did:web:other.example.com",
                Some("agent.comms.getInbox"),
                1_000_000
            ),
            Err(AuthError::Audience)
        );
        assert_eq!(
            t.check_claims(
                "did:web:appview.example.com",
                Some("agent.memory.recall"),
                1_000_000
            ),
            Err(AuthError::Method)
        );
        assert_eq!(
            t.check_claims(
                "did:web:appview.example.com",
                Some("agent.comms.getInbox"),
                1_000_200
            ),
            Err(AuthError::Expired)
        );
        let long = Unverified::parse(&mint(&key, &claims(1_000_000 + 86_400))).expect("parses");
        assert_eq!(
            long.check_claims("did:web:appview.example.com", None, 1_000_000),
            Err(AuthError::Expired)
        );
        // A P-256 key cannot vouch for an ES256K token.
        assert_eq!(
            t.verify_signature(&Keypair::generate(Algorithm::P256).public_key()),
            Err(AuthError::Algorithm)
        );
    }

    #[test]
    fn tampering_is_refused() {
        let key = Keypair::generate(Algorithm::Ed25519);
        let token = mint(&key, &claims(1_000_060));
        let mut parts: Vec<String> = token.split('.').map(str::to_string).collect();
        let mut forged = claims(1_000_060);
        forged.iss = "did:plc:aaaaaaaaaaaaaaaaaaaaaaaa".into();
        parts[1] = b64().encode(serde_json::to_vec(&forged).expect("json"));
        let t = Unverified::parse(&parts.join(".")).expect("parses");
        assert_eq!(
            t.verify_signature(&key.public_key()),
            Err(AuthError::Signature)
        );
        assert!(Unverified::parse("a.b").is_err());
        assert!(Unverified::parse(&"x".repeat(MAX_TOKEN_LEN + 1)).is_err());
    }
}
