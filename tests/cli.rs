//! The `agentnet` binary as an operator or agent meets it: help text documents options,
//! lexicon tools validate records, and unsafe settings are refused with a clear error.

use std::io::Write;
use std::process::{Command, Output, Stdio};

fn agentnet(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_agentnet"))
        .args(args)
        .env_remove("AGENTNET_RELAY_HOSTS")
        .env_remove("AGENTNET_DEV")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run agentnet");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("write stdin");
    }
    drop(child.stdin.take());
    child.wait_with_output().expect("wait")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn relay_help_documents_every_option_with_its_env_override() {
    help_documents(
        "relay",
        &[
            ("--listen", "AGENTNET_RELAY_LISTEN"),
            ("--data-dir", "AGENTNET_RELAY_DATA_DIR"),
            ("--plc-url", "AGENTNET_PLC_URL"),
            ("--host", "AGENTNET_RELAY_HOSTS"),
            ("--dev", "AGENTNET_DEV"),
            ("--lenient", "AGENTNET_RELAY_LENIENT"),
        ],
    );
}

#[test]
fn backfill_documents_its_options_and_refuses_what_it_cannot_use() {
    help_documents(
        "backfill",
        &[
            ("--host", "AGENTNET_BACKFILL_HOSTS"),
            ("--did", "AGENTNET_BACKFILL_DIDS"),
            ("--concurrency", "AGENTNET_BACKFILL_CONCURRENCY"),
            ("--host-concurrency", "AGENTNET_BACKFILL_HOST_CONCURRENCY"),
            ("--host-requests-per-second", "AGENTNET_BACKFILL_HOST_RPS"),
            ("--max-repo-bytes", "AGENTNET_BACKFILL_MAX_REPO_BYTES"),
            ("--again", "AGENTNET_BACKFILL_AGAIN"),
            ("--progress", "AGENTNET_BACKFILL_PROGRESS"),
            ("--plc-url", "AGENTNET_PLC_URL"),
            ("--data-dir", "AGENTNET_INDEX_DATA_DIR"),
            ("--clickhouse-url", "AGENTNET_CLICKHOUSE_URL"),
            ("--appview-key", "AGENTNET_APPVIEW_KEY"),
        ],
    );
    for (args, says) in [
        (&["backfill"][..], "nothing to backfill"),
        (&["backfill", "--host", "pds.example.com"], "base URL"),
        (&["backfill", "--did", "alice"], "--did alice"),
        (
            &[
                "backfill",
                "--did",
                "did:plc:ewvi7nxzyoun6zhxrhs64oiz",
                "--concurrency",
                "0",
            ],
            "must be positive",
        ),
    ] {
        let out = agentnet(args, None);
        assert!(!out.status.success(), "{args:?} ran");
        assert!(
            text(&out.stderr).contains(says),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
}

/// `agentnet up --help` shows everything `up` takes: its own options and the relay's and
/// indexer's settings, each with the same variable as the service alone.
#[test]
fn up_help_shows_every_setting_it_takes() {
    help_documents(
        "up",
        &[
            ("--listen", "AGENTNET_UP_LISTEN"),
            ("--data-dir", "AGENTNET_UP_DATA_DIR"),
            ("--host", "AGENTNET_UP_HOSTS"),
            ("--demo", "AGENTNET_UP_DEMO"),
            ("--admin-token", "AGENTNET_RELAY_ADMIN_TOKEN"),
            ("--retention-hours", "AGENTNET_RELAY_RETENTION_HOURS"),
            (
                "--host-events-per-second",
                "AGENTNET_RELAY_HOST_EVENTS_PER_SECOND",
            ),
            ("--max-subscribers", "AGENTNET_RELAY_MAX_SUBSCRIBERS"),
            ("--batch", "AGENTNET_INDEXER_BATCH"),
            ("--progress-secs", "AGENTNET_INDEXER_PROGRESS_SECS"),
            ("--clickhouse-url", "AGENTNET_CLICKHOUSE_URL"),
            ("--qdrant-url", "AGENTNET_QDRANT_URL"),
            ("--model-dir", "AGENTNET_MODEL_DIR"),
        ],
    );
}

/// One environment can hold every service's settings: a service's own variables carry its
/// name, and the only names two services share are the ones that must agree across a
/// deployment (the directory, development mode, the index's stores and model, the
/// appview's identity and key, logging).
#[test]
fn each_service_reads_its_own_environment_names() {
    const SHARED: &[&str] = &[
        "AGENTNET_PLC_URL",
        "AGENTNET_DEV",
        "AGENTNET_LOG_FORMAT",
        "AGENTNET_INDEX_",
        "AGENTNET_CLICKHOUSE_",
        "AGENTNET_CHDB_LIB",
        "AGENTNET_QDRANT_",
        "AGENTNET_MODEL_",
        "AGENTNET_APPVIEW_DID",
        "AGENTNET_APPVIEW_KEY",
    ];
    let mut seen: std::collections::HashMap<String, &str> = Default::default();
    for (command, own) in [
        ("relay", "AGENTNET_RELAY_"),
        ("indexer", "AGENTNET_INDEXER_"),
        ("appview", "AGENTNET_APPVIEW_"),
        ("backfill", "AGENTNET_BACKFILL_"),
        ("fleet", "AGENTNET_FLEET_"),
    ] {
        let out = agentnet(&[command, "--help"], None);
        assert!(out.status.success());
        let help = text(&out.stdout);
        let names: std::collections::BTreeSet<String> = help
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("AGENTNET_"))
            .map(str::to_string)
            .collect();
        assert!(
            names.len() > 3,
            "`{command} --help` names no variables:\n{help}"
        );
        for name in names {
            let shared = SHARED.iter().any(|s| name.starts_with(s));
            assert!(
                name.starts_with(own) || shared,
                "`agentnet {command}` reads {name}, which is neither its own ({own}…) nor a deployment-wide setting"
            );
            if !shared {
                if let Some(other) = seen.insert(name.clone(), command) {
                    panic!("{name} is read by both {other} and {command}");
                }
            }
        }
    }
}

/// `agentnet COMMAND --help` names every flag with its environment variable.
fn help_documents(command: &str, options: &[(&str, &str)]) {
    let out = agentnet(&[command, "--help"], None);
    assert!(out.status.success());
    let help = text(&out.stdout);
    for (flag, env) in options {
        assert!(
            help.contains(flag) && help.contains(env),
            "{flag} / {env} missing from `{command} --help`:\n{help}"
        );
    }
}

#[test]
fn loopback_hosts_need_dev_mode() {
    let out = agentnet(&["relay", "--host", "http://127.0.0.1:2583"], None);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("dev mode is off"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn lexicon_validate_accepts_good_records_and_explains_bad_ones() {
    let good = r#"{"$type":"agent.comms.request","sender":"did:plc:ewvi7nxzyoun6zhxrhs64oiz",
        "assignee":"did:web:agent.example.com","task":"summarize","createdAt":"2026-11-24T08:00:00.000Z"}"#;
    let out = agentnet(&["lexicon", "validate", "-"], Some(good));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "valid agent.comms.request");

    let bad = good.replace("summarize", &"x".repeat(600));
    let out = agentnet(&["lexicon", "validate", "-"], Some(&bad));
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("record/task"),
        "{}",
        text(&out.stderr)
    );

    let out = agentnet(
        &["lexicon", "validate", "-"],
        Some("{\"$type\": \"agent.comms.request\", \"a\": 1.5}"),
    );
    assert!(!out.status.success(), "floats are not atproto data");
}

#[test]
fn lexicon_list_and_show() {
    let out = agentnet(&["lexicon", "list"], None);
    let list = text(&out.stdout);
    for nsid in [
        "agent.comms.message",
        "agent.memory.recall",
        "agent.envelope.sealed",
    ] {
        assert!(list.lines().any(|l| l == nsid), "{nsid} not listed");
    }
    let out = agentnet(&["lexicon", "show", "agent.comms.handoff"], None);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(doc["id"], "agent.comms.handoff");
    assert!(!agentnet(&["lexicon", "show", "agent.nope.nothing"], None)
        .status
        .success());
}

/// The README's first command: `agentnet up --demo` shows a live network within a minute —
/// relayed, indexed (agents with their keys), recallable by anyone for public records — and
/// shuts down cleanly on SIGTERM.
#[test]
fn up_demo_runs_a_live_network_and_stops_cleanly() {
    let model = std::env::var("AGENTNET_MODEL_DIR")
        .expect("AGENTNET_MODEL_DIR must name the ONNX model directory (scripts/test.sh sets it)");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let data = std::env::temp_dir().join(format!("agentnet-up-demo-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    let child = Command::new(env!("CARGO_BIN_EXE_agentnet"))
        .args([
            "up",
            "--demo",
            "--demo-rate",
            "20",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--model-dir",
            &model,
        ])
        .arg("--data-dir")
        .arg(&data)
        .env("AGENTNET_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("agentnet up");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let json = |path: &str| -> serde_json::Value {
        serde_json::from_str(&get(port, path)).unwrap_or(serde_json::Value::Null)
    };
    let (mut published, mut keys, mut recalled) = (0.0, 0, Vec::new());
    while std::time::Instant::now() < deadline
        && (published < 30.0 || keys == 0 || recalled.is_empty())
    {
        std::thread::sleep(std::time::Duration::from_millis(300));
        published = get(port, "/metrics")
            .lines()
            .find_map(|l| {
                l.strip_prefix("relay_events_out_total")
                    .and_then(|v| v.trim().parse().ok())
            })
            .unwrap_or(0.0);
        keys = json("/xrpc/agent.comms.listAgents")["agents"]
            .as_array()
            .map_or(0, |a| {
                a.iter().filter(|a| a["encryptionKey"].is_string()).count()
            });
        recalled = json("/xrpc/agent.memory.recall?q=database+credentials&limit=20")["results"]
            .as_array()
            .cloned()
            .unwrap_or_default();
    }
    let dashboard = get(port, "/");
    let index_page = get(port, "/appview");
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let out = child.wait_with_output().expect("wait");
    assert!(published >= 30.0, "only {published} events relayed");
    assert!(keys > 0, "no agent's encryption key was indexed");
    assert!(!recalled.is_empty(), "nothing recallable");
    assert!(
        recalled.iter().all(|r| r["item"]["privacy"] == "public"),
        "anonymous recall returned non-public records: {recalled:?}"
    );
    assert!(index_page.contains("records indexed"), "{index_page}");
    assert!(dashboard.contains("/dashboard/dashboard.js"), "{dashboard}");
    assert!(out.status.success(), "exit {:?}", out.status);
    assert!(
        text(&out.stdout).contains("dashboard http://"),
        "{}",
        text(&out.stdout)
    );
    let _ = std::fs::remove_dir_all(&data);
}

/// A GET on loopback; the body (empty if unreachable).
fn get(port: u16, path: &str) -> String {
    use std::io::Read;
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let _ = write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
    );
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    buf.split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default()
}

#[test]
fn agent_rpc_reports_a_login_it_cannot_make_as_a_fatal_event() {
    // Nothing listens on port 1: the session cannot log in, says why on stdout (where the
    // tool reads), and exits non-zero instead of waiting for requests.
    let out = agentnet(
        &[
            "agent",
            "--pds",
            "http://127.0.0.1:1",
            "--identifier",
            "ann.test",
            "--password",
            "x",
            "rpc",
        ],
        Some("{\"id\":1,\"method\":\"whoami\"}\n"),
    );
    assert!(!out.status.success());
    let first: serde_json::Value =
        serde_json::from_str(text(&out.stdout).lines().next().expect("a line on stdout"))
            .expect("JSON");
    assert_eq!(first["event"], "fatal", "{first}");
    assert!(
        first["message"]
            .as_str()
            .is_some_and(|m| m.contains("createSession")),
        "{first}"
    );
}

/// The line a relay started with `args` logs when it is running, read from a pipe.
fn relay_running_line(args: &[&str]) -> String {
    let dir = std::env::temp_dir().join(format!(
        "agentnet-cli-log-{}-{}",
        std::process::id(),
        args.len()
    ));
    let mut child = Command::new(env!("CARGO_BIN_EXE_agentnet"))
        .args(["relay", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&dir)
        .args(args)
        .env("AGENTNET_LOG", "info")
        .env_remove("AGENTNET_RELAY_HOSTS")
        .env_remove("AGENTNET_LOG_FORMAT")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run agentnet");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let found = std::io::BufRead::lines(std::io::BufReader::new(stderr))
            .map_while(Result::ok)
            .find(|l| l.contains("relay running"));
        let _ = tx.send(found);
    });
    let running = rx
        .recv_timeout(std::time::Duration::from_secs(30))
        .ok()
        .flatten();
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    running.expect("the relay logs that it is running")
}

#[test]
fn logs_written_to_a_pipe_carry_no_colour_codes() {
    let line = relay_running_line(&[]);
    assert!(!line.contains('\u{1b}'), "ANSI escapes in {line:?}");
    assert!(
        serde_json::from_str::<serde_json::Value>(&line).is_err(),
        "text by default: {line}"
    );
}

#[test]
fn logs_in_json_are_one_object_per_line_for_shippers() {
    let line = relay_running_line(&["--log-format", "json"]);
    let event: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    assert_eq!(event["level"], "INFO", "{line}");
    assert!(
        event["message"]
            .as_str()
            .is_some_and(|m| m.contains("relay running")),
        "the message is a top-level field: {line}"
    );
    assert!(
        event["target"]
            .as_str()
            .is_some_and(|t| t.starts_with("agentnet")),
        "{line}"
    );
    assert!(event["timestamp"].is_string(), "{line}");
    assert!(!line.contains('\u{1b}'), "ANSI escapes in {line:?}");
    // An unknown format is refused, not ignored.
    let out = agentnet(&["relay", "--log-format", "yaml"], None);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("--log-format"));
}

#[test]
fn up_uses_the_store_servers_it_is_given() {
    help_documents(
        "up",
        &[
            ("--clickhouse-url", "AGENTNET_CLICKHOUSE_URL"),
            ("--qdrant-url", "AGENTNET_QDRANT_URL"),
            ("--qdrant-collection", "AGENTNET_QDRANT_COLLECTION"),
            ("--chdb-lib", "AGENTNET_CHDB_LIB"),
        ],
    );
    // Given a Qdrant server, `up` connects to it (here: nothing listens, so it stops at start
    // with the store's error) instead of quietly keeping the vectors embedded.
    let model = std::env::var("AGENTNET_MODEL_DIR")
        .expect("AGENTNET_MODEL_DIR must name the ONNX model directory (scripts/test.sh sets it)");
    let data = std::env::temp_dir().join(format!("agentnet-up-qdrant-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    let out = agentnet(
        &[
            "up",
            "--listen",
            "127.0.0.1:0",
            "--model-dir",
            &model,
            "--qdrant-url",
            "http://127.0.0.1:9",
            "--data-dir",
            data.to_str().expect("utf-8 path"),
        ],
        None,
    );
    let embedded = data.join("index/vectors").exists();
    let _ = std::fs::remove_dir_all(&data);
    let stderr = text(&out.stderr);
    assert!(
        !out.status.success(),
        "up ran without its Qdrant:\n{stderr}"
    );
    assert!(
        stderr.contains("vector store") && !stderr.contains("unexpected argument"),
        "{stderr}"
    );
    assert!(!embedded, "no embedded vector store was made");
}

#[test]
fn an_indexer_without_the_appviews_key_refuses_to_start() {
    help_documents(
        "indexer",
        &[
            ("--appview-key", "AGENTNET_APPVIEW_KEY"),
            ("--appview-key-file", "AGENTNET_APPVIEW_KEY_FILE"),
            ("--progress-secs", "AGENTNET_INDEXER_PROGRESS_SECS"),
            ("--log-format", "AGENTNET_LOG_FORMAT"),
        ],
    );
    help_documents("appview", &[("--appview-key", "AGENTNET_APPVIEW_KEY")]);
    let data = std::env::temp_dir().join(format!("agentnet-no-key-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    let run = |extra: &[&str]| {
        let mut args = vec![
            "indexer",
            "--relay-url",
            "ws://127.0.0.1:9",
            "--data-dir",
            data.to_str().expect("utf-8 path"),
        ];
        args.extend_from_slice(extra);
        agentnet(&args, None)
    };
    // No key and no key file: a key of its own would leave shared records unreadable.
    let out = run(&[]);
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("no appview key") && stderr.contains("--appview-key"),
        "{stderr}"
    );
    assert!(
        !data.join("appview-key.json").exists(),
        "the indexer made no key file"
    );
    // A malformed key is refused as such.
    let out = run(&["--appview-key", "not-a-key"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("--appview-key"));
    let _ = std::fs::remove_dir_all(&data);

    // `agentnet appview-key` makes keys that parse, a different one each time.
    let one = agentnet(&["appview-key"], None);
    let two = agentnet(&["appview-key"], None);
    assert!(one.status.success() && two.status.success());
    let (one, two) = (text(&one.stdout), text(&two.stdout));
    assert!(
        atproto::envelope::EncryptionKey::from_base64(&one).is_ok(),
        "{one}"
    );
    assert_ne!(one, two);
}

/// On a terminal, `up` keeps one status line redrawn in place with what each service is
/// doing, and ends it cleanly on shutdown. `script` gives it a pseudo-terminal, as an
/// operator's shell would.
#[test]
fn up_shows_a_live_status_line_on_a_terminal() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let data = std::env::temp_dir().join(format!("agentnet-up-status-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    // Stopped by SIGTERM after a while, as a service manager would.
    let command = format!(
        "timeout -s TERM 20 {} up --demo --demo-rate 20 --listen 127.0.0.1:{port} --data-dir {}",
        env!("CARGO_BIN_EXE_agentnet"),
        data.display()
    );
    let out = Command::new("script")
        .args(["-qfec", &command, "/dev/null"])
        .env("AGENTNET_LOG", "warn")
        .env_remove("AGENTNET_MODEL_DIR")
        .stdin(Stdio::null())
        .output()
        .expect("`script` (util-linux) runs the command on a pseudo-terminal");
    let shown = text(&out.stdout);
    let _ = std::fs::remove_dir_all(&data);
    // Every redraw starts with a carriage return and erases the line.
    let lines: Vec<&str> = shown
        .split("\r\u{1b}[2K")
        .skip(1)
        .map(|l| l.lines().next().unwrap_or_default())
        .collect();
    assert!(lines.len() >= 5, "a redraw a second: {shown:?}");
    let number_before = |line: &str, what: &str| -> u64 {
        line.split(what)
            .next()
            .unwrap_or_default()
            .rsplit(|c: char| !c.is_ascii_digit())
            .find(|w| !w.is_empty())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    let last = lines.last().expect("a line");
    assert!(
        last.starts_with("relay ") && last.contains("│ indexer ") && last.contains("│ appview "),
        "{last}"
    );
    assert!(
        number_before(last, " out (") > 0,
        "the relay published: {last}"
    );
    assert!(
        number_before(last, " rows (") > 0,
        "the indexer wrote: {last}"
    );
    // Totals never go back between redraws.
    let outs: Vec<u64> = lines.iter().map(|l| number_before(l, " out (")).collect();
    assert!(outs.windows(2).all(|w| w[0] <= w[1]), "{outs:?}");
}

/// `agentnet relay` alone serves the relay's part of the dashboard: the page, and a live
/// snapshot with the relay's metrics and no indexer or appview.
#[test]
fn the_relay_alone_serves_its_part_of_the_dashboard() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let dir = std::env::temp_dir().join(format!("agentnet-relay-dashboard-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut child = Command::new(env!("CARGO_BIN_EXE_agentnet"))
        .args([
            "relay",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
        ])
        .arg(&dir)
        .env("AGENTNET_LOG", "warn")
        .env_remove("AGENTNET_RELAY_HOSTS")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("run agentnet relay");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while get(port, "/_health").is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let page = get(port, "/");
    let script = get(port, "/dashboard/dashboard.js");
    let snapshot: serde_json::Value =
        serde_json::from_str(&get(port, "/dashboard/snapshot")).unwrap_or_default();
    // A page watching the live stream must not hold the relay's shutdown open.
    let mut watching =
        std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect to the relay");
    let _ = write!(watching, "GET /dashboard/live HTTP/1.1\r\nhost: x\r\n\r\n");
    let mut first = [0u8; 64];
    let _ = std::io::Read::read(&mut watching, &mut first);
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let exited = loop {
        if let Ok(Some(status)) = child.try_wait() {
            break Some(status);
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    drop(watching);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        exited.is_some_and(|s| s.success()),
        "the relay did not stop cleanly on SIGTERM with a dashboard open: {exited:?}"
    );
    assert!(
        String::from_utf8_lossy(&first).starts_with("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&first)
    );
    assert!(page.contains("/dashboard/dashboard.js"), "{page}");
    assert!(script.contains("EventSource"), "the script is not served");
    assert!(snapshot["relay"]["relay_head_seq"].is_array(), "{snapshot}");
    assert!(
        snapshot["indexer"].is_null() && snapshot["appview"].is_null(),
        "{snapshot}"
    );
}
