//! Settings shared by every service that opens the stores (indexer, appview, `up`): which
//! backends, and which embedding model. Every option has a default and an `AGENTNET_…`
//! environment override.

use std::path::{Path, PathBuf};

use crate::{embed, server, OpenError, Records, Vectors};

/// Where the record index and the vectors live.
#[derive(Debug, Clone, clap::Args)]
pub struct Backends {
    /// ClickHouse server URL (`http://host:8123`); without it the embedded engine (chDB)
    /// keeps the index in the data directory.
    #[arg(long, env = "AGENTNET_CLICKHOUSE_URL")]
    pub clickhouse_url: Option<String>,
    /// ClickHouse user (the server's default user when empty).
    #[arg(long, env = "AGENTNET_CLICKHOUSE_USER", default_value = "")]
    pub clickhouse_user: String,
    /// ClickHouse password.
    #[arg(
        long,
        env = "AGENTNET_CLICKHOUSE_PASSWORD",
        default_value = "",
        hide_env_values = true
    )]
    pub clickhouse_password: String,
    /// ClickHouse database (the server's default when empty).
    #[arg(long, env = "AGENTNET_CLICKHOUSE_DATABASE", default_value = "")]
    pub clickhouse_database: String,
    /// chDB's library for the embedded ClickHouse (`infra/chdb/setup.sh` prints it).
    #[arg(long, env = "AGENTNET_CHDB_LIB", default_value = "libchdb.so")]
    pub chdb_lib: PathBuf,
    /// Qdrant server URL (gRPC, `http://host:6334`); without it the embedded store
    /// (qdrant-edge) keeps the vectors in the data directory.
    #[arg(long, env = "AGENTNET_QDRANT_URL")]
    pub qdrant_url: Option<String>,
    /// Qdrant API key.
    #[arg(
        long,
        env = "AGENTNET_QDRANT_API_KEY",
        default_value = "",
        hide_env_values = true
    )]
    pub qdrant_api_key: String,
    /// Qdrant collection holding agentnet's vectors (created if missing).
    #[arg(long, env = "AGENTNET_QDRANT_COLLECTION", default_value = "agentnet")]
    pub qdrant_collection: String,
}

impl Backends {
    /// Opens the record index: the server when configured, else chDB in
    /// `data_dir/clickhouse`. chDB allows one engine per process: open once and share.
    pub fn records(&self, data_dir: &Path) -> Result<Records, OpenError> {
        match &self.clickhouse_url {
            Some(url) => crate::open_server_records(&server::ServerConfig {
                url: url.clone(),
                user: self.clickhouse_user.clone(),
                password: self.clickhouse_password.clone(),
                database: self.clickhouse_database.clone(),
            }),
            None => crate::open_embedded_records(&self.chdb_lib, &data_dir.join("clickhouse")),
        }
    }

    /// Opens the vector store for `dimensions`-long vectors: Qdrant when configured, else
    /// qdrant-edge in `data_dir/vectors`.
    pub fn vectors(&self, data_dir: &Path, dimensions: usize) -> Result<Vectors, OpenError> {
        match &self.qdrant_url {
            Some(url) => Ok(std::sync::Arc::new(crate::qdrant::QdrantStore::connect(
                url,
                &self.qdrant_api_key,
                &self.qdrant_collection,
                dimensions,
            )?)),
            None => crate::open_embedded_vectors(&data_dir.join("vectors"), dimensions),
        }
    }
}

/// The sentence-embedding model.
#[derive(Debug, Clone, clap::Args)]
pub struct Model {
    /// ONNX embedding model directory (e.g. ../shared/models/all-minilm-l6-v2); without it
    /// (and without --model-name) nothing is embedded and recall is off.
    #[arg(long, env = "AGENTNET_MODEL_DIR")]
    pub model_dir: Option<PathBuf>,
    /// A fastembed model by name (e.g. `AllMiniLML6V2`), downloaded on first use when
    /// online; used when --model-dir is not given.
    #[arg(long, env = "AGENTNET_MODEL_NAME")]
    pub model_name: Option<String>,
    /// Where models loaded by name are kept.
    #[arg(long, env = "AGENTNET_MODEL_CACHE", default_value = "./data/models")]
    pub model_cache: PathBuf,
    /// Run the int8 graph of the model (about 3x faster on CPU) instead of fp32; indexer and
    /// appview must agree.
    #[arg(long, env = "AGENTNET_MODEL_INT8", default_value_t = true, action = clap::ArgAction::Set)]
    pub model_int8: bool,
}

impl Model {
    /// The graph to run.
    pub fn precision(&self) -> embed::Precision {
        if self.model_int8 {
            embed::Precision::Int8
        } else {
            embed::Precision::Fp32
        }
    }

    /// Whether a model is configured.
    pub fn configured(&self) -> bool {
        self.model_dir.is_some() || self.model_name.is_some()
    }

    /// Loads the model, if one is configured: the directory, else the name.
    pub fn load(&self) -> Result<Option<embed::Embedder>, embed::EmbedError> {
        match (&self.model_dir, &self.model_name) {
            (Some(dir), _) => embed::Embedder::load(dir, self.precision(), None).map(Some),
            (None, Some(name)) => embed::Embedder::load_named(name, &self.model_cache).map(Some),
            (None, None) => Ok(None),
        }
    }
}
