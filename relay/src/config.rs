use std::net::SocketAddr;
use std::path::PathBuf;

use crate::Error;

/// Relay settings. Every option has a default and an `AGENTNET_…` environment override.
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// Address for the firehose and the sync XRPC endpoints.
    #[arg(long, env = "AGENTNET_RELAY_LISTEN", default_value = "127.0.0.1:2470")]
    pub listen: SocketAddr,
    /// Directory for the event log and account state.
    #[arg(long, env = "AGENTNET_RELAY_DATA_DIR", default_value = "./data/relay")]
    pub data_dir: PathBuf,
    /// PLC directory used to resolve did:plc identities.
    #[arg(
        long,
        env = "AGENTNET_PLC_URL",
        default_value = "https://plc.directory"
    )]
    pub plc_url: String,
    /// A PDS to subscribe to, by full URL with port (repeatable).
    #[arg(long = "host", env = "AGENTNET_RELAY_HOSTS", value_delimiter = ',')]
    pub hosts: Vec<String>,
    /// Another relay whose `listHosts` seeds the hosts to crawl at start (repeatable).
    #[arg(
        long = "seed-relay",
        env = "AGENTNET_RELAY_SEED_RELAYS",
        value_delimiter = ','
    )]
    pub seed_relays: Vec<String>,
    /// Allow loopback and private hosts and plain-http did:web (local testing only).
    #[arg(long, env = "AGENTNET_DEV", default_value_t = false)]
    pub dev: bool,
    /// Networks (CIDR) outbound connections may reach although internal: loopback,
    /// private, link-local and other internal addresses are refused unless listed here or
    /// `--dev` is on (repeatable, comma-separated).
    #[arg(
        long = "egress-allow",
        env = "AGENTNET_RELAY_EGRESS_ALLOW",
        value_delimiter = ','
    )]
    pub egress_allow: Vec<ipnet::IpNet>,
    /// How the relay works: verification, the log, subscribers, identities, hosts'
    /// limits, repairs (`agentnet up` takes the same).
    #[command(flatten)]
    pub tuning: Tuning,
}

/// The relay's working settings, apart from where it listens, stores and crawls: shared by
/// `agentnet relay` and `agentnet up` (same flags, same `AGENTNET_RELAY_…` variables).
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Relay")]
#[group(id = "relay_tuning")]
pub struct Tuning {
    /// Count verification failures but pass the events on instead of dropping them.
    #[arg(long, env = "AGENTNET_RELAY_LENIENT", default_value_t = false)]
    pub lenient: bool,
    /// Bearer token for the admin endpoints (adding hosts); admin is off when empty.
    #[arg(
        long,
        env = "AGENTNET_RELAY_ADMIN_TOKEN",
        default_value = "",
        hide_env_values = true
    )]
    pub admin_token: String,
    /// Verification threads (0: one per core).
    #[arg(long, env = "AGENTNET_RELAY_VERIFIER_THREADS", default_value_t = 0)]
    pub verifier_threads: usize,
    /// Most firehose subscribers at once.
    #[arg(long, env = "AGENTNET_RELAY_MAX_SUBSCRIBERS", default_value_t = 5000)]
    pub max_subscribers: usize,
    /// Milliseconds the sequencer waits for more events while a batch is small, so that one
    /// segment write, one fsync and one state transaction cover more events (0: write
    /// whatever has arrived at once).
    #[arg(long, env = "AGENTNET_RELAY_GROUP_COMMIT_MS", default_value_t = 2)]
    pub group_commit_ms: u64,
    /// Live events buffered per subscriber before it must catch up from the log or, if it
    /// keeps falling behind, is closed as too slow.
    #[arg(long, env = "AGENTNET_RELAY_LIVE_BUFFER", default_value_t = 8192)]
    pub live_buffer: usize,
    /// Seconds a subscriber may take to accept one frame before it is closed as too slow.
    #[arg(
        long,
        env = "AGENTNET_RELAY_SUBSCRIBER_SEND_TIMEOUT_SECS",
        default_value_t = 10
    )]
    pub subscriber_send_timeout_secs: u64,
    /// Seconds between keepalive pings to each firehose subscriber.
    #[arg(
        long,
        env = "AGENTNET_RELAY_SUBSCRIBER_PING_SECS",
        default_value_t = 30
    )]
    pub subscriber_ping_secs: u64,
    /// Seconds without a word from a subscriber (no pong, no frame) before it is closed as
    /// gone.
    #[arg(
        long,
        env = "AGENTNET_RELAY_SUBSCRIBER_DEAD_SECS",
        default_value_t = 90
    )]
    pub subscriber_dead_secs: u64,
    /// Seconds between applications of the retention policy.
    #[arg(
        long,
        env = "AGENTNET_RELAY_RETENTION_INTERVAL_SECS",
        default_value_t = 60
    )]
    pub retention_interval_secs: u64,
    /// Events kept in the log for replay.
    #[arg(
        long,
        env = "AGENTNET_RELAY_RETENTION_EVENTS",
        default_value_t = 10_000_000
    )]
    pub retention_events: u64,
    /// Hours events are kept in the log for replay.
    #[arg(long, env = "AGENTNET_RELAY_RETENTION_HOURS", default_value_t = 72)]
    pub retention_hours: u64,
    /// Identities cached for signature checks.
    #[arg(
        long,
        env = "AGENTNET_RELAY_IDENTITY_CACHE",
        default_value_t = 1_000_000
    )]
    pub identity_cache: usize,
    /// Seconds a cached identity is trusted before it is resolved again.
    #[arg(long, env = "AGENTNET_RELAY_IDENTITY_TTL_SECS", default_value_t = 3600)]
    pub identity_ttl_secs: u64,
    /// DID resolutions in flight at once, all accounts together: a burst of new accounts
    /// waits its turn instead of opening a connection per account to the PLC directory or
    /// to did:web hosts.
    #[arg(long, env = "AGENTNET_RELAY_IDENTITY_LOOKUPS", default_value_t = 64)]
    pub identity_lookups: usize,
    /// Seconds of silence after which an upstream connection is remade.
    #[arg(long, env = "AGENTNET_RELAY_IDLE_TIMEOUT_SECS", default_value_t = 300)]
    pub idle_timeout_secs: u64,
    /// Default events per second taken from one host (the reference relay's default for a
    /// new host is 50); the excess is counted and dropped. Per-host overrides are set with
    /// the admin endpoint.
    #[arg(
        long,
        env = "AGENTNET_RELAY_HOST_EVENTS_PER_SECOND",
        default_value_t = 50
    )]
    pub host_events_per_second: u64,
    /// Default events per hour taken from one host.
    #[arg(
        long,
        env = "AGENTNET_RELAY_HOST_EVENTS_PER_HOUR",
        default_value_t = 2500
    )]
    pub host_events_per_hour: u64,
    /// Default events per day taken from one host.
    #[arg(
        long,
        env = "AGENTNET_RELAY_HOST_EVENTS_PER_DAY",
        default_value_t = 20_000
    )]
    pub host_events_per_day: u64,
    /// Default number of accounts one host may serve through this relay.
    #[arg(long, env = "AGENTNET_RELAY_HOST_ACCOUNTS", default_value_t = 100)]
    pub host_accounts: u64,
    /// Seconds a host without operator-set limits must go without a single event failing
    /// verification before its account limit doubles (on reaching it).
    #[arg(
        long,
        env = "AGENTNET_RELAY_HOST_ACCOUNTS_GROWTH_SECS",
        default_value_t = 3600
    )]
    pub host_accounts_growth_secs: u64,
    /// Most hosts crawled; `requestCrawl` for a new host beyond it is refused.
    #[arg(long, env = "AGENTNET_RELAY_MAX_HOSTS", default_value_t = 10_000)]
    pub max_hosts: usize,
    /// `requestCrawl` calls accepted per minute, all callers together (the excess gets
    /// 429 `RateLimitExceeded`).
    #[arg(
        long,
        env = "AGENTNET_RELAY_CRAWL_REQUESTS_PER_MINUTE",
        default_value_t = 60
    )]
    pub crawl_requests_per_minute: u32,
    /// Largest repo a repair (`getRepo` after a broken chain) accepts, in bytes.
    #[arg(long, env = "AGENTNET_RELAY_REPAIR_MAX_BYTES", default_value_t = 512 * 1024 * 1024)]
    pub repair_max_bytes: usize,
    /// Seconds one repair fetch may take, first byte to last.
    #[arg(
        long,
        env = "AGENTNET_RELAY_REPAIR_TIMEOUT_SECS",
        default_value_t = 120
    )]
    pub repair_timeout_secs: u64,
    /// Milliseconds before a failed repair is retried; doubles per failure.
    #[arg(
        long,
        env = "AGENTNET_RELAY_REPAIR_MIN_BACKOFF_MS",
        default_value_t = 2000
    )]
    pub repair_min_backoff_ms: u64,
    /// Longest wait between repair attempts, in seconds (retries never stop).
    #[arg(
        long,
        env = "AGENTNET_RELAY_REPAIR_MAX_BACKOFF_SECS",
        default_value_t = 900
    )]
    pub repair_max_backoff_secs: u64,
    /// Seconds a DID that failed to resolve is answered from memory with the same failure.
    #[arg(
        long,
        env = "AGENTNET_RELAY_IDENTITY_NEGATIVE_TTL_SECS",
        default_value_t = 30
    )]
    pub identity_negative_ttl_secs: u64,
    /// Publishing every sequenced event to Kafka (off unless brokers are named).
    #[command(flatten)]
    pub kafka: crate::kafka::KafkaConfig,
}

impl Config {
    /// The limits a host gets unless the operator set its own.
    pub fn default_limits(&self) -> crate::hosts::Limits {
        crate::hosts::Limits {
            per_second: self.tuning.host_events_per_second,
            per_hour: self.tuning.host_events_per_hour,
            per_day: self.tuning.host_events_per_day,
            accounts: self.tuning.host_accounts,
        }
    }

    /// The one guarded way out for every outbound connection.
    pub fn egress(&self) -> atproto::net::Egress {
        atproto::net::Egress::new(atproto::net::EgressPolicy {
            allow_internal: self.dev,
            allow: self.egress_allow.clone(),
        })
    }

    /// Bounds and timings for repairs.
    pub fn repair_config(&self) -> crate::verify::RepairConfig {
        crate::verify::RepairConfig {
            max_bytes: self.tuning.repair_max_bytes,
            timeout: std::time::Duration::from_secs(self.tuning.repair_timeout_secs.max(1)),
            min_backoff: std::time::Duration::from_millis(self.tuning.repair_min_backoff_ms.max(1)),
            max_backoff: std::time::Duration::from_secs(self.tuning.repair_max_backoff_secs.max(1)),
        }
    }

    /// Checks what clap cannot, and fills in derived defaults.
    pub fn validate(&self) -> Result<(), Error> {
        if self.tuning.live_buffer == 0
            || self.tuning.max_subscribers == 0
            || self.tuning.identity_cache == 0
            || self.tuning.identity_lookups == 0
        {
            return Err(Error::Config(
                "buffer, subscriber and cache sizes must be positive".into(),
            ));
        }
        self.tuning.kafka.validate()?;
        for host in &self.hosts {
            if !(host.starts_with("http://") || host.starts_with("https://")) {
                return Err(Error::Config(format!(
                    "--host {host}: give a full http(s) URL"
                )));
            }
            atproto::identity::check_host(host, self.dev)
                .map_err(|e| Error::Config(e.to_string()))?;
        }
        Ok(())
    }
}
