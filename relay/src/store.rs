//! The relay's durable state: the event log's bytes in append-only segment files
//! ([`crate::eventlog`]) and, in one embedded crash-safe database (`redb`), where each batch
//! of the log starts, per-account state, and per-host state with its upstream cursor. A
//! batch's frames are written and synced to the segment first; then one write transaction
//! records the batch together with the account states and host cursors it advances, and
//! moves `last_seq`. After a crash (kill -9 included) the log is cut back to the committed
//! `last_seq`, so the three agree: an event is either in the log with its effects, or absent
//! with none of them.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::eventlog::{EventLog, Position};

/// Where batches of the log start: first seq → (segment, byte offset, append time in ms).
const BATCHES: TableDefinition<u64, (u64, u64, u64)> = TableDefinition::new("batches");
/// When each batch was sequenced: first seq → the first event's time in microseconds.
/// Times are strictly increasing along the log (an event's time is its batch's time plus
/// its place in the batch), so they serve as cursors for the JSON stream. Batches written
/// before this table existed fall back to their millisecond time in [`BATCHES`].
const BATCH_TIMES: TableDefinition<u64, u64> = TableDefinition::new("batch_times");
/// Events as stores before the segment log kept them (moved into segments on open).
const LEGACY_EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
/// Their append times (moved with them).
const LEGACY_EVENT_TIMES: TableDefinition<u64, u64> = TableDefinition::new("event_times");
const ACCOUNTS: TableDefinition<&str, &[u8]> = TableDefinition::new("accounts");
const HOSTS: TableDefinition<&str, &[u8]> = TableDefinition::new("hosts");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// `collection \0 did` for every repo with records in the collection (listReposByCollection).
/// Written only when a repo enters or leaves the collection, not on every record; the value
/// is not read (stores written before this kept the count there too).
const COLLECTIONS: TableDefinition<&str, u64> = TableDefinition::new("collections");
/// `did \0 collection` → records of that collection in that repo: the counts that say when
/// a repo enters or leaves a collection, and its collections when it is reset.
const REPO_COLLECTIONS: TableDefinition<&str, u64> = TableDefinition::new("repo_collections");
/// Highest `seq` ever assigned (kept when retention empties the log).
const LAST_SEQ: &str = "last_seq";
/// The oldest retained `seq` (`last_seq + 1` when the log is empty).
const OLDEST_SEQ: &str = "oldest_seq";
/// The time the next batch starts at, at the least (keeps times increasing when the
/// clock steps back or a batch holds more events than microseconds have passed).
const NEXT_TIME_US: &str = "next_time_us";
/// Events moved per segment append when a store from before the segment log is opened.
const MIGRATE_CHUNK: usize = 4096;

/// A storage failure. The relay stops rather than continue without durability.
#[derive(Debug, Error)]
pub enum StoreError {
    /// The database reported an error.
    #[error("relay store: {0}")]
    Db(String),
    /// A stored value does not decode.
    #[error("relay store: corrupt {0}")]
    Corrupt(&'static str),
}

macro_rules! db_err {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Db(e.to_string())
            }
        }
    )*};
}
db_err!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);

/// What the relay knows about one account.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountState {
    /// The host (PDS URL) its events arrive from, shared with the host's own record.
    pub host: Arc<str>,
    /// The latest accepted revision.
    pub rev: Option<String>,
    /// The MST root after that revision.
    #[serde(with = "cid_text")]
    pub data: Option<StateCid>,
    /// The latest commit CID.
    #[serde(with = "cid_text")]
    pub head: Option<StateCid>,
    /// Whether the account is active (from `#account`).
    pub active: bool,
    /// Hosting status when inactive (`takendown`, `deactivated`, …).
    pub status: Option<String>,
    /// The last upstream event applied to this account, to recognise events re-read
    /// after a restart.
    #[serde(default)]
    pub upstream: Option<Upstream>,
    /// The chain broke and the repair from `getRepo` has not succeeded yet (it is retried
    /// with backoff).
    #[serde(default)]
    pub desynchronized: bool,
}

/// A CID as an account's state holds it. Repo roots and commits are CIDv1, DAG-CBOR,
/// SHA2-256, and are kept as their digest alone (40 bytes in all, where a `Cid` takes ~100:
/// the relay holds two per account); any other CID is kept whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateCid {
    /// CIDv1, DAG-CBOR, SHA2-256: the digest.
    DagCbor([u8; 32]),
    /// Any other CID.
    Other(Box<atproto::Cid>),
}

impl StateCid {
    /// The CID itself.
    pub fn to_cid(&self) -> atproto::Cid {
        match self {
            StateCid::DagCbor(digest) => {
                atproto::data::cid_for_digest(atproto::data::DAG_CBOR, digest)
            }
            StateCid::Other(cid) => **cid,
        }
    }
}

impl From<atproto::Cid> for StateCid {
    fn from(cid: atproto::Cid) -> Self {
        let hash = cid.hash();
        if cid.version() == cid::Version::V1
            && cid.codec() == atproto::data::DAG_CBOR
            && hash.code() == atproto::data::SHA2_256
        {
            if let Ok(digest) = <[u8; 32]>::try_from(hash.digest()) {
                return StateCid::DagCbor(digest);
            }
        }
        StateCid::Other(Box::new(cid))
    }
}

impl std::fmt::Display for StateCid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.to_cid().fmt(f)
    }
}

/// Optional CIDs as their text form, the way older stores wrote account states in JSON.
mod cid_text {
    use serde::{Deserialize, Deserializer, Serializer};

    use super::StateCid;

    pub fn serialize<S: Serializer>(cid: &Option<StateCid>, s: S) -> Result<S::Ok, S::Error> {
        match cid {
            Some(c) => s.serialize_some(&c.to_string()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<StateCid>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|t| {
                t.parse::<atproto::Cid>()
                    .map(StateCid::from)
                    .map_err(serde::de::Error::custom)
            })
            .transpose()
    }
}

/// Where an account's last applied event sits in its host's stream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Upstream {
    /// The host's sequence epoch (bumped when the host restarts its sequence).
    pub epoch: u64,
    /// The host's seq for the event.
    pub seq: i64,
}

/// What the relay knows about one upstream host.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostState {
    /// The host's base URL (`https://pds.example.com`, port included when not default).
    pub url: String,
    /// The upstream `seq` of the last event taken from it.
    pub cursor: i64,
    /// `active`, `idle`, `offline`, `throttled` or `banned`.
    pub status: String,
    /// Events accepted from it.
    pub events: u64,
    /// Accounts seen on it.
    pub accounts: u64,
    /// Limits the operator set for it (the relay's defaults otherwise).
    #[serde(default)]
    pub limits: Option<crate::hosts::Limits>,
    /// The host's sequence epoch: bumped when the host restarted its sequence, so the
    /// cursor and account markers of an older epoch are not compared with new seqs.
    #[serde(default)]
    pub epoch: u64,
}

/// A host's cursor as the sequencer stores it: the low-water mark in its epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostCursor {
    /// The host's URL.
    pub url: String,
    /// Its sequence epoch.
    pub epoch: u64,
    /// No event at or below this seq is still in flight.
    pub cursor: i64,
    /// Events from it in this batch that were published.
    pub events: u64,
}

/// How an event changes the per-collection record counts of its repo.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Collections {
    /// No change.
    #[default]
    Unchanged,
    /// Records added (positive) or removed (negative) per collection.
    Delta(Vec<(String, i64)>),
    /// The repo's complete counts (after a resync from `getRepo`).
    Reset(Vec<(String, u64)>),
}

/// An event in the log: its `seq`, when the relay sequenced it, and the frame's bytes.
#[derive(Debug, Clone)]
pub struct Logged {
    /// Its place in the log.
    pub seq: u64,
    /// When it was sequenced, in microseconds since the epoch; strictly increasing with
    /// `seq` (the JSON stream's `time_us`).
    pub time_us: u64,
    /// The frame exactly as it is republished.
    pub frame: Bytes,
}

/// One event to append, with the state it advances.
#[derive(Debug, Clone)]
pub struct Append {
    /// Builds the frame bytes once the `seq` is known.
    pub frame: atproto::frame::Frame,
    /// The account state after this event, if it changes.
    pub account: Option<(String, AccountState)>,
    /// The repo's collection counts, if they change.
    pub collections: Collections,
    /// The frame exactly as the host sent it, when it is republished unchanged: only its
    /// `seq` is rewritten (no re-encoding).
    pub raw: Option<Bytes>,
}

/// The durable store. Cheap to clone; all methods block (call them off the async runtime).
///
/// After an I/O failure (a full disk) the database refuses every operation until it is
/// opened again: [`Store::reopen`] does that in place for every clone, so the relay can wait
/// for space and go on without restarting.
#[derive(Clone)]
pub struct Store {
    db: Arc<std::sync::RwLock<Option<Arc<Database>>>>,
    path: Arc<std::path::PathBuf>,
    log: Arc<EventLog>,
}

/// How long a reopen waits for in-flight readers of the old handle.
const REOPEN_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

impl Store {
    /// Opens (or creates) the store under `dir`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::Db(format!("{}: {e}", dir.display())))?;
        let path = dir.join("relay.redb");
        let db = Self::open_db(&path)?;
        let log_dir = dir.join("log");
        let legacy = {
            let txn = db.begin_read()?;
            !txn.open_table(LEGACY_EVENTS)?.is_empty()?
        };
        if legacy {
            // A store from before the segment log: a migration cut short is started over.
            let _ = std::fs::remove_dir_all(&log_dir);
        }
        let (last, oldest, tail) = Self::bounds(&db)?;
        let log = EventLog::open(&log_dir, last, oldest, tail)?;
        if legacy {
            Self::migrate(&db, &log)?;
        }
        Ok(Store {
            db: Arc::new(std::sync::RwLock::new(Some(Arc::new(db)))),
            path: Arc::new(path),
            log: Arc::new(log),
        })
    }

    /// The committed `last_seq`, the oldest retained seq and the last batch's position.
    fn bounds(db: &Database) -> Result<(u64, u64, Option<Position>), StoreError> {
        let txn = db.begin_read()?;
        let (last, oldest) = seq_bounds(&txn.open_table(META)?)?;
        let oldest = match oldest {
            Some(v) => v,
            None => {
                let legacy = txn.open_table(LEGACY_EVENTS)?;
                let first = legacy.first()?.map(|(k, _)| k.value());
                first.unwrap_or(last + 1)
            }
        };
        let tail = txn.open_table(BATCHES)?.last()?.map(|(_, v)| {
            let (segment, offset, _) = v.value();
            Position { segment, offset }
        });
        Ok((last, oldest, tail))
    }

    /// Moves the events of a store from before the segment log into segments, then drops
    /// them from the database (one transaction: an interrupted move starts over).
    fn migrate(db: &Database, log: &EventLog) -> Result<(), StoreError> {
        let mut batches = Vec::new();
        let mut first_seq = None;
        let mut moved = 0u64;
        {
            let txn = db.begin_read()?;
            let events = txn.open_table(LEGACY_EVENTS)?;
            let times = txn.open_table(LEGACY_EVENT_TIMES)?;
            let mut chunk: Vec<(u64, Bytes)> = Vec::with_capacity(MIGRATE_CHUNK);
            let mut flush = |chunk: &mut Vec<(u64, Bytes)>| -> Result<(), StoreError> {
                let Some(&(first, _)) = chunk.first() else {
                    return Ok(());
                };
                let at = times.get(first)?.map(|v| v.value()).unwrap_or(0);
                let pos = log.append(chunk)?;
                batches.push((first, pos, at));
                chunk.clear();
                Ok(())
            };
            for item in events.range(0u64..)? {
                let (k, v) = item?;
                first_seq.get_or_insert(k.value());
                chunk.push((k.value(), Bytes::copy_from_slice(v.value())));
                moved += 1;
                if chunk.len() >= MIGRATE_CHUNK {
                    flush(&mut chunk)?;
                }
            }
            flush(&mut chunk)?;
        }
        let txn = db.begin_write()?;
        {
            let mut table = txn.open_table(BATCHES)?;
            for (first, pos, at) in batches {
                table.insert(first, (pos.segment, pos.offset, at))?;
            }
            let mut meta = txn.open_table(META)?;
            if let Some(first) = first_seq {
                meta.insert(OLDEST_SEQ, first)?;
            }
            txn.open_table(LEGACY_EVENTS)?.retain(|_, _| false)?;
            txn.open_table(LEGACY_EVENT_TIMES)?.retain(|_, _| false)?;
        }
        txn.commit()?;
        tracing::info!(events = moved, "moved the event log into segment files");
        Ok(())
    }

    /// The current handle.
    fn db(&self) -> Result<Arc<Database>, StoreError> {
        self.db
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| StoreError::Db("the store is being reopened".into()))
    }

    /// Closes and opens the database again (after an I/O failure, which redb makes
    /// permanent for the handle that saw it). Waits up to a few seconds for readers of the
    /// old handle to finish.
    pub fn reopen(&self) -> Result<(), StoreError> {
        let mut slot = self.db.write().unwrap_or_else(|p| p.into_inner());
        if let Some(old) = slot.take() {
            let deadline = std::time::Instant::now() + REOPEN_WAIT;
            while Arc::strong_count(&old) > 1 && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            drop(old);
        }
        let db = Self::open_db(&self.path)?;
        let (last, oldest, tail) = Self::bounds(&db)?;
        self.log.recover(last, oldest, tail)?;
        *slot = Some(Arc::new(db));
        Ok(())
    }

    fn open_db(path: &Path) -> Result<Database, StoreError> {
        let db = Database::create(path)?;
        let txn = db.begin_write()?;
        {
            txn.open_table(LEGACY_EVENTS)?;
            txn.open_table(LEGACY_EVENT_TIMES)?;
            txn.open_table(BATCHES)?;
            txn.open_table(BATCH_TIMES)?;
            txn.open_table(ACCOUNTS)?;
            txn.open_table(HOSTS)?;
            txn.open_table(META)?;
            txn.open_table(COLLECTIONS)?;
            txn.open_table(REPO_COLLECTIONS)?;
            // A new store, or one whose legacy log is empty, starts its bounds here (a
            // legacy log being moved sets them when it is).
            let mut meta = txn.open_table(META)?;
            let (last, oldest) = seq_bounds(&meta)?;
            if oldest.is_none() && txn.open_table(LEGACY_EVENTS)?.is_empty()? {
                meta.insert(OLDEST_SEQ, last + 1)?;
            }
        }
        txn.commit()?;
        Ok(db)
    }

    /// The highest `seq` assigned so far (0 before the first event).
    pub fn last_seq(&self) -> Result<u64, StoreError> {
        let txn = self.db()?.begin_read()?;
        Ok(seq_bounds(&txn.open_table(META)?)?.0)
    }

    /// The oldest retained `seq`, if any event is retained.
    pub fn oldest_seq(&self) -> Result<Option<u64>, StoreError> {
        let (last, oldest, _) = Self::bounds(&*self.db()?)?;
        Ok((oldest <= last).then_some(oldest))
    }

    /// Number of retained events.
    pub fn event_count(&self) -> Result<u64, StoreError> {
        let (last, oldest, _) = Self::bounds(&*self.db()?)?;
        Ok((last + 1).saturating_sub(oldest))
    }

    /// Appends a batch durably (fsync on commit) and returns each event as logged. Account
    /// states to store without an event, and the host cursors, are written in the same
    /// transaction. The batch is timed at `now_ms` (or just after the previous batch, if
    /// that is later): its events take consecutive microseconds from there.
    pub fn append(
        &self,
        batch: &[Append],
        states: &[(String, AccountState)],
        host_cursors: &[HostCursor],
        now_ms: u64,
    ) -> Result<Vec<Logged>, StoreError> {
        let mut txn = self.db()?.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        let (last, base_us) = {
            let meta = txn.open_table(META)?;
            let next = meta.get(NEXT_TIME_US)?.map(|v| v.value()).unwrap_or(0);
            (seq_bounds(&meta)?.0, now_ms.saturating_mul(1000).max(next))
        };
        let mut out = Vec::with_capacity(batch.len());
        for (item, (seq, time_us)) in batch.iter().zip((last + 1..).zip(base_us..)) {
            let bytes = match &item.raw {
                Some(raw) => atproto::frame::with_seq(raw, seq as i64)
                    .map_err(|_| StoreError::Corrupt("frame has no seq to rewrite"))?,
                None => {
                    // Events the relay made itself (repairs): encoded here.
                    let mut frame = item.frame.clone();
                    frame.set_seq(seq as i64);
                    atproto::frame::encode_frame(&frame)
                        .map_err(|_| StoreError::Corrupt("frame does not encode"))?
                }
            };
            out.push(Logged {
                seq,
                time_us,
                frame: Bytes::from(bytes),
            });
        }
        // The frames are durable before the transaction that counts them commits; if it
        // does not, they are taken back out of the segment.
        let position = if out.is_empty() {
            None
        } else {
            Some(self.log.append(&out)?)
        };
        let written = Self::record_batch(txn, batch, states, host_cursors, &out, position, now_ms);
        if let (Err(_), Some(p)) = (&written, position) {
            if let Err(e) = self.log.truncate(p) {
                tracing::error!(error = %e, "event log: could not take back an unrecorded batch");
            }
        }
        written.map(|()| out)
    }

    /// The database half of [`Store::append`]: the batch's position and every state it
    /// advances, in one transaction. Account states are written once per account (the
    /// last one of the batch) and collection counts once per (repo, collection).
    fn record_batch(
        txn: redb::WriteTransaction,
        batch: &[Append],
        states: &[(String, AccountState)],
        host_cursors: &[HostCursor],
        out: &[Logged],
        position: Option<Position>,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        {
            let mut meta = txn.open_table(META)?;
            if let (Some(first), Some(last), Some(p)) = (out.first(), out.last(), position) {
                txn.open_table(BATCHES)?
                    .insert(first.seq, (p.segment, p.offset, now_ms))?;
                txn.open_table(BATCH_TIMES)?
                    .insert(first.seq, first.time_us)?;
                meta.insert(LAST_SEQ, last.seq)?;
                meta.insert(NEXT_TIME_US, last.time_us + 1)?;
            }
            let mut by_collection = txn.open_table(COLLECTIONS)?;
            let mut by_repo = txn.open_table(REPO_COLLECTIONS)?;
            let mut deltas: std::collections::HashMap<(&str, &str), i64> =
                std::collections::HashMap::new();
            let mut latest: std::collections::HashMap<&str, &AccountState> =
                std::collections::HashMap::new();
            for item in batch {
                if let Some(did) = item.frame.did() {
                    match &item.collections {
                        Collections::Unchanged => {}
                        Collections::Delta(d) => {
                            for (collection, n) in d {
                                *deltas.entry((did, collection.as_str())).or_default() += n;
                            }
                        }
                        reset @ Collections::Reset(_) => {
                            // Counts from before the reset apply first.
                            apply_deltas(&mut by_collection, &mut by_repo, deltas.drain())?;
                            apply_collections(&mut by_collection, &mut by_repo, did, reset)?;
                        }
                    }
                }
                if let Some((did, state)) = &item.account {
                    latest.insert(did.as_str(), state);
                }
            }
            apply_deltas(&mut by_collection, &mut by_repo, deltas.drain())?;
            for (did, state) in states {
                latest.insert(did.as_str(), state);
            }
            let mut accounts = txn.open_table(ACCOUNTS)?;
            for (did, state) in latest {
                accounts.insert(did, encode_account(state).as_slice())?;
            }
            let mut hosts = txn.open_table(HOSTS)?;
            for c in host_cursors {
                let url = &c.url;
                let mut state = match hosts.get(url.as_str())? {
                    Some(v) => decode_json::<HostState>(v.value(), "host")?,
                    None => HostState {
                        url: url.clone(),
                        status: "active".into(),
                        ..HostState::default()
                    },
                };
                if state.epoch == c.epoch {
                    state.cursor = state.cursor.max(c.cursor);
                } else if c.epoch > state.epoch {
                    state.epoch = c.epoch;
                    state.cursor = c.cursor;
                }
                state.events += c.events;
                let v = serde_json::to_vec(&state).map_err(|_| StoreError::Corrupt("host"))?;
                hosts.insert(url.as_str(), v.as_slice())?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// The highest `seq` up to which Kafka acknowledged every event for `topic` (0: none).
    pub fn kafka_acked(&self, topic: &str) -> Result<u64, StoreError> {
        let txn = self.db()?.begin_read()?;
        let meta = txn.open_table(META)?;
        let acked = meta.get(kafka_key(topic).as_str())?.map(|v| v.value());
        Ok(acked.unwrap_or(0))
    }

    /// Stores the point up to which Kafka acknowledged every event for `topic`.
    pub fn set_kafka_acked(&self, topic: &str, seq: u64) -> Result<(), StoreError> {
        let txn = self.db()?.begin_write()?;
        txn.open_table(META)?
            .insert(kafka_key(topic).as_str(), seq)?;
        txn.commit()?;
        Ok(())
    }

    /// Up to `max` events with `seq > after`, in order.
    pub fn read_after(&self, after: u64, max: usize) -> Result<Vec<Logged>, StoreError> {
        let (last, start, from) = {
            let txn = self.db()?.begin_read()?;
            let (last, oldest) = seq_bounds(&txn.open_table(META)?)?;
            let oldest = oldest.unwrap_or(1);
            let start = after.saturating_add(1).max(oldest);
            if start > last || max == 0 {
                return Ok(Vec::new());
            }
            let batches = txn.open_table(BATCHES)?;
            let found = match batches.range(..=start)?.next_back() {
                Some(item) => Some(item?.1.value()),
                None => batches.first()?.map(|(_, v)| v.value()),
            };
            let Some((segment, offset, _)) = found else {
                return Ok(Vec::new());
            };
            (last, start, Position { segment, offset })
        };
        let frames = self.log.read(from, start - 1, last, max)?;
        let (Some(&(first, _)), Some(&(end, _))) = (frames.first(), frames.last()) else {
            return Ok(Vec::new());
        };
        let times = self.timeline(first, end)?;
        Ok(frames
            .into_iter()
            .map(|(seq, frame)| Logged {
                seq,
                time_us: times.time_of(seq),
                frame,
            })
            .collect())
    }

    /// Where the batches holding `first..=end` start and when they were sequenced.
    fn timeline(&self, first: u64, end: u64) -> Result<Timeline, StoreError> {
        let txn = self.db()?.begin_read()?;
        let mut starts = Vec::new();
        // Millisecond times first (every batch has one), then the exact times over them.
        let batches = txn.open_table(BATCHES)?;
        if let Some(item) = batches.range(..=first)?.next_back() {
            let (k, v) = item?;
            starts.push((k.value(), v.value().2.saturating_mul(1000)));
        }
        for item in batches.range(first + 1..=end)? {
            let (k, v) = item?;
            starts.push((k.value(), v.value().2.saturating_mul(1000)));
        }
        let times = txn.open_table(BATCH_TIMES)?;
        let exact = times.range(..=first)?.next_back().into_iter();
        for item in exact.chain(times.range(first + 1..=end)?) {
            let (k, v) = item?;
            if let Ok(i) = starts.binary_search_by_key(&k.value(), |s| s.0) {
                starts[i].1 = v.value();
            }
        }
        Ok(Timeline(starts))
    }

    /// When the event at `seq` was sequenced (microseconds), if it is retained.
    pub fn time_of(&self, seq: u64) -> Result<Option<u64>, StoreError> {
        let (last, oldest, _) = Self::bounds(&*self.db()?)?;
        if seq < oldest || seq > last {
            return Ok(None);
        }
        Ok(Some(self.timeline(seq, seq)?.time_of(seq)))
    }

    /// The first retained event sequenced at or after `time_us`: its `seq`, or `None` when
    /// every retained event is older (times increase with `seq`, so this is a binary
    /// search over the log).
    pub fn first_at_or_after(&self, time_us: u64) -> Result<Option<u64>, StoreError> {
        let (last, oldest, _) = Self::bounds(&*self.db()?)?;
        if oldest > last {
            return Ok(None);
        }
        let (mut lo, mut hi) = (oldest, last + 1);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.timeline(mid, mid)?.time_of(mid) < time_us {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        Ok((lo <= last).then_some(lo))
    }

    /// Drops the oldest events while more than `max_events` are retained or they are older
    /// than `max_age_ms`. Returns how many were dropped.
    pub fn prune(&self, max_events: u64, max_age_ms: u64, now_ms: u64) -> Result<u64, StoreError> {
        let txn = self.db()?.begin_write()?;
        let (oldest, cut) = {
            let mut meta = txn.open_table(META)?;
            let (last, oldest) = seq_bounds(&meta)?;
            let oldest = oldest.unwrap_or(1);
            let count = (last + 1).saturating_sub(oldest);
            // The last seq to drop: by count, then whole batches by age.
            let mut cut = oldest - 1 + count.saturating_sub(max_events);
            let mut batches = txn.open_table(BATCHES)?;
            let mut whole: Vec<u64> = Vec::new();
            {
                let mut iter = batches.range(0u64..)?.peekable();
                while let Some(item) = iter.next() {
                    let (first, v) = item?;
                    let (first, (_, _, at)) = (first.value(), v.value());
                    let end = match iter.peek() {
                        Some(Ok((next, _))) => next.value() - 1,
                        _ => last,
                    };
                    if now_ms.saturating_sub(at) > max_age_ms {
                        cut = cut.max(end);
                    }
                    if end <= cut {
                        whole.push(first);
                    } else {
                        break;
                    }
                }
            }
            if cut >= oldest {
                // Batches wholly dropped go; the one the new oldest sits in stays.
                let mut times = txn.open_table(BATCH_TIMES)?;
                for first in whole {
                    batches.remove(first)?;
                    times.remove(first)?;
                }
                meta.insert(OLDEST_SEQ, cut + 1)?;
            }
            (oldest, cut)
        };
        txn.commit()?;
        if cut < oldest {
            return Ok(0);
        }
        self.log.remove_before(cut + 1)?;
        Ok(cut + 1 - oldest)
    }

    /// Every stored account.
    pub fn accounts(&self) -> Result<Vec<(String, AccountState)>, StoreError> {
        let txn = self.db()?.begin_read()?;
        let table = txn.open_table(ACCOUNTS)?;
        let mut out = Vec::new();
        for item in table.range::<&str>(..)? {
            let (k, v) = item?;
            out.push((k.value().to_string(), decode_account(v.value())?));
        }
        Ok(out)
    }

    /// A page of accounts after `cursor` (a DID), in DID order.
    pub fn accounts_page(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, AccountState)>, StoreError> {
        let txn = self.db()?.begin_read()?;
        let table = txn.open_table(ACCOUNTS)?;
        let mut out = Vec::new();
        let range = match after {
            Some(c) => table.range::<&str>(c..)?,
            None => table.range::<&str>(..)?,
        };
        for item in range {
            let (k, v) = item?;
            if Some(k.value()) == after {
                continue;
            }
            out.push((k.value().to_string(), decode_account(v.value())?));
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    /// Repos with records in `collection`, in DID order after `after`.
    pub fn repos_by_collection(
        &self,
        collection: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        let txn = self.db()?.begin_read()?;
        let table = txn.open_table(COLLECTIONS)?;
        let prefix = format!("{collection}\0");
        let start = match after {
            Some(did) => format!("{prefix}{did}\u{1}"),
            None => prefix.clone(),
        };
        let mut out = Vec::new();
        for item in table.range(start.as_str()..)? {
            let (k, _) = item?;
            let Some(did) = k.value().strip_prefix(prefix.as_str()).map(str::to_string) else {
                break;
            };
            out.push(did);
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    /// One account's state.
    pub fn account(&self, did: &str) -> Result<Option<AccountState>, StoreError> {
        let txn = self.db()?.begin_read()?;
        let table = txn.open_table(ACCOUNTS)?;
        table
            .get(did)?
            .map(|v| decode_account(v.value()))
            .transpose()
    }

    /// Every known host.
    pub fn hosts(&self) -> Result<Vec<HostState>, StoreError> {
        let txn = self.db()?.begin_read()?;
        let table = txn.open_table(HOSTS)?;
        let mut out = Vec::new();
        for item in table.range::<&str>(..)? {
            let (_, v) = item?;
            out.push(decode_json(v.value(), "host")?);
        }
        Ok(out)
    }

    /// Stores operator-set limits for a host.
    pub fn put_host_limits(
        &self,
        url: &str,
        limits: crate::hosts::Limits,
    ) -> Result<(), StoreError> {
        self.update_host(url, |s| s.limits = Some(limits))
            .map(|_| ())
    }

    /// Starts a host's new sequence epoch: its cursor goes back to the live tail.
    pub fn restart_host_sequence(&self, url: &str, epoch: u64) -> Result<(), StoreError> {
        self.update_host(url, |s| {
            if epoch > s.epoch {
                s.epoch = epoch;
                s.cursor = 0;
            }
        })
        .map(|_| ())
    }

    /// Applies `change` to a host's stored state (created if new) in one transaction.
    fn update_host(
        &self,
        url: &str,
        change: impl FnOnce(&mut HostState),
    ) -> Result<HostState, StoreError> {
        let txn = self.db()?.begin_write()?;
        let state;
        {
            let mut table = txn.open_table(HOSTS)?;
            let mut s = match table.get(url)? {
                Some(v) => decode_json::<HostState>(v.value(), "host")?,
                None => HostState {
                    url: url.to_string(),
                    status: "active".into(),
                    ..HostState::default()
                },
            };
            change(&mut s);
            let v = serde_json::to_vec(&s).map_err(|_| StoreError::Corrupt("host"))?;
            table.insert(url, v.as_slice())?;
            state = s;
        }
        txn.commit()?;
        Ok(state)
    }

    /// Records a host as known (active when new), keeping whatever is stored for it.
    pub fn ensure_host(&self, url: &str) -> Result<HostState, StoreError> {
        self.update_host(url, |_| {})
    }

    /// Sets a host's cursor (an operator's reset) in its current epoch.
    pub fn set_host_cursor(&self, url: &str, cursor: i64) -> Result<HostState, StoreError> {
        self.update_host(url, |s| s.cursor = cursor)
    }

    /// Forgets a host: its cursor, status and limits (its accounts' states stay).
    pub fn remove_host(&self, url: &str) -> Result<bool, StoreError> {
        let txn = self.db()?.begin_write()?;
        let removed = txn.open_table(HOSTS)?.remove(url)?.is_some();
        txn.commit()?;
        Ok(removed)
    }

    /// Adds a host (or updates its status), keeping its cursor.
    pub fn put_host(&self, url: &str, status: &str) -> Result<HostState, StoreError> {
        self.update_host(url, |s| s.status = status.to_string())
    }
}

/// Sets a repo's count for a collection from `was` to `n`; the collection's list of repos
/// changes only when the repo enters it or leaves it.
fn set_count(
    by_collection: &mut redb::Table<&str, u64>,
    by_repo: &mut redb::Table<&str, u64>,
    did: &str,
    collection: &str,
    was: u64,
    n: u64,
) -> Result<(), StoreError> {
    if n == was {
        return Ok(());
    }
    let rk = format!("{did}\0{collection}");
    if n == 0 {
        by_repo.remove(rk.as_str())?;
    } else {
        by_repo.insert(rk.as_str(), n)?;
    }
    if (was == 0) != (n == 0) {
        let ck = format!("{collection}\0{did}");
        if n == 0 {
            by_collection.remove(ck.as_str())?;
        } else {
            by_collection.insert(ck.as_str(), 1)?;
        }
    }
    Ok(())
}

fn apply_collections(
    by_collection: &mut redb::Table<&str, u64>,
    by_repo: &mut redb::Table<&str, u64>,
    did: &str,
    change: &Collections,
) -> Result<(), StoreError> {
    match change {
        Collections::Unchanged => {}
        Collections::Delta(deltas) => apply_deltas(
            by_collection,
            by_repo,
            deltas.iter().map(|(c, d)| ((did, c.as_str()), *d)),
        )?,
        Collections::Reset(counts) => {
            let prefix = format!("{did}\0");
            let mut old = Vec::new();
            for item in by_repo.range(prefix.as_str()..)? {
                let (k, v) = item?;
                let Some(collection) = k.value().strip_prefix(prefix.as_str()).map(str::to_string)
                else {
                    break;
                };
                old.push((collection, v.value()));
            }
            for (collection, was) in old {
                set_count(by_collection, by_repo, did, &collection, was, 0)?;
            }
            for (collection, n) in counts {
                set_count(by_collection, by_repo, did, collection, 0, *n)?;
            }
        }
    }
    Ok(())
}

/// Format byte of the binary account encoding (JSON, from older stores, starts with `{`).
const ACCOUNT_V1: u8 = 1;

/// An account's state in a compact binary form: every event writes one, and the smaller
/// they are, the fewer pages each batch's transaction rewrites. CIDs are kept as their
/// binary form; strings and optional values are length-prefixed.
fn encode_account(a: &AccountState) -> Vec<u8> {
    fn text(out: &mut Vec<u8>, s: Option<&str>) {
        match s {
            None => out.extend_from_slice(&u32::MAX.to_le_bytes()),
            Some(s) => {
                out.extend_from_slice(&(s.len() as u32).to_le_bytes());
                out.extend_from_slice(s.as_bytes());
            }
        }
    }
    fn cid(out: &mut Vec<u8>, c: Option<&StateCid>) {
        // A CID is stored binary (36 bytes, not 59).
        match c.map(StateCid::to_cid) {
            Some(c) => {
                out.push(1);
                out.push(c.encoded_len() as u8);
                c.write_bytes(&mut *out)
                    .expect("writing to a Vec cannot fail");
            }
            None => out.push(0),
        }
    }
    let mut out = Vec::with_capacity(160);
    out.push(ACCOUNT_V1);
    let flags = u8::from(a.active)
        | (u8::from(a.desynchronized) << 1)
        | (u8::from(a.upstream.is_some()) << 2);
    out.push(flags);
    text(&mut out, Some(&a.host));
    text(&mut out, a.rev.as_deref());
    cid(&mut out, a.data.as_ref());
    cid(&mut out, a.head.as_ref());
    text(&mut out, a.status.as_deref());
    let up = a.upstream.unwrap_or_default();
    out.extend_from_slice(&up.epoch.to_le_bytes());
    out.extend_from_slice(&up.seq.to_le_bytes());
    out
}

/// Reads [`encode_account`]'s form, or the JSON older stores wrote.
fn decode_account(bytes: &[u8]) -> Result<AccountState, StoreError> {
    if bytes.first() != Some(&ACCOUNT_V1) {
        return decode_json(bytes, "account");
    }
    let bad = || StoreError::Corrupt("account");
    let mut r = &bytes[1..];
    fn take<'a>(r: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        if r.len() < n {
            return None;
        }
        let (head, rest) = r.split_at(n);
        *r = rest;
        Some(head)
    }
    fn u32_at(r: &mut &[u8]) -> Option<u32> {
        take(r, 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn text(r: &mut &[u8]) -> Option<Option<String>> {
        let n = u32_at(r)?;
        if n == u32::MAX {
            return Some(None);
        }
        let b = take(r, n as usize)?;
        Some(Some(std::str::from_utf8(b).ok()?.to_string()))
    }
    fn cid(r: &mut &[u8]) -> Option<Option<StateCid>> {
        let cid = match take(r, 1)?[0] {
            0 => return Some(None),
            1 => {
                let n = take(r, 1)?[0] as usize;
                atproto::Cid::try_from(take(r, n)?).ok()?
            }
            // Text, as stores written before CIDs were kept binary may hold.
            2 => text(r)??.parse().ok()?,
            _ => return None,
        };
        Some(Some(StateCid::from(cid)))
    }
    let flags = take(&mut r, 1).ok_or_else(bad)?[0];
    let host: Arc<str> = text(&mut r).flatten().ok_or_else(bad)?.into();
    let rev = text(&mut r).ok_or_else(bad)?;
    let data = cid(&mut r).ok_or_else(bad)?;
    let head = cid(&mut r).ok_or_else(bad)?;
    let status = text(&mut r).ok_or_else(bad)?;
    let epoch = take(&mut r, 8).ok_or_else(bad)?;
    let seq = take(&mut r, 8).ok_or_else(bad)?;
    let mut e = [0u8; 8];
    e.copy_from_slice(epoch);
    let mut q = [0u8; 8];
    q.copy_from_slice(seq);
    Ok(AccountState {
        host,
        rev,
        data,
        head,
        active: flags & 1 != 0,
        status,
        upstream: (flags & 4 != 0).then_some(Upstream {
            epoch: u64::from_le_bytes(e),
            seq: i64::from_le_bytes(q),
        }),
        desynchronized: flags & 2 != 0,
    })
}

/// `last_seq` (0 before the first event) and the oldest retained seq, if recorded.
/// Batch starts in `seq` order with their times in microseconds.
struct Timeline(Vec<(u64, u64)>);

impl Timeline {
    /// An event's time: its batch's time plus its place in the batch.
    fn time_of(&self, seq: u64) -> u64 {
        let i = self.0.partition_point(|&(first, _)| first <= seq);
        match i.checked_sub(1).and_then(|i| self.0.get(i)) {
            Some(&(first, base)) => base + (seq - first),
            None => 0,
        }
    }
}

/// The meta key of a Kafka topic's acknowledged point.
fn kafka_key(topic: &str) -> String {
    format!("kafka_acked:{topic}")
}

fn seq_bounds(
    meta: &impl ReadableTable<&'static str, u64>,
) -> Result<(u64, Option<u64>), StoreError> {
    let last = meta.get(LAST_SEQ)?.map(|v| v.value()).unwrap_or(0);
    let oldest = meta.get(OLDEST_SEQ)?.map(|v| v.value());
    Ok((last, oldest))
}

/// Adds summed count changes, one read and write per (repo, collection).
fn apply_deltas<'a>(
    by_collection: &mut redb::Table<&str, u64>,
    by_repo: &mut redb::Table<&str, u64>,
    deltas: impl Iterator<Item = ((&'a str, &'a str), i64)>,
) -> Result<(), StoreError> {
    for ((did, collection), d) in deltas {
        if d == 0 {
            continue;
        }
        let rk = format!("{did}\0{collection}");
        let current = by_repo.get(rk.as_str())?.map(|v| v.value()).unwrap_or(0);
        set_count(
            by_collection,
            by_repo,
            did,
            collection,
            current,
            current.saturating_add_signed(d),
        )?;
    }
    Ok(())
}

fn decode_json<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
    what: &'static str,
) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|_| StoreError::Corrupt(what))
}

#[cfg(test)]
mod tests {
    use super::*;
    use atproto::frame::{decode_frame, Frame, IdentityEvent};

    fn tempdir(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("agentnet-store-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn identity(did: &str) -> Append {
        Append {
            frame: Frame::Identity(IdentityEvent {
                seq: 0,
                did: did.into(),
                time: "2026-12-02T00:00:00.000Z".into(),
                handle: None,
            }),
            account: Some((
                did.into(),
                AccountState {
                    host: "https://pds.example".into(),
                    active: true,
                    ..AccountState::default()
                },
            )),
            collections: Collections::Delta(vec![("agent.comms.message".into(), 1)]),
            raw: None,
        }
    }

    fn seqs(events: &[Logged]) -> Vec<u64> {
        events
            .iter()
            .map(|e| {
                let Ok(Frame::Identity(ev)) = decode_frame(&e.frame) else {
                    panic!("not the identity frame written")
                };
                assert_eq!(ev.seq as u64, e.seq, "the frame carries its seq");
                e.seq
            })
            .collect()
    }

    #[test]
    fn repos_enter_and_leave_collections_as_their_counts_cross_zero() {
        let dir = tempdir("collections");
        let store = Store::open(&dir).expect("open");
        let change = |did: &str, c: Collections| Append {
            collections: c,
            ..identity(did)
        };
        let delta = |d: &[(&str, i64)]| {
            Collections::Delta(d.iter().map(|(c, n)| (c.to_string(), *n)).collect())
        };
        let listed = |collection: &str| {
            store
                .repos_by_collection(collection, None, 10)
                .expect("repos")
        };
        let (msg, note) = ("agent.comms.message", "agent.memory.note");
        store
            .append(
                &[
                    change("did:plc:a", delta(&[(msg, 2)])),
                    change("did:plc:b", delta(&[(msg, 1), (note, 1)])),
                ],
                &[],
                &[],
                0,
            )
            .expect("append");
        assert_eq!(listed(msg), ["did:plc:a", "did:plc:b"]);
        // One of a's two records goes: a stays; b's only record goes: b leaves.
        store
            .append(
                &[
                    change("did:plc:a", delta(&[(msg, -1)])),
                    change("did:plc:b", delta(&[(msg, -1)])),
                ],
                &[],
                &[],
                0,
            )
            .expect("append");
        assert_eq!(listed(msg), ["did:plc:a"]);
        assert_eq!(listed(note), ["did:plc:b"]);
        // A reset replaces b's collections with the repo's own counts.
        store
            .append(
                &[change(
                    "did:plc:b",
                    Collections::Reset(vec![(msg.into(), 3)]),
                )],
                &[],
                &[],
                0,
            )
            .expect("append");
        assert_eq!(listed(msg), ["did:plc:a", "did:plc:b"]);
        assert!(listed(note).is_empty());
        // b's count after the reset is 3: two deletes keep it listed, the third removes it.
        for _ in 0..3 {
            assert!(listed(msg).contains(&"did:plc:b".to_string()));
            store
                .append(&[change("did:plc:b", delta(&[(msg, -1)]))], &[], &[], 0)
                .expect("append");
        }
        assert_eq!(listed(msg), ["did:plc:a"]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn batches_are_read_back_pruned_and_survive_reopening() {
        let dir = tempdir("batches");
        let store = Store::open(&dir).expect("open");
        for (i, n) in [3usize, 1, 4].into_iter().enumerate() {
            let batch: Vec<Append> = (0..n).map(|_| identity("did:plc:a")).collect();
            store
                .append(&batch, &[], &[], 1_000 * i as u64)
                .expect("append");
        }
        assert_eq!(store.last_seq().expect("last"), 8);
        assert_eq!(store.event_count().expect("count"), 8);
        assert_eq!(
            seqs(&store.read_after(0, 100).expect("read")),
            (1..=8).collect::<Vec<_>>()
        );
        assert_eq!(seqs(&store.read_after(3, 2).expect("read")), vec![4, 5]);
        assert!(store.read_after(8, 10).expect("read").is_empty());
        // The collection count followed every event (summed per batch).
        assert_eq!(
            store
                .repos_by_collection("agent.comms.message", None, 10)
                .expect("repos"),
            vec!["did:plc:a".to_string()]
        );

        // By count: the two oldest go.
        assert_eq!(store.prune(6, u64::MAX, 10_000).expect("prune"), 2);
        assert_eq!(store.oldest_seq().expect("oldest"), Some(3));
        assert_eq!(
            seqs(&store.read_after(0, 100).expect("read")),
            (3..=8).collect::<Vec<_>>()
        );
        // By age: whole batches older than the bound (the first two).
        assert_eq!(store.prune(100, 1_500, 2_600).expect("prune"), 2);
        assert_eq!(store.oldest_seq().expect("oldest"), Some(5));
        drop(store);

        let store = Store::open(&dir).expect("reopen");
        assert_eq!(store.event_count().expect("count"), 4);
        assert_eq!(
            seqs(&store.read_after(0, 100).expect("read")),
            vec![5, 6, 7, 8]
        );
        store
            .append(&[identity("did:plc:b")], &[], &[], 3_000)
            .expect("append");
        assert_eq!(seqs(&store.read_after(7, 100).expect("read")), vec![8, 9]);
        // Everything by age: the log is empty, `last_seq` stays.
        assert_eq!(store.prune(100, 0, 10_000).expect("prune"), 5);
        assert_eq!(store.oldest_seq().expect("oldest"), None);
        assert_eq!(store.last_seq().expect("last"), 9);
        assert!(store.read_after(0, 10).expect("read").is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn event_times_increase_along_the_log_and_find_cursors() {
        let dir = tempdir("times");
        let store = Store::open(&dir).expect("open");
        let times = |logged: &[Logged]| logged.iter().map(|e| e.time_us).collect::<Vec<_>>();
        let batch = |n: usize| (0..n).map(|_| identity("did:plc:a")).collect::<Vec<_>>();
        // Two batches in one millisecond, then one timed before them (the clock stepped
        // back): every event still has its own, later time.
        let a = store.append(&batch(3), &[], &[], 5).expect("append");
        let b = store.append(&batch(2), &[], &[], 5).expect("append");
        let c = store.append(&batch(1), &[], &[], 4).expect("append");
        assert_eq!(times(&a), [5_000, 5_001, 5_002]);
        assert_eq!(times(&b), [5_003, 5_004]);
        assert_eq!(times(&c), [5_005]);
        let d = store.append(&batch(2), &[], &[], 9).expect("append");
        assert_eq!(times(&d), [9_000, 9_001]);
        // Read back with the times they were appended with, from any point of a batch.
        let all = store.read_after(0, 100).expect("read");
        assert_eq!(
            times(&all),
            [5_000, 5_001, 5_002, 5_003, 5_004, 5_005, 9_000, 9_001]
        );
        assert_eq!(
            times(&store.read_after(4, 2).expect("read")),
            [5_004, 5_005]
        );
        assert_eq!(store.time_of(7).expect("time"), Some(9_000));
        assert_eq!(store.time_of(9).expect("time"), None);
        // A cursor finds the first event at or after it.
        let at = |t: u64| store.first_at_or_after(t).expect("search");
        assert_eq!(at(0), Some(1));
        assert_eq!(at(5_002), Some(3));
        assert_eq!(at(5_006), Some(7));
        assert_eq!(at(9_001), Some(8));
        assert_eq!(at(9_002), None);
        // Times survive reopening and pruning; the next batch starts after the last.
        store.prune(3, u64::MAX, 10).expect("prune");
        drop(store);
        let store = Store::open(&dir).expect("reopen");
        assert_eq!(at_or_after(&store, 0), Some(6));
        let e = store.append(&batch(1), &[], &[], 1).expect("append");
        assert_eq!(times(&e), [9_002]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn at_or_after(store: &Store, t: u64) -> Option<u64> {
        store.first_at_or_after(t).expect("search")
    }

    #[test]
    fn account_states_round_trip_and_old_forms_still_read() {
        let cid = atproto::data::cid_for_cbor(b"x");
        // A CID of another codec (raw) is kept whole, and round-trips as well.
        let raw_cid = atproto::data::cid_for(atproto::data::RAW, b"x");
        assert!(matches!(StateCid::from(raw_cid), StateCid::Other(_)));
        assert!(matches!(StateCid::from(cid), StateCid::DagCbor(_)));
        assert_eq!(StateCid::from(cid).to_cid(), cid);
        let states = [
            AccountState::default(),
            AccountState {
                host: "https://pds.example:8443".into(),
                rev: Some("3lbx4dwkuq22s".into()),
                data: Some(cid.into()),
                head: Some(atproto::data::cid_for_cbor(b"y").into()),
                active: false,
                status: Some("deactivated".into()),
                upstream: Some(Upstream { epoch: 3, seq: -1 }),
                desynchronized: true,
            },
            AccountState {
                host: "h".into(),
                data: Some(raw_cid.into()),
                upstream: Some(Upstream { epoch: 0, seq: 0 }),
                active: true,
                ..AccountState::default()
            },
        ];
        for s in &states {
            let bytes = encode_account(s);
            assert_eq!(&decode_account(&bytes).expect("decodes"), s);
            assert!(decode_account(&bytes[..bytes.len() - 1]).is_err());
            let json = serde_json::to_vec(s).expect("json");
            assert_eq!(&decode_account(&json).expect("old form"), s);
            assert!(bytes.len() < json.len());
        }
        // The binary form with a CID kept as text (tag 2), as earlier stores could write:
        // read as the CID, and text that is no CID is corruption, not a missing root.
        let with_text = |t: &str| {
            let mut b = vec![ACCOUNT_V1, 1];
            for part in [&b"h"[..], b"3lbx4dwkuq22s"] {
                b.extend_from_slice(&(part.len() as u32).to_le_bytes());
                b.extend_from_slice(part);
            }
            b.push(2);
            b.extend_from_slice(&(t.len() as u32).to_le_bytes());
            b.extend_from_slice(t.as_bytes());
            b.push(0);
            b.extend_from_slice(&u32::MAX.to_le_bytes());
            b.extend_from_slice(&[0; 16]);
            b
        };
        let read = decode_account(&with_text(&cid.to_string())).expect("text CID");
        assert_eq!(
            (read.data, read.rev.as_deref()),
            (Some(cid.into()), Some("3lbx4dwkuq22s"))
        );
        assert!(decode_account(&with_text("not a cid")).is_err());
    }

    #[test]
    fn frames_written_but_never_committed_are_cut() {
        let dir = tempdir("uncommitted");
        let store = Store::open(&dir).expect("open");
        store
            .append(&[identity("did:plc:a")], &[], &[], 0)
            .expect("append");
        // A crash after the segment write and before the transaction: seq 2 in the file only.
        store
            .log
            .append(&[(2, Bytes::from_static(b"never committed"))])
            .expect("raw append");
        drop(store);
        let store = Store::open(&dir).expect("reopen");
        store
            .append(&[identity("did:plc:a")], &[], &[], 0)
            .expect("append");
        assert_eq!(seqs(&store.read_after(0, 10).expect("read")), vec![1, 2]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_store_from_before_segments_is_moved_into_them() {
        let dir = tempdir("legacy");
        std::fs::create_dir_all(&dir).expect("dir");
        let frame = |seq: i64| {
            let mut f = identity("did:plc:old").frame;
            f.set_seq(seq);
            atproto::frame::encode_frame(&f).expect("encode")
        };
        {
            let db = Database::create(dir.join("relay.redb")).expect("db");
            let txn = db.begin_write().expect("txn");
            {
                let mut events = txn.open_table(LEGACY_EVENTS).expect("events");
                let mut times = txn.open_table(LEGACY_EVENT_TIMES).expect("times");
                for seq in 5..=9u64 {
                    events
                        .insert(seq, frame(seq as i64).as_slice())
                        .expect("insert");
                    times.insert(seq, 100 * seq).expect("insert");
                }
                txn.open_table(META)
                    .expect("meta")
                    .insert(LAST_SEQ, 9)
                    .expect("last");
            }
            txn.commit().expect("commit");
        }
        let store = Store::open(&dir).expect("open");
        assert_eq!(store.oldest_seq().expect("oldest"), Some(5));
        assert_eq!(
            seqs(&store.read_after(0, 100).expect("read")),
            vec![5, 6, 7, 8, 9]
        );
        store
            .append(&[identity("did:plc:a")], &[], &[], 0)
            .expect("append");
        drop(store);
        let store = Store::open(&dir).expect("reopen");
        assert_eq!(
            seqs(&store.read_after(6, 100).expect("read")),
            vec![7, 8, 9, 10]
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
