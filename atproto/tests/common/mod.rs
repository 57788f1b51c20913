//! Locating the public atproto conformance fixtures. They are read in place from
//! `../shared/interop/atproto-interop-tests` beside the checkout (or from
//! `AGENTNET_INTEROP_DIR`); a missing file fails the test rather than skipping it.

#![allow(dead_code)]

use std::path::PathBuf;

pub fn interop_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("AGENTNET_INTEROP_DIR") {
        return PathBuf::from(dir);
    }
    PathBuf::from(
        std::env::var("CARGO_MANIFEST_DIR")
            .unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_string()),
    )
    .join("../../shared/interop/atproto-interop-tests")
}

pub fn fixture_path(rel: &str) -> PathBuf {
    let path = interop_dir().join(rel);
    assert!(
        path.is_file(),
        "conformance fixture {} is missing: put the atproto interop tests at ../shared/interop \
         beside the checkout or set AGENTNET_INTEROP_DIR",
        path.display()
    );
    path
}

pub fn read_text(rel: &str) -> String {
    std::fs::read_to_string(fixture_path(rel)).expect("fixture is readable UTF-8")
}

pub fn read_json(rel: &str) -> serde_json::Value {
    serde_json::from_str(&read_text(rel)).expect("fixture is valid JSON")
}

/// The non-empty, non-comment lines of a syntax fixture, kept exactly (spaces matter).
pub fn fixture_lines(rel: &str) -> Vec<String> {
    read_text(rel)
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect()
}
