//! agentnet's composition: `agentnet up` (relay, indexer and appview in one process), the
//! operator's dashboard, and `up`'s status line. `src/main.rs` parses the command line and
//! sets up logging; everything it runs is here or in the service crates.

pub mod dashboard;
pub mod lexicon;
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
    let (closing, closing_rx) = tokio::sync::watch::channel(false);
    let dashboard = dashboard::routes(
        dashboard::Sources {
            relay: Some(std::sync::Arc::new({
                let m = metrics.clone();
                move || m.render()
            })),
            ..dashboard::Sources::default()
        },
        closing_rx,
    );
    let shutdown = async move {
        shutdown.await;
        let _ = closing.send(true);
    };
    agentnet_relay::run_serving(config, listener, dashboard, metrics, shutdown).await
}

/// `agentnet backfill`: runs it until done or `shutdown`, prints the summary line, and fails
/// when any account could not be backfilled (so scripts notice).
pub async fn backfill(
    config: agentnet_indexer::backfill::BackfillConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    use anyhow::Context;
    let summary = agentnet_indexer::backfill::run(config, shutdown)
        .await
        .context("backfill")?;
    println!(
        "backfill: {} accounts: {} written ({} records, {} rows, {} vectors, {} bytes), {} already current, {} not the host's, {} failed{}",
        summary.accounts,
        summary.done,
        summary.records,
        summary.rows,
        summary.vectors,
        summary.bytes,
        summary.current,
        summary.wrong_host,
        summary.failed,
        if summary.interrupted { "; stopped before the end: run it again to resume" } else { "" },
    );
    if summary.failed > 0 {
        anyhow::bail!(
            "{} accounts could not be backfilled (see the log); run again to retry them",
            summary.failed
        );
    }
    Ok(())
}
