//! Real peers for end-to-end tests: the reference PDS (npm `@atproto/dev-env`), the
//! `@atproto/sync` firehose client, and the `agentnet` binary, each a child process on
//! loopback that is killed (by its PID, through `Child`) when the test drops it.

#![allow(dead_code)]

pub mod clickhouse;
pub mod tansu;

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub fn root() -> PathBuf {
    PathBuf::from(
        std::env::var("CARGO_MANIFEST_DIR")
            .unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_string()),
    )
}

fn node() -> Command {
    let pds = root().join("infra/pds");
    assert!(
        pds.join("node_modules/@atproto/dev-env").is_dir(),
        "the reference PDS is not installed: run infra/pds/setup.sh (scripts/test.sh does)"
    );
    Command::new(pds.join("node.sh"))
}

/// Lines a child prints, read on a thread into a channel.
pub struct Lines(mpsc::Receiver<String>);

impl Lines {
    pub fn spawn(out: impl std::io::Read + Send + 'static) -> Self {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Lines(rx)
    }

    pub fn next_json(&self, timeout: Duration) -> Option<serde_json::Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            let line = self.0.recv_timeout(left).ok()?;
            if let Ok(v) = serde_json::from_str(&line) {
                return Some(v);
            }
        }
    }
}

/// The reference PDS and its PLC.
pub struct Pds {
    child: Child,
    stdin: ChildStdin,
    out: Lines,
    pub url: String,
    pub plc: String,
}

impl Pds {
    /// Starts a reference PDS network. Its test network picks free ports itself, which
    /// two starting at once can both pick: a start that exits before it is ready is tried
    /// again (three times in all); one that hangs fails after 60 s.
    pub fn start() -> Pds {
        let mut last = String::new();
        for _ in 0..3 {
            match Self::try_start() {
                Ok(pds) => return pds,
                Err(why) => last = why,
            }
        }
        panic!("reference PDS did not start: {last}");
    }

    fn try_start() -> Result<Pds, String> {
        let mut child = node()
            .arg(root().join("infra/pds/pds-server.mjs"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting the reference PDS");
        let stdin = child.stdin.take().expect("stdin");
        let out = Lines::spawn(child.stdout.take().expect("stdout"));
        let Some(ready) = out.next_json(Duration::from_secs(60)) else {
            let _ = child.kill();
            let status = child.wait().map(|s| s.to_string()).unwrap_or_default();
            return Err(format!("not ready within 60 s, or exited ({status})"));
        };
        Ok(Pds {
            url: ready["pds"]
                .as_str()
                .expect("pds url")
                .trim_end_matches('/')
                .to_string(),
            plc: ready["plc"].as_str().expect("plc url").to_string(),
            child,
            stdin,
            out,
        })
    }

    /// A DID resolver against this network's PLC (dev mode: loopback allowed).
    pub fn resolver(&self) -> atproto::identity::CachingResolver<atproto::identity::HttpResolver> {
        atproto::identity::CachingResolver::new(
            atproto::identity::HttpResolver::new(atproto::identity::ResolverConfig {
                plc_url: self.plc.clone(),
                dev: true,
                timeout: Duration::from_secs(5),
                egress: None,
            })
            .expect("client"),
            std::num::NonZeroUsize::new(64).expect("nonzero"),
            Duration::from_secs(60),
        )
    }

    pub fn send(&mut self, cmd: serde_json::Value) {
        writeln!(self.stdin, "{cmd}").expect("PDS command");
    }

    pub fn reply(&mut self, timeout: Duration) -> serde_json::Value {
        let v = self.out.next_json(timeout).expect("PDS did not answer");
        assert!(v.get("error").is_none(), "PDS error: {v}");
        v
    }

    pub fn call(&mut self, cmd: serde_json::Value) -> serde_json::Value {
        self.send(cmd);
        self.reply(Duration::from_secs(120))
    }
}

impl Drop for Pds {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The DIDs a sealed record (its JSON, as `getRecord` returns the value) is sealed for.
pub fn sealed_recipients(value: &serde_json::Value) -> Vec<String> {
    value["recipients"]
        .as_array()
        .expect("a sealed record names its recipients")
        .iter()
        .filter_map(|r| r["did"].as_str().map(str::to_string))
        .collect()
}

/// The ops the reference PDS reports it wrote (`{did, action, path}`), each account's in
/// order.
pub fn ops_by_did(
    ops: &[serde_json::Value],
) -> std::collections::BTreeMap<String, Vec<(String, String)>> {
    let mut out: std::collections::BTreeMap<String, Vec<(String, String)>> = Default::default();
    for op in ops {
        out.entry(op["did"].as_str().expect("did").to_string())
            .or_default()
            .push((
                op["action"].as_str().expect("action").to_string(),
                op["path"].as_str().expect("path").to_string(),
            ));
    }
    out
}

/// A fresh directory in the temp dir, named for the test and this process.
pub fn tempdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("agentnet-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// A free loopback port (bound and released; a small race other tests here do not hit).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// `agentnet relay` as a child process.
pub struct Relay {
    child: Child,
    pub port: u16,
}

impl Relay {
    pub fn start(port: u16, data_dir: &std::path::Path, pds: &Pds) -> Relay {
        let child = Command::new(env!("CARGO_BIN_EXE_agentnet"))
            .args(["relay", "--dev", "--listen", &format!("127.0.0.1:{port}")])
            .arg("--data-dir")
            .arg(data_dir)
            .args([
                "--host",
                &pds.url,
                "--plc-url",
                &pds.plc,
                "--host-events-per-second",
                "100000",
            ])
            .env("AGENTNET_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting agentnet relay");
        let relay = Relay { child, port };
        relay.wait_healthy();
        relay
    }

    fn wait_healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if http_get(self.port, "/_health").is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("relay did not become healthy on port {}", self.port);
    }

    /// SIGKILL: no shutdown path runs.
    pub fn kill9(&mut self) {
        self.child.kill().expect("kill -9 relay");
        self.child.wait().expect("reap relay");
    }

    pub fn ws(&self) -> String {
        format!("ws://127.0.0.1:{}", self.port)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A minimal HTTP GET on loopback; the body on 200.
pub fn http_get(port: u16, path: &str) -> Option<String> {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let (head, body) = buf.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_string())
}

/// A stream client from npm (a script in `infra/pds/`) printing one JSON line per event.
pub struct Client {
    child: Child,
    pub out: Lines,
}

impl Client {
    /// The `@atproto/sync` Firehose client subscribed to a relay.
    pub fn start(service: &str, plc: &str, cursor: Option<u64>) -> Client {
        let mut args = vec![service.to_string(), plc.to_string()];
        args.extend(cursor.map(|c| c.to_string()));
        Client::script("firehose-client.mjs", &args)
    }

    /// `infra/pds/SCRIPT ARGS…` on the reference PDS's Node.
    pub fn script(script: &str, args: &[String]) -> Client {
        let mut child = node()
            .arg(root().join("infra/pds").join(script))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {script}: {e}"));
        let out = Lines::spawn(child.stdout.take().expect("stdout"));
        Client { child, out }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
/// `agentnet up` as a child process, killed on drop.
pub struct Up {
    child: Child,
    pub port: u16,
}

impl Up {
    pub fn start(pds: &Pds, data: &std::path::Path) -> Up {
        let model = std::env::var("AGENTNET_MODEL_DIR").expect(
            "AGENTNET_MODEL_DIR must name the ONNX model directory (scripts/test.sh sets it)",
        );
        std::env::var("AGENTNET_CHDB_LIB")
            .expect("AGENTNET_CHDB_LIB must name libchdb.so (scripts/test.sh sets it)");
        std::env::var("ORT_DYLIB_PATH")
            .expect("ORT_DYLIB_PATH must name libonnxruntime (scripts/test.sh sets it)");
        let port = free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_agentnet"))
            .args(["up", "--dev", "--listen", &format!("127.0.0.1:{port}")])
            .arg("--data-dir")
            .arg(data)
            .args([
                "--host",
                &pds.url,
                "--plc-url",
                &pds.plc,
                "--model-dir",
                &model,
            ])
            .env("AGENTNET_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting agentnet up");
        let node = Up { child, port };
        node.wait_for("the relay to reach the PDS", Duration::from_secs(90), |n| {
            http_get(n.port, "/metrics").is_some_and(|m| {
                m.lines().any(|l| {
                    l.starts_with("relay_upstream_connects_total")
                        && l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) >= Some(1.0)
                })
            })
        });
        node
    }

    pub fn wait_for(&self, what: &str, timeout: Duration, ready: impl Fn(&Up) -> bool) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if ready(self) {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("timed out waiting for {what}");
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// SIGTERM and wait: the stores are closed and can be opened by the test.
    pub fn stop(mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                assert!(status.success(), "agentnet up exited with {status}");
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("agentnet up did not stop within 30 s of SIGTERM");
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
