//! An index made by an earlier version is brought up to date on open without losing a row:
//! here one at schema version 11 (records in a table with the default granules), opened by
//! this version, which moves the records into a table with small granules and attaches the
//! subject and ref views to it. Needs AGENTNET_CHDB_LIB.

use std::sync::Arc;

use serde_json::json;
use store::chdb::Chdb;
use store::records::{Change, Page, RecordRow, RecordStore, SqlTransport, Visibility, MIGRATIONS};

const A: &str = "did:plc:aaaaaaaaaaaaaaaaaaaaaaaa";
const B: &str = "did:plc:bbbbbbbbbbbbbbbbbbbbbbbb";

fn text(out: Vec<u8>) -> String {
    String::from_utf8(out).expect("utf-8")
}

#[test]
fn an_index_at_version_11_is_upgraded_with_every_row() {
    let lib = std::env::var("AGENTNET_CHDB_LIB")
        .expect("AGENTNET_CHDB_LIB must name libchdb.so: run infra/chdb/setup.sh");
    let dir = std::env::temp_dir().join(format!("agentnet-upgrade-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let sql = Arc::new(Chdb::open(std::path::Path::new(&lib), &dir).expect("chdb"));

    // The index as version 11 left it: its migrations applied and recorded, and a message
    // to B and a request for B written to it (the views of versions 7 and 10 fill the
    // subject and ref tables as they would have).
    sql.execute(
        "CREATE TABLE IF NOT EXISTS schema_versions (version UInt32, applied_ms Int64) \
         ENGINE = MergeTree ORDER BY version",
    )
    .expect("versions table");
    for (version, statement) in MIGRATIONS.iter().filter(|(v, _)| *v <= 11) {
        sql.execute(statement).expect("old migration");
        sql.execute(&format!(
            "INSERT INTO schema_versions (version, applied_ms) VALUES ({version}, 1)"
        ))
        .expect("record version");
    }
    let old = |rkey: &str, collection: &str, field: &str| {
        json!({
            "uri": format!("at://{A}/{collection}/{rkey}"), "ver": 1, "deleted": 0, "cid": "c",
            "author": A, "collection": collection, "rkey": rkey,
            "created_at": "2026-10-01T00:00:00.000Z", "indexed_ms": 1, "visibility": "public",
            "recipients": [], "subjects": [B], "record": json!({field: B}).to_string(),
            "sealed": "", "text": "hi", "thread": "", "refs": [], "topic": ""
        })
        .to_string()
    };
    sql.execute(&format!(
        "INSERT INTO records FORMAT JSONEachRow {} {}",
        old("3m2aaaaaaaaa2", "agent.comms.message", "recipient"),
        old("3m2aaaaaaaaa3", "agent.comms.request", "assignee"),
    ))
    .expect("old rows");

    let store = RecordStore::open(sql.clone()).expect("upgrade");
    assert_eq!(
        store.applied().expect("versions"),
        MIGRATIONS.iter().map(|(v, _)| *v).collect::<Vec<_>>()
    );
    let granules = text(
        sql.execute(
            "SELECT engine_full FROM system.tables \
             WHERE database = currentDatabase() AND name = 'records' FORMAT TSV",
        )
        .expect("engine"),
    );
    assert!(
        granules.contains("index_granularity = 256"),
        "records has small granules: {granules}"
    );
    let tables = text(
        sql.execute(
            "SELECT name FROM system.tables WHERE database = currentDatabase() \
             AND name LIKE 'records%' ORDER BY name FORMAT TSV",
        )
        .expect("tables"),
    );
    assert_eq!(tables.trim(), "records", "the old table is gone");

    // The old rows are found, through the subject table, as before.
    let inbox = store
        .inbox(Some(B), B, None, &Page::first(10))
        .expect("inbox");
    assert_eq!(inbox.rows.len(), 2, "{:?}", inbox.rows);
    // A new row, written after the upgrade, reaches the subject and ref tables through the
    // views on the new table: a response to the old request settles the task.
    let request = format!("at://{A}/agent.comms.request/3m2aaaaaaaaa3");
    let response = RecordRow {
        uri: format!("at://{B}/agent.comms.response/3m2bbbbbbbbb2"),
        cid: "c".into(),
        author: B.into(),
        collection: "agent.comms.response".into(),
        rkey: "3m2bbbbbbbbb2".into(),
        rev: "3m2bbbbbbbbb2".into(),
        created_at: "2026-10-01T00:01:00.000Z".into(),
        visibility: Visibility::Public,
        recipients: vec![],
        record: Some(json!({"$type": "agent.comms.response", "request": request,
            "status": "done", "createdAt": "2026-10-01T00:01:00.000Z"})),
        sealed: None,
        text: Some("done".into()),
        indexed_ms: 0,
    };
    store
        .apply(&[Change::Upsert(Box::new(response))], 2)
        .expect("new row");
    let (tasks, _) = store
        .tasks(Some(B), Some(B), None, None, &Page::first(10))
        .expect("tasks");
    assert_eq!(tasks.len(), 1);
    assert_eq!(tasks[0].status, "done", "the response is found by its ref");
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
}
