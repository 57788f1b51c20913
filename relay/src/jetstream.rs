//! The Jetstream-compatible JSON stream: `GET /subscribe` speaks the legacy Jetstream wire,
//! so clients written for Jetstream read the relay unchanged.
//!
//! Each op of a `#commit` becomes one `commit` event (`create`/`update` with the record as
//! JSON and its CID, `delete` with neither), `#identity` and `#account` become `identity`
//! and `account` events; `#sync` and `#info` have no Jetstream form and are skipped.
//! Records go out as they are in the repo: a sealed record stays sealed.
//!
//! `time_us` is when the relay sequenced the event (microseconds, strictly increasing
//! along the log; every op of one commit carries its commit's time). A `cursor` replays
//! from the first event at or after it, so a client resuming with the last `time_us` it
//! saw gets that commit again; a cursor past the newest event, or none, follows live.
//!
//! Filters: `wantedCollections` (NSIDs or `prefix.*`, commit events only), `wantedDids`
//! (every event), `maxMessageSizeBytes` (larger messages are skipped), changed while
//! connected with an `options_update` message; `requireHello=true` holds the stream until
//! the first one. `compress=true` or `Socket-Encoding: zstd` sends each message as a
//! binary zstd frame made with Jetstream's published dictionary.
//!
//! Every event is made into JSON once for all live subscribers (by one hub task, only while
//! someone listens), and compressed once while any subscriber asks for compression;
//! replays are made per subscriber from the log.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use axum::extract::ws::{Message, Utf8Bytes, WebSocketUpgrade};
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::server::{percent_decode, AppState, Filters};
use crate::store::Logged;
use crate::stream;

/// Jetstream's zstd dictionary (id 1612007021), as its `/subscribe` endpoint uses it.
pub const ZSTD_DICTIONARY: &[u8] = include_bytes!("../assets/jetstream/legacy_subscribe.zdict");
/// The compression level (zstd's default, what Jetstream's encoder uses).
const ZSTD_LEVEL: i32 = 3;
/// Largest message a JSON-stream client may send: an `options_update` with 10,000 DIDs.
const CLIENT_MAX_MESSAGE: usize = 1024 * 1024;
/// Live events the hub converts per step (one blocking task each).
const HUB_BATCH: usize = 256;

/// One Jetstream event, made once and shared by every live subscriber.
#[derive(Debug)]
pub struct JsonEvent {
    /// The account.
    pub did: Box<str>,
    /// The collection, for commit events.
    pub collection: Option<Box<str>>,
    /// The event as JSON text.
    pub json: Utf8Bytes,
    /// The JSON compressed with the dictionary: made by the hub while compressing
    /// subscribers are live, else by the first compressing subscriber that sends it, and
    /// then shared with every other.
    pub zstd: std::sync::OnceLock<Bytes>,
}

/// The Jetstream events of one logged event (none for `#sync`, `#info` and the like).
#[derive(Debug)]
pub struct JsonItem {
    /// The logged event's seq.
    pub seq: u64,
    /// Its Jetstream events.
    pub events: Vec<JsonEvent>,
}

/// The live JSON stream's hub: converted events for every subscriber.
#[derive(Clone)]
pub struct Hub {
    tx: broadcast::Sender<Arc<JsonItem>>,
    /// Subscribers that asked for compression.
    compressing: Arc<AtomicUsize>,
    /// Recently converted events, live and replayed.
    cache: Arc<Converted>,
}

impl Hub {
    /// A hub holding up to `capacity` converted events for subscribers that lag.
    pub fn new(capacity: usize) -> Self {
        Hub {
            tx: broadcast::channel(capacity.max(16)).0,
            compressing: Arc::default(),
            cache: Arc::new(Converted::new(CONVERTED_BYTES)),
        }
    }
}

/// Bytes of converted events kept for replays (JSON and, where made when it was put here,
/// its zstd form). When full, the least recently used go first. A zstd form made later by
/// a subscriber is not counted again: it is a fraction of its JSON, so the cache holds at
/// most about twice this.
const CONVERTED_BYTES: usize = 32 * 1024 * 1024;

/// Converted events by seq, shared by every subscriber of the JSON stream: the hub puts
/// each live event here, and replays look here before converting. Subscribers replaying
/// the same stretch of the log (clients reconnecting together after a restart, a client
/// that fell behind the live stream) convert it once between them. Bounded in bytes.
pub struct Converted {
    inner: std::sync::Mutex<ConvertedInner>,
    budget: usize,
}

struct ConvertedInner {
    /// Each item with its size when it was put here (what it is taken back out at).
    items: lru::LruCache<u64, (Arc<JsonItem>, usize)>,
    bytes: usize,
}

impl JsonItem {
    /// What the item holds, in bytes (for the cache's budget).
    fn size(&self) -> usize {
        self.events
            .iter()
            .map(|e| e.json.len() + e.zstd.get().map_or(0, |z| z.len()) + 64)
            .sum::<usize>()
            + 32
    }
}

impl Converted {
    /// A cache of at most `budget` bytes.
    pub fn new(budget: usize) -> Self {
        Converted {
            inner: std::sync::Mutex::new(ConvertedInner {
                items: lru::LruCache::unbounded(),
                bytes: 0,
            }),
            budget,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ConvertedInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The cached items for `seqs`, in order (`None` where not cached).
    pub fn get_many(&self, seqs: impl Iterator<Item = u64>) -> Vec<Option<Arc<JsonItem>>> {
        let mut inner = self.lock();
        seqs.map(|seq| inner.items.get(&seq).map(|(item, _)| item.clone()))
            .collect()
    }

    /// Keeps `items`, dropping the least recently used beyond the budget. An item larger
    /// than the whole budget is not kept.
    pub fn put_many(&self, items: impl IntoIterator<Item = Arc<JsonItem>>) {
        let mut inner = self.lock();
        for item in items {
            let size = item.size();
            if size > self.budget {
                continue;
            }
            if let Some((_, old)) = inner.items.put(item.seq, (item, size)) {
                inner.bytes -= old;
            }
            inner.bytes += size;
            while inner.bytes > self.budget {
                match inner.items.pop_lru() {
                    Some((_, (_, gone))) => inner.bytes -= gone,
                    None => break,
                }
            }
        }
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }
}

/// Follows the relay's live events and converts each into JSON (and compressed JSON while
/// anyone wants it) for the hub's subscribers. Converts nothing while no one listens. Ends
/// when the live stream closes or on `cancel`.
pub async fn run_hub(
    hub: Hub,
    mut live: broadcast::Receiver<Logged>,
    cancel: CancellationToken,
) -> Result<(), crate::Error> {
    let mut compressor: Option<zstd::bulk::Compressor<'static>> = None;
    loop {
        let first = tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            item = live.recv() => item,
        };
        let mut batch = match first {
            Ok(item) => vec![item],
            // Subscribers notice the gap by seq and read it from the log.
            Err(broadcast::error::RecvError::Lagged(_)) => continue,
            Err(broadcast::error::RecvError::Closed) => return Ok(()),
        };
        while batch.len() < HUB_BATCH {
            match live.try_recv() {
                Ok(item) => batch.push(item),
                Err(_) => break,
            }
        }
        if hub.tx.receiver_count() == 0 {
            continue;
        }
        let compress = hub.compressing.load(Ordering::Relaxed) > 0;
        let mut taken = compressor.take();
        if compress && taken.is_none() {
            taken = Some(new_compressor().map_err(|e| crate::Error::Task(e.to_string()))?);
        }
        let (items, back) = tokio::task::spawn_blocking(move || {
            let mut zstd = taken;
            let items: Vec<JsonItem> = batch
                .iter()
                .map(|logged| convert(logged, zstd.as_mut().filter(|_| compress)))
                .collect();
            (items, zstd)
        })
        .await
        .map_err(|e| crate::Error::Task(e.to_string()))?;
        compressor = back;
        let items: Vec<Arc<JsonItem>> = items.into_iter().map(Arc::new).collect();
        hub.cache.put_many(items.iter().cloned());
        for item in items {
            let _ = hub.tx.send(item);
        }
    }
}

fn new_compressor() -> std::io::Result<zstd::bulk::Compressor<'static>> {
    zstd::bulk::Compressor::with_dictionary(ZSTD_LEVEL, ZSTD_DICTIONARY)
}

/// What a subscriber asked for in its query.
#[derive(Debug, Default)]
struct Params {
    filters: Filters,
    cursor: Option<i64>,
    compress: bool,
    max_message_bytes: usize,
    require_hello: bool,
}

/// `maxMessageSizeBytes` as Jetstream reads it: a negative or unreadable value is no limit.
fn max_size(v: &str) -> usize {
    v.parse::<i64>().ok().filter(|n| *n > 0).unwrap_or(0) as usize
}

impl Params {
    fn parse(query: Option<&str>, headers: &HeaderMap) -> Result<Self, String> {
        let mut p = Params::default();
        for pair in query
            .unwrap_or_default()
            .split('&')
            .filter(|s| !s.is_empty())
        {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = percent_decode(v);
            match k {
                "wantedCollections" => p.filters.add_collection(v)?,
                "wantedDids" => p.filters.add_did(v)?,
                "cursor" => {
                    p.cursor = Some(v.parse().map_err(|_| format!("invalid cursor: {v}"))?);
                }
                "compress" => p.compress |= v == "true",
                "maxMessageSizeBytes" => p.max_message_bytes = max_size(&v),
                "requireHello" => p.require_hello = v == "true",
                _ => {}
            }
        }
        let encoding = headers
            .get("socket-encoding")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        p.compress |= encoding.contains("zstd");
        Ok(p)
    }
}

/// `GET /subscribe`: a parameter that does not parse is refused with 400 and the reason
/// as text, as Jetstream does.
pub async fn subscribe(
    ws: WebSocketUpgrade,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    State(state): State<AppState>,
) -> Response {
    let params = match Params::parse(query.as_deref(), &headers) {
        Ok(p) => p,
        Err(e) => return (StatusCode::BAD_REQUEST, e).into_response(),
    };
    if state.subscribers.load(Ordering::Relaxed) >= state.max_subscribers {
        return crate::server::too_many_subscribers();
    }
    ws.read_buffer_size(stream::SUBSCRIBER_READ_BUFFER)
        .max_message_size(CLIENT_MAX_MESSAGE)
        .max_frame_size(CLIENT_MAX_MESSAGE)
        .on_upgrade(move |socket| async move {
            let mut conn = stream::Conn::new(socket, &state);
            let result = serve(&mut conn, &state, params).await;
            conn.finish(result).await;
        })
}

async fn serve(conn: &mut stream::Conn, state: &AppState, params: Params) -> Result<(), String> {
    let hub = &state.jetstream;
    // Taken before the log is read (as on the firehose): nothing falls between.
    let rx = hub.tx.subscribe();
    let compressor = match params.compress {
        true => Some(new_compressor().map_err(|e| e.to_string())?),
        false => None,
    };
    let mut feed = JsonFeed {
        cache: hub.cache.clone(),
        filters: params.filters,
        max_message_bytes: params.max_message_bytes,
        compressor,
        _compressing: params
            .compress
            .then(|| Compressing::count(&hub.compressing)),
    };
    let store = state.store.clone();
    let cursor = params.cursor;
    let (head, start) = tokio::task::spawn_blocking(move || {
        let head = store.last_seq()?;
        let start = match cursor {
            Some(c) => store.first_at_or_after(c.max(0) as u64)?,
            None => None,
        };
        Ok::<_, crate::store::StoreError>((head, start))
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| e.to_string())?;
    if params.require_hello {
        loop {
            let Some(text) = conn.next_text(state.dead_after).await else {
                return Ok(());
            };
            match feed.options(&text) {
                Ok(true) => break,
                Ok(false) => {}
                Err(why) => {
                    conn.close_with(&why).await;
                    return Err(why);
                }
            }
        }
    }
    match start {
        Some(seq) if seq <= head => stream::run(conn, state, &mut feed, rx, seq - 1, true).await,
        _ => stream::run(conn, state, &mut feed, rx, head, false).await,
    }
}

/// Counts a compressing subscriber while it lasts.
struct Compressing(Arc<AtomicUsize>);

impl Compressing {
    fn count(n: &Arc<AtomicUsize>) -> Self {
        n.fetch_add(1, Ordering::Relaxed);
        Compressing(n.clone())
    }
}

impl Drop for Compressing {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One JSON-stream subscriber's side of the stream.
struct JsonFeed {
    cache: Arc<Converted>,
    filters: Filters,
    max_message_bytes: usize,
    /// Set when the subscriber asked for compression.
    compressor: Option<zstd::bulk::Compressor<'static>>,
    _compressing: Option<Compressing>,
}

/// A message a client sends (`options_update` is the one Jetstream knows).
#[derive(Deserialize)]
struct ClientMessage {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    payload: serde_json::Value,
}

/// The options a client may change while connected.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct OptionsUpdate {
    #[serde(default)]
    wanted_collections: Option<Vec<String>>,
    #[serde(default)]
    wanted_dids: Option<Vec<String>>,
    #[serde(default)]
    max_message_size_bytes: Option<i64>,
}

impl JsonFeed {
    /// Applies a client message: true for an `options_update` (the filters and size limit
    /// it carries replace the current ones; what it leaves out means no filter), false for
    /// a message of another type (ignored), an error for one that does not parse.
    fn options(&mut self, text: &str) -> Result<bool, String> {
        let message: ClientMessage = serde_json::from_str(text)
            .map_err(|e| format!("failed to unmarshal subscriber sourced message: {e}"))?;
        if message.kind != "options_update" {
            tracing::debug!(
                kind = message.kind,
                "unknown message from a JSON-stream client"
            );
            return Ok(false);
        }
        let update: OptionsUpdate = serde_json::from_value(message.payload)
            .map_err(|e| format!("failed to unmarshal subscriber options update: {e}"))?;
        let mut filters = Filters::default();
        for c in update.wanted_collections.unwrap_or_default() {
            filters.add_collection(c)?;
        }
        for d in update.wanted_dids.unwrap_or_default() {
            filters.add_did(d)?;
        }
        self.filters = filters;
        self.max_message_bytes = max_size(&update.max_message_size_bytes.unwrap_or(0).to_string());
        Ok(true)
    }
}

impl stream::Feed for JsonFeed {
    type Item = Arc<JsonItem>;

    fn seq(item: &Arc<JsonItem>) -> u64 {
        item.seq
    }

    /// Replayed events come from the shared cache where another subscriber (or the hub)
    /// converted them already; the rest are converted here and shared. Compression, where
    /// asked for, happens as each message goes out.
    fn replayed(&mut self, page: Vec<Logged>) -> Vec<Arc<JsonItem>> {
        let cached = self.cache.get_many(page.iter().map(|l| l.seq));
        let mut fresh = Vec::new();
        let items = page
            .iter()
            .zip(cached)
            .map(|(logged, hit)| {
                hit.unwrap_or_else(|| {
                    let item = Arc::new(convert(logged, None));
                    fresh.push(item.clone());
                    item
                })
            })
            .collect();
        self.cache.put_many(fresh);
        items
    }

    fn messages(&mut self, item: &Arc<JsonItem>, out: &mut Vec<Message>) {
        for event in &item.events {
            let collection_ok = event
                .collection
                .as_deref()
                .is_none_or(|c| self.filters.wants_collection(c));
            if !collection_ok || !self.filters.wants_did(&event.did) {
                continue;
            }
            let message = match self.compressor.as_mut() {
                None => Message::Text(event.json.clone()),
                Some(compressor) => match event.zstd.get() {
                    Some(z) => Message::Binary(z.clone()),
                    None => match compressor.compress(event.json.as_bytes()) {
                        Ok(z) => {
                            let z = Bytes::from(z);
                            // Another subscriber may have been first: either form serves.
                            let _ = event.zstd.set(z.clone());
                            Message::Binary(z)
                        }
                        Err(error) => {
                            tracing::warn!(%error, "zstd compression failed; event skipped");
                            continue;
                        }
                    },
                },
            };
            let len = match &message {
                Message::Text(t) => t.len(),
                Message::Binary(b) => b.len(),
                _ => 0,
            };
            if self.max_message_bytes > 0 && len > self.max_message_bytes {
                continue;
            }
            out.push(message);
        }
    }

    fn too_slow(&self, _why: &str) -> Option<Message> {
        None
    }

    fn control(&mut self, text: &str) -> Result<(), String> {
        self.options(text).map(|_| ())
    }
}

/// The Jetstream event's envelope, in Jetstream's field order.
#[derive(Serialize)]
struct Envelope<'a, T: Serialize> {
    did: &'a str,
    time_us: u64,
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    commit: Option<T>,
    #[serde(skip_serializing_if = "Option::is_none")]
    identity: Option<T>,
    #[serde(skip_serializing_if = "Option::is_none")]
    account: Option<T>,
}

#[derive(Serialize)]
struct CommitJson<'a> {
    rev: &'a str,
    operation: &'a str,
    collection: &'a str,
    rkey: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    record: Option<atproto::data::JsonView<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cid: Option<String>,
}

#[derive(Serialize)]
struct IdentityJson<'a> {
    did: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    handle: Option<&'a str>,
    seq: i64,
    time: &'a str,
}

#[derive(Serialize)]
struct AccountJson<'a> {
    active: bool,
    did: &'a str,
    seq: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<&'a str>,
    time: &'a str,
}

fn envelope<'a, T: Serialize>(
    did: &'a str,
    time_us: u64,
    kind: &'static str,
    body: T,
) -> Envelope<'a, T> {
    let mut e = Envelope {
        did,
        time_us,
        kind,
        commit: None,
        identity: None,
        account: None,
    };
    match kind {
        "commit" => e.commit = Some(body),
        "identity" => e.identity = Some(body),
        _ => e.account = Some(body),
    }
    e
}

/// Limits for the CAR of a logged commit (it was checked against the relay's own limits
/// when it came in; these only bound the work here).
const CAR_LIMITS: atproto::car::CarLimits = atproto::car::CarLimits {
    max_bytes: 8 * 1024 * 1024,
    max_blocks: 100_000,
};

/// The Jetstream events of one logged event, as JSON (and compressed, given a compressor).
/// An op whose record is not in the commit's blocks, or does not decode, is skipped and
/// logged; the event's other ops still go out.
pub fn convert(
    logged: &Logged,
    compressor: Option<&mut zstd::bulk::Compressor<'static>>,
) -> JsonItem {
    let mut events = Vec::new();
    match atproto::frame::decode_frame_shared(&logged.frame) {
        Ok(frame) => json_events(&frame, logged.time_us, &mut events),
        Err(error) => tracing::warn!(seq = logged.seq, %error, "logged frame does not decode"),
    }
    let events = events
        .into_iter()
        .map(|(did, collection, json)| JsonEvent {
            zstd: std::sync::OnceLock::new(),
            did,
            collection,
            json,
        })
        .collect::<Vec<_>>();
    let mut item = JsonItem {
        seq: logged.seq,
        events,
    };
    if let Some(c) = compressor {
        for event in &mut item.events {
            match c.compress(event.json.as_bytes()) {
                Ok(z) => {
                    let _ = event.zstd.set(z.into());
                }
                Err(error) => tracing::warn!(%error, "zstd compression failed"),
            }
        }
    }
    item
}

type Made = (Box<str>, Option<Box<str>>, Utf8Bytes);

fn to_text<T: Serialize>(value: &T) -> Option<Utf8Bytes> {
    serde_json::to_string(value).ok().map(Utf8Bytes::from)
}

/// The Jetstream events of one frame, at `time_us`.
pub fn json_events(frame: &atproto::frame::Frame, time_us: u64, out: &mut Vec<Made>) {
    use atproto::frame::Frame;
    match frame {
        Frame::Commit(c) if !c.too_big => {
            let car = match atproto::car::read_car_view(&c.blocks, CAR_LIMITS) {
                Ok(car) => Some(car),
                Err(error) => {
                    tracing::warn!(did = c.repo, %error, "logged commit's blocks do not read");
                    None
                }
            };
            for op in &c.ops {
                let Some((collection, rkey)) = op.path.split_once('/') else {
                    continue;
                };
                let (record, cid) = match (op.action.as_str(), op.cid) {
                    ("create" | "update", Some(cid)) => {
                        let block = car.as_ref().and_then(|car| car.blocks.get(&cid));
                        let decoded =
                            block.and_then(|b| atproto::data::from_cbor::<atproto::Ipld>(b).ok());
                        let Some(record) = decoded else {
                            tracing::warn!(
                                did = c.repo,
                                path = op.path,
                                "record missing from the commit's blocks; op skipped"
                            );
                            continue;
                        };
                        (Some(record), Some(cid.to_string()))
                    }
                    ("delete", _) => (None, None),
                    _ => continue,
                };
                let body = CommitJson {
                    rev: &c.rev,
                    operation: &op.action,
                    collection,
                    rkey,
                    record: record.as_ref().map(atproto::data::JsonView),
                    cid,
                };
                if let Some(json) = to_text(&envelope(&c.repo, time_us, "commit", body)) {
                    out.push((c.repo.as_str().into(), Some(collection.into()), json));
                }
            }
        }
        Frame::Identity(i) => {
            let body = IdentityJson {
                did: &i.did,
                handle: i.handle.as_deref(),
                seq: i.seq,
                time: &i.time,
            };
            if let Some(json) = to_text(&envelope(&i.did, time_us, "identity", body)) {
                out.push((i.did.as_str().into(), None, json));
            }
        }
        Frame::Account(a) => {
            let body = AccountJson {
                active: a.active,
                did: &a.did,
                seq: a.seq,
                status: a.status.as_deref(),
                time: &a.time,
            };
            if let Some(json) = to_text(&envelope(&a.did, time_us, "account", body)) {
                out.push((a.did.as_str().into(), None, json));
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(seq: u64, bytes: usize) -> Arc<JsonItem> {
        Arc::new(JsonItem {
            seq,
            events: vec![JsonEvent {
                did: "did:plc:ewvi7nxzyoun6zhxrhs64oiz".into(),
                collection: None,
                json: "x".repeat(bytes).into(),
                zstd: std::sync::OnceLock::new(),
            }],
        })
    }

    #[test]
    fn converted_events_stay_within_their_byte_budget_least_recently_used_first() {
        let one = item(1, 1000).size();
        let cache = Converted::new(3 * one);
        cache.put_many([item(1, 1000), item(2, 1000), item(3, 1000)]);
        assert_eq!(cache.bytes(), 3 * one);
        // Reading 1 makes 2 the least recently used: the next one in pushes 2 out.
        assert!(cache.get_many([1].into_iter())[0].is_some());
        cache.put_many([item(4, 1000)]);
        let hits: Vec<bool> = cache.get_many(1..=4).iter().map(Option::is_some).collect();
        assert_eq!(hits, [true, false, true, true]);
        assert_eq!(cache.bytes(), 3 * one);
        // The same seq again replaces, never counts twice; one over the budget is not kept.
        cache.put_many([item(4, 1000), item(9, 10 * 1000)]);
        assert_eq!(cache.bytes(), 3 * one);
        assert!(cache.get_many([9].into_iter())[0].is_none());
        // A compressed form a subscriber adds later is not counted again, and an item goes
        // out at the size it came in at.
        let cached = cache.get_many([3].into_iter())[0].clone().expect("cached");
        let _ = cached.events[0].zstd.set(Bytes::from(vec![0u8; 500]));
        cache.put_many((10..13).map(|seq| item(seq, 1000)));
        assert_eq!(cache.bytes(), 3 * one);
        assert!(cache.get_many(1..=4).iter().all(Option::is_none));
    }
}
