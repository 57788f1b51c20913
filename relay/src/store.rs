//! The relay's durable state, in one embedded crash-safe database (`redb`): the event log
//! keyed by the relay's `seq`, per-account state, and per-host state with its upstream
//! cursor. One write transaction covers a batch of events together with the account states
//! and host cursors they advance, so after a crash (kill -9 included) the three agree: an
//! event is either in the log with its effects, or absent with none of them.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
};
use serde::{Deserialize, Serialize};
use thiserror::Error;

const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
const EVENT_TIMES: TableDefinition<u64, u64> = TableDefinition::new("event_times");
const ACCOUNTS: TableDefinition<&str, &[u8]> = TableDefinition::new("accounts");
const HOSTS: TableDefinition<&str, &[u8]> = TableDefinition::new("hosts");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// `collection \0 did` → records of that collection in that repo (listReposByCollection).
const COLLECTIONS: TableDefinition<&str, u64> = TableDefinition::new("collections");
/// `did \0 collection` → the same counts, to find a repo's collections when it is reset.
const REPO_COLLECTIONS: TableDefinition<&str, u64> = TableDefinition::new("repo_collections");
/// Highest `seq` ever assigned (kept when retention empties the log).
const LAST_SEQ: &str = "last_seq";

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
    /// The host (PDS URL) its events arrive from.
    pub host: String,
    /// The latest accepted revision.
    pub rev: Option<String>,
    /// The MST root after that revision.
    pub data: Option<String>,
    /// The latest commit CID.
    pub head: Option<String>,
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
        Ok(Store {
            db: Arc::new(std::sync::RwLock::new(Some(Arc::new(db)))),
            path: Arc::new(path),
        })
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
        *slot = Some(Arc::new(db));
        Ok(())
    }

    fn open_db(path: &Path) -> Result<Database, StoreError> {
        let db = Database::create(path)?;
        let txn = db.begin_write()?;
        {
            txn.open_table(EVENTS)?;
            txn.open_table(EVENT_TIMES)?;
            txn.open_table(ACCOUNTS)?;
            txn.open_table(HOSTS)?;
            txn.open_table(META)?;
            txn.open_table(COLLECTIONS)?;
            txn.open_table(REPO_COLLECTIONS)?;
        }
        txn.commit()?;
        Ok(db)
    }

    /// The highest `seq` assigned so far (0 before the first event).
    pub fn last_seq(&self) -> Result<u64, StoreError> {
        let txn = self.db()?.begin_read()?;
        let meta = txn.open_table(META)?;
        Ok(meta.get(LAST_SEQ)?.map(|v| v.value()).unwrap_or(0))
    }

    /// The oldest retained `seq`, if any event is retained.
    pub fn oldest_seq(&self) -> Result<Option<u64>, StoreError> {
        let txn = self.db()?.begin_read()?;
        let events = txn.open_table(EVENTS)?;
        let oldest = events.first()?.map(|(k, _)| k.value());
        Ok(oldest)
    }

    /// Number of retained events.
    pub fn event_count(&self) -> Result<u64, StoreError> {
        let txn = self.db()?.begin_read()?;
        Ok(txn.open_table(EVENTS)?.len()?)
    }

    /// Appends a batch durably (fsync on commit) and returns each event's `(seq, frame)`.
    /// Account states to store without an event, and the host cursors, are written in
    /// the same transaction.
    pub fn append(
        &self,
        batch: &[Append],
        states: &[(String, AccountState)],
        host_cursors: &[HostCursor],
        now_ms: u64,
    ) -> Result<Vec<(u64, Bytes)>, StoreError> {
        let mut txn = self.db()?.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        let mut out = Vec::with_capacity(batch.len());
        {
            let mut meta = txn.open_table(META)?;
            let mut seq = meta.get(LAST_SEQ)?.map(|v| v.value()).unwrap_or(0);
            let mut events = txn.open_table(EVENTS)?;
            let mut times = txn.open_table(EVENT_TIMES)?;
            let mut accounts = txn.open_table(ACCOUNTS)?;
            let mut by_collection = txn.open_table(COLLECTIONS)?;
            let mut by_repo = txn.open_table(REPO_COLLECTIONS)?;
            for item in batch {
                if let Some(did) = item.frame.did() {
                    apply_collections(&mut by_collection, &mut by_repo, did, &item.collections)?;
                }
                seq += 1;
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
                events.insert(seq, bytes.as_slice())?;
                times.insert(seq, now_ms)?;
                if let Some((did, state)) = &item.account {
                    let v =
                        serde_json::to_vec(state).map_err(|_| StoreError::Corrupt("account"))?;
                    accounts.insert(did.as_str(), v.as_slice())?;
                }
                out.push((seq, Bytes::from(bytes)));
            }
            meta.insert(LAST_SEQ, seq)?;
            for (did, state) in states {
                let v = serde_json::to_vec(state).map_err(|_| StoreError::Corrupt("account"))?;
                accounts.insert(did.as_str(), v.as_slice())?;
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
        Ok(out)
    }

    /// Up to `max` events with `seq > after`, in order.
    pub fn read_after(&self, after: u64, max: usize) -> Result<Vec<(u64, Bytes)>, StoreError> {
        let txn = self.db()?.begin_read()?;
        let events = txn.open_table(EVENTS)?;
        let mut out = Vec::with_capacity(max.min(4096));
        for item in events.range(after.saturating_add(1)..)?.take(max) {
            let (k, v) = item?;
            out.push((k.value(), Bytes::copy_from_slice(v.value())));
        }
        Ok(out)
    }

    /// Drops the oldest events while more than `max_events` are retained or they are older
    /// than `max_age_ms`. Returns how many were dropped.
    pub fn prune(&self, max_events: u64, max_age_ms: u64, now_ms: u64) -> Result<u64, StoreError> {
        let txn = self.db()?.begin_write()?;
        let mut dropped = 0;
        {
            let mut events = txn.open_table(EVENTS)?;
            let mut times = txn.open_table(EVENT_TIMES)?;
            let count = events.len()?;
            let mut cut: Option<u64> = None;
            let excess = count.saturating_sub(max_events);
            for (i, item) in times.range(0u64..)?.enumerate() {
                let (seq, at) = item?;
                if (i as u64) < excess || now_ms.saturating_sub(at.value()) > max_age_ms {
                    cut = Some(seq.value());
                } else {
                    break;
                }
            }
            if let Some(cut) = cut {
                events.retain_in(0..=cut, |_, _| false)?;
                times.retain_in(0..=cut, |_, _| {
                    dropped += 1;
                    false
                })?;
            }
        }
        txn.commit()?;
        Ok(dropped)
    }

    /// Every stored account.
    pub fn accounts(&self) -> Result<Vec<(String, AccountState)>, StoreError> {
        let txn = self.db()?.begin_read()?;
        let table = txn.open_table(ACCOUNTS)?;
        let mut out = Vec::new();
        for item in table.range::<&str>(..)? {
            let (k, v) = item?;
            out.push((k.value().to_string(), decode_json(v.value(), "account")?));
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
            out.push((k.value().to_string(), decode_json(v.value(), "account")?));
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
            .map(|v| decode_json(v.value(), "account"))
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

/// Sets one (collection, repo) count in both indexes; zero removes it.
fn set_count(
    by_collection: &mut redb::Table<&str, u64>,
    by_repo: &mut redb::Table<&str, u64>,
    did: &str,
    collection: &str,
    n: u64,
) -> Result<(), StoreError> {
    let ck = format!("{collection}\0{did}");
    let rk = format!("{did}\0{collection}");
    if n == 0 {
        by_collection.remove(ck.as_str())?;
        by_repo.remove(rk.as_str())?;
    } else {
        by_collection.insert(ck.as_str(), n)?;
        by_repo.insert(rk.as_str(), n)?;
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
        Collections::Delta(deltas) => {
            for (collection, d) in deltas {
                let rk = format!("{did}\0{collection}");
                let current = by_repo.get(rk.as_str())?.map(|v| v.value()).unwrap_or(0);
                set_count(
                    by_collection,
                    by_repo,
                    did,
                    collection,
                    current.saturating_add_signed(*d),
                )?;
            }
        }
        Collections::Reset(counts) => {
            let prefix = format!("{did}\0");
            let mut old = Vec::new();
            for item in by_repo.range(prefix.as_str()..)? {
                let (k, _) = item?;
                let Some(collection) = k.value().strip_prefix(prefix.as_str()).map(str::to_string)
                else {
                    break;
                };
                old.push(collection);
            }
            for collection in old {
                set_count(by_collection, by_repo, did, &collection, 0)?;
            }
            for (collection, n) in counts {
                set_count(by_collection, by_repo, did, collection, *n)?;
            }
        }
    }
    Ok(())
}

fn decode_json<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
    what: &'static str,
) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|_| StoreError::Corrupt(what))
}
