//! The deployment that outgrows one machine: `agentnet indexer` and `agentnet appview` as
//! separate processes sharing a ClickHouse server (Debian's clickhouse-server, on loopback),
//! behind a relay following synthetic agents. What the indexer writes, the appview answers.

mod inproc;
mod support;

use std::process::{Child, Command, Stdio};

use inproc::{http_get, relay_args, tempdir, wait_for, FleetHandle, RelayHandle};
use support::clickhouse::ClickhouseServer;
use support::free_port;

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn agentnet(args: &[&str]) -> Proc {
    Proc(
        Command::new(env!("CARGO_BIN_EXE_agentnet"))
            .args(args)
            .env("AGENTNET_LOG", "warn")
            .env_remove("AGENTNET_MODEL_DIR")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting agentnet"),
    )
}

/// One appview key for a deployment, made by the CLI: (secret, public multikey).
fn appview_key() -> (String, String) {
    let made = Command::new(env!("CARGO_BIN_EXE_agentnet"))
        .arg("appview-key")
        .output()
        .expect("agentnet appview-key");
    assert!(made.status.success());
    let secret = String::from_utf8(made.stdout).expect("utf-8");
    let secret = secret.trim().to_string();
    let public = atproto::envelope::EncryptionKey::from_base64(&secret)
        .expect("the printed secret parses")
        .public()
        .multikey();
    assert!(
        String::from_utf8_lossy(&made.stderr).contains(&public),
        "the public half is shown to the operator"
    );
    (secret, public)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn indexer_and_appview_apart_on_a_clickhouse_server() {
    let clickhouse = tokio::task::spawn_blocking(|| {
        ClickhouseServer::start(&support::root(), "apart-clickhouse")
    })
    .await
    .expect("clickhouse");
    let fleet = FleetHandle::start(3, false).await;
    let data = tempdir("apart");
    let args = relay_args(&data.join("relay"), &fleet.fleet);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let relay = RelayHandle::start(&args).await;
    wait_for("the relay to subscribe", async || {
        fleet.fleet.subscribers() >= 1
    })
    .await;

    let (secret, public) = appview_key();

    let relay_url = format!("ws://127.0.0.1:{}", relay.port);
    let index_dir = data.join("index");
    let _indexer = agentnet(&[
        "indexer",
        "--relay-url",
        &relay_url,
        "--data-dir",
        index_dir.to_str().expect("utf-8"),
        "--clickhouse-url",
        &clickhouse.url,
        "--appview-key",
        &secret,
    ]);
    let port = free_port();
    let _appview = agentnet(&[
        "appview",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--data-dir",
        data.join("appview").to_str().expect("utf-8"),
        "--clickhouse-url",
        &clickhouse.url,
        "--plc-url",
        &fleet.fleet.plc_url(),
        "--dev",
        "--appview-key",
        &secret,
    ]);

    fleet.fleet.genesis().await.expect("genesis");
    for i in 0..9 {
        fleet.fleet.write_one(i % 3).await.expect("write");
    }
    // The fleet's accounts message themselves: each inbox holds its 1 + 3 messages.
    let dids = fleet.fleet.dids().await;
    for did in &dids[..3] {
        let path = format!("/xrpc/agent.comms.getInbox?recipient={did}&limit=100");
        wait_for(
            "the appview to answer from the indexer's rows",
            async || {
                http_get(port, &path)
                    .await
                    .and_then(|b| serde_json::from_str::<serde_json::Value>(&b).ok())
                    .and_then(|v| v["items"].as_array().map(Vec::len))
                    == Some(4)
            },
        )
        .await;
    }
    let agents: serde_json::Value = serde_json::from_str(
        &http_get(port, "/xrpc/agent.comms.listAgents")
            .await
            .expect("listAgents"),
    )
    .expect("JSON");
    assert_eq!(
        agents["agents"].as_array().map(Vec::len),
        Some(3),
        "{agents}"
    );
    // The appview publishes the deployment's key (the one the indexer opens shared records
    // with), not one it made for itself.
    let document = inproc::get_json(port, "/.well-known/did.json").await;
    assert_eq!(
        document["verificationMethod"][0]["publicKeyMultibase"], public,
        "{document}"
    );
    assert!(
        !data.join("appview/appview-key.json").exists()
            && !index_dir.join("appview-key.json").exists(),
        "given the key, neither process makes a key file of its own"
    );
    // Recall needs a model and a shared vector store; without them it says so.
    let (status, _) = inproc::http(port, "GET", "/xrpc/agent.memory.recall?q=x", &[], "")
        .await
        .expect("recall");
    assert_eq!(status, 501);
    relay.stop().await;
    let _ = std::fs::remove_dir_all(&data);
}

/// Agents talking at all three privacy levels, their shared records sealed for the
/// deployment's appview: the indexer (another process, another data directory) opens them
/// with the key it was given, and the appview answers them to their recipients only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_records_reach_their_recipients_in_the_apart_deployment() {
    const APPVIEW: &str = "did:web:apart.test";
    let clickhouse = tokio::task::spawn_blocking(|| {
        ClickhouseServer::start(&support::root(), "apart-shared-clickhouse")
    })
    .await
    .expect("clickhouse");
    let (secret, public) = appview_key();
    let addr = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        probe.local_addr().expect("addr")
    };
    let agents = 4;
    let fleet = agentnet_fleet::Fleet::new(
        agentnet_fleet::FleetConfig {
            listen: addr,
            accounts: agents,
            rate: 0.0,
            keys: "mix".into(),
            cloudflare: false,
            ops_per_commit: 1,
            traffic: "conversation".into(),
            appview: Some(format!("{APPVIEW}={public}")),
        },
        addr,
    )
    .expect("fleet");
    let fleet = FleetHandle::serve(fleet, addr).await;
    let data = tempdir("apart-shared");
    let relay = inproc::relay_in(&[&fleet], &data.join("relay"), &[]).await;
    let relay_url = format!("ws://127.0.0.1:{}", relay.port);
    let _indexer = agentnet(&[
        "indexer",
        "--relay-url",
        &relay_url,
        "--data-dir",
        data.join("index").to_str().expect("utf-8"),
        "--clickhouse-url",
        &clickhouse.url,
        "--appview-did",
        APPVIEW,
        "--appview-key",
        &secret,
        "--dev",
    ]);
    // Two appviews side by side on the same ClickHouse, one DID and one key by configuration.
    let ports = [free_port(), free_port()];
    let _appviews: Vec<Proc> = ports
        .iter()
        .enumerate()
        .map(|(n, port)| {
            agentnet(&[
                "appview",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--data-dir",
                data.join(format!("appview-{n}")).to_str().expect("utf-8"),
                "--clickhouse-url",
                &clickhouse.url,
                "--plc-url",
                &fleet.fleet.plc_url(),
                "--dev",
                "--appview-did",
                APPVIEW,
                "--appview-key",
                &secret,
            ])
        })
        .collect();
    let port = ports[0];
    fleet.fleet.genesis().await.expect("genesis");
    for i in 0..60 {
        fleet.fleet.write_one(i % agents).await.expect("write");
    }
    let dids = fleet.fleet.dids().await;
    let inbox_at = async |port: u16, i: usize, signed: bool| -> Vec<serde_json::Value> {
        let path = format!("/xrpc/agent.comms.getInbox?recipient={}&limit=100", dids[i]);
        let token = match signed {
            true => fleet
                .fleet
                .service_auth(i, APPVIEW, "agent.comms.getInbox")
                .await
                .map(|t| format!("Bearer {t}")),
            false => None,
        };
        let headers: Vec<(&str, &str)> = token
            .as_deref()
            .map(|t| vec![("authorization", t)])
            .unwrap_or_default();
        let Some((200, body)) = inproc::http(port, "GET", &path, &headers, "").await else {
            return Vec::new();
        };
        serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["items"].as_array().cloned())
            .unwrap_or_default()
    };
    let inbox = async |i: usize, signed: bool| inbox_at(port, i, signed).await;
    let shared = |items: &[serde_json::Value]| -> usize {
        items.iter().filter(|v| v["privacy"] == "shared").count()
    };
    // Some agent's own inbox, asked with its own token, holds records shared with it.
    let mut found = None;
    wait_for("a shared record in a recipient's inbox", async || {
        for i in 0..agents {
            let items = inbox(i, true).await;
            if shared(&items) > 0 {
                found = Some((i, items));
                return true;
            }
        }
        false
    })
    .await;
    let (i, items) = found.expect("found");
    for item in items.iter().filter(|v| v["privacy"] == "shared") {
        let recipients = item["recipients"].as_array().expect("recipients");
        assert!(
            recipients.iter().any(|r| r == dids[i].as_str()),
            "a shared record is answered to its recipients only: {item}"
        );
        // Opened by the indexer with the deployment's key: the record itself, not the
        // envelope it travelled in.
        let record = &item["record"];
        assert_eq!(record["$type"], item["collection"], "{item}");
        assert!(record.get("ciphertext").is_none(), "still sealed: {item}");
    }
    // The same inbox asked anonymously shows none of them.
    let anonymous = inbox(i, false).await;
    assert_eq!(shared(&anonymous), 0, "{anonymous:?}");
    // Nothing private is ever indexed.
    for j in 0..agents {
        for item in inbox(j, true).await {
            assert!(
                item["privacy"] == "public" || item["privacy"] == "shared",
                "{item}"
            );
        }
    }
    // The second appview answers the same, and both publish the deployment's key.
    let uris = |items: &[serde_json::Value]| -> Vec<String> {
        items.iter().map(|v| v["uri"].to_string()).collect()
    };
    wait_for("the second appview to answer the same inbox", async || {
        let first = uris(&inbox_at(ports[0], i, true).await);
        !first.is_empty() && uris(&inbox_at(ports[1], i, true).await) == first
    })
    .await;
    for port in ports {
        let document = inproc::get_json(port, "/.well-known/did.json").await;
        assert_eq!(
            document["verificationMethod"][0]["publicKeyMultibase"], public,
            "{document}"
        );
        assert_eq!(document["id"], APPVIEW);
    }
    relay.stop().await;
    let _ = std::fs::remove_dir_all(&data);
}
