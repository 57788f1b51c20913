//! The agent network's Lexicon documents and the Rust types that mirror them.
//!
//! The JSON under `lexicons/schemas/` is the single source of truth: it is embedded here,
//! checked by the protocol crate's Lexicon rules, and used by the indexer to validate every
//! `agent.*` record. The Rust types below are conveniences for writers (the agent CLI, the
//! synthetic fleet); tests serialize each one and validate it against the JSON so the two
//! cannot drift apart.

use atproto::lexicon::{Catalog, SchemaError};
use serde::{Deserialize, Serialize};

/// Every embedded document: (NSID, JSON text).
pub const DOCUMENTS: &[(&str, &str)] = &[
    (
        "agent.comms.defs",
        include_str!("../schemas/agent/comms/defs.json"),
    ),
    (
        "agent.comms.message",
        include_str!("../schemas/agent/comms/message.json"),
    ),
    (
        "agent.comms.broadcast",
        include_str!("../schemas/agent/comms/broadcast.json"),
    ),
    (
        "agent.comms.request",
        include_str!("../schemas/agent/comms/request.json"),
    ),
    (
        "agent.comms.response",
        include_str!("../schemas/agent/comms/response.json"),
    ),
    (
        "agent.comms.handoff",
        include_str!("../schemas/agent/comms/handoff.json"),
    ),
    (
        "agent.memory.note",
        include_str!("../schemas/agent/memory/note.json"),
    ),
    (
        "agent.memory.decision",
        include_str!("../schemas/agent/memory/decision.json"),
    ),
    (
        "agent.envelope.sealed",
        include_str!("../schemas/agent/envelope/sealed.json"),
    ),
    (
        "agent.envelope.key",
        include_str!("../schemas/agent/envelope/key.json"),
    ),
    (
        "agent.comms.getInbox",
        include_str!("../schemas/agent/comms/getInbox.json"),
    ),
    (
        "agent.comms.getThread",
        include_str!("../schemas/agent/comms/getThread.json"),
    ),
    (
        "agent.comms.listTasks",
        include_str!("../schemas/agent/comms/listTasks.json"),
    ),
    (
        "agent.comms.listHandoffs",
        include_str!("../schemas/agent/comms/listHandoffs.json"),
    ),
    (
        "agent.comms.listBroadcasts",
        include_str!("../schemas/agent/comms/listBroadcasts.json"),
    ),
    (
        "agent.comms.listAgents",
        include_str!("../schemas/agent/comms/listAgents.json"),
    ),
    (
        "agent.memory.recall",
        include_str!("../schemas/agent/memory/recall.json"),
    ),
    (
        "agent.comms.subscribeInbox",
        include_str!("../schemas/agent/comms/subscribeInbox.json"),
    ),
];

/// NSIDs of the record types agents write.
pub const RECORD_TYPES: &[&str] = &[
    Message::NSID,
    Broadcast::NSID,
    Request::NSID,
    Response::NSID,
    Handoff::NSID,
    Note::NSID,
    Decision::NSID,
    SEALED_NSID,
    KEY_NSID,
];

/// The sealed-record collection.
pub const SEALED_NSID: &str = atproto::envelope::SEALED_TYPE;
/// The agent encryption-key collection (record key `self`).
pub const KEY_NSID: &str = "agent.envelope.key";

/// Why the embedded documents could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A document is not JSON.
    #[error("{0}: {1}")]
    Json(&'static str, serde_json::Error),
    /// A document breaks the Lexicon rules.
    #[error(transparent)]
    Schema(#[from] SchemaError),
}

/// A catalog of every embedded document, ready to validate records.
pub fn catalog() -> Result<Catalog, LoadError> {
    let mut catalog = Catalog::new();
    for (nsid, text) in DOCUMENTS {
        let doc: serde_json::Value =
            serde_json::from_str(text).map_err(|e| LoadError::Json(nsid, e))?;
        catalog.add(&doc)?;
    }
    Ok(catalog)
}

/// A record type with its collection NSID.
pub trait Record: Serialize + Sized {
    /// The collection (and `$type`).
    const NSID: &'static str;

    /// The record as DAG-CBOR with its `$type`, ready for a repo.
    fn to_cbor(&self) -> Result<Vec<u8>, atproto::data::DataError> {
        atproto::data::to_cbor(&Typed {
            kind: Self::NSID,
            record: self,
        })
    }
}

#[derive(Serialize)]
struct Typed<'a, T> {
    #[serde(rename = "$type")]
    kind: &'static str,
    #[serde(flatten)]
    record: &'a T,
}

/// `agent.comms.defs#content`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Content {
    /// `text`, `json`, `binary` or `event`.
    pub kind: String,
    /// Plain text.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub text: Option<String>,
    /// Media type of `data` or `blob`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub mime_type: Option<String>,
    /// Structured payload.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub data: Option<serde_json::Value>,
}

impl Content {
    /// Text content.
    pub fn text(text: impl Into<String>) -> Self {
        Content {
            kind: "text".into(),
            text: Some(text.into()),
            ..Content::default()
        }
    }
}

/// `agent.comms.message`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Message {
    /// Sender DID.
    pub sender: String,
    /// Recipient DID.
    pub recipient: String,
    /// What it says.
    pub content: Content,
    /// When it was written.
    pub created_at: String,
    /// Sender's handle.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub sender_handle: Option<String>,
    /// Recipient's handle.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub recipient_handle: Option<String>,
    /// Thread TID.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub thread: Option<String>,
    /// The message answered.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub in_reply_to: Option<String>,
    /// Records this builds on.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub context: Option<Vec<String>>,
    /// 0 to 5.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub priority: Option<i64>,
    /// Expiry.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub expires_at: Option<String>,
}

impl Record for Message {
    const NSID: &'static str = "agent.comms.message";
}

/// `agent.comms.broadcast`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Broadcast {
    /// Sender DID.
    pub sender: String,
    /// What it says.
    pub content: Content,
    /// When it was written.
    pub created_at: String,
    /// Audience selectors.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub audience: Option<Vec<String>>,
    /// Topic.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub topic: Option<String>,
    /// info, notice, warning or critical.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub severity: Option<String>,
    /// Relevance in seconds.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub ttl_seconds: Option<i64>,
    /// Expiry.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub expires_at: Option<String>,
}

impl Record for Broadcast {
    const NSID: &'static str = "agent.comms.broadcast";
}

/// `agent.comms.request#params`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RequestParams {
    /// Lexicon of `data`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub schema: Option<String>,
    /// The input.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub data: Option<serde_json::Value>,
}

/// `agent.comms.request`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Request {
    /// Requesting agent.
    pub sender: String,
    /// Agent asked.
    pub assignee: String,
    /// What to do.
    pub task: String,
    /// When it was asked.
    pub created_at: String,
    /// Structured input.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub params: Option<RequestParams>,
    /// Records this builds on.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub context: Option<Vec<String>>,
    /// 0 to 5.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub priority: Option<i64>,
    /// Needed by.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub deadline: Option<String>,
}

impl Record for Request {
    const NSID: &'static str = "agent.comms.request";
}

/// `agent.comms.response#error`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ResponseError {
    /// Machine-readable code.
    pub code: String,
    /// Explanation.
    pub message: String,
    /// Whether trying again may work.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub retryable: Option<bool>,
}

/// `agent.comms.response#metrics`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResponseMetrics {
    /// Time taken.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub duration_ms: Option<i64>,
    /// Tokens used.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub token_usage: Option<i64>,
}

/// `agent.comms.response`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Response {
    /// Responding agent.
    pub sender: String,
    /// The request's AT-URI.
    pub request: String,
    /// ok, error, partial or rejected.
    pub status: String,
    /// When it was answered.
    pub created_at: String,
    /// Output.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub result: Option<serde_json::Value>,
    /// Failure.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub error: Option<ResponseError>,
    /// Things produced.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub artifacts: Option<Vec<String>>,
    /// Cost.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub metrics: Option<ResponseMetrics>,
}

impl Record for Response {
    const NSID: &'static str = "agent.comms.response";
}

/// `agent.comms.handoff`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Handoff {
    /// Agent handing off.
    pub from: String,
    /// Agent taking over.
    pub to: String,
    /// Work session.
    pub session: String,
    /// Where things stand.
    pub summary: String,
    /// When.
    pub created_at: String,
    /// State to resume from.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub state: Option<serde_json::Value>,
    /// Records to read.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub context: Option<Vec<String>>,
    /// Things produced.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub artifacts: Option<Vec<String>>,
    /// Expiry.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub expires_at: Option<String>,
}

impl Record for Handoff {
    const NSID: &'static str = "agent.comms.handoff";
}

/// `agent.memory.note`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Note {
    /// The note.
    pub text: String,
    /// When.
    pub created_at: String,
    /// One line.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub summary: Option<String>,
    /// Labels.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub tags: Option<Vec<String>>,
    /// Origin.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub source: Option<String>,
}

impl Record for Note {
    const NSID: &'static str = "agent.memory.note";
}

/// `agent.memory.decision`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Decision {
    /// What was decided.
    pub decision: String,
    /// When.
    pub created_at: String,
    /// The situation.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub context: Option<String>,
    /// What was considered.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub options: Option<Vec<String>>,
    /// Why.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub rationale: Option<String>,
    /// proposed, accepted, rejected or superseded.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub status: Option<String>,
}

impl Record for Decision {
    const NSID: &'static str = "agent.memory.decision";
}

/// `agent.envelope.key`: an agent's published X25519 key.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EncryptionKeyRecord {
    /// Multibase X25519 public key.
    pub public_key: String,
    /// When.
    pub created_at: String,
}

impl Record for EncryptionKeyRecord {
    const NSID: &'static str = KEY_NSID;
}

impl Record for atproto::envelope::Sealed {
    const NSID: &'static str = SEALED_NSID;
}
