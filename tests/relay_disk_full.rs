//! A disk that fills: the relay's log on a small tmpfs, filled to the last byte while the
//! fleet keeps writing. The relay stays up, acknowledges nothing it could not write, and
//! when space returns it writes everything it held and carries on: every event once, seqs
//! gap-free. Mounting the tmpfs needs root (CI runs as root); without it the test fails
//! saying so.

mod inproc;

use std::io::Write;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use atproto::frame::Frame;
use inproc::{frames, http_get, published, relay_in, wait_for, FleetHandle};

/// A tmpfs of `size_kib`, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(size_kib: u64) -> Tmpfs {
        let dir = std::env::temp_dir().join(format!("agentnet-diskfull-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mount point");
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_kib}k"), "tmpfs"])
            .arg(&dir)
            .status()
            .expect("running mount");
        assert!(
            status.success(),
            "the disk-full test mounts a {size_kib} KiB tmpfs at {} and could not ({status}): it needs root",
            dir.display()
        );
        Tmpfs(dir)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// Writes a file until the filesystem is full; returns its path.
fn fill(dir: &std::path::Path) -> PathBuf {
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).expect("filler");
    let chunk = vec![0xa5u8; 16 * 1024];
    while f.write_all(&chunk).and_then(|_| f.flush()).is_ok() {}
    // Bytes that did not fit a whole chunk.
    while f.write_all(&[0u8; 512]).is_ok() {}
    let _ = f.sync_all();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_pauses_the_relay_and_loses_nothing() {
    let disk = Tmpfs::mount(8 * 1024);
    let mut fleet = FleetHandle::start(4, false).await;
    let relay = relay_in(&[&fleet], &disk.0.join("relay"), &[]).await;
    fleet.fleet.genesis().await.expect("genesis");
    published(&relay, 12.0).await;

    let filler = fill(&disk.0);
    // Keep writing until the log refuses a write (the database may have had free pages).
    let mut written = 0;
    while relay.metric("relay_store_write_failures_total").await < 1.0 {
        for i in 0..20 {
            fleet.fleet.write_one(i % 4).await.expect("write");
        }
        written += 20;
        assert!(written <= 20_000, "the log never ran out of space");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Full: still up, holding what it cannot write (a reopened log may fit a small batch
    // in pages the failed write freed, but not the rest).
    for i in 0..200 {
        fleet.fleet.write_one(i % 4).await.expect("write");
    }
    written += 200;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        http_get(relay.port, "/_health").await.is_some(),
        "the relay is up"
    );
    let total = 12 + written as usize;
    let out = relay.metric("relay_events_out_total").await;
    assert!(
        out < total as f64,
        "{out} of {total} published with the disk full"
    );
    assert!(relay.metric("relay_store_write_failures_total").await >= 2.0);

    // Space returns: everything held is written, once, in order.
    std::fs::remove_file(&filler).expect("free the space");
    wait_for("everything held to be written", async || {
        relay.metric("relay_events_out_total").await >= total as f64
    })
    .await;
    let all = frames(&relay.ws("?cursor=0"), total + 10, Duration::from_secs(3)).await;
    assert_eq!(all.len(), total, "every event once");
    assert_eq!(
        all.iter().filter_map(Frame::seq).collect::<Vec<_>>(),
        (1..=total as i64).collect::<Vec<_>>(),
        "gap-free"
    );
    let mut revs: Vec<(&str, &str)> = all
        .iter()
        .filter_map(|f| match f {
            Frame::Commit(c) => Some((c.repo.as_str(), c.rev.as_str())),
            _ => None,
        })
        .collect();
    let commits = revs.len();
    revs.sort();
    revs.dedup();
    assert_eq!(revs.len(), commits, "no commit twice");
    relay.stop().await;
    fleet.stop().await;
}
