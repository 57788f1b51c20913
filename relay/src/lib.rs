//! The agentnet relay, as a library: [`Config`] holds its settings and [`run`] serves until
//! shutdown. The `agentnet relay` subcommand is a thin entry point over this.
//!
//! Status: the configuration contract is fixed here; the service itself is being built
//! (see the project's issues), and [`run`] says so rather than pretending to serve.

mod config;

pub use config::Config;

/// Why the relay stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is unusable.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// This build does not include the service yet.
    #[error("the relay is not part of this build yet")]
    NotBuilt,
}

/// Runs the relay until `shutdown` resolves.
pub async fn run(
    config: Config,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), Error> {
    config.validate()?;
    drop(shutdown);
    Err(Error::NotBuilt)
}
