//! agentnet's stores, shared by the indexer (which writes them) and the appview (which
//! answers queries from them):
//!
//! - [`records`]: the record index in ClickHouse, its versioned schema (`store/sql/`) and
//!   the coordination queries, with the caller's access rule inside the SQL; the same SQL
//!   over embedded chDB ([`chdb`]) or a ClickHouse server ([`server`]);
//! - [`vectors`]: the vector store behind recall (qdrant-edge embedded, exact in memory,
//!   Qdrant server in [`qdrant`]);
//! - [`embed`]: the sentence-embedding model and its batcher.

pub mod bridge;
pub mod chdb;
mod config;
pub mod embed;
pub mod qdrant;
pub mod records;
pub mod server;
pub mod vectors;

pub use config::{Backends, Model};

use std::path::Path;
use std::sync::Arc;

/// A shared SQL transport (embedded or server), as the services hold it.
pub type Sql = Arc<dyn records::SqlTransport>;
/// The record index over a shared transport.
pub type Records = records::RecordStore<Sql>;
/// A shared vector store.
pub type Vectors = Arc<dyn vectors::VectorStore>;

/// Why a store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The embedded engine failed to load or start.
    #[error(transparent)]
    Chdb(#[from] chdb::ChdbError),
    /// The schema could not be applied.
    #[error("record index schema: {0}")]
    Records(#[from] records::RecordError),
    /// The vector store failed to open.
    #[error(transparent)]
    Vectors(#[from] vectors::VectorError),
}

/// Opens the embedded record index (chDB, loaded from `chdb_lib`) in `dir`, schema applied.
/// chDB allows one engine per process: open it once and share the result.
pub fn open_embedded_records(chdb_lib: &Path, dir: &Path) -> Result<Records, OpenError> {
    let db: Sql = Arc::new(chdb::Chdb::open(chdb_lib, dir)?);
    Ok(records::RecordStore::open(db)?)
}

/// Opens the record index on a ClickHouse server, schema applied.
pub fn open_server_records(config: &server::ServerConfig) -> Result<Records, OpenError> {
    let db: Sql = Arc::new(server::ClickhouseServer::connect(config)?);
    Ok(records::RecordStore::open(db)?)
}

/// Opens the embedded vector store (qdrant-edge) in `dir` for `dimensions`-long vectors.
pub fn open_embedded_vectors(dir: &Path, dimensions: usize) -> Result<Vectors, OpenError> {
    Ok(Arc::new(vectors::EdgeStore::open(dir, dimensions)?))
}
