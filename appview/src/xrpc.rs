//! The XRPC handlers: parameters checked against the lexicons' bounds, the caller
//! authenticated, one store query with the caller inside it, items in `agent.comms.defs#item`
//! shape.

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use store::records::{Page, RecordRow, Visibility};

use crate::Appview;

/// An XRPC error: `{error, message}` with a status.
pub struct XrpcError(pub StatusCode, pub &'static str, pub String);

impl IntoResponse for XrpcError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({"error": self.1, "message": self.2}))).into_response()
    }
}

fn bad(msg: impl Into<String>) -> XrpcError {
    XrpcError(StatusCode::BAD_REQUEST, "InvalidRequest", msg.into())
}

/// A store failure: logged in full, answered without internals.
fn unavailable(e: impl std::fmt::Display) -> XrpcError {
    tracing::error!(error = %e, "store query failed");
    XrpcError(
        StatusCode::INTERNAL_SERVER_ERROR,
        "InternalServerError",
        "the index could not answer".into(),
    )
}

type Answer = Result<Json<Value>, XrpcError>;

fn too_many(what: &str) -> XrpcError {
    XrpcError(
        StatusCode::TOO_MANY_REQUESTS,
        "RateLimitExceeded",
        format!("too many requests {what}; slow down"),
    )
}

/// Per-address rate limit, before anything else is done for the request. (Addresses come
/// from the connection; a server without connection info skips this check.)
async fn per_ip(
    State(app): State<Appview>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let ip = request
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip());
    if let Some(ip) = ip {
        if app.inner.guard.per_ip.check_key(&ip).is_err() {
            return too_many("from this address").into_response();
        }
    }
    next.run(request).await
}

/// The appview's routes; its page is at `/appview`, and at `/` too when `page_at_root`
/// (the appview alone: under `agentnet up` the node's dashboard is there).
pub fn routes(app: Appview, page_at_root: bool) -> Router {
    let page = if page_at_root {
        Router::new().route("/", get(dashboard))
    } else {
        Router::new()
    };
    Router::new()
        .route("/xrpc/agent.comms.getInbox", get(get_inbox))
        .route("/xrpc/agent.comms.getThread", get(get_thread))
        .route("/xrpc/agent.comms.listTasks", get(list_tasks))
        .route("/xrpc/agent.comms.listHandoffs", get(list_handoffs))
        .route("/xrpc/agent.comms.listBroadcasts", get(list_broadcasts))
        .route("/xrpc/agent.comms.listAgents", get(list_agents))
        .route("/xrpc/agent.memory.recall", get(recall))
        .route(
            &format!("/xrpc/{}", crate::live::NSID),
            get(crate::live::subscribe_inbox),
        )
        .route("/.well-known/did.json", get(did_document))
        .route(PAGE, get(dashboard))
        .merge(page)
        .layer(axum::middleware::from_fn_with_state(app.clone(), per_ip))
        .layer(axum::middleware::from_fn_with_state(app.clone(), observe))
        .with_state(app)
}

/// Counts every answer by method and status, and times it (rate-limited ones included).
async fn observe(
    State(app): State<Appview>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let method = crate::metrics::Method::of_path(request.uri().path());
    let started = std::time::Instant::now();
    let response = next.run(request).await;
    app.inner
        .metrics
        .answered(method, response.status().as_u16(), started.elapsed());
    response
}

impl Appview {
    /// The verified caller for method `lxm`, or `None` without an `Authorization` header.
    /// A header that does not verify is refused, never treated as anonymous.
    pub(crate) async fn caller(
        &self,
        headers: &HeaderMap,
        lxm: &str,
    ) -> Result<Option<String>, XrpcError> {
        let Some(value) = headers.get(axum::http::header::AUTHORIZATION) else {
            return Ok(None);
        };
        let token = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| {
                self.inner
                    .metrics
                    .auth_failed(crate::metrics::AuthFailure::Malformed);
                XrpcError(
                    StatusCode::UNAUTHORIZED,
                    "AuthenticationRequired",
                    "expected `Authorization: Bearer <service JWT>`".into(),
                )
            })?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        // The audience is the appview's DID, or its service reference (`did#agentnet_appview`,
        // as PDS proxying names it).
        let service = format!("{}{}", self.inner.did, crate::SERVICE_FRAGMENT);
        let parsed = atproto::auth::Unverified::parse(token);
        let aud = match &parsed {
            Ok(t) if t.claims.aud == service => service.as_str(),
            _ => self.inner.did.as_str(),
        };
        // A token naming an issuer not in the cache costs a DID document fetch: those are
        // bounded for all callers together.
        if let Ok(t) = &parsed {
            if self.inner.resolver.cached(t.claims.did()).is_none()
                && self.inner.guard.issuers.check().is_err()
            {
                return Err(too_many("naming unknown token issuers"));
            }
        }
        match atproto::auth::verify(token, aud, Some(lxm), &self.inner.resolver, now).await {
            Ok(claims) => {
                let did = claims.did().to_string();
                if self.inner.guard.per_did.check_key(&did).is_err() {
                    return Err(too_many("from this caller"));
                }
                Ok(Some(did))
            }
            Err(e) => {
                tracing::info!(reason = %e, lxm, "refused a service token");
                let (name, why) = if e == atproto::auth::AuthError::Expired {
                    ("ExpiredToken", crate::metrics::AuthFailure::Expired)
                } else {
                    ("InvalidToken", crate::metrics::AuthFailure::Invalid)
                };
                self.inner.metrics.auth_failed(why);
                Err(XrpcError(
                    StatusCode::UNAUTHORIZED,
                    name,
                    "authentication failed".into(),
                ))
            }
        }
    }

    /// A turn at the stores: at most `max_queries` at once, each waiting at most the
    /// queue time, then 503.
    async fn turn(&self) -> Result<tokio::sync::SemaphorePermit<'_>, XrpcError> {
        let guard = &self.inner.guard;
        match tokio::time::timeout(guard.queue, guard.queries.acquire()).await {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(XrpcError(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailable",
                "the appview is at its query limit; retry shortly".into(),
            )),
        }
    }

    /// Runs a store query on a blocking thread (chDB calls block), in turn.
    pub(crate) async fn query<T: Send + 'static>(
        &self,
        f: impl FnOnce(&store::Records) -> Result<T, store::records::RecordError> + Send + 'static,
    ) -> Result<T, XrpcError> {
        let _turn = self.turn().await?;
        let app = self.clone();
        tokio::task::spawn_blocking(move || f(&app.inner.records))
            .await
            .map_err(unavailable)?
            .map_err(|e| match e {
                store::records::RecordError::BadCursor(c) => bad(format!("bad cursor {c:?}")),
                e => unavailable(e),
            })
    }
}

/// One record as `agent.comms.defs#item`: plaintext when public or readable for the caller
/// (the appview opened it and the caller may see it), else the sealed envelope.
pub fn item(r: &RecordRow) -> Value {
    let mut v = json!({
        "uri": r.uri,
        "cid": r.cid,
        "author": r.author,
        "collection": r.collection,
        "createdAt": r.created_at,
        "privacy": match r.visibility { Visibility::Public => "public", Visibility::Shared => "shared" },
        "record": r.record.clone().or_else(|| r.sealed.clone()).unwrap_or(Value::Null),
    });
    if r.indexed_ms > 0 {
        v["indexedAt"] = json!(atproto::syntax::datetime_from_millis(r.indexed_ms));
    }
    if r.visibility == Visibility::Shared {
        v["recipients"] = json!(r.recipients);
    }
    v
}

fn items(rows: &[RecordRow]) -> Vec<Value> {
    rows.iter().map(item).collect()
}

/// A page of items and the cursor for the next.
fn listed(listing: store::records::Listing) -> Answer {
    Ok(Json(
        json!({"items": items(&listing.rows), "cursor": listing.cursor}),
    ))
}

fn did_param(name: &str, v: Option<String>) -> Result<Option<String>, XrpcError> {
    if let Some(d) = &v {
        atproto::syntax::validate_did(d).map_err(|e| bad(format!("{name}: {e}")))?;
    }
    Ok(v)
}

fn datetime_param(name: &str, v: Option<String>) -> Result<Option<String>, XrpcError> {
    if let Some(d) = &v {
        atproto::syntax::validate_datetime(d).map_err(|e| bad(format!("{name}: {e}")))?;
    }
    Ok(v)
}

fn limit_param(v: Option<usize>, default: usize, max: usize) -> Result<usize, XrpcError> {
    match v {
        None => Ok(default),
        Some(n) if (1..=max).contains(&n) => Ok(n),
        Some(n) => Err(bad(format!("limit {n} is outside 1..={max}"))),
    }
}

fn text_param(name: &str, v: Option<String>, max: usize) -> Result<Option<String>, XrpcError> {
    match v {
        Some(s) if s.len() > max => Err(bad(format!("{name} is longer than {max} bytes"))),
        v => Ok(v),
    }
}

fn page(limit: Option<usize>, cursor: Option<String>) -> Result<Page, XrpcError> {
    Ok(Page {
        limit: limit_param(limit, 50, 100)?,
        cursor: text_param("cursor", cursor, 256)?,
    })
}

#[derive(Deserialize)]
struct InboxParams {
    recipient: Option<String>,
    since: Option<String>,
    limit: Option<usize>,
    cursor: Option<String>,
}

async fn get_inbox(
    State(app): State<Appview>,
    headers: HeaderMap,
    Query(p): Query<InboxParams>,
) -> Answer {
    let caller = app.caller(&headers, "agent.comms.getInbox").await?;
    let recipient = did_param("recipient", p.recipient)?
        .or_else(|| caller.clone())
        .ok_or_else(|| bad("recipient is required without authentication"))?;
    let since = datetime_param("since", p.since)?;
    let page = page(p.limit, p.cursor)?;
    let listing = app
        .query(move |r| r.inbox(caller.as_deref(), &recipient, since.as_deref(), &page))
        .await?;
    listed(listing)
}

#[derive(Deserialize)]
struct ThreadParams {
    uri: Option<String>,
}

async fn get_thread(
    State(app): State<Appview>,
    headers: HeaderMap,
    Query(p): Query<ThreadParams>,
) -> Answer {
    let caller = app.caller(&headers, "agent.comms.getThread").await?;
    let uri = p.uri.ok_or_else(|| bad("uri is required"))?;
    atproto::syntax::parse_at_uri(&uri).map_err(|e| bad(format!("uri: {e}")))?;
    let found = app
        .query(move |r| r.thread(caller.as_deref(), &uri))
        .await?;
    match found {
        Some(rows) => Ok(Json(json!({"items": items(&rows)}))),
        None => Err(XrpcError(
            StatusCode::NOT_FOUND,
            "NotFound",
            "no such record visible to the caller".into(),
        )),
    }
}

#[derive(Deserialize)]
struct TaskParams {
    assignee: Option<String>,
    sender: Option<String>,
    status: Option<String>,
    limit: Option<usize>,
    cursor: Option<String>,
}

async fn list_tasks(
    State(app): State<Appview>,
    headers: HeaderMap,
    Query(p): Query<TaskParams>,
) -> Answer {
    let caller = app.caller(&headers, "agent.comms.listTasks").await?;
    let mut assignee = did_param("assignee", p.assignee)?;
    let sender = did_param("sender", p.sender)?;
    if assignee.is_none() && sender.is_none() {
        // An agent asking for its tasks without naming itself.
        assignee = caller.clone();
    }
    if assignee.is_none() && sender.is_none() {
        return Err(bad("assignee or sender is required without authentication"));
    }
    let status = text_param("status", p.status, 64)?;
    let page = page(p.limit, p.cursor)?;
    let (tasks, cursor) = app
        .query(move |r| {
            r.tasks(
                caller.as_deref(),
                assignee.as_deref(),
                sender.as_deref(),
                status.as_deref(),
                &page,
            )
        })
        .await?;
    let tasks: Vec<Value> = tasks
        .iter()
        .map(|t| {
            let mut v = json!({"request": item(&t.request), "status": t.status});
            if let Some(r) = &t.response {
                v["response"] = item(r);
            }
            v
        })
        .collect();
    Ok(Json(json!({"tasks": tasks, "cursor": cursor})))
}

#[derive(Deserialize)]
struct HandoffParams {
    to: Option<String>,
    from: Option<String>,
    limit: Option<usize>,
    cursor: Option<String>,
}

async fn list_handoffs(
    State(app): State<Appview>,
    headers: HeaderMap,
    Query(p): Query<HandoffParams>,
) -> Answer {
    let caller = app.caller(&headers, "agent.comms.listHandoffs").await?;
    let mut to = did_param("to", p.to)?;
    let from = did_param("from", p.from)?;
    if to.is_none() && from.is_none() {
        to = caller.clone();
    }
    let page = page(p.limit, p.cursor)?;
    let listing = app
        .query(move |r| r.handoffs(caller.as_deref(), to.as_deref(), from.as_deref(), &page))
        .await?;
    listed(listing)
}

#[derive(Deserialize)]
struct BroadcastParams {
    topic: Option<String>,
    audience: Option<String>,
    since: Option<String>,
    limit: Option<usize>,
    cursor: Option<String>,
}

async fn list_broadcasts(
    State(app): State<Appview>,
    headers: HeaderMap,
    Query(p): Query<BroadcastParams>,
) -> Answer {
    let caller = app.caller(&headers, "agent.comms.listBroadcasts").await?;
    let topic = text_param("topic", p.topic, 256)?;
    let audience = text_param("audience", p.audience, 256)?;
    let since = datetime_param("since", p.since)?;
    let page = page(p.limit, p.cursor)?;
    let listing = app
        .query(move |r| {
            r.broadcasts(
                caller.as_deref(),
                topic.as_deref(),
                audience.as_deref(),
                since.as_deref(),
                &page,
            )
        })
        .await?;
    listed(listing)
}

#[derive(Deserialize)]
struct AgentParams {
    limit: Option<usize>,
    cursor: Option<String>,
}

async fn list_agents(
    State(app): State<Appview>,
    headers: HeaderMap,
    Query(p): Query<AgentParams>,
) -> Answer {
    let caller = app.caller(&headers, "agent.comms.listAgents").await?;
    let limit = limit_param(p.limit, 100, store::records::MAX_AGENTS)?;
    let after = did_param("cursor", p.cursor)?;
    let agents = app
        .query(move |r| r.agents(caller.as_deref(), limit, after.as_deref()))
        .await?;
    let cursor = (agents.len() == limit)
        .then(|| agents.last().map(|a| a.did.clone()))
        .flatten();
    let agents: Vec<Value> = agents
        .into_iter()
        .map(|a| {
            let mut v = json!({"did": a.did});
            if let Some(k) = a.encryption_key {
                v["encryptionKey"] = json!(k);
            }
            if !a.last_seen.is_empty() {
                v["lastSeenAt"] = json!(a.last_seen);
            }
            v
        })
        .collect();
    Ok(Json(json!({"agents": agents, "cursor": cursor})))
}

#[derive(Deserialize)]
struct RecallParams {
    q: Option<String>,
    limit: Option<usize>,
    author: Option<String>,
    collection: Option<String>,
    since: Option<String>,
}

async fn recall(
    State(app): State<Appview>,
    headers: HeaderMap,
    Query(p): Query<RecallParams>,
) -> Answer {
    let caller = app.caller(&headers, "agent.memory.recall").await?;
    let q = text_param("q", p.q, 2000)?
        .filter(|q| !q.trim().is_empty())
        .ok_or_else(|| bad("q is required"))?;
    let limit = limit_param(p.limit, 10, 50)?;
    let author = did_param("author", p.author)?;
    if let Some(c) = &p.collection {
        atproto::syntax::validate_nsid(c).map_err(|e| bad(format!("collection: {e}")))?;
    }
    let since_ms = datetime_param("since", p.since)?
        .map(|s| atproto::syntax::datetime_to_millis(&s).unwrap_or(0));
    let Some((batcher, vectors)) = app.inner.recall.clone() else {
        return Err(XrpcError(
            StatusCode::NOT_IMPLEMENTED,
            "MethodNotImplemented",
            "recall needs an embedding model (--model-dir)".into(),
        ));
    };
    let turn = app.turn().await?;
    let vector = batcher.embed(q).await.map_err(unavailable)?;
    let query = store::vectors::Query {
        vector,
        limit,
        author,
        collection: p.collection,
        since_ms,
    };
    let who = caller.clone();
    let hits = tokio::task::spawn_blocking(move || vectors.search(who.as_deref(), &query))
        .await
        .map_err(unavailable)?
        .map_err(unavailable)?;
    drop(turn);
    let uris: Vec<String> = hits.iter().map(|h| h.uri.clone()).collect();
    // The rows are read with the caller's rule too: a point the index no longer shows (or
    // never showed this caller) is left out.
    let rows = app
        .query(move |r| r.get_many(caller.as_deref(), &uris))
        .await?;
    let results: Vec<Value> = hits
        .iter()
        .filter_map(|h| {
            let row = rows.iter().find(|r| r.uri == h.uri)?;
            Some(json!({"item": item(row), "score": (h.score * 10_000.0).round().clamp(-10_000.0, 10_000.0) as i64}))
        })
        .collect();
    Ok(Json(json!({"results": results})))
}

async fn did_document(State(app): State<Appview>) -> Json<Value> {
    Json(app.did_document())
}

/// Where the appview's own page is.
pub const PAGE: &str = "/appview";

/// The operator's dashboard: what the index holds, by collection and privacy, and where
/// the queries are. Aggregates only; no record content.
async fn dashboard(State(app): State<Appview>) -> Result<Html<String>, XrpcError> {
    let counts = app.query(|r| r.counts()).await?;
    let agents = app
        .query(|r| r.agents(None, store::records::MAX_AGENTS, None))
        .await?
        .len();
    // Anonymous visitors see public aggregates only: nothing about shared records, not
    // even how many there are of each kind.
    let mut rows = String::new();
    let mut total = 0;
    for (collection, visibility, n) in counts.iter().filter(|(_, v, _)| v == "public") {
        total += n;
        rows.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{n}</td></tr>",
            escape(collection),
            escape(visibility)
        ));
    }
    let recall = if app.inner.recall.is_some() {
        "on"
    } else {
        "off (no model)"
    };
    Ok(Html(format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><meta http-equiv=\"refresh\" content=\"5\">\
         <title>agentnet appview</title><style>body{{font-family:sans-serif;margin:2em}}\
         td,th{{padding:.2em 1em;text-align:left}}</style></head><body>\
         <h1>agentnet appview</h1><p>DID <code>{did}</code> · recall {recall} · \
         {total} public records indexed · {agents}{more} agents with public records</p>\
         <table><tr><th>collection</th><th>privacy</th><th>records</th></tr>{rows}</table>\
         <h2>Queries</h2><ul>\
         <li><a href=\"/xrpc/agent.comms.listAgents\">agent.comms.listAgents</a></li>\
         <li><a href=\"/xrpc/agent.comms.listBroadcasts\">agent.comms.listBroadcasts</a></li>\
         <li>agent.comms.getInbox?recipient=DID · getThread?uri=AT-URI · listTasks · listHandoffs</li>\
         <li>agent.memory.recall?q=TEXT</li>\
         <li><a href=\"/.well-known/did.json\">DID document</a></li></ul>\
         <p>Anonymous views show public records only; send a service JWT \
         (<code>Authorization: Bearer</code>, <code>aud</code> = this DID) to see what was shared with you.</p>\
         </body></html>",
        did = escape(app.did()),
        more = if agents == store::records::MAX_AGENTS { "+" } else { "" },
    )))
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
