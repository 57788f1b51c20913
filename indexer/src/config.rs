use std::path::PathBuf;

use crate::Error;

/// Indexer settings. Every option has a default and an `AGENTNET_…` environment override.
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// The relay firehose to consume.
    #[arg(
        long,
        env = "AGENTNET_INDEXER_RELAY_URL",
        default_value = "ws://127.0.0.1:2470"
    )]
    pub relay_url: String,
    /// Where records are indexed, and with which key and model.
    #[command(flatten)]
    pub index: IndexConfig,
    /// Serve the indexer's counters at `GET /metrics` on this address (off by default;
    /// `agentnet up` serves them at `/metrics/indexer` on its own listener).
    #[arg(long, env = "AGENTNET_INDEXER_METRICS_LISTEN")]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// How the indexer batches and reports (`agentnet up` takes the same).
    #[command(flatten)]
    pub tuning: Tuning,
    /// Reading the relay's stream from Kafka, in a consumer group, instead of its
    /// WebSocket firehose.
    #[command(flatten)]
    pub kafka: crate::kafka::KafkaConfig,
    /// Follow `--relay-url` although the index was built from another relay (its cursor
    /// means nothing there: the new relay is read from its start).
    #[arg(long, env = "AGENTNET_INDEXER_FORCE_UPSTREAM", default_value_t = false)]
    pub force_upstream: bool,
}

/// The indexer's batching and progress settings: shared by `agentnet indexer` and
/// `agentnet up` (same flags, same `AGENTNET_INDEXER_…` variables).
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Indexer")]
#[group(id = "indexer_tuning")]
pub struct Tuning {
    /// Most events indexed in one batch (one write per sink, then the cursor).
    #[arg(long, env = "AGENTNET_INDEXER_BATCH", default_value_t = 256)]
    pub batch: usize,
    /// Longest an event waits for its batch to fill, in milliseconds.
    #[arg(long, env = "AGENTNET_INDEXER_BATCH_WAIT_MS", default_value_t = 100)]
    pub batch_wait_ms: u64,
    /// Seconds between the progress lines logged at info level while the indexer writes
    /// (batches, rows, vectors, rates, last seq, lag behind the relay); 0 turns them off.
    #[arg(long, env = "AGENTNET_INDEXER_PROGRESS_SECS", default_value_t = 10)]
    pub progress_secs: u64,
}

/// Vectors between background builds of the vector search index, by default.
pub const DEFAULT_OPTIMIZE_EVERY: usize = 20_000;

/// Where records are indexed (the stores), the model that embeds them, the appview's key
/// that opens shared records, and how far the indexer may reach: what the indexer and
/// `agentnet backfill` share.
#[derive(Debug, Clone, clap::Args)]
pub struct IndexConfig {
    /// Directory for the embedded stores and the cursor.
    #[arg(
        long,
        env = "AGENTNET_INDEX_DATA_DIR",
        default_value = "./data/indexer"
    )]
    pub data_dir: PathBuf,
    /// Where the record index and the vectors live.
    #[command(flatten)]
    pub backends: store::Backends,
    /// The embedding model.
    #[command(flatten)]
    pub model: store::Model,
    /// The appview's DID: shared records naming it as a recipient are opened and indexed.
    #[arg(
        long,
        env = "AGENTNET_APPVIEW_DID",
        default_value = "did:web:localhost"
    )]
    pub appview_did: String,
    /// The appview's X25519 secret (base64, as `agentnet appview-key` prints it), the same
    /// one every appview of the deployment is given; shared records sealed for the appview
    /// are opened with it. When unset, the key file is read instead.
    #[arg(long, env = "AGENTNET_APPVIEW_KEY", hide_env_values = true)]
    pub appview_key: Option<String>,
    /// The appview's X25519 key file, used when `--appview-key` is unset; default
    /// `<data-dir>/appview-key.json`. The indexer never makes one of its own (a key the
    /// appview does not publish would leave every shared record unreadable): it must be the
    /// appview's file.
    #[arg(long, env = "AGENTNET_APPVIEW_KEY_FILE")]
    pub appview_key_file: Option<PathBuf>,
    /// Build the vector search index (HNSW) in the background after this many new vectors
    /// (0: never; searches then scan unindexed segments exactly).
    #[arg(long, env = "AGENTNET_INDEX_OPTIMIZE_EVERY", default_value_t = DEFAULT_OPTIMIZE_EVERY)]
    pub optimize_every: usize,
    /// PLC directory for resolving `did:plc` accounts (their keys check the repos fetched
    /// for a `#sync` or a backfill).
    #[arg(
        long,
        env = "AGENTNET_PLC_URL",
        default_value = "https://plc.directory"
    )]
    pub plc_url: String,
    /// Development mode: loopback and private addresses may be reached (repos fetched for
    /// `#sync` come from wherever the account's DID document points).
    #[arg(long, env = "AGENTNET_DEV", default_value_t = false)]
    pub dev: bool,
    /// Networks (CIDR) the indexer may reach although internal (repeatable,
    /// comma-separated).
    #[arg(
        long = "egress-allow",
        env = "AGENTNET_INDEX_EGRESS_ALLOW",
        value_delimiter = ','
    )]
    pub egress_allow: Vec<ipnet::IpNet>,
}

impl IndexConfig {
    /// Where the appview's key is kept.
    pub fn appview_key_file(&self) -> PathBuf {
        self.appview_key_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("appview-key.json"))
    }

    /// Checks what clap cannot.
    pub fn validate(&self) -> Result<(), Error> {
        atproto::syntax::validate_did(&self.appview_did).map_err(|e| Error::Config(e.to_string()))
    }

    /// The guard every outbound request of the indexer goes through.
    pub fn egress(&self) -> atproto::net::Egress {
        atproto::net::Egress::new(atproto::net::EgressPolicy {
            allow_internal: self.dev,
            allow: self.egress_allow.clone(),
        })
    }
}

impl Config {
    /// Checks what clap cannot.
    pub fn validate(&self) -> Result<(), Error> {
        if !(self.relay_url.starts_with("ws://") || self.relay_url.starts_with("wss://")) {
            return Err(Error::Config("--relay-url must be ws:// or wss://".into()));
        }
        if self.tuning.batch == 0 {
            return Err(Error::Config("--batch must be positive".into()));
        }
        self.index.validate()
    }
}
