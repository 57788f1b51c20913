//! The indexer's Kafka source: the relay's stream from a topic, as one member of a
//! consumer group, fed through the same batches and sinks as the WebSocket source.
//!
//! Offsets are committed only after the sinks have written the batch they cover, so a
//! killed indexer's partitions resume, on whichever member gets them, from the first event
//! not yet indexed. What a rebalance or a kill makes a member read again is written again
//! harmlessly (rows are keyed by URI and versioned by rev, points by their id), and events
//! the relay produced twice (after its own crash or a broker outage) are dropped by their
//! `seq`.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use atproto::frame::{decode_frame, Frame};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use store::records::SqlTransport;

use crate::pipeline::{flush, Sinks};
use crate::stats::Stats;
use crate::Error;

/// Where the indexer reads the relay's stream from Kafka. Off unless brokers are named
/// (the indexer then reads the relay's WebSocket firehose).
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Kafka")]
#[group(id = "indexer_kafka")]
pub struct KafkaConfig {
    /// Kafka bootstrap servers (`host:port`, comma-separated) to consume the relay's
    /// stream from instead of its WebSocket firehose; off when empty.
    #[arg(
        long = "kafka-brokers",
        env = "AGENTNET_INDEXER_KAFKA_BROKERS",
        default_value = ""
    )]
    pub brokers: String,
    /// The topic the relay publishes to.
    #[arg(
        long = "kafka-topic",
        env = "AGENTNET_INDEXER_KAFKA_TOPIC",
        default_value = "agentnet.firehose"
    )]
    pub topic: String,
    /// The consumer group: indexers in one group share the topic's partitions.
    #[arg(
        long = "kafka-group",
        env = "AGENTNET_INDEXER_KAFKA_GROUP",
        default_value = "agentnet-indexer"
    )]
    pub group: String,
    /// Milliseconds without a heartbeat after which the group gives a member's partitions
    /// to the others (joins and rebalances take about half of it).
    #[arg(
        long = "kafka-session-timeout-ms",
        env = "AGENTNET_INDEXER_KAFKA_SESSION_TIMEOUT_MS",
        default_value_t = 10_000
    )]
    pub session_timeout_ms: u64,
}

impl KafkaConfig {
    /// Kafka off: the indexer reads the relay's WebSocket firehose (`agentnet up`).
    pub fn off() -> Self {
        KafkaConfig {
            brokers: String::new(),
            topic: "agentnet.firehose".into(),
            group: "agentnet-indexer".into(),
            session_timeout_ms: 10_000,
        }
    }

    /// Whether the indexer reads from Kafka.
    pub fn enabled(&self) -> bool {
        !self.brokers.trim().is_empty()
    }

    /// The name the index's cursor table keeps for this source.
    pub fn source(&self) -> String {
        format!("kafka:{}", self.topic)
    }

    fn consumer(&self, stats: Stats) -> Result<StreamConsumer<LagContext>, Error> {
        let context = LagContext {
            topic: self.topic.clone(),
            stats,
            reported: Mutex::default(),
        };
        ClientConfig::new()
            .set("bootstrap.servers", &self.brokers)
            .set("group.id", &self.group)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false")
            .set("session.timeout.ms", self.session_timeout_ms.to_string())
            .set(
                "heartbeat.interval.ms",
                (self.session_timeout_ms / 3).max(100).to_string(),
            )
            .set("statistics.interval.ms", LAG_EVERY.as_millis().to_string())
            .create_with_context(context)
            .map_err(|e| Error::Config(format!("kafka consumer: {e}")))
    }
}

/// How often librdkafka reports the member's partitions (and so its lag per partition).
const LAG_EVERY: Duration = Duration::from_secs(5);

/// At most this many partitions get a lag series of their own (the label set stays bounded
/// whatever the topic).
const MAX_LAG_PARTITIONS: usize = 1024;

/// The consumer's context: turns librdkafka's statistics into the per-partition lag gauge.
struct LagContext {
    topic: String,
    stats: Stats,
    /// Partitions given a lag so far, set to 0 once this member no longer holds them (the
    /// member that does reports theirs).
    reported: Mutex<BTreeSet<i32>>,
}

impl ClientContext for LagContext {
    fn stats(&self, statistics: Statistics) {
        let held: HashMap<i32, i64> = statistics
            .topics
            .get(&self.topic)
            .map(|topic| {
                topic
                    .partitions
                    .values()
                    .filter(|p| p.partition >= 0 && p.desired && p.hi_offset >= 0)
                    .map(|p| {
                        // From the last committed offset, or from the start of the
                        // partition when the group never committed one (librdkafka says
                        // -1 then, even for an empty partition).
                        let from = if p.committed_offset >= 0 {
                            p.committed_offset
                        } else {
                            p.lo_offset.max(0)
                        };
                        (p.partition, p.hi_offset - from)
                    })
                    .collect()
            })
            .unwrap_or_default();
        let mut reported = self.reported.lock().unwrap_or_else(|e| e.into_inner());
        for &partition in reported.iter() {
            if !held.contains_key(&partition) {
                self.stats.partition_lag(partition, 0);
            }
        }
        for (&partition, &lag) in &held {
            if reported.len() < MAX_LAG_PARTITIONS || reported.contains(&partition) {
                self.stats.partition_lag(partition, lag);
                reported.insert(partition);
            }
        }
    }
}

impl ConsumerContext for LagContext {}

/// How often the member's partition assignment is read for its metric.
const ASSIGNMENT_EVERY: Duration = Duration::from_secs(1);

/// The `seq` a message's `seq` header carries.
fn seq_header(message: &impl Message) -> Option<u64> {
    let headers = message.headers()?;
    headers
        .iter()
        .find(|h| h.key == "seq")
        .and_then(|h| std::str::from_utf8(h.value?).ok()?.parse().ok())
}

/// Consumes the topic as a member of the group until `stop` fires, indexing in batches of
/// at most `batch` events or `wait`, committing each batch's offsets after its write, and
/// hands the sinks back.
pub async fn follow<T: SqlTransport + 'static>(
    config: &KafkaConfig,
    mut sinks: Sinks<T>,
    batch: usize,
    wait: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Result<Sinks<T>, Error> {
    let consumer = Arc::new(config.consumer(sinks.stats.clone())?);
    consumer
        .subscribe(&[config.topic.as_str()])
        .map_err(|e| Error::Config(format!("kafka subscribe: {e}")))?;
    tracing::info!(brokers = %config.brokers, topic = %config.topic, group = %config.group, "indexer consuming from Kafka");
    let source = config.source();
    let mut pending: Vec<Frame> = Vec::with_capacity(batch);
    // The next offset to commit per partition, for what is read so far.
    let mut offsets: HashMap<i32, i64> = HashMap::new();
    // The highest seq seen per partition: the relay may produce an event again.
    let mut seen: HashMap<i32, u64> = HashMap::new();
    let mut last_seq = 0u64;
    let mut deadline: Option<Instant> = None;
    let mut looked = Instant::now() - ASSIGNMENT_EVERY;
    let mut held: Vec<i32> = Vec::new();
    loop {
        if looked.elapsed() >= ASSIGNMENT_EVERY {
            // Which partitions the group gave this member (a rebalance changes them).
            looked = Instant::now();
            if let Ok(assigned) = consumer.assignment() {
                let now: Vec<i32> = assigned.elements().iter().map(|e| e.partition()).collect();
                if now != held {
                    tracing::info!(partitions = ?now, "kafka partitions assigned to this indexer");
                    held = now;
                }
                sinks.stats.partitions(held.len());
            }
        }
        let timeout = deadline
            .map(|d| d.saturating_duration_since(Instant::now()))
            .unwrap_or(ASSIGNMENT_EVERY);
        let next = tokio::select! {
            _ = stop.changed() => None,
            m = tokio::time::timeout(timeout, consumer.recv()) => Some(m),
        };
        let Some(next) = next else {
            // Stopping: write what was read and commit it.
            if !offsets.is_empty() {
                sinks = flush(sinks, pending, &source, last_seq).await?;
                commit(&consumer, &config.topic, &offsets, &sinks).await;
            }
            return Ok(sinks);
        };
        match next {
            Ok(Ok(message)) => {
                let partition = message.partition();
                offsets.insert(partition, message.offset() + 1);
                deadline.get_or_insert_with(|| Instant::now() + wait);
                let seq = seq_header(&message);
                let have = seen.entry(partition).or_default();
                if seq.is_some_and(|s| s <= *have) {
                    sinks.stats.duplicate();
                } else {
                    match message.payload().map(decode_frame) {
                        Some(Ok(frame)) => {
                            if let Some(s) = seq {
                                *have = s;
                                last_seq = last_seq.max(s);
                            }
                            pending.push(frame);
                        }
                        Some(Err(error)) => {
                            tracing::warn!(%error, partition, offset = message.offset(), "undecodable frame from Kafka")
                        }
                        None => {
                            tracing::warn!(
                                partition,
                                offset = message.offset(),
                                "empty message from Kafka"
                            )
                        }
                    }
                }
            }
            Ok(Err(error)) => {
                tracing::warn!(%error, "kafka consumer error");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(_) => {} // the batch's wait elapsed
        }
        let due = deadline.is_some_and(|d| Instant::now() >= d);
        if !offsets.is_empty() && (pending.len() >= batch || due) {
            sinks = flush(sinks, std::mem::take(&mut pending), &source, last_seq).await?;
            commit(&consumer, &config.topic, &offsets, &sinks).await;
            offsets.clear();
            deadline = None;
        }
    }
}

/// Commits `offsets` (after their batch is written). A commit the group refuses (the
/// partitions moved in a rebalance) is logged: their new owner reads that batch again,
/// which writes nothing new.
async fn commit<T: SqlTransport + 'static>(
    consumer: &Arc<StreamConsumer<LagContext>>,
    topic: &str,
    offsets: &HashMap<i32, i64>,
    sinks: &Sinks<T>,
) {
    let mut list = TopicPartitionList::new();
    for (&partition, &offset) in offsets {
        if let Err(error) = list.add_partition_offset(topic, partition, Offset::Offset(offset)) {
            tracing::warn!(%error, partition, offset, "kafka offset not committed");
        }
    }
    let consumer = consumer.clone();
    let committed =
        tokio::task::spawn_blocking(move || consumer.commit(&list, CommitMode::Sync)).await;
    match committed {
        Ok(Ok(())) => {}
        Ok(Err(error)) => {
            sinks.stats.commit_failed();
            tracing::warn!(%error, "kafka offsets not committed (a rebalance?); the batch will be read again");
        }
        Err(error) => tracing::warn!(%error, "committing kafka offsets failed"),
    }
}
