use std::path::PathBuf;

use crate::Error;

/// Indexer settings. Every option has a default and an `AGENTNET_…` environment override.
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// The relay firehose to consume.
    #[arg(
        long,
        env = "AGENTNET_RELAY_URL",
        default_value = "ws://127.0.0.1:2470"
    )]
    pub relay_url: String,
    /// Directory for the embedded stores and the cursor.
    #[arg(long, env = "AGENTNET_DATA_DIR", default_value = "./data/indexer")]
    pub data_dir: PathBuf,
    /// ClickHouse server URL; without it the embedded store is used.
    #[arg(long, env = "AGENTNET_CLICKHOUSE_URL")]
    pub clickhouse_url: Option<String>,
    /// Qdrant server URL; without it the embedded vector store is used.
    #[arg(long, env = "AGENTNET_QDRANT_URL")]
    pub qdrant_url: Option<String>,
    /// ONNX embedding model directory (e.g. ../shared/models/all-minilm-l6-v2); without it
    /// records are indexed without vectors (no recall).
    #[arg(long, env = "AGENTNET_MODEL_DIR")]
    pub model_dir: Option<PathBuf>,
    /// Run the int8 graph of the model (about 3x faster on CPU) instead of fp32.
    #[arg(long, env = "AGENTNET_MODEL_INT8", default_value_t = true, action = clap::ArgAction::Set)]
    pub model_int8: bool,
    /// chDB's library for the embedded ClickHouse (`infra/chdb/setup.sh` prints it).
    #[arg(long, env = "AGENTNET_CHDB_LIB", default_value = "libchdb.so")]
    pub chdb_lib: PathBuf,
    /// The appview's DID: shared records naming it as a recipient are opened and indexed.
    #[arg(
        long,
        env = "AGENTNET_APPVIEW_DID",
        default_value = "did:web:localhost"
    )]
    pub appview_did: String,
    /// The appview's X25519 key file (created on first use); default
    /// `<data-dir>/appview-key.json`. The appview must use the same file.
    #[arg(long, env = "AGENTNET_APPVIEW_KEY_FILE")]
    pub appview_key_file: Option<PathBuf>,
    /// Most events indexed in one batch (one write per sink, then the cursor).
    #[arg(long, env = "AGENTNET_INDEX_BATCH", default_value_t = 256)]
    pub batch: usize,
    /// Longest an event waits for its batch to fill, in milliseconds.
    #[arg(long, env = "AGENTNET_INDEX_BATCH_WAIT_MS", default_value_t = 100)]
    pub batch_wait_ms: u64,
}

impl Config {
    /// Where the appview's key is kept.
    pub fn appview_key_file(&self) -> PathBuf {
        self.appview_key_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("appview-key.json"))
    }

    /// Checks what clap cannot.
    pub fn validate(&self) -> Result<(), Error> {
        if !(self.relay_url.starts_with("ws://") || self.relay_url.starts_with("wss://")) {
            return Err(Error::Config("--relay-url must be ws:// or wss://".into()));
        }
        if self.batch == 0 {
            return Err(Error::Config("--batch must be positive".into()));
        }
        atproto::syntax::validate_did(&self.appview_did)
            .map_err(|e| Error::Config(e.to_string()))?;
        Ok(())
    }
}
