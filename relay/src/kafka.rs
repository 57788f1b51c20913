//! Publishing the verified stream to Kafka: every event the relay sequences is produced
//! once, keyed by its account's DID (so one account's events stay in order on one
//! partition), its value the exact republished frame, with the relay's `seq`, the event's
//! kind and its collections in headers.
//!
//! The relay's log stays the source of truth. The publisher reads the log, not the live
//! stream, so a slow or absent broker never holds verification or the WebSocket firehose;
//! it keeps the highest `seq` below which Kafka acknowledged every event in the relay's
//! store, and after a crash or a broker outage produces again from there. Events may
//! therefore reach Kafka more than once (never out of order for one account); consumers
//! drop what they have seen by `seq`.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::store::{Logged, Store};
use crate::Error;

/// Where and how the relay publishes to Kafka. Off unless brokers are named.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Kafka")]
#[group(id = "relay_kafka")]
pub struct KafkaConfig {
    /// Kafka bootstrap servers (`host:port`, comma-separated) to publish every sequenced
    /// event to; publishing is off when empty.
    #[arg(
        long = "kafka-brokers",
        env = "AGENTNET_RELAY_KAFKA_BROKERS",
        default_value = ""
    )]
    pub brokers: String,
    /// The topic events are produced to.
    #[arg(
        long = "kafka-topic",
        env = "AGENTNET_RELAY_KAFKA_TOPIC",
        default_value = "agentnet.firehose"
    )]
    pub topic: String,
    /// Compression of produced batches: `zstd`, `lz4` or `none`.
    #[arg(
        long = "kafka-compression",
        env = "AGENTNET_RELAY_KAFKA_COMPRESSION",
        default_value = "zstd"
    )]
    pub compression: String,
    /// Most events produced and not yet acknowledged; the publisher waits (reading no
    /// more of the log) when this many are in flight.
    #[arg(
        long = "kafka-in-flight",
        env = "AGENTNET_RELAY_KAFKA_IN_FLIGHT",
        default_value_t = 20_000
    )]
    pub in_flight: usize,
    /// Milliseconds a message may wait in the producer before it is sent (batching).
    #[arg(
        long = "kafka-linger-ms",
        env = "AGENTNET_RELAY_KAFKA_LINGER_MS",
        default_value_t = 5
    )]
    pub linger_ms: u64,
    /// Milliseconds the producer keeps retrying one message before reporting it failed
    /// (the publisher then produces again from the last acknowledged event).
    #[arg(
        long = "kafka-delivery-timeout-ms",
        env = "AGENTNET_RELAY_KAFKA_DELIVERY_TIMEOUT_MS",
        default_value_t = 60_000
    )]
    pub delivery_timeout_ms: u64,
}

impl KafkaConfig {
    /// Whether publishing is on.
    pub fn enabled(&self) -> bool {
        !self.brokers.trim().is_empty()
    }

    /// Checks what clap cannot.
    pub fn validate(&self) -> Result<(), Error> {
        if !self.enabled() {
            return Ok(());
        }
        if !matches!(self.compression.as_str(), "zstd" | "lz4" | "none") {
            return Err(Error::Config(format!(
                "--kafka-compression {}: use zstd, lz4 or none",
                self.compression
            )));
        }
        if self.topic.is_empty() || self.in_flight == 0 {
            return Err(Error::Config(
                "--kafka-topic must be named and --kafka-in-flight positive".into(),
            ));
        }
        Ok(())
    }

    /// The idempotent producer: retries inside librdkafka never duplicate or reorder
    /// messages of one partition.
    fn producer(&self) -> Result<FutureProducer, Error> {
        ClientConfig::new()
            .set("bootstrap.servers", &self.brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("compression.type", &self.compression)
            .set("linger.ms", self.linger_ms.to_string())
            .set("message.timeout.ms", self.delivery_timeout_ms.to_string())
            .set(
                "queue.buffering.max.messages",
                self.in_flight.max(1000).to_string(),
            )
            .create()
            .map_err(|e| Error::Config(format!("kafka producer: {e}")))
    }
}

/// Events read from the log per pass.
const READ_BATCH: usize = 1024;
/// How often the acknowledged point is stored (and after the last in-flight event lands).
const SAVE_EVERY: Duration = Duration::from_secs(1);
/// The longest wait for new events when the publisher has caught up (it is also woken by
/// every newly sequenced event).
const IDLE_WAIT: Duration = Duration::from_millis(200);
/// First wait after a failed delivery before producing again; doubles up to the next.
const RETRY_MIN: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// What routes an event: its kind, its account and, for commits, the collections it
/// touches.
pub(crate) struct Routing {
    /// The header's `t` (`#commit`, `#identity`, …).
    pub(crate) kind: String,
    /// The account, for the kinds that carry one.
    pub(crate) did: Option<String>,
    /// Collections of a commit's ops, in op order, each once.
    pub(crate) collections: Vec<String>,
}

impl Routing {
    /// Reads the routing fields of a firehose frame without decoding the rest of it.
    pub(crate) fn of(frame: &[u8]) -> Option<Routing> {
        #[derive(serde::Deserialize)]
        struct Op {
            path: String,
        }
        #[derive(serde::Deserialize)]
        struct Peek {
            repo: Option<String>,
            did: Option<String>,
            ops: Option<Vec<Op>>,
        }
        let (header, body) = atproto::frame::split_frame(frame).ok()?;
        if header.op != 1 {
            return None;
        }
        let peek = atproto::data::from_cbor::<Peek>(body).ok()?;
        let mut collections: Vec<String> = Vec::new();
        for op in peek.ops.iter().flatten() {
            let c = op.path.split('/').next().unwrap_or_default();
            if !collections.iter().any(|have| have == c) {
                collections.push(c.to_string());
            }
        }
        Some(Routing {
            kind: header.t.unwrap_or_default(),
            did: peek.repo.or(peek.did),
            collections,
        })
    }
}

/// Publishes the log to Kafka from the stored acknowledged point until `cancel`.
pub(crate) async fn publish(
    store: Store,
    config: KafkaConfig,
    metrics: Metrics,
    mut woken: broadcast::Receiver<Logged>,
    cancel: CancellationToken,
) -> Result<(), Error> {
    let mut producer = config.producer()?;
    let topic = config.topic.clone();
    let acked = {
        let (s, t) = (store.clone(), topic.clone());
        tokio::task::spawn_blocking(move || s.kafka_acked(&t))
            .await
            .map_err(|e| Error::Task(e.to_string()))??
    };
    tracing::info!(brokers = %config.brokers, %topic, from_seq = acked, "publishing to Kafka");
    let mut session = Session {
        acked,
        saved: acked,
        saved_at: Instant::now(),
        read: acked,
        in_flight: VecDeque::new(),
    };
    metrics.kafka_acked_seq.set(acked as f64);
    let mut retry = RETRY_MIN;
    loop {
        if cancel.is_cancelled() {
            break;
        }
        // Read more of the log while there is room in flight.
        let room = config.in_flight.saturating_sub(session.in_flight.len());
        let events = if room > 0 {
            let (s, after) = (store.clone(), session.read);
            tokio::task::spawn_blocking(move || {
                let last = s.last_seq()?;
                Ok::<_, crate::store::StoreError>((
                    s.read_after(after, room.min(READ_BATCH))?,
                    last,
                ))
            })
            .await
            .map_err(|e| Error::Task(e.to_string()))?
        } else {
            Ok((Vec::new(), session.read))
        };
        let (events, last) = match events {
            Ok(read) => read,
            Err(error) => {
                // A store that refuses a read (a full disk elsewhere) is retried.
                tracing::warn!(%error, "kafka publisher could not read the log; retrying");
                tokio::time::sleep(RETRY_MIN).await;
                continue;
            }
        };
        metrics
            .kafka_lag_events
            .set(last.saturating_sub(session.acked) as f64);
        if let Some(first) = events.first() {
            if first.seq > session.read + 1 && session.read > 0 {
                // Retention removed events before they reached Kafka.
                let lost = first.seq - session.read - 1;
                metrics.kafka_skipped.increment(lost);
                tracing::error!(
                    after = session.read,
                    resumed = first.seq,
                    lost,
                    "events were pruned from the log before Kafka acknowledged them"
                );
            }
        }
        let mut refused = None;
        for event in &events {
            match produce(&producer, &topic, event, &cancel).await {
                Ok(Some(delivery)) => {
                    metrics.kafka_produced.increment(1);
                    session.read = event.seq;
                    session.in_flight.push_back((event.seq, delivery));
                }
                Ok(None) => break,
                Err(error) => {
                    refused = Some(error);
                    break;
                }
            }
        }
        // Settle what has landed, in order; wait when there is nothing new to read. An
        // event the producer refused outright (an unknown topic, a broker it cannot reach)
        // is handled like a failed delivery: never fatal to the relay.
        let idle = events.is_empty();
        let acked_before = session.acked;
        let settled = match refused {
            Some(error) => Err(error),
            None => session.settle(idle, &mut woken, &cancel, &metrics).await,
        };
        match settled {
            // Backing off ends once Kafka acknowledges again.
            Ok(()) if session.acked > acked_before => retry = RETRY_MIN,
            Ok(()) => {}
            Err(error) => {
                metrics.kafka_delivery_failures.increment(1);
                tracing::warn!(%error, acked = session.acked, retry_in = ?retry, "kafka delivery failed; producing again from the last acknowledged event");
                session.in_flight.clear();
                session.read = session.acked;
                // A fresh producer: an idempotent one can be left unusable by an error
                // (librdkafka's fatal errors), and starting over costs little.
                producer = config.producer()?;
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tokio::time::sleep(retry) => {}
                }
                retry = (retry * 2).min(RETRY_MAX);
            }
        }
        session.save(&store, &topic, false).await;
        metrics.kafka_acked_seq.set(session.acked as f64);
    }
    // Stopping: what is in flight gets a moment to land, so a clean stop repeats little.
    let _ = tokio::task::spawn_blocking({
        let p = producer.clone();
        move || p.flush(Duration::from_secs(5))
    })
    .await;
    while let Some((seq, delivery)) = session.in_flight.pop_front() {
        match tokio::time::timeout(Duration::from_millis(100), delivery).await {
            Ok(Ok(Ok(_))) => session.acked = seq,
            _ => break,
        }
    }
    session.save(&store, &topic, true).await;
    Ok(())
}

/// Produces one event; `None` when stopping while the producer's queue was full, an error
/// when the producer refused it.
async fn produce(
    producer: &FutureProducer,
    topic: &str,
    event: &Logged,
    cancel: &CancellationToken,
) -> Result<Option<DeliveryFuture>, String> {
    let routing = Routing::of(&event.frame);
    let seq = event.seq.to_string();
    let (kind, did, collections) = match &routing {
        Some(r) => (r.kind.as_str(), r.did.as_deref(), r.collections.join(",")),
        None => ("", None, String::new()),
    };
    let headers = OwnedHeaders::new()
        .insert(Header {
            key: "seq",
            value: Some(seq.as_str()),
        })
        .insert(Header {
            key: "kind",
            value: Some(kind),
        })
        .insert(Header {
            key: "collections",
            value: Some(collections.as_str()),
        });
    let mut record = FutureRecord::to(topic)
        .payload(&event.frame[..])
        .headers(headers);
    if let Some(did) = did {
        record = record.key(did);
    }
    loop {
        match producer.send_result(record) {
            Ok(delivery) => return Ok(Some(delivery)),
            Err((
                rdkafka::error::KafkaError::MessageProduction(
                    rdkafka::types::RDKafkaErrorCode::QueueFull,
                ),
                back,
            )) => {
                record = back;
                tokio::select! {
                    _ = cancel.cancelled() => return Ok(None),
                    _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                }
            }
            Err((error, _)) => return Err(format!("the producer refused an event: {error}")),
        }
    }
}

/// The publisher's position: what Kafka acknowledged, what was stored, what was read.
struct Session {
    /// Every event up to here is acknowledged.
    acked: u64,
    /// The acknowledged point last stored.
    saved: u64,
    saved_at: Instant,
    /// Every event up to here has been produced (or is acknowledged).
    read: u64,
    /// Produced, not yet settled, in `seq` order.
    in_flight: VecDeque<(u64, DeliveryFuture)>,
}

impl Session {
    /// Settles deliveries at the front of the queue, in order. With `idle`, waits for the
    /// front delivery (or for a new event, or a moment) before returning.
    async fn settle(
        &mut self,
        idle: bool,
        woken: &mut broadcast::Receiver<Logged>,
        cancel: &CancellationToken,
        metrics: &Metrics,
    ) -> Result<(), String> {
        loop {
            let Some((seq, front)) = self.in_flight.front_mut() else {
                if idle {
                    tokio::select! {
                        _ = cancel.cancelled() => {}
                        _ = woken.recv() => {}
                        _ = tokio::time::sleep(IDLE_WAIT) => {}
                    }
                }
                return Ok(());
            };
            let seq = *seq;
            // Without a reason to wait (more to read, room in flight), only take what has
            // already landed.
            let wait = if idle { SAVE_EVERY } else { Duration::ZERO };
            let landed = tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                r = tokio::time::timeout(wait, front) => r,
            };
            match landed {
                Err(_) => return Ok(()),
                Ok(Ok(Ok(_))) => {
                    self.in_flight.pop_front();
                    self.acked = seq;
                    metrics.kafka_acked_seq.set(seq as f64);
                }
                Ok(Ok(Err((error, _)))) => return Err(error.to_string()),
                Ok(Err(_)) => return Err("the producer went away".into()),
            }
        }
    }

    /// Stores the acknowledged point, at most once a second unless `now`. A store that
    /// refuses (a full disk) is tried again next time: until then a restart produces a
    /// little more again, which consumers drop.
    async fn save(&mut self, store: &Store, topic: &str, now: bool) {
        if self.acked == self.saved || (!now && self.saved_at.elapsed() < SAVE_EVERY) {
            return;
        }
        let (s, t, acked) = (store.clone(), topic.to_string(), self.acked);
        self.saved_at = Instant::now();
        match tokio::task::spawn_blocking(move || s.set_kafka_acked(&t, acked)).await {
            Ok(Ok(())) => self.saved = acked,
            Ok(Err(error)) => {
                tracing::warn!(%error, acked, "could not store the Kafka position; trying again")
            }
            Err(error) => tracing::warn!(%error, "storing the Kafka position failed"),
        }
    }
}
