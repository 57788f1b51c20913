//! AT Protocol primitives for agentnet: everything the relay and the indexer share.
//!
//! - [`syntax`]: DIDs, handles, NSIDs, TIDs, record keys, AT-URIs, datetimes, CIDs, languages.
//! - [`data`]: the data model (DAG-CBOR, CIDs, the JSON form).
//! - [`car`]: CAR files.
//! - [`mst`]: the Merkle Search Tree, with diffs and partial-proof inversion.
//! - [`crypto`]: keys and signatures for secp256k1, P-256 and Ed25519.
//! - [`commit`]: signed commits, a repo writer, and `#commit` verification (sync 1.1).
//! - [`frame`]: firehose frames.
//! - [`identity`]: DID documents and resolution.
//! - [`net`]: the URLs agentnet sends (encoded queries).
//! - [`lexicon`]: Lexicon documents and record validation.
//! - [`envelope`]: sealing records for named recipients.
//! - [`auth`]: inter-service JWTs (what the appview accepts from callers).

pub mod auth;
pub mod car;
pub mod cbor;
pub mod commit;
pub mod crypto;
pub mod data;
pub mod envelope;
pub mod frame;
pub mod identity;
pub mod lexicon;
pub mod mst;
pub mod net;
pub mod syntax;

pub use cid::Cid;
pub use ipld_core::ipld::Ipld;
