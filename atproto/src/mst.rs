//! The Merkle Search Tree that holds a repository's records.
//!
//! A key's layer is the number of leading zero bit-pairs of its SHA-256. A node at layer `L`
//! holds the keys of height `L` in order, and between them pointers to nodes at layer
//! `L - 1` holding the keys that fall in between. The tree for a set of keys is unique, so
//! its root CID commits to the whole set.
//!
//! Nodes are loaded lazily from a [`BlockSource`]: a tree opened from a root CID only reads
//! the nodes an operation walks through. That is what makes sync 1.1 inversion work from a
//! commit's partial proof: undo the ops on the tree built from the proof blocks, and any node
//! the undo needs but the proof lacks is a [`MstError::MissingBlock`].

use std::cmp::Ordering;
use std::collections::HashMap;

use cid::Cid;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use smallvec::SmallVec;
use thiserror::Error;

use crate::car::BlockMap;
use crate::cbor::{NotCanonical, Reader};
use crate::data::{cid_for_cbor, from_cbor, DataError};

/// Longest key accepted in a node (`collection/rkey` is far shorter).
pub const MAX_KEY_LEN: usize = 1024;
/// A key held in a node. Keys are `collection/rkey`, almost always under 48 bytes, so they
/// live inline: decoding a node allocates its entry list, not one buffer per key.
type Key = SmallVec<[u8; 48]>;

/// Deepest tree accepted when walking (a fair tree over 2^64 keys is about 32 deep).
const MAX_LAYER: u32 = 128;

/// Why an MST operation failed.
#[derive(Debug, Error)]
pub enum MstError {
    /// A node the operation needs is not in the block source.
    #[error("missing MST block {0}")]
    MissingBlock(Cid),
    /// A node does not decode, or breaks the MST's rules.
    #[error("malformed MST node {cid}: {reason}")]
    Malformed {
        /// The node's CID.
        cid: Cid,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A node could not be encoded.
    #[error(transparent)]
    Data(#[from] DataError),
    /// The tree's shape breaks the MST's rules.
    #[error("malformed MST: {0}")]
    Structure(&'static str),
    /// A key is empty, too long, or otherwise unusable.
    #[error("invalid MST key")]
    InvalidKey,
}

/// Where nodes are read from.
pub trait BlockSource {
    /// The bytes of the block with this CID, if present.
    fn block(&self, cid: &Cid) -> Option<&[u8]>;
}

impl BlockSource for BlockMap {
    fn block(&self, cid: &Cid) -> Option<&[u8]> {
        self.get(cid).map(Vec::as_slice)
    }
}

impl BlockSource for HashMap<Cid, &[u8]> {
    fn block(&self, cid: &Cid) -> Option<&[u8]> {
        self.get(cid).copied()
    }
}

/// A source with no blocks, for trees built entirely in memory.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoBlocks;

impl BlockSource for NoBlocks {
    fn block(&self, _: &Cid) -> Option<&[u8]> {
        None
    }
}

/// The layer of a key: leading zero bits of its SHA-256, counted in pairs (fanout 4).
pub fn key_height(key: &[u8]) -> u32 {
    let digest = Sha256::digest(key);
    let mut zeros = 0;
    for byte in digest {
        if byte == 0 {
            zeros += 8;
            continue;
        }
        zeros += byte.leading_zeros();
        break;
    }
    zeros / 2
}

/// Length of the common prefix of two keys, in bytes.
pub fn common_prefix_len(a: &[u8], b: &[u8]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// One entry of a node as encoded: prefix length, key suffix, value, right subtree.
#[derive(Debug, Deserialize)]
struct EntryData {
    k: serde_bytes::ByteBuf,
    p: u64,
    t: Option<Cid>,
    v: Cid,
}

/// A node as encoded: left subtree and entries.
#[derive(Debug, Deserialize)]
struct NodeData {
    e: Vec<EntryData>,
    l: Option<Cid>,
}

#[derive(Debug, Clone)]
enum Link {
    Stub(Cid),
    Loaded(Box<Node>),
}

#[derive(Debug, Clone)]
struct Entry {
    key: Key,
    value: Cid,
    right: Option<Link>,
}

#[derive(Debug, Clone, Default)]
struct Node {
    left: Option<Link>,
    entries: Vec<Entry>,
    /// The node's CID, once known; cleared by every change.
    cid: Option<Cid>,
    /// The encoding computed here and not yet handed out by [`Mst::new_blocks`]. Nodes read
    /// from a store never have one, so only changed nodes are written back.
    fresh: Option<Vec<u8>>,
}

impl Node {
    fn changed(&mut self) {
        self.cid = None;
        self.fresh = None;
    }

    fn is_empty(&self) -> bool {
        self.entries.is_empty() && self.left.is_none()
    }

    /// The pointer slot just left of position `pos`, for an edit: the node's left link for
    /// 0, else the right link of the entry before. The node counts as changed.
    fn slot(&mut self, pos: usize) -> &mut Option<Link> {
        self.changed();
        self.child_slot(pos)
    }

    /// The same slot for reading: loading a stub in place does not change the node.
    fn child_slot(&mut self, pos: usize) -> &mut Option<Link> {
        if pos == 0 {
            &mut self.left
        } else {
            &mut self.entries[pos - 1].right
        }
    }

    /// The child between entries `pos - 1` and `pos`, read from `src` if needed.
    fn child(
        &mut self,
        pos: usize,
        layer: u32,
        src: &dyn BlockSource,
    ) -> Result<Option<&mut Node>, MstError> {
        open_in_place(self.child_slot(pos), layer, src)
    }

    fn decode(cid: Cid, bytes: &[u8], layer: Option<u32>) -> Result<Node, MstError> {
        match canonical_node(bytes) {
            Ok((left, raw)) => Node::build(cid, left, raw.into_iter(), layer),
            Err(NotCanonical) => {
                // Any other encoding the generic decoder takes is judged by it.
                let data: NodeData = from_cbor(bytes).map_err(|_| MstError::Malformed {
                    cid,
                    reason: "does not decode",
                })?;
                let raw = data.e.iter().map(|e| (e.p, e.k.as_slice(), e.t, e.v));
                Node::build(cid, data.l, raw, layer)
            }
        }
    }

    /// A node from its decoded parts (prefix length, key suffix, right subtree, value per
    /// entry), checking keys, order and layer.
    fn build<'a>(
        cid: Cid,
        left: Option<Cid>,
        raw: impl ExactSizeIterator<Item = (u64, &'a [u8], Option<Cid>, Cid)>,
        layer: Option<u32>,
    ) -> Result<Node, MstError> {
        let bad = |reason| MstError::Malformed { cid, reason };
        let mut entries: Vec<Entry> = Vec::with_capacity(raw.len());
        let mut expected_layer = layer;
        for (p, k, t, v) in raw {
            let prev = entries.last().map(|x| x.key.as_slice()).unwrap_or_default();
            let p = usize::try_from(p).map_err(|_| bad("prefix too long"))?;
            if p > prev.len() {
                return Err(bad("prefix longer than the previous key"));
            }
            let mut key = Key::with_capacity(p + k.len());
            key.extend_from_slice(&prev[..p]);
            key.extend_from_slice(k);
            if key.is_empty() || key.len() > MAX_KEY_LEN {
                return Err(bad("key empty or too long"));
            }
            if !entries.is_empty() && key.as_slice() <= prev {
                return Err(bad("keys out of order"));
            }
            let h = key_height(&key);
            match expected_layer {
                Some(l) if l != h => return Err(bad("key height does not match its layer")),
                _ => expected_layer = Some(h),
            }
            entries.push(Entry {
                key,
                value: v,
                right: t.map(Link::Stub),
            });
        }
        Ok(Node {
            left: left.map(Link::Stub),
            entries,
            cid: Some(cid),
            fresh: None,
        })
    }

    /// Computes (and caches) this node's CID, and those of every loaded node below it.
    fn cid(&mut self) -> Result<Cid, MstError> {
        if let Some(cid) = self.cid {
            return Ok(cid);
        }
        let left = link_cid(&mut self.left)?;
        let mut rights = Vec::with_capacity(self.entries.len());
        for entry in &mut self.entries {
            rights.push(link_cid(&mut entry.right)?);
        }
        let bytes = encode_node(left, &self.entries, &rights);
        let cid = cid_for_cbor(&bytes);
        self.cid = Some(cid);
        self.fresh = Some(bytes);
        Ok(cid)
    }
}

/// An entry as encoded: prefix length, key suffix, right subtree, value.
type RawEntry<'a> = (u64, &'a [u8], Option<Cid>, Cid);

/// A node's parts straight from its canonical encoding (`{"e": [{"k","p","t","v"}…], "l"}`,
/// the order [`encode_node`] writes), borrowing the key suffixes.
fn canonical_node(bytes: &[u8]) -> Result<(Option<Cid>, Vec<RawEntry<'_>>), NotCanonical> {
    let mut r = Reader::new(bytes);
    if r.map()? != 2 {
        return Err(NotCanonical);
    }
    r.key("e")?;
    let n = r.array()?;
    // Each entry takes well over 4 bytes: a count the input cannot hold is refused before
    // anything is allocated for it.
    if n > bytes.len() / 4 {
        return Err(NotCanonical);
    }
    let mut raw = Vec::with_capacity(n);
    for _ in 0..n {
        if r.map()? != 4 {
            return Err(NotCanonical);
        }
        r.key("k")?;
        let k = r.bytes()?;
        r.key("p")?;
        let p = r.uint()?;
        r.key("t")?;
        let t = r.cid_or_null()?;
        r.key("v")?;
        let v = r.cid()?;
        raw.push((p, k, t, v));
    }
    r.key("l")?;
    let left = r.cid_or_null()?;
    if !r.is_done() {
        return Err(NotCanonical);
    }
    Ok((left, raw))
}

/// Writes a node's canonical DAG-CBOR directly: `{"e": [{"k", "p", "t", "v"}…], "l"}` with
/// keys in length-then-byte order. The generic serializer buffers and sorts every map
/// entry; this is the inner loop of every root-CID computation, so it is done by hand.
fn encode_node(left: Option<Cid>, entries: &[Entry], rights: &[Option<Cid>]) -> Vec<u8> {
    fn head(out: &mut Vec<u8>, major: u8, n: u64) {
        let m = major << 5;
        match n {
            0..=23 => out.push(m | n as u8),
            24..=0xff => out.extend_from_slice(&[m | 24, n as u8]),
            0x100..=0xffff => {
                out.push(m | 25);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            0x1_0000..=0xffff_ffff => {
                out.push(m | 26);
                out.extend_from_slice(&(n as u32).to_be_bytes());
            }
            _ => {
                out.push(m | 27);
                out.extend_from_slice(&n.to_be_bytes());
            }
        }
    }
    fn link(out: &mut Vec<u8>, cid: Option<Cid>) {
        match cid {
            None => out.push(0xf6),
            Some(cid) => {
                out.extend_from_slice(&[0xd8, 42]);
                head(out, 2, cid.encoded_len() as u64 + 1);
                out.push(0);
                cid.write_bytes(&mut *out)
                    .expect("writing to a Vec cannot fail");
            }
        }
    }
    let mut out = Vec::with_capacity(16 + entries.len() * 80);
    head(&mut out, 5, 2);
    out.extend_from_slice(&[0x61, b'e']);
    head(&mut out, 4, entries.len() as u64);
    let mut prev: &[u8] = &[];
    for (entry, right) in entries.iter().zip(rights) {
        let p = common_prefix_len(prev, &entry.key);
        head(&mut out, 5, 4);
        out.extend_from_slice(&[0x61, b'k']);
        head(&mut out, 2, (entry.key.len() - p) as u64);
        out.extend_from_slice(&entry.key[p..]);
        out.extend_from_slice(&[0x61, b'p']);
        head(&mut out, 0, p as u64);
        out.extend_from_slice(&[0x61, b't']);
        link(&mut out, *right);
        out.extend_from_slice(&[0x61, b'v']);
        link(&mut out, Some(entry.value));
        prev = &entry.key;
    }
    out.extend_from_slice(&[0x61, b'l']);
    link(&mut out, left);
    out
}

fn link_cid(link: &mut Option<Link>) -> Result<Option<Cid>, MstError> {
    match link {
        None => Ok(None),
        Some(Link::Stub(cid)) => Ok(Some(*cid)),
        Some(Link::Loaded(node)) => node.cid().map(Some),
    }
}

/// Resolves a link to a loaded node, reading its block if it is a stub.
fn open(
    link: Option<Link>,
    layer: u32,
    src: &dyn BlockSource,
) -> Result<Option<Box<Node>>, MstError> {
    match link {
        None => Ok(None),
        Some(Link::Loaded(node)) => Ok(Some(node)),
        Some(Link::Stub(cid)) => {
            let bytes = src.block(&cid).ok_or(MstError::MissingBlock(cid))?;
            Ok(Some(Box::new(Node::decode(cid, bytes, Some(layer))?)))
        }
    }
}

/// Opens the link in place, leaving it loaded, and returns the node.
fn open_in_place<'a>(
    link: &'a mut Option<Link>,
    layer: u32,
    src: &dyn BlockSource,
) -> Result<Option<&'a mut Node>, MstError> {
    if let Some(Link::Stub(_)) = link {
        let node = open(link.take(), layer, src)?;
        *link = node.map(Link::Loaded);
    }
    match link {
        Some(Link::Loaded(node)) => Ok(Some(node)),
        _ => Ok(None),
    }
}

fn into_link(node: Box<Node>) -> Option<Link> {
    (!node.is_empty()).then_some(Link::Loaded(node))
}

fn check_key(key: &[u8]) -> Result<(), MstError> {
    if key.is_empty() || key.len() > MAX_KEY_LEN {
        return Err(MstError::InvalidKey);
    }
    Ok(())
}

/// A Merkle Search Tree over a block source. Changes are made in memory; the root CID and
/// the blocks of changed nodes are computed on demand.
#[derive(Debug, Clone, Default)]
pub struct Mst {
    /// `None` for the empty tree.
    root: Option<Box<Node>>,
    /// The root node's layer (meaningless while the tree is empty).
    layer: u32,
}

impl Mst {
    /// The empty tree.
    pub fn new() -> Self {
        Mst::default()
    }

    /// Opens the tree with this root. Only the root block is read now.
    pub fn load(root: Cid, src: &dyn BlockSource) -> Result<Self, MstError> {
        let bytes = src.block(&root).ok_or(MstError::MissingBlock(root))?;
        let node = Node::decode(root, bytes, None)?;
        if node.is_empty() {
            return Ok(Mst::new());
        }
        let mut tree = Mst {
            root: Some(Box::new(node)),
            layer: 0,
        };
        tree.layer = tree.find_root_layer(src)?;
        Ok(tree)
    }

    /// A root with entries names its layer; one with only a left link (not canonical, but
    /// decodable) is one above its child's.
    fn find_root_layer(&mut self, src: &dyn BlockSource) -> Result<u32, MstError> {
        let mut depth = 0;
        let mut node: &mut Node = self.root.as_mut().expect("non-empty tree");
        loop {
            if let Some(first) = node.entries.first() {
                return Ok(key_height(&first.key) + depth);
            }
            depth += 1;
            if depth > MAX_LAYER {
                return Err(MstError::Malformed {
                    cid: node.cid()?,
                    reason: "too deep",
                });
            }
            // The child's layer is unknown until it is read, so decode without the check.
            if let Some(Link::Stub(cid)) = node.left {
                let bytes = src.block(&cid).ok_or(MstError::MissingBlock(cid))?;
                node.left = Some(Link::Loaded(Box::new(Node::decode(cid, bytes, None)?)));
            }
            node = match &mut node.left {
                Some(Link::Loaded(child)) => child,
                _ => return Ok(0),
            };
        }
    }

    /// The root CID (the empty tree has one too: the node with no entries).
    pub fn root_cid(&mut self) -> Result<Cid, MstError> {
        match &mut self.root {
            Some(node) => node.cid(),
            None => Ok(cid_for_cbor(&encode_node(None, &[], &[]))),
        }
    }

    /// The value stored under `key`.
    pub fn get(&mut self, key: &[u8], src: &dyn BlockSource) -> Result<Option<Cid>, MstError> {
        let Some(mut node) = self.root.as_deref_mut() else {
            return Ok(None);
        };
        let mut layer = self.layer;
        loop {
            let pos = node.entries.partition_point(|e| e.key.as_slice() < key);
            if node
                .entries
                .get(pos)
                .is_some_and(|e| e.key.as_slice() == key)
            {
                return Ok(Some(node.entries[pos].value));
            }
            if layer == 0 {
                return Ok(None);
            }
            layer -= 1;
            match node.child(pos, layer, src)? {
                Some(child) => node = child,
                None => return Ok(None),
            }
        }
    }

    /// Sets `key` to `value`, adding it if absent. Returns the value it replaced.
    pub fn insert(
        &mut self,
        key: &[u8],
        value: Cid,
        src: &dyn BlockSource,
    ) -> Result<Option<Cid>, MstError> {
        check_key(key)?;
        let h = key_height(key);
        if self.root.is_none() {
            self.layer = h;
        }
        while self.layer < h {
            // Grow: the old root becomes the left subtree of an empty node one layer up.
            let old = self.root.take();
            self.root = Some(Box::new(Node {
                left: old.and_then(into_link),
                ..Node::default()
            }));
            self.layer += 1;
        }
        let (node, previous) = insert_at(self.root.take(), self.layer, key, value, h, src)?;
        self.root = Some(node);
        self.trim(src)?;
        Ok(previous)
    }

    /// Removes `key`. Returns the value it held, or `None` if it was absent.
    pub fn remove(&mut self, key: &[u8], src: &dyn BlockSource) -> Result<Option<Cid>, MstError> {
        check_key(key)?;
        let Some(root) = self.root.take() else {
            return Ok(None);
        };
        let (node, removed) = remove_at(root, self.layer, key, key_height(key), src)?;
        self.root = node;
        self.trim(src)?;
        Ok(removed)
    }

    /// Drops empty nodes from the top: a root with no entries is replaced by its child.
    fn trim(&mut self, src: &dyn BlockSource) -> Result<(), MstError> {
        while let Some(root) = &mut self.root {
            if !root.entries.is_empty() {
                break;
            }
            if root.left.is_none() || self.layer == 0 {
                self.root = None;
                break;
            }
            self.layer -= 1;
            self.root = open(root.left.take(), self.layer, src)?;
        }
        Ok(())
    }

    /// Every (key, value) pair in key order, reading nodes as needed.
    pub fn entries(&mut self, src: &dyn BlockSource) -> Result<Vec<(Vec<u8>, Cid)>, MstError> {
        fn walk(
            node: &mut Node,
            layer: u32,
            src: &dyn BlockSource,
            out: &mut Vec<(Vec<u8>, Cid)>,
        ) -> Result<(), MstError> {
            for pos in 0..=node.entries.len() {
                if layer > 0 {
                    if let Some(child) = node.child(pos, layer - 1, src)? {
                        walk(child, layer - 1, src, out)?;
                    }
                }
                if let Some(e) = node.entries.get(pos) {
                    out.push((e.key.to_vec(), e.value));
                }
            }
            Ok(())
        }
        let mut out = Vec::new();
        if let Some(root) = &mut self.root {
            walk(root, self.layer, src, &mut out)?;
        }
        Ok(out)
    }

    /// The root CID and the blocks of the nodes encoded since the last call: every node of
    /// a tree built in memory the first time, then only what changed. Nodes read from a
    /// store are never returned (the store has them).
    pub fn new_blocks(&mut self) -> Result<(Cid, BlockMap), MstError> {
        fn walk(node: &mut Node, out: &mut BlockMap) {
            let Some(bytes) = node.fresh.take() else {
                return;
            };
            if let Some(cid) = node.cid {
                out.insert(cid, bytes);
            }
            let links = std::iter::once(&mut node.left)
                .chain(node.entries.iter_mut().map(|e| &mut e.right));
            for link in links {
                if let Some(Link::Loaded(child)) = link {
                    walk(child, out);
                }
            }
        }
        let root = self.root_cid()?;
        let mut out = BlockMap::new();
        match &mut self.root {
            Some(node) => walk(node, &mut out),
            None => {
                out.insert(root, encode_node(None, &[], &[]));
            }
        }
        Ok((root, out))
    }

    /// The CIDs of the nodes that prove `key`'s presence or absence and those of its two
    /// neighbours: enough for a reader holding only these blocks to undo a write to `key`.
    /// This is what a commit carries for each op under sync 1.1.
    pub fn covering_proof(
        &mut self,
        key: &[u8],
        src: &dyn BlockSource,
    ) -> Result<Vec<Cid>, MstError> {
        let mut out = Vec::new();
        let Some(mut node) = self.root.as_deref_mut() else {
            out.push(self.root_cid()?);
            return Ok(out);
        };
        let mut layer = self.layer;
        loop {
            out.push(node.cid()?);
            let pos = node.entries.partition_point(|e| e.key.as_slice() < key);
            if node
                .entries
                .get(pos)
                .is_some_and(|e| e.key.as_slice() == key)
            {
                if layer > 0 {
                    // Down the right spine of the subtree on the key's left (its
                    // predecessor) and the left spine of the one on its right (successor).
                    let mut left = node.child(pos, layer - 1, src)?;
                    spine(&mut left, layer - 1, src, &mut out, true)?;
                    let mut right = open_in_place(&mut node.entries[pos].right, layer - 1, src)?;
                    spine(&mut right, layer - 1, src, &mut out, false)?;
                }
                return Ok(out);
            }
            if layer == 0 {
                return Ok(out);
            }
            layer -= 1;
            match node.child(pos, layer, src)? {
                Some(child) => node = child,
                None => return Ok(out),
            }
        }
    }
}

/// Walks the right (`rightmost`) or left spine of a subtree, recording node CIDs.
fn spine(
    start: &mut Option<&mut Node>,
    mut layer: u32,
    src: &dyn BlockSource,
    out: &mut Vec<Cid>,
    rightmost: bool,
) -> Result<(), MstError> {
    let Some(mut node) = start.take() else {
        return Ok(());
    };
    loop {
        out.push(node.cid()?);
        if layer == 0 {
            return Ok(());
        }
        layer -= 1;
        let slot = if rightmost {
            match node.entries.last_mut() {
                Some(e) => &mut e.right,
                None => &mut node.left,
            }
        } else {
            &mut node.left
        };
        match open_in_place(slot, layer, src)? {
            Some(child) => node = child,
            None => return Ok(()),
        }
    }
}

fn insert_at(
    node: Option<Box<Node>>,
    layer: u32,
    key: &[u8],
    value: Cid,
    h: u32,
    src: &dyn BlockSource,
) -> Result<(Box<Node>, Option<Cid>), MstError> {
    let mut node = node.unwrap_or_default();
    node.changed();
    let pos = node.entries.partition_point(|e| e.key.as_slice() < key);
    if h == layer {
        if node
            .entries
            .get(pos)
            .is_some_and(|e| e.key.as_slice() == key)
        {
            let previous = std::mem::replace(&mut node.entries[pos].value, value);
            return Ok((node, Some(previous)));
        }
        let between = node.slot(pos).take();
        let (left, right) = match layer {
            0 if between.is_some() => {
                return Err(MstError::Structure("layer 0 node has a subtree"))
            }
            0 => (None, None),
            _ => split(between, layer - 1, key, src)?,
        };
        *node.slot(pos) = left;
        node.entries.insert(
            pos,
            Entry {
                key: Key::from_slice(key),
                value,
                right,
            },
        );
        return Ok((node, None));
    }
    // The key belongs further down, in the subtree between its neighbours here.
    let child = open(node.slot(pos).take(), layer - 1, src)?;
    let (child, previous) = insert_at(child, layer - 1, key, value, h, src)?;
    *node.slot(pos) = into_link(child);
    Ok((node, previous))
}

/// Splits a subtree around `key` (absent from it) into the parts below and above it.
fn split(
    link: Option<Link>,
    layer: u32,
    key: &[u8],
    src: &dyn BlockSource,
) -> Result<(Option<Link>, Option<Link>), MstError> {
    let Some(mut node) = open(link, layer, src)? else {
        return Ok((None, None));
    };
    let pos = node.entries.partition_point(|e| e.key.as_slice() < key);
    let child = node.slot(pos).take();
    let (below, above) = match layer {
        0 if child.is_some() => return Err(MstError::Structure("layer 0 node has a subtree")),
        0 => (None, None),
        _ => split(child, layer - 1, key, src)?,
    };
    let right_entries = node.entries.split_off(pos);
    *node.slot(pos) = below;
    let right = Box::new(Node {
        left: above,
        entries: right_entries,
        ..Node::default()
    });
    Ok((into_link(node), into_link(right)))
}

fn remove_at(
    mut node: Box<Node>,
    layer: u32,
    key: &[u8],
    h: u32,
    src: &dyn BlockSource,
) -> Result<(Option<Box<Node>>, Option<Cid>), MstError> {
    let pos = node.entries.partition_point(|e| e.key.as_slice() < key);
    let removed;
    if h == layer {
        if node
            .entries
            .get(pos)
            .is_none_or(|e| e.key.as_slice() != key)
        {
            return Ok((Some(node), None));
        }
        let entry = node.entries.remove(pos);
        removed = Some(entry.value);
        let left = node.slot(pos).take();
        *node.slot(pos) = match layer {
            0 => None,
            _ => merge(left, entry.right, layer - 1, src)?,
        };
    } else {
        let Some(child) = open(node.slot(pos).take(), layer - 1, src)? else {
            return Ok((Some(node), None));
        };
        let (child, r) = remove_at(child, layer - 1, key, h, src)?;
        removed = r;
        *node.slot(pos) = child.and_then(into_link);
    }
    Ok(((!node.is_empty()).then_some(node), removed))
}

/// Joins two adjacent subtrees of the same layer (every key of `a` below every key of `b`).
fn merge(
    a: Option<Link>,
    b: Option<Link>,
    layer: u32,
    src: &dyn BlockSource,
) -> Result<Option<Link>, MstError> {
    let (a, b) = match (a, b) {
        (None, x) | (x, None) => return Ok(x),
        (Some(a), Some(b)) => (a, b),
    };
    let mut a = open(Some(a), layer, src)?.expect("present");
    let mut b = open(Some(b), layer, src)?.expect("present");
    let last = a.entries.len();
    let a_edge = a.slot(last).take();
    let b_edge = b.left.take();
    let joined = if layer == 0 {
        None
    } else {
        merge(a_edge, b_edge, layer - 1, src)?
    };
    *a.slot(last) = joined;
    a.entries.append(&mut b.entries);
    Ok(into_link(a))
}

/// One difference between two trees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiffOp {
    /// Present in the new tree only.
    Create {
        /// The key.
        key: Vec<u8>,
        /// Its value.
        cid: Cid,
    },
    /// Present in both with different values.
    Update {
        /// The key.
        key: Vec<u8>,
        /// The old value.
        prev: Cid,
        /// The new value.
        cid: Cid,
    },
    /// Present in the old tree only.
    Delete {
        /// The key.
        key: Vec<u8>,
        /// The old value.
        prev: Cid,
    },
}

/// The changes that turn `old` into `new`, in key order. Equal subtrees (same CID) that
/// line up are skipped without being read.
pub fn diff(
    old: &mut Mst,
    old_src: &dyn BlockSource,
    new: &mut Mst,
    new_src: &dyn BlockSource,
) -> Result<Vec<DiffOp>, MstError> {
    if old.root_cid()? == new.root_cid()? {
        return Ok(Vec::new());
    }
    let mut a = Walker::new(old);
    let mut b = Walker::new(new);
    let mut out = Vec::new();
    loop {
        match (a.peek(), b.peek()) {
            (None, None) => return Ok(out),
            (Some(Item::Tree { cid: x, layer: lx }), Some(Item::Tree { cid: y, layer: ly })) => {
                if x == y && lx == ly {
                    a.pop();
                    b.pop();
                } else if lx >= ly {
                    a.expand(old_src)?;
                    if lx == ly {
                        b.expand(new_src)?;
                    }
                } else {
                    b.expand(new_src)?;
                }
            }
            (Some(Item::Tree { .. }), _) => a.expand(old_src)?,
            (_, Some(Item::Tree { .. })) => b.expand(new_src)?,
            (Some(Item::Leaf(ka, va)), Some(Item::Leaf(kb, vb))) => match ka.cmp(&kb) {
                Ordering::Less => {
                    out.push(DiffOp::Delete { key: ka, prev: va });
                    a.pop();
                }
                Ordering::Greater => {
                    out.push(DiffOp::Create { key: kb, cid: vb });
                    b.pop();
                }
                Ordering::Equal => {
                    if va != vb {
                        out.push(DiffOp::Update {
                            key: ka,
                            prev: va,
                            cid: vb,
                        });
                    }
                    a.pop();
                    b.pop();
                }
            },
            (Some(Item::Leaf(k, v)), None) => {
                out.push(DiffOp::Delete { key: k, prev: v });
                a.pop();
            }
            (None, Some(Item::Leaf(k, v))) => {
                out.push(DiffOp::Create { key: k, cid: v });
                b.pop();
            }
        }
    }
}

#[derive(Debug, Clone)]
enum Item {
    Leaf(Vec<u8>, Cid),
    Tree { cid: Cid, layer: u32 },
}

/// A stack of items in reverse key order; subtrees are expanded into their items on demand.
struct Walker {
    stack: Vec<(Item, Option<Box<Node>>)>,
}

impl Walker {
    fn new(tree: &mut Mst) -> Self {
        let mut stack = Vec::new();
        if let Some(root) = &mut tree.root {
            if let Ok(cid) = root.cid() {
                stack.push((
                    Item::Tree {
                        cid,
                        layer: tree.layer,
                    },
                    Some(root.clone()),
                ));
            }
        }
        Walker { stack }
    }

    fn peek(&self) -> Option<Item> {
        self.stack.last().map(|(i, _)| i.clone())
    }

    fn pop(&mut self) {
        self.stack.pop();
    }

    fn expand(&mut self, src: &dyn BlockSource) -> Result<(), MstError> {
        let Some((Item::Tree { cid, layer }, loaded)) = self.stack.pop() else {
            return Ok(());
        };
        let mut node = match loaded {
            Some(n) => n,
            None => open(Some(Link::Stub(cid)), layer, src)?.expect("present"),
        };
        let mut items = Vec::new();
        let push_link = |link: Option<Link>, items: &mut Vec<(Item, Option<Box<Node>>)>| match link
        {
            None => Ok::<(), MstError>(()),
            Some(Link::Stub(c)) => {
                items.push((
                    Item::Tree {
                        cid: c,
                        layer: layer.saturating_sub(1),
                    },
                    None,
                ));
                Ok(())
            }
            Some(Link::Loaded(mut n)) => {
                let c = n.cid()?;
                items.push((
                    Item::Tree {
                        cid: c,
                        layer: layer.saturating_sub(1),
                    },
                    Some(n),
                ));
                Ok(())
            }
        };
        push_link(node.left.take(), &mut items)?;
        for e in std::mem::take(&mut node.entries) {
            items.push((Item::Leaf(e.key.into_vec(), e.value), None));
            push_link(e.right, &mut items)?;
        }
        self.stack.extend(items.into_iter().rev());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::cid_for_cbor;

    /// The canonical reader and the generic decoder agree on every node a real tree
    /// writes, and on every mutation of one that the canonical reader takes.
    #[test]
    fn canonical_node_reading_matches_the_generic_decoder() {
        use proptest::prelude::*;
        type Parts = (Option<Cid>, Vec<(u64, Vec<u8>, Option<Cid>, Cid)>);
        fn generic(bytes: &[u8]) -> Option<Parts> {
            let d: NodeData = from_cbor(bytes).ok()?;
            Some((
                d.l,
                d.e.into_iter()
                    .map(|e| (e.p, e.k.into_vec(), e.t, e.v))
                    .collect(),
            ))
        }
        fn fast(bytes: &[u8]) -> Option<Parts> {
            let (l, raw) = canonical_node(bytes).ok()?;
            Some((
                l,
                raw.into_iter()
                    .map(|(p, k, t, v)| (p, k.to_vec(), t, v))
                    .collect(),
            ))
        }
        let mut tree = Mst::new();
        for i in 0..600u32 {
            let key = format!("agent.comms.message/3l{i:011}");
            tree.insert(key.as_bytes(), val(i), &NoBlocks)
                .expect("insert");
        }
        let (_, blocks) = tree.new_blocks().expect("blocks");
        assert!(blocks.len() > 10);
        for bytes in blocks.values() {
            assert_eq!(fast(bytes), generic(bytes));
            assert!(fast(bytes).is_some(), "every node written is canonical");
        }
        let nodes: Vec<Vec<u8>> = blocks.into_values().collect();
        proptest!(ProptestConfig { cases: 2000, ..ProptestConfig::default() },
            |(which in 0..nodes.len(), at in any::<prop::sample::Index>(), byte in any::<u8>(), cut in any::<bool>())| {
            let mut bytes = nodes[which].clone();
            let at = at.index(bytes.len());
            if cut { bytes.truncate(at) } else { bytes[at] = byte }
            if let Some(parts) = fast(&bytes) {
                prop_assert_eq!(Some(parts), generic(&bytes));
            }
        });
    }

    fn val(n: u32) -> Cid {
        cid_for_cbor(&n.to_be_bytes())
    }

    #[test]
    fn insert_remove_is_order_independent() {
        let keys: Vec<String> = (0..300)
            .map(|i| format!("agent.comms.message/k{i:05}"))
            .collect();
        let mut fwd = Mst::new();
        for (i, k) in keys.iter().enumerate() {
            fwd.insert(k.as_bytes(), val(i as u32), &NoBlocks)
                .expect("insert");
        }
        let mut rev = Mst::new();
        for (i, k) in keys.iter().enumerate().rev() {
            rev.insert(k.as_bytes(), val(i as u32), &NoBlocks)
                .expect("insert");
        }
        assert_eq!(fwd.root_cid().expect("cid"), rev.root_cid().expect("cid"));

        let empty = Mst::new().root_cid().expect("cid");
        for k in &keys {
            assert!(fwd
                .remove(k.as_bytes(), &NoBlocks)
                .expect("remove")
                .is_some());
        }
        assert_eq!(fwd.root_cid().expect("cid"), empty);
    }

    #[test]
    fn reload_from_blocks_and_diff() {
        let mut t = Mst::new();
        for i in 0..100u32 {
            t.insert(format!("c/{i:04}").as_bytes(), val(i), &NoBlocks)
                .expect("insert");
        }
        let (root, blocks) = t.new_blocks().expect("blocks");
        let mut loaded = Mst::load(root, &blocks).expect("load");
        assert_eq!(loaded.get(b"c/0042", &blocks).expect("get"), Some(val(42)));
        assert_eq!(loaded.entries(&blocks).expect("entries").len(), 100);

        let mut changed = Mst::load(root, &blocks).expect("load");
        changed
            .insert(b"c/0042", val(1000), &blocks)
            .expect("update");
        changed.remove(b"c/0007", &blocks).expect("delete");
        changed.insert(b"c/9999", val(9), &blocks).expect("create");
        let mut old = Mst::load(root, &blocks).expect("load");
        let ops = diff(&mut old, &blocks, &mut changed, &blocks).expect("diff");
        assert_eq!(
            ops,
            vec![
                DiffOp::Delete {
                    key: b"c/0007".to_vec(),
                    prev: val(7)
                },
                DiffOp::Update {
                    key: b"c/0042".to_vec(),
                    prev: val(42),
                    cid: val(1000)
                },
                DiffOp::Create {
                    key: b"c/9999".to_vec(),
                    cid: val(9)
                },
            ]
        );
    }

    #[test]
    fn reading_does_not_mark_nodes_changed() {
        let mut t = Mst::new();
        for i in 0..200u32 {
            t.insert(format!("c/{i:04}").as_bytes(), val(i), &NoBlocks)
                .expect("insert");
        }
        let (root, blocks) = t.new_blocks().expect("blocks");
        assert!(blocks.len() > 10);
        for i in (0..200u32).step_by(7) {
            let key = format!("c/{i:04}");
            t.covering_proof(key.as_bytes(), &NoBlocks).expect("proof");
            assert_eq!(t.get(key.as_bytes(), &NoBlocks).expect("get"), Some(val(i)));
        }
        t.entries(&NoBlocks).expect("entries");
        let (again, fresh) = t.new_blocks().expect("blocks");
        assert_eq!(again, root);
        assert!(fresh.is_empty(), "reads re-encoded {} nodes", fresh.len());
    }

    #[test]
    fn missing_blocks_are_reported() {
        let mut t = Mst::new();
        for i in 0..200u32 {
            t.insert(format!("c/{i:04}").as_bytes(), val(i), &NoBlocks)
                .expect("insert");
        }
        let (root, mut blocks) = t.new_blocks().expect("blocks");
        blocks.retain(|cid, _| *cid == root);
        let mut partial = Mst::load(root, &blocks).expect("root is present");
        assert!(matches!(
            partial.entries(&blocks),
            Err(MstError::MissingBlock(_))
        ));
    }
}
