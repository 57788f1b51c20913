//! What the indexer has done, as metrics an operator can scrape: rows and vectors written,
//! batches, ops skipped by reason (not an agent record, private, undecodable, invalid
//! against its lexicon), failed batches, embedding calls, the last sequence number indexed
//! and how far behind the relay that is. Registered once on a Prometheus recorder the
//! indexer owns (no global recorder); label values come from a fixed set. The few totals
//! the progress lines need are also kept as plain counters to read back. Owned by the
//! indexer that updates it; cheap to clone and read from anywhere.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Label, Metadata, Recorder, SharedString};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

use crate::extract::Skipped;

/// Skip reasons, as `Skipped::reason` names them (a bounded label set).
pub const SKIP_REASONS: [&str; 4] = ["not_agent", "private", "undecodable", "invalid"];

/// The per-partition Kafka lag gauge (labelled by partition number: bounded by the topic).
const KAFKA_LAG: &str = "indexer_kafka_consumer_lag_events";

/// Totals read back for progress lines.
#[derive(Debug, Default)]
struct Totals {
    batches: AtomicU64,
    rows: AtomicU64,
    vectors: AtomicU64,
    failed_batches: AtomicU64,
    skipped: AtomicU64,
    last_seq: AtomicU64,
    /// When the newest event indexed was emitted (ms since the epoch; 0: none yet).
    last_event_ms: AtomicI64,
}

/// The registered metrics.
struct Registered {
    handle: PrometheusHandle,
    /// Kept to register the per-partition lag gauges as partitions appear.
    recorder: PrometheusRecorder,
    batches: Counter,
    rows: Counter,
    vectors: Counter,
    failed_batches: Counter,
    outdated: Counter,
    error_frames: Counter,
    synced: Counter,
    sync_failed: Counter,
    kafka_duplicates: Counter,
    kafka_commit_failures: Counter,
    kafka_partitions: Gauge,
    skipped: [Counter; 4],
    last_seq: Gauge,
    lag_seconds: Gauge,
    embed_seconds: Histogram,
    embed_texts: Histogram,
}

impl std::fmt::Debug for Registered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Registered")
    }
}

impl Registered {
    fn new() -> Self {
        let recorder = PrometheusBuilder::new()
            // Embedding calls, from one short text to a full batch on a loaded CPU.
            .set_buckets(&[
                0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ])
            .expect("bucket list is non-empty")
            .set_buckets_for_metric(
                metrics_exporter_prometheus::Matcher::Full("indexer_embed_batch_texts".into()),
                &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0],
            )
            .expect("bucket list is non-empty")
            .build_recorder();
        let meta = Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()));
        let describe = |name: &'static str, help: &'static str| {
            recorder.describe_counter(
                KeyName::from_const_str(name),
                None,
                SharedString::const_str(help),
            );
        };
        let counter = |name: &'static str, help: &'static str| {
            describe(name, help);
            recorder.register_counter(&Key::from_name(name), &meta)
        };
        let gauge = |name: &'static str, help: &'static str| {
            recorder.describe_gauge(
                KeyName::from_const_str(name),
                None,
                SharedString::const_str(help),
            );
            recorder.register_gauge(&Key::from_name(name), &meta)
        };
        let histogram = |name: &'static str, help: &'static str| {
            recorder.describe_histogram(
                KeyName::from_const_str(name),
                None,
                SharedString::const_str(help),
            );
            recorder.register_histogram(&Key::from_name(name), &meta)
        };
        describe("indexer_skipped_total", "Ops not indexed, by reason.");
        recorder.describe_gauge(
            KeyName::from_const_str(KAFKA_LAG),
            None,
            SharedString::const_str("Events in a Kafka partition this indexer holds that are not yet indexed and committed (0 for a partition it does not hold)."),
        );
        let skipped = SKIP_REASONS.map(|reason| {
            let key = Key::from_parts("indexer_skipped_total", vec![Label::new("reason", reason)]);
            recorder.register_counter(&key, &meta)
        });
        Registered {
            batches: counter("indexer_batches_total", "Batches written to every sink."),
            rows: counter("indexer_rows_total", "Record index rows written (upserts and deletes)."),
            vectors: counter("indexer_vectors_total", "Vectors written."),
            failed_batches: counter("indexer_failed_batches_total", "Batch writes a sink refused; each is tried again until it is written."),
            outdated: counter("indexer_outdated_cursor_total", "Times the relay no longer held every event after the cursor (a gap)."),
            error_frames: counter("indexer_error_frames_total", "Sessions the relay refused with an error frame (FutureCursor, ...)."),
            synced: counter("indexer_syncs_total", "Accounts reconciled from their repo after a #sync."),
            sync_failed: counter("indexer_sync_failures_total", "#sync events whose repo could not be fetched or read (the account is left as it was)."),
            kafka_duplicates: counter("indexer_kafka_duplicates_total", "Events read from Kafka again (the relay produced them twice) and dropped by seq."),
            kafka_commit_failures: counter("indexer_kafka_commit_failures_total", "Offset commits the group refused (a rebalance moved the partitions); their batch is read again."),
            kafka_partitions: gauge("indexer_kafka_partitions", "Kafka partitions the consumer group gave this indexer."),
            skipped,
            last_seq: gauge("indexer_last_seq", "The relay sequence number indexed last."),
            lag_seconds: gauge("indexer_lag_seconds", "How far behind the relay the index is: now less when the newest indexed event was emitted."),
            embed_seconds: histogram("indexer_embed_seconds", "Time of one embedding call, seconds."),
            embed_texts: histogram("indexer_embed_batch_texts", "Texts embedded per call."),
            handle: recorder.handle(),
            recorder,
        }
    }
}

#[derive(Debug)]
struct Inner {
    totals: Totals,
    registered: Registered,
}

/// The indexer's metrics.
#[derive(Debug, Clone)]
pub struct Stats(Arc<Inner>);

impl Default for Stats {
    fn default() -> Self {
        Stats(Arc::new(Inner {
            totals: Totals::default(),
            registered: Registered::new(),
        }))
    }
}

impl Stats {
    /// Fresh metrics on a recorder of their own.
    pub fn new() -> Self {
        Stats::default()
    }

    /// One op skipped, and why.
    pub fn skipped(&self, why: &Skipped) {
        if let Some(i) = SKIP_REASONS.iter().position(|r| *r == why.reason()) {
            self.0.registered.skipped[i].increment(1);
            self.0.totals.skipped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A batch written to every sink, up to `last_seq`; `newest_ms` is when its newest
    /// event was emitted, if it said.
    pub fn batch(&self, rows: usize, vectors: usize, last_seq: u64, newest_ms: Option<i64>) {
        let (t, r) = (&self.0.totals, &self.0.registered);
        if let Some(ms) = newest_ms {
            t.last_event_ms.fetch_max(ms, Ordering::Relaxed);
        }
        t.batches.fetch_add(1, Ordering::Relaxed);
        t.rows.fetch_add(rows as u64, Ordering::Relaxed);
        t.vectors.fetch_add(vectors as u64, Ordering::Relaxed);
        t.last_seq.store(last_seq, Ordering::Relaxed);
        r.batches.increment(1);
        r.rows.increment(rows as u64);
        r.vectors.increment(vectors as u64);
        r.last_seq.set(last_seq as f64);
    }

    /// One embedding call: `texts` embedded in `took`.
    pub fn embedded(&self, texts: usize, took: Duration) {
        let r = &self.0.registered;
        r.embed_seconds.record(took.as_secs_f64());
        r.embed_texts.record(texts as f64);
    }

    /// A batch that a sink refused (the cursor did not move).
    pub fn failed(&self) {
        self.0.totals.failed_batches.fetch_add(1, Ordering::Relaxed);
        self.0.registered.failed_batches.increment(1);
    }

    /// The relay said the events after our cursor are gone (`#info OutdatedCursor`).
    pub fn outdated(&self) {
        self.0.registered.outdated.increment(1);
    }

    /// An account was reconciled from its repo after a `#sync`.
    pub fn synced(&self) {
        self.0.registered.synced.increment(1);
    }

    /// A `#sync` whose repo could not be fetched or read.
    pub fn sync_failed(&self) {
        self.0.registered.sync_failed.increment(1);
    }

    /// An event read from Kafka that was indexed already (dropped by its seq).
    pub fn duplicate(&self) {
        self.0.registered.kafka_duplicates.increment(1);
    }

    /// The Kafka partitions this member holds now.
    pub fn partitions(&self, n: usize) {
        self.0.registered.kafka_partitions.set(n as f64);
    }

    /// A Kafka partition's events not yet indexed and committed by this member.
    pub fn partition_lag(&self, partition: i32, events: i64) {
        let key = Key::from_parts(
            KAFKA_LAG,
            vec![Label::new("partition", partition.to_string())],
        );
        let meta = Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()));
        let registered = &self.0.registered;
        registered
            .recorder
            .register_gauge(&key, &meta)
            .set(events.max(0) as f64);
    }

    /// A Kafka offset commit the group refused.
    pub fn commit_failed(&self) {
        self.0.registered.kafka_commit_failures.increment(1);
    }

    /// The relay refused a session with an error frame.
    pub fn error_frame(&self) {
        self.0.registered.error_frames.increment(1);
    }

    /// The counters now.
    pub fn snapshot(&self) -> Snapshot {
        let c = &self.0.totals;
        Snapshot {
            batches: c.batches.load(Ordering::Relaxed),
            rows: c.rows.load(Ordering::Relaxed),
            vectors: c.vectors.load(Ordering::Relaxed),
            skipped: c.skipped.load(Ordering::Relaxed),
            failed_batches: c.failed_batches.load(Ordering::Relaxed),
            last_seq: c.last_seq.load(Ordering::Relaxed),
            last_event_ms: c.last_event_ms.load(Ordering::Relaxed),
        }
    }

    /// The metrics in Prometheus' text format; the lag is taken now.
    pub fn prometheus(&self) -> String {
        let r = &self.0.registered;
        let last_ms = self.0.totals.last_event_ms.load(Ordering::Relaxed);
        if last_ms > 0 {
            let lag_ms = (atproto::syntax::now_millis() - last_ms).max(0);
            r.lag_seconds.set(lag_ms as f64 / 1000.0);
        }
        r.handle.run_upkeep();
        r.handle.render()
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

    #[test]
    fn the_exposition_carries_every_series_with_help_and_bounded_labels() {
        let stats = Stats::new();
        stats.batch(3, 2, 41, Some(atproto::syntax::now_millis() - 2_000));
        stats.skipped(&Skipped::Private);
        stats.skipped(&Skipped::Invalid("no".into()));
        stats.embedded(16, Duration::from_millis(30));
        stats.synced();
        let text = stats.prometheus();
        for line in [
            "indexer_rows_total 3",
            "indexer_vectors_total 2",
            "indexer_batches_total 1",
            "indexer_last_seq 41",
            "indexer_syncs_total 1",
            "indexer_skipped_total{reason=\"private\"} 1",
            "indexer_skipped_total{reason=\"invalid\"} 1",
            "indexer_skipped_total{reason=\"not_agent\"} 0",
            "indexer_embed_batch_texts_bucket{le=\"16\"} 1",
            "indexer_embed_seconds_count 1",
            "# HELP indexer_rows_total Record index rows written",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
        let lag: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix("indexer_lag_seconds "))
            .and_then(|v| v.parse().ok())
            .expect("lag");
        assert!((1.9..60.0).contains(&lag), "{lag}");
    }
}
