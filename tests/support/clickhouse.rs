//! A throwaway ClickHouse server (Debian's clickhouse-server, started by
//! `infra/clickhouse/server.sh` on loopback ports), killed by its PID when dropped. Shared by
//! the workspace's tests and the indexer's (`#[path]`).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct ClickhouseServer {
    child: Child,
    dir: std::path::PathBuf,
    pub url: String,
}

impl Drop for ClickhouseServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

impl ClickhouseServer {
    /// Starts a server in a fresh directory named after `name` and waits for `/ping`.
    pub fn start(repo_root: &std::path::Path, name: &str) -> ClickhouseServer {
        assert!(
            std::path::Path::new("/usr/sbin/clickhouse-server").exists(),
            "clickhouse-server is not installed: run infra/clickhouse/setup.sh (scripts/test.sh does)"
        );
        let dir = std::env::temp_dir().join(format!("agentnet-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (http, tcp) = (free_port(), free_port());
        let child = Command::new(repo_root.join("infra/clickhouse/server.sh"))
            .arg(&dir)
            .args([http.to_string(), tcp.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting clickhouse-server");
        let server = ClickhouseServer {
            child,
            dir,
            url: format!("http://127.0.0.1:{http}"),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ping = std::net::TcpStream::connect(("127.0.0.1", http))
                .ok()
                .and_then(|mut s| {
                    use std::io::{Read, Write};
                    s.write_all(b"GET /ping HTTP/1.0\r\n\r\n").ok()?;
                    let mut out = String::new();
                    s.read_to_string(&mut out).ok()?;
                    out.contains("Ok.").then_some(())
                });
            if ping.is_some() {
                return server;
            }
            assert!(
                Instant::now() < deadline,
                "clickhouse-server did not answer /ping within 60 s (see {}/server.err.log)",
                server.dir.display()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}
