//! In-process peers for relay tests: the synthetic fleet and the relay on loopback ports,
//! stopped when their handles are dropped, plus small HTTP and firehose clients.

#![allow(dead_code)]

use std::time::{Duration, Instant};

use agentnet_fleet::{Fleet, FleetConfig};
use futures::StreamExt;
use tokio::sync::oneshot;

pub struct FleetHandle {
    pub fleet: Fleet,
    pub addr: std::net::SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), agentnet_fleet::FleetError>>>,
}

impl FleetHandle {
    /// Serves `fleet` on `addr` (port 0 for any).
    pub async fn serve(fleet: Fleet, addr: std::net::SocketAddr) -> FleetHandle {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .expect("bind fleet");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let server = fleet.clone();
        let task = tokio::spawn(async move {
            server
                .serve(listener, async move {
                    let _ = stopped.await;
                })
                .await
        });
        FleetHandle {
            fleet,
            addr,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// A new fleet of `accounts` with no background writing.
    pub async fn start(accounts: usize, cloudflare: bool) -> FleetHandle {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        drop(listener);
        let config = FleetConfig {
            listen: addr,
            accounts,
            rate: 0.0,
            keys: "mix".into(),
            cloudflare,
            ops_per_commit: 1,
            traffic: "messages".into(),
            appview: None,
        };
        Self::serve(Fleet::new(config, addr).expect("fleet"), addr).await
    }

    /// Stops serving (the fleet's state stays, to be served again).
    pub async fn stop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            t.await.expect("join fleet").expect("fleet served cleanly");
        }
    }

    /// Every record the fleet created on the first `accounts` accounts, which it hosts, as
    /// AT-URIs (the account after them is hosted elsewhere by its DID document, and the
    /// relay refuses its events).
    pub async fn created(&self, accounts: usize) -> std::collections::BTreeSet<String> {
        let foreign = self.fleet.dids().await[accounts].clone();
        self.fleet
            .frames()
            .iter()
            .filter_map(|f| match atproto::frame::decode_frame(f) {
                Ok(atproto::frame::Frame::Commit(c)) if c.repo != foreign => Some(c),
                _ => None,
            })
            .flat_map(|c| {
                c.ops
                    .iter()
                    .filter(|op| op.action == "create")
                    .map(|op| format!("at://{}/{}", c.repo, op.path))
                    .collect::<Vec<_>>()
            })
            .collect()
    }
}

pub struct RelayHandle {
    pub port: u16,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), agentnet_relay::Error>>>,
}

impl RelayHandle {
    /// Starts a relay on a free port with `args` after `agentnet relay`.
    pub async fn start(args: &[&str]) -> RelayHandle {
        use clap::Parser;
        // RUST_LOG=agentnet_relay=debug shows the relay's log in a failing test's output.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        #[derive(clap::Parser)]
        struct Args {
            #[command(flatten)]
            relay: agentnet_relay::Config,
        }
        let config = Args::parse_from(std::iter::once("relay").chain(args.iter().copied())).relay;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind relay");
        let port = listener.local_addr().expect("addr").port();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(agentnet_relay::run_on(config, listener, async move {
            let _ = stopped.await;
        }));
        let relay = RelayHandle {
            port,
            stop: Some(stop),
            task: Some(task),
        };
        wait_for("the relay to answer", async || {
            http_get(relay.port, "/_health").await.is_some()
        })
        .await;
        relay
    }

    /// Stops the relay cleanly and checks it ran without error.
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            t.await.expect("join relay").expect("relay ran cleanly");
        }
    }

    pub async fn metric(&self, series: &str) -> f64 {
        let text = http_get(self.port, "/metrics").await.unwrap_or_default();
        text.lines()
            .find_map(|l| {
                l.strip_prefix(series)
                    .and_then(|rest| rest.trim().parse().ok())
            })
            .unwrap_or(0.0)
    }

    pub fn ws(&self, query: &str) -> String {
        format!(
            "ws://127.0.0.1:{}/xrpc/com.atproto.sync.subscribeRepos{query}",
            self.port
        )
    }
}

/// Standard relay flags for a fleet.
pub fn relay_args(data: &std::path::Path, fleet: &Fleet) -> Vec<String> {
    vec![
        "--dev".into(),
        "--data-dir".into(),
        data.to_string_lossy().into_owned(),
        "--host".into(),
        fleet.url().into(),
        "--plc-url".into(),
        fleet.plc_url(),
        "--host-events-per-second".into(),
        "100000".into(),
        "--host-events-per-hour".into(),
        "100000000".into(),
        "--host-events-per-day".into(),
        "100000000".into(),
        "--host-accounts".into(),
        "1000000".into(),
        "--verifier-threads".into(),
        "2".into(),
    ]
}

/// A request on loopback: the status code and body.
pub async fn http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Option<(u16, String)> {
    http_full(port, method, path, headers, body)
        .await
        .map(|(status, _, body)| (status, body))
}

/// A request on loopback: the status code, the response head and the body.
pub async fn http_full(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Option<(u16, String, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).await.ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.ok()?;
    let (head, body) = buf.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, head.to_string(), body.to_string()))
}

/// A GET answered with 200, as JSON.
pub async fn get_json(port: u16, path: &str) -> serde_json::Value {
    let body = http_get(port, path)
        .await
        .unwrap_or_else(|| panic!("GET {path} answered 200"));
    serde_json::from_str(&body).expect("JSON body")
}

pub async fn http_get(port: u16, path: &str) -> Option<String> {
    match http(port, "GET", path, &[], "").await? {
        (200, body) => Some(body),
        _ => None,
    }
}

pub async fn wait_for(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

/// Decoded frames from a firehose URL until `n` arrived or it was quiet for `idle`.
pub async fn frames(url: &str, n: usize, idle: Duration) -> Vec<atproto::frame::Frame> {
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("subscribe");
    let mut out = Vec::new();
    while out.len() < n {
        match tokio::time::timeout(idle, ws.next()).await {
            Ok(Some(Ok(msg))) if msg.is_binary() => out
                .push(atproto::frame::decode_frame(&msg.into_data()).expect("relay frames decode")),
            Ok(Some(Ok(_))) => {}
            _ => break,
        }
    }
    out
}

pub fn tempdir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("agentnet-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// A relay for `fleets` (the first one's PLC directory resolves DIDs) with `extra` flags,
/// in a fresh data directory named after `name`, once it has subscribed to every fleet.
pub async fn start_relay(
    fleets: &[&FleetHandle],
    name: &str,
    extra: &[&str],
) -> (RelayHandle, std::path::PathBuf) {
    let data = tempdir(name);
    let relay = relay_in(fleets, &data, extra).await;
    (relay, data)
}

/// Like [`start_relay`], with its data in `data`.
pub async fn relay_in(
    fleets: &[&FleetHandle],
    data: &std::path::Path,
    extra: &[&str],
) -> RelayHandle {
    let mut args = relay_args(data, &fleets[0].fleet);
    for f in &fleets[1..] {
        args.extend(["--host".to_string(), f.fleet.url().to_string()]);
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let relay = RelayHandle::start(&args).await;
    for f in fleets {
        wait_for("the relay to subscribe", async || {
            f.fleet.subscribers() >= 1
        })
        .await;
    }
    relay
}

/// Waits until the relay has published `at_least` events.
pub async fn published(relay: &RelayHandle, at_least: f64) {
    wait_for(&format!("{at_least} events out"), async || {
        relay.metric("relay_events_out_total").await >= at_least
    })
    .await;
}

/// `getHostStatus` for a host URL.
pub fn host_status_path(url: &str) -> String {
    format!(
        "/xrpc/com.atproto.sync.getHostStatus?hostname={}",
        atproto::net::percent_encode(url)
    )
}

/// A free loopback port (for processes that bind it themselves).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}
