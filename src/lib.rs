//! agentnet's composition: `agentnet up` (relay, indexer and appview in one process), the
//! operator's dashboard, and `up`'s status line. `src/main.rs` parses the command line and
//! sets up logging; everything it runs is here or in the service crates.

pub mod dashboard;
pub mod status;
pub mod up;

/// `agentnet relay`: the relay alone on its own listener, with the dashboard (the relay's
/// part of it) at `/`.
pub async fn relay(
    config: agentnet_relay::Config,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), agentnet_relay::Error> {
    config.validate()?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| agentnet_relay::Error::Serve(format!("{}: {e}", config.listen)))?;
    let metrics = agentnet_relay::metrics::Metrics::new();
    let dashboard = dashboard::routes(dashboard::Sources {
        relay: Some(std::sync::Arc::new({
            let m = metrics.clone();
            move || m.render()
        })),
        ..dashboard::Sources::default()
    });
    agentnet_relay::run_serving(config, listener, dashboard, metrics, shutdown).await
}
