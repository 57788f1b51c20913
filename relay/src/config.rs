use std::net::SocketAddr;
use std::path::PathBuf;

use crate::Error;

/// Relay settings. Every option has a default and an `AGENTNET_…` environment override.
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// Address for the firehose and the sync XRPC endpoints.
    #[arg(long, env = "AGENTNET_LISTEN", default_value = "127.0.0.1:2470")]
    pub listen: SocketAddr,
    /// Directory for the event log and account state.
    #[arg(long, env = "AGENTNET_DATA_DIR", default_value = "./data/relay")]
    pub data_dir: PathBuf,
    /// PLC directory used to resolve did:plc identities.
    #[arg(
        long,
        env = "AGENTNET_PLC_URL",
        default_value = "https://plc.directory"
    )]
    pub plc_url: String,
    /// A PDS to subscribe to, by full URL with port (repeatable).
    #[arg(long = "host", env = "AGENTNET_HOSTS", value_delimiter = ',')]
    pub hosts: Vec<String>,
    /// Allow loopback and private hosts and plain-http did:web (local testing only).
    #[arg(long, env = "AGENTNET_DEV", default_value_t = false)]
    pub dev: bool,
    /// Count verification failures but pass the events on instead of dropping them.
    #[arg(long, env = "AGENTNET_LENIENT", default_value_t = false)]
    pub lenient: bool,
}

impl Config {
    /// Checks what clap cannot.
    pub fn validate(&self) -> Result<(), Error> {
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
