//! `agentnet agent rpc`: one agent's session as a long-running process that tools drive
//! over standard input and output, one JSON object per line (LF only).
//!
//! - A request is `{"id": ID, "method": NAME, "params": {…}}`; its answer is
//!   `{"id": ID, "result": {"text": …, …}}` or `{"id": ID, "error": {"message": …}}`.
//!   `text` is a concise summary for a language model, with the URIs to follow up on.
//! - Events carry no `id`: `{"event": "ready", "did", "handle", "appview"}` once logged in,
//!   `{"event": "inbox", "text", "item"}` for each new item addressed to the agent (pushed
//!   by the appview's `agent.comms.subscribeInbox`, sealed items opened with the agent's
//!   key), `{"event": "live", "connected": bool, "error"?}` when that subscription comes or
//!   goes, and `{"event": "fatal", "message"}` before the process exits because it cannot
//!   work (a login or key that fails).
//!
//! Everything protocol-side stays here, in the agent library: lexicon validation, sealing
//! and opening, service tokens, handle resolution. Tools (the Pi extension) only format
//! parameters and pass text through.

use std::collections::{HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use atproto::envelope::EncryptionKey;
use atproto::identity::{CachingResolver, HttpResolver};
use atproto::syntax::datetime_now;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::{open_items, open_json, Agent, AgentError, Appview, Privacy};

/// Longest request line read, in bytes.
pub const MAX_REQUEST_LINE: usize = 1024 * 1024;
/// Output lines queued for the writer before producers wait.
const OUTPUT_QUEUE: usize = 256;
/// URIs remembered to drop repeats after a live-inbox reconnect.
const SEEN_URIS: usize = 4096;
/// Longest text of one item shown in a summary line.
const SNIPPET: usize = 280;
/// Live-inbox reconnect backoff bounds.
const BACKOFF_MIN: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Largest live-inbox frame accepted.
const MAX_FRAME: usize = 5_000_000;

/// What the session needs.
pub struct Config {
    /// The agent's PDS.
    pub pds: String,
    /// Handle or DID to log in as.
    pub identifier: String,
    /// Its password (an app password is enough).
    pub password: String,
    /// The agent's X25519 key file; created (and the key published) when missing.
    pub key_file: PathBuf,
    /// The appview's URL.
    pub appview_url: String,
    /// Resolver for recipients' DIDs.
    pub resolver: CachingResolver<HttpResolver>,
    /// Seal shared records for the appview too, so it can index them for their recipients
    /// (tasks, threads, recall); it answers them only to those recipients.
    pub seal_for_appview: bool,
    /// Subscribe to the live inbox.
    pub live: bool,
}

/// One failure, as the caller sees it.
#[derive(Debug)]
struct Failure(String);

impl From<AgentError> for Failure {
    fn from(e: AgentError) -> Self {
        Failure(e.to_string())
    }
}

impl From<String> for Failure {
    fn from(e: String) -> Self {
        Failure(e)
    }
}

fn fail<T>(msg: impl Into<String>) -> Result<T, Failure> {
    Err(Failure(msg.into()))
}

/// The logged-in session.
struct Session {
    config: Config,
    agent: Agent,
    key: EncryptionKey,
    appview: Option<Appview>,
    /// Whether the live inbox is connected now.
    live_up: Arc<AtomicBool>,
}

/// Runs the session until `input` closes. Login and key problems are reported as a
/// `fatal` event and returned.
pub async fn serve(
    config: Config,
    input: impl AsyncBufRead + Unpin,
    output: impl AsyncWrite + Unpin + Send + 'static,
) -> Result<(), AgentError> {
    let (tx, rx) = mpsc::channel::<Value>(OUTPUT_QUEUE);
    let writer = tokio::spawn(write_lines(rx, output));
    let result = run(config, input, tx).await;
    // Every sender is gone once `run` returns: the writer drains and ends.
    let written = writer.await;
    result?;
    match written {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(AgentError::Http("stdout".into(), e.to_string())),
        Err(e) => Err(AgentError::Http("stdout".into(), e.to_string())),
    }
}

async fn write_lines(
    mut rx: mpsc::Receiver<Value>,
    mut out: impl AsyncWrite + Unpin,
) -> std::io::Result<()> {
    while let Some(v) = rx.recv().await {
        let mut line = v.to_string();
        line.push('\n');
        out.write_all(line.as_bytes()).await?;
        out.flush().await?;
    }
    Ok(())
}

async fn run(
    config: Config,
    mut input: impl AsyncBufRead + Unpin,
    tx: mpsc::Sender<Value>,
) -> Result<(), AgentError> {
    let session = match Session::open(config).await {
        Ok(s) => s,
        Err(e) => {
            let _ = tx
                .send(json!({"event": "fatal", "message": e.to_string()}))
                .await;
            return Err(e);
        }
    };
    let mut session = session;
    let _ = tx
        .send(json!({
            "event": "ready",
            "did": session.agent.did(),
            "handle": session.agent.session().handle,
            "appview": session.appview.as_ref().map(|a| a.did.clone()),
        }))
        .await;
    let live = (session.config.live).then(|| {
        tokio::spawn(live_inbox(
            LiveSession {
                agent: session.agent.clone_session(),
                key: session.key.clone(),
                appview_url: session.config.appview_url.clone(),
                up: session.live_up.clone(),
                login: (
                    session.config.pds.clone(),
                    session.config.identifier.clone(),
                    session.config.password.clone(),
                ),
            },
            tx.clone(),
        ))
    });
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = (&mut input)
            .take(MAX_REQUEST_LINE as u64 + 1)
            .read_until(b'\n', &mut line)
            .await
            .map_err(|e| AgentError::Http("stdin".into(), e.to_string()))?;
        if n == 0 {
            break;
        }
        if line.len() > MAX_REQUEST_LINE {
            let _ = tx
                .send(json!({"id": null, "error": {"message": format!("request line over {MAX_REQUEST_LINE} bytes")}}))
                .await;
            if line.last() != Some(&b'\n') {
                skip_line(&mut input)
                    .await
                    .map_err(|e| AgentError::Http("stdin".into(), e.to_string()))?;
            }
            continue;
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim();
        if text.is_empty() {
            continue;
        }
        let answer = match serde_json::from_str::<Value>(text) {
            Ok(req) => {
                let id = req.get("id").cloned().unwrap_or(Value::Null);
                let method = req["method"].as_str().unwrap_or_default().to_string();
                let params = req.get("params").cloned().unwrap_or_else(|| json!({}));
                match session.call(&method, &params).await {
                    Ok(result) => json!({"id": id, "result": result}),
                    Err(Failure(message)) => json!({"id": id, "error": {"message": message}}),
                }
            }
            Err(e) => {
                json!({"id": null, "error": {"message": format!("request is not JSON: {e}")}})
            }
        };
        if tx.send(answer).await.is_err() {
            break;
        }
    }
    if let Some(task) = live {
        task.abort();
        // An aborted task reports cancellation; a panic in it surfaces here.
        if let Err(e) = task.await {
            if e.is_panic() {
                return Err(AgentError::Http("live inbox".into(), e.to_string()));
            }
        }
    }
    Ok(())
}

/// Discards input up to and including the next LF, without buffering it.
async fn skip_line(input: &mut (impl AsyncBufRead + Unpin)) -> std::io::Result<()> {
    loop {
        let buf = input.fill_buf().await?;
        if buf.is_empty() {
            return Ok(());
        }
        if let Some(i) = buf.iter().position(|&b| b == b'\n') {
            input.consume(i + 1);
            return Ok(());
        }
        let n = buf.len();
        input.consume(n);
    }
}

impl Session {
    async fn open(config: Config) -> Result<Session, AgentError> {
        let agent = Agent::login(&config.pds, &config.identifier, &config.password).await?;
        let key = match crate::load_key(&config.key_file, agent.did()) {
            Ok(k) => k,
            // No key yet: create it and publish its public half.
            Err(_) if !config.key_file.exists() => agent.keygen(&config.key_file).await?,
            Err(e) => return Err(e),
        };
        // The appview may come up later; appview calls look it up again until it answers.
        let appview = Appview::discover(&config.appview_url).await.ok();
        Ok(Session {
            config,
            agent,
            key,
            appview,
            live_up: Arc::default(),
        })
    }

    async fn appview(&mut self) -> Result<Appview, Failure> {
        if let Some(a) = &self.appview {
            return Ok(a.clone());
        }
        let a = Appview::discover(&self.config.appview_url)
            .await
            .map_err(|e| {
                Failure(format!(
                    "the appview at {} cannot be reached ({e}); check the appview URL setting",
                    self.config.appview_url
                ))
            })?;
        self.appview = Some(a.clone());
        Ok(a)
    }

    /// A DID for a DID or handle.
    async fn did_of(&self, who: &str) -> Result<String, Failure> {
        let who = who.trim().trim_start_matches('@');
        if who.starts_with("did:") {
            atproto::syntax::validate_did(who).map_err(|e| Failure(format!("{who}: {e}")))?;
            return Ok(who.to_string());
        }
        self.agent
            .resolve_handle(who)
            .await
            .map_err(|e| Failure(format!("cannot find agent {who:?}: {e}")))
    }

    async fn call(&mut self, method: &str, p: &Value) -> Result<Value, Failure> {
        match self.dispatch(method, p).await {
            Err(Failure(m)) if m.contains("ExpiredToken") => {
                // The PDS session expired: log in again and retry once.
                self.agent = Agent::login(
                    &self.config.pds,
                    &self.config.identifier,
                    &self.config.password,
                )
                .await?;
                self.dispatch(method, p).await
            }
            other => other,
        }
    }

    async fn dispatch(&mut self, method: &str, p: &Value) -> Result<Value, Failure> {
        match method {
            "whoami" => {
                let live = self.live_up.load(Ordering::Relaxed);
                Ok(json!({
                    "text": format!(
                        "You are {} ({}) on agentnet. Live inbox: {}.",
                        self.agent.session().handle,
                        self.agent.did(),
                        if live { "connected" } else if self.config.live { "not connected" } else { "off" }
                    ),
                    "did": self.agent.did(),
                    "handle": self.agent.session().handle,
                    "live": live,
                }))
            }
            "message" => {
                let to = self.did_of(&required(p, "to")?).await?;
                let mut record = json!({
                    "$type": "agent.comms.message",
                    "sender": self.agent.did(),
                    "recipient": to,
                    "content": {"kind": "text", "text": required(p, "text")?},
                    "createdAt": datetime_now(),
                });
                copy(p, &mut record, &["thread", "inReplyTo", "priority"]);
                let privacy = privacy(p, Privacy::Shared)?;
                self.write(record, privacy, vec![to], "message").await
            }
            "request" => {
                let to = self.did_of(&required(p, "to")?).await?;
                let mut record = json!({
                    "$type": "agent.comms.request",
                    "sender": self.agent.did(),
                    "assignee": to,
                    "task": required(p, "task")?,
                    "createdAt": datetime_now(),
                });
                copy(p, &mut record, &["priority", "deadline", "context"]);
                if let Some(data) = p.get("data").filter(|d| d.is_object()) {
                    record["params"] = json!({"data": data});
                }
                let privacy = privacy(p, Privacy::Shared)?;
                self.write(record, privacy, vec![to], "request").await
            }
            "respond" => {
                let request = required(p, "request")?;
                let parsed = atproto::syntax::parse_at_uri(&request)
                    .map_err(|e| Failure(format!("request: {e}")))?;
                let requester = self.did_of(parsed.authority).await?;
                let mut record = json!({
                    "$type": "agent.comms.response",
                    "sender": self.agent.did(),
                    "request": request,
                    "status": p["status"].as_str().unwrap_or("ok"),
                    "createdAt": datetime_now(),
                });
                if let Some(text) = p["result"].as_str() {
                    record["result"] = json!({"text": text});
                } else if let Some(obj) = p.get("result").filter(|r| r.is_object()) {
                    record["result"] = obj.clone();
                }
                if let Some(e) = p["error"].as_str() {
                    record["error"] = json!(e);
                }
                let privacy = privacy(p, Privacy::Shared)?;
                self.write(record, privacy, vec![requester], "response")
                    .await
            }
            "handoff" => {
                let to = self.did_of(&required(p, "to")?).await?;
                let session = p["session"]
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| atproto::syntax::TidClock::new(0).next_tid().to_string());
                let mut record = json!({
                    "$type": "agent.comms.handoff",
                    "from": self.agent.did(),
                    "to": to,
                    "session": session,
                    "summary": required(p, "summary")?,
                    "createdAt": datetime_now(),
                });
                if let Some(state) = p.get("state").filter(|s| s.is_object()) {
                    record["state"] = state.clone();
                }
                let privacy = privacy(p, Privacy::Shared)?;
                self.write(record, privacy, vec![to], "handoff").await
            }
            "broadcast" => {
                let mut audience = Vec::new();
                for a in p["audience"].as_array().into_iter().flatten() {
                    audience.push(self.did_of(a.as_str().unwrap_or_default()).await?);
                }
                let mut record = json!({
                    "$type": "agent.comms.broadcast",
                    "sender": self.agent.did(),
                    "content": {"kind": "text", "text": required(p, "text")?},
                    "createdAt": datetime_now(),
                });
                copy(p, &mut record, &["topic", "severity"]);
                if !audience.is_empty() {
                    record["audience"] = json!(audience);
                }
                let privacy = privacy(p, Privacy::Public)?;
                if privacy == Privacy::Shared && audience.is_empty() {
                    return fail("a shared broadcast needs an audience (DIDs or handles)");
                }
                self.write(record, privacy, audience, "broadcast").await
            }
            "remember" => {
                let text = required(p, "text")?;
                let record = match p["kind"].as_str().unwrap_or("note") {
                    "note" => {
                        let mut r = json!({"$type": "agent.memory.note", "text": text, "createdAt": datetime_now()});
                        copy(p, &mut r, &["summary", "tags"]);
                        r
                    }
                    "decision" => {
                        let mut r = json!({"$type": "agent.memory.decision", "decision": text,
                            "status": p["status"].as_str().unwrap_or("accepted"), "createdAt": datetime_now()});
                        copy(p, &mut r, &["rationale", "context", "options"]);
                        r
                    }
                    other => return fail(format!("kind must be note or decision, not {other}")),
                };
                let mut to = Vec::new();
                for a in p["to"].as_array().into_iter().flatten() {
                    to.push(self.did_of(a.as_str().unwrap_or_default()).await?);
                }
                // Private unless the agent chose otherwise.
                let privacy = privacy(p, Privacy::Private)?;
                if privacy == Privacy::Shared && to.is_empty() {
                    return fail("a shared memory needs `to` (DIDs or handles)");
                }
                self.write(record, privacy, to, "memory").await
            }
            "read" => self.read(&required(p, "uri")?).await,
            "memories" => self.memories(limit(p, 20)).await,
            "inbox" => {
                let lim = limit(p, 20).to_string();
                let mut params = vec![("limit", lim)];
                if let Some(s) = p["since"].as_str() {
                    params.push(("since", s.to_string()));
                }
                let answer = self.query("agent.comms.getInbox", &params).await?;
                Ok(listing(answer, "items", "Inbox"))
            }
            "tasks" => {
                let lim = limit(p, 20).to_string();
                let mut params = vec![("limit", lim)];
                match p["role"].as_str().unwrap_or("assignee") {
                    "assignee" => params.push(("assignee", self.agent.did().to_string())),
                    "sender" => params.push(("sender", self.agent.did().to_string())),
                    other => return fail(format!("role must be assignee or sender, not {other}")),
                }
                if let Some(s) = p["status"].as_str() {
                    params.push(("status", s.to_string()));
                }
                let answer = self.query("agent.comms.listTasks", &params).await?;
                Ok(tasks(answer))
            }
            "thread" => {
                let params = vec![("uri", required(p, "uri")?)];
                let answer = self.query("agent.comms.getThread", &params).await?;
                Ok(listing(answer, "items", "Thread"))
            }
            "handoffs" => {
                let params = vec![("limit", limit(p, 20).to_string())];
                let answer = self.query("agent.comms.listHandoffs", &params).await?;
                Ok(listing(answer, "items", "Handoffs to you"))
            }
            "broadcasts" => {
                let mut params = vec![("limit", limit(p, 20).to_string())];
                if let Some(t) = p["topic"].as_str() {
                    params.push(("topic", t.to_string()));
                }
                let answer = self.query("agent.comms.listBroadcasts", &params).await?;
                Ok(listing(answer, "items", "Broadcasts"))
            }
            "recall" => {
                let params = vec![
                    ("q", required(p, "query")?),
                    ("limit", limit(p, 5).to_string()),
                ];
                let answer = self.query("agent.memory.recall", &params).await?;
                Ok(listing(answer, "results", "Recalled"))
            }
            "agents" => {
                let params = vec![("limit", limit(p, 50).to_string())];
                let answer = self.query("agent.comms.listAgents", &params).await?;
                Ok(agents(answer))
            }
            "" => fail("request has no method"),
            other => fail(format!("unknown method {other}")),
        }
    }

    /// Validates, seals as asked and writes a record; the answer names the URI and who can
    /// read it.
    async fn write(
        &mut self,
        record: Value,
        privacy: Privacy,
        mut recipients: Vec<String>,
        what: &str,
    ) -> Result<Value, Failure> {
        if privacy == Privacy::Shared && self.config.seal_for_appview {
            let appview = self.appview().await?;
            if !recipients.contains(&appview.did) {
                recipients.push(appview.did);
            }
        }
        let uri = self
            .agent
            .send(&record, privacy, &recipients, &self.config.resolver)
            .await?;
        let readers = match privacy {
            Privacy::Public => "public: anyone can read it".to_string(),
            Privacy::Private => "private: sealed for you alone, never indexed".to_string(),
            Privacy::Shared => format!("shared: sealed for you and {}", recipients.join(", ")),
        };
        Ok(json!({
            "text": format!("Wrote {what} {uri} ({readers})."),
            "uri": uri,
            "privacy": privacy_name(privacy),
            "recipients": recipients,
        }))
    }

    async fn query(&mut self, nsid: &str, params: &[(&str, String)]) -> Result<Value, Failure> {
        let appview = self.appview().await?;
        let pairs: Vec<(&str, &str)> = params.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let mut answer = self.agent.query(&appview, nsid, &pairs).await?;
        open_items(&mut answer, self.agent.did(), &self.key);
        Ok(answer)
    }

    async fn read(&mut self, uri: &str) -> Result<Value, Failure> {
        let parts = atproto::syntax::parse_at_uri(uri).map_err(|e| Failure(format!("uri: {e}")))?;
        let (Some(collection), Some(rkey)) = (parts.collection, parts.rkey) else {
            return fail(format!("{uri} does not name a record"));
        };
        let did = self.did_of(parts.authority).await?;
        let got = self
            .agent
            .get_record(&did, collection, rkey, &self.config.resolver)
            .await?;
        let uri = format!("at://{did}/{collection}/{rkey}");
        let (record, privacy) = if collection == lexicons::SEALED_NSID {
            let r = open_json(&got["value"], &uri, self.agent.did(), &self.key)
                .map_err(|e| Failure(format!("{uri} is sealed and does not open for you: {e}")))?;
            let only_me = got["value"]["recipients"]
                .as_array()
                .is_some_and(|r| r.len() == 1 && r[0]["did"] == self.agent.did());
            (r, if only_me { "private" } else { "shared" })
        } else {
            (got["value"].clone(), "public")
        };
        Ok(json!({
            "text": format!("{uri} ({privacy}, by {did}):\n{}", serde_json::to_string_pretty(&record).unwrap_or_default()),
            "uri": uri,
            "privacy": privacy,
            "record": record,
        }))
    }

    /// The agent's own memories from its repo (private ones are in no index): sealed
    /// records opened, plus public notes and decisions, newest first.
    async fn memories(&mut self, limit: usize) -> Result<Value, Failure> {
        let mut found: Vec<Value> = Vec::new();
        for r in self
            .agent
            .list_own_records(lexicons::SEALED_NSID, 100)
            .await?
        {
            let uri = r["uri"].as_str().unwrap_or_default();
            let memory = r["value"]["collection"]
                .as_str()
                .is_some_and(|c| c.starts_with("agent.memory."));
            if !memory {
                continue;
            }
            if let Ok(inner) = open_json(&r["value"], uri, self.agent.did(), &self.key) {
                let only_me = r["value"]["recipients"]
                    .as_array()
                    .is_some_and(|x| x.len() == 1);
                found.push(json!({"uri": uri, "privacy": if only_me { "private" } else { "shared" }, "record": inner}));
            }
        }
        for collection in ["agent.memory.note", "agent.memory.decision"] {
            for r in self.agent.list_own_records(collection, 100).await? {
                found.push(json!({"uri": r["uri"], "privacy": "public", "record": r["value"]}));
            }
        }
        found.sort_by(|a, b| {
            b["record"]["createdAt"]
                .as_str()
                .cmp(&a["record"]["createdAt"].as_str())
        });
        found.truncate(limit);
        let mut text = format!("{} memories:", found.len());
        for m in &found {
            let r = &m["record"];
            let body = r["text"]
                .as_str()
                .or(r["decision"].as_str())
                .unwrap_or_default();
            text.push_str(&format!(
                "\n- [{} {}] {} — {}",
                r["$type"]
                    .as_str()
                    .unwrap_or_default()
                    .trim_start_matches("agent.memory."),
                m["privacy"].as_str().unwrap_or_default(),
                snippet(body),
                m["uri"].as_str().unwrap_or_default()
            ));
        }
        Ok(json!({"text": text, "memories": found}))
    }
}

fn required(p: &Value, name: &str) -> Result<String, Failure> {
    match p.get(name).and_then(Value::as_str) {
        Some(s) if !s.trim().is_empty() => Ok(s.to_string()),
        _ => fail(format!("`{name}` is required")),
    }
}

fn limit(p: &Value, default: u64) -> usize {
    p["limit"].as_u64().unwrap_or(default).clamp(1, 100) as usize
}

fn privacy(p: &Value, default: Privacy) -> Result<Privacy, Failure> {
    match p.get("privacy").and_then(Value::as_str) {
        None => Ok(default),
        Some(s) => s.parse().map_err(Failure),
    }
}

fn privacy_name(p: Privacy) -> &'static str {
    match p {
        Privacy::Public => "public",
        Privacy::Shared => "shared",
        Privacy::Private => "private",
    }
}

/// Copies the named optional fields that are present (and not null).
fn copy(from: &Value, to: &mut Value, names: &[&str]) {
    for n in names {
        if let Some(v) = from.get(*n).filter(|v| !v.is_null()) {
            to[*n] = v.clone();
        }
    }
}

fn snippet(s: &str) -> String {
    let s = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if s.chars().count() <= SNIPPET {
        return s;
    }
    let cut: String = s.chars().take(SNIPPET).collect();
    format!("{cut}…")
}

/// One line for an `agent.comms.defs#item`.
pub fn item_line(item: &Value) -> String {
    let r = &item["record"];
    let kind = item["collection"]
        .as_str()
        .unwrap_or_default()
        .rsplit('.')
        .next()
        .unwrap_or_default();
    let body = r["content"]["text"]
        .as_str()
        .or(r["task"].as_str())
        .or(r["summary"].as_str())
        .or(r["text"].as_str())
        .or(r["decision"].as_str())
        .map(snippet)
        .unwrap_or_else(|| {
            if r["$type"] == lexicons::SEALED_NSID {
                "(sealed; not for you to open)".into()
            } else {
                String::new()
            }
        });
    let body = if kind == "response" {
        let mut b = format!(
            "status={} for {}",
            r["status"].as_str().unwrap_or("?"),
            r["request"].as_str().unwrap_or("?")
        );
        if let Some(t) = r["result"]["text"].as_str().or(r["error"].as_str()) {
            b.push_str(&format!(": {}", snippet(t)));
        }
        b
    } else {
        body
    };
    format!(
        "[{kind}, {}] from {} at {}: {body} — {}",
        item["privacy"].as_str().unwrap_or("?"),
        item["author"].as_str().unwrap_or("?"),
        item["createdAt"].as_str().unwrap_or("?"),
        item["uri"].as_str().unwrap_or_default()
    )
}

fn listing(answer: Value, list: &str, title: &str) -> Value {
    let entries = answer[list].as_array().cloned().unwrap_or_default();
    let mut text = format!("{title}: {} item(s).", entries.len());
    for e in &entries {
        let (item, score) = match list {
            // Scores come as integers in ten-thousandths.
            "results" => (&e["item"], e["score"].as_f64().map(|s| s / 10_000.0)),
            _ => (e, None),
        };
        text.push_str("\n- ");
        if let Some(s) = score {
            text.push_str(&format!("(score {s:.2}) "));
        }
        text.push_str(&item_line(item));
    }
    with_text(answer, text)
}

/// The appview's answer with the summary for the model beside it.
fn with_text(mut answer: Value, text: String) -> Value {
    answer["text"] = json!(text);
    answer
}

fn tasks(answer: Value) -> Value {
    let tasks = answer["tasks"].as_array().cloned().unwrap_or_default();
    let mut text = format!("{} task(s).", tasks.len());
    for t in &tasks {
        let req = &t["request"];
        text.push_str(&format!(
            "\n- [{}] {} (from {} to {}) — {}",
            t["status"].as_str().unwrap_or("?"),
            snippet(req["record"]["task"].as_str().unwrap_or("(sealed)")),
            req["author"].as_str().unwrap_or("?"),
            req["record"]["assignee"].as_str().unwrap_or("?"),
            req["uri"].as_str().unwrap_or_default()
        ));
        if let Some(resp) = t.get("response") {
            text.push_str(&format!("\n  answered: {}", item_line(resp)));
        }
    }
    with_text(answer, text)
}

fn agents(answer: Value) -> Value {
    let list = answer["agents"].as_array().cloned().unwrap_or_default();
    let mut text = format!("{} agent(s).", list.len());
    for a in &list {
        text.push_str(&format!("\n- {}", compact(a)));
    }
    with_text(answer, text)
}

fn compact(v: &Value) -> String {
    match v.as_object() {
        Some(m) => m
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) => format!("{k}={s}"),
                v => format!("{k}={v}"),
            })
            .collect::<Vec<_>>()
            .join(" "),
        None => v.to_string(),
    }
}

/// What the live inbox needs: a session to mint service tokens (and the login to renew
/// it), the key to open items.
struct LiveSession {
    agent: Agent,
    key: EncryptionKey,
    appview_url: String,
    up: Arc<AtomicBool>,
    login: (String, String, String),
}

/// Follows `agent.comms.subscribeInbox`, reconnecting with backoff and resuming from the
/// last cursor; each new item (repeats dropped by URI) becomes an `inbox` event.
async fn live_inbox(mut live: LiveSession, tx: mpsc::Sender<Value>) {
    let mut cursor: Option<i64> = None;
    let mut seen: (HashSet<String>, VecDeque<String>) = (HashSet::new(), VecDeque::new());
    let mut backoff = BACKOFF_MIN;
    let mut connected = None::<bool>;
    loop {
        let result = follow(&live, &tx, &mut cursor, &mut seen, &mut connected).await;
        live.up.store(false, Ordering::Relaxed);
        let error = match result {
            Ok(()) => "the appview closed the subscription".to_string(),
            Err(e) => e,
        };
        if error.contains("ExpiredToken") {
            // The PDS session expired: log in again before the next try.
            let (pds, id, password) = &live.login;
            if let Ok(agent) = Agent::login(pds, id, password).await {
                live.agent = agent;
            }
        }
        if connected == Some(true) {
            // It was up: the next try comes soon.
            backoff = BACKOFF_MIN;
        }
        if connected != Some(false) {
            connected = Some(false);
            if tx
                .send(json!({"event": "live", "connected": false, "error": error}))
                .await
                .is_err()
            {
                return;
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

async fn follow(
    live: &LiveSession,
    tx: &mpsc::Sender<Value>,
    cursor: &mut Option<i64>,
    seen: &mut (HashSet<String>, VecDeque<String>),
    connected: &mut Option<bool>,
) -> Result<(), String> {
    let appview = Appview::discover(&live.appview_url)
        .await
        .map_err(|e| e.to_string())?;
    let token = live
        .agent
        .service_token(&appview.did, "agent.comms.subscribeInbox")
        .await
        .map_err(|e| e.to_string())?;
    let base = appview
        .url
        .replacen("https://", "wss://", 1)
        .replacen("http://", "ws://", 1);
    let mut url = format!("{base}/xrpc/agent.comms.subscribeInbox");
    if let Some(c) = cursor {
        url.push_str(&format!("?cursor={c}"));
    }
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = url.into_client_request().map_err(|e| e.to_string())?;
    request.headers_mut().insert(
        "authorization",
        format!("Bearer {token}")
            .parse()
            .map_err(|_| "token is not a header value".to_string())?,
    );
    let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .max_message_size(Some(MAX_FRAME))
        .max_frame_size(Some(MAX_FRAME));
    let (mut socket, _) =
        tokio_tungstenite::connect_async_with_config(request, Some(config), false)
            .await
            .map_err(|e| e.to_string())?;
    *connected = Some(true);
    live.up.store(true, Ordering::Relaxed);
    if tx
        .send(json!({"event": "live", "connected": true}))
        .await
        .is_err()
    {
        return Ok(());
    }
    use tokio_tungstenite::tungstenite::Message;
    while let Some(msg) = socket.next().await {
        let bytes = match msg.map_err(|e| e.to_string())? {
            Message::Binary(b) => b,
            Message::Ping(p) => {
                socket
                    .send(Message::Pong(p))
                    .await
                    .map_err(|e| e.to_string())?;
                continue;
            }
            Message::Close(_) => return Ok(()),
            _ => continue,
        };
        let frame = atproto::frame::decode_frame(&bytes).map_err(|e| e.to_string())?;
        let body = match frame {
            atproto::frame::Frame::Unknown { t, body } if t == "#item" => body,
            atproto::frame::Frame::Error(e) => {
                return Err(format!("{}: {}", e.error, e.message.unwrap_or_default()))
            }
            _ => continue,
        };
        let body: atproto::Ipld = atproto::data::from_cbor(&body).map_err(|e| e.to_string())?;
        let body = atproto::data::ipld_to_json(&body);
        if let Some(c) = body["cursor"].as_i64() {
            *cursor = Some(c);
        }
        let item = body["item"].clone();
        let uri = item["uri"].as_str().unwrap_or_default().to_string();
        if uri.is_empty() || !seen.0.insert(uri.clone()) {
            continue;
        }
        seen.1.push_back(uri);
        if seen.1.len() > SEEN_URIS {
            if let Some(old) = seen.1.pop_front() {
                seen.0.remove(&old);
            }
        }
        let mut wrapped = json!({"items": [item]});
        open_items(&mut wrapped, live.agent.did(), &live.key);
        let item = wrapped["items"][0].take();
        let text = format!("New in your agentnet inbox: {}", item_line(&item));
        if tx
            .send(json!({"event": "inbox", "text": text, "item": item}))
            .await
            .is_err()
        {
            return Ok(());
        }
    }
    Ok(())
}
