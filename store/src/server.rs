//! The record index on a ClickHouse server, through the `clickhouse` crate (HTTP): the same
//! SQL as the embedded engine, for deployments that run the indexer and the appview apart.
//!
//! The client is async and the stores' interface synchronous: statements run on a
//! [`Bridge`](crate::bridge::Bridge).

use crate::bridge::Bridge;
use crate::records::{RecordError, SqlTransport};

/// Where the server is and who to be.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// `http://host:8123`.
    pub url: String,
    /// User (the server's `default` when empty).
    pub user: String,
    /// Password.
    pub password: String,
    /// Database (the server's default when empty).
    pub database: String,
}

/// A ClickHouse server as a [`SqlTransport`].
pub struct ClickhouseServer {
    client: clickhouse::Client,
    bridge: Bridge,
}

impl ClickhouseServer {
    /// A client for `config`, checked with `SELECT 1`.
    pub fn connect(config: &ServerConfig) -> Result<Self, RecordError> {
        let mut client = clickhouse::Client::default()
            .with_url(config.url.trim_end_matches('/'))
            // Answers are read as JSONEachRow bytes, never as typed rows; validation would
            // also ask for a format older servers (18.16) do not have.
            .with_validation(false);
        if !config.user.is_empty() {
            client = client.with_user(&config.user);
        }
        if !config.password.is_empty() {
            client = client.with_password(&config.password);
        }
        if !config.database.is_empty() {
            client = client.with_database(&config.database);
        }
        let bridge = Bridge::start("clickhouse-client")
            .map_err(|e| RecordError::Sql(format!("ClickHouse client thread: {e}")))?;
        let server = ClickhouseServer { client, bridge };
        server.execute("SELECT 1")?;
        Ok(server)
    }
}

async fn run(client: &clickhouse::Client, sql: &str) -> Result<Vec<u8>, RecordError> {
    // `?` is the client's bind placeholder; the SQL arrives fully formed, so every `?` is text.
    let mut cursor = client
        .query(&sql.replace('?', "??"))
        .fetch_bytes("JSONEachRow")
        .map_err(|e| RecordError::Sql(e.to_string()))?;
    cursor
        .collect()
        .await
        .map(|b| b.to_vec())
        .map_err(|e| RecordError::Sql(e.to_string()))
}

impl SqlTransport for ClickhouseServer {
    fn execute(&self, sql: &str) -> Result<Vec<u8>, RecordError> {
        let (client, sql) = (self.client.clone(), sql.to_string());
        self.bridge
            .run(async move { run(&client, &sql).await })
            .map_err(|_| RecordError::Sql("ClickHouse client thread ended".into()))?
    }
}
