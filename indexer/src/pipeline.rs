//! The indexer's loop: the relay's firehose, from the stored cursor, in batches; each
//! batch extracted (lexicons, privacy), embedded, written to the vector store and the
//! record index, and only then the cursor advanced. A kill at any point re-reads at most
//! one batch, and re-writing it is harmless (rows and points are keyed by URI and
//! versioned by rev).

use std::time::{Duration, Instant};

use atproto::frame::{decode_frame, Frame};
use futures::StreamExt;

use crate::extract::Extractor;
use crate::Error;
use store::embed::Embedder;
use store::records::Change;
use store::records::{RecordStore, SqlTransport};
use store::vectors::{VectorPoint, VectorStore};

/// Everything a batch goes through.
pub struct Sinks<T> {
    /// Commit → changes.
    pub extractor: Extractor,
    /// The record index (and the cursor).
    pub records: RecordStore<T>,
    /// Vectors for recall, with the model that makes them; absent without a model.
    pub vectors: Option<(Embedder, std::sync::Arc<dyn VectorStore>)>,
    /// Counters for the operator.
    pub stats: crate::stats::Stats,
    /// When to build the vector index.
    pub optimize: Optimizer,
    /// Where whole repos come from when the relay announces a `#sync` (absent: `#sync` is
    /// only counted).
    pub repos: Option<RepoSource>,
}

/// Whole repos for `#sync` reconciliation, from the relay's `getRepo` (which redirects to
/// the account's PDS), through the egress guard, bounded in size and time. A repo is only
/// believed once its commit verifies with the account's current key (its DID document,
/// resolved through the same guard), its blocks match their CIDs and its tree is whole.
pub struct RepoSource {
    client: atproto::net::GuardedClient,
    relay: String,
    max_bytes: usize,
    resolver: atproto::identity::CachingResolver<atproto::identity::HttpResolver>,
}

/// Largest repo fetched for a reconciliation.
const MAX_REPO_BYTES: usize = 256 * 1024 * 1024;
/// Longest a repo fetch may take.
const REPO_TIMEOUT: Duration = Duration::from_secs(120);

/// A whole repo that verified.
pub struct VerifiedRepo {
    /// Its blocks.
    pub car: atproto::car::Car,
    /// Its signed commit and records.
    pub snapshot: atproto::commit::RepoSnapshot,
}

impl RepoSource {
    /// Repos from the relay at `relay_url` (its firehose URL, `ws://` or `wss://`), keys
    /// from DID documents (`did:plc` from `plc_url`; `dev` allows loopback and plain http).
    pub fn new(
        relay_url: &str,
        egress: &atproto::net::Egress,
        plc_url: &str,
        dev: bool,
    ) -> Result<Self, Error> {
        let relay = relay_url
            .replacen("wss://", "https://", 1)
            .replacen("ws://", "http://", 1);
        let client = egress
            .client(reqwest::Client::builder().timeout(REPO_TIMEOUT))
            .map_err(|e| Error::Config(e.to_string()))?;
        Ok(RepoSource {
            client,
            relay,
            max_bytes: MAX_REPO_BYTES,
            resolver: crate::resolver(egress, plc_url, dev)?,
        })
    }

    /// The account's repo, verified. Blocks the calling (non-runtime) thread.
    fn fetch(&self, did: &str) -> Result<VerifiedRepo, String> {
        let url = atproto::net::xrpc_url(&self.relay, "com.atproto.sync.getRepo", &[("did", did)]);
        let request = self.client.get(&url).map_err(|e| e.to_string())?;
        let max = self.max_bytes;
        let runtime = tokio::runtime::Handle::current();
        let body = runtime.block_on(async move {
            let mut resp = request.send().await.map_err(|e| e.to_string())?;
            if !resp.status().is_success() {
                return Err(format!("getRepo: HTTP {}", resp.status()));
            }
            let mut body = Vec::new();
            while let Some(chunk) = resp.chunk().await.map_err(|e| e.to_string())? {
                if body.len() + chunk.len() > max {
                    return Err(format!("getRepo: repo over {max} bytes"));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(body)
        })?;
        let limits = atproto::car::CarLimits {
            max_bytes: max,
            ..atproto::car::CarLimits::REPO
        };
        let car = atproto::car::read_car(&body, limits).map_err(|e| format!("repo CAR: {e}"))?;
        let id = runtime
            .block_on(self.resolver.identity(did))
            .map_err(|e| format!("resolving the DID: {e}"))?;
        let snapshot =
            match atproto::commit::RepoSnapshot::read_verified(did, &car, &id.signing_key) {
                Err(atproto::commit::CommitError::Signature(_)) => {
                    // The key may have rotated since the document was cached: look once more.
                    let id = runtime
                        .block_on(self.resolver.refresh(did))
                        .map_err(|e| format!("resolving the DID: {e}"))?;
                    atproto::commit::RepoSnapshot::read_verified(did, &car, &id.signing_key)
                }
                other => other,
            }
            .map_err(|e| format!("the repo does not verify: {e}"))?;
        Ok(VerifiedRepo { car, snapshot })
    }
}

/// Builds the vector store's search index (qdrant-edge's HNSW) in the background once
/// enough new vectors have been written, one build at a time, so searches stop scanning
/// unindexed segments. Writes continue meanwhile. A failed build stops the indexer at its
/// next batch.
#[derive(Debug, Default)]
pub struct Optimizer {
    every: usize,
    since: usize,
    running: Option<std::thread::JoinHandle<Result<(), store::vectors::VectorError>>>,
}

impl Optimizer {
    /// Build after every `every` new vectors (0: never).
    pub fn every(every: usize) -> Self {
        Optimizer {
            every,
            ..Optimizer::default()
        }
    }

    /// `n` vectors were written to `store`: collect a finished build, start one if due.
    fn wrote(&mut self, n: usize, store: &std::sync::Arc<dyn VectorStore>) -> Result<(), Error> {
        self.since += n;
        if self.running.as_ref().is_some_and(|h| h.is_finished()) {
            self.finish()?;
        }
        if self.every > 0 && self.since >= self.every && self.running.is_none() {
            let store = store.clone();
            let handle = std::thread::Builder::new()
                .name("vector-index".into())
                .spawn(move || {
                    let t = Instant::now();
                    let done = store.optimize();
                    tracing::info!(
                        secs = t.elapsed().as_secs_f64(),
                        ok = done.is_ok(),
                        "vector index built"
                    );
                    done
                })
                .map_err(|e| Error::Build(format!("vector index thread: {e}")))?;
            self.running = Some(handle);
            self.since = 0;
        }
        Ok(())
    }

    /// Waits for a running build and reports how it ended.
    pub fn finish(&mut self) -> Result<(), Error> {
        match self.running.take() {
            None => Ok(()),
            Some(h) => h
                .join()
                .map_err(|_| Error::Build("the vector index build panicked".into()))?
                .map_err(|e| Error::Build(format!("building the vector index: {e}"))),
        }
    }
}

/// When an event was emitted, in ms since the epoch, if it says.
fn emitted_ms(frame: &Frame) -> Option<i64> {
    atproto::syntax::datetime_to_millis(frame.time()?)
}

/// What one batch did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BatchStats {
    /// Rows written.
    pub rows: usize,
    /// Vectors written.
    pub vectors: usize,
    /// Ops skipped (not agent records, private, invalid).
    pub skipped: usize,
}

impl<T: SqlTransport> Sinks<T> {
    /// Indexes one batch of frames and then stores `last_seq` as the cursor for `source`.
    /// Frames apply in order: an `#account` event takes effect between the commits before
    /// and after it.
    pub fn index(
        &mut self,
        frames: &[Frame],
        source: &str,
        last_seq: u64,
        now_ms: i64,
    ) -> Result<BatchStats, Error> {
        let mut stats = BatchStats::default();
        let mut changes: Vec<Change> = Vec::new();
        for frame in frames {
            match frame {
                Frame::Info(info) if info.name == "OutdatedCursor" => {
                    // The relay no longer holds the events after our cursor: a gap.
                    self.stats.outdated();
                    tracing::error!(message = ?info.message, "the relay no longer holds every event after the index's cursor: records in the gap are missing until they are backfilled");
                }
                Frame::Commit(ev) => {
                    let (c, skipped) = self.extractor.extract(ev);
                    stats.skipped += skipped.len();
                    for (path, why) in &skipped {
                        self.stats.skipped(why);
                        if let crate::extract::Skipped::Invalid(reason) = why {
                            tracing::info!(repo = %ev.repo, %path, %reason, "record breaks its lexicon; skipped");
                        }
                    }
                    changes.extend(c);
                }
                Frame::Account(ev) => {
                    self.write(std::mem::take(&mut changes), now_ms, &mut stats)?;
                    self.account(ev)?;
                }
                Frame::Sync(ev) => {
                    self.write(std::mem::take(&mut changes), now_ms, &mut stats)?;
                    self.reconcile(ev, now_ms, &mut stats)?;
                }
                _ => {}
            }
        }
        self.write(changes, now_ms, &mut stats)?;
        // Only after every sink has the batch.
        self.records
            .save_cursor(source, last_seq)
            .map_err(|e| Error::Sink(e.to_string()))?;
        let newest_ms = frames.iter().filter_map(emitted_ms).max();
        self.stats
            .batch(stats.rows, stats.vectors, last_seq, newest_ms);
        Ok(stats)
    }

    /// An account's hosting status changed: an inactive account is hidden from every
    /// query until it is active again; a deleted one's records and vectors are purged.
    fn account(&mut self, ev: &atproto::frame::AccountEvent) -> Result<(), Error> {
        if !ev.active && ev.status.as_deref() == Some("deleted") {
            let uris = self
                .records
                .purge_author(&ev.did)
                .map_err(|e| Error::Sink(e.to_string()))?;
            if let Some((_, store)) = &self.vectors {
                store
                    .delete(&uris)
                    .map_err(|e| Error::Sink(e.to_string()))?;
            }
            tracing::info!(did = %ev.did, records = uris.len(), "account deleted: its records are purged");
        }
        self.records
            .set_account_status(
                &ev.did,
                ev.seq.max(0) as u64,
                ev.active,
                ev.status.as_deref(),
            )
            .map_err(|e| Error::Sink(e.to_string()))
    }

    /// `#sync`: the account's repo is what the host says it is now, whatever commits were
    /// missed. The index is made to match it: every record in the repo written at the
    /// repo's rev, every indexed record no longer in it deleted. A repo that cannot be
    /// fetched is logged and counted, and indexing goes on (the account's later commits
    /// still arrive); only a store that refuses the writes fails the batch.
    fn reconcile(
        &mut self,
        ev: &atproto::frame::SyncEvent,
        now_ms: i64,
        stats: &mut BatchStats,
    ) -> Result<(), Error> {
        let Some(source) = &self.repos else {
            return Ok(());
        };
        let fetched = source.fetch(&ev.did).map(|repo| {
            self.extractor
                .extract_snapshot(&ev.did, repo.snapshot, &repo.car.blocks)
        });
        let repo = match fetched {
            Ok(r) if r.rev.as_str() >= ev.rev.as_str() => r,
            Ok(r) => {
                self.stats.sync_failed();
                tracing::warn!(did = %ev.did, got = %r.rev, want = %ev.rev, "the repo fetched for a #sync is older than the #sync; left as it was");
                return Ok(());
            }
            Err(error) => {
                self.stats.sync_failed();
                tracing::warn!(did = %ev.did, %error, "could not fetch the repo for a #sync; the account's index is left as it was");
                return Ok(());
            }
        };
        let (rev, records) = (repo.rev.clone(), repo.changes.len());
        self.apply_repo(&ev.did, repo, now_ms, stats)?;
        tracing::info!(did = %ev.did, %rev, records, "account reconciled from its repo after #sync");
        self.stats.synced();
        Ok(())
    }

    /// Makes the index of `did` match its whole repo: every record in it written at the
    /// repo's rev, every indexed record no longer in it deleted (a newer version from the
    /// firehose still wins: rows are versioned by rev).
    pub fn apply_repo(
        &mut self,
        did: &str,
        repo: crate::extract::RepoRecords,
        now_ms: i64,
        stats: &mut BatchStats,
    ) -> Result<(), Error> {
        let crate::extract::RepoRecords {
            rev,
            mut changes,
            skipped,
        } = repo;
        stats.skipped += skipped.len();
        for (_, why) in &skipped {
            self.stats.skipped(why);
        }
        let present: std::collections::HashSet<String> = changes
            .iter()
            .filter_map(|c| match c {
                Change::Upsert(r) => Some(r.uri.clone()),
                Change::Delete { .. } => None,
            })
            .collect();
        let indexed = self
            .records
            .uris_of(did)
            .map_err(|e| Error::Sink(e.to_string()))?;
        let gone = indexed.into_iter().filter(|u| !present.contains(u));
        changes.extend(gone.map(|uri| Change::Delete {
            uri,
            rev: rev.clone(),
        }));
        self.write(changes, now_ms, stats)
    }

    /// Writes changes to the vector store and the record index.
    fn write(
        &mut self,
        changes: Vec<Change>,
        now_ms: i64,
        stats: &mut BatchStats,
    ) -> Result<(), Error> {
        if changes.is_empty() {
            return Ok(());
        }
        // The batch's ops in commit order: for each record only its last change reaches
        // the vector store (a delete then a re-create leaves the record; a create then a
        // delete leaves nothing). The record index orders by rev itself.
        let mut last: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
        for (i, c) in changes.iter().enumerate() {
            let uri = match c {
                Change::Upsert(r) => r.uri.as_str(),
                Change::Delete { uri, .. } => uri.as_str(),
            };
            last.insert(uri, i);
        }
        let is_last = |i: usize, uri: &str| last.get(uri) == Some(&i);
        if let Some((embedder, store)) = &mut self.vectors {
            let with_text: Vec<&store::records::RecordRow> = changes
                .iter()
                .enumerate()
                .filter_map(|(i, c)| match c {
                    Change::Upsert(r) if r.text.is_some() && is_last(i, &r.uri) => Some(r.as_ref()),
                    _ => None,
                })
                .collect();
            if !with_text.is_empty() {
                let texts: Vec<String> = with_text
                    .iter()
                    .map(|r| r.text.clone().unwrap_or_default())
                    .collect();
                let started = Instant::now();
                let vectors = embedder
                    .embed(&texts, 64)
                    .map_err(|e| Error::Sink(e.to_string()))?;
                self.stats.embedded(texts.len(), started.elapsed());
                let points: Vec<VectorPoint> = with_text
                    .iter()
                    .zip(vectors)
                    .map(|(r, vector)| VectorPoint {
                        uri: r.uri.clone(),
                        author: r.author.clone(),
                        collection: r.collection.clone(),
                        visibility: match r.visibility {
                            store::records::Visibility::Public => "public".into(),
                            store::records::Visibility::Shared => "shared".into(),
                        },
                        recipients: r.recipients.clone(),
                        created_ms: atproto::syntax::datetime_to_millis(&r.created_at).unwrap_or(0),
                        vector,
                    })
                    .collect();
                store
                    .upsert(&points)
                    .map_err(|e| Error::Sink(e.to_string()))?;
                stats.vectors += points.len();
                self.optimize.wrote(points.len(), store)?;
            }
            // Deleted for good in this batch, and records whose last version has no text
            // to embed (their earlier vector, if any, would be stale).
            let deleted: Vec<String> = changes
                .iter()
                .enumerate()
                .filter_map(|(i, c)| match c {
                    Change::Delete { uri, .. } if is_last(i, uri) => Some(uri.clone()),
                    Change::Upsert(r) if r.text.is_none() && is_last(i, &r.uri) => {
                        Some(r.uri.clone())
                    }
                    _ => None,
                })
                .collect();
            if !deleted.is_empty() {
                store
                    .delete(&deleted)
                    .map_err(|e| Error::Sink(e.to_string()))?;
            }
        }
        self.records
            .apply(&changes, now_ms)
            .map_err(|e| Error::Sink(e.to_string()))?;
        stats.rows += changes.len();
        Ok(())
    }
}

/// Follows the relay at `url` from the stored cursor until `stop` fires, indexing in
/// batches of at most `batch` frames or `wait`, and hands the sinks back. Sinks run on a
/// blocking thread.
pub async fn follow<T: SqlTransport + 'static>(
    url: &str,
    mut sinks: Sinks<T>,
    batch: usize,
    wait: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Result<Sinks<T>, Error> {
    let mut backoff = Duration::from_millis(200);
    // After an error frame (FutureCursor and the like) reconnecting at once would only get
    // the same answer: wait, longer each time, until a session delivers events again.
    let mut refused = Duration::ZERO;
    loop {
        if !refused.is_zero() {
            tokio::select! {
                _ = stop.changed() => return Ok(sinks),
                _ = tokio::time::sleep(refused) => {}
            }
        }
        let cursor = sinks
            .records
            .cursor(url)
            .map_err(|e| Error::Sink(e.to_string()))?;
        let endpoint = match cursor {
            Some(c) => format!("{url}/xrpc/com.atproto.sync.subscribeRepos?cursor={c}"),
            None => format!("{url}/xrpc/com.atproto.sync.subscribeRepos?cursor=0"),
        };
        let stream = tokio::select! {
            _ = stop.changed() => return Ok(sinks),
            s = tokio_tungstenite::connect_async(endpoint.as_str()) => s,
        };
        let mut ws = match stream {
            Ok((ws, _)) => {
                backoff = Duration::from_millis(200);
                ws
            }
            Err(error) => {
                tracing::warn!(%url, %error, "relay unreachable");
                tokio::select! {
                    _ = stop.changed() => return Ok(sinks),
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
                continue;
            }
        };
        let mut pending: Vec<Frame> = Vec::with_capacity(batch);
        let mut last_seq = 0u64;
        let mut deadline: Option<Instant> = None;
        loop {
            let timeout = deadline
                .map(|d| d.saturating_duration_since(Instant::now()))
                .unwrap_or(Duration::from_secs(3600));
            let next = tokio::select! {
                _ = stop.changed() => None,
                m = tokio::time::timeout(timeout, ws.next()) => Some(m),
            };
            let Some(next) = next else {
                // Stopping: finish what was read.
                if !pending.is_empty() {
                    sinks = flush(sinks, pending, url, last_seq).await?;
                }
                return Ok(sinks);
            };
            match next {
                Ok(Some(Ok(msg))) if msg.is_binary() => {
                    let bytes = msg.into_data();
                    match decode_frame(&bytes) {
                        Ok(Frame::Error(e)) => {
                            sinks.stats.error_frame();
                            refused = (refused * 2).clamp(Duration::from_secs(1), MAX_REFUSED_WAIT);
                            if e.error == "FutureCursor" {
                                tracing::error!(%url, wait = ?refused, "the relay has no events up to the index's cursor: it lost its log, or is not the relay this index followed");
                            } else {
                                tracing::warn!(%url, error = %e.error, message = ?e.message, wait = ?refused, "relay sent an error frame");
                            }
                            break;
                        }
                        Ok(frame @ Frame::Info(_)) => pending.push(frame),
                        Ok(frame) => {
                            if let Some(seq) = frame.seq() {
                                refused = Duration::ZERO;
                                last_seq = seq as u64;
                                pending.push(frame);
                                deadline.get_or_insert_with(|| Instant::now() + wait);
                            }
                        }
                        Err(error) => tracing::warn!(%error, "undecodable frame from the relay"),
                    }
                }
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(_)) | None) => break,
                Err(_) => {} // batch wait elapsed
            }
            let due = deadline.is_some_and(|d| Instant::now() >= d);
            if !pending.is_empty() && (pending.len() >= batch || due) {
                sinks = flush(sinks, std::mem::take(&mut pending), url, last_seq).await?;
                deadline = None;
            }
        }
        if !pending.is_empty() {
            sinks = flush(sinks, std::mem::take(&mut pending), url, last_seq).await?;
        }
    }
}

/// Longest wait before reconnecting after the relay refused a session with an error.
const MAX_REFUSED_WAIT: Duration = Duration::from_secs(60);
/// First wait before a failed batch is tried again; doubles up to the next.
const RETRY_MIN: Duration = Duration::from_millis(250);
/// Longest wait between tries of a failed batch.
const RETRY_MAX: Duration = Duration::from_secs(30);

/// Writes one batch to every sink, then its cursor. A batch a sink refuses (a store that is
/// down, a full disk) is tried again with backoff, in order, until it is written: it is
/// never skipped, and nothing after it is written first. Only a failure of the vector
/// index build (which no retry of this batch can fix) ends the indexer.
pub(crate) async fn flush<T: SqlTransport + 'static>(
    mut sinks: Sinks<T>,
    frames: Vec<Frame>,
    source: &str,
    last_seq: u64,
) -> Result<Sinks<T>, Error> {
    let frames = std::sync::Arc::new(frames);
    let mut wait = RETRY_MIN;
    loop {
        let now = atproto::syntax::now_millis();
        let (source2, batch) = (source.to_string(), frames.clone());
        let (back, result) = tokio::task::spawn_blocking(move || {
            let result = sinks.index(&batch, &source2, last_seq, now);
            (sinks, result)
        })
        .await
        .map_err(|e| Error::Sink(e.to_string()))?;
        sinks = back;
        match result {
            Ok(stats) => {
                tracing::debug!(
                    rows = stats.rows,
                    vectors = stats.vectors,
                    skipped = stats.skipped,
                    last_seq,
                    "indexed batch"
                );
                return Ok(sinks);
            }
            Err(e @ Error::Build(_)) => return Err(e),
            Err(error) => {
                sinks.stats.failed();
                tracing::warn!(%error, last_seq, retry_in = ?wait, "a sink refused the batch; trying it again");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(RETRY_MAX);
            }
        }
    }
}
