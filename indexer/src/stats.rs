//! What the indexer has done, as counters an operator can scrape: rows and vectors written,
//! batches, ops skipped by reason (not an agent record, private, undecodable, invalid
//! against its lexicon), failed batches, and the last sequence number indexed. Owned by the
//! indexer that updates it; cheap to clone and read from anywhere.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

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

    /// A batch written to every sink, up to `last_seq`.
    pub fn batch(&self, rows: usize, vectors: usize, last_seq: u64) {
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
