//! The agentnet indexer, as a library: [`Config`] holds its settings and [`run`] serves until
//! shutdown. The `agentnet indexer` subcommand is a thin entry point over this.
//!
//! Status: [`extract`] (commit → index changes, with lexicon validation and privacy) is
//! built; the firehose source, the stores and the embedder are being built (see the
//! project's issues), and [`run`] says so rather than pretending to serve.

pub mod chdb;
mod config;
pub mod embed;
pub mod extract;
pub mod records;
pub mod vectors;

pub use config::Config;

/// Why the indexer stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is unusable.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// This build does not include the service yet.
    #[error("the indexer is not part of this build yet")]
    NotBuilt,
}

/// Runs the indexer until `shutdown` resolves.
pub async fn run(
    config: Config,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), Error> {
    config.validate()?;
    drop(shutdown);
    Err(Error::NotBuilt)
}
