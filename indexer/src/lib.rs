//! The agentnet indexer, as a library: [`Config`] holds its settings and [`run`] serves until
//! shutdown. The `agentnet indexer` subcommand is a thin entry point over this.
//!
//! ```text
//! relay firehose ─▶ batch ─▶ extract (lexicons, privacy) ─▶ embed ─▶ vectors + ClickHouse ─▶ cursor
//! ```

pub mod chdb;
mod config;
pub mod embed;
pub mod extract;
pub mod pipeline;
pub mod records;
pub mod vectors;

pub use config::Config;

/// Why the indexer stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is unusable.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A store or the embedder failed; the cursor did not move past the failed batch.
    #[error("indexing: {0}")]
    Sink(String),
}

/// Runs the indexer until `shutdown` resolves: embedded ClickHouse (chDB) and, with a
/// model, embeddings in the embedded vector store, following the relay.
pub async fn run(
    config: Config,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    config.validate()?;
    if config.clickhouse_url.is_some() || config.qdrant_url.is_some() {
        return Err(Error::Config(
            "server backends are not in this build yet; omit --clickhouse-url/--qdrant-url".into(),
        ));
    }
    let data = config.data_dir.clone();
    let key = atproto::envelope::EncryptionKey::load_or_create(
        &data.join("appview-key.json"),
        &config.appview_did,
    )
    .map_err(|e| Error::Config(format!("appview key: {e}")))?;
    let db = chdb::Chdb::open(&config.chdb_lib, &data.join("clickhouse"))
        .map_err(|e| Error::Config(e.to_string()))?;
    let records = records::RecordStore::open(db).map_err(|e| Error::Sink(e.to_string()))?;
    let catalog = lexicons::catalog().map_err(|e| Error::Config(e.to_string()))?;
    let vectors = match &config.model_dir {
        None => None,
        Some(dir) => {
            let precision = if config.model_int8 {
                embed::Precision::Int8
            } else {
                embed::Precision::Fp32
            };
            let embedder = embed::Embedder::load(dir, precision, None)
                .map_err(|e| Error::Config(e.to_string()))?;
            let store = vectors::EdgeStore::open(&data.join("vectors"), embedder.dimensions())
                .map_err(|e| Error::Sink(e.to_string()))?;
            Some((embedder, Box::new(store) as Box<dyn vectors::VectorStore>))
        }
    };
    let sinks = pipeline::Sinks {
        extractor: extract::Extractor::new(
            catalog,
            Some(extract::AppviewKey {
                did: config.appview_did.clone(),
                key,
            }),
        ),
        records,
        vectors,
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let watcher = tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    tracing::info!(relay = %config.relay_url, "indexer following the relay");
    let result = pipeline::follow(
        &config.relay_url,
        sinks,
        config.batch,
        std::time::Duration::from_millis(config.batch_wait_ms),
        stop_rx,
    )
    .await;
    watcher.abort();
    result.map(|_| ())
}
