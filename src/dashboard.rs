//! The operator's dashboard: one page, its script and style built into the binary (no CDN),
//! fed live over server-sent events with the services' own metrics.
//!
//! Everything on the live stream is an aggregate: the services' metrics carry fixed label
//! sets only (reasons, queries, statuses; never a DID, host or collection), so anonymous
//! visitors see exactly what `/metrics` already shows. Per-host detail, the last events
//! and the operator's actions are the relay's admin endpoints (`GET /admin/hosts`, the
//! `POST /admin/hosts/…` actions), which the page calls with the admin token the operator
//! types in; without it they answer 401 and the page shows none of it.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use futures::StreamExt;
use serde_json::{json, Map, Value};

/// One service's metrics as Prometheus text, read in process when the page asks.
pub type Exposition = Arc<dyn Fn() -> String + Send + Sync>;

/// What the dashboard shows: each service present in this process. A service that is not
/// here (the relay alone has no indexer) is left off the page.
#[derive(Clone, Default)]
pub struct Sources {
    /// The relay's metrics.
    pub relay: Option<Exposition>,
    /// The indexer's metrics.
    pub indexer: Option<Exposition>,
    /// The appview's metrics.
    pub appview: Option<Exposition>,
}

/// How often the live stream sends a snapshot.
pub const INTERVAL: Duration = Duration::from_secs(1);

/// Most pages watching at once; more are told 503 (each costs a snapshot a second, and
/// snapshots are shared, but connections are not free).
pub const MAX_WATCHERS: usize = 256;

/// The dashboard's state: its sources, and the latest snapshot (shared by every watcher,
/// so a hundred open pages cost one snapshot a second, not a hundred).
struct Shared {
    sources: Sources,
    /// Turns true when the server is shutting down: every live stream ends, so an open
    /// page does not hold the graceful shutdown open.
    closing: tokio::sync::watch::Receiver<bool>,
    latest: Mutex<Option<(Instant, Arc<str>)>>,
    watchers: Arc<tokio::sync::Semaphore>,
}

const PAGE: &str = include_str!("dashboard/index.html");
const SCRIPT: &str = include_str!("dashboard/dashboard.js");
const STYLE: &str = include_str!("dashboard/dashboard.css");

/// The dashboard's routes: the page at `/`, its assets under `/dashboard/`, and the live
/// stream at `/dashboard/live`, which ends when `closing` turns true (or its sender goes).
pub fn routes(sources: Sources, closing: tokio::sync::watch::Receiver<bool>) -> Router {
    let shared = Arc::new(Shared {
        sources,
        closing,
        latest: Mutex::new(None),
        watchers: Arc::new(tokio::sync::Semaphore::new(MAX_WATCHERS)),
    });
    Router::new()
        .route("/", get(|| async { Html(PAGE) }))
        .route(
            "/dashboard/dashboard.js",
            get(|| async { asset("text/javascript; charset=utf-8", SCRIPT) }),
        )
        .route(
            "/dashboard/dashboard.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE) }),
        )
        .route("/dashboard/live", get(live))
        .route("/dashboard/snapshot", get(snapshot_once))
        .with_state(shared)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// One snapshot as JSON (what the live stream sends every second), for scripts and checks.
async fn snapshot_once(State(shared): State<Arc<Shared>>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        shared.snapshot().to_string(),
    )
        .into_response()
}

/// The live stream: a `stats` event with a snapshot every [`INTERVAL`].
async fn live(State(shared): State<Arc<Shared>>) -> Response {
    let Ok(permit) = shared.watchers.clone().try_acquire_owned() else {
        return (StatusCode::SERVICE_UNAVAILABLE, "too many dashboards open").into_response();
    };
    let mut ticks = tokio::time::interval(INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut closing = shared.closing.clone();
    let closed = async move {
        let _ = closing.wait_for(|c| *c).await;
    };
    let stream = futures::stream::unfold(
        (shared, ticks, permit),
        |(shared, mut ticks, permit)| async move {
            ticks.tick().await;
            let event = Event::default().event("stats").data(&*shared.snapshot());
            Some((Ok::<_, Infallible>(event), (shared, ticks, permit)))
        },
    )
    .take_until(closed);
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

impl Shared {
    /// The latest snapshot, made again when the one held is older than half an interval.
    fn snapshot(&self) -> Arc<str> {
        let mut latest = self.latest.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, text)) = latest.as_ref() {
            if at.elapsed() < INTERVAL / 2 {
                return text.clone();
            }
        }
        let text: Arc<str> = snapshot(&self.sources).to_string().into();
        *latest = Some((Instant::now(), text.clone()));
        text
    }
}

/// `{"at": ms, "relay": {metric: [{"l": labels, "v": value}, …]}, "indexer": …, "appview": …}`,
/// a service that is not here being `null`.
pub fn snapshot(sources: &Sources) -> Value {
    let read = |s: &Option<Exposition>| s.as_ref().map(|f| Value::Object(parse(&f())));
    json!({
        "at": atproto::syntax::now_millis(),
        "relay": read(&sources.relay),
        "indexer": read(&sources.indexer),
        "appview": read(&sources.appview),
    })
}

/// A Prometheus text exposition as `{name: [{"l": {label: value}, "v": number}, …]}`
/// (comments, and values that are not finite numbers, left out).
pub fn parse(text: &str) -> Map<String, Value> {
    let mut out = Map::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((name, labels, rest)) = split_series(line) else {
            continue;
        };
        let Some(value) = rest
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
            .filter(|v| v.is_finite())
        else {
            continue;
        };
        let entry = json!({"l": labels, "v": value});
        match out.get_mut(name) {
            Some(Value::Array(series)) => series.push(entry),
            _ => {
                out.insert(name.to_string(), Value::Array(vec![entry]));
            }
        }
    }
    out
}

/// A series line's name, labels and what follows them.
fn split_series(line: &str) -> Option<(&str, Map<String, Value>, &str)> {
    let Some(open) = line.find('{') else {
        let (name, rest) = line.split_once(char::is_whitespace)?;
        return Some((name, Map::new(), rest));
    };
    let name = &line[..open];
    let mut labels = Map::new();
    let mut chars = line[open + 1..].char_indices();
    let base = open + 1;
    loop {
        // A label name, up to `=`, or the closing brace.
        let mut key = String::new();
        loop {
            let (i, c) = chars.next()?;
            match c {
                '}' => return Some((name, labels, &line[base + i + 1..])),
                '=' => break,
                ',' | ' ' if key.is_empty() => {}
                c => key.push(c),
            }
        }
        // A quoted value with `\\`, `\"` and `\n` escapes.
        if chars.next()?.1 != '"' {
            return None;
        }
        let mut value = String::new();
        loop {
            match chars.next()?.1 {
                '"' => break,
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                c => value.push(c),
            }
        }
        labels.insert(key, Value::String(value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_labels_and_values() {
        let text = "# HELP x_total Things.\n# TYPE x_total counter\nx_total 12\n\
                    y_total{reason=\"too_big\",kind=\"a\\\"b\"} 3\n\
                    y_total{reason=\"slow\"} 4.5\n\
                    z_seconds_bucket{le=\"+Inf\"} 7\n\
                    bad_value NaN\nnot a series\n";
        let m = parse(text);
        assert_eq!(m["x_total"], json!([{"l": {}, "v": 12.0}]));
        assert_eq!(
            m["y_total"],
            json!([
                {"l": {"reason": "too_big", "kind": "a\"b"}, "v": 3.0},
                {"l": {"reason": "slow"}, "v": 4.5}
            ])
        );
        assert_eq!(m["z_seconds_bucket"][0]["l"]["le"], "+Inf");
        assert!(!m.contains_key("bad_value"));
        assert!(!m.contains_key("not"));
        assert_eq!(m.len(), 3);
    }

    #[test]
    fn a_truncated_line_is_left_out() {
        let m = parse("a{reason=\"x\" 1\nb{reason=\"x\",} 2\n");
        assert!(!m.contains_key("a"));
        assert_eq!(m["b"], json!([{"l": {"reason": "x"}, "v": 2.0}]));
    }

    #[test]
    fn a_missing_service_is_null() {
        let sources = Sources {
            relay: Some(Arc::new(|| "relay_head_seq 41\n".to_string())),
            ..Sources::default()
        };
        let s = snapshot(&sources);
        assert_eq!(s["relay"]["relay_head_seq"][0]["v"], 41.0);
        assert!(s["indexer"].is_null());
        assert!(s["appview"].is_null());
        assert!(s["at"].as_i64().is_some_and(|t| t > 0));
    }
}
