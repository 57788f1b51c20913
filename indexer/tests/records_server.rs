//! The record index on a ClickHouse server (Debian's clickhouse-server 18.16, started here on
//! loopback): the same suite as on chDB (see `common/suite.rs`), through the `clickhouse`
//! crate.

mod common;

#[path = "../../tests/support/clickhouse.rs"]
mod clickhouse;

use store::server::ServerConfig;

#[test]
fn record_index_on_a_clickhouse_server() {
    let root = std::path::PathBuf::from(
        std::env::var("CARGO_MANIFEST_DIR")
            .unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_string()),
    )
    .join("..");
    let server = clickhouse::ClickhouseServer::start(&root, "records-server");
    let config = ServerConfig {
        url: server.url.clone(),
        user: String::new(),
        password: String::new(),
        database: String::new(),
    };
    let store = store::open_server_records(&config).expect("connect and migrate");
    common::suite::run(&store);
    // Reopening finds every version applied and applies nothing twice.
    let again = store::open_server_records(&config).expect("reopen");
    let every: Vec<u32> = store::records::MIGRATIONS.iter().map(|(v, _)| *v).collect();
    assert_eq!(again.applied().expect("versions"), every);
}
