//! `com.atproto.sync.subscribeRepos` frames: a DAG-CBOR header `{op, t}` followed by a
//! DAG-CBOR body. Encoding is byte-exact: decoding a frame a PDS sent and encoding it again
//! gives the same bytes (field presence follows the lexicon: nullable fields are written as
//! null, optional ones are left out when absent).

use bytes::Bytes;
use cid::Cid;
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use thiserror::Error;

use crate::data::{cbor_item_len, from_cbor, to_cbor, DataError};

/// Largest frame accepted (the spec's 5 MB).
pub const MAX_FRAME_BYTES: usize = 5_000_000;
/// Deepest CBOR nesting accepted in a frame header.
const MAX_HEADER_DEPTH: usize = 4;

/// Why a frame was refused.
#[derive(Debug, Error)]
pub enum FrameError {
    /// Larger than the limit.
    #[error("frame of {0} bytes is over the limit")]
    TooLarge(usize),
    /// Header or body does not decode.
    #[error(transparent)]
    Data(#[from] DataError),
    /// Header is not `{op: 1, t}` or `{op: -1}`.
    #[error("bad frame header")]
    BadHeader,
}

/// The frame header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    /// 1 for a message, -1 for an error.
    pub op: i64,
    /// The message type (`#commit`, …), absent on errors.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub t: Option<String>,
}

/// One op of a `#commit`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepoOp {
    /// `create`, `update` or `delete`.
    pub action: String,
    /// `collection/rkey`.
    pub path: String,
    /// The new record CID; null for deletes.
    pub cid: Option<Cid>,
    /// The previous record CID, for updates and deletes (sync 1.1).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub prev: Option<Cid>,
}

/// `#commit`: a signed change to one repo, with the blocks that prove it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CommitEvent {
    /// Sequence number on the stream that carries it.
    pub seq: i64,
    /// Deprecated, always false.
    pub rebase: bool,
    /// Deprecated, always false.
    pub too_big: bool,
    /// The repo's DID.
    pub repo: String,
    /// CID of the commit block.
    pub commit: Cid,
    /// The commit's revision.
    pub rev: String,
    /// The previous revision, null for the first commit.
    pub since: Option<String>,
    /// CAR with the commit, new records and the MST proof.
    #[serde(with = "serde_bytes_bytes")]
    pub blocks: Bytes,
    /// The changes.
    pub ops: Vec<RepoOp>,
    /// Deprecated, always empty.
    pub blobs: Vec<Cid>,
    /// The MST root before this commit (sync 1.1).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub prev_data: Option<Cid>,
    /// When the event was emitted.
    pub time: String,
}

/// `#sync`: the repo's current commit, after which consumers must resynchronize.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncEvent {
    /// Sequence number.
    pub seq: i64,
    /// The repo's DID.
    pub did: String,
    /// CAR holding the commit block.
    #[serde(with = "serde_bytes_bytes")]
    pub blocks: Bytes,
    /// The commit's revision.
    pub rev: String,
    /// When the event was emitted.
    pub time: String,
}

/// `#identity`: the DID document or handle may have changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityEvent {
    /// Sequence number.
    pub seq: i64,
    /// The account's DID.
    pub did: String,
    /// When the event was emitted.
    pub time: String,
    /// The current handle, if known.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub handle: Option<String>,
}

/// `#account`: hosting status changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountEvent {
    /// Sequence number.
    pub seq: i64,
    /// The account's DID.
    pub did: String,
    /// When the event was emitted.
    pub time: String,
    /// Whether the account is active.
    pub active: bool,
    /// Why it is inactive (`takendown`, `suspended`, `deleted`, `deactivated`, …).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub status: Option<String>,
}

/// `#info`: an informational message, such as `OutdatedCursor`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InfoEvent {
    /// The message name.
    pub name: String,
    /// Human-readable detail.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub message: Option<String>,
}

/// An error frame (header `op: -1`), after which the server closes the stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorFrame {
    /// The error name: `FutureCursor`, `ConsumerTooSlow`, …
    pub error: String,
    /// Human-readable detail.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub message: Option<String>,
}

/// A decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// `#commit`.
    Commit(Box<CommitEvent>),
    /// `#sync`.
    Sync(SyncEvent),
    /// `#identity`.
    Identity(IdentityEvent),
    /// `#account`.
    Account(AccountEvent),
    /// `#info`.
    Info(InfoEvent),
    /// An error frame.
    Error(ErrorFrame),
    /// A message type this code does not know; consumers skip it.
    Unknown {
        /// The header's `t`.
        t: String,
        /// The body, undecoded.
        body: Bytes,
    },
}

impl Frame {
    /// The sequence number, for the types that carry one.
    pub fn seq(&self) -> Option<i64> {
        match self {
            Frame::Commit(e) => Some(e.seq),
            Frame::Sync(e) => Some(e.seq),
            Frame::Identity(e) => Some(e.seq),
            Frame::Account(e) => Some(e.seq),
            _ => None,
        }
    }

    /// Sets the sequence number, for the types that carry one.
    pub fn set_seq(&mut self, seq: i64) {
        match self {
            Frame::Commit(e) => e.seq = seq,
            Frame::Sync(e) => e.seq = seq,
            Frame::Identity(e) => e.seq = seq,
            Frame::Account(e) => e.seq = seq,
            Frame::Info(_) | Frame::Error(_) | Frame::Unknown { .. } => {}
        }
    }

    /// When the host says it emitted the event (`time`), for the types that carry one.
    pub fn time(&self) -> Option<&str> {
        match self {
            Frame::Commit(e) => Some(&e.time),
            Frame::Sync(e) => Some(&e.time),
            Frame::Identity(e) => Some(&e.time),
            Frame::Account(e) => Some(&e.time),
            _ => None,
        }
    }

    /// The DID the event is about, for the types that carry one.
    pub fn did(&self) -> Option<&str> {
        match self {
            Frame::Commit(e) => Some(&e.repo),
            Frame::Sync(e) => Some(&e.did),
            Frame::Identity(e) => Some(&e.did),
            Frame::Account(e) => Some(&e.did),
            _ => None,
        }
    }

    /// The header's `t` (or the error marker).
    pub fn kind(&self) -> &str {
        match self {
            Frame::Commit(_) => "#commit",
            Frame::Sync(_) => "#sync",
            Frame::Identity(_) => "#identity",
            Frame::Account(_) => "#account",
            Frame::Info(_) => "#info",
            Frame::Error(_) => "error",
            Frame::Unknown { t, .. } => t,
        }
    }
}

/// Splits a frame into its header and the raw body bytes, without decoding the body. The
/// relay's readers use this to route events cheaply.
pub fn split_frame(bytes: &[u8]) -> Result<(Header, &[u8]), FrameError> {
    if bytes.len() > MAX_FRAME_BYTES {
        return Err(FrameError::TooLarge(bytes.len()));
    }
    let header_len = cbor_item_len(bytes, MAX_HEADER_DEPTH)?;
    let header: Header = from_cbor(&bytes[..header_len]).map_err(|_| FrameError::BadHeader)?;
    if header.op == 1 && header.t.is_none() {
        return Err(FrameError::BadHeader);
    }
    if header.op != 1 && header.op != -1 {
        return Err(FrameError::BadHeader);
    }
    Ok((header, &bytes[header_len..]))
}

/// Decodes a whole frame.
pub fn decode_frame(bytes: &[u8]) -> Result<Frame, FrameError> {
    let (header, body) = split_frame(bytes)?;
    if header.op == -1 {
        return Ok(Frame::Error(from_cbor(body)?));
    }
    fn body_of<T: DeserializeOwned>(b: &[u8]) -> Result<T, FrameError> {
        Ok(from_cbor(b)?)
    }
    Ok(match header.t.as_deref().unwrap_or_default() {
        "#commit" => Frame::Commit(Box::new(body_of(body)?)),
        "#sync" => Frame::Sync(body_of(body)?),
        "#identity" => Frame::Identity(body_of(body)?),
        "#account" => Frame::Account(body_of(body)?),
        "#info" => Frame::Info(body_of(body)?),
        other => {
            // Still require a well-formed body, so garbage is not passed along.
            cbor_item_len(body, 64)?;
            Frame::Unknown {
                t: other.to_string(),
                body: Bytes::copy_from_slice(body),
            }
        }
    })
}

/// Decodes a frame held in shared bytes. A `#commit` in canonical form (as every
/// implementation writes it) is read in place and its `blocks` are a slice of `bytes`, not
/// a copy; everything else is decoded as by [`decode_frame`], which judges any input the
/// canonical reader does not take.
pub fn decode_frame_shared(bytes: &Bytes) -> Result<Frame, FrameError> {
    let (header, body) = split_frame(bytes)?;
    if header.op == 1 && header.t.as_deref() == Some("#commit") {
        let offset = bytes.len() - body.len();
        let slice = |r: std::ops::Range<usize>| bytes.slice(offset + r.start..offset + r.end);
        if let Ok(ev) = canonical_commit_event(body, slice) {
            return Ok(Frame::Commit(Box::new(ev)));
        }
    }
    decode_frame(bytes)
}

/// A `#commit` body with its keys in DAG-CBOR order (`ops`, `rev`, `seq`, `repo`, `time`,
/// `blobs`, `since`, `blocks`, `commit`, `rebase`, `tooBig`, then `prevData` if present);
/// `blocks` is handed to `slice` as a range of `body`.
fn canonical_commit_event(
    body: &[u8],
    slice: impl FnOnce(std::ops::Range<usize>) -> Bytes,
) -> Result<CommitEvent, crate::cbor::NotCanonical> {
    use crate::cbor::{NotCanonical, Reader};
    let mut r = Reader::new(body);
    let entries = r.map()?;
    if entries != 11 && entries != 12 {
        return Err(NotCanonical);
    }
    r.key("ops")?;
    let n = r.array()?;
    if n > body.len() / 8 {
        return Err(NotCanonical);
    }
    let mut ops = Vec::with_capacity(n);
    for _ in 0..n {
        let fields = r.map()?;
        r.key("cid")?;
        let cid = r.cid_or_null()?;
        r.key("path")?;
        let path = r.text()?.to_string();
        let prev = match fields {
            3 => None,
            4 => {
                r.key("prev")?;
                r.cid_or_null()?
            }
            _ => return Err(NotCanonical),
        };
        r.key("action")?;
        let action = r.text()?.to_string();
        ops.push(RepoOp {
            action,
            path,
            cid,
            prev,
        });
    }
    r.key("rev")?;
    let rev = r.text()?.to_string();
    r.key("seq")?;
    let seq = i64::try_from(r.uint()?).map_err(|_| NotCanonical)?;
    r.key("repo")?;
    let repo = r.text()?.to_string();
    r.key("time")?;
    let time = r.text()?.to_string();
    r.key("blobs")?;
    let n = r.array()?;
    if n > body.len() / 8 {
        return Err(NotCanonical);
    }
    let mut blobs = Vec::with_capacity(n);
    for _ in 0..n {
        blobs.push(r.cid()?);
    }
    r.key("since")?;
    let since = r.text_or_null()?.map(str::to_string);
    r.key("blocks")?;
    let car = r.bytes()?;
    let blocks_at = r.pos() - car.len()..r.pos();
    r.key("commit")?;
    let commit = r.cid()?;
    r.key("rebase")?;
    let rebase = r.bool()?;
    r.key("tooBig")?;
    let too_big = r.bool()?;
    let prev_data = if entries == 12 {
        r.key("prevData")?;
        r.cid_or_null()?
    } else {
        None
    };
    if !r.is_done() {
        return Err(NotCanonical);
    }
    Ok(CommitEvent {
        seq,
        rebase,
        too_big,
        repo,
        commit,
        rev,
        since,
        blocks: slice(blocks_at),
        ops,
        blobs,
        prev_data,
        time,
    })
}

/// Encodes a frame: header then body.
pub fn encode_frame(frame: &Frame) -> Result<Vec<u8>, FrameError> {
    let (op, body) = match frame {
        Frame::Commit(e) => (1, to_cbor(e)?),
        Frame::Sync(e) => (1, to_cbor(e)?),
        Frame::Identity(e) => (1, to_cbor(e)?),
        Frame::Account(e) => (1, to_cbor(e)?),
        Frame::Info(e) => (1, to_cbor(e)?),
        Frame::Unknown { body, .. } => (1, body.to_vec()),
        Frame::Error(e) => (-1, to_cbor(e)?),
    };
    let t = (op == 1).then(|| frame.kind().to_string());
    let mut out = to_cbor(&Header { op, t })?;
    out.extend_from_slice(&body);
    Ok(out)
}

/// The same frame with its body's `seq` replaced, without decoding or re-encoding the rest:
/// a relay re-sequences every event, and this keeps each frame byte-identical otherwise
/// (and costs one copy instead of a decode and an encode).
pub fn with_seq(frame: &[u8], seq: i64) -> Result<Vec<u8>, FrameError> {
    let bad = || {
        FrameError::Data(DataError::Decode(
            "frame body is not a map with an integer seq".into(),
        ))
    };
    let seq = u64::try_from(seq).map_err(|_| bad())?;
    let header_len = cbor_item_len(frame, MAX_HEADER_DEPTH)?;
    let body = &frame[header_len..];
    let (&first, _) = body.split_first().ok_or_else(bad)?;
    if first >> 5 != 5 {
        return Err(bad());
    }
    // Map header: count of entries, then key/value items.
    let (count, mut pos) = match first & 0x1f {
        n @ 0..=23 => (u64::from(n), 1),
        24 => (u64::from(*body.get(1).ok_or_else(bad)?), 2),
        _ => return Err(bad()),
    };
    for _ in 0..count {
        let key_end = pos + cbor_item_len(&body[pos..], 2)?;
        let value_end = key_end + cbor_item_len(&body[key_end..], 64)?;
        if &body[pos..key_end] == b"\x63seq" {
            if body[key_end] >> 5 != 0 {
                return Err(bad());
            }
            let mut out = Vec::with_capacity(frame.len() + 8);
            out.extend_from_slice(&frame[..header_len + key_end]);
            write_uint(&mut out, seq);
            out.extend_from_slice(&body[value_end..]);
            return Ok(out);
        }
        pos = value_end;
    }
    Err(bad())
}

/// A CBOR unsigned integer in its shortest form (as DAG-CBOR requires).
fn write_uint(out: &mut Vec<u8>, n: u64) {
    match n {
        0..=23 => out.push(n as u8),
        24..=0xff => out.extend_from_slice(&[24, n as u8]),
        0x100..=0xffff => {
            out.push(25);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        0x1_0000..=0xffff_ffff => {
            out.push(26);
            out.extend_from_slice(&(n as u32).to_be_bytes());
        }
        _ => {
            out.push(27);
            out.extend_from_slice(&n.to_be_bytes());
        }
    }
}

/// Serde glue: `Bytes` as a CBOR byte string.
mod serde_bytes_bytes {
    use bytes::Bytes;
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(b: &Bytes, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(b)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
        let buf: serde_bytes::ByteBuf = serde::Deserialize::deserialize(d)?;
        Ok(Bytes::from(buf.into_vec()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_and_info_frames_round_trip() {
        for frame in [
            Frame::Error(ErrorFrame {
                error: "FutureCursor".into(),
                message: Some("ahead".into()),
            }),
            Frame::Info(InfoEvent {
                name: "OutdatedCursor".into(),
                message: None,
            }),
            Frame::Account(AccountEvent {
                seq: 9,
                did: "did:plc:abc".into(),
                time: "2026-01-01T00:00:00.000Z".into(),
                active: false,
                status: Some("deactivated".into()),
            }),
        ] {
            let bytes = encode_frame(&frame).expect("encode");
            assert_eq!(decode_frame(&bytes).expect("decode"), frame);
        }
    }

    /// The in-place `#commit` reader gives what the generic decoder gives, on the events a
    /// repo writes (creates, updates, deletes, the first commit's null `since`, with and
    /// without `prevData`) and on every mutation of them it takes.
    #[test]
    fn shared_commit_decoding_matches_the_generic_decoder() {
        use crate::commit::{RepoWriter, Write};
        use proptest::prelude::*;
        let key = crate::crypto::Keypair::generate(crate::crypto::Algorithm::K256);
        let mut w = RepoWriter::new("did:plc:ewvi7nxzyoun6zhxrhs64oiz", key).expect("repo");
        let record = |t: &str| {
            to_cbor(&serde_json::json!({"$type": "agent.memory.note", "text": t})).expect("cbor")
        };
        let mut frames = Vec::new();
        let mut rkeys = Vec::new();
        for i in 0..6 {
            let rkey = w.next_rkey().to_string();
            rkeys.push(rkey.clone());
            let ev = w
                .commit(
                    &[Write::Create {
                        collection: "agent.memory.note".into(),
                        rkey,
                        record: record(&format!("n{i}")),
                    }],
                    "2026-12-02T08:00:00.000Z",
                )
                .expect("commit");
            frames.push(ev);
        }
        let ev = w
            .commit(
                &[
                    Write::Update {
                        collection: "agent.memory.note".into(),
                        rkey: rkeys[1].clone(),
                        record: record("changed"),
                    },
                    Write::Delete {
                        collection: "agent.memory.note".into(),
                        rkey: rkeys[2].clone(),
                    },
                ],
                "2026-12-02T08:00:01.000Z",
            )
            .expect("commit");
        frames.push(ev.clone());
        let mut without_prev_data = ev;
        without_prev_data.prev_data = None;
        frames.push(without_prev_data);
        let frames: Vec<Vec<u8>> = frames
            .into_iter()
            .map(|ev| encode_frame(&Frame::Commit(Box::new(ev))).expect("encode"))
            .collect();
        for f in &frames {
            let shared = Bytes::from(f.clone());
            let header_len = cbor_item_len(f, MAX_HEADER_DEPTH).expect("header");
            assert!(
                canonical_commit_event(&f[header_len..], |r| shared.slice(r)).is_ok(),
                "every event written is canonical"
            );
            assert_eq!(
                decode_frame_shared(&shared).expect("decodes"),
                decode_frame(f).expect("decodes")
            );
        }
        proptest!(ProptestConfig { cases: 3000, ..ProptestConfig::default() },
            |(which in 0..frames.len(), at in any::<prop::sample::Index>(), byte in any::<u8>(), cut in any::<bool>())| {
            let mut bytes = frames[which].clone();
            let at = at.index(bytes.len());
            if cut { bytes.truncate(at) } else { bytes[at] = byte }
            let shared = Bytes::from(bytes.clone());
            match decode_frame_shared(&shared) {
                Ok(frame) => prop_assert_eq!(Some(frame), decode_frame(&bytes).ok()),
                Err(_) => prop_assert!(decode_frame(&bytes).is_err()),
            }
        });
    }

    #[test]
    fn garbage_is_refused() {
        assert!(decode_frame(&[]).is_err());
        assert!(decode_frame(&[0xa2, 0x61]).is_err());
        let header = to_cbor(&Header {
            op: 1,
            t: Some("#commit".into()),
        })
        .expect("encode");
        let mut truncated = header.clone();
        truncated.extend_from_slice(&[0xaa, 0x63]);
        assert!(decode_frame(&truncated).is_err());
        let bad_op = to_cbor(&Header {
            op: 7,
            t: Some("#commit".into()),
        })
        .expect("encode");
        assert!(matches!(split_frame(&bad_op), Err(FrameError::BadHeader)));
    }
}
