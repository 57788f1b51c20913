//! From a `#commit` to index changes, with privacy enforced before anything reaches a sink.
//!
//! - Only `agent.*` collections are indexed; every record is validated against the
//!   lexicons first (invalid ones are skipped with their reason).
//! - Public records are indexed in full.
//! - Sealed records shared with others: their metadata (author, inner collection,
//!   recipients, time, URI) always, so recipients can find them; their content only when
//!   the appview's own key is among the recipients, decrypted here and validated as the
//!   inner type.
//! - Private records (sealed for the author alone) produce nothing at all.

use atproto::car::{read_car, CarLimits};
use atproto::envelope::{self, EncryptionKey, Sealed};
use atproto::frame::CommitEvent;
use atproto::lexicon::Catalog;
use atproto::Ipld;
use store::records::{Change, RecordRow, Visibility};

/// Why an op produced no row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Skipped {
    /// Not an `agent.*` collection.
    NotAgent,
    /// Sealed for its author alone.
    Private,
    /// The record block is missing or does not decode.
    Undecodable,
    /// The record breaks its lexicon.
    Invalid(String),
}

impl Skipped {
    /// A label for metrics (bounded set).
    pub fn reason(&self) -> &'static str {
        match self {
            Skipped::NotAgent => "not_agent",
            Skipped::Private => "private",
            Skipped::Undecodable => "undecodable",
            Skipped::Invalid(_) => "invalid",
        }
    }
}

/// A whole repo's indexable records.
#[derive(Debug, Clone)]
pub struct RepoRecords {
    /// The repo's rev.
    pub rev: String,
    /// One upsert per indexable record.
    pub changes: Vec<Change>,
    /// The paths skipped, and why.
    pub skipped: Vec<(String, Skipped)>,
}

/// The appview's identity as a recipient of shared records.
#[derive(Clone)]
pub struct AppviewKey {
    /// The appview's DID.
    pub did: String,
    /// Its X25519 key.
    pub key: EncryptionKey,
}

/// Turns commits into index changes.
#[derive(Clone)]
pub struct Extractor {
    catalog: Catalog,
    appview: Option<AppviewKey>,
}

impl Extractor {
    /// An extractor validating with `catalog`, opening shared records addressed to
    /// `appview` (if given).
    pub fn new(catalog: Catalog, appview: Option<AppviewKey>) -> Self {
        Extractor { catalog, appview }
    }

    /// The changes a commit makes, and the ops it skipped with why.
    pub fn extract(&self, ev: &CommitEvent) -> (Vec<Change>, Vec<(String, Skipped)>) {
        let mut changes = Vec::new();
        let mut skipped = Vec::new();
        let blocks = read_car(&ev.blocks, CarLimits::FIREHOSE)
            .map(|c| c.blocks)
            .unwrap_or_default();
        for op in &ev.ops {
            if op.action == "delete" {
                match op.path.split_once('/') {
                    Some((collection, _)) if collection.starts_with("agent.") => {
                        changes.push(Change::Delete {
                            uri: format!("at://{}/{}", ev.repo, op.path),
                            rev: ev.rev.clone(),
                        })
                    }
                    Some(_) => skipped.push((op.path.clone(), Skipped::NotAgent)),
                    None => skipped.push((op.path.clone(), Skipped::Undecodable)),
                }
                continue;
            }
            let Some(cid) = op.cid else {
                skipped.push((op.path.clone(), Skipped::Undecodable));
                continue;
            };
            match self.record(&ev.repo, &ev.rev, &op.path, cid, &blocks) {
                Ok(row) => changes.push(Change::Upsert(Box::new(row))),
                Err(why) => skipped.push((op.path.clone(), why)),
            }
        }
        (changes, skipped)
    }

    /// Every record of a whole repo as it stands at its rev: one upsert per indexable
    /// record, and the paths skipped with why. The caller has verified the repo
    /// (`RepoSnapshot::read_verified`): nothing here checks a signature.
    pub fn extract_snapshot(
        &self,
        did: &str,
        repo: atproto::commit::RepoSnapshot,
        blocks: &atproto::car::BlockMap,
    ) -> RepoRecords {
        let commit = repo.commit;
        let mut changes = Vec::new();
        let mut skipped = Vec::new();
        for (path, cid) in repo.entries {
            match self.record(did, &commit.rev, &path, cid, blocks) {
                Ok(row) => changes.push(Change::Upsert(Box::new(row))),
                Err(why) => skipped.push((path, why)),
            }
        }
        RepoRecords {
            rev: commit.rev,
            changes,
            skipped,
        }
    }

    /// One record at `path` (block `cid` in `blocks`) of `repo` at `rev`, as a row, or why
    /// not: only `agent.*` collections, valid against their lexicon, and never private.
    fn record(
        &self,
        repo: &str,
        rev: &str,
        path: &str,
        cid: atproto::Cid,
        blocks: &atproto::car::BlockMap,
    ) -> Result<RecordRow, Skipped> {
        let (collection, rkey) = path.split_once('/').ok_or(Skipped::Undecodable)?;
        if !collection.starts_with("agent.") {
            return Err(Skipped::NotAgent);
        }
        let data = blocks
            .get(&cid)
            .and_then(|b| atproto::data::from_cbor::<Ipld>(b).ok())
            .ok_or(Skipped::Undecodable)?;
        self.catalog
            .validate_record(collection, rkey, &data)
            .map_err(|e| Skipped::Invalid(e.to_string()))?;
        let base = RowBase {
            uri: format!("at://{repo}/{path}"),
            cid: cid.to_string(),
            author: repo,
            rkey,
            rev,
        };
        if collection == lexicons::SEALED_NSID {
            self.sealed_row(base, &data)
        } else {
            Ok(base.public(collection, &data))
        }
    }

    fn sealed_row(&self, base: RowBase<'_>, data: &Ipld) -> Result<RecordRow, Skipped> {
        let bytes = atproto::data::to_cbor(data).map_err(|_| Skipped::Undecodable)?;
        let sealed: Sealed = atproto::data::from_cbor(&bytes).map_err(|_| Skipped::Undecodable)?;
        if sealed.is_private_to(base.author) {
            return Err(Skipped::Private);
        }
        let recipients: Vec<String> = sealed.recipient_dids().map(str::to_string).collect();
        // Content only when the appview was named, and only if it opens and is valid.
        let opened = self
            .appview
            .as_ref()
            .filter(|a| recipients.contains(&a.did))
            .and_then(|a| {
                let plaintext = envelope::open(&sealed, &base.uri, &a.did, &a.key).ok()?;
                let inner: Ipld = atproto::data::from_cbor(&plaintext).ok()?;
                self.catalog
                    .validate_record(&sealed.collection, base.rkey, &inner)
                    .ok()?;
                Some(inner)
            });
        let text = opened
            .as_ref()
            .and_then(|inner| text_of(&sealed.collection, inner));
        Ok(RecordRow {
            uri: base.uri,
            cid: base.cid,
            author: base.author.to_string(),
            collection: sealed.collection.clone(),
            rkey: base.rkey.to_string(),
            rev: base.rev.to_string(),
            created_at: sealed.created_at.clone(),
            visibility: Visibility::Shared,
            recipients,
            record: opened.as_ref().map(atproto::data::ipld_to_json),
            sealed: Some(atproto::data::ipld_to_json(data)),
            text,
            indexed_ms: 0,
        })
    }
}

struct RowBase<'a> {
    uri: String,
    cid: String,
    author: &'a str,
    rkey: &'a str,
    rev: &'a str,
}

impl RowBase<'_> {
    fn public(self, collection: &str, data: &Ipld) -> RecordRow {
        let created_at = match data {
            Ipld::Map(m) => match m.get("createdAt") {
                Some(Ipld::String(s)) => s.clone(),
                _ => String::new(),
            },
            _ => String::new(),
        };
        RecordRow {
            uri: self.uri,
            cid: self.cid,
            author: self.author.to_string(),
            collection: collection.to_string(),
            rkey: self.rkey.to_string(),
            rev: self.rev.to_string(),
            created_at,
            visibility: Visibility::Public,
            recipients: Vec::new(),
            record: Some(atproto::data::ipld_to_json(data)),
            sealed: None,
            text: text_of(collection, data),
            indexed_ms: 0,
        }
    }
}

/// The human text of a record, for embedding: what a reader would skim.
pub fn text_of(collection: &str, record: &Ipld) -> Option<String> {
    let Ipld::Map(m) = record else { return None };
    let s = |k: &str| match m.get(k) {
        Some(Ipld::String(s)) => Some(s.as_str()),
        _ => None,
    };
    let content_text = || match m.get("content") {
        Some(Ipld::Map(c)) => match c.get("text") {
            Some(Ipld::String(t)) => Some(t.as_str()),
            _ => None,
        },
        _ => None,
    };
    let parts: Vec<&str> = match collection {
        "agent.comms.message" => vec![content_text()?],
        "agent.comms.broadcast" => [s("topic"), content_text()].into_iter().flatten().collect(),
        "agent.comms.request" => vec![s("task")?],
        "agent.comms.handoff" => vec![s("summary")?],
        "agent.comms.response" => [s("status")].into_iter().flatten().collect(),
        "agent.memory.note" => [s("summary"), s("text")].into_iter().flatten().collect(),
        "agent.memory.decision" => [s("decision"), s("rationale")]
            .into_iter()
            .flatten()
            .collect(),
        _ => return None,
    };
    (!parts.is_empty()).then(|| parts.join("\n"))
}
