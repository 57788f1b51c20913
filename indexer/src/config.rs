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
    /// ONNX embedding model directory (e.g. ../shared/models/all-minilm-l6-v2).
    #[arg(long, env = "AGENTNET_MODEL_DIR")]
    pub model_dir: Option<PathBuf>,
}

impl Config {
    /// Checks what clap cannot.
    pub fn validate(&self) -> Result<(), Error> {
        if !(self.relay_url.starts_with("ws://") || self.relay_url.starts_with("wss://")) {
            return Err(Error::Config("--relay-url must be ws:// or wss://".into()));
        }
        Ok(())
    }
}
