use std::net::SocketAddr;
use std::path::PathBuf;

use crate::Error;

/// Appview settings. Every option has a default and an `AGENTNET_…` environment override.
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// Address for the XRPC queries and the dashboard.
    #[arg(long, env = "AGENTNET_LISTEN", default_value = "127.0.0.1:2471")]
    pub listen: SocketAddr,
    /// Directory of the indexer's embedded stores.
    #[arg(long, env = "AGENTNET_DATA_DIR", default_value = "./data/indexer")]
    pub data_dir: PathBuf,
    /// ClickHouse server URL; without it the embedded store is used.
    #[arg(long, env = "AGENTNET_CLICKHOUSE_URL")]
    pub clickhouse_url: Option<String>,
    /// Qdrant server URL; without it the embedded vector store is used.
    #[arg(long, env = "AGENTNET_QDRANT_URL")]
    pub qdrant_url: Option<String>,
}

impl Config {
    /// Checks what clap cannot.
    pub fn validate(&self) -> Result<(), Error> {
        if self.data_dir.as_os_str().is_empty() {
            return Err(Error::Config("--data-dir is empty".into()));
        }
        Ok(())
    }
}
