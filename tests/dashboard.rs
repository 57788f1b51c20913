//! The operator's dashboard in a real browser: Debian's headless chromium, driven through
//! chromedriver (the W3C WebDriver protocol), against `agentnet up --demo` run in process.
//! The test reads the page as a visitor, sees the numbers move, signs in with the admin
//! token, bans and unbans the demo's host from the page, and saves a screenshot
//! (`AGENTNET_DASHBOARD_SCREENSHOT=path` keeps a copy, as the README's).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use clap::Parser;
use serde_json::{json, Value};

const TOKEN: &str = "dashboard-test-token";

/// `agentnet up`'s options, parsed as the command line would.
#[derive(Parser)]
struct Up {
    #[command(flatten)]
    args: agentnet::up::UpArgs,
}

/// chromedriver on a loopback port, ended with the test.
struct Driver {
    child: Child,
    url: String,
    http: reqwest::Client,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

impl Driver {
    async fn start() -> Driver {
        let path = std::env::var("AGENTNET_CHROMEDRIVER")
            .unwrap_or_else(|_| "/usr/bin/chromedriver".to_string());
        assert!(
            std::path::Path::new(&path).exists(),
            "the dashboard test needs Debian's chromium and chromium-driver: {path} is missing \
             (infra/chromium/setup.sh installs them; scripts/test.sh runs it)"
        );
        let port = free_port();
        let child = Command::new(&path)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("could not start {path}: {e}"));
        let driver = Driver {
            child,
            url: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ready = driver
                .http
                .get(format!("{}/status", driver.url))
                .send()
                .await
                .ok()
                .map(|r| r.status().is_success())
                .unwrap_or(false);
            if ready {
                return driver;
            }
            assert!(Instant::now() < deadline, "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut req = self.http.request(method, format!("{}{path}", self.url));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let answer: Value = req
            .send()
            .await
            .expect("chromedriver answers")
            .json()
            .await
            .expect("chromedriver answers JSON");
        assert!(
            answer["value"]["error"].is_null(),
            "WebDriver {path}: {answer}"
        );
        answer["value"].clone()
    }

    async fn session(&self, profile: &std::path::Path) -> Session<'_> {
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": std::env::var("AGENTNET_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into()),
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                    "--disable-background-networking", "--disable-dev-shm-usage",
                    "--disable-extensions", "--window-size=1400,1900",
                    format!("--user-data-dir={}", profile.display()),
                ],
            },
        }}});
        let value = self
            .call(reqwest::Method::POST, "/session", Some(caps))
            .await;
        let id = value["sessionId"]
            .as_str()
            .expect("a WebDriver session id")
            .to_string();
        Session { driver: self, id }
    }
}

struct Session<'a> {
    driver: &'a Driver,
    id: String,
}

impl Session<'_> {
    async fn post(&self, path: &str, body: Value) -> Value {
        self.driver
            .call(
                reqwest::Method::POST,
                &format!("/session/{}{path}", self.id),
                Some(body),
            )
            .await
    }

    async fn script(&self, script: &str, args: Value) -> Value {
        self.post("/execute/sync", json!({"script": script, "args": args}))
            .await
    }

    async fn text(&self, id: &str) -> String {
        self.script(
            "const e = document.getElementById(arguments[0]); return e ? e.textContent : null;",
            json!([id]),
        )
        .await
        .as_str()
        .unwrap_or_default()
        .to_string()
    }

    async fn number(&self, id: &str) -> Option<f64> {
        self.text(id).await.replace(',', "").parse().ok()
    }

    async fn element(&self, css: &str) -> String {
        let found = self
            .post("/element", json!({"using": "css selector", "value": css}))
            .await;
        found
            .as_object()
            .and_then(|o| o.values().next())
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("no element {css}"))
            .to_string()
    }

    async fn click(&self, css: &str) {
        let e = self.element(css).await;
        self.post(&format!("/element/{e}/click"), json!({})).await;
    }

    async fn type_into(&self, css: &str, text: &str) {
        let e = self.element(css).await;
        self.post(&format!("/element/{e}/value"), json!({"text": text}))
            .await;
    }

    /// Waits for `script` to return something truthy; returns it.
    async fn until(&self, what: &str, script: &str, args: Value) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let v = self.script(script, args.clone()).await;
            let truthy = match &v {
                Value::Null | Value::Bool(false) => false,
                Value::String(s) => !s.is_empty(),
                Value::Number(n) => n.as_f64() != Some(0.0),
                _ => true,
            };
            if truthy {
                return v;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    async fn screenshot(&self) -> Vec<u8> {
        let shot = self
            .driver
            .call(
                reqwest::Method::GET,
                &format!("/session/{}/screenshot", self.id),
                None,
            )
            .await;
        base64::engine::general_purpose::STANDARD
            .decode(shot.as_str().expect("a base64 screenshot"))
            .expect("screenshot is base64")
    }

    async fn end(self) {
        self.driver
            .call(
                reqwest::Method::DELETE,
                &format!("/session/{}", self.id),
                None,
            )
            .await;
    }
}

async fn host_status(http: &reqwest::Client, port: u16, host: &str) -> String {
    let v: Value = http
        .get(format!(
            "http://127.0.0.1:{port}/xrpc/com.atproto.sync.getHostStatus"
        ))
        .query(&[("hostname", host)])
        .send()
        .await
        .expect("getHostStatus")
        .json()
        .await
        .expect("getHostStatus JSON");
    v["status"].as_str().unwrap_or_default().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_live_numbers_and_takes_an_operators_action() {
    let data = tempdir("agentnet-dashboard");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let up = Up::try_parse_from([
        "up",
        "--demo",
        "--demo-rate",
        "25",
        "--no-status",
        "--admin-token",
        TOKEN,
        "--data-dir",
        data.to_str().expect("utf-8 path"),
    ])
    .expect("up's options")
    .args;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let node = tokio::spawn(agentnet::up::run_on(up, listener, async move {
        let _ = stopped.await;
    }));
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");

    // Anonymous callers get aggregates only: the admin endpoint wants the token.
    let deadline = Instant::now() + Duration::from_secs(30);
    let anonymous = loop {
        if let Ok(r) = http.get(format!("{base}/admin/hosts")).send().await {
            break r.status();
        }
        assert!(Instant::now() < deadline, "agentnet up did not answer");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(anonymous, reqwest::StatusCode::UNAUTHORIZED);
    let snapshot: Value = http
        .get(format!("{base}/dashboard/snapshot"))
        .send()
        .await
        .expect("snapshot")
        .json()
        .await
        .expect("snapshot JSON");
    for svc in ["relay", "indexer", "appview"] {
        assert!(snapshot[svc].is_object(), "{svc} missing: {snapshot}");
    }
    let text = snapshot.to_string();
    assert!(
        !text.contains("did:") && !text.contains("127.0.0.1"),
        "the public snapshot names an account or a host: {text}"
    );

    let driver = Driver::start().await;
    let profile = tempdir("agentnet-dashboard-profile");
    let page = driver.session(&profile).await;
    page.post("/url", json!({"url": format!("{base}/")})).await;

    // The numbers move: events published, rows indexed, both counted up while we watch.
    page.until(
        "the live stream",
        "return document.getElementById('connection').textContent === 'live';",
        json!([]),
    )
    .await;
    page.until(
        "events on the page",
        "return Number(document.getElementById('relay-out').textContent.replace(/,/g, '')) > 0;",
        json!([]),
    )
    .await;
    let (out_before, rows_before) = (
        page.number("relay-out").await.unwrap_or(0.0),
        page.number("indexer-rows").await.unwrap_or(0.0),
    );
    page.until(
        "the counts to move",
        "return Number(document.getElementById('relay-out').textContent.replace(/,/g, '')) > arguments[0] \
         && Number(document.getElementById('indexer-rows').textContent.replace(/,/g, '')) > arguments[1];",
        json!([out_before, rows_before]),
    )
    .await;
    assert!(page.number("relay-head").await.unwrap_or(0.0) > 0.0);
    assert!(
        page.text("relay-in-rate").await != "–",
        "no event rate shown"
    );
    // A visitor sees no host detail.
    assert_eq!(
        page.script("return document.getElementById('admin').hidden;", json!([]))
            .await,
        json!(true)
    );
    assert_eq!(
        page.script(
            "return document.querySelectorAll('#hosts tbody tr').length;",
            json!([])
        )
        .await,
        json!(0)
    );

    // A wrong token is refused and shows nothing more.
    page.type_into("#signin-token", "not-the-token").await;
    page.click("#signin").await;
    page.until(
        "the refusal",
        "return document.getElementById('signin-state').textContent === 'token refused';",
        json!([]),
    )
    .await;
    assert_eq!(
        page.script("return document.getElementById('admin').hidden;", json!([]))
            .await,
        json!(true)
    );

    // The operator signs in: the demo's host appears with its detail, and the last events.
    page.script(
        "document.getElementById('signin-token').value = '';",
        json!([]),
    )
    .await;
    page.type_into("#signin-token", TOKEN).await;
    page.click("#signin").await;
    let host = page
        .until(
            "the host table",
            "const r = document.querySelector('#hosts tbody tr[data-host]'); return r && r.dataset.host;",
            json!([]),
        )
        .await
        .as_str()
        .expect("a host URL")
        .to_string();
    assert!(host.starts_with("http://127.0.0.1:"), "{host}");
    page.until(
        "the last events",
        "return document.querySelectorAll('#events tbody tr').length >= 3;",
        json!([]),
    )
    .await;
    assert_eq!(host_status(&http, port, &host).await, "active");

    // Ban from the page: the relay holds the host as banned, and the page says so.
    page.click(&format!(
        "#hosts tbody tr[data-host=\"{host}\"] button[data-action=\"ban\"]"
    ))
    .await;
    page.until(
        "the ban on the page",
        "const r = document.querySelector(`#hosts tbody tr[data-host=\"${arguments[0]}\"] .status`); \
         return r && r.textContent === 'banned';",
        json!([host]),
    )
    .await;
    assert_eq!(host_status(&http, port, &host).await, "banned");

    // And unban: crawled again.
    page.click(&format!(
        "#hosts tbody tr[data-host=\"{host}\"] button[data-action=\"unban\"]"
    ))
    .await;
    page.until(
        "the unban on the page",
        "const r = document.querySelector(`#hosts tbody tr[data-host=\"${arguments[0]}\"] .status`); \
         return r && r.textContent !== 'banned';",
        json!([host]),
    )
    .await;
    assert_ne!(host_status(&http, port, &host).await, "banned");

    // The appview's part: a few queries, counted by query on the page.
    for path in [
        "/xrpc/agent.comms.listAgents",
        "/xrpc/agent.comms.listBroadcasts",
        "/xrpc/agent.comms.listAgents?limit=5",
        "/xrpc/agent.comms.getInbox",
    ] {
        http.get(format!("{base}{path}"))
            .send()
            .await
            .expect("appview query");
    }
    page.until(
        "the queries on the page",
        "return [...document.querySelectorAll('#queries tbody tr')] \
           .some((tr) => tr.cells[0].textContent === 'agent.comms.listAgents' && tr.cells[1].textContent === '2');",
        json!([]),
    )
    .await;
    // getInbox without a caller is refused, and counted as not 2xx.
    page.until(
        "the refused inbox query",
        "return [...document.querySelectorAll('#queries tbody tr')] \
           .some((tr) => tr.cells[0].textContent === 'agent.comms.getInbox' && tr.cells[3].textContent === '1');",
        json!([]),
    )
    .await;
    if std::env::var_os("AGENTNET_DASHBOARD_SCREENSHOT").is_some() {
        // For the README's picture: let the charts fill.
        tokio::time::sleep(Duration::from_secs(40)).await;
    }
    let shot = page.screenshot().await;
    assert!(
        shot.starts_with(b"\x89PNG") && shot.len() > 10_000,
        "not a screenshot ({} bytes)",
        shot.len()
    );
    let saved = data.join("dashboard.png");
    std::fs::write(&saved, &shot).expect("write screenshot");
    if let Ok(path) = std::env::var("AGENTNET_DASHBOARD_SCREENSHOT") {
        std::fs::write(&path, &shot).expect("write AGENTNET_DASHBOARD_SCREENSHOT");
    }

    // The node stops while the page is still open: its live stream must not hold the
    // shutdown.
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(30), node)
        .await
        .expect("agentnet up stopped with a dashboard open")
        .expect("join agentnet up")
        .expect("agentnet up ran cleanly");
    page.end().await;
    drop(driver);
    let _ = std::fs::remove_dir_all(&data);
    let _ = std::fs::remove_dir_all(&profile);
}

fn tempdir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}
