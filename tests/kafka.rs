//! The scale-out path as an operator runs it: the relay publishes its verified stream to a
//! Kafka-protocol broker (tansu, on loopback), and two `agentnet indexer` processes in one
//! consumer group share its partitions, writing to one ClickHouse server. Every record is
//! indexed exactly once, through one indexer leaving mid-stream (its partitions move to the
//! other and resume from the committed offsets), a `kill -9` of an indexer (started again,
//! it consumes again what it wrote and had not committed; the rows are the same rows) and a
//! `kill -9` of the relay (it produces again from the last point Kafka acknowledged; the
//! indexers drop what they saw).

mod inproc;
mod support;

use std::collections::{BTreeSet, HashMap};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use inproc::{relay_args, tempdir, FleetHandle};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use support::clickhouse::ClickhouseServer;
use support::tansu::Tansu;

const TOPIC: &str = "agentnet.test";
const PARTITIONS: i32 = 4;

/// A child process killed (SIGKILL) when dropped or asked to.
struct Proc(Child);

impl Proc {
    /// SIGTERM, as a service manager stops it, and waits for it to end.
    fn terminate(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }

    /// SIGKILL, and waits for it to end.
    fn kill9(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn agentnet(args: &[String], log: &str) -> Proc {
    Proc(
        Command::new(env!("CARGO_BIN_EXE_agentnet"))
            .args(args)
            .env("AGENTNET_LOG", log)
            .env_remove("AGENTNET_MODEL_DIR")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting agentnet"),
    )
}

async fn create_topic(brokers: &str) {
    create_topic_named(brokers, TOPIC).await
}

async fn create_topic_named(brokers: &str, topic: &str) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("kafka admin client");
    let created = admin
        .create_topics(
            &[NewTopic::new(topic, PARTITIONS, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .expect("create topic");
    for result in created {
        result.expect("topic created");
    }
}

/// The relay as a process, publishing to the broker.
fn relay(port: u16, data: &std::path::Path, fleet: &FleetHandle, brokers: &str) -> Proc {
    let mut args = vec![
        "relay".to_string(),
        "--listen".into(),
        format!("127.0.0.1:{port}"),
    ];
    args.extend(relay_args(data, &fleet.fleet));
    args.extend(
        [
            "--kafka-brokers",
            brokers,
            "--kafka-topic",
            TOPIC,
            "--kafka-linger-ms",
            "1",
        ]
        .map(String::from),
    );
    agentnet(&args, "warn")
}

/// An indexer in the group, writing to the ClickHouse server.
fn indexer(
    data: &std::path::Path,
    metrics_port: u16,
    relay_port: u16,
    brokers: &str,
    clickhouse: &str,
    key: &str,
) -> Proc {
    let args = [
        "indexer",
        "--relay-url",
        &format!("ws://127.0.0.1:{relay_port}"),
        "--kafka-brokers",
        brokers,
        "--kafka-topic",
        TOPIC,
        "--kafka-group",
        "indexers",
        "--kafka-session-timeout-ms",
        "6000",
        "--batch",
        "16",
        "--batch-wait-ms",
        "50",
        "--data-dir",
        data.to_str().expect("utf-8"),
        "--clickhouse-url",
        clickhouse,
        "--appview-key",
        key,
        "--dev",
        "--metrics-listen",
        &format!("127.0.0.1:{metrics_port}"),
    ]
    .map(String::from);
    agentnet(
        &args,
        &std::env::var("KAFKA_TEST_LOG").unwrap_or("warn".into()),
    )
}

/// What the index holds: every visible row's URI, with how many rows name it.
async fn indexed(clickhouse: &str) -> HashMap<String, usize> {
    let config = store::server::ServerConfig {
        url: clickhouse.to_string(),
        user: String::new(),
        password: String::new(),
        database: String::new(),
    };
    tokio::task::spawn_blocking(move || {
        let records = store::open_server_records(&config).expect("the index opens");
        let mut rows: HashMap<String, usize> = HashMap::new();
        for (uri, _) in records.all_visible().expect("rows") {
            *rows.entry(uri).or_default() += 1;
        }
        rows
    })
    .await
    .expect("read the index")
}

/// A series' value from a service's `/metrics` on `port` (0 when absent or unreachable).
async fn metric(port: u16, name: &str) -> f64 {
    inproc::http_get(port, "/metrics")
        .await
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix(name)?
                .strip_prefix(' ')?
                .trim()
                .parse::<f64>()
                .ok()
        })
        .unwrap_or(0.0)
}

/// The `indexer_kafka_consumer_lag_events` series an indexer serves: (partition, lag).
async fn partition_lags(port: u16) -> Vec<(i32, f64)> {
    inproc::http_get(port, "/metrics")
        .await
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("indexer_kafka_consumer_lag_events{partition=\"")?;
            let (partition, value) = rest.split_once("\"} ")?;
            Some((partition.parse().ok()?, value.trim().parse().ok()?))
        })
        .collect()
}

/// Writes `n` records round the fleet's accounts.
async fn write(fleet: &FleetHandle, accounts: usize, n: usize) {
    for i in 0..n {
        fleet.fleet.write_one(i % accounts).await.expect("write");
    }
}

/// Waits until the index holds every record in `expected`.
async fn until_indexed(clickhouse: &str, expected: &BTreeSet<String>, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let have = indexed(clickhouse).await;
        if expected.iter().all(|u| have.contains_key(u)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {} of {} records indexed",
            expected.iter().filter(|u| have.contains_key(*u)).count(),
            expected.len()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_indexers_in_a_group_index_every_record_once_through_kills() {
    let clickhouse = tokio::task::spawn_blocking(|| {
        ClickhouseServer::start(&support::root(), "kafka-clickhouse")
    })
    .await
    .expect("clickhouse");
    let broker = tokio::task::spawn_blocking(|| Tansu::start("kafka-tansu"))
        .await
        .expect("tansu");
    create_topic(&broker.brokers).await;

    let accounts = 8;
    let fleet = FleetHandle::start(accounts, false).await;
    let data = tempdir("kafka");
    let relay_port = support::free_port();
    let mut relay_proc = relay(relay_port, &data.join("relay"), &fleet, &broker.brokers);
    let key = atproto::envelope::EncryptionKey::generate().to_base64();
    let ports = (support::free_port(), support::free_port());
    // Each indexer on its own data directory, on a metrics port of the test's choosing.
    let member = |n: usize, port: u16| {
        indexer(
            &data.join(format!("indexer-{n}")),
            port,
            relay_port,
            &broker.brokers,
            &clickhouse.url,
            &key,
        )
    };
    let mut first = member(1, ports.0);
    let mut second = member(2, ports.1);
    inproc::wait_for("the relay to subscribe", async || {
        fleet.fleet.subscribers() >= 1
    })
    .await;

    // Round one: both indexers share the partitions once the group has given each some.
    inproc::wait_for("both indexers to hold partitions", async || {
        metric(ports.0, "indexer_kafka_partitions").await >= 1.0
            && metric(ports.1, "indexer_kafka_partitions").await >= 1.0
    })
    .await;
    fleet.fleet.genesis().await.expect("genesis");
    write(&fleet, accounts, accounts * 3).await;
    until_indexed(&clickhouse.url, &fleet.created(accounts).await, "round one").await;
    let (a, b) = (
        metric(ports.0, "indexer_rows_total").await,
        metric(ports.1, "indexer_rows_total").await,
    );
    assert!(
        a > 0.0 && b > 0.0,
        "both members of the group index a share ({a} and {b} rows)"
    );
    // Each member reports the lag of the partitions it holds; together they cover the
    // topic, and with everything indexed and committed it is 0 everywhere.
    inproc::wait_for("every partition's lag reported as 0", async || {
        let mut lags = partition_lags(ports.0).await;
        lags.extend(partition_lags(ports.1).await);
        let partitions: BTreeSet<i32> = lags.iter().map(|(p, _)| *p).collect();
        partitions.len() == PARTITIONS as usize && lags.iter().all(|(_, lag)| *lag == 0.0)
    })
    .await;

    // One indexer stopped mid-stream (SIGTERM: it leaves the group): the other takes its
    // partitions from their committed offsets.
    write(&fleet, accounts, accounts * 2).await;
    first.terminate();
    write(&fleet, accounts, accounts * 2).await;
    until_indexed(
        &clickhouse.url,
        &fleet.created(accounts).await,
        "after one indexer left",
    )
    .await;

    // It comes back and the group shares the partitions again.
    let ports = (support::free_port(), ports.1);
    let _first = member(1, ports.0);
    inproc::wait_for("the returning indexer to hold partitions", async || {
        metric(ports.0, "indexer_kafka_partitions").await >= 1.0
    })
    .await;

    // The other indexer killed mid-stream (SIGKILL: whatever it wrote and had not
    // committed is consumed again) and started again on its data directory: the rows it
    // writes twice are the same rows (by URI and rev), so nothing shows twice or is lost.
    write(&fleet, accounts, accounts * 2).await;
    second.kill9();
    write(&fleet, accounts, accounts * 2).await;
    let ports = (ports.0, support::free_port());
    second = member(2, ports.1);
    inproc::wait_for("the restarted indexer to hold partitions", async || {
        metric(ports.1, "indexer_kafka_partitions").await >= 1.0
    })
    .await;
    write(&fleet, accounts, accounts).await;
    until_indexed(
        &clickhouse.url,
        &fleet.created(accounts).await,
        "after one indexer was killed and started again",
    )
    .await;

    // The relay killed mid-stream and started again: it produces again from the last
    // point Kafka acknowledged, and crawls on from its host cursor.
    write(&fleet, accounts, accounts).await;
    relay_proc.kill9();
    write(&fleet, accounts, accounts).await;
    relay_proc = relay(relay_port, &data.join("relay"), &fleet, &broker.brokers);
    inproc::wait_for("the relay to subscribe again", async || {
        fleet.fleet.subscribers() >= 1
    })
    .await;
    write(&fleet, accounts, accounts * 2).await;
    let expected = fleet.created(accounts).await;
    until_indexed(&clickhouse.url, &expected, "after killing the relay").await;

    // Kafka acknowledged everything the relay logged.
    inproc::wait_for("Kafka to acknowledge the whole log", async || {
        let head = metric(relay_port, "relay_head_seq").await;
        head > 0.0 && metric(relay_port, "relay_kafka_acked_seq").await == head
    })
    .await;

    let have = indexed(&clickhouse.url).await;
    let extra: Vec<_> = have.keys().filter(|u| !expected.contains(*u)).collect();
    assert!(
        extra.is_empty(),
        "rows for records never written: {extra:?}"
    );
    let twice: Vec<_> = have.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "records indexed more than once: {twice:?}"
    );
    assert_eq!(have.len(), expected.len());
    drop((relay_proc, second));
    let _ = std::fs::remove_dir_all(&data);
}

/// A broker that is not there holds nothing up: the relay verifies and serves its firehose
/// all along, counts what Kafka has not acknowledged, and once the broker is back it
/// catches up from its log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_broker_holds_up_nothing_and_the_relay_catches_up() {
    let accounts = 4;
    let fleet = FleetHandle::start(accounts, false).await;
    let port = support::free_port();
    let brokers = format!("127.0.0.1:{port}");
    let (relay, data) = inproc::start_relay(
        &[&fleet],
        "kafka-outage",
        &[
            "--kafka-brokers",
            &brokers,
            "--kafka-topic",
            "agentnet.outage",
            "--kafka-delivery-timeout-ms",
            "2000",
        ],
    )
    .await;
    fleet.fleet.genesis().await.expect("genesis");
    write(&fleet, accounts, accounts * 3).await;
    inproc::published(&relay, (accounts * 6) as f64).await;
    let head = relay.metric("relay_head_seq").await;
    assert!(relay.metric("relay_kafka_acked_seq").await < head);
    inproc::wait_for("the lag to show", async || {
        relay.metric("relay_kafka_lag_events").await > 0.0
    })
    .await;

    // Deliveries time out (and are produced again, from the last acknowledged event).
    inproc::wait_for("a delivery to fail", async || {
        relay.metric("relay_kafka_delivery_failures_total").await > 0.0
    })
    .await;
    assert!(relay.metric("relay_events_out_total").await >= (accounts * 6) as f64);

    // The broker comes back: the relay catches up from its log.
    let broker = tokio::task::spawn_blocking(move || Tansu::start_on("kafka-outage-tansu", port))
        .await
        .expect("tansu");
    create_topic_named(&broker.brokers, "agentnet.outage").await;
    write(&fleet, accounts, accounts).await;
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let head = relay.metric("relay_head_seq").await;
        if relay.metric("relay_kafka_acked_seq").await >= head && head > 0.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the relay did not catch Kafka up: acked {} of {head}",
            relay.metric("relay_kafka_acked_seq").await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    inproc::wait_for("the lag to clear", async || {
        relay.metric("relay_kafka_lag_events").await == 0.0
    })
    .await;
    relay.stop().await;
    let _ = std::fs::remove_dir_all(&data);
}
