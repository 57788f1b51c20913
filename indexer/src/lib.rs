//! The agentnet indexer, as a library: [`Config`] holds its settings and [`run`] serves until
//! shutdown. The `agentnet indexer` subcommand is a thin entry point over this.
//!
//! ```text
//! relay firehose ─▶ batch ─▶ extract (lexicons, privacy) ─▶ embed ─▶ vectors + ClickHouse ─▶ cursor
//! ```

pub mod backfill;
mod config;
pub mod extract;
pub mod kafka;
pub mod pipeline;
pub mod stats;

pub use stats::Stats;

use store::embed;

pub use config::{Config, IndexConfig, Tuning, DEFAULT_OPTIMIZE_EVERY};

/// Why the indexer stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is unusable.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A store or the embedder failed; the cursor did not move past the failed batch.
    #[error("indexing: {0}")]
    Sink(String),
    /// Building the vector search index failed (no retry of a batch can fix that).
    #[error("vector index: {0}")]
    Build(String),
    /// The index follows another upstream than the one configured.
    #[error("{0}")]
    Upstream(String),
}

/// What the indexer writes to, opened by [`open_stores`] or shared by a caller that runs the
/// appview in the same process (`agentnet up`).
pub struct Stores {
    /// The record index and the cursor.
    pub records: store::Records,
    /// Vectors for recall; absent without a model.
    pub vectors: Option<store::Vectors>,
}

/// The appview's key for opening shared records addressed to it, kept in `path`
/// (created on first use).
pub fn appview_key(
    path: &std::path::Path,
    did: &str,
) -> Result<atproto::envelope::EncryptionKey, Error> {
    atproto::envelope::EncryptionKey::load_or_create(path, did)
        .map_err(|e| Error::Config(format!("appview key {}: {e}", path.display())))
}

/// The appview's key as the indexer is configured with it: `--appview-key`, else the
/// appview's key file, which must exist (the indexer does not make a key of its own).
pub fn configured_appview_key(
    config: &IndexConfig,
) -> Result<atproto::envelope::EncryptionKey, Error> {
    if let Some(secret) = &config.appview_key {
        return atproto::envelope::EncryptionKey::from_base64(secret)
            .map_err(|e| Error::Config(format!("--appview-key: {e}")));
    }
    let path = config.appview_key_file();
    if !path.exists() {
        return Err(Error::Config(format!(
            "no appview key: {} does not exist. Give the indexer the appview's key, the same \
             as every appview of this deployment: --appview-key (`agentnet appview-key` makes \
             one) or --appview-key-file naming the appview's file",
            path.display()
        )));
    }
    atproto::envelope::EncryptionKey::load(&path, &config.appview_did)
        .map_err(|e| Error::Config(format!("appview key {}: {e}", path.display())))
}

/// Opens the configured stores: servers where given, embedded ones in the data directory
/// otherwise; vectors only with a model (`dimensions`).
pub fn open_stores(config: &IndexConfig, dimensions: Option<usize>) -> Result<Stores, Error> {
    let records = config
        .backends
        .records(&config.data_dir)
        .map_err(|e| Error::Config(e.to_string()))?;
    let vectors = dimensions
        .map(|d| config.backends.vectors(&config.data_dir, d))
        .transpose()
        .map_err(|e| Error::Config(e.to_string()))?;
    Ok(Stores { records, vectors })
}

/// Loads the configured embedding model, if any.
pub fn load_model(config: &IndexConfig) -> Result<Option<embed::Embedder>, Error> {
    config
        .model
        .load()
        .map_err(|e| Error::Config(e.to_string()))
}

/// What indexing needs, in order: the appview's key first (without it shared records
/// cannot be read, so nothing else is opened), the model, then the stores sized for it.
pub async fn open(
    config: &IndexConfig,
) -> Result<
    (
        atproto::envelope::EncryptionKey,
        Option<embed::Embedder>,
        Stores,
    ),
    Error,
> {
    let key = configured_appview_key(config)?;
    let embedder = load_model(config)?;
    let (index, dims) = (
        config.clone(),
        embedder.as_ref().map(embed::Embedder::dimensions),
    );
    let stores = tokio::task::spawn_blocking(move || open_stores(&index, dims))
        .await
        .map_err(|e| Error::Config(e.to_string()))??;
    Ok((key, embedder, stores))
}

/// DID documents kept for checking repos, and for how long.
const IDENTITIES: usize = 4096;
const IDENTITY_TTL: std::time::Duration = std::time::Duration::from_secs(600);

/// The DID resolver repo checks use (`#sync` reconciliation, backfill): `did:plc` from
/// `plc_url`, everything through `egress`; `dev` allows loopback and plain http.
pub(crate) fn resolver(
    egress: &atproto::net::Egress,
    plc_url: &str,
    dev: bool,
) -> Result<atproto::identity::CachingResolver<atproto::identity::HttpResolver>, Error> {
    let http = atproto::identity::HttpResolver::new(atproto::identity::ResolverConfig {
        plc_url: plc_url.to_string(),
        dev,
        timeout: std::time::Duration::from_secs(10),
        egress: Some(egress.clone()),
    })
    .map_err(|e| Error::Config(e.to_string()))?;
    Ok(atproto::identity::CachingResolver::new(
        http,
        std::num::NonZeroUsize::new(IDENTITIES).unwrap_or(std::num::NonZeroUsize::MIN),
        IDENTITY_TTL,
    ))
}

/// Runs the indexer until `shutdown` resolves, on the stores the configuration names
/// (embedded, or ClickHouse and Qdrant servers).
pub async fn run(
    config: Config,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    config.validate()?;
    let (key, embedder, stores) = open(&config.index).await?;
    let stats = Stats::new();
    let Some(addr) = config.metrics_listen else {
        return run_with(config, stores, embedder, key, stats, shutdown).await;
    };
    // Metrics on their own listener, stopped with the indexer.
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| Error::Config(format!("--metrics-listen {addr}: {e}")))?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let served = {
        let stats = stats.clone();
        let mut stop_rx = stop_rx.clone();
        tokio::spawn(async move {
            axum::serve(listener, metrics_routes(stats))
                .with_graceful_shutdown(async move {
                    let _ = stop_rx.wait_for(|s| *s).await;
                })
                .await
        })
    };
    let mut stop_rx = stop_rx;
    let indexed = run_with(config, stores, embedder, key, stats, async move {
        tokio::select! {
            _ = shutdown => {}
            _ = stop_rx.wait_for(|s| *s) => {}
        }
    })
    .await;
    let _ = stop_tx.send(true);
    let served = served
        .await
        .map_err(|e| Error::Config(format!("metrics server: {e}")))?
        .map_err(|e| Error::Config(format!("metrics server: {e}")));
    indexed.and(served)
}

/// `GET /metrics` with the indexer's counters (Prometheus text).
pub fn metrics_routes(stats: Stats) -> axum::Router {
    axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let stats = stats.clone();
            async move { stats.prometheus() }
        }),
    )
}

/// Runs the indexer on stores the caller opened, following the relay until `shutdown`.
pub async fn run_with(
    config: Config,
    stores: Stores,
    embedder: Option<embed::Embedder>,
    key: atproto::envelope::EncryptionKey,
    stats: Stats,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    config.validate()?;
    let catalog = lexicons::catalog().map_err(|e| Error::Config(e.to_string()))?;
    let vectors = match (embedder, stores.vectors) {
        (Some(e), Some(v)) => Some((e, v)),
        (None, _) => None,
        (Some(_), None) => {
            return Err(Error::Config(
                "a model was loaded but no vector store was opened".into(),
            ))
        }
    };
    let sinks = pipeline::Sinks {
        extractor: extract::Extractor::new(
            catalog,
            Some(extract::AppviewKey {
                did: config.index.appview_did.clone(),
                key,
            }),
        ),
        records: stores.records,
        vectors,
        stats,
        optimize: pipeline::Optimizer::every(config.index.optimize_every),
        repos: Some(pipeline::RepoSource::new(
            &config.relay_url,
            &config.index.egress(),
            &config.index.plc_url,
            config.index.dev,
        )?),
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let watcher = tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    // The cursor belongs to the relay it was read from: following another relay from it
    // would skip or repeat events, so that takes an explicit --force-upstream.
    let sources = {
        let records = sinks.records.clone();
        tokio::task::spawn_blocking(move || records.sources())
            .await
            .map_err(|e| Error::Sink(e.to_string()))?
            .map_err(|e| Error::Sink(e.to_string()))?
    };
    let source = if config.kafka.enabled() {
        config.kafka.source()
    } else {
        config.relay_url.clone()
    };
    if !sources.is_empty() && !sources.contains(&source) {
        if !config.force_upstream {
            return Err(Error::Upstream(format!(
                "this index was built from {} and the source now is {source}: pass --force-upstream to follow the new one from its start",
                sources.join(", "),
            )));
        }
        tracing::warn!(old = ?sources, new = %source, "following another relay than the one this index was built from (--force-upstream)");
    }
    if !config.kafka.enabled() {
        tracing::info!(relay = %config.relay_url, "indexer following the relay");
    }
    let progress = (config.tuning.progress_secs > 0).then(|| {
        tokio::spawn(stats::log_progress(
            sinks.stats.clone(),
            std::time::Duration::from_secs(config.tuning.progress_secs),
        ))
    });
    let wait = std::time::Duration::from_millis(config.tuning.batch_wait_ms);
    let result = if config.kafka.enabled() {
        kafka::follow(&config.kafka, sinks, config.tuning.batch, wait, stop_rx).await
    } else {
        pipeline::follow(&config.relay_url, sinks, config.tuning.batch, wait, stop_rx).await
    };
    watcher.abort();
    if let Some(progress) = progress {
        progress.abort();
    }
    let mut sinks = result?;
    // A build still running finishes (and reports) before the indexer says it stopped.
    tokio::task::spawn_blocking(move || sinks.optimize.finish())
        .await
        .map_err(|e| Error::Sink(e.to_string()))?
}
