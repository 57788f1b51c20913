//! Per-host limits and counters, shared by the host's reader (event rates), the verifier
//! shards (account count) and the admin/XRPC handlers (which read and change them while
//! the relay runs).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// A host as a base URL: a bare hostname (as `requestCrawl` and other relays' `listHosts`
/// give it) is https on the default port; a URL keeps its scheme and port.
pub fn normalize_url(host: &str) -> String {
    let h = host.trim_end_matches('/');
    if h.contains("://") {
        h.to_string()
    } else {
        format!("https://{h}")
    }
}

/// A host's limits. Defaults are close to the reference relay's for a new host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Limits {
    /// Events per second.
    pub per_second: u64,
    /// Events per hour.
    pub per_hour: u64,
    /// Events per day.
    pub per_day: u64,
    /// Accounts hosted.
    pub accounts: u64,
}

#[derive(Debug)]
struct Window {
    started: Instant,
    count: u64,
}

impl Window {
    fn new() -> Self {
        Window {
            started: Instant::now(),
            count: 0,
        }
    }

    /// Counts one event in a fixed window of `len`; false when over `limit`.
    fn admit(&mut self, len: Duration, limit: u64) -> bool {
        if self.started.elapsed() >= len {
            self.started = Instant::now();
            self.count = 0;
        }
        if self.count >= limit {
            return false;
        }
        self.count += 1;
        true
    }
}

/// The upstream seqs read from a host and not yet settled (appended to the log, or
/// dropped) by the sequencer. The host's stored cursor is the low-water mark below the
/// oldest of them, so after a crash the relay re-reads every event that was in flight on
/// any verifier shard (slow DID lookups and repairs included) and none is lost.
#[derive(Debug, Default)]
struct InFlight {
    /// Seq → copies in flight (a reconnect may re-read an event still queued).
    pending: BTreeMap<i64, u32>,
    /// Highest seq settled so far.
    settled_max: i64,
    /// Highest seq read so far (this process), where a reconnect resumes.
    read_max: i64,
    /// A cursor the operator set, to be asked for as it is on the next connection.
    forced: Option<i64>,
}

/// Where a host stands, as `listHosts` and `getHostStatus` report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostStatus {
    /// Connected and sending.
    Active,
    /// Connected, but it went quiet for the idle timeout (the connection is remade).
    Idle,
    /// Unreachable: several connection attempts in a row failed (still retried, with
    /// backoff, forever).
    Offline,
    /// Over its event rate limit right now (events are being dropped).
    Throttled,
    /// Refused by the operator: not crawled, `requestCrawl` refused.
    Banned,
}

impl HostStatus {
    /// The status as the sync lexicon spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            HostStatus::Active => "active",
            HostStatus::Idle => "idle",
            HostStatus::Offline => "offline",
            HostStatus::Throttled => "throttled",
            HostStatus::Banned => "banned",
        }
    }

    /// Reads a stored status (unknown values read as active).
    pub fn parse(s: &str) -> HostStatus {
        match s {
            "idle" => HostStatus::Idle,
            "offline" => HostStatus::Offline,
            "throttled" => HostStatus::Throttled,
            "banned" => HostStatus::Banned,
            _ => HostStatus::Active,
        }
    }
}

/// Failed connection attempts in a row after which a host is reported offline.
const OFFLINE_AFTER: u32 = 3;
/// A host that dropped an event for rate within this long is reported throttled.
const THROTTLED_FOR: Duration = Duration::from_secs(5);
/// Most an automatically raised account limit grows to.
pub const MAX_AUTO_ACCOUNTS: u64 = 1_000_000;

/// How a host's account limit grows when the operator has not set one: each time the
/// host reaches it after `window` without a single event failing verification (bad
/// signature, bad inversion, inconsistent or oversized commits, malformed frames, wrong
/// host, revs from the future), the limit doubles, up to [`MAX_AUTO_ACCOUNTS`].
#[derive(Debug, Clone, Copy)]
pub struct Growth {
    /// The clean stretch a raise needs.
    pub window: Duration,
}

/// One host's live state beside its limits.
#[derive(Debug)]
struct Live {
    status: HostStatus,
    failures: u32,
    last_error: Option<String>,
    last_throttled: Option<Instant>,
    /// Since when no event failed verification.
    clean_since: Instant,
}

/// One host's live limits and counters.
#[derive(Debug)]
pub struct Host {
    /// The host's URL.
    pub url: Arc<str>,
    limits: Mutex<Limits>,
    windows: Mutex<[Window; 3]>,
    accounts: AtomicU64,
    /// Events refused for rate.
    pub throttled: AtomicU64,
    /// Accounts on this host the relay holds as desynchronized (a repair is pending).
    pub desynchronized: AtomicU64,
    /// Bumped when the host's sequence restarts (it answered `FutureCursor` to the stored
    /// cursor): upstream seqs from an older epoch are not comparable with new ones.
    epoch: AtomicU64,
    in_flight: Mutex<InFlight>,
    live: Mutex<Live>,
    /// The account limit grows by itself (the operator set none), and how.
    growth: Option<Growth>,
    /// The operator set limits while the relay ran: growth stops.
    fixed: std::sync::atomic::AtomicBool,
    /// New accounts refused for the account limit.
    pub accounts_refused: AtomicU64,
    /// Times the account limit grew by itself.
    pub limit_raises: AtomicU64,
    /// When the newest event from this host arrived (ms since the epoch; 0: none yet).
    last_received_ms: AtomicI64,
    /// How far behind the host's own clock that event arrived, in ms (never negative: a
    /// host whose clock runs ahead shows no lag, not a negative one).
    last_lag_ms: AtomicI64,
}

impl Host {
    fn new(url: &str, limits: Limits, accounts: u64, growth: Option<Growth>) -> Self {
        Host {
            url: Arc::from(url),
            limits: Mutex::new(limits),
            windows: Mutex::new([Window::new(), Window::new(), Window::new()]),
            accounts: AtomicU64::new(accounts),
            throttled: AtomicU64::new(0),
            desynchronized: AtomicU64::new(0),
            epoch: AtomicU64::new(0),
            in_flight: Mutex::new(InFlight::default()),
            live: Mutex::new(Live {
                status: HostStatus::Active,
                failures: 0,
                last_error: None,
                last_throttled: None,
                clean_since: Instant::now(),
            }),
            growth,
            fixed: std::sync::atomic::AtomicBool::new(false),
            accounts_refused: AtomicU64::new(0),
            limit_raises: AtomicU64::new(0),
            last_received_ms: AtomicI64::new(0),
            last_lag_ms: AtomicI64::new(0),
        }
    }

    /// An event arrived at `now_ms`, emitted (the host says) at `emitted_ms`; returns the
    /// lag in ms, when the event said when it was emitted.
    pub fn saw_event(&self, emitted_ms: Option<i64>, now_ms: i64) -> Option<i64> {
        self.last_received_ms.store(now_ms, Ordering::Relaxed);
        let lag = emitted_ms.map(|e| (now_ms - e).max(0));
        if let Some(lag) = lag {
            self.last_lag_ms.store(lag, Ordering::Relaxed);
        }
        lag
    }

    /// (when the newest event arrived, ms since the epoch; how far behind the host's clock
    /// it arrived, seconds), once an event has arrived.
    pub fn lag(&self) -> Option<(i64, f64)> {
        let at = self.last_received_ms.load(Ordering::Relaxed);
        (at > 0).then(|| (at, self.last_lag_ms.load(Ordering::Relaxed) as f64 / 1000.0))
    }

    fn live(&self) -> std::sync::MutexGuard<'_, Live> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The status now: throttled while events are being dropped for rate, else the
    /// connection's.
    pub fn status(&self) -> HostStatus {
        let live = self.live();
        match live.last_throttled {
            Some(at) if live.status == HostStatus::Active && at.elapsed() < THROTTLED_FOR => {
                HostStatus::Throttled
            }
            _ => live.status,
        }
    }

    /// The last connection error, if the host is not connected.
    pub fn last_error(&self) -> Option<String> {
        self.live().last_error.clone()
    }

    /// Sets the status (the operator's ban, or at start); returns the previous one.
    pub fn set_status(&self, status: HostStatus) -> HostStatus {
        std::mem::replace(&mut self.live().status, status)
    }

    /// A connection was made. Returns the new status if it changed.
    pub fn connected(&self) -> Option<HostStatus> {
        let mut live = self.live();
        live.failures = 0;
        live.last_error = None;
        (live.status != HostStatus::Active).then(|| {
            live.status = HostStatus::Active;
            HostStatus::Active
        })
    }

    /// A session ended with `error` (`idle`: the host went quiet). Returns the new status
    /// if it changed.
    pub fn disconnected(&self, error: String, idle: bool) -> Option<HostStatus> {
        let mut live = self.live();
        live.failures += 1;
        live.last_error = Some(error);
        let status = if idle {
            HostStatus::Idle
        } else if live.failures >= OFFLINE_AFTER {
            HostStatus::Offline
        } else {
            live.status
        };
        (status != live.status && live.status != HostStatus::Banned).then(|| {
            live.status = status;
            status
        })
    }

    /// An event from this host failed verification: the account limit's clean stretch
    /// starts again.
    pub fn note_failure(&self) {
        self.live().clean_since = Instant::now();
    }

    fn flight(&self) -> std::sync::MutexGuard<'_, InFlight> {
        // Whole-value updates only: a poisoned lock holds a consistent map.
        self.in_flight.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The host's sequence epoch (see [`Host::restart_sequence`]).
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Relaxed)
    }

    /// Adopts the stored epoch and cursor at start.
    pub fn resume(&self, epoch: u64, cursor: i64) {
        self.epoch.store(epoch, Ordering::Relaxed);
        let mut f = self.flight();
        f.settled_max = f.settled_max.max(cursor);
        f.read_max = f.read_max.max(cursor);
    }

    /// The host restarted its sequence: start a new epoch from the live tail.
    pub fn restart_sequence(&self) -> u64 {
        let mut f = self.flight();
        f.pending.clear();
        f.settled_max = 0;
        f.read_max = 0;
        self.epoch.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Where a reconnect resumes: after the last event read, even if still in flight
    /// (this process will settle it), or after the stored cursor.
    pub fn resume_after(&self, stored: i64) -> i64 {
        self.flight().read_max.max(stored)
    }

    /// Notes an event read from the host, to be settled by the sequencer.
    pub fn begin(&self, seq: i64) {
        let mut f = self.flight();
        *f.pending.entry(seq).or_default() += 1;
        f.read_max = f.read_max.max(seq);
    }

    /// Settles events (appended or dropped) and returns the cursor that is now safe to
    /// store: no event at or below it is still in flight.
    pub fn settle(&self, seqs: impl IntoIterator<Item = i64>) -> i64 {
        let mut f = self.flight();
        for seq in seqs {
            // Only events read in this epoch count (a restart of the host's sequence
            // forgets the older ones).
            if let std::collections::btree_map::Entry::Occupied(mut e) = f.pending.entry(seq) {
                *e.get_mut() -= 1;
                if *e.get() == 0 {
                    e.remove();
                }
                f.settled_max = f.settled_max.max(seq);
            }
        }
        match f.pending.keys().next() {
            Some(oldest) => (*oldest - 1).min(f.settled_max),
            None => f.settled_max,
        }
    }

    /// Events read and not yet settled.
    pub fn in_flight(&self) -> usize {
        self.flight().pending.values().map(|n| *n as usize).sum()
    }

    /// The current limits.
    pub fn limits(&self) -> Limits {
        *self.limits.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Replaces the limits (takes effect on the next event); they no longer grow.
    pub fn set_limits(&self, limits: Limits) {
        self.fixed.store(true, Ordering::Relaxed);
        *self.limits.lock().unwrap_or_else(|p| p.into_inner()) = limits;
    }

    /// Counts an event against the per-second, per-hour and per-day windows.
    pub fn admit_event(&self) -> bool {
        let l = self.limits();
        let mut w = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        // Check all three before counting, so a refused event uses up no budget.
        let ok = [
            (0, Duration::from_secs(1), l.per_second),
            (1, Duration::from_secs(3600), l.per_hour),
            (2, Duration::from_secs(86_400), l.per_day),
        ]
        .iter()
        .all(|(i, len, limit)| {
            let win = &mut w[*i];
            if win.started.elapsed() >= *len {
                *win = Window::new();
            }
            win.count < *limit
        });
        if ok {
            w[0].admit(Duration::from_secs(1), l.per_second);
            w[1].admit(Duration::from_secs(3600), l.per_hour);
            w[2].admit(Duration::from_secs(86_400), l.per_day);
        } else {
            self.throttled.fetch_add(1, Ordering::Relaxed);
            drop(w);
            self.live().last_throttled = Some(Instant::now());
        }
        ok
    }

    /// Counts a newly seen account; false when the host is at its account limit (which
    /// first grows, by the [`Growth`] rule, if the host has behaved).
    pub fn admit_account(&self) -> bool {
        loop {
            let max = self.limits().accounts;
            let admitted = self
                .accounts
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                    (n < max).then_some(n + 1)
                })
                .is_ok();
            if admitted {
                return true;
            }
            if !self.grow() {
                self.accounts_refused.fetch_add(1, Ordering::Relaxed);
                return false;
            }
        }
    }

    /// Doubles the account limit if the host may grow and has been clean long enough.
    fn grow(&self) -> bool {
        let Some(growth) = self.growth.filter(|_| self.grows()) else {
            return false;
        };
        if self.live().clean_since.elapsed() < growth.window {
            return false;
        }
        let mut limits = self.limits.lock().unwrap_or_else(|p| p.into_inner());
        if limits.accounts >= MAX_AUTO_ACCOUNTS {
            return false;
        }
        let raised = limits
            .accounts
            .saturating_mul(2)
            .clamp(1, MAX_AUTO_ACCOUNTS);
        tracing::info!(host = %self.url, from = limits.accounts, to = raised, "account limit raised: the host has behaved");
        limits.accounts = raised;
        self.limit_raises.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// Whether the account limit grows by itself.
    pub fn grows(&self) -> bool {
        self.growth.is_some() && !self.fixed.load(Ordering::Relaxed)
    }

    /// Moves the cursor (an operator's reset): the next connection asks for exactly
    /// `cursor` (0: the host's whole retained stream), not the live tail.
    pub fn reset_cursor(&self, cursor: i64) {
        let mut f = self.flight();
        f.pending.clear();
        f.settled_max = cursor;
        f.read_max = cursor;
        f.forced = Some(cursor);
    }

    /// The cursor an operator's reset asks for, once.
    pub fn take_forced_cursor(&self) -> Option<i64> {
        self.flight().forced.take()
    }

    /// Events counted so far in the current second, hour and day windows (what the
    /// per-second, per-hour and per-day limits are measured against).
    pub fn usage(&self) -> [u64; 3] {
        let w = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        let lens = [1, 3600, 86_400].map(Duration::from_secs);
        std::array::from_fn(|i| {
            if w[i].started.elapsed() >= lens[i] {
                0
            } else {
                w[i].count
            }
        })
    }

    /// Accounts seen on this host.
    pub fn accounts(&self) -> u64 {
        self.accounts.load(Ordering::Relaxed)
    }
}

/// Every host the relay knows, by URL.
#[derive(Debug, Clone)]
pub struct Hosts {
    inner: Arc<Mutex<HashMap<String, Arc<Host>>>>,
    growth: Growth,
}

impl Hosts {
    /// An empty registry whose hosts' account limits grow by `growth` unless set.
    pub fn new(growth: Growth) -> Self {
        Hosts {
            inner: Arc::default(),
            growth,
        }
    }

    /// The host's entry, created if new with `limits` (`None`: `defaults`, growing by
    /// the registry's rule, never below the `accounts` it already has) and `accounts`.
    pub fn get_or_add(
        &self,
        url: &str,
        limits: Option<Limits>,
        defaults: Limits,
        accounts: u64,
    ) -> Arc<Host> {
        let mut map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(url.to_string())
            .or_insert_with(|| {
                let host = match limits {
                    Some(l) => Host::new(url, l, accounts, None),
                    None => {
                        let mut l = defaults;
                        l.accounts = l.accounts.max(accounts);
                        Host::new(url, l, accounts, Some(self.growth))
                    }
                };
                Arc::new(host)
            })
            .clone()
    }

    /// Hosts known.
    pub fn len(&self) -> usize {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether no host is known.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets a host (removed by the operator).
    pub fn remove(&self, url: &str) {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(url);
    }

    /// The host's entry, if known.
    pub fn get(&self, url: &str) -> Option<Arc<Host>> {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(url)
            .cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Limits {
        fn default_for_tests() -> Limits {
            Limits {
                per_second: 10,
                per_hour: 10,
                per_day: 10,
                accounts: 10,
            }
        }
    }

    #[test]
    fn windows_and_accounts() {
        let h = Host::new(
            "https://pds.example.com",
            Limits {
                per_second: 3,
                per_hour: 5,
                per_day: 100,
                accounts: 2,
            },
            0,
            None,
        );
        assert!((0..3).all(|_| h.admit_event()));
        assert!(!h.admit_event(), "per-second limit");
        assert_eq!(h.throttled.load(Ordering::Relaxed), 1);
        h.set_limits(Limits {
            per_second: 10,
            per_hour: 5,
            per_day: 100,
            accounts: 2,
        });
        assert!(h.admit_event() && h.admit_event());
        assert!(!h.admit_event(), "per-hour limit");
        assert!(h.admit_account() && h.admit_account());
        assert!(!h.admit_account(), "account limit");
    }

    #[test]
    fn cursor_is_a_low_water_mark() {
        let h = Host::new(
            "https://pds.example.com",
            Limits::default_for_tests(),
            0,
            None,
        );
        for seq in [3, 5, 8, 9] {
            h.begin(seq);
        }
        // 5 and 9 settle first (other shards were faster): 3 is still in flight.
        assert_eq!(h.settle([5, 9]), 2);
        assert_eq!(h.settle([3]), 7, "8 is still in flight");
        assert_eq!(
            h.resume_after(0),
            9,
            "a reconnect resumes after what was read"
        );
        assert_eq!(h.settle([8]), 9);
        assert_eq!(h.in_flight(), 0);
        // An event read twice (reconnect while queued) holds the mark until both settle.
        h.begin(12);
        h.begin(12);
        assert_eq!(h.settle([12]), 11, "one copy of 12 is still in flight");
        assert_eq!(h.settle([12]), 12);
        assert_eq!(h.restart_sequence(), 1);
        assert_eq!(h.resume_after(0), 0);
    }

    #[test]
    fn account_limits_grow_for_hosts_that_behave() {
        let growth = Growth {
            window: Duration::from_millis(50),
        };
        let h = Host::new(
            "https://pds.example.com",
            Limits::default_for_tests(),
            10,
            Some(growth),
        );
        assert!(!h.admit_account(), "at the limit before the clean stretch");
        assert_eq!(h.accounts_refused.load(Ordering::Relaxed), 1);
        std::thread::sleep(Duration::from_millis(60));
        assert!(h.admit_account(), "raised after a clean stretch");
        assert_eq!(h.limits().accounts, 20);
        assert_eq!(h.limit_raises.load(Ordering::Relaxed), 1);
        for _ in 0..9 {
            assert!(h.admit_account());
        }
        h.note_failure();
        assert!(!h.admit_account(), "a failure restarts the stretch");
        let fixed = Host::new(
            "https://b.example.com",
            Limits::default_for_tests(),
            10,
            None,
        );
        std::thread::sleep(Duration::from_millis(60));
        assert!(!fixed.admit_account(), "an operator's limit never grows");
    }

    #[test]
    fn status_follows_the_connection() {
        let h = Host::new(
            "https://pds.example.com",
            Limits::default_for_tests(),
            0,
            None,
        );
        assert_eq!(h.status(), HostStatus::Active);
        assert_eq!(h.disconnected("refused".into(), false), None);
        assert_eq!(h.disconnected("refused".into(), false), None);
        assert_eq!(
            h.disconnected("refused".into(), false),
            Some(HostStatus::Offline)
        );
        assert_eq!(h.last_error().as_deref(), Some("refused"));
        assert_eq!(h.connected(), Some(HostStatus::Active));
        assert_eq!(
            h.disconnected("idle timeout".into(), true),
            Some(HostStatus::Idle)
        );
        assert_eq!(h.connected(), Some(HostStatus::Active));
        for _ in 0..11 {
            h.admit_event();
        }
        assert_eq!(
            h.status(),
            HostStatus::Throttled,
            "dropping events for rate"
        );
        h.set_status(HostStatus::Banned);
        assert_eq!(h.disconnected("x".into(), false), None, "a ban stays");
    }
}
