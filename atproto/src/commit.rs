//! Signed repo commits (version 3), a repository writer that produces sync 1.1 commit events,
//! and the verification a relay runs on each `#commit`: signature, then MST inversion using
//! only the blocks the event carries.

use cid::Cid;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::car::{read_car_view, write_car, BlockMap, CarError, CarLimits};
use crate::cbor::{NotCanonical, Reader};
use crate::crypto::{CryptoError, Keypair, PublicKey};
use crate::data::{encode_block, from_cbor, DataError};
use crate::frame::{CommitEvent, RepoOp};
use crate::mst::{BlockSource, Mst, MstError, NoBlocks};
use crate::syntax::{Tid, TidClock};

/// The repo format version written and accepted.
pub const COMMIT_VERSION: u64 = 3;
/// Most ops accepted in one commit event.
pub const MAX_OPS: usize = 200;

/// A commit as stored in the repo, signature included.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Commit {
    /// The account's DID.
    pub did: String,
    /// Repo format version (3).
    pub version: u64,
    /// Root of the MST.
    pub data: Cid,
    /// Revision: a TID, increasing with every commit.
    pub rev: String,
    /// Always null in version 3.
    pub prev: Option<Cid>,
    /// Signature over the DAG-CBOR of the other fields.
    #[serde(with = "serde_bytes")]
    pub sig: Vec<u8>,
}

/// The signed part of a commit.
#[derive(Debug, Serialize)]
struct UnsignedCommit<'a> {
    did: &'a str,
    version: u64,
    data: Cid,
    rev: &'a str,
    prev: Option<Cid>,
}

impl Commit {
    /// Builds and signs a commit.
    pub fn sign(did: &str, data: Cid, rev: &str, key: &Keypair) -> Result<Commit, DataError> {
        let unsigned = UnsignedCommit {
            did,
            version: COMMIT_VERSION,
            data,
            rev,
            prev: None,
        };
        let sig = key.sign(&crate::data::to_cbor(&unsigned)?);
        Ok(Commit {
            did: did.to_string(),
            version: COMMIT_VERSION,
            data,
            rev: rev.to_string(),
            prev: None,
            sig,
        })
    }

    /// The bytes the signature covers.
    pub fn unsigned_bytes(&self) -> Result<Vec<u8>, DataError> {
        crate::data::to_cbor(&UnsignedCommit {
            did: &self.did,
            version: self.version,
            data: self.data,
            rev: &self.rev,
            prev: self.prev,
        })
    }

    /// Decodes a commit block, with the bytes its signature covers. A canonical block (as
    /// every implementation writes them) yields those bytes by cutting `sig` out of it;
    /// anything else the generic decoder takes is re-encoded, as before.
    pub fn decode_signed(bytes: &[u8]) -> Result<(Commit, Vec<u8>), CommitError> {
        if let Ok(fast) = canonical_commit(bytes) {
            return Ok(fast);
        }
        let commit: Commit = from_cbor(bytes)?;
        let unsigned = commit.unsigned_bytes()?;
        Ok((commit, unsigned))
    }

    /// Checks the version and the signature against `key`.
    pub fn verify(&self, key: &PublicKey) -> Result<(), CommitError> {
        if self.version != COMMIT_VERSION {
            return Err(CommitError::Version(self.version));
        }
        key.verify(&self.unsigned_bytes()?, &self.sig)
            .map_err(CommitError::Signature)
    }
}

/// A commit block in canonical form (keys `did`, `rev`, `sig`, `data`, `prev`, `version`,
/// in DAG-CBOR order), and the same bytes without `sig`: the unsigned commit's canonical
/// encoding, since dropping one entry keeps the others in order.
fn canonical_commit(bytes: &[u8]) -> Result<(Commit, Vec<u8>), NotCanonical> {
    let mut r = Reader::new(bytes);
    if bytes.first() != Some(&0xa6) {
        return Err(NotCanonical);
    }
    r.map()?;
    r.key("did")?;
    let did = r.text()?;
    r.key("rev")?;
    let rev = r.text()?;
    let sig_start = r.pos();
    r.key("sig")?;
    let sig = r.bytes()?;
    let sig_end = r.pos();
    r.key("data")?;
    let data = r.cid()?;
    r.key("prev")?;
    let prev = r.cid_or_null()?;
    r.key("version")?;
    let version = r.uint()?;
    if !r.is_done() {
        return Err(NotCanonical);
    }
    let mut unsigned = Vec::with_capacity(bytes.len() - (sig_end - sig_start));
    unsigned.push(0xa5);
    unsigned.extend_from_slice(&bytes[1..sig_start]);
    unsigned.extend_from_slice(&bytes[sig_end..]);
    Ok((
        Commit {
            did: did.to_string(),
            version,
            data,
            rev: rev.to_string(),
            prev,
            sig: sig.to_vec(),
        },
        unsigned,
    ))
}

/// Why a commit or commit event was refused.
#[derive(Debug, Error)]
pub enum CommitError {
    /// Unsupported repo version.
    #[error("unsupported commit version {0}")]
    Version(u64),
    /// The signature does not verify.
    #[error("bad signature: {0}")]
    Signature(CryptoError),
    /// The CAR in `blocks` is refused.
    #[error(transparent)]
    Car(#[from] CarError),
    /// A block does not decode.
    #[error(transparent)]
    Data(#[from] DataError),
    /// The MST could not be walked (a missing block means an incomplete proof).
    #[error(transparent)]
    Mst(#[from] MstError),
    /// The event's fields disagree with the signed commit or with each other.
    #[error("inconsistent commit event: {0}")]
    Inconsistent(&'static str),
    /// Undoing the ops does not lead back to `prevData`.
    #[error("ops do not invert to prevData")]
    InversionMismatch,
    /// More ops than allowed.
    #[error("{0} ops is over the limit")]
    TooManyOps(usize),
}

/// A whole repo as a `getRepo` CAR holds it: the commit at its root and every record's
/// path and CID, read through a tree whose every node was present and hash-consistent.
/// The commit's signature is not checked here (callers with the account's key do).
#[derive(Debug, Clone)]
pub struct RepoSnapshot {
    /// The root CID (the commit's).
    pub head: Cid,
    /// The commit.
    pub commit: Commit,
    /// Every record, as (`collection/rkey`, CID), in key order.
    pub entries: Vec<(String, Cid)>,
}

impl RepoSnapshot {
    /// Reads the repo of `did` from a CAR's blocks.
    pub fn read(did: &str, car: &crate::car::Car) -> Result<RepoSnapshot, CommitError> {
        let head = *car
            .roots
            .first()
            .ok_or(CommitError::Inconsistent("the repo CAR has no root"))?;
        let commit: Commit = from_cbor(
            car.blocks
                .get(&head)
                .ok_or(CommitError::Inconsistent("the repo CAR lacks its commit"))?,
        )?;
        if commit.did != did {
            return Err(CommitError::Inconsistent("the repo is another account's"));
        }
        let mut tree = Mst::load(commit.data, &car.blocks)?;
        let entries = tree
            .entries(&car.blocks)?
            .into_iter()
            .map(|(key, cid)| (String::from_utf8_lossy(&key).into_owned(), cid))
            .collect();
        Ok(RepoSnapshot {
            head,
            commit,
            entries,
        })
    }

    /// Reads the repo of `did` and checks its commit's signature by `key`: with the CAR's
    /// blocks checked against their CIDs (by [`crate::car::read_car`]) and the tree walked
    /// from the signed root, every record in it is the account's.
    pub fn read_verified(
        did: &str,
        car: &crate::car::Car,
        key: &PublicKey,
    ) -> Result<RepoSnapshot, CommitError> {
        let repo = Self::read(did, car)?;
        repo.commit.verify(key)?;
        Ok(repo)
    }
}

/// What a verified commit event established.
#[derive(Debug, Clone)]
pub struct VerifiedCommit {
    /// The signed commit.
    pub commit: Commit,
    /// Root of the MST before the commit, when the inversion could establish it (always, if
    /// the event carried `prevData`).
    pub prev_data: Option<Cid>,
}

/// Verifies a `#commit` event: the CAR, the signature by `key`, that the event agrees with
/// the signed commit, and that undoing its ops on the partial tree in `blocks` gives
/// `prevData`. An event without `prevData` (some hosts omit it) is verified as far as it
/// can be and reports the root the inversion found, for the caller to compare with the
/// account's stored state. The CAR is read in place: no block is copied.
pub fn verify_commit_event(
    event: &CommitEvent,
    key: &PublicKey,
    limits: CarLimits,
) -> Result<VerifiedCommit, CommitError> {
    if event.ops.len() > MAX_OPS {
        return Err(CommitError::TooManyOps(event.ops.len()));
    }
    let car = read_car_view(&event.blocks, limits)?;
    if car.roots.first() != Some(&event.commit) {
        return Err(CommitError::Inconsistent("CAR root is not the commit"));
    }
    let commit_bytes = car
        .blocks
        .get(&event.commit)
        .ok_or(CommitError::Inconsistent("commit block missing"))?;
    let (commit, unsigned) = Commit::decode_signed(commit_bytes)?;
    if commit.did != event.repo {
        return Err(CommitError::Inconsistent("commit is for another repo"));
    }
    if commit.rev != event.rev {
        return Err(CommitError::Inconsistent(
            "event rev differs from commit rev",
        ));
    }
    if commit.version != COMMIT_VERSION {
        return Err(CommitError::Version(commit.version));
    }
    key.verify(&unsigned, &commit.sig)
        .map_err(CommitError::Signature)?;
    let prev_data = invert_ops(&commit, &event.ops, &car.blocks)?;
    if let Some(expected) = event.prev_data {
        if prev_data != expected {
            return Err(CommitError::InversionMismatch);
        }
    }
    Ok(VerifiedCommit {
        commit,
        prev_data: Some(prev_data),
    })
}

/// Undoes `ops` on the tree rooted at `commit.data`, reading only `blocks`, and returns
/// the root before the commit. Each op must match the tree: a create or update's `cid` is
/// the value present, a delete's key is absent.
pub fn invert_ops(
    commit: &Commit,
    ops: &[RepoOp],
    blocks: &dyn BlockSource,
) -> Result<Cid, CommitError> {
    let mut tree = Mst::load(commit.data, blocks)?;
    for op in ops.iter().rev() {
        let key = op.path.as_bytes();
        let current = tree.get(key, blocks)?;
        match op.action.as_str() {
            "create" => {
                if current.is_none() || current != op.cid {
                    return Err(CommitError::Inconsistent(
                        "create op does not match the tree",
                    ));
                }
                tree.remove(key, blocks)?;
            }
            "update" => {
                let prev = op
                    .prev
                    .ok_or(CommitError::Inconsistent("update op without prev"))?;
                if current.is_none() || current != op.cid {
                    return Err(CommitError::Inconsistent(
                        "update op does not match the tree",
                    ));
                }
                tree.insert(key, prev, blocks)?;
            }
            "delete" => {
                let prev = op
                    .prev
                    .ok_or(CommitError::Inconsistent("delete op without prev"))?;
                if current.is_some() {
                    return Err(CommitError::Inconsistent("deleted key still in the tree"));
                }
                tree.insert(key, prev, blocks)?;
            }
            _ => return Err(CommitError::Inconsistent("unknown op action")),
        }
    }
    Ok(tree.root_cid()?)
}

/// One write to a repository.
#[derive(Debug, Clone)]
pub enum Write {
    /// Add a record (the key must be absent).
    Create {
        /// Collection NSID.
        collection: String,
        /// Record key.
        rkey: String,
        /// The record, as DAG-CBOR.
        record: Vec<u8>,
    },
    /// Replace a record (the key must be present).
    Update {
        /// Collection NSID.
        collection: String,
        /// Record key.
        rkey: String,
        /// The record, as DAG-CBOR.
        record: Vec<u8>,
    },
    /// Remove a record.
    Delete {
        /// Collection NSID.
        collection: String,
        /// Record key.
        rkey: String,
    },
}

/// A repository held in memory that signs commits and emits sync 1.1 `#commit` events:
/// blocks carry the commit, new records, and the covering proof of every op. Used by the
/// synthetic PDS fleet and by tests; a PDS would persist the blocks.
#[derive(Debug)]
pub struct RepoWriter {
    did: String,
    key: Keypair,
    tree: Mst,
    blocks: BlockMap,
    clock: TidClock,
    rev: Option<String>,
    data: Cid,
    head: Option<(Cid, Vec<u8>)>,
}

impl RepoWriter {
    /// An empty repository for `did`, signing with `key`.
    pub fn new(did: impl Into<String>, key: Keypair) -> Result<Self, CommitError> {
        let mut tree = Mst::new();
        let data = tree.root_cid()?;
        Ok(RepoWriter {
            did: did.into(),
            key,
            tree,
            blocks: BlockMap::new(),
            clock: TidClock::new(0),
            rev: None,
            data,
            head: None,
        })
    }

    /// The repository's DID.
    pub fn did(&self) -> &str {
        &self.did
    }

    /// The signing key.
    pub fn key(&self) -> &Keypair {
        &self.key
    }

    /// The current revision, if any commit was made.
    pub fn rev(&self) -> Option<&str> {
        self.rev.as_deref()
    }

    /// The whole repository as a CAR (what `com.atproto.sync.getRepo` returns): the latest
    /// commit, every current MST node and every record.
    pub fn export_car(&mut self) -> Result<Vec<u8>, CommitError> {
        let Some((head, head_bytes)) = self.head.clone() else {
            return Err(CommitError::Inconsistent("no commit yet"));
        };
        let mut tree = Mst::load(self.data, &self.blocks)?;
        let mut out: Vec<(Cid, &[u8])> = vec![(head, head_bytes.as_slice())];
        let entries = tree.entries(&self.blocks)?;
        // Every node on the way to every key is the whole tree.
        let mut nodes = std::collections::BTreeSet::new();
        for (key, _) in &entries {
            nodes.extend(tree.covering_proof(key, &self.blocks)?);
        }
        if entries.is_empty() {
            nodes.insert(self.data);
        }
        for cid in &nodes {
            if let Some(b) = self.blocks.get(cid) {
                out.push((*cid, b));
            }
        }
        for (_, cid) in &entries {
            if let Some(b) = self.blocks.get(cid) {
                out.push((*cid, b));
            }
        }
        Ok(write_car(&[head], out.iter().map(|(c, b)| (c, *b)))?)
    }

    /// The latest commit CID and the MST root, if any commit was made.
    pub fn head(&self) -> Option<(Cid, Cid)> {
        self.head.as_ref().map(|(c, _)| (*c, self.data))
    }

    /// A fresh record key (a TID).
    pub fn next_rkey(&mut self) -> Tid {
        self.clock.next_tid()
    }

    /// Applies the writes, signs a commit, and returns the event (with `seq` 0: the host
    /// that publishes it assigns the sequence number).
    pub fn commit(&mut self, writes: &[Write], time: &str) -> Result<CommitEvent, CommitError> {
        let prev_data = self.data;
        let mut ops = Vec::with_capacity(writes.len());
        let mut new_blocks = BlockMap::new();
        for w in writes {
            let (collection, rkey, record) = match w {
                Write::Create {
                    collection,
                    rkey,
                    record,
                }
                | Write::Update {
                    collection,
                    rkey,
                    record,
                } => (collection, rkey, Some(record)),
                Write::Delete { collection, rkey } => (collection, rkey, None),
            };
            let path = format!("{collection}/{rkey}");
            let (action, cid, prev) = match record {
                Some(bytes) => {
                    let cid = crate::data::cid_for_cbor(bytes);
                    new_blocks.insert(cid, bytes.clone());
                    let prev = self.tree.insert(path.as_bytes(), cid, &self.blocks)?;
                    let is_create = matches!(w, Write::Create { .. });
                    if is_create != prev.is_none() {
                        return Err(CommitError::Inconsistent(
                            "create of a present key or update of an absent one",
                        ));
                    }
                    (if is_create { "create" } else { "update" }, Some(cid), prev)
                }
                None => {
                    let prev = self.tree.remove(path.as_bytes(), &self.blocks)?;
                    if prev.is_none() {
                        return Err(CommitError::Inconsistent("delete of an absent key"));
                    }
                    ("delete", None, prev)
                }
            };
            ops.push(RepoOp {
                action: action.into(),
                path,
                cid,
                prev,
            });
        }
        let (data, tree_blocks) = self.tree.new_blocks()?;
        let mut proof = Vec::new();
        for op in &ops {
            proof.extend(self.tree.covering_proof(op.path.as_bytes(), &NoBlocks)?);
        }
        let rev = self.clock.next_tid().to_string();
        let commit = Commit::sign(&self.did, data, &rev, &self.key)?;
        let (commit_cid, commit_bytes) = encode_block(&commit)?;

        let mut car_blocks: Vec<(Cid, &[u8])> = vec![(commit_cid, commit_bytes.as_slice())];
        let mut seen = std::collections::HashSet::new();
        seen.insert(commit_cid);
        for cid in proof {
            if seen.insert(cid) {
                // Changed nodes are new; unchanged neighbours come from earlier commits.
                if let Some(bytes) = tree_blocks.get(&cid).or_else(|| self.blocks.get(&cid)) {
                    car_blocks.push((cid, bytes));
                }
            }
        }
        for (cid, bytes) in &new_blocks {
            if seen.insert(*cid) {
                car_blocks.push((*cid, bytes));
            }
        }
        let car = write_car(&[commit_cid], car_blocks.iter().map(|(c, b)| (c, *b)))?;

        self.blocks.extend(new_blocks);
        self.blocks.extend(tree_blocks);
        self.data = data;
        self.head = Some((commit_cid, commit_bytes.clone()));
        let since = self.rev.replace(rev.clone());
        Ok(CommitEvent {
            seq: 0,
            rebase: false,
            too_big: false,
            repo: self.did.clone(),
            commit: commit_cid,
            rev,
            since,
            blocks: car.into(),
            ops,
            blobs: Vec::new(),
            prev_data: Some(prev_data),
            time: time.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::Algorithm;
    use crate::data::{cid_for_cbor, to_cbor};
    use proptest::prelude::*;

    fn generic(bytes: &[u8]) -> Option<(Commit, Vec<u8>)> {
        let c: Commit = from_cbor(bytes).ok()?;
        let u = c.unsigned_bytes().ok()?;
        Some((c, u))
    }

    /// Cutting `sig` out of a canonical block gives exactly the bytes the generic encoder
    /// writes for the unsigned commit, so the signature is checked over the same message.
    #[test]
    fn the_unsigned_bytes_cut_from_the_block_are_the_canonical_encoding() {
        let key = Keypair::generate(Algorithm::K256);
        let mut blocks = Vec::new();
        for (i, did) in [
            "did:plc:ewvi7nxzyoun6zhxrhs64oiz",
            "did:web:a.example%3A8443",
        ]
        .iter()
        .enumerate()
        {
            let data = cid_for_cbor(&[i as u8]);
            let commit = Commit::sign(did, data, "3lbx4dwkuq22s", &key).expect("sign");
            let bytes = to_cbor(&commit).expect("encode");
            let (fast, unsigned) = canonical_commit(&bytes).expect("canonical");
            assert_eq!(Some((fast.clone(), unsigned.clone())), generic(&bytes));
            fast.verify(&key.public_key()).expect("verifies");
            key.public_key()
                .verify(&unsigned, &fast.sig)
                .expect("same message");
            blocks.push(bytes);
        }
        // A commit with a prev link written in the block takes the same path.
        let mut with_prev =
            Commit::sign("did:plc:x", cid_for_cbor(b"d"), "3lbx4dwkuq22s", &key).expect("sign");
        with_prev.prev = Some(cid_for_cbor(b"p"));
        let bytes = to_cbor(&with_prev).expect("encode");
        assert_eq!(canonical_commit(&bytes).ok(), generic(&bytes));
        blocks.push(bytes);
        proptest!(ProptestConfig { cases: 2000, ..ProptestConfig::default() },
            |(which in 0..blocks.len(), at in any::<prop::sample::Index>(), byte in any::<u8>(), cut in any::<bool>())| {
            let mut bytes = blocks[which].clone();
            let at = at.index(bytes.len());
            if cut { bytes.truncate(at) } else { bytes[at] = byte }
            if let Ok(fast) = canonical_commit(&bytes) {
                prop_assert_eq!(Some(fast), generic(&bytes));
            }
        });
    }
}
