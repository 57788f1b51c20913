//! The agentnet relay, as a library: [`Config`] holds its settings and [`run`] serves until
//! shutdown. The `agentnet relay` subcommand is a thin entry point over this.
//!
//! ```text
//! hosts ─▶ upstream task per host ─▶ verifier shards (threads, by DID) ─▶ sequencer ─▶ log (redb, fsync)
//!                                                                              └─▶ broadcast ─▶ subscribers
//! ```
//! Every arrow is a bounded channel; every task is owned by one `JoinSet` (threads by their
//! join handles) under one cancellation token, and the first one to fail stops the relay.

mod config;
pub mod eventlog;
pub mod hosts;
pub mod jetstream;
pub mod kafka;
pub mod metrics;
mod server;
pub mod store;
mod stream;
mod upstream;
pub mod verify;

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use config::{Config, Tuning};
use metrics::Metrics;
use store::{Append, Store};
use verify::{Inbound, Shard, ShardContext, Verified};

/// Batches (of at most 64 events, one host's reads) queued per verifier shard. Full: the
/// host readers wait (backpressure), so a burst is absorbed without loss and without
/// unbounded memory.
const SHARD_QUEUE: usize = 32;
/// Batches of verified events queued for the sequencer (one per shard batch). Full:
/// shards wait.
const SEQUENCER_QUEUE: usize = 128;
/// Most events appended in one transaction (one fsync).
const MAX_BATCH: usize = 2048;
/// A batch this large is written without waiting for more (group commit).
const GROUP_TARGET: usize = 256;
/// How often a lingering sequencer looks for more events.
const LINGER_STEP: Duration = Duration::from_micros(250);
/// Hosts waiting to be added.
const NEW_HOST_QUEUE: usize = 64;

/// Why the relay stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is unusable.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The store failed; the relay stops rather than run without durability.
    #[error(transparent)]
    Store(#[from] store::StoreError),
    /// The listener could not be bound or the server failed.
    #[error("serving: {0}")]
    Serve(String),
    /// A task or thread died.
    #[error("relay task failed: {0}")]
    Task(String),
}

/// Runs the relay until `shutdown` resolves or a part of it fails.
pub async fn run(
    config: Config,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    config.validate()?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| Error::Serve(format!("{}: {e}", config.listen)))?;
    run_on(config, listener, shutdown).await
}

/// Like [`run`], on a listener the caller bound (tests bind port 0).
pub async fn run_on(
    config: Config,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    run_serving(
        config,
        listener,
        axum::Router::new(),
        Metrics::new(),
        shutdown,
    )
    .await
}

/// Like [`run_on`], also serving `routes` on the same listener (`agentnet up` puts the
/// appview there), counting into `metrics` (which the caller may read: `up`'s status
/// line). The routes must not overlap the relay's.
pub async fn run_serving(
    config: Config,
    listener: tokio::net::TcpListener,
    routes: axum::Router,
    metrics: Metrics,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    config.validate()?;
    let store = {
        let dir = config.data_dir.clone();
        tokio::task::spawn_blocking(move || Store::open(&dir))
            .await
            .map_err(|e| Error::Task(e.to_string()))??
    };
    let cancel = CancellationToken::new();
    let egress = config.egress();
    let resolver = Arc::new(
        atproto::identity::CachingResolver::new(
            atproto::identity::HttpResolver::new(atproto::identity::ResolverConfig {
                plc_url: config.plc_url.clone(),
                dev: config.dev,
                timeout: Duration::from_secs(10),
                egress: Some(egress.clone()),
            })
            .map_err(|e| Error::Config(e.to_string()))?,
            NonZeroUsize::new(config.tuning.identity_cache)
                .ok_or_else(|| Error::Config("identity cache must be > 0".into()))?,
            Duration::from_secs(config.tuning.identity_ttl_secs),
        )
        .with_negative_ttl(Duration::from_secs(
            config.tuning.identity_negative_ttl_secs,
        )),
    );
    let http_seed = egress
        .client(reqwest::Client::builder().timeout(Duration::from_secs(30)))
        .map_err(|e| Error::Config(e.to_string()))?;
    // Repairs follow no redirects: the repo must come from the PDS the DID document names.
    let http = egress
        .client_without_redirects(
            reqwest::Client::builder().connect_timeout(Duration::from_secs(10)),
        )
        .map_err(|e| Error::Config(e.to_string()))?;

    // Every stored host, with its limits, cursor, epoch and account counts, before the
    // shards start (they resume repairs of desynchronized accounts on those hosts).
    let stored_accounts = {
        let s = store.clone();
        tokio::task::spawn_blocking(move || s.accounts())
            .await
            .map_err(|e| Error::Task(e.to_string()))??
    };
    let stored_hosts = {
        let s = store.clone();
        tokio::task::spawn_blocking(move || s.hosts())
            .await
            .map_err(|e| Error::Task(e.to_string()))??
    };
    let hosts = hosts::Hosts::new(hosts::Growth {
        window: Duration::from_secs(config.tuning.host_accounts_growth_secs),
    });
    {
        let mut counts: HashMap<&str, (u64, u64)> = HashMap::new();
        for (_, a) in &stored_accounts {
            let c = counts.entry(&*a.host).or_default();
            c.0 += 1;
            c.1 += u64::from(a.desynchronized);
        }
        let defaults = config.default_limits();
        for h in &stored_hosts {
            let (accounts, desynced) = counts.get(h.url.as_str()).copied().unwrap_or_default();
            let host = hosts.get_or_add(&h.url, h.limits, defaults, accounts);
            host.resume(h.epoch, h.cursor);
            host.set_status(hosts::HostStatus::parse(&h.status));
            host.desynchronized
                .store(desynced, std::sync::atomic::Ordering::Relaxed);
        }
    }

    // Verifier shards on their own threads, each owning its accounts' state.
    let shards_n = match config.tuning.verifier_threads {
        0 => std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2),
        n => n,
    };
    let mut shard_accounts: Vec<verify::Accounts> = vec![verify::Accounts::default(); shards_n];
    for (did, state) in stored_accounts {
        shard_accounts[verify::shard_of(&did, shards_n)].insert(did, state);
    }
    let (seq_tx, seq_rx) = mpsc::channel::<Vec<Verified>>(SEQUENCER_QUEUE);
    let ctx = ShardContext {
        resolver: resolver.clone(),
        runtime: tokio::runtime::Handle::current(),
        dev: config.dev,
        lenient: config.tuning.lenient,
        metrics: metrics.clone(),
        http,
        repair: config.repair_config(),
        lookups: Arc::new(tokio::sync::Semaphore::new(config.tuning.identity_lookups)),
    };
    let mut shard_txs = Vec::with_capacity(shards_n);
    let mut threads = Vec::with_capacity(shards_n);
    for (i, accounts) in shard_accounts.into_iter().enumerate() {
        let (tx, rx) = mpsc::channel::<Vec<Inbound>>(SHARD_QUEUE);
        shard_txs.push(tx);
        let shard = Shard::new(ctx.clone(), accounts, hosts.clone());
        let out = seq_tx.clone();
        threads.push(
            std::thread::Builder::new()
                .name(format!("verify-{i}"))
                .spawn(move || shard.run(rx, out))
                .map_err(|e| Error::Task(e.to_string()))?,
        );
    }
    drop(seq_tx);

    let (live, _) = broadcast::channel::<store::Logged>(config.tuning.live_buffer.max(16));
    let mut tasks: JoinSet<Result<(), Error>> = JoinSet::new();
    {
        let (store, live, metrics) = (store.clone(), live.clone(), metrics.clone());
        let cancel = cancel.clone();
        let linger = Duration::from_millis(config.tuning.group_commit_ms);
        tasks.spawn_blocking(move || sequencer(store, seq_rx, live, metrics, cancel, linger));
    }
    let jetstream = jetstream::Hub::new(config.tuning.live_buffer);
    tasks.spawn(jetstream::run_hub(
        jetstream.clone(),
        live.subscribe(),
        cancel.clone(),
    ));
    if config.tuning.kafka.enabled() {
        tasks.spawn(kafka::publish(
            store.clone(),
            config.tuning.kafka.clone(),
            metrics.clone(),
            live.subscribe(),
            cancel.clone(),
        ));
    }
    tasks.spawn(retention(
        store.clone(),
        config.clone(),
        metrics.clone(),
        cancel.clone(),
    ));

    // Hosts: from the flags, from the store, and added while running.
    let (host_tx, host_rx) = mpsc::channel::<HostCommand>(NEW_HOST_QUEUE);
    let mut initial: Vec<String> = stored_hosts
        .iter()
        .filter(|h| h.status != "banned")
        .map(|h| h.url.clone())
        .collect();
    initial.extend(
        config
            .hosts
            .iter()
            .map(|h| h.trim_end_matches('/').to_string()),
    );
    tasks.spawn(crawler(
        initial,
        host_rx,
        Crawl {
            seeds: config.seed_relays.clone(),
            seed_http: http_seed,
            seed_into: host_tx.clone(),
            dev: config.dev,
            hosts: hosts.clone(),
            defaults: config.default_limits(),
            store: store.clone(),
            shards: shard_txs,
            metrics: metrics.clone(),
            config: upstream_config(&config, egress.clone()),
            cancel: cancel.clone(),
        },
    ));

    let app = server::router(server::AppState {
        store: store.clone(),
        live: live.clone(),
        jetstream,
        metrics: metrics.clone(),
        subscribers: Arc::new(AtomicUsize::new(0)),
        max_subscribers: config.tuning.max_subscribers,
        new_hosts: host_tx,
        admin_token: config.tuning.admin_token.clone(),
        dev: config.dev,
        send_timeout: Duration::from_secs(config.tuning.subscriber_send_timeout_secs.max(1)),
        hosts,
        default_limits: config.default_limits(),
        resolver,
        crawl_limiter: Arc::new(governor::RateLimiter::direct(governor::Quota::per_minute(
            std::num::NonZeroU32::new(config.tuning.crawl_requests_per_minute.max(1))
                .unwrap_or(std::num::NonZeroU32::MIN),
        ))),
        max_hosts: config.tuning.max_hosts,
        probe: egress
            .client(reqwest::Client::builder().timeout(Duration::from_secs(10)))
            .map_err(|e| Error::Config(e.to_string()))?,
        ping_interval: Duration::from_secs(config.tuning.subscriber_ping_secs.max(1)),
        dead_after: Duration::from_secs(config.tuning.subscriber_dead_secs.max(1)),
    })
    .merge(routes);
    let server_cancel = cancel.clone();
    tasks.spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .with_graceful_shutdown(async move { server_cancel.cancelled().await })
        .await
        .map_err(|e| Error::Serve(e.to_string()))
    });
    tracing::info!(listen = %config.listen, shards = shards_n, "relay running");

    let shutdown_cancel = cancel.clone();
    tokio::spawn(async move {
        shutdown.await;
        shutdown_cancel.cancel();
    });

    // The first task to end (an error, or the server after shutdown) ends the relay.
    let mut result = Ok(());
    if let Some(done) = tasks.join_next().await {
        result = match done {
            Ok(r) => r,
            Err(e) => Err(Error::Task(e.to_string())),
        };
    }
    cancel.cancel();
    while let Some(done) = tasks.join_next().await {
        if let (Ok(()), Ok(Err(e))) = (&result, done) {
            result = Err(e);
        }
    }
    for t in threads {
        if t.join().is_err() {
            result = result.and(Err(Error::Task("a verifier thread panicked".into())));
        }
    }
    result
}

/// Most hosts taken from one seed relay.
const MAX_SEEDED_HOSTS: usize = 100_000;

/// Adds every host another relay lists (`com.atproto.sync.listHosts`, paged). Failing to
/// reach the seed is logged, not fatal: the relay still crawls its other hosts.
async fn seed_from_relay(
    base: String,
    http: atproto::net::GuardedClient,
    hosts: mpsc::Sender<HostCommand>,
    dev: bool,
) {
    let base = base.trim_end_matches('/').to_string();
    let mut cursor: Option<String> = None;
    let mut taken = 0;
    loop {
        let mut query = vec![("limit", "1000")];
        if let Some(c) = &cursor {
            query.push(("cursor", c));
        }
        let url = atproto::net::xrpc_url(&base, "com.atproto.sync.listHosts", &query);
        let request = match http.get(&url) {
            Ok(r) => r,
            Err(error) => {
                tracing::warn!(%base, %error, "seed relay refused");
                return;
            }
        };
        let page: serde_json::Value = match request.send().await.and_then(|r| r.error_for_status())
        {
            Ok(resp) => match resp.json().await {
                Ok(v) => v,
                Err(error) => {
                    tracing::warn!(%base, %error, "seed relay sent an unreadable host list");
                    return;
                }
            },
            Err(error) => {
                tracing::warn!(%base, %error, "seed relay unreachable");
                return;
            }
        };
        let listed = page["hosts"].as_array().cloned().unwrap_or_default();
        for h in &listed {
            let Some(name) = h["hostname"].as_str() else {
                continue;
            };
            let url = hosts::normalize_url(name);
            if atproto::identity::check_host(&url, dev).is_err() {
                continue;
            }
            taken += 1;
            if taken > MAX_SEEDED_HOSTS || hosts.send(HostCommand::Crawl(url)).await.is_err() {
                return;
            }
        }
        cursor = page["cursor"].as_str().map(str::to_string);
        if cursor.is_none() || listed.is_empty() {
            return;
        }
    }
}

fn upstream_config(config: &Config, egress: atproto::net::Egress) -> upstream::UpstreamConfig {
    upstream::UpstreamConfig {
        idle_timeout: Duration::from_secs(config.tuning.idle_timeout_secs),
        min_backoff: Duration::from_millis(500),
        max_backoff: Duration::from_secs(60),
        egress,
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// What the crawler is told while it runs (by `requestCrawl`, seed relays and the
/// operator's admin endpoints).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostCommand {
    /// Crawl the host unless it is banned; a known host resumes from its cursor.
    Crawl(String),
    /// Stop crawling the host (banned or removed).
    Stop(String),
    /// Reconnect to the host (its cursor was reset).
    Restart(String),
}

/// What the crawler hands every host task.
struct Crawl {
    /// Relays whose host lists seed this one, with the client and queue for that.
    seeds: Vec<String>,
    seed_http: atproto::net::GuardedClient,
    seed_into: mpsc::Sender<HostCommand>,
    dev: bool,
    hosts: hosts::Hosts,
    defaults: hosts::Limits,
    store: Store,
    shards: Vec<mpsc::Sender<Vec<Inbound>>>,
    metrics: Metrics,
    config: upstream::UpstreamConfig,
    cancel: CancellationToken,
}

/// The crawler's hosts: one upstream task each, stoppable one by one.
struct Crawler {
    crawl: Crawl,
    running: HashMap<String, CancellationToken>,
    tasks: JoinSet<()>,
}

impl Crawler {
    fn start(&mut self, url: &str) {
        let c = &self.crawl;
        if self.running.contains_key(url) {
            return;
        }
        // Hosts known before this start are already registered with their stored state.
        let host = c.hosts.get_or_add(url, None, c.defaults, 0);
        if host.status() == hosts::HostStatus::Banned {
            return;
        }
        let stop = c.cancel.child_token();
        self.running.insert(url.to_string(), stop.clone());
        self.tasks.spawn(upstream::run_host(
            host,
            c.store.clone(),
            c.shards.clone(),
            c.metrics.clone(),
            c.config.clone(),
            stop,
        ));
        // Record the host so it is crawled again after a restart.
        let store = c.store.clone();
        let u = url.to_string();
        self.tasks.spawn(async move {
            let _ = tokio::task::spawn_blocking(move || store.ensure_host(&u)).await;
        });
    }

    fn stop(&mut self, url: &str) {
        if let Some(stop) = self.running.remove(url) {
            stop.cancel();
        }
    }

    fn handle(&mut self, command: HostCommand) {
        match command {
            HostCommand::Crawl(url) => self.start(&url),
            HostCommand::Stop(url) => self.stop(&url),
            HostCommand::Restart(url) => {
                self.stop(&url);
                self.start(&url);
            }
        }
    }
}

/// Starts one upstream task per host, now and as hosts are added; owns those tasks.
async fn crawler(
    initial: Vec<String>,
    mut commands: mpsc::Receiver<HostCommand>,
    mut crawl: Crawl,
) -> Result<(), Error> {
    let seeds = std::mem::take(&mut crawl.seeds);
    let seed_into = crawl.seed_into.clone();
    let (seed_http, dev, cancel) = (crawl.seed_http.clone(), crawl.dev, crawl.cancel.clone());
    let mut crawler = Crawler {
        crawl,
        running: HashMap::new(),
        tasks: JoinSet::new(),
    };
    for url in initial {
        crawler.start(&url);
    }
    for seed in seeds {
        crawler.tasks.spawn(seed_from_relay(
            seed,
            seed_http.clone(),
            seed_into.clone(),
            dev,
        ));
    }
    drop(seed_into);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            Some(command) = commands.recv() => crawler.handle(command),
            Some(done) = crawler.tasks.join_next() => {
                if let Err(e) = done {
                    return Err(Error::Task(format!("upstream task: {e}")));
                }
            }
        }
    }
    while crawler.tasks.join_next().await.is_some() {}
    Ok(())
}

/// Assigns `seq`, appends durably in batches (one transaction and fsync per batch), and only
/// then publishes each event to the live stream. Runs on its own thread: it is the one
/// place every event passes through, and on the async runtime it would queue behind
/// thousands of subscriber tasks that each event wakes.
fn sequencer(
    store: Store,
    mut input: mpsc::Receiver<Vec<Verified>>,
    live: broadcast::Sender<store::Logged>,
    metrics: Metrics,
    cancel: CancellationToken,
    linger: Duration,
) -> Result<(), Error> {
    // The head before anything new: what a restarted relay already holds.
    metrics.head_seq.set(store.last_seq()? as f64);
    while let Some(mut batch) = input.blocking_recv() {
        // Group commit: take what is queued; while the batch is small, wait up to `linger`
        // for more, so one write and fsync cover many events. The wait is this thread's
        // own (short sleeps), not a runtime timer: when the runtime is busy with thousands
        // of subscribers its timers fire late, and the log would wait with them.
        let deadline = Instant::now() + linger;
        while batch.len() < MAX_BATCH {
            match input.try_recv() {
                Ok(more) => batch.extend(more),
                Err(mpsc::error::TryRecvError::Empty)
                    if batch.len() < GROUP_TARGET && Instant::now() < deadline =>
                {
                    std::thread::sleep(LINGER_STEP.min(deadline - Instant::now()));
                }
                Err(_) => break,
            }
        }
        metrics.batch_events.record(batch.len() as f64);
        metrics.sequencer_queue.set(input.len() as f64);
        let mut appends: Vec<Append> = Vec::with_capacity(batch.len());
        let mut states: Vec<(String, store::AccountState)> = Vec::new();
        let mut received: Vec<Instant> = Vec::with_capacity(batch.len());
        // Per host: the upstream seqs this batch settles, and how many it publishes.
        let mut settled: HashMap<Arc<str>, (Arc<hosts::Host>, Vec<i64>, u64)> = HashMap::new();
        for v in batch {
            let (origin, published) = match v {
                Verified::Event {
                    append,
                    origin,
                    received: at,
                } => {
                    appends.push(*append);
                    received.push(at);
                    (origin, 1)
                }
                Verified::State { did, state, origin } => {
                    states.push((did, *state));
                    (origin, 0)
                }
                Verified::Skip(origin) => (origin, 0),
            };
            let entry = settled
                .entry(origin.host.url.clone())
                .or_insert_with(|| (origin.host.clone(), Vec::new(), 0));
            entry.1.extend(origin.upstream_seq);
            entry.2 += published;
        }
        // The cursor stored for each host is its low-water mark after this batch: never
        // past an event still in flight on another shard.
        let cursors: Vec<store::HostCursor> = settled
            .into_values()
            .map(|(host, seqs, events)| store::HostCursor {
                url: host.url.to_string(),
                epoch: host.epoch(),
                cursor: host.settle(seqs),
                events,
            })
            .collect();
        let durable = Instant::now();
        let written = append_until_written(&store, &appends, &states, &cursors, &metrics, &cancel)?;
        metrics
            .log_write_seconds
            .record(durable.elapsed().as_secs_f64());
        if let Some(last) = written.last() {
            metrics.head_seq.set(last.seq as f64);
        }
        // Counted up as events are written; retention sets it exactly after each pass.
        metrics.log_events.increment(written.len() as f64);
        for (event, at) in written.into_iter().zip(received) {
            metrics.events_out.increment(1);
            metrics.publish_seconds.record(at.elapsed().as_secs_f64());
            // No subscriber is not an error: the event is in the log for later replay.
            let _ = live.send(event);
        }
    }
    Ok(())
}

/// First wait after a failed log write; doubles up to the next.
const STORE_RETRY_MIN: Duration = Duration::from_millis(200);
/// Longest wait between tries of a failed log write.
const STORE_RETRY_MAX: Duration = Duration::from_secs(5);

/// Appends a batch, waiting out a store that refuses it (a full disk): the batch is kept,
/// the database reopened (redb refuses everything after an I/O failure until then) and the
/// write tried again with backoff. Nothing in the batch is acknowledged meanwhile (no
/// cursor moves, nothing is published), and the queues behind the sequencer fill, so the
/// hosts' readers wait instead of taking more. Shutting down while the store refuses ends
/// the wait with the store's error (the batch was never acknowledged, and its events are
/// read again from the hosts' cursors after a restart).
fn append_until_written(
    store: &Store,
    appends: &[Append],
    states: &[(String, store::AccountState)],
    cursors: &[store::HostCursor],
    metrics: &Metrics,
    cancel: &CancellationToken,
) -> Result<Vec<store::Logged>, Error> {
    let mut wait = STORE_RETRY_MIN;
    let mut failures = 0u64;
    loop {
        match store.append(appends, states, cursors, now_ms()) {
            Ok(written) => {
                if failures > 0 {
                    tracing::warn!(failures, "the event log accepts writes again");
                }
                return Ok(written);
            }
            Err(error) if cancel.is_cancelled() => return Err(Error::Store(error)),
            Err(error) => {
                failures += 1;
                metrics.store_failures.increment(1);
                if failures == 1 || failures.is_power_of_two() {
                    tracing::error!(%error, failures, "the event log refused a write (disk full?): holding the batch and retrying; nothing is acknowledged meanwhile");
                }
                std::thread::sleep(wait);
                wait = (wait * 2).min(STORE_RETRY_MAX);
                if let Err(error) = store.reopen() {
                    tracing::debug!(%error, "reopening the event log failed; trying again");
                }
            }
        }
    }
}

/// Bytes of the files under `dir`, `depth` levels of folders down (the log's segments and
/// state); what cannot be read counts as nothing.
fn dir_bytes(dir: &std::path::Path, depth: u32) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() && depth > 0 => dir_bytes(&e.path(), depth - 1),
            Ok(m) if m.is_file() => m.len(),
            _ => 0,
        })
        .sum()
}

/// Applies the retention policy every `retention_interval_secs`, and measures the log
/// (events, bytes) at start and after each pass.
async fn retention(
    store: Store,
    config: Config,
    metrics: Metrics,
    cancel: CancellationToken,
) -> Result<(), Error> {
    let max_age_ms = config.tuning.retention_hours.saturating_mul(3_600_000);
    metrics
        .retention_events
        .set(config.tuning.retention_events as f64);
    metrics
        .retention_hours
        .set(config.tuning.retention_hours as f64);
    // The first pass only measures; each later one prunes first.
    let mut prune = false;
    loop {
        let (s, dir) = (store.clone(), config.data_dir.clone());
        let max = config.tuning.retention_events;
        let pass = tokio::task::spawn_blocking(move || {
            if prune {
                s.prune(max, max_age_ms, now_ms())?;
            }
            Ok::<_, store::StoreError>((s.event_count()?, dir_bytes(&dir, 1)))
        })
        .await
        .map_err(|e| Error::Task(e.to_string()))?;
        // A store that refuses (a full disk) is the sequencer's to wait out; pruning tries
        // again next time.
        match pass {
            Ok((count, bytes)) => {
                metrics.log_events.set(count as f64);
                metrics.log_bytes.set(bytes as f64);
            }
            Err(error) => {
                tracing::warn!(%error, "retention could not prune or measure the log this time")
            }
        }
        prune = true;
        tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            _ = tokio::time::sleep(Duration::from_secs(config.tuning.retention_interval_secs.max(1))) => {}
        }
    }
}
