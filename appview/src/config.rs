use std::net::SocketAddr;
use std::path::PathBuf;

use crate::Error;

/// Appview settings. Every option has a default and an `AGENTNET_…` environment override.
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// Address for the XRPC queries, the DID document and the dashboard.
    #[arg(
        long,
        env = "AGENTNET_APPVIEW_LISTEN",
        default_value = "127.0.0.1:2471"
    )]
    pub listen: SocketAddr,
    /// Directory of the stores the indexer writes (embedded ones, and the appview's key).
    #[arg(
        long,
        env = "AGENTNET_INDEX_DATA_DIR",
        default_value = "./data/indexer"
    )]
    pub data_dir: PathBuf,
    /// The appview's DID (a `did:web` this service answers for at
    /// `/.well-known/did.json`); default `did:web:` + the listen address.
    #[arg(long, env = "AGENTNET_APPVIEW_DID")]
    pub appview_did: Option<String>,
    /// The appview's X25519 secret (base64, as `agentnet appview-key` prints it): give every
    /// appview of a deployment and its indexers the same one. When unset, the key file is
    /// used.
    #[arg(long, env = "AGENTNET_APPVIEW_KEY", hide_env_values = true)]
    pub appview_key: Option<String>,
    /// The appview's X25519 key file, used when `--appview-key` is unset (created on first
    /// start, for a single appview whose indexer reads the same file); default
    /// `<data-dir>/appview-key.json`.
    #[arg(long, env = "AGENTNET_APPVIEW_KEY_FILE")]
    pub appview_key_file: Option<PathBuf>,
    /// The URL agents reach this appview at, published in its DID document; default
    /// `http://` + the listen address.
    #[arg(long, env = "AGENTNET_APPVIEW_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Where the record index and the vectors live (the indexer's).
    #[command(flatten)]
    pub backends: store::Backends,
    /// The embedding model for recall queries (the indexer's); without it
    /// `agent.memory.recall` answers MethodNotImplemented.
    #[command(flatten)]
    pub model: store::Model,
    /// PLC directory for resolving callers' DIDs (service-auth tokens).
    #[arg(
        long,
        env = "AGENTNET_PLC_URL",
        default_value = "https://plc.directory"
    )]
    pub plc_url: String,
    /// Development mode: loopback and private addresses allowed for DID resolution.
    #[arg(long, env = "AGENTNET_DEV", default_value_t = false)]
    pub dev: bool,
    /// What callers may ask of the appview.
    #[command(flatten)]
    pub limits: Limits,
}

/// Bounds on what callers may ask of the appview, so a burst of queries cannot starve the
/// indexer's writes (they may share one embedded engine) and one caller cannot crowd out
/// the rest.
#[derive(Debug, Clone, clap::Args)]
pub struct Limits {
    /// Store queries run at once; more wait their turn.
    #[arg(
        long = "appview-max-queries",
        env = "AGENTNET_APPVIEW_MAX_QUERIES",
        default_value_t = 8
    )]
    pub max_queries: usize,
    /// Milliseconds a query may wait for its turn before it is answered 503.
    #[arg(
        long = "appview-query-queue-ms",
        env = "AGENTNET_APPVIEW_QUERY_QUEUE_MS",
        default_value_t = 2000
    )]
    pub query_queue_ms: u64,
    /// Requests per second from one client address (bursts of as many), answered 429
    /// beyond it.
    #[arg(
        long = "appview-rate-per-ip",
        env = "AGENTNET_APPVIEW_RATE_PER_IP",
        default_value_t = 50
    )]
    pub per_ip: u32,
    /// Requests per second from one authenticated caller DID, answered 429 beyond it.
    #[arg(
        long = "appview-rate-per-did",
        env = "AGENTNET_APPVIEW_RATE_PER_DID",
        default_value_t = 20
    )]
    pub per_did: u32,
    /// DID documents fetched per second for token issuers not in the cache, all callers
    /// together (failed lookups are remembered too), answered 429 beyond it.
    #[arg(
        long = "appview-issuer-lookups-per-second",
        env = "AGENTNET_APPVIEW_ISSUER_LOOKUPS_PER_SECOND",
        default_value_t = 10
    )]
    pub issuer_lookups: u32,
    /// Live-inbox subscriptions (`agent.comms.subscribeInbox`) open at once; more are
    /// answered 503.
    #[arg(
        id = "appview_max_subscribers",
        value_name = "MAX_SUBSCRIBERS",
        long = "appview-max-subscribers",
        env = "AGENTNET_APPVIEW_MAX_SUBSCRIBERS",
        default_value_t = 1024
    )]
    pub max_subscribers: usize,
    /// Milliseconds between the live inbox's looks for rows written by another process (an
    /// indexer running apart), while any subscription is open; writes by the indexer in the
    /// same process are pushed at once.
    #[arg(
        long = "appview-inbox-poll-ms",
        env = "AGENTNET_APPVIEW_INBOX_POLL_MS",
        default_value_t = 1000
    )]
    pub inbox_poll_ms: u64,
    /// How far back (ms) a live subscription's `cursor` may reach; older items are read
    /// with `getInbox`.
    #[arg(
        long = "appview-inbox-replay-ms",
        env = "AGENTNET_APPVIEW_INBOX_REPLAY_MS",
        default_value_t = 86_400_000
    )]
    pub inbox_replay_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_queries: 8,
            query_queue_ms: 2000,
            per_ip: 50,
            per_did: 20,
            issuer_lookups: 10,
            max_subscribers: 1024,
            inbox_poll_ms: 1000,
            inbox_replay_ms: 86_400_000,
        }
    }
}

impl Config {
    /// Checks what clap cannot.
    pub fn validate(&self) -> Result<(), Error> {
        if self.data_dir.as_os_str().is_empty() {
            return Err(Error::Config("--data-dir is empty".into()));
        }
        atproto::syntax::validate_did(&self.did()).map_err(|e| Error::Config(e.to_string()))?;
        Ok(())
    }

    /// The appview's DID.
    pub fn did(&self) -> String {
        self.appview_did
            .clone()
            .unwrap_or_else(|| did_web_for(&self.listen))
    }

    /// Where agents reach the appview.
    pub fn public_url(&self) -> String {
        self.public_url
            .clone()
            .unwrap_or_else(|| format!("http://{}", self.listen))
            .trim_end_matches('/')
            .to_string()
    }

    /// Where the appview's key is kept.
    pub fn key_file(&self) -> PathBuf {
        self.appview_key_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("appview-key.json"))
    }
}

/// The `did:web` for a service at `addr` (the port percent-encoded, as did:web requires).
/// Loopback addresses become `localhost`: atproto allows a port in a did:web only there.
pub fn did_web_for(addr: &SocketAddr) -> String {
    let host = match addr.ip() {
        ip if ip.is_loopback() => "localhost".to_string(),
        std::net::IpAddr::V4(ip) => ip.to_string(),
        std::net::IpAddr::V6(ip) => format!("[{ip}]"),
    };
    match addr.port() {
        443 => format!("did:web:{host}"),
        port => format!("did:web:{host}%3A{port}"),
    }
}
