//! Every line of every `syntax/*_valid.txt` is accepted and every `*_invalid.txt` rejected.

mod common;

use atproto::syntax::{self, SyntaxError};

type Check = fn(&str) -> Result<(), SyntaxError>;

/// File prefix → the validator it exercises. `*_parse_invalid` files hold inputs that are
/// well formed but not meaningful (a 13th month, a repeated variant); we reject those too.
const KINDS: &[(&str, Check)] = &[
    ("atidentifier", syntax::validate_at_identifier),
    ("aturi", syntax::validate_at_uri),
    ("cid", syntax::validate_cid),
    ("datetime", syntax::validate_datetime),
    ("did", syntax::validate_did),
    ("handle", syntax::validate_handle),
    ("language", syntax::validate_language),
    ("nsid", syntax::validate_nsid),
    ("recordkey", syntax::validate_record_key),
    ("tid", syntax::validate_tid),
    ("uri", syntax::validate_uri),
];

#[test]
fn every_syntax_fixture_file_is_covered_and_passes() {
    let dir = common::interop_dir().join("syntax");
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| {
            e.expect("dir entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|n| n.ends_with(".txt"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 22,
        "expected the full set of syntax fixtures, found {files:?}"
    );

    let mut failures = Vec::new();
    let mut checked = 0;
    for file in &files {
        let (kind, check) = KINDS
            .iter()
            .find(|(k, _)| file.starts_with(&format!("{k}_")))
            .unwrap_or_else(|| panic!("no validator for fixture file {file}"));
        let expect_valid = file.ends_with("_valid.txt");
        for line in common::fixture_lines(&format!("syntax/{file}")) {
            checked += 1;
            let result = check(&line);
            if result.is_ok() != expect_valid {
                failures.push(format!("{kind} {file}: {line:?} → {result:?}"));
            }
        }
    }
    assert!(checked > 500, "only {checked} lines checked");
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
