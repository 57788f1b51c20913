//! chDB (embedded ClickHouse) through its C API: statements run, errors come back as
//! errors, data persists across reopening. Needs AGENTNET_CHDB_LIB (scripts/test.sh sets it
//! from infra/chdb/setup.sh).

use store::chdb::{Chdb, ChdbError};

fn lib() -> std::path::PathBuf {
    let path = std::env::var("AGENTNET_CHDB_LIB")
        .expect("AGENTNET_CHDB_LIB must name libchdb.so: run infra/chdb/setup.sh");
    std::path::PathBuf::from(path)
}

#[test]
fn statements_errors_and_persistence() {
    let dir = std::env::temp_dir().join(format!("agentnet-chdb-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let db = Chdb::open(&lib(), &dir).expect("open");
    db.query(
        "CREATE TABLE t (uri String, ver UInt64) ENGINE = ReplacingMergeTree(ver) ORDER BY uri",
        "CSV",
    )
    .expect("create");
    db.query("INSERT INTO t FORMAT JSONEachRow {\"uri\":\"a\",\"ver\":1} {\"uri\":\"a\",\"ver\":2} {\"uri\":\"b\",\"ver\":1}", "CSV").expect("insert");
    let out = String::from_utf8(
        db.query("SELECT uri, ver FROM t FINAL ORDER BY uri", "JSONEachRow")
            .expect("select"),
    )
    .expect("utf-8");
    // ReplacingMergeTree with FINAL keeps the highest version of each key. (Whether 64-bit
    // integers come quoted depends on the ClickHouse version, so compare values.)
    let rows: Vec<(String, String)> = out
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("json row");
            (
                v["uri"].as_str().expect("uri").to_string(),
                v["ver"].to_string().trim_matches('"').to_string(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        vec![
            ("a".to_string(), "2".to_string()),
            ("b".to_string(), "1".to_string())
        ]
    );
    assert!(matches!(
        db.query("SELECT nope FROM t", "CSV"),
        Err(ChdbError::Query(_))
    ));
    drop(db);
    let again = Chdb::open(&lib(), &dir).expect("reopen");
    let n = String::from_utf8(
        again
            .query("SELECT count() FROM t FINAL", "CSV")
            .expect("count"),
    )
    .expect("utf-8");
    assert_eq!(n.trim(), "2", "the rows survive reopening");
    drop(again);
    let _ = std::fs::remove_dir_all(&dir);
}
