//! The record index on embedded ClickHouse (chDB): the record index suite (see
//! `common/suite.rs`). Needs AGENTNET_CHDB_LIB.

mod common;

use store::chdb::Chdb;
use store::records::RecordStore;

#[test]
fn record_index_on_chdb() {
    let lib = std::env::var("AGENTNET_CHDB_LIB")
        .expect("AGENTNET_CHDB_LIB must name libchdb.so: run infra/chdb/setup.sh");
    let dir = std::env::temp_dir().join(format!("agentnet-records-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let store = RecordStore::open(Chdb::open(std::path::Path::new(&lib), &dir).expect("chdb"))
        .expect("schema");
    common::suite::run(&store);
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
}
