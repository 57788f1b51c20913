//! The relay's HTTP face: the firehose (`subscribeRepos`), the sync XRPC endpoints, the
//! admin endpoint for adding hosts, and `/metrics`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use axum::extract::ws::{Message, WebSocketUpgrade};
use axum::extract::{Query, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::{broadcast, mpsc};

use crate::metrics::Metrics;
use crate::store::{Logged, Store};
use crate::stream;

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    /// The durable log and state.
    pub store: Store,
    /// Live events, already durable, encoded once.
    pub live: broadcast::Sender<Logged>,
    /// The live JSON stream (Jetstream's events, made once for every subscriber).
    pub jetstream: crate::jetstream::Hub,
    /// Metric handles.
    pub metrics: Metrics,
    /// Subscribers connected now.
    pub subscribers: Arc<AtomicUsize>,
    /// Most subscribers at once.
    pub max_subscribers: usize,
    /// Hosts to crawl, stop or reconnect (from requestCrawl and the admin endpoints).
    pub new_hosts: mpsc::Sender<crate::HostCommand>,
    /// `requestCrawl` calls allowed, all callers together.
    pub crawl_limiter: Arc<governor::DefaultDirectRateLimiter>,
    /// Most hosts crawled.
    pub max_hosts: usize,
    /// Client for probing hosts that ask to be crawled (through the egress guard).
    pub probe: atproto::net::GuardedClient,
    /// Bearer token for admin endpoints; admin is off when empty.
    pub admin_token: String,
    /// Loopback/private hosts allowed.
    pub dev: bool,
    /// A send to a subscriber that takes longer than this closes it as too slow.
    pub send_timeout: std::time::Duration,
    /// Live per-host limits and counters.
    pub hosts: crate::hosts::Hosts,
    /// Limits for hosts the operator has not configured.
    pub default_limits: crate::hosts::Limits,
    /// DID resolution (getRepo redirects go where the DID document says).
    pub resolver: Arc<atproto::identity::CachingResolver<atproto::identity::HttpResolver>>,
    /// Keepalive: a ping to each subscriber this often…
    pub ping_interval: std::time::Duration,
    /// …and a subscriber heard from not at all for this long is closed as gone.
    pub dead_after: std::time::Duration,
}

/// An XRPC error: `{error, message}` with a status.
pub struct XrpcError(StatusCode, &'static str, String);

impl IntoResponse for XrpcError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({"error": self.1, "message": self.2}))).into_response()
    }
}

fn internal(e: impl std::fmt::Display) -> XrpcError {
    XrpcError(
        StatusCode::INTERNAL_SERVER_ERROR,
        "InternalServerError",
        e.to_string(),
    )
}

fn bad(name: &'static str, msg: impl Into<String>) -> XrpcError {
    XrpcError(StatusCode::BAD_REQUEST, name, msg.into())
}

/// The router.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route(
            "/xrpc/com.atproto.sync.subscribeRepos",
            get(subscribe_repos),
        )
        .route("/xrpc/com.atproto.sync.listRepos", get(list_repos))
        .route(
            "/xrpc/com.atproto.sync.getLatestCommit",
            get(get_latest_commit),
        )
        .route("/xrpc/com.atproto.sync.getRepoStatus", get(get_repo_status))
        .route("/xrpc/com.atproto.sync.getRepo", get(get_repo))
        .route("/xrpc/com.atproto.sync.listHosts", get(list_hosts))
        .route(
            "/xrpc/com.atproto.sync.listReposByCollection",
            get(list_repos_by_collection),
        )
        .route("/xrpc/com.atproto.sync.getHostStatus", get(get_host_status))
        .route("/xrpc/com.atproto.sync.requestCrawl", post(request_crawl))
        .route("/admin/hosts", post(admin_add_host).get(admin_list_hosts))
        .route("/admin/hosts/limits", post(admin_set_limits))
        .route("/admin/hosts/ban", post(admin_ban))
        .route("/admin/hosts/unban", post(admin_unban))
        .route("/admin/hosts/remove", post(admin_remove))
        .route("/admin/hosts/reset-cursor", post(admin_reset_cursor))
        .route("/subscribe", get(crate::jetstream::subscribe))
        .route("/metrics", get(metrics))
        .route("/_health", get(|| async { Json(json!({"status": "ok"})) }))
        .with_state(state)
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, crate::store::StoreError> + Send + 'static,
) -> Result<T, XrpcError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(internal)?
        .map_err(internal)
}

/// Most `wantedCollections` values accepted.
const MAX_WANTED_COLLECTIONS: usize = 100;
/// Most `wantedDids` values accepted.
const MAX_WANTED_DIDS: usize = 10_000;

/// Which events a subscriber wants: by collection (commit events only) and by account
/// (every event). Empty means everything.
#[derive(Debug, Default)]
pub(crate) struct Filters {
    /// NSIDs, or prefixes ending in `.*`.
    pub(crate) collections: Vec<String>,
    /// Accounts.
    pub(crate) dids: std::collections::HashSet<String>,
}

impl Filters {
    /// Adds a wanted collection: an NSID or a prefix such as `agent.comms.*`.
    pub(crate) fn add_collection(&mut self, v: String) -> Result<(), String> {
        let ok = match v.strip_suffix(".*") {
            Some(prefix) => prefix.split('.').all(|seg| {
                !seg.is_empty() && seg.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-')
            }),
            None => atproto::syntax::validate_nsid(&v).is_ok(),
        };
        if !ok {
            return Err(format!(
                "wantedCollections: {v} is not an NSID or NSID prefix"
            ));
        }
        if self.collections.len() >= MAX_WANTED_COLLECTIONS {
            return Err(format!(
                "too many wanted collections (at most {MAX_WANTED_COLLECTIONS})"
            ));
        }
        self.collections.push(v);
        Ok(())
    }

    /// Adds a wanted account.
    pub(crate) fn add_did(&mut self, v: String) -> Result<(), String> {
        atproto::syntax::validate_did(&v).map_err(|e| format!("wantedDids: {e}"))?;
        if self.dids.len() >= MAX_WANTED_DIDS && !self.dids.contains(&v) {
            return Err(format!("too many wanted DIDs (at most {MAX_WANTED_DIDS})"));
        }
        self.dids.insert(v);
        Ok(())
    }

    fn filtering(&self) -> bool {
        !self.collections.is_empty() || !self.dids.is_empty()
    }

    /// Whether `collection` is one of the wanted ones (with no collection filter, every
    /// collection is).
    pub(crate) fn wants_collection(&self, collection: &str) -> bool {
        self.collections.is_empty()
            || self.collections.iter().any(|w| match w.strip_suffix(".*") {
                Some(prefix) => collection
                    .strip_prefix(prefix)
                    .is_some_and(|rest| rest.starts_with('.')),
                None => w == collection,
            })
    }

    /// Whether `did` is one of the wanted accounts (with no account filter, every one is).
    pub(crate) fn wants_did(&self, did: &str) -> bool {
        self.dids.is_empty() || self.dids.contains(did)
    }

    /// Whether a firehose frame passes the filters. Frames go out unchanged (signatures
    /// still verify); only which frames are sent changes. Account-level events
    /// (`#identity`, `#account`, `#sync`) pass the collection filter; all events pass
    /// only for wanted DIDs.
    fn wants(&self, frame: &[u8]) -> bool {
        let Some(routing) = crate::kafka::Routing::of(frame) else {
            // Not a message, or a body the relay cannot peek into: sent as it is.
            return true;
        };
        if let Some(did) = &routing.did {
            if !self.wants_did(did) {
                return false;
            }
        }
        routing.kind != "#commit" || routing.collections.iter().any(|c| self.wants_collection(c))
    }
}

/// What a firehose subscriber asked for: a cursor and optional filters.
#[derive(Debug, Default)]
struct SubscribeParams {
    cursor: Option<i64>,
    filters: Filters,
}

/// Decodes a query-string value (`%XX` and `+`).
pub(crate) fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = b
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b[i], hex) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl SubscribeParams {
    fn parse(query: Option<&str>) -> Result<Self, XrpcError> {
        let mut p = SubscribeParams::default();
        for pair in query
            .unwrap_or_default()
            .split('&')
            .filter(|s| !s.is_empty())
        {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = percent_decode(v);
            match k {
                "cursor" => {
                    p.cursor = Some(
                        v.parse()
                            .map_err(|_| bad("InvalidRequest", "cursor must be an integer"))?,
                    )
                }
                "wantedCollections" => p
                    .filters
                    .add_collection(v)
                    .map_err(|e| bad("InvalidRequest", e))?,
                "wantedDids" => p.filters.add_did(v).map_err(|e| bad("InvalidRequest", e))?,
                _ => {}
            }
        }
        Ok(p)
    }
}

async fn subscribe_repos(
    ws: WebSocketUpgrade,
    RawQuery(query): RawQuery,
    State(state): State<AppState>,
) -> Response {
    let params = match SubscribeParams::parse(query.as_deref()) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    if state.subscribers.load(Ordering::Relaxed) >= state.max_subscribers {
        return too_many_subscribers();
    }
    // Subscribers send only control frames: a small read buffer (it is allocated per
    // socket once it is read) and small message bounds.
    ws.read_buffer_size(stream::SUBSCRIBER_READ_BUFFER)
        .max_message_size(SUBSCRIBER_MAX_MESSAGE)
        .max_frame_size(SUBSCRIBER_MAX_MESSAGE)
        .on_upgrade(move |socket| async move {
            let mut conn = stream::Conn::new(socket, &state);
            let result = serve_firehose(&mut conn, &state, params).await;
            conn.finish(result).await;
        })
}

/// The answer when the relay serves as many subscribers as it may.
pub(crate) fn too_many_subscribers() -> Response {
    XrpcError(
        StatusCode::SERVICE_UNAVAILABLE,
        "TooManySubscribers",
        "subscriber limit reached".into(),
    )
    .into_response()
}

/// Largest message a firehose subscriber may send (it sends only control frames).
const SUBSCRIBER_MAX_MESSAGE: usize = 64 * 1024;

/// The CBOR firehose as a [`stream::Feed`]: logged frames go out unchanged, filtered.
struct Firehose {
    params: SubscribeParams,
}

impl stream::Feed for Firehose {
    type Item = Logged;

    fn seq(item: &Logged) -> u64 {
        item.seq
    }

    fn replayed(&mut self, page: Vec<Logged>) -> Vec<Logged> {
        page
    }

    fn messages(&mut self, item: &Logged, out: &mut Vec<Message>) {
        if !self.params.filters.filtering() || self.params.filters.wants(&item.frame) {
            out.push(Message::Binary(item.frame.clone()));
        }
    }

    fn too_slow(&self, why: &str) -> Option<Message> {
        Some(Message::Binary(error_frame("ConsumerTooSlow", why)))
    }
}

/// Replays from the log after the subscriber's cursor (a `seq`), then follows the live
/// stream (see [`stream::run`]). A cursor ahead of the stream is refused with
/// `FutureCursor`; one older than the retained log starts at the oldest event, after an
/// `OutdatedCursor` info frame.
async fn serve_firehose(
    conn: &mut stream::Conn,
    state: &AppState,
    params: SubscribeParams,
) -> Result<(), String> {
    let cursor = params.cursor;
    // The live subscription is taken before the log is read: nothing falls between.
    let rx = state.live.subscribe();
    let store = state.store.clone();
    let (head, oldest) = tokio::task::spawn_blocking(move || {
        Ok::<_, crate::store::StoreError>((store.last_seq()?, store.oldest_seq()?))
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| e.to_string())?;
    let last = match cursor {
        None => head,
        Some(c) if c < 0 => {
            conn.send_error_and_close("InvalidRequest", "cursor must not be negative")
                .await;
            return Ok(());
        }
        Some(c) if c as u64 > head => {
            conn.send_error_and_close("FutureCursor", "cursor is ahead of the stream")
                .await;
            return Ok(());
        }
        Some(c) => {
            let c = c as u64;
            match oldest {
                Some(o) if c + 1 < o => {
                    let info = atproto::frame::Frame::Info(atproto::frame::InfoEvent {
                        name: "OutdatedCursor".into(),
                        message: Some(
                            "cursor is older than the retained log; starting at the oldest event"
                                .into(),
                        ),
                    });
                    let bytes = atproto::frame::encode_frame(&info).map_err(|e| e.to_string())?;
                    conn.send(Message::Binary(bytes.into())).await?;
                    o - 1
                }
                _ => c,
            }
        }
    };
    let mut feed = Firehose { params };
    stream::run(conn, state, &mut feed, rx, last, cursor.is_some()).await
}

/// An error frame (`{op: -1}` header) with its message.
pub(crate) fn error_frame(error: &str, message: &str) -> Bytes {
    let frame = atproto::frame::Frame::Error(atproto::frame::ErrorFrame {
        error: error.into(),
        message: Some(message.into()),
    });
    Bytes::from(atproto::frame::encode_frame(&frame).unwrap_or_default())
}

#[derive(Deserialize)]
struct ListParams {
    limit: Option<usize>,
    cursor: Option<String>,
}

async fn list_repos(
    State(state): State<AppState>,
    Query(p): Query<ListParams>,
) -> Result<Json<serde_json::Value>, XrpcError> {
    let limit = p.limit.unwrap_or(500).clamp(1, 1000);
    let store = state.store.clone();
    let after = p.cursor.clone();
    let page = blocking(move || store.accounts_page(after.as_deref(), limit)).await?;
    let cursor = (page.len() == limit)
        .then(|| page.last().map(|(d, _)| d.clone()))
        .flatten();
    let repos: Vec<_> = page
        .into_iter()
        .map(|(did, a)| {
            let head = a.head.as_ref().map(ToString::to_string);
            json!({"did": did, "head": head, "rev": a.rev, "active": a.active, "status": a.status})
        })
        .collect();
    Ok(Json(json!({"repos": repos, "cursor": cursor})))
}

#[derive(Deserialize)]
struct CollectionParams {
    collection: String,
    limit: Option<usize>,
    cursor: Option<String>,
}

async fn list_repos_by_collection(
    State(state): State<AppState>,
    Query(p): Query<CollectionParams>,
) -> Result<Json<serde_json::Value>, XrpcError> {
    atproto::syntax::validate_nsid(&p.collection)
        .map_err(|e| bad("InvalidRequest", e.to_string()))?;
    let limit = p.limit.unwrap_or(500).clamp(1, 2000);
    let store = state.store.clone();
    let collection = p.collection.clone();
    let after = p.cursor.clone();
    let dids =
        blocking(move || store.repos_by_collection(&collection, after.as_deref(), limit)).await?;
    let cursor = (dids.len() == limit)
        .then(|| dids.last().cloned())
        .flatten();
    let repos: Vec<_> = dids.into_iter().map(|did| json!({"did": did})).collect();
    Ok(Json(json!({"repos": repos, "cursor": cursor})))
}

#[derive(Deserialize)]
struct DidParams {
    did: String,
}

async fn account(state: &AppState, did: &str) -> Result<crate::store::AccountState, XrpcError> {
    atproto::syntax::validate_did(did).map_err(|e| bad("InvalidRequest", e.to_string()))?;
    let store = state.store.clone();
    let d = did.to_string();
    blocking(move || store.account(&d)).await?.ok_or_else(|| {
        XrpcError(
            StatusCode::NOT_FOUND,
            "RepoNotFound",
            format!("{did} is not known to this relay"),
        )
    })
}

async fn get_latest_commit(
    State(state): State<AppState>,
    Query(p): Query<DidParams>,
) -> Result<Json<serde_json::Value>, XrpcError> {
    let a = account(&state, &p.did).await?;
    match (a.head, a.rev) {
        (Some(cid), Some(rev)) => Ok(Json(json!({"cid": cid.to_string(), "rev": rev}))),
        _ => Err(XrpcError(
            StatusCode::NOT_FOUND,
            "RepoNotFound",
            "no commit seen yet".into(),
        )),
    }
}

async fn get_repo_status(
    State(state): State<AppState>,
    Query(p): Query<DidParams>,
) -> Result<Json<serde_json::Value>, XrpcError> {
    let a = account(&state, &p.did).await?;
    // A desynchronized account (its repair is pending) is reported as the spec's
    // `desynchronized` status; the host's own status comes first.
    let (active, status) = match (a.active, a.status, a.desynchronized) {
        (true, _, true) => (false, Some("desynchronized".to_string())),
        (active, status, _) => (active, status),
    };
    Ok(Json(
        json!({"did": p.did, "active": active, "status": status, "rev": a.rev}),
    ))
}

/// Redirects to the account's PDS as its DID document names it (never to a host merely
/// stored for the account), with the DID percent-encoded.
async fn get_repo(
    State(state): State<AppState>,
    Query(p): Query<DidParams>,
) -> Result<Redirect, XrpcError> {
    account(&state, &p.did).await?;
    let id = state.resolver.identity(&p.did).await.map_err(|e| {
        XrpcError(
            StatusCode::NOT_FOUND,
            "RepoNotFound",
            format!("{}: {e}", p.did),
        )
    })?;
    let pds = id.pds.as_deref().ok_or_else(|| {
        XrpcError(
            StatusCode::NOT_FOUND,
            "RepoNotFound",
            format!("{} names no PDS", p.did),
        )
    })?;
    Ok(Redirect::temporary(&atproto::net::xrpc_url(
        pds,
        "com.atproto.sync.getRepo",
        &[("did", &p.did)],
    )))
}

/// Every known host, paged by URL (`limit` 1–1000, default 200; `cursor`: the last URL
/// of the previous page), with its live status.
async fn list_hosts(
    State(state): State<AppState>,
    Query(p): Query<ListParams>,
) -> Result<Json<serde_json::Value>, XrpcError> {
    let limit = p.limit.unwrap_or(200).clamp(1, 1000);
    let store = state.store.clone();
    let mut hosts = blocking(move || store.hosts()).await?;
    hosts.sort_by(|a, b| a.url.cmp(&b.url));
    let page: Vec<_> = hosts
        .into_iter()
        .filter(|h| p.cursor.as_deref().is_none_or(|c| h.url.as_str() > c))
        .take(limit)
        .collect();
    let cursor = (page.len() == limit)
        .then(|| page.last().map(|h| h.url.clone()))
        .flatten();
    let hosts: Vec<_> = page
        .into_iter()
        .map(|h| {
            let live = state.hosts.get(&h.url);
            let accounts = live.as_ref().map(|l| l.accounts()).unwrap_or(h.accounts);
            let status = live
                .as_ref()
                .map(|l| l.status().as_str().to_string())
                .unwrap_or(h.status);
            json!({"hostname": h.url, "seq": h.cursor, "accountCount": accounts, "status": status})
        })
        .collect();
    Ok(Json(json!({"hosts": hosts, "cursor": cursor})))
}

#[derive(Deserialize)]
struct HostParams {
    hostname: String,
}

async fn get_host_status(
    State(state): State<AppState>,
    Query(p): Query<HostParams>,
) -> Result<Json<serde_json::Value>, XrpcError> {
    let store = state.store.clone();
    let hosts = blocking(move || store.hosts()).await?;
    let want = crate::hosts::normalize_url(&p.hostname);
    let h = hosts
        .into_iter()
        .find(|h| crate::hosts::normalize_url(&h.url) == want)
        .ok_or_else(|| XrpcError(StatusCode::NOT_FOUND, "HostNotFound", p.hostname.clone()))?;
    Ok(Json(host_detail(&state, h)))
}

/// Every host with everything `getHostStatus` says of one, and the use of its limits in
/// the current windows: the operator's view (the dashboard's host table). Admin only.
async fn admin_list_hosts(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, XrpcError> {
    authorized(&state, &headers)?;
    let store = state.store.clone();
    let mut hosts = blocking(move || store.hosts()).await?;
    hosts.sort_by(|a, b| a.url.cmp(&b.url));
    let hosts: Vec<_> = hosts
        .into_iter()
        .take(MAX_ADMIN_HOSTS)
        .map(|h| host_detail(&state, h))
        .collect();
    Ok(Json(json!({"hosts": hosts})))
}

/// Most hosts one `GET /admin/hosts` answers with (the relay crawls at most `max_hosts`).
const MAX_ADMIN_HOSTS: usize = 10_000;

/// A stored host with its live state: status, cursor, counts, limits and their use, lag.
fn host_detail(state: &AppState, h: crate::store::HostState) -> serde_json::Value {
    use std::sync::atomic::Ordering::Relaxed;
    let live = state.hosts.get(&h.url);
    let limits = live
        .as_ref()
        .map(|l| l.limits())
        .or(h.limits)
        .unwrap_or(state.default_limits);
    let count = |f: fn(&crate::hosts::Host) -> u64| live.as_deref().map(f).unwrap_or(0);
    let lag = live.as_ref().and_then(|l| l.lag());
    let [second, hour, day] = live.as_ref().map(|l| l.usage()).unwrap_or_default();
    json!({
        "hostname": h.url,
        "seq": h.cursor,
        "accountCount": live.as_ref().map(|l| l.accounts()).unwrap_or(h.accounts),
        "status": live.as_ref().map(|l| l.status().as_str().to_string()).unwrap_or(h.status),
        "lastError": live.as_ref().and_then(|l| l.last_error()),
        "events": h.events,
        "throttledEvents": count(|l| l.throttled.load(Relaxed)),
        "refusedAccounts": count(|l| l.accounts_refused.load(Relaxed)),
        "accountLimitRaises": count(|l| l.limit_raises.load(Relaxed)),
        "accountLimitGrows": live.as_ref().is_some_and(|l| l.grows()),
        "desynchronizedAccounts": count(|l| l.desynchronized.load(Relaxed)),
        "inFlightEvents": live.as_ref().map(|l| l.in_flight()).unwrap_or(0),
        "limits": limits,
        "usage": {"perSecond": second, "perHour": hour, "perDay": day},
        "lastEventAt": lag.map(|(at, _)| atproto::syntax::datetime_from_millis(at)),
        "lagSeconds": lag.map(|(_, secs)| secs),
    })
}

#[derive(Deserialize)]
struct CrawlBody {
    hostname: String,
}

/// How long a host asking to be crawled has to answer `describeServer`.
const PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A host's base URL from what `requestCrawl` names: a bare hostname (lower-cased, letters,
/// digits and hyphens in at least two labels, no address literal) is https on the default
/// port. In dev mode a full http(s) URL with a port is taken too (loopback test PDSes).
pub fn crawl_url(hostname: &str, dev: bool) -> Result<String, String> {
    let h = hostname.trim().trim_end_matches('/');
    if dev && (h.starts_with("http://") || h.starts_with("https://")) {
        return Ok(h.to_string());
    }
    let h = h.strip_prefix("https://").unwrap_or(h).to_ascii_lowercase();
    let labels: Vec<&str> = h.split('.').collect();
    let label_ok = |l: &&str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    let tld_ok = labels
        .last()
        .is_some_and(|t| t.bytes().any(|b| b.is_ascii_alphabetic()));
    if h.len() > 253 || labels.len() < 2 || !labels.iter().all(label_ok) || !tld_ok {
        return Err(format!("{hostname:?} is not a hostname"));
    }
    Ok(format!("https://{h}"))
}

/// `requestCrawl`: the hostname is checked, the host is asked `describeServer` (through the
/// egress guard) before anything is stored, and the number of hosts and of requests is
/// bounded. Each refusal says why.
async fn request_crawl(
    State(state): State<AppState>,
    Json(body): Json<CrawlBody>,
) -> Result<Json<serde_json::Value>, XrpcError> {
    if state.crawl_limiter.check().is_err() {
        return Err(XrpcError(
            StatusCode::TOO_MANY_REQUESTS,
            "RateLimitExceeded",
            "too many crawl requests; try again in a minute".into(),
        ));
    }
    let url = crawl_url(&body.hostname, state.dev).map_err(|e| bad("InvalidRequest", e))?;
    if let Some(h) = state.hosts.get(&url) {
        if h.status() == crate::hosts::HostStatus::Banned {
            return Err(XrpcError(
                StatusCode::FORBIDDEN,
                "HostBanned",
                format!("{url} is banned by this relay's operator"),
            ));
        }
        // Known: make sure it is crawled (a no-op when it is).
        tell(&state, crate::HostCommand::Crawl(url)).await?;
        return Ok(Json(json!({})));
    }
    // Every stored host is registered at start, and every new one when it is crawled.
    if state.hosts.len() >= state.max_hosts {
        return Err(XrpcError(
            StatusCode::SERVICE_UNAVAILABLE,
            "TooManyHosts",
            format!("this relay crawls at most {} hosts", state.max_hosts),
        ));
    }
    probe(&state, &url).await?;
    add_host(&state, url).await
}

/// Asks a host `describeServer`: it must answer with JSON naming its DID.
async fn probe(state: &AppState, url: &str) -> Result<(), XrpcError> {
    let unreachable = |why: String| {
        XrpcError(
            StatusCode::BAD_REQUEST,
            "HostNotReachable",
            format!("{url} did not answer com.atproto.server.describeServer: {why}"),
        )
    };
    let endpoint = atproto::net::xrpc_url(url, "com.atproto.server.describeServer", &[]);
    let request = state
        .probe
        .get(&endpoint)
        .map_err(|e| bad("InvalidRequest", e.to_string()))?;
    let answer = async {
        let resp = request.send().await.map_err(|e| e.to_string())?;
        if !resp.status().is_success() {
            return Err(format!("HTTP {}", resp.status()));
        }
        let body = resp.bytes().await.map_err(|e| e.to_string())?;
        if body.len() > 64 * 1024 {
            return Err("answer too large".into());
        }
        let v: serde_json::Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
        match v["did"].as_str() {
            Some(did) if atproto::syntax::validate_did(did).is_ok() => Ok(()),
            _ => Err("the answer names no DID".into()),
        }
    };
    tokio::time::timeout(PROBE_TIMEOUT, answer)
        .await
        .map_err(|_| unreachable(format!("no answer within {PROBE_TIMEOUT:?}")))?
        .map_err(unreachable)
}

async fn add_host(state: &AppState, url: String) -> Result<Json<serde_json::Value>, XrpcError> {
    if !(url.starts_with("https://") || (state.dev && url.starts_with("http://"))) {
        return Err(bad(
            "InvalidRequest",
            "host must be https (http only in dev mode)",
        ));
    }
    atproto::identity::check_host(&url, state.dev)
        .map_err(|e| bad("InvalidRequest", e.to_string()))?;
    tell(state, crate::HostCommand::Crawl(url)).await?;
    Ok(Json(json!({})))
}

#[derive(Deserialize)]
struct AdminHost {
    url: String,
}

async fn admin_add_host(
    State(state): State<AppState>,
    headers: HeaderMap,
    Json(body): Json<AdminHost>,
) -> Result<Json<serde_json::Value>, XrpcError> {
    authorized(&state, &headers)?;
    add_host(&state, body.url.trim_end_matches('/').to_string()).await
}

/// The admin token, compared in constant time (as SHA-256 digests, so neither its
/// content nor its length leaks through timing).
fn authorized(state: &AppState, headers: &HeaderMap) -> Result<(), XrpcError> {
    use sha2::Digest;
    use subtle::ConstantTimeEq;
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let ok = match token {
        Some(t) if !state.admin_token.is_empty() => {
            let given = sha2::Sha256::digest(t.as_bytes());
            let want = sha2::Sha256::digest(state.admin_token.as_bytes());
            bool::from(given.ct_eq(&want))
        }
        _ => false,
    };
    if !ok {
        return Err(XrpcError(
            StatusCode::UNAUTHORIZED,
            "AuthRequired",
            "admin token required".into(),
        ));
    }
    Ok(())
}

/// Tells the crawler `command`.
async fn tell(state: &AppState, command: crate::HostCommand) -> Result<(), XrpcError> {
    state.new_hosts.send(command).await.map_err(internal)
}

/// A known host by its URL, for the admin endpoints.
fn known_host(state: &AppState, url: &str) -> Result<Arc<crate::hosts::Host>, XrpcError> {
    state
        .hosts
        .get(url.trim_end_matches('/'))
        .ok_or_else(|| XrpcError(StatusCode::NOT_FOUND, "HostNotFound", url.to_string()))
}

/// Bans a host: it is no longer crawled, its `requestCrawl` is refused, and the ban is
/// stored.
async fn admin_ban(
    State(state): State<AppState>,
    headers: HeaderMap,
    Json(body): Json<AdminHost>,
) -> Result<Json<serde_json::Value>, XrpcError> {
    set_banned(&state, &headers, &body.url, true).await
}

/// Lifts a ban and crawls the host again from its cursor.
async fn admin_unban(
    State(state): State<AppState>,
    headers: HeaderMap,
    Json(body): Json<AdminHost>,
) -> Result<Json<serde_json::Value>, XrpcError> {
    set_banned(&state, &headers, &body.url, false).await
}

async fn set_banned(
    state: &AppState,
    headers: &HeaderMap,
    url: &str,
    banned: bool,
) -> Result<Json<serde_json::Value>, XrpcError> {
    use crate::hosts::HostStatus;
    authorized(state, headers)?;
    let host = known_host(state, url)?;
    let status = if banned {
        HostStatus::Banned
    } else {
        HostStatus::Active
    };
    host.set_status(status);
    let (store, u) = (state.store.clone(), host.url.to_string());
    blocking(move || store.put_host(&u, status.as_str())).await?;
    let url = host.url.to_string();
    if banned {
        tell(state, crate::HostCommand::Stop(url)).await?;
        tracing::warn!(host = %host.url, "host banned by the operator");
    } else {
        tell(state, crate::HostCommand::Crawl(url)).await?;
        tracing::info!(host = %host.url, "host unbanned by the operator");
    }
    Ok(Json(json!({"status": status.as_str()})))
}

/// Stops crawling a host and forgets its cursor, status and limits.
async fn admin_remove(
    State(state): State<AppState>,
    headers: HeaderMap,
    Json(body): Json<AdminHost>,
) -> Result<Json<serde_json::Value>, XrpcError> {
    authorized(&state, &headers)?;
    let host = known_host(&state, &body.url)?;
    tell(&state, crate::HostCommand::Stop(host.url.to_string())).await?;
    state.hosts.remove(&host.url);
    let (store, url) = (state.store.clone(), host.url.to_string());
    blocking(move || store.remove_host(&url)).await?;
    tracing::warn!(host = %host.url, "host removed by the operator");
    Ok(Json(json!({"removed": true})))
}

#[derive(Deserialize)]
struct CursorBody {
    url: String,
    /// Where reading resumes (0: the host's whole retained stream; events already in the
    /// log are recognised and skipped).
    cursor: Option<i64>,
}

/// Moves a host's cursor and reconnects from there.
async fn admin_reset_cursor(
    State(state): State<AppState>,
    headers: HeaderMap,
    Json(body): Json<CursorBody>,
) -> Result<Json<serde_json::Value>, XrpcError> {
    authorized(&state, &headers)?;
    let host = known_host(&state, &body.url)?;
    let cursor = body.cursor.unwrap_or(0).max(0);
    // Stop first, so nothing the old session reads settles past the new cursor.
    tell(&state, crate::HostCommand::Stop(host.url.to_string())).await?;
    host.reset_cursor(cursor);
    let (store, url) = (state.store.clone(), host.url.to_string());
    blocking(move || store.set_host_cursor(&url, cursor)).await?;
    tell(&state, crate::HostCommand::Crawl(host.url.to_string())).await?;
    tracing::warn!(host = %host.url, cursor, "host cursor reset by the operator");
    Ok(Json(json!({"cursor": cursor})))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct LimitsBody {
    url: String,
    per_second: Option<u64>,
    per_hour: Option<u64>,
    per_day: Option<u64>,
    accounts: Option<u64>,
}

/// Changes a host's limits while the relay runs; they are stored and survive restarts.
async fn admin_set_limits(
    State(state): State<AppState>,
    headers: HeaderMap,
    Json(body): Json<LimitsBody>,
) -> Result<Json<serde_json::Value>, XrpcError> {
    authorized(&state, &headers)?;
    let url = body.url.trim_end_matches('/').to_string();
    let host = state
        .hosts
        .get(&url)
        .ok_or_else(|| XrpcError(StatusCode::NOT_FOUND, "HostNotFound", url.clone()))?;
    let mut limits = host.limits();
    limits.per_second = body.per_second.unwrap_or(limits.per_second);
    limits.per_hour = body.per_hour.unwrap_or(limits.per_hour);
    limits.per_day = body.per_day.unwrap_or(limits.per_day);
    limits.accounts = body.accounts.unwrap_or(limits.accounts);
    host.set_limits(limits);
    let store = state.store.clone();
    blocking(move || store.put_host_limits(&url, limits)).await?;
    Ok(Json(json!({"limits": limits})))
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [("content-type", "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}
