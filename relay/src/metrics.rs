//! The relay's metrics: registered once on a Prometheus recorder owned by the relay (no
//! global recorder), label values drawn from fixed enums so cardinality stays bounded.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use metrics::{Counter, Gauge, Histogram, Key, Label, Metadata, Recorder};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Why an inbound event was dropped (or, in lenient mode, passed with a failure counted).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// The frame does not decode.
    Malformed,
    /// The frame or its blocks are over the size limits.
    TooBig,
    /// The DID could not be resolved.
    Identity,
    /// The event came from a host that is not the account's PDS.
    WrongHost,
    /// The signature does not verify, even after re-resolving the DID.
    BadSignature,
    /// The ops do not invert to `prevData`, or the proof is incomplete.
    Inversion,
    /// The commit and the event disagree, or the CAR is malformed.
    Inconsistent,
    /// The rev is not after the account's last rev.
    StaleRev,
    /// The rev is too far in the future.
    FutureRev,
    /// The account is not active.
    Inactive,
    /// The host is over its event rate limit.
    RateLimited,
    /// The account was out of sync and could not be repaired.
    Desync,
    /// The host is at its account limit and this account is new.
    AccountLimit,
    /// Too many events were waiting for the account's DID resolution or repair.
    Backlog,
}

impl DropReason {
    /// Every reason, for registering one counter each.
    pub const ALL: [DropReason; 14] = [
        DropReason::Malformed,
        DropReason::TooBig,
        DropReason::Identity,
        DropReason::WrongHost,
        DropReason::BadSignature,
        DropReason::Inversion,
        DropReason::Inconsistent,
        DropReason::StaleRev,
        DropReason::FutureRev,
        DropReason::Inactive,
        DropReason::RateLimited,
        DropReason::Desync,
        DropReason::AccountLimit,
        DropReason::Backlog,
    ];

    /// Whether the event failed verification (as opposed to being refused for rate,
    /// limits, or an account's state): such a failure counts against the host.
    pub fn is_verification_failure(self) -> bool {
        matches!(
            self,
            DropReason::Malformed
                | DropReason::TooBig
                | DropReason::WrongHost
                | DropReason::BadSignature
                | DropReason::Inversion
                | DropReason::Inconsistent
                | DropReason::FutureRev
        )
    }

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Malformed => "malformed",
            DropReason::TooBig => "too_big",
            DropReason::Identity => "identity",
            DropReason::WrongHost => "wrong_host",
            DropReason::BadSignature => "bad_signature",
            DropReason::Inversion => "inversion",
            DropReason::Inconsistent => "inconsistent",
            DropReason::StaleRev => "stale_rev",
            DropReason::FutureRev => "future_rev",
            DropReason::Inactive => "inactive",
            DropReason::RateLimited => "rate_limited",
            DropReason::Desync => "desync",
            DropReason::AccountLimit => "account_limit",
            DropReason::Backlog => "backlog",
        }
    }
}

/// At most one log line per host and reason in this window; the drops in between are
/// counted and reported with the next line.
const DROP_LOG_WINDOW: std::time::Duration = std::time::Duration::from_secs(10);
/// Most (host, reason) pairs tracked by the drop log before it starts afresh.
const DROP_LOG_KEYS: usize = 10_000;

/// When a (host, reason) pair was last logged, and the drops since.
type LastLogged = HashMap<(String, DropReason), (Option<Instant>, u64)>;

/// Rate-limited logging of dropped events, per host and reason.
#[derive(Default)]
struct DropLog {
    last: Mutex<LastLogged>,
}

impl DropLog {
    fn record(&self, reason: DropReason, host: &str, did: Option<&str>) {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if last.len() >= DROP_LOG_KEYS {
            last.clear();
        }
        let entry = last.entry((host.to_string(), reason)).or_insert((None, 0));
        if entry.0.is_some_and(|at| at.elapsed() < DROP_LOG_WINDOW) {
            entry.1 += 1;
            return;
        }
        let suppressed = std::mem::take(&mut entry.1);
        entry.0 = Some(Instant::now());
        drop(last);
        tracing::warn!(
            host,
            did = did.unwrap_or("-"),
            reason = reason.as_str(),
            suppressed,
            "event dropped"
        );
    }
}

/// Metric handles. Cloning shares them.
#[derive(Clone)]
pub struct Metrics {
    handle: PrometheusHandle,
    /// Frames received from upstream hosts.
    pub events_in: Counter,
    /// Events appended to the log and published.
    pub events_out: Counter,
    drops: Vec<(DropReason, Counter)>,
    drop_log: Arc<DropLog>,
    /// Events re-read after a restart that were already in the log (skipped).
    pub redelivered: Counter,
    /// Repairs (`getRepo`) that failed and will be retried.
    pub repair_failures: Counter,
    /// Log writes the store refused (a full disk); each is tried again.
    pub store_failures: Counter,
    /// Accounts resynchronized from `getRepo`.
    pub resyncs: Counter,
    /// Whole-event verification time, seconds.
    pub verify_seconds: Histogram,
    /// Time from receipt to being durable and published, seconds.
    pub publish_seconds: Histogram,
    /// Events waiting for verification, all shards.
    pub verify_queue: Gauge,
    /// Events waiting for the sequencer.
    pub sequencer_queue: Gauge,
    /// Events per log batch (one segment write, fsync and state transaction each).
    pub batch_events: Histogram,
    /// Connected firehose subscribers.
    pub subscribers: Gauge,
    /// Subscribers closed as too slow.
    pub slow_consumers: Counter,
    /// Subscribers closed after going silent (no pong, no frame) past the keepalive limit.
    pub dead_subscribers: Counter,
    /// Events retained in the log.
    pub log_events: Gauge,
    /// The highest seq up to which Kafka acknowledged every event.
    pub kafka_acked_seq: Gauge,
    /// Events in the log that Kafka has not acknowledged yet.
    pub kafka_lag_events: Gauge,
    /// Events produced to Kafka (again after a failed delivery, too).
    pub kafka_produced: Counter,
    /// Deliveries Kafka failed (each makes the publisher produce again from its last
    /// acknowledged event).
    pub kafka_delivery_failures: Counter,
    /// Events pruned from the log before Kafka acknowledged them.
    pub kafka_skipped: Counter,
    /// Bytes the log and the relay's state take on disk.
    pub log_bytes: Gauge,
    /// The retention policy: most events kept…
    pub retention_events: Gauge,
    /// …and for how many hours.
    pub retention_hours: Gauge,
    /// Upstream connections made (first and re-connections).
    pub upstream_connects: Counter,
    /// The newest sequence number published.
    pub head_seq: Gauge,
    /// Time to make one batch durable (segment write, `fdatasync`, state commit), seconds.
    pub log_write_seconds: Histogram,
    /// Time to resolve a DID document (the directory or did:web fetch), seconds.
    pub identity_seconds: Histogram,
    /// DID resolutions that failed.
    pub identity_failures: Counter,
    /// How far behind its host's clock each event arrived (receipt less the event's own
    /// `time`, never negative), seconds, every host together; each host's latest is in
    /// `getHostStatus`.
    pub host_lag_seconds: Histogram,
}

impl Metrics {
    /// Registers every metric on a new recorder.
    pub fn new() -> Self {
        let recorder = PrometheusBuilder::new()
            // Latencies in seconds, past one second where a slow disk, a slow DID directory
            // or an overloaded machine can take them.
            .set_buckets(&[
                0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05,
                0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ])
            .expect("bucket list is non-empty")
            .set_buckets_for_metric(
                metrics_exporter_prometheus::Matcher::Full("relay_log_batch_events".into()),
                &[1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 2048.0],
            )
            .expect("bucket list is non-empty")
            .build_recorder();
        let meta = Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()));
        let counter = |name: &'static str| recorder.register_counter(&Key::from_name(name), &meta);
        let gauge = |name: &'static str| recorder.register_gauge(&Key::from_name(name), &meta);
        let histogram =
            |name: &'static str| recorder.register_histogram(&Key::from_name(name), &meta);
        let drops = DropReason::ALL
            .iter()
            .map(|r| {
                let key = Key::from_parts(
                    "relay_events_dropped_total",
                    vec![Label::new("reason", r.as_str())],
                );
                (*r, recorder.register_counter(&key, &meta))
            })
            .collect();
        Metrics {
            events_in: counter("relay_events_in_total"),
            events_out: counter("relay_events_out_total"),
            drops,
            drop_log: Arc::default(),
            redelivered: counter("relay_events_redelivered_total"),
            repair_failures: counter("relay_repair_failures_total"),
            store_failures: counter("relay_store_write_failures_total"),
            resyncs: counter("relay_resyncs_total"),
            verify_seconds: histogram("relay_verify_seconds"),
            publish_seconds: histogram("relay_publish_seconds"),
            verify_queue: gauge("relay_verify_queue_depth"),
            sequencer_queue: gauge("relay_sequencer_queue_depth"),
            batch_events: histogram("relay_log_batch_events"),
            subscribers: gauge("relay_subscribers"),
            slow_consumers: counter("relay_slow_consumers_total"),
            dead_subscribers: counter("relay_dead_subscribers_total"),
            log_events: gauge("relay_log_events"),
            log_bytes: gauge("relay_log_bytes"),
            kafka_acked_seq: gauge("relay_kafka_acked_seq"),
            kafka_lag_events: gauge("relay_kafka_lag_events"),
            kafka_produced: counter("relay_kafka_produced_total"),
            kafka_delivery_failures: counter("relay_kafka_delivery_failures_total"),
            kafka_skipped: counter("relay_kafka_skipped_total"),
            retention_events: gauge("relay_log_retention_events"),
            retention_hours: gauge("relay_log_retention_hours"),
            upstream_connects: counter("relay_upstream_connects_total"),
            head_seq: gauge("relay_head_seq"),
            log_write_seconds: histogram("relay_log_write_seconds"),
            identity_seconds: histogram("relay_identity_resolve_seconds"),
            identity_failures: counter("relay_identity_failures_total"),
            host_lag_seconds: histogram("relay_host_lag_seconds"),
            handle: recorder.handle(),
        }
    }

    /// Counts a dropped event and logs it (at most one line per host and reason every
    /// ten seconds, with the number of drops in between).
    pub fn drop_event(&self, reason: DropReason, host: &str, did: Option<&str>) {
        if let Some((_, c)) = self.drops.iter().find(|(r, _)| *r == reason) {
            c.increment(1);
        }
        self.drop_log.record(reason, host, did);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        self.handle.run_upkeep();
        self.handle.render()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
