//! Verification shards: CPU work on dedicated threads, not on the async runtime.
//!
//! Events are routed to a shard by a hash of their DID, so one account's events are checked
//! in order by one thread without locks while accounts spread over cores. Each shard owns
//! the state of its accounts (loaded from the store at start; the sequencer persists every
//! change in the same transaction as the event that caused it).

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use atproto::car::{read_car, write_car, CarLimits};
use atproto::commit::{verify_commit_event, Commit, CommitError};
use atproto::frame::{CommitEvent, Frame, SyncEvent};
use atproto::identity::{CachingResolver, HttpResolver, Identity};
use atproto::syntax::Tid;
use tokio::sync::mpsc;

use crate::metrics::{DropReason, Metrics};
use crate::store::{AccountState, Append, Collections};

/// How far in the future a rev may be, in microseconds (the spec's "a few minutes").
const MAX_FUTURE_REV_MICROS: u64 = 5 * 60 * 1_000_000;

/// An event read from an upstream host.
#[derive(Debug)]
pub struct Inbound {
    /// The host it came from, with its limits.
    pub host: Arc<crate::hosts::Host>,
    /// The host's sequence number for it.
    pub upstream_seq: i64,
    /// The decoded frame.
    pub frame: Frame,
    /// The frame's bytes as received.
    pub raw: bytes::Bytes,
    /// When it was read, for latency.
    pub received: Instant,
}

/// What a shard hands the sequencer.
#[derive(Debug)]
pub enum Verified {
    /// An event to append and publish.
    Event {
        /// The event and the state it advances.
        append: Box<Append>,
        /// Its host and upstream cursor.
        host: Arc<str>,
        /// The upstream seq.
        upstream_seq: i64,
        /// When it was read.
        received: Instant,
    },
    /// Nothing to publish, but the host's cursor moves past this event.
    Skip {
        /// The host.
        host: Arc<str>,
        /// The upstream seq.
        upstream_seq: i64,
    },
}

/// Settings a shard needs.
#[derive(Clone)]
pub struct ShardContext {
    /// DID resolution with its cache.
    pub resolver: Arc<CachingResolver<HttpResolver>>,
    /// Runtime used to await network calls from the shard thread.
    pub runtime: tokio::runtime::Handle,
    /// Loopback hosts allowed and equated (`localhost` = `127.0.0.1`).
    pub dev: bool,
    /// Pass failed events on (counted) instead of dropping them.
    pub lenient: bool,
    /// Metric handles.
    pub metrics: Metrics,
    /// HTTP client for `getRepo` repairs.
    pub http: reqwest::Client,
}

/// The shard an account's events go to.
pub fn shard_of(did: &str, shards: usize) -> usize {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    did.hash(&mut h);
    (h.finish() % shards as u64) as usize
}

/// One shard: its accounts and the loop that checks their events.
pub struct Shard {
    ctx: ShardContext,
    accounts: HashMap<String, AccountState>,
}

impl Shard {
    /// A shard owning `accounts`.
    pub fn new(ctx: ShardContext, accounts: HashMap<String, AccountState>) -> Self {
        Shard { ctx, accounts }
    }

    /// Checks events until the input closes (shutdown) or the sequencer is gone.
    pub fn run(mut self, mut input: mpsc::Receiver<Inbound>, output: mpsc::Sender<Verified>) {
        while let Some(inbound) = input.blocking_recv() {
            self.ctx.metrics.verify_queue.decrement(1.0);
            let out = self.handle(inbound);
            if output.blocking_send(out).is_err() {
                return;
            }
        }
    }

    fn handle(&mut self, inbound: Inbound) -> Verified {
        let Inbound {
            host: source,
            upstream_seq,
            frame,
            raw,
            received,
        } = inbound;
        let input_kind = frame.kind().to_string();
        let host = source.url.clone();
        let skip = |host| Verified::Skip { host, upstream_seq };
        // A host serves at most its account limit: the first event of a new account counts.
        if let Some(did) = frame.did() {
            if !self.accounts.contains_key(did) {
                if !source.admit_account() {
                    self.ctx.metrics.dropped(DropReason::AccountLimit);
                    return skip(host);
                }
                let fresh = AccountState {
                    host: host.to_string(),
                    active: true,
                    ..AccountState::default()
                };
                self.accounts.insert(did.to_string(), fresh);
            }
        }
        let result = match frame {
            Frame::Commit(ev) => self.commit(&source, *ev),
            Frame::Sync(ev) => self.sync(&host, ev),
            Frame::Identity(ev) => {
                // The document may have changed: the next event resolves it afresh. (Not
                // resolving here keeps a burst of identity events from stalling the shard.)
                self.ctx.resolver.forget(&ev.did);
                Ok(Append {
                    frame: Frame::Identity(ev),
                    account: None,
                    collections: Collections::Unchanged,
                    raw: None,
                })
            }
            Frame::Account(ev) => {
                let mut state = self.accounts.get(&ev.did).cloned().unwrap_or_default();
                state.host = host.to_string();
                state.active = ev.active;
                state.status = ev.status.clone();
                self.accounts.insert(ev.did.clone(), state.clone());
                Ok(Append {
                    collections: Collections::Unchanged,
                    raw: None,
                    account: Some((ev.did.clone(), state)),
                    frame: Frame::Account(ev),
                })
            }
            Frame::Info(_) | Frame::Error(_) | Frame::Unknown { .. } => return skip(host),
        };
        match result {
            Ok(mut append) => {
                // Republished as received unless the relay made its own event (a repair
                // turns a commit into a #sync).
                if append.frame.kind() == input_kind {
                    append.raw = Some(raw);
                }
                Verified::Event {
                    append: Box::new(append),
                    host,
                    upstream_seq,
                    received,
                }
            }
            Err(reason) => {
                self.ctx.metrics.dropped(reason);
                skip(host)
            }
        }
    }

    fn identity(&self, did: &str) -> Result<Arc<Identity>, DropReason> {
        if let Some(id) = self.ctx.resolver.cached(did) {
            return Ok(id);
        }
        self.ctx
            .runtime
            .block_on(self.ctx.resolver.identity(did))
            .map_err(|_| DropReason::Identity)
    }

    fn commit(
        &mut self,
        source: &Arc<crate::hosts::Host>,
        ev: CommitEvent,
    ) -> Result<Append, DropReason> {
        let host = &source.url;
        let started = Instant::now();
        let mut id = self.identity(&ev.repo)?;
        if !same_host(id.pds.as_deref(), host, self.ctx.dev) {
            // The account may have moved: re-resolve once before refusing.
            id = self
                .ctx
                .runtime
                .block_on(self.ctx.resolver.refresh(&ev.repo))
                .map_err(|_| DropReason::Identity)?;
            if !same_host(id.pds.as_deref(), host, self.ctx.dev) {
                return self.fail(DropReason::WrongHost, host, ev);
            }
        }
        let prior = self.accounts.get(&ev.repo).cloned();
        if let Some(p) = &prior {
            if !p.active && p.status.is_some() {
                return self.fail(DropReason::Inactive, host, ev);
            }
        }
        let rev = match Tid::parse(&ev.rev) {
            Ok(t) => t,
            Err(_) => return self.fail(DropReason::Inconsistent, host, ev),
        };
        if rev.micros() > now_micros() + MAX_FUTURE_REV_MICROS {
            return self.fail(DropReason::FutureRev, host, ev);
        }
        if let Some(last) = prior.as_ref().and_then(|p| p.rev.as_deref()) {
            if ev.rev.as_str() <= last {
                return self.fail(DropReason::StaleRev, host, ev);
            }
        }
        let verified = match verify_commit_event(&ev, &id.signing_key, CarLimits::FIREHOSE) {
            Err(CommitError::Signature(_)) => {
                let fresh = self
                    .ctx
                    .runtime
                    .block_on(self.ctx.resolver.refresh(&ev.repo))
                    .map_err(|_| DropReason::Identity)?;
                verify_commit_event(&ev, &fresh.signing_key, CarLimits::FIREHOSE)
            }
            other => other,
        };
        let verified = match verified {
            Ok(v) => v,
            Err(e) => return self.fail(classify(&e), host, ev),
        };
        self.ctx
            .metrics
            .verify_seconds
            .record(started.elapsed().as_secs_f64());

        // Continuity: the tree before this commit must be the one we last saw, which the
        // inversion establishes even when the host omits prevData.
        if let Some(p) = &prior {
            let continuous = p.data.is_none()
                || (verified.prev_data.map(|c| c.to_string()) == p.data
                    && ev.since.as_deref() == p.rev.as_deref());
            if !continuous {
                return self.resync(host, &ev.repo, &id);
            }
        }
        let state = self.adopt(&ev.repo, host, &ev.rev, verified.commit.data, ev.commit);
        Ok(Append {
            collections: collection_delta(&ev.ops),
            raw: None,
            account: Some((ev.repo.clone(), state)),
            frame: Frame::Commit(Box::new(ev)),
        })
    }

    /// Records that `did` is now at `rev` (tree `data`, commit `head`), active on `host`.
    fn adopt(
        &mut self,
        did: &str,
        host: &str,
        rev: &str,
        data: atproto::Cid,
        head: atproto::Cid,
    ) -> AccountState {
        let state = AccountState {
            host: host.to_string(),
            rev: Some(rev.to_string()),
            data: Some(data.to_string()),
            head: Some(head.to_string()),
            active: true,
            status: None,
        };
        self.accounts.insert(did.to_string(), state.clone());
        state
    }

    /// In lenient mode a failed commit is still published (the failure is counted).
    fn fail(
        &mut self,
        reason: DropReason,
        host: &Arc<str>,
        ev: CommitEvent,
    ) -> Result<Append, DropReason> {
        if !self.ctx.lenient {
            return Err(reason);
        }
        self.ctx.metrics.dropped(reason);
        let mut state = self.accounts.get(&ev.repo).cloned().unwrap_or_default();
        state.host = host.to_string();
        Ok(Append {
            collections: Collections::Unchanged,
            raw: None,
            account: Some((ev.repo.clone(), state)),
            frame: Frame::Commit(Box::new(ev)),
        })
    }

    fn sync(&mut self, host: &Arc<str>, ev: SyncEvent) -> Result<Append, DropReason> {
        let id = self.identity(&ev.did)?;
        if !same_host(id.pds.as_deref(), host, self.ctx.dev) {
            return Err(DropReason::WrongHost);
        }
        let car =
            read_car(&ev.blocks, CarLimits::FIREHOSE).map_err(|_| DropReason::Inconsistent)?;
        let root = car.roots.first().ok_or(DropReason::Inconsistent)?;
        let commit: Commit =
            atproto::data::from_cbor(car.blocks.get(root).ok_or(DropReason::Inconsistent)?)
                .map_err(|_| DropReason::Inconsistent)?;
        if commit.did != ev.did || commit.rev != ev.rev {
            return Err(DropReason::Inconsistent);
        }
        commit
            .verify(&id.signing_key)
            .map_err(|_| DropReason::BadSignature)?;
        let state = self.adopt(&ev.did, host, &commit.rev, commit.data, *root);
        Ok(Append {
            collections: Collections::Unchanged,
            raw: None,
            account: Some((ev.did.clone(), state)),
            frame: Frame::Sync(ev),
        })
    }

    /// The account's history does not follow on: fetch the whole repo from its PDS, verify
    /// it, adopt its state, and publish `#sync` so consumers resynchronize too.
    fn resync(&mut self, host: &Arc<str>, did: &str, id: &Identity) -> Result<Append, DropReason> {
        let pds = id.pds.as_deref().ok_or(DropReason::Desync)?;
        let url = format!(
            "{}/xrpc/com.atproto.sync.getRepo?did={did}",
            pds.trim_end_matches('/')
        );
        let http = self.ctx.http.clone();
        let bytes = self
            .ctx
            .runtime
            .block_on(async move {
                let resp = http.get(&url).send().await?.error_for_status()?;
                resp.bytes().await
            })
            .map_err(|_| DropReason::Desync)?;
        let car = read_car(&bytes, CarLimits::REPO).map_err(|_| DropReason::Desync)?;
        let root = *car.roots.first().ok_or(DropReason::Desync)?;
        let commit_bytes = car.blocks.get(&root).ok_or(DropReason::Desync)?.clone();
        let commit: Commit =
            atproto::data::from_cbor(&commit_bytes).map_err(|_| DropReason::Desync)?;
        if commit.did != did {
            return Err(DropReason::Desync);
        }
        commit
            .verify(&id.signing_key)
            .map_err(|_| DropReason::Desync)?;
        // The whole tree must be present and hash-consistent.
        let mut tree =
            atproto::mst::Mst::load(commit.data, &car.blocks).map_err(|_| DropReason::Desync)?;
        let entries = tree.entries(&car.blocks).map_err(|_| DropReason::Desync)?;
        let mut per_collection: HashMap<String, u64> = HashMap::new();
        for (key, _) in &entries {
            let key = String::from_utf8_lossy(key);
            *per_collection
                .entry(key.split('/').next().unwrap_or_default().to_string())
                .or_default() += 1;
        }
        let counts: Vec<(String, u64)> = per_collection.into_iter().collect();
        let blocks = write_car(&[root], [(&root, commit_bytes.as_slice())])
            .map_err(|_| DropReason::Desync)?;
        self.ctx.metrics.resyncs.increment(1);
        let state = self.adopt(did, host, &commit.rev, commit.data, root);
        let ev = SyncEvent {
            seq: 0,
            did: did.to_string(),
            blocks: blocks.into(),
            rev: commit.rev,
            time: atproto::syntax::datetime_now(),
        };
        Ok(Append {
            collections: Collections::Reset(counts),
            raw: None,
            account: Some((did.to_string(), state)),
            frame: Frame::Sync(ev),
        })
    }
}

/// Records added and removed per collection by a commit's ops.
fn collection_delta(ops: &[atproto::frame::RepoOp]) -> Collections {
    let mut delta: HashMap<&str, i64> = HashMap::new();
    for op in ops {
        let collection = op.path.split('/').next().unwrap_or_default();
        match op.action.as_str() {
            "create" => *delta.entry(collection).or_default() += 1,
            "delete" => *delta.entry(collection).or_default() -= 1,
            _ => {}
        }
    }
    delta.retain(|_, d| *d != 0);
    if delta.is_empty() {
        return Collections::Unchanged;
    }
    Collections::Delta(delta.into_iter().map(|(c, d)| (c.to_string(), d)).collect())
}

fn classify(e: &CommitError) -> DropReason {
    match e {
        CommitError::Signature(_) | CommitError::Version(_) => DropReason::BadSignature,
        CommitError::InversionMismatch | CommitError::Mst(_) => DropReason::Inversion,
        CommitError::Car(atproto::car::CarError::TooLarge { .. })
        | CommitError::Car(atproto::car::CarError::TooManyBlocks(_))
        | CommitError::TooManyOps(_) => DropReason::TooBig,
        CommitError::Car(_) | CommitError::Data(_) | CommitError::Inconsistent(_) => {
            DropReason::Inconsistent
        }
    }
}

/// Host authority: the event's host is the account's PDS (scheme, host and port). In dev
/// mode `localhost` and `127.0.0.1` are the same host.
pub fn same_host(pds: Option<&str>, host: &str, dev: bool) -> bool {
    let Some(pds) = pds else { return false };
    let norm = |u: &str| {
        let u = u.trim_end_matches('/').to_ascii_lowercase();
        if dev {
            u.replace("://localhost", "://127.0.0.1")
        } else {
            u
        }
    };
    norm(pds) == norm(host)
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_authority() {
        assert!(same_host(
            Some("https://pds.example.com"),
            "https://pds.example.com/",
            false
        ));
        assert!(!same_host(
            Some("https://pds.example.com"),
            "https://evil.example.com",
            false
        ));
        assert!(same_host(
            Some("http://localhost:2583"),
            "http://127.0.0.1:2583",
            true
        ));
        assert!(!same_host(
            Some("http://localhost:2583"),
            "http://127.0.0.1:2583",
            false
        ));
        assert!(!same_host(None, "http://127.0.0.1:2583", true));
    }

    #[test]
    fn shards_are_stable() {
        assert_eq!(shard_of("did:plc:abc", 4), shard_of("did:plc:abc", 4));
    }
}
