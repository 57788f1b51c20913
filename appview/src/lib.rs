//! The agentnet appview, as a library: the coordination and recall queries over the stores
//! the indexer writes, answering each caller only what it may see.
//!
//! - XRPC (`agent.comms.getInbox`, `getThread`, `listTasks`, `listHandoffs`,
//!   `listBroadcasts`, `listAgents`, `agent.memory.recall`): the caller is who an
//!   inter-service JWT says it is (verified against the issuer's DID document), or
//!   anonymous; the access rule is part of every store query.
//! - `agent.comms.subscribeInbox` (WebSocket): the caller's new inbox items as they are
//!   indexed, under the same rule as `getInbox`.
//! - `/.well-known/did.json`: the appview's `did:web` document with its X25519 key as
//!   `keyAgreement`, so agents can seal shared records for it.
//! - `/`: the operator's dashboard.
//!
//! [`router`] serves on any axum server (`agentnet up` merges it with the relay's on one
//! listener); [`run`] serves it alone.

mod config;
mod live;
pub mod metrics;
mod xrpc;

use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use atproto::envelope::EncryptionPublicKey;
use atproto::identity::{CachingResolver, HttpResolver, ResolverConfig};
use store::embed::Batcher;

pub use config::{did_web_for, Config, Limits};

/// Why the appview stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is unusable.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A store could not be opened.
    #[error("stores: {0}")]
    Store(String),
    /// The listener could not be bound or the server failed.
    #[error("serving: {0}")]
    Serve(String),
}

/// Everything the handlers share. Cheap to clone.
#[derive(Clone)]
pub struct Appview {
    inner: Arc<Inner>,
}

struct Inner {
    did: String,
    public_url: String,
    key: EncryptionPublicKey,
    records: store::Records,
    recall: Option<(Batcher, store::Vectors)>,
    resolver: CachingResolver<HttpResolver>,
    guard: Guard,
    live: Live,
    metrics: Arc<metrics::Metrics>,
}

/// The live inbox's bounds.
struct Live {
    /// One permit per open subscription.
    sockets: Arc<tokio::sync::Semaphore>,
    /// How often the hub looks for rows written by other processes.
    poll_ms: u64,
    /// How far back a subscription's cursor may reach.
    replay_ms: u64,
    /// Open subscriptions per caller DID.
    per_caller: Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>>,
    /// The reader of new rows, started with the first subscription.
    hub: tokio::sync::OnceCell<live::Hub>,
}

type KeyedLimiter<K> = governor::DefaultKeyedRateLimiter<K>;

/// The appview's bounds in force: a queue for store queries and rate limits.
struct Guard {
    queries: tokio::sync::Semaphore,
    queue: Duration,
    per_ip: KeyedLimiter<std::net::IpAddr>,
    per_did: KeyedLimiter<String>,
    issuers: governor::DefaultDirectRateLimiter,
}

fn per_second(n: u32) -> governor::Quota {
    governor::Quota::per_second(
        std::num::NonZeroU32::new(n.max(1)).unwrap_or(std::num::NonZeroU32::MIN),
    )
}

impl Guard {
    fn new(limits: &Limits) -> Guard {
        Guard {
            queries: tokio::sync::Semaphore::new(limits.max_queries.max(1)),
            queue: Duration::from_millis(limits.query_queue_ms),
            per_ip: governor::RateLimiter::keyed(per_second(limits.per_ip)),
            per_did: governor::RateLimiter::keyed(per_second(limits.per_did)),
            issuers: governor::RateLimiter::direct(per_second(limits.issuer_lookups)),
        }
    }
}

/// The appview's service entry in its DID document; tokens may name it as their audience
/// (`did#agentnet_appview`).
pub const SERVICE_FRAGMENT: &str = "#agentnet_appview";

/// What an appview is built from.
pub struct Parts {
    /// Its DID (`did:web`).
    pub did: String,
    /// Where agents reach it.
    pub public_url: String,
    /// Its X25519 public key (the indexer holds the secret half).
    pub key: EncryptionPublicKey,
    /// The record index.
    pub records: store::Records,
    /// Recall: the query embedder and the vector store; absent without a model.
    pub recall: Option<(Batcher, store::Vectors)>,
    /// PLC directory for callers' DIDs.
    pub plc_url: String,
    /// Loopback and private addresses allowed for DID resolution.
    pub dev: bool,
    /// What callers may ask.
    pub limits: Limits,
}

impl Appview {
    /// An appview over `parts`.
    pub fn new(parts: Parts) -> Result<Self, Error> {
        let resolver = CachingResolver::new(
            HttpResolver::new(ResolverConfig {
                plc_url: parts.plc_url,
                dev: parts.dev,
                timeout: Duration::from_secs(10),
                egress: None,
            })
            .map_err(|e| Error::Config(e.to_string()))?,
            NonZeroUsize::new(10_000).ok_or_else(|| Error::Config("cache size".into()))?,
            Duration::from_secs(300),
        );
        Ok(Appview {
            inner: Arc::new(Inner {
                did: parts.did,
                public_url: parts.public_url,
                key: parts.key,
                records: parts.records,
                recall: parts.recall,
                resolver,
                guard: Guard::new(&parts.limits),
                metrics: Arc::new(metrics::Metrics::new()),
                live: Live {
                    sockets: Arc::new(tokio::sync::Semaphore::new(parts.limits.max_subscribers)),
                    poll_ms: parts.limits.inbox_poll_ms,
                    replay_ms: parts.limits.inbox_replay_ms,
                    per_caller: Arc::default(),
                    hub: tokio::sync::OnceCell::new(),
                },
            }),
        })
    }

    /// The appview's DID.
    pub fn did(&self) -> &str {
        &self.inner.did
    }

    /// The appview's DID document.
    pub fn did_document(&self) -> serde_json::Value {
        let did = &self.inner.did;
        serde_json::json!({
            "@context": [
                "https://www.w3.org/ns/did/v1",
                "https://w3id.org/security/multikey/v1"
            ],
            "id": did,
            "verificationMethod": [{
                "id": format!("{did}#agentnet_encryption"),
                "type": "Multikey",
                "controller": did,
                "publicKeyMultibase": self.inner.key.multikey(),
            }],
            "keyAgreement": [format!("{did}#agentnet_encryption")],
            "service": [{
                "id": SERVICE_FRAGMENT,
                "type": "AgentnetAppView",
                "serviceEndpoint": self.inner.public_url,
            }]
        })
    }
}

/// The appview's routes: XRPC, the DID document, the dashboard. Its metrics are not among
/// them: [`metrics_route`] serves them where the caller wants (`/metrics` when the appview
/// runs alone, `/metrics/appview` beside the relay's in `agentnet up`).
pub fn router(app: Appview) -> axum::Router {
    xrpc::routes(app, true)
}

/// Like [`router`], with the appview's page at `/appview` only: for serving beside the
/// node's dashboard (`agentnet up`), which is at `/`.
pub fn router_beside_dashboard(app: Appview) -> axum::Router {
    xrpc::routes(app, false)
}

/// `GET` handler for the appview's metrics (Prometheus text). It holds the metrics only,
/// not the appview.
pub fn metrics_route(app: &Appview) -> axum::routing::MethodRouter {
    let metrics = app.metrics();
    axum::routing::get(move || {
        let metrics = metrics.clone();
        async move { metrics.render() }
    })
}

impl Appview {
    /// The appview's metrics, shared.
    pub fn metrics(&self) -> Arc<metrics::Metrics> {
        self.inner.metrics.clone()
    }
}

/// Runs the appview alone until `shutdown` resolves: its own listener, the stores the
/// configuration names (the indexer's ClickHouse and Qdrant servers when it runs apart), and
/// the model for recall queries.
pub async fn run(
    config: Config,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    config.validate()?;
    let did = config.did();
    let key = match &config.appview_key {
        Some(secret) => atproto::envelope::EncryptionKey::from_base64(secret)
            .map_err(|e| Error::Config(format!("--appview-key: {e}")))?,
        None => atproto::envelope::EncryptionKey::load_or_create(&config.key_file(), &did)
            .map_err(|e| Error::Config(format!("appview key: {e}")))?,
    }
    .public();
    let embedder = config
        .model
        .load()
        .map_err(|e| Error::Config(e.to_string()))?;
    let (records, vectors) = {
        let (config, dims) = (
            config.clone(),
            embedder.as_ref().map(store::embed::Embedder::dimensions),
        );
        tokio::task::spawn_blocking(move || {
            let records = config.backends.records(&config.data_dir)?;
            let vectors = dims
                .map(|d| config.backends.vectors(&config.data_dir, d))
                .transpose()?;
            Ok::<_, store::OpenError>((records, vectors))
        })
        .await
        .map_err(|e| Error::Store(e.to_string()))?
        .map_err(|e| Error::Store(e.to_string()))?
    };
    let mut embed_thread = None;
    let recall = match (embedder, vectors) {
        (Some(embedder), Some(vectors)) => {
            let (batcher, thread) = Batcher::start(embedder, QUERY_BATCH);
            embed_thread = Some(thread);
            Some((batcher, vectors))
        }
        _ => None,
    };
    let app = Appview::new(Parts {
        did,
        public_url: config.public_url(),
        key,
        records,
        recall,
        plc_url: config.plc_url.clone(),
        dev: config.dev,
        limits: config.limits.clone(),
    })?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| Error::Serve(format!("{}: {e}", config.listen)))?;
    tracing::info!(listen = %config.listen, did = app.did(), "appview running");
    // The router takes the appview whole, so that when serving ends its batcher handles
    // are gone and the model thread ends.
    let metrics = metrics_route(&app);
    let routes = router(app).route("/metrics", metrics);
    let served = axum::serve(
        listener,
        routes.into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
    .map_err(|e| Error::Serve(e.to_string()));
    // The router (and with it every batcher handle) is gone: the model thread ends.
    if let Some(t) = embed_thread {
        t.join()
            .map_err(|_| Error::Serve("the embedding thread panicked".into()))?;
    }
    served
}

/// How query embeddings are batched: small batches, short waits (a query is waiting).
pub const QUERY_BATCH: store::embed::BatchConfig = store::embed::BatchConfig {
    max_batch: 16,
    max_wait: Duration::from_millis(2),
};
