//! `agentnet backfill`: whole repos into the index, for records older than the relay's log
//! or written before the indexer ran.
//!
//! ```text
//! listRepos (paged, per host) ─▶ accounts ─▶ fetchers: DID → key and PDS, getRepo, verify ─▶ writer: sinks, then progress
//! ```
//!
//! - Accounts come from each `--host`'s `listRepos` (every page) and from `--did`s (their
//!   PDS is the one their DID document names).
//! - Every repo is verified before anything of it is written: its CAR's blocks against
//!   their CIDs, the commit's signature against the account's current key from its DID
//!   document, the tree walked from the signed root. A host listing an account whose DID
//!   document names another PDS is not believed (hosts lie): the account is skipped.
//! - Records go through the indexer's own sinks (lexicons, privacy, the appview's key,
//!   embeddings), so a backfilled record is indexed exactly as if it came from the
//!   firehose; rows are versioned by rev, so a newer version from the firehose still wins.
//! - After an account's rows and vectors are written, its rev is saved in the index
//!   (`backfill` table). A run that is stopped (or killed) and started again skips every
//!   account whose repo is still at the saved rev.
//! - `--concurrency` repos in flight in all, `--host-concurrency` and
//!   `--host-requests-per-second` per host. A repo that cannot be fetched is tried again
//!   with backoff; one that fails for good, or does not verify, is counted and logged and
//!   the others go on.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;

use crate::extract::{AppviewKey, Extractor, RepoRecords};
use crate::pipeline::{BatchStats, Optimizer, Sinks};
use crate::{Error, IndexConfig, Stats};

/// `agentnet backfill` settings. Every option has a default and an `AGENTNET_…`
/// environment override.
#[derive(Debug, Clone, clap::Args)]
pub struct BackfillConfig {
    /// A PDS whose every repo is backfilled (base URL; repeatable, comma-separated).
    #[arg(long = "host", env = "AGENTNET_BACKFILL_HOSTS", value_delimiter = ',')]
    pub hosts: Vec<String>,
    /// An account to backfill, from the PDS its DID document names (repeatable,
    /// comma-separated).
    #[arg(long = "did", env = "AGENTNET_BACKFILL_DIDS", value_delimiter = ',')]
    pub dids: Vec<String>,
    /// Repos fetched and verified at once, over all hosts.
    #[arg(long, env = "AGENTNET_BACKFILL_CONCURRENCY", default_value_t = 8)]
    pub concurrency: usize,
    /// Repos fetched at once from any one host.
    #[arg(long, env = "AGENTNET_BACKFILL_HOST_CONCURRENCY", default_value_t = 2)]
    pub host_concurrency: usize,
    /// Requests per second to any one host (`listRepos` pages, `getLatestCommit`,
    /// `getRepo`).
    #[arg(long, env = "AGENTNET_BACKFILL_HOST_RPS", default_value_t = 10)]
    pub host_requests_per_second: u32,
    /// Largest repo fetched, in bytes; a larger one is counted as failed.
    #[arg(long, env = "AGENTNET_BACKFILL_MAX_REPO_BYTES", default_value_t = 256 * 1024 * 1024)]
    pub max_repo_bytes: usize,
    /// Fetch every account again, even those already backfilled at their current rev.
    #[arg(long, env = "AGENTNET_BACKFILL_AGAIN", default_value_t = false)]
    pub again: bool,
    /// How progress is shown: `auto` (a bar on a terminal, log lines otherwise), `bar`,
    /// or `log` (a line at info level every `--progress-secs`).
    #[arg(long, env = "AGENTNET_BACKFILL_PROGRESS", default_value = "auto")]
    pub progress: ProgressStyle,
    /// Seconds between progress lines when they are logged.
    #[arg(long, env = "AGENTNET_BACKFILL_PROGRESS_SECS", default_value_t = 5)]
    pub progress_secs: u64,
    /// Where records are indexed, and with which key and model.
    #[command(flatten)]
    pub index: IndexConfig,
}

/// How backfill progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProgressStyle {
    /// A bar when standard error is a terminal, log lines otherwise.
    Auto,
    /// A bar.
    Bar,
    /// Log lines.
    Log,
}

impl BackfillConfig {
    /// Checks what clap cannot.
    pub fn validate(&self) -> Result<(), Error> {
        if self.hosts.is_empty() && self.dids.is_empty() {
            return Err(Error::Config(
                "nothing to backfill: name a --host or a --did".into(),
            ));
        }
        if self.concurrency == 0 || self.host_concurrency == 0 {
            return Err(Error::Config(
                "--concurrency and --host-concurrency must be positive".into(),
            ));
        }
        if self.host_requests_per_second == 0 {
            return Err(Error::Config(
                "--host-requests-per-second must be positive".into(),
            ));
        }
        for host in &self.hosts {
            if !(host.starts_with("https://") || host.starts_with("http://")) {
                return Err(Error::Config(format!(
                    "--host {host}: a base URL (https://…) is expected"
                )));
            }
        }
        for did in &self.dids {
            atproto::syntax::validate_did(did)
                .map_err(|e| Error::Config(format!("--did {did}: {e}")))?;
        }
        self.index.validate()
    }
}

/// Accounts listed and not yet taken by a fetcher. When full, listing waits: a host with a
/// million repos is listed as fast as they are fetched, not into memory.
const TODO_QUEUE: usize = 1024;
/// Verified repos waiting for the writer (each may be large). When full, fetchers wait.
const WRITE_QUEUE: usize = 4;
/// `listRepos` page size (the most the spec allows).
const LIST_PAGE: usize = 1000;
/// Most `listRepos` pages read from one host: a host that never stops paging (a loop of
/// cursors) is cut off there.
const MAX_LIST_PAGES: usize = 100_000;
/// Tries of one request before the account (or the host's listing) counts as failed.
const TRIES: u32 = 3;
/// Wait before the second try; doubles after.
const RETRY_WAIT: Duration = Duration::from_millis(500);
/// Longest one request (a whole repo included) may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(300);

/// What a backfill did, also read live by the progress display.
#[derive(Debug, Default)]
pub struct Progress {
    /// Accounts listed or named.
    pub accounts: AtomicU64,
    /// Accounts written into the index.
    pub done: AtomicU64,
    /// Accounts already backfilled at their current rev (skipped).
    pub current: AtomicU64,
    /// Accounts whose DID document names another PDS than the host that listed them.
    pub wrong_host: AtomicU64,
    /// Accounts that could not be fetched, resolved or verified.
    pub failed: AtomicU64,
    /// Records found in the repos written (indexable or not).
    pub records: AtomicU64,
    /// Rows written to the record index.
    pub rows: AtomicU64,
    /// Vectors written.
    pub vectors: AtomicU64,
    /// Repo bytes fetched.
    pub bytes: AtomicU64,
}

/// The totals of a finished backfill.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// Accounts listed or named.
    pub accounts: u64,
    /// Accounts written into the index.
    pub done: u64,
    /// Accounts skipped as already backfilled at their current rev.
    pub current: u64,
    /// Accounts skipped because the listing host is not their PDS.
    pub wrong_host: u64,
    /// Accounts that failed.
    pub failed: u64,
    /// Records in the repos written.
    pub records: u64,
    /// Rows written.
    pub rows: u64,
    /// Vectors written.
    pub vectors: u64,
    /// Repo bytes fetched.
    pub bytes: u64,
    /// Whether the run was stopped before every account was taken.
    pub interrupted: bool,
}

impl Progress {
    fn summary(&self, interrupted: bool) -> Summary {
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Summary {
            accounts: n(&self.accounts),
            done: n(&self.done),
            current: n(&self.current),
            wrong_host: n(&self.wrong_host),
            failed: n(&self.failed),
            records: n(&self.records),
            rows: n(&self.rows),
            vectors: n(&self.vectors),
            bytes: n(&self.bytes),
            interrupted,
        }
    }

    /// Accounts finished one way or another.
    fn settled(&self) -> u64 {
        [&self.done, &self.current, &self.wrong_host, &self.failed]
            .iter()
            .map(|a| a.load(Ordering::Relaxed))
            .sum()
    }
}

/// One account to backfill.
#[derive(Debug)]
struct Account {
    did: String,
    /// The host that listed it (`None`: a `--did`, fetched from its own PDS).
    host: Option<String>,
    /// The rev the listing gave, if any.
    rev: Option<String>,
}

/// A verified repo on its way to the writer.
struct Fetched {
    did: String,
    records: RepoRecords,
    found: usize,
}

/// Politeness towards one host: requests per second and repos at once.
struct HostGate {
    rate: governor::DefaultDirectRateLimiter,
    slots: Semaphore,
}

/// Everything the listing and the fetchers share.
struct Shared {
    http: atproto::net::GuardedClient,
    resolver: atproto::identity::CachingResolver<atproto::identity::HttpResolver>,
    extractor: Arc<Extractor>,
    gates: Mutex<HashMap<String, Arc<HostGate>>>,
    done: HashMap<String, String>,
    config: BackfillConfig,
    progress: Arc<Progress>,
}

impl Shared {
    fn gate(&self, host: &str) -> Arc<HostGate> {
        let key = host.trim_end_matches('/').to_ascii_lowercase();
        let mut gates = self.gates.lock().unwrap_or_else(|p| p.into_inner());
        gates
            .entry(key)
            .or_insert_with(|| {
                let rps = NonZeroU32::new(self.config.host_requests_per_second)
                    .unwrap_or(NonZeroU32::MIN);
                Arc::new(HostGate {
                    rate: governor::RateLimiter::direct(governor::Quota::per_second(rps)),
                    slots: Semaphore::new(self.config.host_concurrency),
                })
            })
            .clone()
    }

    /// GET `method` on `host` within the host's rate, tried up to [`TRIES`] times on a
    /// network error or a 5xx/429 answer; the body, at most `max` bytes.
    async fn get(
        &self,
        host: &str,
        method: &str,
        query: &[(&str, &str)],
        max: usize,
    ) -> Result<Vec<u8>, String> {
        let gate = self.gate(host);
        let url = atproto::net::xrpc_url(host, method, query);
        let mut wait = RETRY_WAIT;
        let mut tries = 0;
        loop {
            tries += 1;
            gate.rate.until_ready().await;
            match self.get_once(&url, max).await {
                Ok(body) => return Ok(body),
                Err((retry, why)) if retry && tries < TRIES => {
                    tracing::debug!(%url, %why, retry_in = ?wait, "request failed; trying again");
                    tokio::time::sleep(wait).await;
                    wait *= 2;
                }
                Err((_, why)) => return Err(format!("{method}: {why}")),
            }
        }
    }

    /// One GET: the body, or whether trying again may help and why not.
    async fn get_once(&self, url: &str, max: usize) -> Result<Vec<u8>, (bool, String)> {
        let request = self.http.get(url).map_err(|e| (false, e.to_string()))?;
        let mut resp = request.send().await.map_err(|e| (true, e.to_string()))?;
        let status = resp.status();
        if !status.is_success() {
            let retry = status.is_server_error() || status.as_u16() == 429;
            return Err((retry, format!("HTTP {status}")));
        }
        if resp.content_length().is_some_and(|n| n > max as u64) {
            return Err((false, format!("answer over {max} bytes")));
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| (true, e.to_string()))? {
            if body.len() + chunk.len() > max {
                return Err((false, format!("answer over {max} bytes")));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    /// Every account `host` lists, page by page, into `todo`.
    async fn list(&self, host: &str, todo: &mpsc::Sender<Account>) -> Result<(), String> {
        #[derive(serde::Deserialize)]
        struct Page {
            #[serde(default)]
            repos: Vec<Repo>,
            cursor: Option<String>,
        }
        #[derive(serde::Deserialize)]
        struct Repo {
            did: String,
            rev: Option<String>,
            #[serde(default = "yes")]
            active: bool,
        }
        fn yes() -> bool {
            true
        }
        let limit = LIST_PAGE.to_string();
        let mut cursor: Option<String> = None;
        for _ in 0..MAX_LIST_PAGES {
            let mut query = vec![("limit", limit.as_str())];
            if let Some(c) = &cursor {
                query.push(("cursor", c.as_str()));
            }
            let body = self
                .get(host, "com.atproto.sync.listRepos", &query, 16 * 1024 * 1024)
                .await?;
            let page: Page = serde_json::from_slice(&body)
                .map_err(|e| format!("listRepos: not a listRepos answer: {e}"))?;
            for repo in page.repos {
                if !repo.active {
                    continue;
                }
                if atproto::syntax::validate_did(&repo.did).is_err() {
                    tracing::warn!(%host, did = %repo.did, "listRepos named something that is no DID; skipped");
                    continue;
                }
                self.progress.accounts.fetch_add(1, Ordering::Relaxed);
                let account = Account {
                    did: repo.did,
                    host: Some(host.to_string()),
                    rev: repo.rev,
                };
                if todo.send(account).await.is_err() {
                    return Ok(());
                }
            }
            // The last page has no cursor (or, from some hosts, the same one again).
            match page.cursor {
                Some(next) if Some(&next) != cursor.as_ref() => cursor = Some(next),
                _ => return Ok(()),
            }
        }
        tracing::warn!(%host, pages = MAX_LIST_PAGES, "listRepos did not end; listing cut off");
        Ok(())
    }

    /// Whether `did` is already in the index at `rev`.
    fn is_current(&self, did: &str, rev: Option<&str>) -> bool {
        !self.config.again && rev.is_some() && self.done.get(did).map(String::as_str) == rev
    }

    /// Resolves, fetches and verifies one account's repo. `Ok(None)`: nothing to write
    /// (already current, or not the listing host's account).
    async fn fetch(&self, account: Account) -> Result<Option<Fetched>, String> {
        let did = account.did;
        if self.is_current(&did, account.rev.as_deref()) {
            self.progress.current.fetch_add(1, Ordering::Relaxed);
            return Ok(None);
        }
        let id = self
            .resolver
            .identity(&did)
            .await
            .map_err(|e| format!("resolving the DID: {e}"))?;
        let host = match account.host {
            Some(host) => {
                if !atproto::identity::same_host(id.pds.as_deref(), &host, self.config.index.dev) {
                    tracing::warn!(%did, %host, pds = ?id.pds, "the host listed an account whose DID document names another PDS; skipped");
                    self.progress.wrong_host.fetch_add(1, Ordering::Relaxed);
                    return Ok(None);
                }
                host
            }
            None => id
                .pds
                .clone()
                .ok_or("the DID document names no PDS".to_string())?,
        };
        let gate = self.gate(&host);
        let _slot = gate.slots.acquire().await.map_err(|e| e.to_string())?;
        if account.rev.is_none() && !self.config.again && self.done.contains_key(&did) {
            // Not listed with a rev: ask for it before fetching a whole repo.
            let latest = self
                .get(
                    &host,
                    "com.atproto.sync.getLatestCommit",
                    &[("did", &did)],
                    64 * 1024,
                )
                .await?;
            let latest: serde_json::Value =
                serde_json::from_slice(&latest).map_err(|e| format!("getLatestCommit: {e}"))?;
            if self.is_current(&did, latest["rev"].as_str()) {
                self.progress.current.fetch_add(1, Ordering::Relaxed);
                return Ok(None);
            }
        }
        let max = self.config.max_repo_bytes;
        let body = self
            .get(&host, "com.atproto.sync.getRepo", &[("did", &did)], max)
            .await?;
        self.progress
            .bytes
            .fetch_add(body.len() as u64, Ordering::Relaxed);
        // Verification and extraction are CPU work: off the runtime.
        let (key, extractor) = (id.signing_key.clone(), self.extractor.clone());
        tokio::task::spawn_blocking(move || {
            let limits = atproto::car::CarLimits {
                max_bytes: max,
                ..atproto::car::CarLimits::REPO
            };
            let car =
                atproto::car::read_car(&body, limits).map_err(|e| format!("repo CAR: {e}"))?;
            let repo = atproto::commit::RepoSnapshot::read_verified(&did, &car, &key)
                .map_err(|e| format!("repo does not verify: {e}"))?;
            let found = repo.entries.len();
            let records = extractor.extract_snapshot(&did, repo, &car.blocks);
            Ok(Some(Fetched {
                did,
                records,
                found,
            }))
        })
        .await
        .map_err(|e| format!("verifying the repo: {e}"))?
    }
}

/// Backfills what `config` names into its index until done or `shutdown` resolves. A stop
/// finishes the repos already fetched; the next run resumes after them.
pub async fn run(
    config: BackfillConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<Summary, Error> {
    config.validate()?;
    let (key, embedder, stores) = crate::open(&config.index).await?;
    // One extractor: the writer's sinks hold one, the fetchers share a copy.
    let extractor = Extractor::new(
        lexicons::catalog().map_err(|e| Error::Config(e.to_string()))?,
        Some(AppviewKey {
            did: config.index.appview_did.clone(),
            key,
        }),
    );
    let vectors = match (embedder, stores.vectors) {
        (Some(e), Some(v)) => Some((e, v)),
        _ => None,
    };
    let sinks = Sinks {
        extractor: extractor.clone(),
        records: stores.records,
        vectors,
        stats: Stats::new(),
        optimize: Optimizer::every(config.index.optimize_every),
        repos: None,
    };
    let done = if config.again {
        HashMap::new()
    } else {
        let records = sinks.records.clone();
        tokio::task::spawn_blocking(move || records.backfilled())
            .await
            .map_err(|e| Error::Sink(e.to_string()))?
            .map_err(|e| Error::Sink(e.to_string()))?
    };
    let egress = config.index.egress();
    let http = egress
        .client(reqwest::Client::builder().timeout(REQUEST_TIMEOUT))
        .map_err(|e| Error::Config(e.to_string()))?;
    let resolver = crate::resolver(&egress, &config.index.plc_url, config.index.dev)?;
    let progress = Arc::new(Progress::default());
    let shared = Arc::new(Shared {
        http,
        resolver,
        extractor: Arc::new(extractor),
        gates: Mutex::default(),
        done,
        config: config.clone(),
        progress: progress.clone(),
    });
    tracing::info!(hosts = ?config.hosts, dids = config.dids.len(), already = shared.done.len(), "backfill starting");

    let cancel = tokio_util::sync::CancellationToken::new();
    let (todo_tx, todo_rx) = mpsc::channel::<Account>(TODO_QUEUE);
    let (write_tx, write_rx) = mpsc::channel::<Fetched>(WRITE_QUEUE);
    let mut tasks: JoinSet<Result<(), Error>> = JoinSet::new();

    // Listing: the named DIDs, then every host's repos.
    {
        let (shared, cancel) = (shared.clone(), cancel.clone());
        let (hosts, dids) = (config.hosts.clone(), config.dids.clone());
        tasks.spawn(async move {
            let listing = async {
                for did in dids {
                    shared.progress.accounts.fetch_add(1, Ordering::Relaxed);
                    let account = Account {
                        did,
                        host: None,
                        rev: None,
                    };
                    if todo_tx.send(account).await.is_err() {
                        return;
                    }
                }
                for host in hosts {
                    if let Err(error) = shared.list(host.trim_end_matches('/'), &todo_tx).await {
                        tracing::error!(%host, %error, "could not list the host's repos; its accounts are not backfilled");
                    }
                }
            };
            tokio::select! {
                _ = cancel.cancelled() => {}
                _ = listing => {}
            }
            Ok(())
        });
    }
    // Fetchers: take accounts until the listing ends or the run stops.
    let todo_rx = Arc::new(tokio::sync::Mutex::new(todo_rx));
    for _ in 0..config.concurrency {
        let (shared, cancel, todo_rx, write_tx) = (
            shared.clone(),
            cancel.clone(),
            todo_rx.clone(),
            write_tx.clone(),
        );
        tasks.spawn(async move {
            loop {
                let next = tokio::select! {
                    _ = cancel.cancelled() => None,
                    a = async { todo_rx.lock().await.recv().await } => a,
                };
                let Some(account) = next else { return Ok(()) };
                let did = account.did.clone();
                let fetched = tokio::select! {
                    _ = cancel.cancelled() => return Ok(()),
                    f = shared.fetch(account) => f,
                };
                match fetched {
                    Ok(Some(repo)) => {
                        if write_tx.send(repo).await.is_err() {
                            return Ok(());
                        }
                    }
                    Ok(None) => {}
                    Err(error) => {
                        shared.progress.failed.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(%did, %error, "account not backfilled");
                    }
                }
            }
        });
    }
    drop(write_tx);
    // The writer: one repo at a time through the sinks, then its progress.
    let writer = {
        let progress = progress.clone();
        tokio::spawn(write(sinks, write_rx, progress))
    };
    let display = tokio::spawn(show(
        progress.clone(),
        config.progress,
        Duration::from_secs(config.progress_secs.max(1)),
    ));
    let stopper = {
        let cancel = cancel.clone();
        tokio::spawn(async move {
            shutdown.await;
            tracing::info!("backfill stopping: finishing the repos already fetched");
            cancel.cancel();
        })
    };
    let mut failure = None;
    while let Some(joined) = tasks.join_next().await {
        let result = joined.map_err(|e| Error::Sink(format!("backfill task: {e}")));
        if let Err(e) = result.and_then(|r| r) {
            failure.get_or_insert(e);
            cancel.cancel();
        }
    }
    let written = writer
        .await
        .map_err(|e| Error::Sink(format!("backfill writer: {e}")))?;
    let interrupted = cancel.is_cancelled();
    stopper.abort();
    display.abort();
    let _ = display.await;
    let mut sinks = written?;
    if let Some(e) = failure {
        return Err(e);
    }
    tokio::task::spawn_blocking(move || sinks.optimize.finish())
        .await
        .map_err(|e| Error::Sink(e.to_string()))??;
    let summary = progress.summary(interrupted);
    tracing::info!(?summary, "backfill finished");
    Ok(summary)
}

/// Writes each verified repo through the sinks and then saves the account's progress. A
/// store that refuses a repo is tried again with backoff, [`TRIES`] times; then the
/// backfill stops (what was saved stays saved).
async fn write<T: store::records::SqlTransport + 'static>(
    mut sinks: Sinks<T>,
    mut input: mpsc::Receiver<Fetched>,
    progress: Arc<Progress>,
) -> Result<Sinks<T>, Error> {
    while let Some(mut repo) = input.recv().await {
        let mut wait = RETRY_WAIT;
        let mut tries = 0;
        loop {
            tries += 1;
            let (back, job, result) = tokio::task::spawn_blocking(move || {
                let result = write_one(&mut sinks, &repo);
                (sinks, repo, result)
            })
            .await
            .map_err(|e| Error::Sink(e.to_string()))?;
            (sinks, repo) = (back, job);
            match result {
                Ok(stats) => {
                    progress.done.fetch_add(1, Ordering::Relaxed);
                    progress
                        .records
                        .fetch_add(repo.found as u64, Ordering::Relaxed);
                    progress
                        .rows
                        .fetch_add(stats.rows as u64, Ordering::Relaxed);
                    progress
                        .vectors
                        .fetch_add(stats.vectors as u64, Ordering::Relaxed);
                    tracing::debug!(did = %repo.did, rev = %repo.records.rev, rows = stats.rows, "account backfilled");
                    break;
                }
                Err(e @ Error::Build(_)) => return Err(e),
                Err(error) if tries < TRIES => {
                    tracing::warn!(did = %repo.did, %error, retry_in = ?wait, "a sink refused a repo; trying again");
                    tokio::time::sleep(wait).await;
                    wait *= 2;
                }
                Err(error) => return Err(error),
            }
        }
    }
    Ok(sinks)
}

fn write_one<T: store::records::SqlTransport>(
    sinks: &mut Sinks<T>,
    repo: &Fetched,
) -> Result<BatchStats, Error> {
    let mut stats = BatchStats::default();
    sinks.apply_repo(
        &repo.did,
        // Cloned: the writer keeps the repo to try it again if a store refuses it.
        repo.records.clone(),
        atproto::syntax::now_millis(),
        &mut stats,
    )?;
    // Only after every sink has the account's records.
    sinks
        .records
        .save_backfilled(&repo.did, &repo.records.rev, repo.found as u64)
        .map_err(|e| Error::Sink(e.to_string()))?;
    Ok(stats)
}

/// Shows progress until aborted: a bar (accounts, records, bytes, rate, ETA) or log lines.
async fn show(progress: Arc<Progress>, style: ProgressStyle, every: Duration) {
    use std::io::IsTerminal;
    let bar = match style {
        ProgressStyle::Bar => true,
        ProgressStyle::Log => false,
        ProgressStyle::Auto => std::io::stderr().is_terminal(),
    };
    let started = Instant::now();
    if bar {
        let pb = indicatif::ProgressBar::new(0);
        pb.set_style(
            indicatif::ProgressStyle::with_template(
                "{elapsed_precise} [{wide_bar}] {pos}/{len} accounts  {msg}  ETA {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        let _finish = FinishBar(pb.clone());
        loop {
            let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
            pb.set_length(n(&progress.accounts));
            pb.set_position(progress.settled());
            let secs = started.elapsed().as_secs_f64().max(0.001);
            pb.set_message(format!(
                "{} records, {}, {:.0} records/s, {} failed",
                n(&progress.records),
                indicatif::HumanBytes(n(&progress.bytes)),
                n(&progress.records) as f64 / secs,
                n(&progress.failed),
            ));
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    } else {
        loop {
            tokio::time::sleep(every).await;
            log_line(&progress, started);
        }
    }
}

/// Leaves the bar drawn as it last was when the display stops.
struct FinishBar(indicatif::ProgressBar);

impl Drop for FinishBar {
    fn drop(&mut self) {
        self.0.abandon();
    }
}

fn log_line(progress: &Progress, started: Instant) {
    let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let secs = started.elapsed().as_secs_f64().max(0.001);
    let (settled, accounts) = (progress.settled(), n(&progress.accounts));
    let rate = settled as f64 / secs;
    let eta_secs = match rate > 0.0 {
        true => (accounts.saturating_sub(settled) as f64 / rate).round() as u64,
        false => 0,
    };
    tracing::info!(
        accounts,
        done = n(&progress.done),
        current = n(&progress.current),
        wrong_host = n(&progress.wrong_host),
        failed = n(&progress.failed),
        records = n(&progress.records),
        rows = n(&progress.rows),
        vectors = n(&progress.vectors),
        bytes = n(&progress.bytes),
        records_per_sec = format!("{:.1}", n(&progress.records) as f64 / secs),
        eta_secs,
        "backfilling"
    );
}
