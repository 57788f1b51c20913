//! DID documents and DID resolution (`did:plc` through a PLC directory, `did:web`), behind a
//! trait, with a bounded cache and forced re-resolution.

use std::net::IpAddr;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::Deserialize;
use thiserror::Error;

use crate::crypto::{CryptoError, PublicKey};
use crate::syntax::validate_did;

/// Largest DID document accepted, in bytes.
pub const MAX_DID_DOC_BYTES: usize = 64 * 1024;

/// Why a DID could not be resolved.
#[derive(Debug, Clone, Error)]
pub enum IdentityError {
    /// Not a DID, or a method that is not supported.
    #[error("unsupported or malformed DID: {0}")]
    BadDid(String),
    /// The host is loopback or private and dev mode is off.
    #[error("refusing to resolve {0}: private or loopback host (dev mode is off)")]
    Forbidden(String),
    /// The directory or host does not know the DID.
    #[error("DID not found: {0}")]
    NotFound(String),
    /// The fetch failed.
    #[error("fetching DID document: {0}")]
    Fetch(String),
    /// The document does not parse, is for another DID, or lacks what atproto needs.
    #[error("bad DID document: {0}")]
    BadDocument(String),
    /// The signing key does not parse.
    #[error(transparent)]
    Key(#[from] CryptoError),
}

/// A DID document, with only the parts atproto reads.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DidDocument {
    /// The DID.
    pub id: String,
    /// `at://handle` entries.
    #[serde(default)]
    pub also_known_as: Vec<String>,
    /// Keys.
    #[serde(default)]
    pub verification_method: Vec<VerificationMethod>,
    /// Services (the PDS).
    #[serde(default)]
    pub service: Vec<Service>,
    /// Key-agreement keys (the agent network's X25519 keys), as references or methods.
    #[serde(default)]
    pub key_agreement: Vec<serde_json::Value>,
}

/// One verification method.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VerificationMethod {
    /// `#atproto` or `did:…#atproto`.
    pub id: String,
    /// `Multikey` or a legacy suite name.
    #[serde(rename = "type")]
    pub kind: String,
    /// The key.
    #[serde(default)]
    pub public_key_multibase: Option<String>,
}

/// One service entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Service {
    /// `#atproto_pds` or `did:…#atproto_pds`.
    pub id: String,
    /// `AtprotoPersonalDataServer`, …
    #[serde(rename = "type")]
    pub kind: String,
    /// The endpoint URL.
    pub service_endpoint: serde_json::Value,
}

fn fragment_matches(id: &str, did: &str, fragment: &str) -> bool {
    id == fragment || id.strip_prefix(did).is_some_and(|rest| rest == fragment)
}

impl DidDocument {
    /// Parses a document and checks it is for `did`.
    pub fn parse(did: &str, bytes: &[u8]) -> Result<Self, IdentityError> {
        if bytes.len() > MAX_DID_DOC_BYTES {
            return Err(IdentityError::BadDocument("document too large".into()));
        }
        let doc: DidDocument =
            serde_json::from_slice(bytes).map_err(|e| IdentityError::BadDocument(e.to_string()))?;
        if doc.id != did {
            return Err(IdentityError::BadDocument(format!(
                "document is for {}",
                doc.id
            )));
        }
        Ok(doc)
    }

    /// The repo signing key: the `#atproto` verification method, in either shape.
    pub fn signing_key(&self) -> Result<PublicKey, IdentityError> {
        let method = self
            .verification_method
            .iter()
            .find(|m| fragment_matches(&m.id, &self.id, "#atproto"))
            .ok_or_else(|| IdentityError::BadDocument("no #atproto verification method".into()))?;
        let mb = method.public_key_multibase.as_deref().ok_or_else(|| {
            IdentityError::BadDocument("#atproto has no publicKeyMultibase".into())
        })?;
        Ok(match method.kind.as_str() {
            "Multikey" => PublicKey::from_multikey(mb)?,
            legacy => PublicKey::from_legacy(legacy, mb)?,
        })
    }

    /// The first key-agreement key given as a `Multikey` (embedded, or a reference to a
    /// verification method), as its multibase string: where agentnet services publish
    /// their X25519 encryption keys.
    pub fn key_agreement_multikey(&self) -> Option<&str> {
        self.key_agreement.iter().find_map(|entry| match entry {
            serde_json::Value::String(id) => self
                .verification_method
                .iter()
                .find(|m| &m.id == id || fragment_matches(&m.id, &self.id, id))
                .and_then(|m| m.public_key_multibase.as_deref()),
            serde_json::Value::Object(m) => m.get("publicKeyMultibase")?.as_str(),
            _ => None,
        })
    }

    /// The PDS endpoint: the `#atproto_pds` service.
    pub fn pds_endpoint(&self) -> Option<&str> {
        self.service
            .iter()
            .find(|s| fragment_matches(&s.id, &self.id, "#atproto_pds"))
            .and_then(|s| s.service_endpoint.as_str())
    }

    /// The handle claimed in `alsoKnownAs` (not verified here).
    pub fn handle(&self) -> Option<&str> {
        self.also_known_as
            .iter()
            .find_map(|a| a.strip_prefix("at://"))
    }
}

/// What the services need from a DID document, parsed once.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The DID.
    pub did: String,
    /// The repo signing key.
    pub signing_key: PublicKey,
    /// The PDS endpoint, if any.
    pub pds: Option<String>,
    /// The claimed handle, if any.
    pub handle: Option<String>,
    /// The full document.
    pub document: Arc<DidDocument>,
}

impl Identity {
    /// Extracts the signing key, PDS and handle from a document.
    pub fn from_document(doc: DidDocument) -> Result<Self, IdentityError> {
        Ok(Identity {
            did: doc.id.clone(),
            signing_key: doc.signing_key()?,
            pds: doc.pds_endpoint().map(str::to_string),
            handle: doc.handle().map(str::to_string),
            document: Arc::new(doc),
        })
    }
}

/// Resolves a DID to its document.
#[async_trait]
pub trait DidResolver: Send + Sync {
    /// Fetches and parses the current document.
    async fn resolve(&self, did: &str) -> Result<DidDocument, IdentityError>;
}

/// Resolver settings.
#[derive(Debug, Clone)]
pub struct ResolverConfig {
    /// PLC directory base URL.
    pub plc_url: String,
    /// Allow loopback and private hosts and plain-http `did:web` (local testing only).
    pub dev: bool,
    /// Timeout for one fetch.
    pub timeout: Duration,
    /// The guarded way out the fetches take (by default: internal addresses refused
    /// unless `dev`).
    pub egress: Option<crate::net::Egress>,
}

impl Default for ResolverConfig {
    fn default() -> Self {
        ResolverConfig {
            plc_url: "https://plc.directory".into(),
            dev: false,
            timeout: Duration::from_secs(10),
            egress: None,
        }
    }
}

/// Resolves over HTTP: `GET {plc}/{did}` and `https://{host}/.well-known/did.json`.
#[derive(Debug, Clone)]
pub struct HttpResolver {
    client: crate::net::GuardedClient,
    config: ResolverConfig,
}

impl HttpResolver {
    /// A resolver with its own HTTP client, through the configured egress (no redirects:
    /// a DID document is served where the DID says).
    pub fn new(config: ResolverConfig) -> Result<Self, IdentityError> {
        let egress = config
            .egress
            .clone()
            .unwrap_or_else(|| crate::net::Egress::new(crate::net::EgressPolicy::new(config.dev)));
        let client = egress
            .client_without_redirects(reqwest::Client::builder().timeout(config.timeout))
            .map_err(|e| IdentityError::Fetch(e.to_string()))?;
        Ok(HttpResolver { client, config })
    }

    /// The URL a DID's document is fetched from.
    pub fn document_url(&self, did: &str) -> Result<String, IdentityError> {
        validate_did(did).map_err(|e| IdentityError::BadDid(e.to_string()))?;
        if let Some(id) = did.strip_prefix("did:plc:") {
            if id.len() != 24 || !id.bytes().all(|b| matches!(b, b'a'..=b'z' | b'2'..=b'7')) {
                return Err(IdentityError::BadDid(did.into()));
            }
            check_host(&self.config.plc_url, self.config.dev)?;
            return Ok(format!(
                "{}/{did}",
                self.config.plc_url.trim_end_matches('/')
            ));
        }
        if let Some(host) = did.strip_prefix("did:web:") {
            if host.contains(':') {
                return Err(IdentityError::BadDid(
                    "did:web with a path is not used by atproto".into(),
                ));
            }
            let host = host.replace("%3A", ":").replace("%3a", ":");
            let scheme = if self.config.dev && is_local_host(&host) {
                "http"
            } else {
                "https"
            };
            let url = format!("{scheme}://{host}/.well-known/did.json");
            check_host(&url, self.config.dev)?;
            return Ok(url);
        }
        Err(IdentityError::BadDid(did.into()))
    }
}

fn host_of(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if let Some(v6) = host.strip_prefix('[') {
        return v6.split(']').next().unwrap_or_default();
    }
    host.split(':').next().unwrap_or_default()
}

fn is_local_host(host_port: &str) -> bool {
    let host = host_of(host_port);
    if host.eq_ignore_ascii_case("localhost") || host.ends_with(".localhost") {
        return true;
    }
    // One classification of addresses for the whole crate: the egress guard's.
    host.parse::<IpAddr>().is_ok_and(crate::net::is_internal)
}

/// Host authority: the event's host is the account's PDS (scheme, host and port). In dev
/// mode `localhost` and `127.0.0.1` are the same host.
pub fn same_host(pds: Option<&str>, host: &str, dev: bool) -> bool {
    let Some(pds) = pds else { return false };
    // Every event asks this: the common case (the same URL) is answered without allocating.
    if pds
        .trim_end_matches('/')
        .eq_ignore_ascii_case(host.trim_end_matches('/'))
    {
        return true;
    }
    // In dev mode `localhost` and `127.0.0.1` are the same host.
    let loopback = |u: &str| {
        u.trim_end_matches('/')
            .to_ascii_lowercase()
            .replace("://localhost", "://127.0.0.1")
    };
    dev && loopback(pds) == loopback(host)
}

/// The SSRF guard: outside dev mode, refuse URLs naming loopback or private hosts.
pub fn check_host(url: &str, dev: bool) -> Result<(), IdentityError> {
    if !dev && is_local_host(url) {
        return Err(IdentityError::Forbidden(url.to_string()));
    }
    Ok(())
}

#[async_trait]
impl DidResolver for HttpResolver {
    async fn resolve(&self, did: &str) -> Result<DidDocument, IdentityError> {
        let url = self.document_url(did)?;
        let mut resp = self
            .client
            .get(&url)
            .map_err(|e| IdentityError::Forbidden(e.to_string()))?
            .send()
            .await
            .map_err(|e| IdentityError::Fetch(e.to_string()))?;
        match resp.status() {
            s if s.is_success() => {}
            reqwest::StatusCode::NOT_FOUND | reqwest::StatusCode::GONE => {
                return Err(IdentityError::NotFound(did.into()))
            }
            s => return Err(IdentityError::Fetch(format!("{url}: HTTP {s}"))),
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| IdentityError::Fetch(e.to_string()))?
        {
            if body.len() + chunk.len() > MAX_DID_DOC_BYTES {
                return Err(IdentityError::BadDocument("document too large".into()));
            }
            body.extend_from_slice(&chunk);
        }
        DidDocument::parse(did, &body)
    }
}

/// How long a failed resolution is remembered: within it, the same DID is answered with
/// the same failure without another fetch, so a flood of events or tokens naming DIDs
/// that do not resolve cannot turn the service into a fetcher.
pub const DEFAULT_NEGATIVE_TTL: Duration = Duration::from_secs(30);

/// Most failed resolutions remembered.
const MAX_FAILURES: usize = 100_000;

type Failures = lru::LruCache<String, (Instant, IdentityError)>;
type Identities = lru::LruCache<String, (Instant, Arc<Identity>)>;

/// Lock stripes of the identity cache.
const CACHE_STRIPES: usize = 16;

/// A bounded, time-limited cache of parsed identities in front of a resolver, remembering
/// failures too (for [`DEFAULT_NEGATIVE_TTL`] unless set otherwise).
pub struct CachingResolver<R> {
    inner: R,
    /// Identities, striped by DID so that threads looking up different accounts (the
    /// relay's verifier shards, on every event) do not take the same lock.
    cache: Vec<Mutex<Identities>>,
    failures: Mutex<Failures>,
    ttl: Duration,
    negative_ttl: Duration,
}

impl<R: DidResolver> CachingResolver<R> {
    /// Caches up to `capacity` identities for `ttl` each.
    pub fn new(inner: R, capacity: NonZeroUsize, ttl: Duration) -> Self {
        let failures = NonZeroUsize::new(capacity.get().min(MAX_FAILURES)).unwrap_or(capacity);
        let stripes = CACHE_STRIPES.min(capacity.get());
        let per_stripe = NonZeroUsize::new(capacity.get().div_ceil(stripes)).unwrap_or(capacity);
        CachingResolver {
            inner,
            cache: (0..stripes)
                .map(|_| Mutex::new(lru::LruCache::new(per_stripe)))
                .collect(),
            failures: Mutex::new(lru::LruCache::new(failures)),
            ttl,
            negative_ttl: DEFAULT_NEGATIVE_TTL,
        }
    }

    /// Remembers failed resolutions for `ttl` (zero: not at all).
    pub fn with_negative_ttl(mut self, ttl: Duration) -> Self {
        self.negative_ttl = ttl;
        self
    }

    /// The remembered failure for `did`, if it is recent.
    fn failed(&self, did: &str) -> Option<IdentityError> {
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        match failures.get(did) {
            Some((at, e)) if at.elapsed() < self.negative_ttl => Some(e.clone()),
            Some(_) => {
                failures.pop(did);
                None
            }
            None => None,
        }
    }

    /// The document for `did` straight from the resolver, uncached and without requiring a
    /// signing key (service DIDs that only publish keys and endpoints).
    pub async fn document(&self, did: &str) -> Result<DidDocument, IdentityError> {
        self.inner.resolve(did).await
    }

    /// The identity for `did`, from the cache while fresh.
    pub async fn identity(&self, did: &str) -> Result<Arc<Identity>, IdentityError> {
        if let Some(hit) = self.cached(did) {
            return Ok(hit);
        }
        self.refresh(did).await
    }

    /// Resolves again regardless of the cache (after a signature failure or an
    /// `#identity` event), and caches the result.
    /// A DID that failed within the negative TTL fails again without a fetch.
    pub async fn refresh(&self, did: &str) -> Result<Arc<Identity>, IdentityError> {
        if let Some(e) = self.failed(did) {
            return Err(e);
        }
        let resolved = match self.inner.resolve(did).await {
            Ok(doc) => Identity::from_document(doc),
            Err(e) => Err(e),
        };
        match resolved {
            Ok(identity) => {
                let identity = Arc::new(identity);
                self.lock(did)
                    .put(did.to_string(), (Instant::now(), identity.clone()));
                Ok(identity)
            }
            Err(e) => {
                if !self.negative_ttl.is_zero() {
                    self.failures
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .put(did.to_string(), (Instant::now(), e.clone()));
                }
                Err(e)
            }
        }
    }

    /// Drops `did` from the cache (its document changed), remembered failures included.
    pub fn forget(&self, did: &str) {
        self.lock(did).pop(did);
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop(did);
    }

    /// The cached identity, if present and fresh.
    pub fn cached(&self, did: &str) -> Option<Arc<Identity>> {
        let mut cache = self.lock(did);
        match cache.get(did) {
            Some((at, id)) if at.elapsed() < self.ttl => Some(id.clone()),
            Some(_) => {
                cache.pop(did);
                None
            }
            None => None,
        }
    }

    /// Number of cached identities.
    pub fn len(&self) -> usize {
        self.cache
            .iter()
            .map(|c| c.lock().unwrap_or_else(|p| p.into_inner()).len())
            .sum()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self, did: &str) -> std::sync::MutexGuard<'_, Identities> {
        // FNV-1a over the DID picks the stripe.
        let h = did.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
        let stripe = &self.cache[(h % self.cache.len() as u64) as usize];
        // A panic while holding this lock cannot leave the LRU half-updated in a way that
        // matters (entries are whole values), so a poisoned lock is taken over.
        stripe.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssrf_guard() {
        assert!(check_host("http://127.0.0.1:2582", false).is_err());
        assert!(check_host("https://localhost/x", false).is_err());
        assert!(check_host("https://10.1.2.3/", false).is_err());
        assert!(check_host("https://[::1]:80/", false).is_err());
        assert!(check_host("https://plc.example.com/", false).is_ok());
        assert!(check_host("http://127.0.0.1:2582", true).is_ok());
    }

    #[test]
    fn document_urls() {
        let r = HttpResolver::new(ResolverConfig {
            plc_url: "http://127.0.0.1:2582/".into(),
            dev: true,
            ..ResolverConfig::default()
        })
        .expect("client");
        assert_eq!(
            r.document_url("did:plc:ewvi7nxzyoun6zhxrhs64oiz")
                .expect("plc"),
            "http://127.0.0.1:2582/did:plc:ewvi7nxzyoun6zhxrhs64oiz"
        );
        assert_eq!(
            r.document_url("did:web:localhost%3A8080").expect("web"),
            "http://localhost:8080/.well-known/did.json"
        );
        assert!(r.document_url("did:plc:short").is_err());
        assert!(r.document_url("did:web:example.com:path").is_err());
        let strict = HttpResolver::new(ResolverConfig::default()).expect("client");
        assert!(matches!(
            strict.document_url("did:web:localhost%3A8080"),
            Err(IdentityError::Forbidden(_))
        ));
        assert_eq!(
            strict.document_url("did:web:example.com").expect("web"),
            "https://example.com/.well-known/did.json"
        );
    }
}
