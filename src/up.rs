//! `agentnet up`: relay, indexer and appview in one process on embedded stores (or the
//! servers the options name), sharing one listener, with the operator's dashboard at `/`.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;

use crate::{dashboard, status};

/// `agentnet up`: relay, indexer and appview in one process on embedded stores, sharing
/// one listener.
#[derive(Debug, clap::Args)]
pub struct UpArgs {
    /// Address for the firehose, the sync and appview XRPC, the DID document and the
    /// dashboard.
    #[arg(long, env = "AGENTNET_UP_LISTEN", default_value = "127.0.0.1:2470")]
    pub listen: std::net::SocketAddr,
    /// Directory for everything: `relay/` (the event log) and `index/` (ClickHouse, vectors,
    /// the appview's key).
    #[arg(long, env = "AGENTNET_UP_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// A PDS to crawl, by full URL with port (repeatable).
    #[arg(long = "host", env = "AGENTNET_UP_HOSTS", value_delimiter = ',')]
    pub hosts: Vec<String>,
    /// PLC directory for resolving did:plc.
    #[arg(
        long,
        env = "AGENTNET_PLC_URL",
        default_value = "https://plc.directory"
    )]
    pub plc_url: String,
    /// Allow loopback and private hosts and plain-http did:web (local testing only).
    #[arg(long, env = "AGENTNET_DEV", default_value_t = false)]
    pub dev: bool,
    /// The embedding model.
    #[command(flatten)]
    pub model: store::Model,
    /// What callers may ask of the appview.
    #[command(flatten)]
    pub appview_limits: agentnet_appview::Limits,
    /// Where the record index and the vectors live: embedded (chDB, qdrant-edge) in the data
    /// directory by default, or ClickHouse and Qdrant servers, as for the separate services.
    #[command(flatten)]
    pub backends: store::Backends,
    /// The appview's DID; default `did:web:` + the listen address.
    #[arg(long, env = "AGENTNET_APPVIEW_DID")]
    pub appview_did: Option<String>,
    /// The URL agents reach this node at; default `http://` + the listen address.
    #[arg(long, env = "AGENTNET_UP_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Also run synthetic agents (on a loopback PDS fleet of their own) talking at all three
    /// privacy levels, so the firehose, inbox and recall show a live network.
    #[arg(long, env = "AGENTNET_UP_DEMO", default_value_t = false)]
    pub demo: bool,
    /// Demo agents.
    #[arg(long, env = "AGENTNET_UP_DEMO_AGENTS", default_value_t = 12)]
    pub demo_agents: usize,
    /// Demo records written per second, across all agents.
    #[arg(long, env = "AGENTNET_UP_DEMO_RATE", default_value_t = 2.0)]
    pub demo_rate: f64,
    /// No live status line (shown on standard error when it is a terminal: the relay's
    /// events in and out, the indexer's rows and lag, the appview's requests).
    #[arg(long, env = "AGENTNET_UP_NO_STATUS", default_value_t = false)]
    pub no_status: bool,
    /// The relay's settings, as `agentnet relay` takes them (the admin token among them,
    /// which also opens the dashboard's operator view).
    #[command(flatten)]
    pub relay: agentnet_relay::Tuning,
    /// The indexer's settings, as `agentnet indexer` takes them.
    #[command(flatten)]
    pub indexer: agentnet_indexer::Tuning,
}

/// Runs relay, indexer and appview in one process until `shutdown` resolves or a part
/// fails, on `args.listen`. With `--demo`, a synthetic fleet on a loopback port feeds it.
pub async fn run(
    args: UpArgs,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    run_on(args, listener, shutdown).await
}

/// Like [`run`], on a listener the caller bound (tests bind port 0).
pub async fn run_on(
    args: UpArgs,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let addr = listener.local_addr()?;
    let local = if addr.ip().is_unspecified() {
        std::net::SocketAddr::from(([127, 0, 0, 1], addr.port()))
    } else {
        addr
    };
    let did = args
        .appview_did
        .clone()
        .unwrap_or_else(|| agentnet_appview::did_web_for(&local));
    let public_url = args
        .public_url
        .clone()
        .unwrap_or_else(|| format!("http://{local}"));
    let index_dir = args.data_dir.join("index");
    std::fs::create_dir_all(&index_dir)
        .with_context(|| format!("creating {}", index_dir.display()))?;
    let key = agentnet_indexer::appview_key(&index_dir.join("appview-key.json"), &did)?;

    // Every setting is up's own or in its flattened relay and indexer settings: nothing
    // is read from an environment variable that `up --help` does not show.
    let mut relay = agentnet_relay::Config {
        listen: addr,
        data_dir: args.data_dir.join("relay"),
        plc_url: args.plc_url.clone(),
        hosts: args.hosts.clone(),
        seed_relays: Vec::new(),
        dev: args.dev,
        egress_allow: Vec::new(),
        tuning: args.relay.clone(),
    };
    let mut indexer = agentnet_indexer::Config {
        relay_url: format!("ws://{local}"),
        index: agentnet_indexer::IndexConfig {
            data_dir: index_dir.clone(),
            // One set of stores, opened once below and shared by the indexer and the appview.
            backends: args.backends.clone(),
            model: args.model.clone(),
            appview_did: did.clone(),
            appview_key: None,
            appview_key_file: None,
            optimize_every: agentnet_indexer::DEFAULT_OPTIMIZE_EVERY,
            plc_url: args.plc_url.clone(),
            dev: args.dev,
            egress_allow: Vec::new(),
        },
        metrics_listen: None,
        tuning: args.indexer.clone(),
        kafka: agentnet_indexer::kafka::KafkaConfig::off(),
        force_upstream: false,
    };

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };

    let mut fleet = None;
    if args.demo {
        let fleet_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let fleet_addr = fleet_listener.local_addr()?;
        let config = agentnet_fleet::FleetConfig {
            listen: fleet_addr,
            accounts: args.demo_agents,
            rate: args.demo_rate,
            keys: "mix".into(),
            cloudflare: false,
            ops_per_commit: 1,
            traffic: "conversation".into(),
            appview: Some(format!("{did}={}", key.public().multikey())),
        };
        relay.hosts.push(format!("http://{fleet_addr}"));
        relay.plc_url = format!("http://{fleet_addr}/plc");
        // The demo fleet is on loopback.
        relay.dev = true;
        fleet = Some(tokio::spawn(agentnet_fleet::run_on(
            config,
            fleet_listener,
            stopped(stop_rx.clone()),
        )));
    }

    // Keys for repos fetched on #sync come from the same directory the relay uses.
    indexer.index.plc_url = relay.plc_url.clone();
    // One model instance for indexing (a blocking thread), one for queries (the batcher).
    let embedder = agentnet_indexer::load_model(&indexer.index)?;
    let stores = {
        let (config, dims) = (
            indexer.index.clone(),
            embedder.as_ref().map(store::embed::Embedder::dimensions),
        );
        tokio::task::spawn_blocking(move || agentnet_indexer::open_stores(&config, dims)).await??
    };
    let mut embed_thread = None;
    let recall = match (args.model.load()?, &stores.vectors) {
        (Some(model), Some(vectors)) => {
            let (batcher, thread) =
                store::embed::Batcher::start(model, agentnet_appview::QUERY_BATCH);
            embed_thread = Some(thread);
            Some((batcher, vectors.clone()))
        }
        _ => None,
    };
    let appview = agentnet_appview::Appview::new(agentnet_appview::Parts {
        did: did.clone(),
        public_url: public_url.clone(),
        key: key.public(),
        records: stores.records.clone(),
        recall,
        plc_url: relay.plc_url.clone(),
        dev: relay.dev,
        limits: args.appview_limits.clone(),
    })?;

    println!("agentnet is up: relay, indexer and appview on {local}");
    println!(
        "  dashboard http://{local}/ (admin token: {})",
        if args.relay.admin_token.is_empty() {
            "none, --admin-token for the operator's view"
        } else {
            "set"
        }
    );
    println!("  firehose  ws://{local}/xrpc/com.atproto.sync.subscribeRepos?cursor=0");
    println!("  agents    http://{local}/xrpc/agent.comms.listAgents");
    println!("  recall    http://{local}/xrpc/agent.memory.recall?q=database+credentials");
    println!("  appview   {did} (http://{local}/.well-known/did.json)");
    println!("  metrics   http://{local}/metrics (relay), http://{local}/metrics/indexer, http://{local}/metrics/appview");
    if !args.model.configured() {
        println!("  (no --model-dir: records are indexed without vectors; recall is off)");
    }
    if args.demo {
        println!(
            "  demo      {} synthetic agents writing {} records/s at all three privacy levels",
            args.demo_agents, args.demo_rate
        );
    }

    let stats = agentnet_indexer::Stats::new();
    // The router takes the appview (and so the query batcher) whole: when the relay stops
    // serving it, the model thread can end.
    let appview_metrics = appview.metrics();
    let appview_route = agentnet_appview::metrics_route(&appview);
    let relay_metrics = agentnet_relay::metrics::Metrics::new();
    let dashboard = dashboard::routes(
        dashboard::Sources {
            relay: Some(Arc::new({
                let m = relay_metrics.clone();
                move || m.render()
            })),
            indexer: Some(Arc::new({
                let stats = stats.clone();
                move || stats.prometheus()
            })),
            appview: Some(Arc::new({
                let m = appview_metrics.clone();
                move || m.render()
            })),
        },
        stop_rx.clone(),
    );
    let routes = agentnet_appview::router_beside_dashboard(appview)
        .route(
            "/metrics/indexer",
            axum::routing::get({
                let stats = stats.clone();
                move || async move { stats.prometheus() }
            }),
        )
        .route("/metrics/appview", appview_route)
        .merge(dashboard);
    let status =
        (!args.no_status && std::io::IsTerminal::is_terminal(&std::io::stderr())).then(|| {
            let (relay, stats, appview) = (relay_metrics.clone(), stats.clone(), appview_metrics);
            tokio::spawn(status::show(move || {
                status::Sample::take(&relay.render(), &stats.snapshot(), &appview.render())
            }))
        });
    let relay_task = tokio::spawn(agentnet_relay::run_serving(
        relay,
        listener,
        routes,
        relay_metrics,
        stopped(stop_rx.clone()),
    ));
    let indexer_task = tokio::spawn(agentnet_indexer::run_with(
        indexer,
        stores,
        embedder,
        key,
        stats,
        stopped(stop_rx.clone()),
    ));
    // Whichever ends first (a signal, or a part failing) stops the others.
    let signal = tokio::spawn(shutdown);
    let (mut relay_task, mut indexer_task) = (relay_task, indexer_task);
    let mut relay_done = None;
    let mut indexer_done = None;
    tokio::select! {
        _ = signal => {}
        r = &mut relay_task => relay_done = Some(r),
        r = &mut indexer_task => indexer_done = Some(r),
    }
    let _ = stop_tx.send(true);
    if let Some(status) = status {
        status.abort();
        eprintln!();
    }
    let relay_result = match relay_done {
        Some(r) => r,
        None => relay_task.await,
    };
    let indexer_result = match indexer_done {
        Some(r) => r,
        None => indexer_task.await,
    };
    let fleet_result = match fleet {
        Some(task) => Some(task.await),
        None => None,
    };
    if let Some(thread) = embed_thread {
        // Every batcher handle went with the appview's router; the model thread ends.
        tokio::task::spawn_blocking(move || thread.join())
            .await?
            .map_err(|_| anyhow::anyhow!("the query embedding thread panicked"))?;
    }
    relay_result?.context("relay")?;
    indexer_result?.context("indexer")?;
    if let Some(r) = fleet_result {
        r?.context("demo fleet")?;
    }
    Ok(())
}
