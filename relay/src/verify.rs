//! Verification shards: CPU work on dedicated threads, not on the async runtime.
//!
//! Events are routed to a shard by a hash of their DID, so one account's events are checked
//! in order by one thread without locks while accounts spread over cores. Each shard owns
//! the state of its accounts (loaded from the store at start; the sequencer persists every
//! change in the same transaction as the event that caused it).
//!
//! A shard never waits on the network. When an account needs a DID resolved or its repo
//! repaired, the shard parks that account's events (in order, within bounds), hands the
//! work to a task on the runtime, and goes on with its other accounts; the task's result
//! comes back as a [`Wake`] and the parked events continue. A repair that fails marks the
//! account desynchronized and is retried with backoff until it succeeds, so no account is
//! ever frozen and no account's trouble stalls another's events.

use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use atproto::car::{read_car, write_car, CarLimits};
use atproto::commit::{verify_commit_event, Commit, CommitError};
use atproto::frame::{CommitEvent, Frame, SyncEvent};
use atproto::identity::{same_host, CachingResolver, HttpResolver, Identity};
use atproto::syntax::Tid;
use futures::FutureExt;
use rand::Rng;
use tokio::sync::mpsc;

use crate::hosts::Host;
use crate::metrics::{DropReason, Metrics};
use crate::store::{AccountState, Append, Collections, StateCid, Upstream};

/// How far in the future a rev may be, in microseconds (the spec's "a few minutes").
const MAX_FUTURE_REV_MICROS: u64 = 5 * 60 * 1_000_000;
/// Most events parked for one account while its DID resolves or its repo is repaired.
const MAX_PARKED_PER_ACCOUNT: usize = 10_000;
/// Most frame bytes parked on one shard.
const MAX_PARKED_BYTES: usize = 256 * 1024 * 1024;

/// An event read from an upstream host.
#[derive(Debug)]
pub struct Inbound {
    /// The host it came from, with its limits.
    pub host: Arc<Host>,
    /// The host's sequence number for it.
    pub upstream_seq: i64,
    /// The decoded frame.
    pub frame: Frame,
    /// The frame's bytes as received.
    pub raw: bytes::Bytes,
    /// When it was read, for latency.
    pub received: Instant,
}

/// Where an outcome came from upstream: the host and its seq, settled by the sequencer.
#[derive(Debug, Clone)]
pub struct Origin {
    /// The host.
    pub host: Arc<Host>,
    /// The host's seq for the event, if the outcome answers one (a repair retried on a
    /// timer answers none).
    pub upstream_seq: Option<i64>,
}

/// What a shard hands the sequencer.
#[derive(Debug)]
pub enum Verified {
    /// An event to append and publish.
    Event {
        /// The event and the state it advances.
        append: Box<Append>,
        /// Where it came from.
        origin: Origin,
        /// When it was read.
        received: Instant,
    },
    /// Account state to store without publishing anything (an account marked
    /// desynchronized).
    State {
        /// The account and its new state.
        did: String,
        /// Its state.
        state: Box<AccountState>,
        /// Where it came from.
        origin: Origin,
    },
    /// Nothing to publish, but the host's cursor may move past this event.
    Skip(Origin),
}

/// Bounds and timings for repairs (`getRepo` after a broken chain).
#[derive(Debug, Clone)]
pub struct RepairConfig {
    /// Largest repo accepted, in bytes.
    pub max_bytes: usize,
    /// Longest one fetch may take, start to last byte.
    pub timeout: Duration,
    /// First retry delay after a failed repair; doubles per failure up to `max_backoff`.
    pub min_backoff: Duration,
    /// Longest retry delay.
    pub max_backoff: Duration,
}

/// Settings a shard needs.
#[derive(Clone)]
pub struct ShardContext {
    /// DID resolution with its cache.
    pub resolver: Arc<CachingResolver<HttpResolver>>,
    /// Runtime the shard's network work runs on.
    pub runtime: tokio::runtime::Handle,
    /// Loopback hosts allowed and equated (`localhost` = `127.0.0.1`).
    pub dev: bool,
    /// Pass failed events on (counted) instead of dropping them.
    pub lenient: bool,
    /// Metric handles and the drop log.
    pub metrics: Metrics,
    /// HTTP client for `getRepo` repairs (through the egress guard, redirects refused).
    pub http: atproto::net::GuardedClient,
    /// Repair bounds.
    pub repair: RepairConfig,
    /// Permits for DID resolutions in flight (`--identity-lookups`).
    pub lookups: Arc<tokio::sync::Semaphore>,
}

/// A shard's accounts by DID. Every event looks its account up (often twice), so the map
/// hashes with foldhash (seeded per process) rather than SipHash.
pub type Accounts = HashMap<String, AccountState, foldhash::fast::RandomState>;

/// The shard an account's events go to (the same for a DID throughout the process).
pub fn shard_of(did: &str, shards: usize) -> usize {
    let h = foldhash::fast::FixedState::with_seed(0x5eed).hash_one(did);
    (h % shards as u64) as usize
}

/// A result of network work, sent back to the shard that asked for it.
#[derive(Debug)]
pub enum Wake {
    /// A DID resolution finished.
    Resolved {
        /// The account.
        did: String,
        /// The identity, or why not.
        result: Result<Arc<Identity>, String>,
    },
    /// A repair finished.
    Repaired {
        /// The account.
        did: String,
        /// The verified repo head, or why not.
        result: Result<Box<Repaired>, String>,
    },
    /// A failed repair's backoff ran out: try again.
    Retry {
        /// The account.
        did: String,
    },
}

/// A whole repo fetched from the account's PDS and verified.
#[derive(Debug)]
pub struct Repaired {
    commit: Commit,
    head: atproto::Cid,
    counts: Vec<(String, u64)>,
    /// A CAR with just the signed commit, for the `#sync` event.
    blocks: Vec<u8>,
}

/// An event waiting in a shard, with whether its DID has been resolved afresh for it.
#[derive(Debug)]
struct Pending {
    inbound: Inbound,
    refreshed: bool,
}

/// What checking one event came to.
enum Step {
    Done(Verified),
    /// The DID must be resolved (afresh) before the event can be checked.
    Resolve(Pending),
    /// The account's chain is broken: repair it; the event is answered by the repair.
    Repair(Pending),
}

/// An account with network work outstanding or a repair to retry.
#[derive(Default)]
struct Work {
    /// A resolution or repair task is running.
    busy: bool,
    /// Events waiting for it, in order.
    parked: VecDeque<Pending>,
    /// The latest resolution's result, used by the parked events (then dropped).
    resolved: Option<Result<Arc<Identity>, String>>,
    /// The event that started the running repair.
    trigger: Option<Pending>,
    /// Failed repairs in a row (the backoff grows with it).
    failures: u32,
    /// The host the account is repaired for.
    host: Option<Arc<Host>>,
}

/// One shard: its accounts and the loop that checks their events.
pub struct Shard {
    ctx: ShardContext,
    accounts: Accounts,
    work: HashMap<String, Work, foldhash::fast::RandomState>,
    parked_bytes: usize,
    wake_tx: mpsc::UnboundedSender<Wake>,
    wake_rx: mpsc::UnboundedReceiver<Wake>,
    tasks: tokio::task::JoinSet<()>,
    hosts: crate::hosts::Hosts,
}

enum Msg {
    Events(Vec<Inbound>),
    Wake(Wake),
}

impl Shard {
    /// A shard owning `accounts`; accounts stored as desynchronized are repaired again.
    pub fn new(ctx: ShardContext, accounts: Accounts, hosts: crate::hosts::Hosts) -> Self {
        let (wake_tx, wake_rx) = mpsc::unbounded_channel();
        let mut shard = Shard {
            ctx,
            accounts,
            work: HashMap::default(),
            parked_bytes: 0,
            wake_tx,
            wake_rx,
            tasks: tokio::task::JoinSet::new(),
            hosts,
        };
        let desynced: Vec<(String, Arc<str>)> = shard
            .accounts
            .iter()
            .filter(|(_, a)| a.desynchronized)
            .map(|(d, a)| (d.clone(), a.host.clone()))
            .collect();
        for (did, host) in desynced {
            if let Some(host) = shard.hosts.get(&host) {
                let work = shard.work.entry(did.clone()).or_default();
                work.host = Some(host);
                shard.schedule_retry(&did, Duration::ZERO);
            }
        }
        shard
    }

    /// Checks events until the input closes (shutdown) or the sequencer is gone. Events
    /// arrive in batches and their outcomes leave in one batch each (one hand-off, not one
    /// per event).
    pub fn run(
        mut self,
        mut input: mpsc::Receiver<Vec<Inbound>>,
        output: mpsc::Sender<Vec<Verified>>,
    ) {
        let runtime = self.ctx.runtime.clone();
        loop {
            let msg = match self.wake_rx.try_recv() {
                Ok(w) => Msg::Wake(w),
                Err(_) => match input.try_recv() {
                    Ok(e) => Msg::Events(e),
                    Err(mpsc::error::TryRecvError::Disconnected) => break,
                    Err(mpsc::error::TryRecvError::Empty) => {
                        let wake = &mut self.wake_rx;
                        let next = runtime.block_on(async {
                            tokio::select! {
                                biased;
                                Some(w) = wake.recv() => Some(Msg::Wake(w)),
                                e = input.recv() => e.map(Msg::Events),
                            }
                        });
                        match next {
                            Some(m) => m,
                            None => break,
                        }
                    }
                },
            };
            let mut out = Vec::new();
            match msg {
                Msg::Events(events) => {
                    self.ctx.metrics.verify_queue.decrement(events.len() as f64);
                    out.reserve(events.len());
                    for e in events {
                        self.on_event(e, &mut out);
                    }
                }
                Msg::Wake(w) => self.on_wake(w, &mut out),
            }
            if !out.is_empty() && output.blocking_send(out).is_err() {
                self.tasks.abort_all();
                return;
            }
            // Reap finished tasks (their results came back as wakes).
            while let Some(done) = self.tasks.try_join_next() {
                if let Err(e) = done {
                    if e.is_panic() {
                        tracing::error!(error = %e, "a shard task panicked");
                    }
                }
            }
        }
        self.tasks.abort_all();
    }

    fn on_event(&mut self, inbound: Inbound, out: &mut Vec<Verified>) {
        let Some(did) = inbound.frame.did().map(str::to_string) else {
            out.push(Verified::Skip(origin(&inbound)));
            return;
        };
        let pending = Pending {
            inbound,
            refreshed: false,
        };
        match self.work.get(&did) {
            Some(w) if w.busy || !w.parked.is_empty() => self.park(&did, pending, out),
            _ => self.process(&did, pending, out),
        }
    }

    /// Queues an event behind its account's outstanding work; over the bounds it is
    /// dropped (a later commit then shows the gap and the account is repaired).
    fn park(&mut self, did: &str, pending: Pending, out: &mut Vec<Verified>) {
        let size = pending.inbound.raw.len();
        let work = self.work.entry(did.to_string()).or_default();
        if work.parked.len() >= MAX_PARKED_PER_ACCOUNT
            || self.parked_bytes + size > MAX_PARKED_BYTES
        {
            let o = origin(&pending.inbound);
            self.ctx
                .metrics
                .drop_event(DropReason::Backlog, &o.host.url, Some(did));
            out.push(Verified::Skip(o));
            return;
        }
        self.parked_bytes += size;
        work.parked.push_back(pending);
    }

    fn process(&mut self, did: &str, pending: Pending, out: &mut Vec<Verified>) {
        match self.step(did, pending) {
            Step::Done(v) => out.push(v),
            Step::Resolve(mut pending) => {
                pending.refreshed = true;
                self.parked_bytes += pending.inbound.raw.len();
                let work = self.work.entry(did.to_string()).or_default();
                work.parked.push_front(pending);
                work.busy = true;
                work.resolved = None;
                self.spawn_resolve(did);
            }
            Step::Repair(pending) => {
                let work = self.work.entry(did.to_string()).or_default();
                work.host = Some(pending.inbound.host.clone());
                work.trigger = Some(pending);
                work.busy = true;
                self.spawn_repair(did);
            }
        }
    }

    /// Runs the account's parked events until one needs network work again.
    fn drain(&mut self, did: &str, out: &mut Vec<Verified>) {
        loop {
            let Some(work) = self.work.get_mut(did) else {
                return;
            };
            if work.busy {
                return;
            }
            let Some(next) = work.parked.pop_front() else {
                work.resolved = None;
                if work.trigger.is_none() && !self.is_desynchronized(did) {
                    self.work.remove(did);
                }
                return;
            };
            self.parked_bytes = self.parked_bytes.saturating_sub(next.inbound.raw.len());
            self.process(did, next, out);
        }
    }

    fn is_desynchronized(&self, did: &str) -> bool {
        self.accounts.get(did).is_some_and(|a| a.desynchronized)
    }

    fn on_wake(&mut self, wake: Wake, out: &mut Vec<Verified>) {
        match wake {
            Wake::Resolved { did, result } => {
                if let Some(work) = self.work.get_mut(&did) {
                    work.busy = false;
                    work.resolved = Some(result);
                }
                self.drain(&did, out);
            }
            Wake::Repaired { did, result } => {
                let Some(work) = self.work.get_mut(&did) else {
                    return;
                };
                work.busy = false;
                let trigger = work.trigger.take();
                let host = trigger
                    .as_ref()
                    .map(|t| t.inbound.host.clone())
                    .or_else(|| work.host.clone());
                let Some(host) = host else {
                    return;
                };
                let upstream_seq = trigger.as_ref().map(|t| t.inbound.upstream_seq);
                let o = Origin {
                    host: host.clone(),
                    upstream_seq,
                };
                match result {
                    Ok(repaired) => {
                        work.failures = 0;
                        self.ctx.metrics.resyncs.increment(1);
                        let received = trigger
                            .as_ref()
                            .map(|t| t.inbound.received)
                            .unwrap_or_else(Instant::now);
                        match self.repaired(&did, &o, *repaired) {
                            Ok(append) => out.push(Verified::Event {
                                append: Box::new(append),
                                origin: o,
                                received,
                            }),
                            Err(reason) => {
                                self.ctx.metrics.drop_event(reason, &host.url, Some(&did));
                                out.push(Verified::Skip(o));
                            }
                        }
                        tracing::info!(host = %host.url, %did, "account repaired from getRepo");
                    }
                    Err(error) => {
                        work.failures += 1;
                        let failures = work.failures;
                        tracing::warn!(host = %host.url, %did, %error, failures, "repair failed; retrying with backoff");
                        self.ctx.metrics.repair_failures.increment(1);
                        if trigger.is_some() {
                            self.ctx
                                .metrics
                                .drop_event(DropReason::Desync, &host.url, Some(&did));
                        }
                        match self.mark_desynchronized(&did, &host) {
                            Some(state) => out.push(Verified::State {
                                did: did.clone(),
                                state: Box::new(state),
                                origin: o,
                            }),
                            None => out.push(Verified::Skip(o)),
                        }
                        let delay = self.backoff(failures);
                        self.schedule_retry(&did, delay);
                    }
                }
                self.drain(&did, out);
            }
            Wake::Retry { did } => {
                let Some(work) = self.work.get_mut(&did) else {
                    return;
                };
                if work.busy || !self.accounts.get(&did).is_some_and(|a| a.desynchronized) {
                    return;
                }
                work.busy = true;
                self.spawn_repair(&did);
            }
        }
    }

    fn backoff(&self, failures: u32) -> Duration {
        let r = &self.ctx.repair;
        let exp = r
            .min_backoff
            .saturating_mul(1u32 << failures.saturating_sub(1).min(20));
        exp.min(r.max_backoff)
            .mul_f64(rand::thread_rng().gen_range(0.75..1.25))
    }

    /// Marks the account desynchronized (once), returning the state to store.
    fn mark_desynchronized(&mut self, did: &str, host: &Arc<Host>) -> Option<AccountState> {
        let state = self.accounts.get_mut(did)?;
        if !state.desynchronized {
            state.desynchronized = true;
            host.desynchronized
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        Some(state.clone())
    }

    fn clear_desynchronized(&mut self, did: &str) {
        if let Some(state) = self.accounts.get_mut(did) {
            if state.desynchronized {
                state.desynchronized = false;
                if let Some(h) = self.hosts.get(&state.host) {
                    h.desynchronized
                        .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }
    }

    fn schedule_retry(&mut self, did: &str, delay: Duration) {
        let wake = self.wake_tx.clone();
        let did = did.to_string();
        self.tasks.spawn_on(
            async move {
                tokio::time::sleep(delay).await;
                let _ = wake.send(Wake::Retry { did });
            },
            &self.ctx.runtime,
        );
    }

    fn spawn_resolve(&mut self, did: &str) {
        let resolver = self.ctx.resolver.clone();
        let wake = self.wake_tx.clone();
        let did = did.to_string();
        let lookups = self.ctx.lookups.clone();
        let metrics = self.ctx.metrics.clone();
        self.tasks.spawn_on(
            async move {
                // Closed only if the relay is going down; resolve anyway then.
                let _permit = lookups.acquire_owned().await.ok();
                let started = Instant::now();
                let result = AssertUnwindSafe(resolver.refresh(&did))
                    .catch_unwind()
                    .await
                    .unwrap_or_else(|_| {
                        Err(atproto::identity::IdentityError::Fetch(
                            "resolver panicked".into(),
                        ))
                    })
                    .map_err(|e| e.to_string());
                metrics
                    .identity_seconds
                    .record(started.elapsed().as_secs_f64());
                if result.is_err() {
                    metrics.identity_failures.increment(1);
                }
                tracing::debug!(%did, ok = result.is_ok(), elapsed = ?started.elapsed(), "resolved");
                let _ = wake.send(Wake::Resolved { did, result });
            },
            &self.ctx.runtime,
        );
    }

    fn spawn_repair(&mut self, did: &str) {
        let resolver = self.ctx.resolver.clone();
        let http = self.ctx.http.clone();
        let repair = self.ctx.repair.clone();
        let wake = self.wake_tx.clone();
        let did = did.to_string();
        let host = self.work.get(&did).and_then(|w| w.host.clone());
        let dev = self.ctx.dev;
        self.tasks.spawn_on(
            async move {
                let work = async {
                    let id = resolver.identity(&did).await.map_err(|e| e.to_string())?;
                    let pds = id.pds.as_deref().ok_or("the DID document names no PDS")?;
                    if let Some(h) = &host {
                        if !same_host(Some(pds), &h.url, dev) {
                            return Err(format!("the account's PDS is now {pds}"));
                        }
                    }
                    fetch_repo(&http, pds, &did, &id, &repair).await
                };
                let result = AssertUnwindSafe(work)
                    .catch_unwind()
                    .await
                    .unwrap_or_else(|_| Err("repair panicked".into()));
                let _ = wake.send(Wake::Repaired { did, result });
            },
            &self.ctx.runtime,
        );
    }

    /// The identity for an event: from its account's latest resolution, else the cache.
    fn lookup(&self, did: &str) -> Option<Result<Arc<Identity>, DropReason>> {
        if let Some(r) = self.work.get(did).and_then(|w| w.resolved.as_ref()) {
            return Some(r.clone().map_err(|_| DropReason::Identity));
        }
        self.ctx.resolver.cached(did).map(Ok)
    }

    fn step(&mut self, did: &str, pending: Pending) -> Step {
        let o = origin(&pending.inbound);
        let host = o.host.clone();
        // Already sequenced before a restart (the host re-sent it from the low-water
        // cursor): recognised and skipped, not republished.
        if let Some(Upstream { epoch, seq }) = self
            .accounts
            .get(did)
            .and_then(|a| (a.host == host.url).then_some(a.upstream).flatten())
        {
            if epoch == host.epoch() && pending.inbound.upstream_seq <= seq {
                self.ctx.metrics.redelivered.increment(1);
                return Step::Done(Verified::Skip(o));
            }
        }
        // #identity announces a changed document: resolve it afresh before judging.
        if matches!(pending.inbound.frame, Frame::Identity(_)) && !pending.refreshed {
            return Step::Resolve(pending);
        }
        let id = match self.lookup(did) {
            Some(Ok(id)) => id,
            Some(Err(reason)) => return self.drop(reason, did, o),
            None if !pending.refreshed => return Step::Resolve(pending),
            None => return self.drop(DropReason::Identity, did, o),
        };
        // Host authority, for every kind of event: re-resolve once before refusing (the
        // account may have moved here).
        if !same_host(id.pds.as_deref(), &host.url, self.ctx.dev) {
            if !pending.refreshed {
                return Step::Resolve(pending);
            }
            return self.drop(DropReason::WrongHost, did, o);
        }
        let Pending { inbound, refreshed } = pending;
        let Inbound {
            frame,
            raw,
            received,
            upstream_seq,
            ..
        } = inbound;
        let input_kind = std::mem::discriminant(&frame);
        let marker = Upstream {
            epoch: host.epoch(),
            seq: upstream_seq,
        };
        // A commit handed back for network work goes back into its event, as it came.
        let again = |ev: CommitEvent, host: Arc<Host>, raw: bytes::Bytes| Pending {
            inbound: Inbound {
                host,
                upstream_seq,
                frame: Frame::Commit(Box::new(ev)),
                raw,
                received,
            },
            refreshed,
        };
        let result = match frame {
            Frame::Commit(ev) => match self.commit(&host, marker, *ev, &id, refreshed) {
                CommitStep::Done(r) => r,
                CommitStep::Refresh(ev) => return Step::Resolve(again(ev, host, raw)),
                CommitStep::Repair(ev) => return Step::Repair(again(ev, host, raw)),
            },
            Frame::Sync(ev) => self.sync(&host, marker, ev, &id),
            Frame::Identity(ev) => self.touch(did, &host, marker).map(|account| Append {
                frame: Frame::Identity(ev),
                account: Some((did.to_string(), account)),
                collections: Collections::Unchanged,
                raw: None,
            }),
            Frame::Account(ev) => self.touch(did, &host, marker).map(|mut state| {
                state.active = ev.active;
                state.status = ev.status.clone();
                self.accounts.insert(did.to_string(), state.clone());
                Append {
                    collections: Collections::Unchanged,
                    raw: None,
                    account: Some((did.to_string(), state)),
                    frame: Frame::Account(ev),
                }
            }),
            Frame::Info(_) | Frame::Error(_) | Frame::Unknown { .. } => {
                return Step::Done(Verified::Skip(o))
            }
        };
        match result {
            Ok(mut append) => {
                // Republished as received unless the relay made its own event.
                if std::mem::discriminant(&append.frame) == input_kind {
                    append.raw = Some(raw);
                }
                Step::Done(Verified::Event {
                    append: Box::new(append),
                    origin: o,
                    received,
                })
            }
            Err(reason) => self.drop(reason, did, o),
        }
    }

    fn drop(&self, reason: DropReason, did: &str, o: Origin) -> Step {
        if reason.is_verification_failure() {
            o.host.note_failure();
        }
        self.ctx.metrics.drop_event(reason, &o.host.url, Some(did));
        Step::Done(Verified::Skip(o))
    }

    /// The account's state after an authoritative event that changes no repo data: the
    /// account is created (within the host's account limit) and its marker advanced.
    fn touch(
        &mut self,
        did: &str,
        host: &Arc<Host>,
        marker: Upstream,
    ) -> Result<AccountState, DropReason> {
        let state = match self.accounts.get_mut(did) {
            Some(s) => s,
            None => {
                if !host.admit_account() {
                    return Err(DropReason::AccountLimit);
                }
                self.accounts
                    .entry(did.to_string())
                    .or_insert(AccountState {
                        host: host.url.clone(),
                        active: true,
                        ..AccountState::default()
                    })
            }
        };
        // The DID document names this host (checked by the caller), so the binding follows.
        state.host = host.url.clone();
        state.upstream = Some(marker);
        Ok(state.clone())
    }

    fn commit(
        &mut self,
        host: &Arc<Host>,
        marker: Upstream,
        ev: CommitEvent,
        id: &Identity,
        refreshed: bool,
    ) -> CommitStep {
        let started = Instant::now();
        // What the account's stored state says about this event, read in place.
        let (inactive, stale) = match self.accounts.get(&ev.repo) {
            Some(p) => (
                !p.active && p.status.is_some(),
                p.rev.as_deref().is_some_and(|last| ev.rev.as_str() <= last),
            ),
            None => (false, false),
        };
        if inactive {
            return CommitStep::Done(self.fail(DropReason::Inactive, host, ev));
        }
        let rev = match Tid::parse(&ev.rev) {
            Ok(t) => t,
            Err(_) => return CommitStep::Done(self.fail(DropReason::Inconsistent, host, ev)),
        };
        if rev.micros() > now_micros() + MAX_FUTURE_REV_MICROS {
            return CommitStep::Done(self.fail(DropReason::FutureRev, host, ev));
        }
        if stale {
            return CommitStep::Done(self.fail(DropReason::StaleRev, host, ev));
        }
        let verified = match verify_commit_event(&ev, &id.signing_key, CarLimits::FIREHOSE) {
            Err(CommitError::Signature(_)) if !refreshed => return CommitStep::Refresh(ev),
            Ok(v) => v,
            Err(e) => return CommitStep::Done(self.fail(classify(&e), host, ev)),
        };
        self.ctx
            .metrics
            .verify_seconds
            .record(started.elapsed().as_secs_f64());

        // Continuity: the tree before this commit must be the one we last saw, which the
        // inversion establishes even when the host omits prevData. A desynchronized
        // account waits for its repair.
        if let Some(p) = self.accounts.get(&ev.repo) {
            if p.desynchronized {
                return CommitStep::Done(Err(DropReason::Desync));
            }
            let continuous = p.data.is_none()
                || (verified.prev_data.map(StateCid::from) == p.data
                    && ev.since.as_deref() == p.rev.as_deref());
            if !continuous {
                return CommitStep::Repair(ev);
            }
        } else if !host.admit_account() {
            return CommitStep::Done(Err(DropReason::AccountLimit));
        }
        let state = self.adopt(
            &ev.repo,
            host,
            marker,
            &ev.rev,
            verified.commit.data,
            ev.commit,
        );
        CommitStep::Done(Ok(Append {
            collections: collection_delta(&ev.ops),
            raw: None,
            account: Some((ev.repo.clone(), state)),
            frame: Frame::Commit(Box::new(ev)),
        }))
    }

    /// Records that `did` is now at `rev` (tree `data`, commit `head`), active on `host`.
    fn adopt(
        &mut self,
        did: &str,
        host: &Arc<Host>,
        marker: Upstream,
        rev: &str,
        data: atproto::Cid,
        head: atproto::Cid,
    ) -> AccountState {
        let prior = self.accounts.get(did);
        let state = AccountState {
            host: host.url.clone(),
            rev: Some(rev.to_string()),
            data: Some(data.into()),
            head: Some(head.into()),
            active: prior.map(|p| p.active).unwrap_or(true),
            status: prior.and_then(|p| p.status.clone()),
            upstream: Some(marker),
            desynchronized: false,
        };
        self.accounts.insert(did.to_string(), state.clone());
        state
    }

    /// In lenient mode a failed commit is still published (the failure is counted); the
    /// account's state and host binding stay as they were.
    fn fail(
        &mut self,
        reason: DropReason,
        host: &Arc<Host>,
        ev: CommitEvent,
    ) -> Result<Append, DropReason> {
        if !self.ctx.lenient {
            return Err(reason);
        }
        if reason.is_verification_failure() {
            host.note_failure();
        }
        self.ctx
            .metrics
            .drop_event(reason, &host.url, Some(&ev.repo));
        Ok(Append {
            collections: Collections::Unchanged,
            raw: None,
            account: None,
            frame: Frame::Commit(Box::new(ev)),
        })
    }

    /// `#sync`: the host declares the repo's current head. Held to the same rules as a
    /// commit's head: rev order, the future bound, and the account's signature.
    fn sync(
        &mut self,
        host: &Arc<Host>,
        marker: Upstream,
        ev: SyncEvent,
        id: &Identity,
    ) -> Result<Append, DropReason> {
        let car =
            read_car(&ev.blocks, CarLimits::FIREHOSE).map_err(|_| DropReason::Inconsistent)?;
        let root = car.roots.first().ok_or(DropReason::Inconsistent)?;
        let commit: Commit =
            atproto::data::from_cbor(car.blocks.get(root).ok_or(DropReason::Inconsistent)?)
                .map_err(|_| DropReason::Inconsistent)?;
        if commit.did != ev.did || commit.rev != ev.rev {
            return Err(DropReason::Inconsistent);
        }
        let rev = Tid::parse(&commit.rev).map_err(|_| DropReason::Inconsistent)?;
        if rev.micros() > now_micros() + MAX_FUTURE_REV_MICROS {
            return Err(DropReason::FutureRev);
        }
        let prior = self.accounts.get(&ev.did);
        if let Some(last) = prior.and_then(|p| p.rev.as_deref()) {
            if commit.rev.as_str() <= last {
                return Err(DropReason::StaleRev);
            }
        }
        commit
            .verify(&id.signing_key)
            .map_err(|_| DropReason::BadSignature)?;
        if prior.is_none() && !host.admit_account() {
            return Err(DropReason::AccountLimit);
        }
        self.clear_desynchronized(&ev.did);
        let state = self.adopt(&ev.did, host, marker, &commit.rev, commit.data, *root);
        if let Some(w) = self.work.get_mut(&ev.did) {
            w.failures = 0;
        }
        Ok(Append {
            collections: Collections::Unchanged,
            raw: None,
            account: Some((ev.did.clone(), state)),
            frame: Frame::Sync(ev),
        })
    }

    /// A verified repo from a repair becomes the account's state and a `#sync` event.
    fn repaired(&mut self, did: &str, o: &Origin, r: Repaired) -> Result<Append, DropReason> {
        if let Some(last) = self.accounts.get(did).and_then(|a| a.rev.as_deref()) {
            if r.commit.rev.as_str() < last {
                return Err(DropReason::StaleRev);
            }
        }
        self.clear_desynchronized(did);
        let marker = match (
            o.upstream_seq,
            self.accounts.get(did).and_then(|a| a.upstream),
        ) {
            (Some(seq), _) => Upstream {
                epoch: o.host.epoch(),
                seq,
            },
            (None, Some(m)) => m,
            (None, None) => Upstream {
                epoch: o.host.epoch(),
                seq: 0,
            },
        };
        let state = self.adopt(did, &o.host, marker, &r.commit.rev, r.commit.data, r.head);
        let ev = SyncEvent {
            seq: 0,
            did: did.to_string(),
            blocks: r.blocks.into(),
            rev: r.commit.rev,
            time: atproto::syntax::datetime_now(),
        };
        Ok(Append {
            collections: Collections::Reset(r.counts),
            raw: None,
            account: Some((did.to_string(), state)),
            frame: Frame::Sync(ev),
        })
    }
}

enum CommitStep {
    Done(Result<Append, DropReason>),
    Refresh(CommitEvent),
    Repair(CommitEvent),
}

fn origin(inbound: &Inbound) -> Origin {
    Origin {
        host: inbound.host.clone(),
        upstream_seq: Some(inbound.upstream_seq),
    }
}

/// Fetches the account's whole repo from its PDS (`getRepo`, the DID percent-encoded, no
/// redirects, at most `max_bytes` within `timeout`) and verifies it: the signed head by
/// the account's key, and every record's path through a hash-consistent tree.
async fn fetch_repo(
    http: &atproto::net::GuardedClient,
    pds: &str,
    did: &str,
    id: &Identity,
    limits: &RepairConfig,
) -> Result<Box<Repaired>, String> {
    let url = atproto::net::xrpc_url(pds, "com.atproto.sync.getRepo", &[("did", did)]);
    let fetch = async {
        let mut resp = http
            .get(&url)
            .map_err(|e| format!("getRepo: {e}"))?
            .send()
            .await
            .map_err(|e| format!("getRepo: {e}"))?;
        if !resp.status().is_success() {
            return Err(format!("getRepo: HTTP {}", resp.status()));
        }
        if resp
            .content_length()
            .is_some_and(|n| n > limits.max_bytes as u64)
        {
            return Err(format!("getRepo: repo over {} bytes", limits.max_bytes));
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| format!("getRepo: {e}"))? {
            if body.len() + chunk.len() > limits.max_bytes {
                return Err(format!("getRepo: repo over {} bytes", limits.max_bytes));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    };
    let body = tokio::time::timeout(limits.timeout, fetch)
        .await
        .map_err(|_| format!("getRepo: no whole repo within {:?}", limits.timeout))??;
    let key = id.signing_key.clone();
    let did = did.to_string();
    let max_bytes = limits.max_bytes;
    tokio::task::spawn_blocking(move || verify_repo(&body, &did, &key, max_bytes))
        .await
        .map_err(|e| format!("verifying repo: {e}"))?
}

fn verify_repo(
    bytes: &[u8],
    did: &str,
    key: &atproto::crypto::PublicKey,
    max_bytes: usize,
) -> Result<Box<Repaired>, String> {
    let limits = CarLimits {
        max_bytes,
        ..CarLimits::REPO
    };
    let car = read_car(bytes, limits).map_err(|e| format!("repo CAR: {e}"))?;
    let repo = atproto::commit::RepoSnapshot::read_verified(did, &car, key)
        .map_err(|e| format!("repo: {e}"))?;
    let (root, commit, entries) = (repo.head, repo.commit, repo.entries);
    let commit_bytes = car.blocks.get(&root).cloned().unwrap_or_default();
    let mut per_collection: HashMap<String, u64> = HashMap::new();
    for (key, _) in &entries {
        *per_collection
            .entry(key.split('/').next().unwrap_or_default().to_string())
            .or_default() += 1;
    }
    let blocks = write_car(&[root], [(&root, commit_bytes.as_slice())])
        .map_err(|e| format!("sync CAR: {e}"))?;
    Ok(Box::new(Repaired {
        commit,
        head: root,
        counts: per_collection.into_iter().collect(),
        blocks,
    }))
}

/// Records added and removed per collection by a commit's ops.
fn collection_delta(ops: &[atproto::frame::RepoOp]) -> Collections {
    // A commit touches a handful of collections: a short list, not a map.
    let mut delta: Vec<(String, i64)> = Vec::new();
    for op in ops {
        let d = match op.action.as_str() {
            "create" => 1,
            "delete" => -1,
            _ => continue,
        };
        let collection = op.path.split('/').next().unwrap_or_default();
        match delta.iter_mut().find(|(c, _)| c == collection) {
            Some((_, n)) => *n += d,
            None => delta.push((collection.to_string(), d)),
        }
    }
    delta.retain(|(_, d)| *d != 0);
    if delta.is_empty() {
        return Collections::Unchanged;
    }
    Collections::Delta(delta)
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
        // (the DID document's PDS, the host the event came from, dev mode, same host?)
        let cases = [
            (
                Some("https://pds.example.com"),
                "https://pds.example.com/",
                false,
                true,
            ),
            (
                Some("https://pds.example.com"),
                "https://evil.example.com",
                false,
                false,
            ),
            (
                Some("http://localhost:2583"),
                "http://127.0.0.1:2583",
                true,
                true,
            ),
            (
                Some("http://localhost:2583"),
                "http://127.0.0.1:2583",
                false,
                false,
            ),
            (None, "http://127.0.0.1:2583", true, false),
            (
                Some("HTTPS://PDS.Example.com/"),
                "https://pds.example.com",
                false,
                true,
            ),
            (
                Some("http://LOCALHOST:2583/"),
                "http://127.0.0.1:2583",
                true,
                true,
            ),
            (
                Some("http://localhost:2584"),
                "http://127.0.0.1:2583",
                true,
                false,
            ),
        ];
        for (pds, host, dev, same) in cases {
            assert_eq!(
                same_host(pds, host, dev),
                same,
                "{pds:?} vs {host} (dev {dev})"
            );
        }
    }

    #[test]
    fn shards_are_stable_and_spread_accounts() {
        assert_eq!(shard_of("did:plc:abc", 4), shard_of("did:plc:abc", 4));
        let mut per_shard = [0usize; 4];
        for i in 0..4000 {
            per_shard[shard_of(&format!("did:plc:agent{i:05}"), 4)] += 1;
        }
        assert!(per_shard.iter().all(|&n| n > 800), "{per_shard:?}");
    }
}
