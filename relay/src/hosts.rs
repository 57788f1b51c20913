//! Per-host limits and counters, shared by the host's reader (event rates), the verifier
//! shards (account count) and the admin/XRPC handlers (which read and change them while
//! the relay runs).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
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
}

impl Host {
    fn new(url: &str, limits: Limits, accounts: u64) -> Self {
        Host {
            url: Arc::from(url),
            limits: Mutex::new(limits),
            windows: Mutex::new([Window::new(), Window::new(), Window::new()]),
            accounts: AtomicU64::new(accounts),
            throttled: AtomicU64::new(0),
            desynchronized: AtomicU64::new(0),
            epoch: AtomicU64::new(0),
            in_flight: Mutex::new(InFlight::default()),
        }
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

    /// Replaces the limits (takes effect on the next event).
    pub fn set_limits(&self, limits: Limits) {
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
        }
        ok
    }

    /// Counts a newly seen account; false when the host is at its account limit.
    pub fn admit_account(&self) -> bool {
        let max = self.limits().accounts;
        self.accounts
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok()
    }

    /// Accounts seen on this host.
    pub fn accounts(&self) -> u64 {
        self.accounts.load(Ordering::Relaxed)
    }
}

/// Every host the relay knows, by URL.
#[derive(Debug, Clone, Default)]
pub struct Hosts {
    inner: Arc<Mutex<HashMap<String, Arc<Host>>>>,
}

impl Hosts {
    /// The host's entry, created with `limits` and `accounts` if new.
    pub fn get_or_add(&self, url: &str, limits: Limits, accounts: u64) -> Arc<Host> {
        let mut map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(url.to_string())
            .or_insert_with(|| Arc::new(Host::new(url, limits, accounts)))
            .clone()
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
        let h = Host::new("https://pds.example.com", Limits::default_for_tests(), 0);
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
        assert_eq!(h.settle([12]), 9);
        assert_eq!(h.settle([12]), 12);
        assert_eq!(h.restart_sequence(), 1);
        assert_eq!(h.resume_after(0), 0);
    }
}
