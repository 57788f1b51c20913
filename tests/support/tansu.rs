//! A throwaway Kafka-protocol broker: tansu (built from its crate by `infra/tansu/setup.sh`,
//! which `scripts/test.sh` runs) on a loopback port with its SQLite storage engine, killed by
//! its PID when dropped. `TANSU_LOG=info` shows the broker's own log.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Tansu {
    child: Child,
    dir: std::path::PathBuf,
    /// `127.0.0.1:PORT`, for `bootstrap.servers`.
    pub brokers: String,
}

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Tansu {
    /// Starts a broker in a fresh directory named after `name` and waits for its port.
    pub fn start(name: &str) -> Tansu {
        Self::start_on(name, super::free_port())
    }

    /// Like [`Tansu::start`], on `port`.
    pub fn start_on(name: &str, port: u16) -> Tansu {
        let bin = std::env::var("AGENTNET_TANSU").unwrap_or_else(|_| {
            let home = std::env::var("HOME").unwrap_or_default();
            format!("{home}/.cache/agentnet/tansu-0.6.0/bin/tansu")
        });
        assert!(
            std::path::Path::new(&bin).exists(),
            "the Kafka tests need the tansu broker: {bin} is missing \
             (infra/tansu/setup.sh builds it; scripts/test.sh runs it)"
        );
        let dir = std::env::temp_dir().join(format!("agentnet-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("tansu dir");
        let brokers = format!("127.0.0.1:{port}");
        let child = Command::new(&bin)
            .arg("broker")
            .arg("--listener-url")
            .arg(format!("tcp://{brokers}"))
            .arg("--advertised-listener-url")
            .arg(format!("tcp://{brokers}"))
            // The SQLite file is named relative to the broker's directory.
            .arg("--storage-engine")
            .arg("sqlite://tansu.db")
            .current_dir(&dir)
            .env(
                "RUST_LOG",
                std::env::var("TANSU_LOG").unwrap_or("warn".into()),
            )
            .stdout(if std::env::var_os("TANSU_LOG").is_some() {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("could not start {bin}: {e}"));
        let mut broker = Tansu {
            child,
            dir,
            brokers,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = broker.child.try_wait() {
                panic!("tansu exited ({status}) before listening; its log is above");
            }
            assert!(Instant::now() < deadline, "tansu did not listen on {port}");
            std::thread::sleep(Duration::from_millis(100));
        }
        broker
    }
}
