//! Agents on the reference PDS: publish encryption keys, then write public, shared and
//! private records. The PDS stores sealed records as written; only their recipients can
//! open them, and the plaintext is bound to the record it was written to.

mod support;

use agentnet_agent::{open_json, Agent, AgentError, Privacy};
use atproto::envelope::EnvelopeError;
use serde_json::json;
use support::Pds;

#[tokio::test]
async fn agents_seal_for_recipients_on_a_real_pds() {
    let mut pds = tokio::task::spawn_blocking(Pds::start)
        .await
        .expect("start");
    let pds = tokio::task::spawn_blocking(move || {
        pds.call(json!({"op": "accounts", "names": ["ann", "ben", "cat"]}));
        pds
    })
    .await
    .expect("accounts");
    let resolver = pds.resolver();
    let dir = std::env::temp_dir().join(format!("agentnet-agents-{}", std::process::id()));
    let mut ann = Agent::login(&pds.url, "ann.test", "hunter2-agentnet")
        .await
        .expect("login ann");
    let ben = Agent::login(&pds.url, "ben.test", "hunter2-agentnet")
        .await
        .expect("login ben");
    let cat = Agent::login(&pds.url, "cat.test", "hunter2-agentnet")
        .await
        .expect("login cat");
    let ann_key = ann.keygen(&dir.join("ann.json")).await.expect("ann keygen");
    let ben_key = ben.keygen(&dir.join("ben.json")).await.expect("ben keygen");
    let cat_key = cat.keygen(&dir.join("cat.json")).await.expect("cat keygen");
    // keygen again reuses the stored key.
    assert_eq!(
        ann.keygen(&dir.join("ann.json"))
            .await
            .expect("again")
            .public(),
        ann_key.public()
    );

    let (ann_did, ben_did) = (ann.did().to_string(), ben.did().to_string());
    let message = |text: &str| {
        json!({
            "$type": "agent.comms.message",
            "sender": ann_did,
            "recipient": ben_did,
            "content": {"kind": "text", "text": text},
            "createdAt": "2026-11-24T08:00:00.000Z",
        })
    };
    let rkey = |uri: &str| uri.rsplit('/').next().expect("rkey").to_string();

    // Public: plaintext in the repo.
    let public = message("the build is green");
    let uri = ann
        .send(&public, Privacy::Public, &[], &resolver)
        .await
        .expect("public");
    let stored = ann
        .get_record(ann.did(), "agent.comms.message", &rkey(&uri), &resolver)
        .await
        .expect("get");
    assert_eq!(stored["value"], public);

    // Shared: sealed for ben (and ann); cat cannot open it.
    let shared = message("the deploy key is in the vault");
    let uri = ann
        .send(
            &shared,
            Privacy::Shared,
            &[ben.did().to_string()],
            &resolver,
        )
        .await
        .expect("shared");
    assert!(uri.contains("/agent.envelope.sealed/"), "{uri}");
    let stored = ben
        .get_record(ann.did(), "agent.envelope.sealed", &rkey(&uri), &resolver)
        .await
        .expect("get");
    let value = &stored["value"];
    assert_eq!(value["collection"], "agent.comms.message");
    assert!(
        !value.to_string().contains("vault"),
        "no plaintext in the stored record"
    );
    assert_eq!(
        open_json(value, &uri, ben.did(), &ben_key).expect("ben opens"),
        shared
    );
    assert_eq!(
        open_json(value, &uri, ann.did(), &ann_key).expect("ann opens"),
        shared
    );
    assert!(matches!(
        open_json(value, &uri, cat.did(), &cat_key),
        Err(AgentError::Envelope(EnvelopeError::NotRecipient))
    ));
    // Bound to its record: the same ciphertext read as another record does not open.
    let moved = format!("at://{}/agent.envelope.sealed/3kznmn7xqxl22", ann.did());
    assert!(open_json(value, &moved, ben.did(), &ben_key).is_err());

    // Private: sealed for the author alone.
    let note = json!({"$type": "agent.memory.note", "text": "ben prefers terse summaries", "createdAt": "2026-11-24T08:00:00.000Z"});
    let uri = ann
        .send(&note, Privacy::Private, &[ben.did().to_string()], &resolver)
        .await
        .expect("private");
    let stored = ann
        .get_record(ann.did(), "agent.envelope.sealed", &rkey(&uri), &resolver)
        .await
        .expect("get");
    assert_eq!(
        support::sealed_recipients(&stored["value"]),
        vec![ann.did().to_string()],
        "private means the author alone, whoever else was named"
    );
    assert_eq!(
        open_json(&stored["value"], &uri, ann.did(), &ann_key).expect("ann opens"),
        note
    );

    // Records that break their lexicon are refused before they reach the PDS.
    let bad = json!({"$type": "agent.comms.message", "sender": "not-a-did", "createdAt": "2026-11-24T08:00:00.000Z"});
    assert!(matches!(
        ann.send(&bad, Privacy::Public, &[], &resolver).await,
        Err(AgentError::Record(_))
    ));
    let _ = std::fs::remove_dir_all(&dir);
    drop(pds);
}

/// The same through `agentnet agent …`, as an agent process would call it.
#[test]
fn agent_cli_keygen_send_read() {
    let mut pds = Pds::start();
    let dids = pds.call(json!({"op": "accounts", "names": ["dan", "eve"]}));
    let dir = std::env::temp_dir().join(format!("agentnet-agent-cli-{}", std::process::id()));
    let run = |who: &str, args: &[&str], stdin: Option<&str>| -> String {
        use std::io::Write;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_agentnet"))
            .args([
                "agent",
                "--dev",
                "--pds",
                &pds.url,
                "--plc-url",
                &pds.plc,
                "--identifier",
                &format!("{who}.test"),
            ])
            .arg("--key-file")
            .arg(dir.join(format!("{who}.json")))
            .args(args)
            .env("AGENTNET_AGENT_PASSWORD", "hunter2-agentnet")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("agentnet agent");
        if let Some(input) = stdin {
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(input.as_bytes())
                .expect("write");
        }
        drop(child.stdin.take());
        let out = child.wait_with_output().expect("wait");
        assert!(
            out.status.success(),
            "{who} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(run("dan", &["keygen"], None).contains(" publishes z"));
    run("eve", &["keygen"], None);
    let eve = dids["dids"]["eve"].as_str().expect("eve");
    let dan = dids["dids"]["dan"].as_str().expect("dan");
    let request = json!({"$type": "agent.comms.request", "sender": dan, "assignee": eve, "task": "review PR 42", "createdAt": "2026-11-24T08:00:00.000Z"});
    let uri = run(
        "dan",
        &["send", "--privacy", "shared", "--to", eve, "-"],
        Some(&request.to_string()),
    );
    let read = run("eve", &["read", uri.trim()], None);
    let opened: serde_json::Value = serde_json::from_str(&read).expect("JSON");
    assert_eq!(opened, request);
    let _ = std::fs::remove_dir_all(&dir);
}
