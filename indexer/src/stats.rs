//! What the indexer has done, as counters an operator can scrape: rows and vectors written,
//! batches, ops skipped by reason (not an agent record, private, undecodable, invalid
//! against its lexicon), failed batches, and the last sequence number indexed. Owned by the
//! indexer that updates it; cheap to clone and read from anywhere.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::extract::Skipped;

/// Skip reasons, as `Skipped::reason` names them (a bounded label set).
pub const SKIP_REASONS: [&str; 4] = ["not_agent", "private", "undecodable", "invalid"];

#[derive(Debug, Default)]
struct Counters {
    batches: AtomicU64,
    rows: AtomicU64,
    vectors: AtomicU64,
    failed_batches: AtomicU64,
    outdated: AtomicU64,
    error_frames: AtomicU64,
    synced: AtomicU64,
    sync_failed: AtomicU64,
    last_seq: AtomicU64,
    /// When the newest event indexed was emitted (ms since the epoch; 0: none yet).
    last_event_ms: AtomicI64,
    skipped: [AtomicU64; 4],
}

/// The indexer's counters.
#[derive(Debug, Clone, Default)]
pub struct Stats(Arc<Counters>);

impl Stats {
    /// Fresh counters.
    pub fn new() -> Self {
        Stats::default()
    }

    /// One op skipped, and why.
    pub fn skipped(&self, why: &Skipped) {
        if let Some(i) = SKIP_REASONS.iter().position(|r| *r == why.reason()) {
            self.0.skipped[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A batch written to every sink, up to `last_seq`; `newest_ms` is when its newest
    /// event was emitted, if it said.
    pub fn batch(&self, rows: usize, vectors: usize, last_seq: u64, newest_ms: Option<i64>) {
        if let Some(ms) = newest_ms {
            self.0.last_event_ms.fetch_max(ms, Ordering::Relaxed);
        }
        self.0.batches.fetch_add(1, Ordering::Relaxed);
        self.0.rows.fetch_add(rows as u64, Ordering::Relaxed);
        self.0.vectors.fetch_add(vectors as u64, Ordering::Relaxed);
        self.0.last_seq.store(last_seq, Ordering::Relaxed);
    }

    /// A batch that a sink refused (the cursor did not move).
    pub fn failed(&self) {
        self.0.failed_batches.fetch_add(1, Ordering::Relaxed);
    }

    /// The relay said the events after our cursor are gone (`#info OutdatedCursor`).
    pub fn outdated(&self) {
        self.0.outdated.fetch_add(1, Ordering::Relaxed);
    }

    /// An account was reconciled from its repo after a `#sync`.
    pub fn synced(&self) {
        self.0.synced.fetch_add(1, Ordering::Relaxed);
    }

    /// A `#sync` whose repo could not be fetched or read.
    pub fn sync_failed(&self) {
        self.0.sync_failed.fetch_add(1, Ordering::Relaxed);
    }

    /// The relay refused a session with an error frame.
    pub fn error_frame(&self) {
        self.0.error_frames.fetch_add(1, Ordering::Relaxed);
    }

    /// The counters now.
    pub fn snapshot(&self) -> Snapshot {
        let c = &self.0;
        Snapshot {
            batches: c.batches.load(Ordering::Relaxed),
            rows: c.rows.load(Ordering::Relaxed),
            vectors: c.vectors.load(Ordering::Relaxed),
            skipped: c.skipped.iter().map(|s| s.load(Ordering::Relaxed)).sum(),
            failed_batches: c.failed_batches.load(Ordering::Relaxed),
            last_seq: c.last_seq.load(Ordering::Relaxed),
            last_event_ms: c.last_event_ms.load(Ordering::Relaxed),
        }
    }

    /// The counters in Prometheus' text format.
    pub fn prometheus(&self) -> String {
        let c = &self.0;
        let mut out = String::new();
        let counters: [(&str, &str, &AtomicU64); 8] = [
            ("indexer_batches_total", "Batches written to every sink.", &c.batches),
            ("indexer_rows_total", "Record index rows written (upserts and deletes).", &c.rows),
            ("indexer_vectors_total", "Vectors written.", &c.vectors),
            ("indexer_outdated_cursor_total", "Times the relay no longer held every event after the cursor (a gap).", &c.outdated),
            ("indexer_syncs_total", "Accounts reconciled from their repo after a #sync.", &c.synced),
            ("indexer_sync_failures_total", "#sync events whose repo could not be fetched or read (the account is left as it was).", &c.sync_failed),
            ("indexer_error_frames_total", "Sessions the relay refused with an error frame (FutureCursor, ...).", &c.error_frames),
            ("indexer_failed_batches_total", "Batch writes a sink refused; each is tried again until it is written.", &c.failed_batches),
        ];
        for (name, help, value) in counters {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}\n",
                value.load(Ordering::Relaxed)
            ));
        }
        out.push_str(
            "# HELP indexer_skipped_total Ops not indexed, by reason.\n# TYPE indexer_skipped_total counter\n",
        );
        for (i, reason) in SKIP_REASONS.iter().enumerate() {
            out.push_str(&format!(
                "indexer_skipped_total{{reason=\"{reason}\"}} {}\n",
                c.skipped[i].load(Ordering::Relaxed)
            ));
        }
        out.push_str(&format!(
            "# HELP indexer_last_seq The relay sequence number indexed last.\n# TYPE indexer_last_seq gauge\nindexer_last_seq {}\n",
            c.last_seq.load(Ordering::Relaxed)
        ));
        out
    }
}

/// The indexer's counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Batches written.
    pub batches: u64,
    /// Rows written.
    pub rows: u64,
    /// Vectors written.
    pub vectors: u64,
    /// Ops skipped, every reason.
    pub skipped: u64,
    /// Batch writes refused.
    pub failed_batches: u64,
    /// The relay sequence number indexed last.
    pub last_seq: u64,
    /// When the newest event indexed was emitted (ms since the epoch; 0: none yet).
    pub last_event_ms: i64,
}

/// What the indexer did between two snapshots: one progress line.
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    /// Batches written in the interval.
    pub batches: u64,
    /// Rows written in the interval.
    pub rows: u64,
    /// Vectors written in the interval.
    pub vectors: u64,
    /// Ops skipped in the interval.
    pub skipped: u64,
    /// Batch writes refused in the interval.
    pub failed_batches: u64,
    /// Rows per second over the interval.
    pub rows_per_sec: f64,
    /// Vectors per second over the interval.
    pub vectors_per_sec: f64,
    /// The relay sequence number indexed last.
    pub last_seq: u64,
    /// How far behind the relay the index is: now less when the newest indexed event was
    /// emitted, in seconds (unknown before any event said when it was emitted).
    pub lag_secs: Option<f64>,
}

impl Progress {
    /// The line for the interval from `before` to `after`, `secs` long, at `now_ms`; `None`
    /// when nothing was written or refused (an idle indexer stays quiet).
    pub fn between(before: &Snapshot, after: &Snapshot, secs: f64, now_ms: i64) -> Option<Self> {
        let batches = after.batches.saturating_sub(before.batches);
        let failed_batches = after.failed_batches.saturating_sub(before.failed_batches);
        if batches == 0 && failed_batches == 0 {
            return None;
        }
        let rows = after.rows.saturating_sub(before.rows);
        let vectors = after.vectors.saturating_sub(before.vectors);
        let per_sec = |n: u64| if secs > 0.0 { n as f64 / secs } else { 0.0 };
        Some(Progress {
            batches,
            rows,
            vectors,
            skipped: after.skipped.saturating_sub(before.skipped),
            failed_batches,
            rows_per_sec: per_sec(rows),
            vectors_per_sec: per_sec(vectors),
            last_seq: after.last_seq,
            lag_secs: (after.last_event_ms > 0)
                .then(|| (now_ms - after.last_event_ms).max(0) as f64 / 1000.0),
        })
    }
}

/// Logs a progress line at info level every `every` while the indexer writes (or fails to),
/// so an operator tailing the log sees it work. Runs until aborted.
pub async fn log_progress(stats: Stats, every: Duration) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    let mut before = (stats.snapshot(), Instant::now());
    loop {
        ticks.tick().await;
        let after = (stats.snapshot(), Instant::now());
        let secs = after.1.duration_since(before.1).as_secs_f64();
        if let Some(p) = Progress::between(&before.0, &after.0, secs, atproto::syntax::now_millis())
        {
            tracing::info!(
                batches = p.batches,
                rows = p.rows,
                vectors = p.vectors,
                skipped = p.skipped,
                failed_batches = p.failed_batches,
                rows_per_sec = tenths(p.rows_per_sec),
                vectors_per_sec = tenths(p.vectors_per_sec),
                last_seq = p.last_seq,
                // Left out until an event has said when it was emitted.
                lag_secs = p.lag_secs.map(tenths),
                "indexing"
            );
        }
        before = after;
    }
}

/// `x` to one decimal, for log fields that stay numbers in JSON.
fn tenths(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_lines_say_what_moved_and_how_far_behind() {
        let stats = Stats::new();
        let before = stats.snapshot();
        // Idle: no line.
        assert_eq!(Progress::between(&before, &stats.snapshot(), 10.0, 0), None);

        stats.batch(40, 10, 7, Some(1_000_000));
        stats.batch(60, 30, 9, Some(990_000)); // an older event does not move the clock back
        stats.failed();
        let after = stats.snapshot();
        let p = Progress::between(&before, &after, 10.0, 1_004_500).expect("a line");
        assert_eq!(
            (p.batches, p.rows, p.vectors, p.failed_batches),
            (2, 100, 40, 1)
        );
        assert_eq!(p.rows_per_sec, 10.0);
        assert_eq!(p.vectors_per_sec, 4.0);
        assert_eq!(p.last_seq, 9);
        assert_eq!(p.lag_secs, Some(4.5));

        // Only failures in an interval still make a line (the operator must see them).
        stats.failed();
        let p = Progress::between(&after, &stats.snapshot(), 10.0, 1_004_500).expect("a line");
        assert_eq!((p.batches, p.failed_batches), (0, 1));

        // Before any event said when it was emitted, the lag is unknown, not huge.
        let fresh = Stats::new();
        fresh.batch(1, 0, 1, None);
        let p =
            Progress::between(&Snapshot::default(), &fresh.snapshot(), 1.0, 5_000).expect("a line");
        assert_eq!(p.lag_secs, None);
    }
}
