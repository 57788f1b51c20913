//! The `agentnet` binary as an operator or agent meets it: help text documents options,
//! lexicon tools validate records, and unsafe settings are refused with a clear error.

use std::io::Write;
use std::process::{Command, Output, Stdio};

fn agentnet(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_agentnet"))
        .args(args)
        .env_remove("AGENTNET_HOSTS")
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
    let out = agentnet(&["relay", "--help"], None);
    assert!(out.status.success());
    let help = text(&out.stdout);
    for (flag, env) in [
        ("--listen", "AGENTNET_LISTEN"),
        ("--data-dir", "AGENTNET_DATA_DIR"),
        ("--plc-url", "AGENTNET_PLC_URL"),
        ("--host", "AGENTNET_HOSTS"),
        ("--dev", "AGENTNET_DEV"),
        ("--lenient", "AGENTNET_LENIENT"),
    ] {
        assert!(
            help.contains(flag) && help.contains(env),
            "{flag} / {env} missing from:\n{help}"
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
