//! The appview's metrics: registered once on a Prometheus recorder the appview owns (no
//! global recorder). Every label value comes from a fixed set (the appview's own methods,
//! a handful of statuses, auth failure reasons), never from what a caller sends.

use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, Key, Label, Metadata, Recorder};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// What a request asked for (the `query` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// `agent.comms.getInbox`.
    GetInbox,
    /// `agent.comms.getThread`.
    GetThread,
    /// `agent.comms.listTasks`.
    ListTasks,
    /// `agent.comms.listHandoffs`.
    ListHandoffs,
    /// `agent.comms.listBroadcasts`.
    ListBroadcasts,
    /// `agent.comms.listAgents`.
    ListAgents,
    /// `agent.memory.recall`.
    Recall,
    /// `agent.comms.subscribeInbox` (the upgrade; the socket's life is not timed).
    SubscribeInbox,
    /// `/.well-known/did.json`.
    DidDocument,
    /// The dashboard.
    Dashboard,
    /// Anything else (unknown methods, 404s).
    Other,
}

impl Method {
    const ALL: [Method; 11] = [
        Method::GetInbox,
        Method::GetThread,
        Method::ListTasks,
        Method::ListHandoffs,
        Method::ListBroadcasts,
        Method::ListAgents,
        Method::Recall,
        Method::SubscribeInbox,
        Method::DidDocument,
        Method::Dashboard,
        Method::Other,
    ];

    /// The method a request path names.
    pub fn of_path(path: &str) -> Method {
        match path {
            "/xrpc/agent.comms.getInbox" => Method::GetInbox,
            "/xrpc/agent.comms.getThread" => Method::GetThread,
            "/xrpc/agent.comms.listTasks" => Method::ListTasks,
            "/xrpc/agent.comms.listHandoffs" => Method::ListHandoffs,
            "/xrpc/agent.comms.listBroadcasts" => Method::ListBroadcasts,
            "/xrpc/agent.comms.listAgents" => Method::ListAgents,
            "/xrpc/agent.memory.recall" => Method::Recall,
            "/xrpc/agent.comms.subscribeInbox" => Method::SubscribeInbox,
            "/.well-known/did.json" => Method::DidDocument,
            "/" | crate::xrpc::PAGE => Method::Dashboard,
            _ => Method::Other,
        }
    }

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::GetInbox => "agent.comms.getInbox",
            Method::GetThread => "agent.comms.getThread",
            Method::ListTasks => "agent.comms.listTasks",
            Method::ListHandoffs => "agent.comms.listHandoffs",
            Method::ListBroadcasts => "agent.comms.listBroadcasts",
            Method::ListAgents => "agent.comms.listAgents",
            Method::Recall => "agent.memory.recall",
            Method::SubscribeInbox => "agent.comms.subscribeInbox",
            Method::DidDocument => "did_document",
            Method::Dashboard => "dashboard",
            Method::Other => "other",
        }
    }
}

/// Statuses counted by name (the `status` label); any other is `other`.
const STATUSES: [&str; 10] = [
    "101", "200", "400", "401", "404", "429", "500", "503", "other", "4xx",
];

fn status_label(code: u16) -> &'static str {
    match code {
        101 => "101",
        200 => "200",
        400 => "400",
        401 => "401",
        404 => "404",
        429 => "429",
        500 => "500",
        503 => "503",
        402..=499 => "4xx",
        _ => "other",
    }
}

/// Why a service token was refused (the `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// No `Bearer` token in the `Authorization` header.
    Malformed,
    /// The token has expired.
    Expired,
    /// The token does not verify (signature, audience, method, issuer's key).
    Invalid,
}

impl AuthFailure {
    const ALL: [AuthFailure; 3] = [
        AuthFailure::Malformed,
        AuthFailure::Expired,
        AuthFailure::Invalid,
    ];

    fn as_str(self) -> &'static str {
        match self {
            AuthFailure::Malformed => "malformed",
            AuthFailure::Expired => "expired",
            AuthFailure::Invalid => "invalid",
        }
    }
}

/// The appview's metrics.
pub struct Metrics {
    handle: PrometheusHandle,
    /// (method, status) → requests answered.
    requests: Vec<((Method, &'static str), Counter)>,
    /// method → time to answer, seconds.
    latency: Vec<(Method, Histogram)>,
    auth_failures: Vec<(AuthFailure, Counter)>,
    /// Live inbox subscriptions open.
    pub live_subscribers: Gauge,
}

impl Metrics {
    /// Registers every metric on a new recorder.
    pub fn new() -> Self {
        let recorder = PrometheusBuilder::new()
            // Query latencies, from a cached page to a cold recall on a loaded machine.
            .set_buckets(&[
                0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0, 30.0,
            ])
            .expect("bucket list is non-empty")
            .build_recorder();
        let meta = Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()));
        let mut requests = Vec::new();
        let mut latency = Vec::new();
        for method in Method::ALL {
            for status in STATUSES {
                let key = Key::from_parts(
                    "appview_requests_total",
                    vec![
                        Label::new("query", method.as_str()),
                        Label::new("status", status),
                    ],
                );
                requests.push(((method, status), recorder.register_counter(&key, &meta)));
            }
            let key = Key::from_parts(
                "appview_request_seconds",
                vec![Label::new("query", method.as_str())],
            );
            latency.push((method, recorder.register_histogram(&key, &meta)));
        }
        let auth_failures = AuthFailure::ALL
            .iter()
            .map(|r| {
                let key = Key::from_parts(
                    "appview_auth_failures_total",
                    vec![Label::new("reason", r.as_str())],
                );
                (*r, recorder.register_counter(&key, &meta))
            })
            .collect();
        let live_subscribers =
            recorder.register_gauge(&Key::from_name("appview_live_subscribers"), &meta);
        Metrics {
            requests,
            latency,
            auth_failures,
            live_subscribers,
            handle: recorder.handle(),
        }
    }

    /// Counts one answered request and its time.
    pub fn answered(&self, method: Method, status: u16, took: Duration) {
        let status = status_label(status);
        if let Some((_, c)) = self.requests.iter().find(|(k, _)| *k == (method, status)) {
            c.increment(1);
        }
        if let Some((_, h)) = self.latency.iter().find(|(m, _)| *m == method) {
            h.record(took.as_secs_f64());
        }
    }

    /// Counts a refused service token.
    pub fn auth_failed(&self, why: AuthFailure) {
        if let Some((_, c)) = self.auth_failures.iter().find(|(r, _)| *r == why) {
            c.increment(1);
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        self.handle.run_upkeep();
        self.handle.render()
    }
}

/// Runs a closure when dropped (a gauge taken back however a task ends).
pub struct OnDrop<F: FnMut()>(pub F);

impl<F: FnMut()> Drop for OnDrop<F> {
    fn drop(&mut self) {
        (self.0)()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_counted_by_method_and_status_and_nothing_else() {
        let m = Metrics::new();
        m.answered(
            Method::of_path("/xrpc/agent.comms.getInbox"),
            200,
            Duration::from_millis(3),
        );
        m.answered(
            Method::of_path("/xrpc/agent.comms.nope?x=did:plc:secret"),
            404,
            Duration::from_millis(1),
        );
        m.answered(Method::Recall, 418, Duration::from_secs(2));
        m.auth_failed(AuthFailure::Expired);
        let text = m.render();
        let value = |series: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(series)?.trim().parse::<f64>().ok())
                .unwrap_or_else(|| panic!("{series} missing from\n{text}"))
        };
        assert_eq!(
            value("appview_requests_total{query=\"agent.comms.getInbox\",status=\"200\"}"),
            1.0
        );
        assert_eq!(
            value("appview_requests_total{query=\"other\",status=\"404\"}"),
            1.0
        );
        assert_eq!(
            value("appview_requests_total{query=\"agent.memory.recall\",status=\"4xx\"}"),
            1.0
        );
        assert_eq!(
            value("appview_auth_failures_total{reason=\"expired\"}"),
            1.0
        );
        assert_eq!(
            value("appview_request_seconds_count{query=\"agent.memory.recall\"}"),
            1.0
        );
        assert!(
            text.contains(
                "appview_request_seconds_bucket{query=\"agent.memory.recall\",le=\"2.5\"} 1"
            ),
            "{text}"
        );
        assert!(!text.contains("secret"), "nothing a caller sent is a label");
    }
}
