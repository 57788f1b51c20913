//! One task per upstream host: subscribe to its `com.atproto.sync.subscribeRepos` from the
//! last stored cursor, decode frames, and route them to the verification shards. Reconnects
//! with jittered exponential backoff; an idle connection is dropped and remade.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use rand::Rng;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use crate::metrics::{DropReason, Metrics};
use crate::store::Store;
use crate::verify::{shard_of, Inbound};

/// Limits and timings for upstream connections.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// Drop and remake a connection that sends nothing for this long.
    pub idle_timeout: Duration,
    /// First reconnect delay; doubles per failure up to `max_backoff`.
    pub min_backoff: Duration,
    /// Longest reconnect delay.
    pub max_backoff: Duration,
    /// The guarded way out: the host's name must resolve to a permitted address.
    pub egress: atproto::net::Egress,
}

/// Longest a connection and WebSocket handshake with a host may take (or the idle
/// timeout, if shorter).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs the subscription to `host` until `cancel` fires. Returns only on cancellation.
pub async fn run_host(
    host: Arc<crate::hosts::Host>,
    store: Store,
    shards: Vec<mpsc::Sender<Vec<Inbound>>>,
    metrics: Metrics,
    config: UpstreamConfig,
    cancel: CancellationToken,
) {
    let mut backoff = config.min_backoff;
    loop {
        let stored = {
            let store = store.clone();
            let url = host.url.clone();
            tokio::task::spawn_blocking(move || {
                store
                    .hosts()
                    .ok()
                    .and_then(|hs| hs.into_iter().find(|h| *h.url == *url))
                    .map(|h| h.cursor)
            })
            .await
            .ok()
            .flatten()
            .unwrap_or(0)
        };
        // Resume after what this process already read (events still in flight on the
        // shards are settled by it), else after the stored low-water mark.
        let forced = host.take_forced_cursor();
        let cursor = forced.unwrap_or_else(|| host.resume_after(stored));
        let connected_at = Instant::now();
        tokio::select! {
            _ = cancel.cancelled() => return,
            result = session(&host, cursor, forced.is_some(), &shards, &metrics, &config, &store) => {
                let ended = match &result {
                    Ok(()) => Some(("the host closed the stream".to_string(), false)),
                    Err(SessionError::Other(e)) => Some((e.clone(), e == IDLE)),
                    Err(SessionError::FutureCursor) => None,
                };
                if let Some(changed) = ended.and_then(|(e, idle)| host.disconnected(e, idle)) {
                    persist_status(&store, &host, changed).await;
                }
                match result {
                    Ok(()) => tracing::info!(host = %host.url, "upstream closed the stream"),
                    Err(SessionError::FutureCursor) => {
                        // The host's sequence restarted below our cursor: a new epoch,
                        // from its live tail.
                        let epoch = host.restart_sequence();
                        tracing::warn!(host = %host.url, cursor, epoch, "host says our cursor is in its future; its sequence restarted, following it from the live tail");
                        let store = store.clone();
                        let url = host.url.to_string();
                        let _ = tokio::task::spawn_blocking(move || store.restart_host_sequence(&url, epoch)).await;
                    }
                    Err(SessionError::Other(error)) => tracing::warn!(host = %host.url, %error, "upstream connection failed"),
                }
            }
        }
        if connected_at.elapsed() > config.max_backoff {
            backoff = config.min_backoff;
        }
        let jitter = rand::thread_rng().gen_range(0.5..1.5);
        let wait = backoff.mul_f64(jitter);
        backoff = (backoff * 2).min(config.max_backoff);
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// How long a session must stay up, without frames, to count as the host being back.
const STABLE_AFTER: Duration = Duration::from_secs(10);

/// The error a session ends with when the host went quiet.
const IDLE: &str = "idle timeout";

/// Stores a host's new status so `listHosts` shows it across restarts.
async fn persist_status(
    store: &Store,
    host: &crate::hosts::Host,
    status: crate::hosts::HostStatus,
) {
    let store = store.clone();
    let url = host.url.to_string();
    let saved = tokio::task::spawn_blocking(move || store.put_host(&url, status.as_str())).await;
    if !matches!(saved, Ok(Ok(_))) {
        tracing::warn!(host = %host.url, status = status.as_str(), "could not store the host's status");
    }
}

/// Why a session with a host ended.
enum SessionError {
    /// The host answered `FutureCursor`: it does not know our cursor.
    FutureCursor,
    /// Anything else: reconnect with backoff.
    Other(String),
}

impl From<String> for SessionError {
    fn from(e: String) -> Self {
        SessionError::Other(e)
    }
}

async fn session(
    host: &Arc<crate::hosts::Host>,
    cursor: i64,
    explicit: bool,
    shards: &[mpsc::Sender<Vec<Inbound>>],
    metrics: &Metrics,
    config: &UpstreamConfig,
    store: &Store,
) -> Result<(), SessionError> {
    let ws_base = host.url.replacen("http", "ws", 1);
    // A host never read before is taken from its live tail; otherwise (or when the
    // operator set a cursor) from the cursor.
    let url = if cursor > 0 || explicit {
        atproto::net::xrpc_url(
            &ws_base,
            "com.atproto.sync.subscribeRepos",
            &[("cursor", &cursor.to_string())],
        )
    } else {
        atproto::net::xrpc_url(&ws_base, "com.atproto.sync.subscribeRepos", &[])
    };
    let ws_config = WebSocketConfig::default()
        .max_message_size(Some(atproto::frame::MAX_FRAME_BYTES))
        .max_frame_size(Some(atproto::frame::MAX_FRAME_BYTES));
    let connect = async {
        let tcp = config
            .egress
            .connect(&url)
            .await
            .map_err(|e| e.to_string())?;
        let _ = tcp.set_nodelay(true);
        tokio_tungstenite::client_async_tls_with_config(url.as_str(), tcp, Some(ws_config), None)
            .await
            .map_err(|e| e.to_string())
    };
    let (mut stream, _) = tokio::time::timeout(CONNECT_TIMEOUT.min(config.idle_timeout), connect)
        .await
        .map_err(|_| SessionError::Other("connect timed out".into()))?
        .map_err(SessionError::Other)?;
    metrics.upstream_connects.increment(1);
    tracing::info!(host = %host.url, ?cursor, "subscribed upstream");
    // A session counts as the host being back (status active, failures forgotten) once it
    // delivers a frame or stays up for a while: a host that accepts and then breaks off
    // every time stays offline.
    let stable = (config.idle_timeout / 2).min(STABLE_AFTER);
    let opened = Instant::now();
    let mut proven = false;
    let mut handoff = Handoff::new(shards);
    let ended = loop {
        let wait = if proven {
            config.idle_timeout
        } else {
            stable.saturating_sub(opened.elapsed())
        };
        // Frames already here are gathered and handed to the shards together (one wake-up
        // per shard per batch); only with nothing gathered does the reader wait.
        let next = if handoff.queued == 0 {
            tokio::time::timeout(wait, stream.next()).await
        } else if handoff.queued >= HANDOFF_BATCH {
            handoff.flush().await?;
            continue;
        } else {
            match futures::FutureExt::now_or_never(stream.next()) {
                Some(n) => Ok(n),
                None => {
                    handoff.flush().await?;
                    continue;
                }
            }
        };
        if !proven && !matches!(next, Ok(None) | Ok(Some(Err(_)))) {
            proven = true;
            if let Some(changed) = host.connected() {
                persist_status(store, host, changed).await;
            }
        }
        let msg = match next {
            Err(_) if wait != config.idle_timeout => continue,
            Err(_) => break Err(SessionError::Other(IDLE.into())),
            Ok(None) => break Ok(()),
            Ok(Some(Err(e))) => break Err(SessionError::Other(e.to_string())),
            Ok(Some(Ok(m))) => m,
        };
        let bytes = match msg {
            Message::Binary(b) => b,
            Message::Close(_) => break Ok(()),
            _ => continue,
        };
        metrics.events_in.increment(1);
        if !host.admit_event() {
            metrics.drop_event(DropReason::RateLimited, &host.url, None);
            continue;
        }
        let frame = match atproto::frame::decode_frame_shared(&bytes) {
            Ok(f) => f,
            Err(atproto::frame::FrameError::TooLarge(_)) => {
                host.note_failure();
                metrics.drop_event(DropReason::TooBig, &host.url, None);
                continue;
            }
            Err(_) => {
                host.note_failure();
                metrics.drop_event(DropReason::Malformed, &host.url, None);
                continue;
            }
        };
        if let atproto::frame::Frame::Error(e) = &frame {
            if e.error == "FutureCursor" && cursor > 0 {
                break Err(SessionError::FutureCursor);
            }
            break Err(SessionError::Other(format!(
                "upstream error {}: {}",
                e.error,
                e.message.clone().unwrap_or_default()
            )));
        }
        let emitted = frame.time().and_then(atproto::syntax::datetime_to_millis);
        if let Some(lag_ms) = host.saw_event(emitted, atproto::syntax::now_millis()) {
            metrics.host_lag_seconds.record(lag_ms as f64 / 1000.0);
        }
        let Some(seq) = frame.seq() else {
            continue;
        };
        if frame.did().is_none() {
            continue;
        }
        metrics.verify_queue.increment(1.0);
        host.begin(seq);
        handoff.push(Inbound {
            host: host.clone(),
            upstream_seq: seq,
            frame,
            raw: bytes,
            received: Instant::now(),
        });
    };
    // What was read before the session ended is still verified (its seqs are in flight).
    handoff.flush().await?;
    ended
}

/// Most events gathered from one host before they are handed to the shards.
const HANDOFF_BATCH: usize = 64;

/// Events read and not yet handed over, one list per shard.
struct Handoff<'a> {
    shards: &'a [mpsc::Sender<Vec<Inbound>>],
    pending: Vec<Vec<Inbound>>,
    queued: usize,
}

impl<'a> Handoff<'a> {
    fn new(shards: &'a [mpsc::Sender<Vec<Inbound>>]) -> Self {
        Handoff {
            shards,
            pending: shards.iter().map(|_| Vec::new()).collect(),
            queued: 0,
        }
    }

    fn push(&mut self, inbound: Inbound) {
        let did = inbound.frame.did().unwrap_or_default();
        self.pending[shard_of(did, self.shards.len())].push(inbound);
        self.queued += 1;
    }

    /// Hands every list to its shard. A full shard queue slows this host's reader:
    /// backpressure, nothing dropped.
    async fn flush(&mut self) -> Result<(), SessionError> {
        for (tx, list) in self.shards.iter().zip(self.pending.iter_mut()) {
            if list.is_empty() {
                continue;
            }
            if tx.send(std::mem::take(list)).await.is_err() {
                return Err(SessionError::Other("verifier stopped".into()));
            }
        }
        self.queued = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    /// Real PDSes are `wss://`: the client must speak TLS (a build without it fails every
    /// production host with "TLS support not compiled in").
    #[tokio::test]
    async fn wss_hosts_are_dialled_over_tls() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let server = tokio::spawn(async move {
            // Not a TLS server: read the ClientHello, then hang up.
            let (mut s, _) = listener.accept().await.expect("accept");
            let mut hello = [0u8; 5];
            let n = tokio::io::AsyncReadExt::read(&mut s, &mut hello)
                .await
                .expect("read");
            (n, hello)
        });
        let err = tokio_tungstenite::connect_async(format!("wss://127.0.0.1:{port}/"))
            .await
            .expect_err("no TLS server there");
        assert!(
            !matches!(
                err,
                tokio_tungstenite::tungstenite::Error::Url(
                    tokio_tungstenite::tungstenite::error::UrlError::TlsFeatureNotEnabled
                )
            ),
            "{err}"
        );
        let (n, hello) = server.await.expect("server");
        assert_eq!((n, hello[0]), (5, 0x16), "a TLS handshake record was sent");
    }
}
