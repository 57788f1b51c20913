//! Serving one subscriber a stream of logged events: replay from the log after a
//! position, then the live stream with no gap and no duplicate, keepalive, and slow or
//! silent subscribers closed. What goes out for each event is the [`Feed`]'s part: the CBOR
//! firehose sends frames as they are, the JSON stream sends Jetstream's events.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures::{SinkExt, StreamExt};
use tokio::sync::broadcast;

use crate::server::{error_frame, AppState};
use crate::store::Logged;

/// Read buffer per subscriber socket (what a subscriber sends is small: pings, pongs,
/// Close, and on the JSON stream its options).
pub(crate) const SUBSCRIBER_READ_BUFFER: usize = 4 * 1024;
/// Events read from the log per replay step.
const REPLAY_PAGE: usize = 1024;
/// Most live events sent with one flush.
const LIVE_BATCH: usize = 256;
/// Times a replaying subscriber may fall behind the live stream and go back to the log
/// before it is treated as too slow.
const MAX_CATCH_UPS: usize = 8;
/// While events flow without a pause, the client's socket is still read this often.
const READ_EVERY: Duration = Duration::from_secs(1);
/// How long a closing socket waits for the client's Close in reply.
const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// Text messages from a client kept until the feed takes them (the oldest go first).
const CLIENT_TEXTS: usize = 8;

/// What one kind of stream sends: the live items it follows, the same items made from
/// logged events for replay, and the messages each item becomes for this subscriber.
pub(crate) trait Feed {
    /// A live item: one logged event, in whatever form the feed shares between its
    /// subscribers.
    type Item: Clone + Send + Sync + 'static;
    /// The item's place in the log.
    fn seq(item: &Self::Item) -> u64;
    /// Items for a page of logged events (replay).
    fn replayed(&mut self, page: Vec<Logged>) -> Vec<Self::Item>;
    /// Adds the messages this subscriber gets for `item` (none when filtered out).
    fn messages(&mut self, item: &Self::Item, out: &mut Vec<Message>);
    /// The message sent before closing a subscriber that cannot keep up, if the protocol
    /// has one.
    fn too_slow(&self, why: &str) -> Option<Message>;
    /// A text message from the client; an error closes the stream with that reason.
    fn control(&mut self, _text: &str) -> Result<(), String> {
        Ok(())
    }
}

/// One subscriber's socket and what the relay knows of its side: when it was last heard
/// from, whether it is gone, and the text messages it sent.
pub(crate) struct Conn {
    socket: WebSocket,
    heard: Instant,
    gone: bool,
    texts: VecDeque<String>,
    counted: Option<AppState>,
}

impl Conn {
    /// Takes a new subscriber's socket; it counts among the relay's subscribers until
    /// [`Conn::finish`].
    pub(crate) fn new(socket: WebSocket, state: &AppState) -> Self {
        state.subscribers.fetch_add(1, Ordering::Relaxed);
        state.metrics.subscribers.increment(1.0);
        Conn {
            socket,
            heard: Instant::now(),
            gone: false,
            texts: VecDeque::new(),
            counted: Some(state.clone()),
        }
    }

    /// Ends the subscription: after a stream that ended on our side, Close is sent and the
    /// client's reply awaited a moment, so the handshake completes instead of the client
    /// waiting out its own timeout.
    pub(crate) async fn finish(mut self, result: Result<(), String>) {
        if let Err(error) = result {
            tracing::debug!(%error, "subscriber ended");
        }
        if !self.gone {
            let _ = self.socket.close().await;
            let _ = tokio::time::timeout(CLOSE_GRACE, async {
                while let Some(Ok(_)) = self.socket.next().await {}
            })
            .await;
        }
    }

    /// Sends one message.
    pub(crate) async fn send(&mut self, message: Message) -> Result<(), String> {
        self.socket.send(message).await.map_err(|e| e.to_string())
    }

    /// Sends an error frame (CBOR) and a policy Close.
    pub(crate) async fn send_error_and_close(&mut self, error: &str, message: &str) {
        let _ = self
            .socket
            .send(Message::Binary(error_frame(error, message)))
            .await;
        self.close_with(error).await;
    }

    /// Sends a policy-violation Close with `reason`.
    pub(crate) async fn close_with(&mut self, reason: &str) {
        let _ = self
            .socket
            .send(Message::Close(Some(CloseFrame {
                code: 1008,
                reason: reason.chars().take(120).collect::<String>().into(),
            })))
            .await;
    }

    /// Takes one message the client sent. False when the client is gone (after a Close,
    /// whose reply is flushed here).
    async fn took(&mut self, msg: Option<Result<Message, axum::Error>>) -> bool {
        self.heard = Instant::now();
        match msg {
            Some(Ok(Message::Close(_))) => {
                let _ = self.socket.flush().await;
                self.gone = true;
                false
            }
            Some(Ok(Message::Text(text))) => {
                if self.texts.len() >= CLIENT_TEXTS {
                    self.texts.pop_front();
                }
                self.texts.push_back(text.as_str().to_owned());
                true
            }
            Some(Ok(_)) => true,
            None | Some(Err(_)) => {
                self.gone = true;
                false
            }
        }
    }

    /// Takes whatever the client has sent without waiting. False when it is gone.
    async fn drain(&mut self) -> bool {
        while let Some(msg) = futures::FutureExt::now_or_never(self.socket.next()) {
            if !self.took(msg).await {
                return false;
            }
        }
        true
    }

    /// Waits up to `limit` for the client's next text message (answering pings
    /// meanwhile). `None` when the client left or said nothing in time.
    pub(crate) async fn next_text(&mut self, limit: Duration) -> Option<String> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Some(text) = self.texts.pop_front() {
                return Some(text);
            }
            let msg = tokio::time::timeout_at(deadline, self.socket.next())
                .await
                .ok()?;
            if !self.took(msg).await {
                return None;
            }
        }
    }

    /// Hands the client's text messages to the feed.
    fn control<F: Feed>(&mut self, feed: &mut F) -> Result<(), String> {
        while let Some(text) = self.texts.pop_front() {
            feed.control(&text)?;
        }
        Ok(())
    }

    /// Reads what the client sent and passes its texts to the feed. `Ok(false)` when the
    /// client is gone; an error when the feed refused what it sent.
    async fn hear<F: Feed>(&mut self, feed: &mut F) -> Result<bool, String> {
        if !self.drain().await {
            return Ok(false);
        }
        if let Err(why) = self.control(feed) {
            self.close_with(&why).await;
            return Err(why);
        }
        Ok(true)
    }

    /// Sends messages with one flush; a subscriber that does not take them within the send
    /// timeout is closed as too slow (it holds nobody else up: every subscriber has its own
    /// task and buffer).
    async fn send_batch<F: Feed>(
        &mut self,
        state: &AppState,
        feed: &F,
        messages: Vec<Message>,
    ) -> Result<(), String> {
        if messages.is_empty() {
            return Ok(());
        }
        let socket = &mut self.socket;
        let write = async {
            for message in messages {
                socket.feed(message).await?;
            }
            socket.flush().await
        };
        match tokio::time::timeout(state.send_timeout, write).await {
            Ok(result) => result.map_err(|e| e.to_string()),
            Err(_) => {
                state.metrics.slow_consumers.increment(1);
                let close = self.too_slow(feed, "subscriber stopped reading");
                let _ = tokio::time::timeout(Duration::from_millis(100), close).await;
                Err("send timed out".into())
            }
        }
    }

    async fn too_slow<F: Feed>(&mut self, feed: &F, why: &str) {
        if let Some(message) = feed.too_slow(why) {
            let _ = self.socket.send(message).await;
        }
        self.close_with("ConsumerTooSlow").await;
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        if let Some(state) = self.counted.take() {
            state.subscribers.fetch_sub(1, Ordering::Relaxed);
            state.metrics.subscribers.decrement(1.0);
        }
    }
}

/// Replays from the log after `last` (when `catching_up`), then follows `live` with no gap
/// and no duplicate: the live subscription was taken before the log was read, and live
/// items at or below the last replayed `seq` are skipped. A subscriber that cannot keep up
/// is closed; nobody else waits for it. The client's socket is read whenever nothing is
/// being sent and at least every second while events flow (keepalive pings, its options).
pub(crate) async fn run<F: Feed>(
    conn: &mut Conn,
    state: &AppState,
    feed: &mut F,
    mut rx: broadcast::Receiver<F::Item>,
    mut last: u64,
    mut catching_up: bool,
) -> Result<(), String> {
    // One housekeeping tick (at most every READ_EVERY): read what the client sent, ping it
    // when the ping interval is up, close it when it has been silent too long. Polling the
    // socket on every frame instead costs more than the frame's own send.
    let mut housekeeping = tokio::time::interval(state.ping_interval.min(READ_EVERY));
    housekeeping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    housekeeping.tick().await;
    let mut pinged = Instant::now();
    let mut catch_ups = 0;
    let mut read_at = Instant::now();
    loop {
        if catching_up {
            loop {
                let store = state.store.clone();
                let after = last;
                let page =
                    tokio::task::spawn_blocking(move || store.read_after(after, REPLAY_PAGE))
                        .await
                        .map_err(|e| e.to_string())?
                        .map_err(|e| e.to_string())?;
                let Some(end) = page.last().map(|e| e.seq) else {
                    break;
                };
                let mut messages = Vec::with_capacity(page.len());
                for item in feed.replayed(page) {
                    feed.messages(&item, &mut messages);
                }
                conn.send_batch(state, feed, messages).await?;
                last = end;
                if !conn.hear(feed).await? {
                    return Ok(());
                }
            }
            catching_up = false;
        }
        // Take what is ready (up to LIVE_BATCH items) and send it with one flush; while
        // nothing is, keep the connection alive and notice a client that went away.
        let mut batch = Vec::new();
        // Biased to the live stream: while events flow the housekeeping tick waits (the
        // client is still read at least once a second, below).
        let first = tokio::select! {
            biased;
            item = rx.recv() => item,
            _ = housekeeping.tick() => {
                read_at = Instant::now();
                if !conn.hear(feed).await? {
                    return Ok(());
                }
                let silent = conn.heard.elapsed();
                if silent > state.dead_after {
                    state.metrics.dead_subscribers.increment(1);
                    return Err(format!("no word from the client in {silent:?}"));
                }
                if pinged.elapsed() >= state.ping_interval {
                    pinged = Instant::now();
                    let ping = conn.socket.send(Message::Ping(bytes::Bytes::new()));
                    match tokio::time::timeout(state.send_timeout, ping).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => return Err(e.to_string()),
                        Err(_) => return Err("ping not taken in time".into()),
                    }
                }
                continue;
            }
        };
        let mut next = Some(first);
        let mut taken = 0;
        while let Some(item) = next.take() {
            match item {
                Ok(item) => {
                    let seq = F::seq(&item);
                    if seq <= last {
                        // Already replayed.
                    } else if seq != last + 1 {
                        // Published while this subscriber was replaying: it is in the log.
                        catching_up = true;
                        break;
                    } else {
                        last = seq;
                        taken += 1;
                        feed.messages(&item, &mut batch);
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    catch_ups += 1;
                    if catch_ups > MAX_CATCH_UPS {
                        state.metrics.slow_consumers.increment(1);
                        conn.too_slow(feed, "subscriber fell too far behind").await;
                        return Ok(());
                    }
                    catching_up = true;
                    break;
                }
                Err(broadcast::error::RecvError::Closed) => {
                    conn.send_batch(state, feed, batch).await?;
                    let _ = conn.socket.send(Message::Close(None)).await;
                    return Ok(());
                }
            }
            if taken >= LIVE_BATCH {
                break;
            }
            next = match rx.try_recv() {
                Ok(v) => Some(Ok(v)),
                Err(broadcast::error::TryRecvError::Empty) => None,
                Err(broadcast::error::TryRecvError::Lagged(n)) => {
                    Some(Err(broadcast::error::RecvError::Lagged(n)))
                }
                Err(broadcast::error::TryRecvError::Closed) => {
                    Some(Err(broadcast::error::RecvError::Closed))
                }
            };
        }
        conn.send_batch(state, feed, batch).await?;
        if read_at.elapsed() >= READ_EVERY {
            read_at = Instant::now();
            if !conn.hear(feed).await? {
                return Ok(());
            }
        }
    }
}
