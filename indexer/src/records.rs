//! The record index in ClickHouse: versioned schema (`indexer/sql/`), writes of index
//! changes, and the coordination queries with the caller's access rule inside the SQL. The
//! same SQL runs on any transport: embedded chDB by default, a ClickHouse server when
//! scaled out.

use serde::Deserialize;
use serde_json::{json, Value};
use thiserror::Error;

use crate::extract::{Change, RecordRow, Visibility};

/// Schema files in order; each runs once (`CREATE … IF NOT EXISTS`).
pub const MIGRATIONS: &[(&str, &str)] = &[
    ("001_records", include_str!("../sql/001_records.sql")),
    ("002_cursor", include_str!("../sql/002_cursor.sql")),
];

/// Collections that land in an agent's inbox.
const INBOX_COLLECTIONS: &[&str] = &[
    "agent.comms.message",
    "agent.comms.request",
    "agent.comms.handoff",
];
/// Most rows one query returns.
pub const MAX_LIMIT: usize = 100;

/// Why a store operation failed.
#[derive(Debug, Error)]
pub enum RecordError {
    /// The transport failed or ClickHouse refused the statement.
    #[error("ClickHouse: {0}")]
    Sql(String),
    /// A row came back in a shape this code does not read.
    #[error("unexpected row: {0}")]
    Row(String),
}

/// Somewhere SQL runs: statements in, `JSONEachRow` out.
pub trait SqlTransport: Send + Sync {
    /// Runs one statement.
    fn execute(&self, sql: &str) -> Result<Vec<u8>, RecordError>;
}

impl SqlTransport for crate::chdb::Chdb {
    fn execute(&self, sql: &str) -> Result<Vec<u8>, RecordError> {
        self.query(sql, "JSONEachRow")
            .map_err(|e| RecordError::Sql(e.to_string()))
    }
}

/// A string literal for ClickHouse SQL.
pub fn sql_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            '\0' => out.push_str("\\0"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// The caller's access rule as a SQL condition: public records, or the caller is the
/// author or a recipient. Anonymous callers see public records only.
pub fn visible_to(caller: Option<&str>) -> String {
    match caller {
        None => "visibility = 'public'".to_string(),
        Some(did) => {
            let d = sql_str(did);
            format!("(visibility = 'public' OR author = {d} OR has(recipients, {d}))")
        }
    }
}

/// The record index.
pub struct RecordStore<T> {
    sql: T,
}

#[derive(Deserialize)]
struct Row {
    uri: String,
    cid: String,
    author: String,
    collection: String,
    rkey: String,
    created_at: String,
    visibility: String,
    recipients: Vec<String>,
    record: String,
    sealed: String,
    text: String,
    ver: Value,
}

impl Row {
    fn into_record(self) -> RecordRow {
        let parse = |s: &str| {
            if s.is_empty() {
                None
            } else {
                serde_json::from_str(s).ok()
            }
        };
        let ver = match &self.ver {
            Value::String(s) => s.parse().unwrap_or(0),
            v => v.as_u64().unwrap_or(0),
        };
        RecordRow {
            record: parse(&self.record),
            sealed: parse(&self.sealed),
            text: (!self.text.is_empty()).then_some(self.text),
            uri: self.uri,
            cid: self.cid,
            author: self.author,
            collection: self.collection,
            rkey: self.rkey,
            rev: atproto::syntax::Tid::from_u64(ver).to_string(),
            created_at: self.created_at,
            visibility: if self.visibility == "public" {
                Visibility::Public
            } else {
                Visibility::Shared
            },
            recipients: self.recipients,
        }
    }
}

fn version(rev: &str) -> u64 {
    atproto::syntax::Tid::parse(rev)
        .map(|t| t.as_u64())
        .unwrap_or(0)
}

/// Who a record is addressed to, for inbox queries: the record's own addressee fields when
/// it is readable, otherwise (sealed) its recipients other than the author.
fn subjects(row: &RecordRow) -> Vec<String> {
    let mut out: Vec<String> = match &row.record {
        Some(r) if row.visibility == Visibility::Public => ["recipient", "assignee", "to"]
            .iter()
            .filter_map(|k| r.get(*k).and_then(Value::as_str).map(str::to_string))
            .collect(),
        _ => row
            .recipients
            .iter()
            .filter(|d| **d != row.author)
            .cloned()
            .collect(),
    };
    out.dedup();
    out
}

impl<T: SqlTransport> RecordStore<T> {
    /// A store over `sql`, with the schema brought up to date.
    pub fn open(sql: T) -> Result<Self, RecordError> {
        for (_, statement) in MIGRATIONS {
            sql.execute(statement)?;
        }
        Ok(RecordStore { sql })
    }

    /// Writes index changes (idempotent: replaying a batch leaves the same rows visible).
    pub fn apply(&self, changes: &[Change], indexed_ms: i64) -> Result<(), RecordError> {
        if changes.is_empty() {
            return Ok(());
        }
        let mut body = String::new();
        for change in changes {
            let row = match change {
                Change::Upsert(r) => json!({
                    "uri": r.uri, "ver": version(&r.rev), "deleted": 0, "cid": r.cid, "author": r.author,
                    "collection": r.collection, "rkey": r.rkey, "created_at": r.created_at, "indexed_ms": indexed_ms,
                    "visibility": match r.visibility { Visibility::Public => "public", Visibility::Shared => "shared" },
                    "recipients": r.recipients, "subjects": subjects(r),
                    "record": r.record.as_ref().map(Value::to_string).unwrap_or_default(),
                    "sealed": r.sealed.as_ref().map(Value::to_string).unwrap_or_default(),
                    "text": r.text.clone().unwrap_or_default(),
                }),
                Change::Delete { uri, rev } => json!({
                    "uri": uri, "ver": version(rev), "deleted": 1, "cid": "", "author": "", "collection": "",
                    "rkey": "", "created_at": "", "indexed_ms": indexed_ms, "visibility": "shared",
                    "recipients": [], "subjects": [], "record": "", "sealed": "", "text": "",
                }),
            };
            body.push_str(&row.to_string());
            body.push('\n');
        }
        self.sql
            .execute(&format!("INSERT INTO records FORMAT JSONEachRow {body}"))?;
        Ok(())
    }

    fn select(&self, conditions: &[String], limit: usize) -> Result<Vec<RecordRow>, RecordError> {
        let sql = format!(
            "SELECT uri, cid, author, collection, rkey, created_at, visibility, recipients, record, sealed, text, ver \
             FROM records FINAL WHERE deleted = 0 AND {} ORDER BY created_at DESC, uri LIMIT {}",
            conditions.join(" AND "),
            limit.clamp(1, MAX_LIMIT)
        );
        let out = self.sql.execute(&sql)?;
        let text = String::from_utf8(out).map_err(|e| RecordError::Row(e.to_string()))?;
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                serde_json::from_str::<Row>(l)
                    .map(Row::into_record)
                    .map_err(|e| RecordError::Row(e.to_string()))
            })
            .collect()
    }

    /// Messages, requests and handoffs addressed to `recipient` that `caller` may see,
    /// newest first; `before` (a `createdAt`) pages back.
    pub fn inbox(
        &self,
        caller: Option<&str>,
        recipient: &str,
        since: Option<&str>,
        before: Option<&str>,
        limit: usize,
    ) -> Result<Vec<RecordRow>, RecordError> {
        let collections: Vec<String> = INBOX_COLLECTIONS.iter().map(|c| sql_str(c)).collect();
        let mut conditions = vec![
            visible_to(caller),
            format!("has(subjects, {})", sql_str(recipient)),
            format!("collection IN ({})", collections.join(", ")),
        ];
        if let Some(s) = since {
            conditions.push(format!("created_at > {}", sql_str(s)));
        }
        if let Some(b) = before {
            conditions.push(format!("created_at < {}", sql_str(b)));
        }
        self.select(&conditions, limit)
    }

    /// One record, if `caller` may see it.
    pub fn get(&self, caller: Option<&str>, uri: &str) -> Result<Option<RecordRow>, RecordError> {
        Ok(self
            .select(&[visible_to(caller), format!("uri = {}", sql_str(uri))], 1)?
            .into_iter()
            .next())
    }

    /// The last sequence number indexed from `source`.
    pub fn cursor(&self, source: &str) -> Result<Option<u64>, RecordError> {
        let sql = format!(
            "SELECT max(seq) AS seq, count() AS n FROM cursors WHERE source = {}",
            sql_str(source)
        );
        let out = String::from_utf8(self.sql.execute(&sql)?)
            .map_err(|e| RecordError::Row(e.to_string()))?;
        let v: Value =
            serde_json::from_str(out.trim()).map_err(|e| RecordError::Row(e.to_string()))?;
        let num = |x: &Value| match x {
            Value::String(s) => s.parse().unwrap_or(0),
            x => x.as_u64().unwrap_or(0),
        };
        Ok((num(&v["n"]) > 0).then(|| num(&v["seq"])))
    }

    /// Records that everything up to `seq` from `source` is in every sink.
    pub fn save_cursor(&self, source: &str, seq: u64) -> Result<(), RecordError> {
        let row = json!({"source": source, "seq": seq});
        self.sql
            .execute(&format!("INSERT INTO cursors FORMAT JSONEachRow {row}"))?;
        Ok(())
    }

    /// Whether any stored row, visible or not, deleted or not, contains `needle` in any
    /// column. For privacy tests: a private record must leave no trace.
    pub fn anywhere(&self, needle: &str) -> Result<bool, RecordError> {
        let n = sql_str(needle);
        let sql = format!(
            "SELECT count() AS n FROM records WHERE position(concat(uri, cid, author, collection, rkey, record, sealed, text, \
             arrayStringConcat(recipients, ','), arrayStringConcat(subjects, ',')), {n}) > 0"
        );
        let out = String::from_utf8(self.sql.execute(&sql)?)
            .map_err(|e| RecordError::Row(e.to_string()))?;
        let v: Value =
            serde_json::from_str(out.trim()).map_err(|e| RecordError::Row(e.to_string()))?;
        let count = match &v["n"] {
            Value::String(s) => s.parse().unwrap_or(0),
            x => x.as_u64().unwrap_or(0),
        };
        Ok(count > 0)
    }
}
