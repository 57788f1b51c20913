//! The record index in ClickHouse: versioned schema (`store/sql/`), writes of index
//! changes, and the coordination queries with the caller's access rule inside the SQL. The
//! same SQL runs on any transport: embedded chDB by default, a ClickHouse server when
//! scaled out.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use thiserror::Error;

/// Who may see an indexed record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Visibility {
    /// Anyone.
    Public,
    /// The author and the named recipients.
    Shared,
}

/// One record as the stores hold it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RecordRow {
    /// The record's AT-URI (for sealed records, the sealed record's own).
    pub uri: String,
    /// The record's CID.
    pub cid: String,
    /// The repo it is in.
    pub author: String,
    /// The record type (for sealed records, the inner type).
    pub collection: String,
    /// The record key.
    pub rkey: String,
    /// The commit revision that wrote it (the row's version).
    pub rev: String,
    /// `createdAt` as the author states it.
    pub created_at: String,
    /// Who may see it.
    pub visibility: Visibility,
    /// For shared records: who it is sealed for.
    pub recipients: Vec<String>,
    /// The plaintext record: public ones, and shared ones the appview could open.
    pub record: Option<Value>,
    /// For shared records: the envelope, for recipients to open themselves.
    pub sealed: Option<Value>,
    /// What recall embeds: the record's human text, when the indexer can read it.
    pub text: Option<String>,
    /// When the index stored it (ms since the epoch; 0 before it is stored).
    #[serde(skip)]
    pub indexed_ms: i64,
}

/// A change to the index.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum Change {
    /// Insert or replace the row with this URI (newer `rev` wins).
    Upsert(Box<RecordRow>),
    /// Remove the row with this URI.
    Delete {
        /// The record's AT-URI.
        uri: String,
        /// The revision that deleted it.
        rev: String,
    },
}

/// At most this many records pointing at one page of requests are looked at for their
/// status (of them, the newest [`MAX_LIMIT`] responses count, as before this bound).
const MAX_REFS: usize = 1_000;

/// How many rounds of candidates one page of an inbox or task list looks at before it
/// answers a short page (with a cursor to go on from).
const SUBJECT_ROUNDS: usize = 8;

/// Schema versions in order, each applied once and recorded in `schema_versions`.
pub const MIGRATIONS: &[(u32, &str)] = &[
    (1, include_str!("../sql/001_records.sql")),
    (2, include_str!("../sql/002_cursor.sql")),
    (3, include_str!("../sql/003_links.sql")),
    (4, include_str!("../sql/004_accounts.sql")),
    (5, include_str!("../sql/005_backfill.sql")),
    (6, include_str!("../sql/006_subjects.sql")),
    (7, include_str!("../sql/007_subjects_view.sql")),
    (8, include_str!("../sql/008_subjects_fill.sql")),
    (9, include_str!("../sql/009_refs.sql")),
    (10, include_str!("../sql/010_refs_view.sql")),
    (11, include_str!("../sql/011_refs_fill.sql")),
    (12, include_str!("../sql/012_records_fine.sql")),
    (13, include_str!("../sql/013_records_copy.sql")),
    (14, include_str!("../sql/014_records_swap.sql")),
    (15, include_str!("../sql/015_subjects_view_drop.sql")),
    (16, include_str!("../sql/016_subjects_view.sql")),
    (17, include_str!("../sql/017_refs_view_drop.sql")),
    (18, include_str!("../sql/018_refs_view.sql")),
    (19, include_str!("../sql/019_records_coarse_drop.sql")),
];

/// Where applied schema versions are recorded.
const VERSIONS_TABLE: &str = "CREATE TABLE IF NOT EXISTS schema_versions (version UInt32, \
                              applied_ms Int64) ENGINE = MergeTree ORDER BY version";

/// Collections that land in an agent's inbox.
const INBOX_COLLECTIONS: &[&str] = &[
    "agent.comms.message",
    "agent.comms.request",
    "agent.comms.handoff",
];
/// What the live inbox carries: the inbox, and answers to the caller's requests.
const LIVE_INBOX_COLLECTIONS: &[&str] = &[
    "agent.comms.message",
    "agent.comms.request",
    "agent.comms.handoff",
    RESPONSE_NSID,
];
const RESPONSE_NSID: &str = "agent.comms.response";
/// Most rows one query returns.
pub const MAX_LIMIT: usize = 100;
/// Most agents one `agents` call returns.
pub const MAX_AGENTS: usize = 500;

/// The records in `did`'s repo, as a range of the table's key (`uri`): the same rows as
/// `author = did`, found without reading the others.
fn in_repo(did: &str) -> String {
    // Every URI in the repo starts `at://{did}/`; '0' is the character after '/'.
    format!(
        "uri > {} AND uri < {}",
        sql_str(&format!("at://{did}/")),
        sql_str(&format!("at://{did}0"))
    )
}

fn collection_in(collections: &[&str]) -> String {
    let list: Vec<String> = collections.iter().map(|c| sql_str(c)).collect();
    format!("collection IN ({})", list.join(", "))
}

/// Why a store operation failed.
#[derive(Debug, Error)]
pub enum RecordError {
    /// The transport failed or ClickHouse refused the statement.
    #[error("ClickHouse: {0}")]
    Sql(String),
    /// A row came back in a shape this code does not read.
    #[error("unexpected row: {0}")]
    Row(String),
    /// A page cursor this store did not issue.
    #[error("malformed cursor {0:?}")]
    BadCursor(String),
}

/// Somewhere SQL runs: statements in, `JSONEachRow` out.
pub trait SqlTransport: Send + Sync {
    /// Runs one statement.
    fn execute(&self, sql: &str) -> Result<Vec<u8>, RecordError>;
}

impl<T: SqlTransport + ?Sized> SqlTransport for std::sync::Arc<T> {
    fn execute(&self, sql: &str) -> Result<Vec<u8>, RecordError> {
        (**self).execute(sql)
    }
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
    let rule = match caller {
        None => "visibility = 'public'".to_string(),
        Some(did) => {
            let d = sql_str(did);
            format!("(visibility = 'public' OR author = {d} OR has(recipients, {d}))")
        }
    };
    // Nobody sees the records of an account its host says is not active.
    format!("{rule} AND {HIDDEN}")
}

/// The condition that hides accounts that are not active.
const HIDDEN: &str = "author NOT IN (SELECT did FROM account_status FINAL WHERE active = 0)";

/// The record index. Cloning shares the transport and the change signal.
#[derive(Clone)]
pub struct RecordStore<T> {
    sql: T,
    /// Bumped after every write through this store (and its clones), so readers in the same
    /// process (the appview's live inbox beside the indexer) learn of new rows at once.
    changed: std::sync::Arc<tokio::sync::watch::Sender<u64>>,
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
    indexed_ms: Value,
}

fn number(v: &Value) -> i64 {
    match v {
        Value::String(s) => s.parse().unwrap_or(0),
        v => v.as_i64().unwrap_or(0),
    }
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
        let ver = number(&self.ver) as u64;
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
            indexed_ms: number(&self.indexed_ms),
        }
    }
}

fn version(rev: &str) -> u64 {
    atproto::syntax::Tid::parse(rev)
        .map(|t| t.as_u64())
        .unwrap_or(0)
}

/// Who a record is addressed to, for inbox and broadcast queries: the record's own
/// addressee fields (and a broadcast's audience selectors) when it is readable, otherwise
/// (sealed) its recipients other than the author.
fn subjects(row: &RecordRow) -> Vec<String> {
    let mut out: Vec<String> = match &row.record {
        Some(r) => {
            let mut v: Vec<String> = ["recipient", "assignee", "to"]
                .iter()
                .filter_map(|k| r.get(*k).and_then(Value::as_str).map(str::to_string))
                .collect();
            v.extend(strings(r.get("audience")));
            v
        }
        None => row
            .recipients
            .iter()
            .filter(|d| **d != row.author)
            .cloned()
            .collect(),
    };
    out.sort();
    out.dedup();
    out
}

fn strings(v: Option<&Value>) -> impl Iterator<Item = String> + '_ {
    v.and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_string)
}

/// How a readable record joins others: its conversation key (a message's `thread`, a
/// handoff's `session`) and the records it points at (`inReplyTo`, a response's `request`,
/// `context`), for threads and task status.
fn links(row: &RecordRow) -> (String, Vec<String>) {
    let Some(r) = &row.record else {
        return (String::new(), Vec::new());
    };
    let field = |k: &str| r.get(k).and_then(Value::as_str).map(str::to_string);
    let thread = field("thread")
        .or_else(|| field("session"))
        .unwrap_or_default();
    let mut refs: Vec<String> = [field("inReplyTo"), field("request")]
        .into_iter()
        .flatten()
        .collect();
    refs.extend(strings(r.get("context")));
    refs.sort();
    refs.dedup();
    (thread, refs)
}

/// One page of a listing and where the next one starts.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Listing {
    /// Newest first.
    pub rows: Vec<RecordRow>,
    /// For the next page, when this one was full.
    pub cursor: Option<String>,
}

/// A page request: at most `limit` rows after `cursor` (from a previous [`Listing`]).
#[derive(Debug, Clone, Default)]
pub struct Page {
    /// Most rows (clamped to 1..=[`MAX_LIMIT`]).
    pub limit: usize,
    /// Where the previous page ended.
    pub cursor: Option<String>,
}

impl Page {
    /// The first `limit` rows.
    pub fn first(limit: usize) -> Self {
        Page {
            limit,
            cursor: None,
        }
    }

    fn limit(&self) -> usize {
        self.limit.clamp(1, MAX_LIMIT)
    }

    /// The condition for rows after the cursor (`createdAt` then URI), or an error for a
    /// cursor this store did not issue.
    fn after(&self) -> Result<Option<String>, RecordError> {
        let Some(c) = &self.cursor else {
            return Ok(None);
        };
        let (created, uri) = c
            .split_once('|')
            .ok_or_else(|| RecordError::BadCursor(c.clone()))?;
        let (created, uri) = (sql_str(created), sql_str(uri));
        Ok(Some(format!(
            "(created_at < {created} OR (created_at = {created} AND uri > {uri}))"
        )))
    }
}

/// A task: a request with the latest response from its assignee, if any.
#[derive(Debug, Clone, PartialEq)]
pub struct Task {
    /// The request.
    pub request: RecordRow,
    /// `open` until the assignee responds, then the response's status.
    pub status: String,
    /// The response that set the status.
    pub response: Option<RecordRow>,
}

/// An agent the index has seen, with its published encryption key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentRow {
    /// The agent's DID.
    pub did: String,
    /// Its `agent.envelope.key` public key (multibase), if published.
    pub encryption_key: Option<String>,
    /// `createdAt` of its latest record the caller may see.
    pub last_seen: String,
}

const COLUMNS: &str = "uri, cid, author, collection, rkey, created_at, visibility, recipients, \
                       record, sealed, text, ver, indexed_ms";

impl<T: SqlTransport> RecordStore<T> {
    /// A store over `sql`, with the schema brought up to date: every version in
    /// [`MIGRATIONS`] not yet recorded in `schema_versions` is applied, in order, then
    /// recorded.
    pub fn open(sql: T) -> Result<Self, RecordError> {
        let store = RecordStore {
            sql,
            changed: std::sync::Arc::new(tokio::sync::watch::Sender::new(0)),
        };
        store.sql.execute(VERSIONS_TABLE)?;
        for (version, statement) in MIGRATIONS {
            if store.applied()?.contains(version) {
                continue;
            }
            if let Err(e) = store.sql.execute(statement) {
                // Another process (the appview beside the indexer) may be applying it: give
                // it a moment to record the version before calling this a failure.
                let mut settled = false;
                for _ in 0..20 {
                    if store.applied()?.contains(version) {
                        settled = true;
                        break;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
                if !settled {
                    return Err(e);
                }
                continue;
            }
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or(0);
            store.sql.execute(&format!(
                "INSERT INTO schema_versions FORMAT JSONEachRow {}",
                json!({"version": version, "applied_ms": now})
            ))?;
        }
        Ok(store)
    }

    /// Runs `sql` and reads its `JSONEachRow` answer, a row per line.
    fn json_rows<R: serde::de::DeserializeOwned>(&self, sql: &str) -> Result<Vec<R>, RecordError> {
        let out = String::from_utf8(self.sql.execute(sql)?)
            .map_err(|e| RecordError::Row(e.to_string()))?;
        out.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).map_err(|e| RecordError::Row(e.to_string())))
            .collect()
    }

    /// The one row of an aggregate query.
    fn json_row(&self, sql: &str) -> Result<Value, RecordError> {
        self.json_rows::<Value>(sql)?
            .pop()
            .ok_or_else(|| RecordError::Row("no row".into()))
    }

    /// Schema versions applied to this database.
    pub fn applied(&self) -> Result<Vec<u32>, RecordError> {
        Ok(self
            .json_rows::<Value>("SELECT DISTINCT version FROM schema_versions ORDER BY version")?
            .iter()
            .map(|v| number(&v["version"]) as u32)
            .collect())
    }

    /// Writes index changes (idempotent: replaying a batch leaves the same rows visible).
    pub fn apply(&self, changes: &[Change], indexed_ms: i64) -> Result<(), RecordError> {
        if changes.is_empty() {
            return Ok(());
        }
        let mut body = String::new();
        for change in changes {
            let row = match change {
                Change::Upsert(r) => {
                    let (thread, refs) = links(r);
                    json!({
                        "uri": r.uri, "ver": version(&r.rev), "deleted": 0, "cid": r.cid, "author": r.author,
                        "collection": r.collection, "rkey": r.rkey, "created_at": r.created_at, "indexed_ms": indexed_ms,
                        "visibility": match r.visibility { Visibility::Public => "public", Visibility::Shared => "shared" },
                        "recipients": r.recipients, "subjects": subjects(r),
                        "record": r.record.as_ref().map(Value::to_string).unwrap_or_default(),
                        "sealed": r.sealed.as_ref().map(Value::to_string).unwrap_or_default(),
                        "text": r.text.clone().unwrap_or_default(), "thread": thread, "refs": refs,
                        "topic": r.record.as_ref().and_then(|v| v.get("topic")).and_then(Value::as_str).unwrap_or_default(),
                    })
                }
                Change::Delete { uri, rev } => json!({
                    "uri": uri, "ver": version(rev), "deleted": 1, "cid": "", "author": "", "collection": "",
                    "rkey": "", "created_at": "", "indexed_ms": indexed_ms, "visibility": "shared",
                    "recipients": [], "subjects": [], "record": "", "sealed": "", "text": "",
                    "thread": "", "refs": [], "topic": "",
                }),
            };
            body.push_str(&row.to_string());
            body.push('\n');
        }
        self.sql
            .execute(&format!("INSERT INTO records FORMAT JSONEachRow {body}"))?;
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
        Ok(())
    }

    /// A receiver that sees a change after every write through this store or a clone of it
    /// (writes by other processes are not signalled: readers also look on a timer).
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Who has new live-inbox rows indexed after `after_ms`: the DIDs the rows are
    /// addressed to (and, for responses, the authors of the requests they answer), with the
    /// latest indexed time read (to pass as the next `after_ms`). It reads only recent rows'
    /// routing columns (no `FINAL`, no
    /// record data): it decides whom to wake, and each woken reader then asks
    /// [`Self::inbox_indexed`] with its own access rule.
    pub fn touched_since(
        &self,
        after_ms: i64,
        limit: usize,
    ) -> Result<(i64, std::collections::HashSet<String>), RecordError> {
        #[derive(Deserialize)]
        struct Touch {
            indexed_ms: Value,
            collection: String,
            subjects: Vec<String>,
            refs: Vec<String>,
        }
        let rows: Vec<Touch> = self.json_rows(&format!(
            "SELECT indexed_ms, collection, subjects, refs FROM records \
             WHERE indexed_ms > {after_ms} AND {} ORDER BY indexed_ms LIMIT {}",
            collection_in(LIVE_INBOX_COLLECTIONS),
            limit.max(1)
        ))?;
        let full = rows.len() >= limit.max(1);
        let mut latest = after_ms;
        let mut dids = std::collections::HashSet::new();
        for r in rows {
            latest = latest.max(number(&r.indexed_ms));
            dids.extend(r.subjects);
            if r.collection == RESPONSE_NSID {
                dids.extend(r.refs.iter().filter_map(|u| {
                    atproto::syntax::parse_at_uri(u)
                        .ok()
                        .map(|p| p.authority.to_string())
                }));
            }
        }
        // A full page may have left rows of its last millisecond unread: read it again.
        if full && latest > after_ms {
            latest -= 1;
        }
        Ok((latest, dids))
    }

    /// The live inbox: what `caller` may see that is addressed to it (messages, requests
    /// and handoffs naming it, responses to its requests), by others, indexed after `after`
    /// (indexed time in ms, then URI), oldest first.
    pub fn inbox_indexed(
        &self,
        caller: &str,
        after: (i64, &str),
        limit: usize,
    ) -> Result<Vec<RecordRow>, RecordError> {
        let me = sql_str(caller);
        let mine = sql_str(&format!("at://{caller}/"));
        let (ms, uri) = (after.0, sql_str(after.1));
        let rows: Vec<Row> = self.json_rows(&format!(
            "SELECT {COLUMNS} FROM records FINAL WHERE deleted = 0 AND {} AND author != {me} \
             AND ((has(subjects, {me}) AND {}) OR (collection = {} AND \
             arrayExists(r -> substring(r, 1, {}) = {mine}, refs))) \
             AND (indexed_ms > {ms} OR (indexed_ms = {ms} AND uri > {uri})) \
             AND uri IN (SELECT uri FROM records WHERE indexed_ms >= {ms}) \
             ORDER BY indexed_ms, uri LIMIT {}",
            visible_to(Some(caller)),
            collection_in(LIVE_INBOX_COLLECTIONS),
            sql_str(RESPONSE_NSID),
            caller.len() + "at:///".len(),
            limit.clamp(1, MAX_LIMIT)
        ))?;
        Ok(rows.into_iter().map(Row::into_record).collect())
    }

    fn select(&self, conditions: &[String], limit: usize) -> Result<Vec<RecordRow>, RecordError> {
        self.select_from("records FINAL", conditions, limit)
    }

    /// The live rows of `source` (a table or subquery with the records' columns) matching
    /// `conditions`, newest first.
    fn select_from(
        &self,
        source: &str,
        conditions: &[String],
        limit: usize,
    ) -> Result<Vec<RecordRow>, RecordError> {
        let rows: Vec<Row> = self.json_rows(&format!(
            "SELECT {COLUMNS} FROM {source} WHERE deleted = 0 AND {} \
             ORDER BY created_at DESC, uri LIMIT {}",
            conditions.join(" AND "),
            limit.clamp(1, MAX_LIMIT)
        ))?;
        Ok(rows.into_iter().map(Row::into_record).collect())
    }

    /// Like [`Self::select`], among the records with these URIs (SQL-quoted): the newest
    /// version of each is picked from those rows alone (`LIMIT 1 BY uri`) rather than by
    /// merging the table (`FINAL`), so the cost follows the number of URIs.
    fn select_uris(
        &self,
        uris: &[String],
        conditions: &[String],
        limit: usize,
    ) -> Result<Vec<RecordRow>, RecordError> {
        if uris.is_empty() {
            return Ok(Vec::new());
        }
        let newest = format!(
            "(SELECT * FROM records WHERE uri IN ({}) ORDER BY ver DESC LIMIT 1 BY uri)",
            uris.join(", ")
        );
        self.select_from(&newest, conditions, limit)
    }

    /// Newest first, one page, with the cursor for the next.
    fn list(&self, mut conditions: Vec<String>, page: &Page) -> Result<Listing, RecordError> {
        conditions.extend(page.after()?);
        let rows = self.select(&conditions, page.limit())?;
        let cursor = (rows.len() == page.limit())
            .then(|| rows.last().map(|r| format!("{}|{}", r.created_at, r.uri)))
            .flatten();
        Ok(Listing { rows, cursor })
    }

    /// Like [`Self::list`], for records addressed to `subject` in `collections` (every
    /// condition in `conditions` is still checked on the record): candidates come newest
    /// first from `record_subjects`, ordered by subject, and only their rows are read from
    /// `records`, so the cost follows the subject's records, not the table. Candidates
    /// whose record no longer qualifies (edited, deleted, not visible to this caller) are
    /// passed over in further rounds; after [`SUBJECT_ROUNDS`] a short page comes back
    /// with a cursor after the last candidate looked at.
    fn list_by_subject(
        &self,
        mut conditions: Vec<String>,
        subject: &str,
        collections: &[&str],
        since: Option<&str>,
        page: &Page,
    ) -> Result<Listing, RecordError> {
        #[derive(Deserialize)]
        struct Candidate {
            created_at: String,
            uri: String,
        }
        conditions.push(format!("has(subjects, {})", sql_str(subject)));
        conditions.push(collection_in(collections));
        let mut narrow = vec![
            format!("subject = {}", sql_str(subject)),
            collection_in(collections),
        ];
        if let Some(s) = since {
            let since = format!("created_at > {}", sql_str(s));
            conditions.push(since.clone());
            narrow.push(since);
        }
        let limit = page.limit();
        // Most candidates qualify when agents read their own inbox: a little more than a
        // page, since each candidate read costs a granule of every column.
        let batch = (limit + limit / 4).max(16);
        let mut after = page.after()?;
        let mut cursor = None;
        let mut rows: Vec<RecordRow> = Vec::with_capacity(limit);
        for _ in 0..SUBJECT_ROUNDS {
            let mut these = narrow.clone();
            these.extend(after.clone());
            let candidates: Vec<Candidate> = self.json_rows(&format!(
                "SELECT created_at, uri FROM record_subjects WHERE {} \
                 ORDER BY created_at DESC, uri LIMIT {batch}",
                these.join(" AND ")
            ))?;
            if !candidates.is_empty() {
                let uris: Vec<String> = candidates.iter().map(|c| sql_str(&c.uri)).collect();
                let mut these = conditions.clone();
                these.extend(after.clone());
                rows.extend(self.select_uris(&uris, &these, limit - rows.len())?);
            }
            if rows.len() >= limit {
                let cursor = rows.last().map(|r| format!("{}|{}", r.created_at, r.uri));
                return Ok(Listing { rows, cursor });
            }
            let Some(last) = candidates.last().filter(|_| candidates.len() == batch) else {
                // No more candidates: the last page.
                return Ok(Listing { rows, cursor: None });
            };
            let resume = Page {
                limit,
                cursor: Some(format!("{}|{}", last.created_at, last.uri)),
            };
            after = resume.after()?;
            cursor = resume.cursor;
        }
        Ok(Listing { rows, cursor })
    }

    /// Messages, requests and handoffs addressed to `recipient` that `caller` may see,
    /// newest first; `since` (a `createdAt`) bounds how far back.
    pub fn inbox(
        &self,
        caller: Option<&str>,
        recipient: &str,
        since: Option<&str>,
        page: &Page,
    ) -> Result<Listing, RecordError> {
        self.list_by_subject(
            vec![visible_to(caller)],
            recipient,
            INBOX_COLLECTIONS,
            since,
            page,
        )
    }

    /// One record, if `caller` may see it.
    pub fn get(&self, caller: Option<&str>, uri: &str) -> Result<Option<RecordRow>, RecordError> {
        Ok(self
            .select_uris(&[sql_str(uri)], &[visible_to(caller)], 1)?
            .into_iter()
            .next())
    }

    /// Records by URI that `caller` may see, in no particular order (absent and hidden
    /// ones left out).
    pub fn get_many(
        &self,
        caller: Option<&str>,
        uris: &[String],
    ) -> Result<Vec<RecordRow>, RecordError> {
        if uris.is_empty() {
            return Ok(Vec::new());
        }
        let list: Vec<String> = uris.iter().map(|u| sql_str(u)).collect();
        self.select_uris(&list, &[visible_to(caller)], uris.len())
    }

    /// The conversation around `uri`, oldest first: the record, what it points at, what
    /// points at it, and what shares its thread (or handoff session) — all that `caller`
    /// may see. `None` when the record itself is not visible.
    pub fn thread(
        &self,
        caller: Option<&str>,
        uri: &str,
    ) -> Result<Option<Vec<RecordRow>>, RecordError> {
        let Some(root) = self.get(caller, uri)? else {
            return Ok(None);
        };
        let (thread, refs) = links(&root);
        let u = sql_str(uri);
        let mut related = vec![format!("uri = {u}"), format!("has(refs, {u})")];
        if !refs.is_empty() {
            let list: Vec<String> = refs.iter().map(|r| sql_str(r)).collect();
            related.push(format!("uri IN ({})", list.join(", ")));
        }
        if !thread.is_empty() {
            related.push(format!("thread = {}", sql_str(&thread)));
        }
        let mut rows = self.select(
            &[visible_to(caller), format!("({})", related.join(" OR "))],
            MAX_LIMIT,
        )?;
        rows.reverse();
        Ok(Some(rows))
    }

    /// Requests assigned to `assignee` and/or sent by `sender`, newest first, each with its
    /// status: `open` until the assignee answers, then the latest response's `status`.
    /// Only responses `caller` may see count. `status` filters within the page.
    pub fn tasks(
        &self,
        caller: Option<&str>,
        assignee: Option<&str>,
        sender: Option<&str>,
        status: Option<&str>,
        page: &Page,
    ) -> Result<(Vec<Task>, Option<String>), RecordError> {
        const REQUESTS: &[&str] = &["agent.comms.request"];
        let mut conditions = vec![visible_to(caller)];
        if let Some(s) = sender {
            conditions.push(format!("author = {}", sql_str(s)));
            conditions.push(in_repo(s));
        }
        let listing = match assignee {
            Some(a) => self.list_by_subject(conditions, a, REQUESTS, None, page)?,
            None => {
                conditions.push(collection_in(REQUESTS));
                self.list(conditions, page)?
            }
        };
        let uris: Vec<String> = listing.rows.iter().map(|r| sql_str(&r.uri)).collect();
        let responses = if uris.is_empty() {
            Vec::new()
        } else {
            // Found by what they point at (`record_refs`), then read by URI.
            #[derive(Deserialize)]
            struct Pointing {
                uri: String,
            }
            let pointing: Vec<Pointing> = self.json_rows(&format!(
                "SELECT DISTINCT uri FROM record_refs WHERE ref IN ({}) LIMIT {}",
                uris.join(", "),
                MAX_REFS
            ))?;
            let pointing: Vec<String> = pointing.iter().map(|p| sql_str(&p.uri)).collect();
            self.select_uris(
                &pointing,
                &[
                    visible_to(caller),
                    collection_in(&["agent.comms.response"]),
                    format!("hasAny(refs, [{}])", uris.join(", ")),
                ],
                MAX_LIMIT,
            )?
        };
        let tasks = listing
            .rows
            .into_iter()
            .map(|request| {
                let assignee = request
                    .record
                    .as_ref()
                    .and_then(|r| r.get("assignee"))
                    .and_then(Value::as_str);
                // Newest first, so the first match is the latest; only the assignee's
                // answer settles a task.
                let response = responses
                    .iter()
                    .find(|r| {
                        Some(r.author.as_str()) == assignee
                            && r.record
                                .as_ref()
                                .and_then(|v| v.get("request"))
                                .and_then(Value::as_str)
                                == Some(request.uri.as_str())
                    })
                    .cloned();
                let status = response
                    .as_ref()
                    .and_then(|r| r.record.as_ref())
                    .and_then(|r| r.get("status"))
                    .and_then(Value::as_str)
                    .unwrap_or("open")
                    .to_string();
                Task {
                    request,
                    status,
                    response,
                }
            })
            .filter(|t| status.is_none_or(|s| t.status == s))
            .collect();
        Ok((tasks, listing.cursor))
    }

    /// Handoffs to `to` and/or from `from` that `caller` may see, newest first.
    pub fn handoffs(
        &self,
        caller: Option<&str>,
        to: Option<&str>,
        from: Option<&str>,
        page: &Page,
    ) -> Result<Listing, RecordError> {
        const HANDOFFS: &[&str] = &["agent.comms.handoff"];
        let mut conditions = vec![visible_to(caller)];
        if let Some(f) = from {
            conditions.push(format!("author = {}", sql_str(f)));
            conditions.push(in_repo(f));
        }
        match to {
            Some(t) => self.list_by_subject(conditions, t, HANDOFFS, None, page),
            None => {
                conditions.push(collection_in(HANDOFFS));
                self.list(conditions, page)
            }
        }
    }

    /// Broadcasts that `caller` may see, newest first, optionally by topic, by an
    /// audience selector, and since a time.
    pub fn broadcasts(
        &self,
        caller: Option<&str>,
        topic: Option<&str>,
        audience: Option<&str>,
        since: Option<&str>,
        page: &Page,
    ) -> Result<Listing, RecordError> {
        let mut conditions = vec![
            visible_to(caller),
            collection_in(&["agent.comms.broadcast"]),
        ];
        if let Some(t) = topic {
            conditions.push(format!("topic = {}", sql_str(t)));
        }
        if let Some(a) = audience {
            conditions.push(format!("has(subjects, {})", sql_str(a)));
        }
        if let Some(s) = since {
            conditions.push(format!("created_at > {}", sql_str(s)));
        }
        self.list(conditions, page)
    }

    /// Agents with records `caller` may see, by DID, with their published encryption keys
    /// (`agent.envelope.key/self`, always public).
    pub fn agents(
        &self,
        caller: Option<&str>,
        limit: usize,
        after: Option<&str>,
    ) -> Result<Vec<AgentRow>, RecordError> {
        let mut conditions = vec![visible_to(caller)];
        if let Some(a) = after {
            conditions.push(format!("author > {}", sql_str(a)));
        }
        let sql = format!(
            "SELECT author, max(created_at) AS last_seen, \
             argMaxIf(record, ver, collection = 'agent.envelope.key') AS key_record \
             FROM records FINAL WHERE deleted = 0 AND {} GROUP BY author ORDER BY author LIMIT {}",
            conditions.join(" AND "),
            limit.clamp(1, MAX_AGENTS)
        );
        #[derive(Deserialize)]
        struct A {
            author: String,
            last_seen: String,
            key_record: String,
        }
        Ok(self
            .json_rows::<A>(&sql)?
            .into_iter()
            .map(|a| AgentRow {
                encryption_key: serde_json::from_str::<Value>(&a.key_record)
                    .ok()
                    .and_then(|v| v.get("publicKey")?.as_str().map(str::to_string)),
                did: a.author,
                last_seen: a.last_seen,
            })
            .collect())
    }

    /// Rows and the cursor per table, for the operator's dashboard.
    pub fn counts(&self) -> Result<Vec<(String, String, u64)>, RecordError> {
        #[derive(Deserialize)]
        struct C {
            collection: String,
            visibility: String,
            n: Value,
        }
        Ok(self
            .json_rows::<C>(&format!(
                "SELECT collection, visibility, count() AS n FROM records FINAL WHERE deleted = 0 \
                 AND {HIDDEN} GROUP BY collection, visibility ORDER BY collection, visibility"
            ))?
            .into_iter()
            .map(|c| (c.collection, c.visibility, number(&c.n) as u64))
            .collect())
    }

    /// The last sequence number indexed from `source`.
    pub fn cursor(&self, source: &str) -> Result<Option<u64>, RecordError> {
        let sql = format!(
            "SELECT max(seq) AS seq, count() AS n FROM cursors WHERE source = {}",
            sql_str(source)
        );
        let v = self.json_row(&sql)?;
        Ok((number(&v["n"]) > 0).then(|| number(&v["seq"]) as u64))
    }

    /// Every record the index shows (to anyone), as (URI, CID), in URI order. For tests
    /// and audits; it reads the whole table.
    pub fn all_visible(&self) -> Result<Vec<(String, String)>, RecordError> {
        #[derive(Deserialize)]
        struct U {
            uri: String,
            cid: String,
        }
        Ok(self
            .json_rows::<U>("SELECT uri, cid FROM records FINAL WHERE deleted = 0 ORDER BY uri")?
            .into_iter()
            .map(|u| (u.uri, u.cid))
            .collect())
    }

    /// Records an account's status as of relay event `seq`: inactive accounts are hidden
    /// from every query, active ones shown again.
    pub fn set_account_status(
        &self,
        did: &str,
        seq: u64,
        active: bool,
        status: Option<&str>,
    ) -> Result<(), RecordError> {
        let row = json!({"did": did, "ver": seq, "active": u8::from(active), "status": status.unwrap_or_default()});
        self.sql.execute(&format!(
            "INSERT INTO account_status FORMAT JSONEachRow {row}"
        ))?;
        Ok(())
    }

    /// The URIs of every record of `did` the index holds (deleted ones aside).
    pub fn uris_of(&self, did: &str) -> Result<Vec<String>, RecordError> {
        #[derive(Deserialize)]
        struct U {
            uri: String,
        }
        Ok(self
            .json_rows::<U>(&format!(
                "SELECT uri FROM records FINAL WHERE deleted = 0 AND author = {}",
                sql_str(did)
            ))?
            .into_iter()
            .map(|u| u.uri)
            .collect())
    }

    /// Tombstones every record of `did` (a deleted account) and returns their URIs, for the
    /// vector store. The tombstones outrank any version the account ever wrote.
    pub fn purge_author(&self, did: &str) -> Result<Vec<String>, RecordError> {
        let uris = self.uris_of(did)?;
        // Later than any rev the account wrote (revs may run at most minutes ahead).
        let micros = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(0)
            + 3_600_000_000;
        let rev = atproto::syntax::Tid::new(micros, 0).to_string();
        let tombstones: Vec<Change> = uris
            .iter()
            .map(|uri| Change::Delete {
                uri: uri.clone(),
                rev: rev.clone(),
            })
            .collect();
        self.apply(&tombstones, 0)?;
        Ok(uris)
    }

    /// Every source a cursor was stored for.
    pub fn sources(&self) -> Result<Vec<String>, RecordError> {
        #[derive(Deserialize)]
        struct S {
            source: String,
        }
        Ok(self
            .json_rows::<S>("SELECT DISTINCT source FROM cursors ORDER BY source")?
            .into_iter()
            .map(|s| s.source)
            .collect())
    }

    /// Records that the repo of `did` at `rev` (`records` indexable records) is in every
    /// sink, for a backfill to resume from.
    pub fn save_backfilled(&self, did: &str, rev: &str, records: u64) -> Result<(), RecordError> {
        let row = json!({"did": did, "ver": version(rev), "rev": rev, "records": records});
        self.sql
            .execute(&format!("INSERT INTO backfill FORMAT JSONEachRow {row}"))?;
        Ok(())
    }

    /// Every backfilled account with the newest rev written for it.
    pub fn backfilled(&self) -> Result<std::collections::HashMap<String, String>, RecordError> {
        #[derive(Deserialize)]
        struct B {
            did: String,
            rev: String,
        }
        Ok(self
            .json_rows::<B>("SELECT did, argMax(rev, ver) AS rev FROM backfill GROUP BY did")?
            .into_iter()
            .map(|b| (b.did, b.rev))
            .collect())
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
             arrayStringConcat(recipients, ','), arrayStringConcat(subjects, ','), thread, \
             arrayStringConcat(refs, ','), topic), {n}) > 0"
        );
        Ok(number(&self.json_row(&sql)?["n"]) > 0)
    }
}
