//! `agent.comms.subscribeInbox`: the caller's new inbox items pushed over a WebSocket as
//! they are indexed, in the event-stream framing of atproto subscriptions (a DAG-CBOR
//! header `{op: 1, t: "#item"}` then the body; `{op: -1}` and `{error, message}` for
//! errors).
//!
//! The caller authenticates the upgrade request with a service token for this method. One
//! [`Hub`] per appview watches the index: when the store signals a write made in this
//! process (the indexer beside the appview in `agentnet up`), and on a timer for writes made
//! by other processes, it reads the routing columns of the new rows (no record data) and
//! wakes the sockets of the DIDs they are for. A woken socket asks the store for rows after
//! the last one it sent, with its caller inside the query (the same access rule as
//! `getInbox`). Idle subscribers cost nothing; a write costs one small query, plus one per
//! socket it concerns.

use std::time::{Duration, Instant};

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use crate::xrpc::{item, XrpcError};
use crate::Appview;

/// The method, and the `lxm` its tokens must name.
pub const NSID: &str = "agent.comms.subscribeInbox";

/// Items read from the store per query.
const PAGE: usize = 100;
/// Quietest time between two store queries of one socket: a burst of writes costs one
/// query per socket, not one per write.
const DEBOUNCE: Duration = Duration::from_millis(25);
/// Wait before a failed live-inbox query is tried again.
const RETRY: Duration = Duration::from_secs(1);
/// How often a quiet socket is pinged, and how long a client may stay silent (no pong, no
/// frame) before the socket is closed.
const PING_EVERY: Duration = Duration::from_secs(30);
const SILENT_LIMIT: Duration = Duration::from_secs(90);
/// Open subscriptions one caller may hold (a session and a reconnect or two).
const PER_CALLER: usize = 4;
/// Largest message a subscriber may send (it sends only control frames).
const MAX_CLIENT_MESSAGE: usize = 16 * 1024;

#[derive(Deserialize)]
pub struct Params {
    cursor: Option<i64>,
}

/// Rows the hub reads per look.
const HUB_PAGE: usize = 10_000;
/// How far before "now" a subscription without a cursor starts, so that a row whose batch
/// was being written while the socket opened is not missed.
const START_SLACK_MS: i64 = 5_000;

/// Whom the latest rows are for; one message per look that found any.
type Woken = std::sync::Arc<std::collections::HashSet<String>>;
/// Looks queued for a socket that has not read them yet; one that falls further behind
/// wakes (and asks the store) once instead.
const HUB_QUEUE: usize = 256;

/// The appview's one reader of new rows for the live inbox (see the module docs). Its
/// task ends when the hub is dropped with the appview.
pub struct Hub {
    woken: tokio::sync::broadcast::Sender<Woken>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Hub {
    fn start(records: store::Records, poll_ms: u64) -> Hub {
        let (woken, _) = tokio::sync::broadcast::channel(HUB_QUEUE);
        let tx = woken.clone();
        let task = tokio::spawn(async move {
            let mut changes = records.changes();
            let mut poll = tokio::time::interval(Duration::from_millis(poll_ms.max(50)));
            let mut latest = now_ms() - START_SLACK_MS;
            loop {
                tokio::select! {
                    changed = changes.changed() => if changed.is_err() { return },
                    _ = poll.tick() => {}
                }
                // With no socket open, nothing is read.
                if tx.receiver_count() == 0 {
                    latest = now_ms() - START_SLACK_MS;
                    continue;
                }
                tokio::time::sleep(DEBOUNCE).await;
                let r = records.clone();
                let looked =
                    tokio::task::spawn_blocking(move || r.touched_since(latest, HUB_PAGE)).await;
                match looked {
                    Ok(Ok((seen, dids))) => {
                        latest = seen;
                        if !dids.is_empty() {
                            // No receiver left since the count above: nobody to wake.
                            let _ = tx.send(std::sync::Arc::new(dids));
                        }
                    }
                    Ok(Err(e)) => tracing::warn!(error = %e, "live inbox: reading new rows failed"),
                    Err(e) => tracing::error!(error = %e, "live inbox: the store reader failed"),
                }
            }
        });
        Hub { woken, task }
    }
}

pub async fn subscribe_inbox(
    ws: WebSocketUpgrade,
    State(app): State<Appview>,
    headers: HeaderMap,
    Query(p): Query<Params>,
) -> Response {
    let caller = match app.caller(&headers, NSID).await {
        Ok(Some(did)) => did,
        Ok(None) => {
            return XrpcError(
                StatusCode::UNAUTHORIZED,
                "AuthenticationRequired",
                format!("{NSID} needs a service token for this method"),
            )
            .into_response()
        }
        Err(e) => return e.into_response(),
    };
    let now = now_ms();
    let replay = app.inner.live.replay_ms as i64;
    let start = match p.cursor {
        // Items indexed at or after the cursor (the client drops repeats by URI), no
        // further back than the replay window.
        Some(c) if c < 0 => {
            return XrpcError(
                StatusCode::BAD_REQUEST,
                "InvalidRequest",
                "cursor must not be negative".into(),
            )
            .into_response()
        }
        Some(c) => c.max(now - replay),
        None => now - START_SLACK_MS,
    };
    let Some(mine) = CallerSlot::take(&app.inner.live.per_caller, &caller) else {
        return XrpcError(
            StatusCode::TOO_MANY_REQUESTS,
            "RateLimitExceeded",
            format!("at most {PER_CALLER} live-inbox subscriptions per caller"),
        )
        .into_response();
    };
    let Ok(permit) = app.inner.live.sockets.clone().try_acquire_owned() else {
        return XrpcError(
            StatusCode::SERVICE_UNAVAILABLE,
            "TooManySubscribers",
            "the appview is at its live-inbox subscriber limit".into(),
        )
        .into_response();
    };
    ws.max_message_size(MAX_CLIENT_MESSAGE)
        .max_frame_size(MAX_CLIENT_MESSAGE)
        .on_upgrade(move |socket| async move {
            let _held = (permit, mine);
            let metrics = &app.inner.metrics;
            metrics.live_subscribers.increment(1.0);
            let _counted = crate::metrics::OnDrop(|| metrics.live_subscribers.decrement(1.0));
            tracing::debug!(caller, "live inbox opened");
            match serve(socket, &app, &caller, start).await {
                Ok(()) => tracing::debug!(caller, "live inbox closed"),
                Err(e) => tracing::info!(caller, error = %e, "live inbox ended"),
            }
        })
}

type Slots = std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>>;

/// One of a caller's subscription slots, given back on drop.
struct CallerSlot {
    slots: Slots,
    caller: String,
}

impl CallerSlot {
    fn take(slots: &Slots, caller: &str) -> Option<CallerSlot> {
        let mut map = slots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = map.entry(caller.to_string()).or_default();
        if *n >= PER_CALLER {
            return None;
        }
        *n += 1;
        Some(CallerSlot {
            slots: slots.clone(),
            caller: caller.to_string(),
        })
    }
}

impl Drop for CallerSlot {
    fn drop(&mut self) {
        let mut map = self
            .slots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = map.get_mut(&self.caller) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.caller);
            }
        }
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// One subscriber: wait for a write (or the timer), send what is new, answer the client.
async fn serve(
    mut socket: WebSocket,
    app: &Appview,
    caller: &str,
    start_ms: i64,
) -> Result<(), String> {
    // Rows indexed at or after the start: (time, "") sorts before every URI of that time.
    let mut after = (start_ms, String::new());
    let live = &app.inner.live;
    let mut woken = live
        .hub
        .get_or_init(|| async { Hub::start(app.inner.records.clone(), live.poll_ms) })
        .await
        .woken
        .subscribe();
    let mut ping = tokio::time::interval(PING_EVERY);
    let mut heard = Instant::now();
    // The first look is at once: a resumed socket replays, a new one sends what was indexed
    // since it was authenticated.
    let mut due = true;
    loop {
        if due {
            due = false;
            loop {
                let rows = match fetch(app, caller, &after).await {
                    Ok(rows) => rows,
                    Err(e) => {
                        tracing::warn!(error = %e, "live inbox query failed; retrying");
                        due = true;
                        break;
                    }
                };
                let full = rows.len() == PAGE;
                for row in &rows {
                    let frame = item_frame(row)?;
                    socket
                        .send(Message::Binary(frame.into()))
                        .await
                        .map_err(|e| e.to_string())?;
                    after = (row.indexed_ms, row.uri.clone());
                }
                if !full {
                    break;
                }
            }
            tokio::time::sleep(DEBOUNCE).await;
            if due {
                // The query failed: try again shortly rather than wait for the next write.
                tokio::time::sleep(RETRY).await;
                continue;
            }
        }
        tokio::select! {
            msg = socket.recv() => match msg {
                Some(Ok(Message::Close(_))) | None => return Ok(()),
                Some(Ok(_)) => heard = Instant::now(),
                Some(Err(e)) => return Err(e.to_string()),
            },
            looked = woken.recv() => match looked {
                Ok(dids) => due = dids.contains(caller),
                // Behind the hub: whatever was missed may concern this caller.
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => due = true,
                // The hub is gone: the appview is stopping.
                Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                    return close(socket, "the appview is stopping").await;
                }
            },
            _ = ping.tick() => {
                if heard.elapsed() > SILENT_LIMIT {
                    return Err("the client went silent".into());
                }
                socket.send(Message::Ping(Vec::new().into())).await.map_err(|e| e.to_string())?;
            }
        }
    }
}

async fn fetch(
    app: &Appview,
    caller: &str,
    after: &(i64, String),
) -> Result<Vec<store::records::RecordRow>, String> {
    let (caller, after) = (caller.to_string(), after.clone());
    app.query(move |r| r.inbox_indexed(&caller, (after.0, &after.1), PAGE))
        .await
        .map_err(|e| e.2)
}

#[derive(serde::Serialize)]
struct ItemBody {
    cursor: i64,
    item: atproto::Ipld,
}

/// `#item` with the row as `agent.comms.defs#item`.
fn item_frame(row: &store::records::RecordRow) -> Result<Vec<u8>, String> {
    let item = atproto::data::json_to_ipld(&item(row)).map_err(|e| e.to_string())?;
    let body = atproto::data::to_cbor(&ItemBody {
        cursor: row.indexed_ms,
        item,
    })
    .map_err(|e| e.to_string())?;
    atproto::frame::encode_frame(&atproto::frame::Frame::Unknown {
        t: "#item".into(),
        body: body.into(),
    })
    .map_err(|e| e.to_string())
}

async fn close(mut socket: WebSocket, why: &str) -> Result<(), String> {
    let frame =
        atproto::frame::encode_frame(&atproto::frame::Frame::Error(atproto::frame::ErrorFrame {
            error: "ServiceUnavailable".into(),
            message: Some(why.into()),
        }))
        .map_err(|e| e.to_string())?;
    let _ = socket.send(Message::Binary(frame.into())).await;
    let _ = socket.send(Message::Close(None)).await;
    Ok(())
}
