//! `agentnet up`'s live status line: one line on a terminal, redrawn every second, saying
//! what the relay, the indexer and the appview are doing (totals and rates since the last
//! redraw). Numbers come from the services' own metrics, read in process.

use std::time::{Duration, Instant};

/// What the line is drawn from, at one moment.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// When it was taken.
    pub at: Instant,
    /// Frames the relay received from hosts.
    pub events_in: f64,
    /// Events the relay logged and published.
    pub events_out: f64,
    /// Events the relay dropped, every reason.
    pub dropped: f64,
    /// Firehose and JSON-stream subscribers.
    pub subscribers: f64,
    /// Rows the indexer wrote.
    pub rows: u64,
    /// Vectors the indexer wrote.
    pub vectors: u64,
    /// How far behind the relay the index is, in seconds (unknown before the first event).
    pub lag_secs: Option<f64>,
    /// Requests the appview answered.
    pub requests: f64,
}

/// The value of `series` in a Prometheus text exposition; with `{…}` labels left out, the
/// sum over every labelled series of that name.
pub fn series(text: &str, name: &str) -> f64 {
    total(&crate::dashboard::parse(text), name)
}

/// The sum of every series named `name` in an exposition the dashboard's parser read.
fn total(parsed: &serde_json::Map<String, serde_json::Value>, name: &str) -> f64 {
    parsed
        .get(name)
        .and_then(|v| v.as_array())
        .map(|series| series.iter().filter_map(|s| s["v"].as_f64()).sum())
        .unwrap_or(0.0)
}

impl Sample {
    /// A sample from the relay's and the appview's expositions and the indexer's counters.
    pub fn take(relay: &str, indexer: &agentnet_indexer::stats::Snapshot, appview: &str) -> Self {
        let now_ms = atproto::syntax::now_millis();
        let (relay, appview) = (
            crate::dashboard::parse(relay),
            crate::dashboard::parse(appview),
        );
        Sample {
            at: Instant::now(),
            events_in: total(&relay, "relay_events_in_total"),
            events_out: total(&relay, "relay_events_out_total"),
            dropped: total(&relay, "relay_events_dropped_total"),
            subscribers: total(&relay, "relay_subscribers"),
            rows: indexer.rows,
            vectors: indexer.vectors,
            lag_secs: (indexer.last_event_ms > 0)
                .then(|| (now_ms - indexer.last_event_ms).max(0) as f64 / 1000.0),
            requests: total(&appview, "appview_requests_total"),
        }
    }
}

/// The status line for `now`, with rates over the time since `before`.
pub fn line(before: &Sample, now: &Sample) -> String {
    let secs = now.at.duration_since(before.at).as_secs_f64().max(0.001);
    let rate = |a: f64, b: f64| ((b - a).max(0.0) / secs).round();
    let lag = match now.lag_secs {
        Some(s) => format!("lag {s:.1} s"),
        None => "lag –".to_string(),
    };
    format!(
        "relay {:.0} in · {:.0} out ({}/s) · {:.0} dropped · {:.0} subscribers │ indexer {} rows ({}/s) · {} vectors · {lag} │ appview {:.0} requests ({}/s)",
        now.events_in,
        now.events_out,
        rate(before.events_out, now.events_out),
        now.dropped,
        now.subscribers,
        now.rows,
        rate(before.rows as f64, now.rows as f64),
        now.vectors,
        now.requests,
        rate(before.requests, now.requests),
    )
}

/// How often the line is redrawn.
pub const EVERY: Duration = Duration::from_secs(1);

/// Redraws the line on standard error every [`EVERY`] until aborted, from `sample` (which
/// reads the services). Only for a terminal: the caller checks.
pub async fn show(mut sample: impl FnMut() -> Sample) {
    use std::io::Write;
    let mut before = sample();
    let mut ticks = tokio::time::interval(EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        let now = sample();
        // Carriage return and erase-line: the line is redrawn in place; a log line printed
        // meanwhile pushes it down and the next tick draws it again.
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r\x1b[2K{}", line(&before, &now));
        let _ = err.flush();
        before = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RELAY: &str = "# TYPE relay_events_in_total counter
relay_events_in_total 120
relay_events_out_total 100
relay_events_dropped_total{reason=\"wrong_host\"} 3
relay_events_dropped_total{reason=\"stale_rev\"} 1
relay_subscribers 2
";

    #[test]
    fn series_are_read_and_labelled_ones_summed() {
        assert_eq!(series(RELAY, "relay_events_in_total"), 120.0);
        assert_eq!(series(RELAY, "relay_events_dropped_total"), 4.0);
        assert_eq!(series(RELAY, "relay_events"), 0.0, "a prefix is not a name");
        assert_eq!(series("", "relay_subscribers"), 0.0);
    }

    #[test]
    fn the_line_gives_totals_and_rates_since_the_last_one() {
        let at = Instant::now();
        let before = Sample {
            at,
            events_in: 20.0,
            events_out: 0.0,
            dropped: 0.0,
            subscribers: 0.0,
            rows: 10,
            vectors: 0,
            lag_secs: None,
            requests: 0.0,
        };
        let now = Sample {
            at: at + Duration::from_secs(2),
            events_in: 120.0,
            events_out: 100.0,
            dropped: 4.0,
            subscribers: 2.0,
            rows: 50,
            vectors: 30,
            lag_secs: Some(1.5),
            requests: 6.0,
        };
        assert_eq!(
            line(&before, &now),
            "relay 120 in · 100 out (50/s) · 4 dropped · 2 subscribers │ indexer 50 rows (20/s) · 30 vectors · lag 1.5 s │ appview 6 requests (3/s)"
        );
        assert!(line(&now, &now).contains("lag 1.5 s"));
        assert!(line(&before, &before).contains("lag –"));
    }
}
