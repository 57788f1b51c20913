//! The event log's bytes: append-only segment files of checksummed records, one `write` and
//! one `fdatasync` per batch. The redb store says which of them count: a batch's records
//! are written and synced here first, then the transaction that advances `last_seq` (with
//! the batch's position) commits. Whatever lies past the committed `last_seq` after a crash
//! or a failed write is cut off when the log is opened again, so the file and the database
//! always agree.
//!
//! A segment is named by the first `seq` it holds (`00000000000000000001.seg`) and holds
//! consecutive seqs. A record is a 16-byte header (payload length `u32`, CRC-32 of the
//! seq and payload `u32`, `seq` `u64`, all little-endian) and the frame's bytes.

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::io::{IoSlice, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use bytes::Bytes;

use crate::store::StoreError;

/// A new segment is started once the active one holds this many bytes.
const SEGMENT_BYTES: u64 = 256 * 1024 * 1024;
/// Bytes of a record header.
const HEADER: usize = 16;
/// Largest record payload accepted when reading back (a frame is at most 5 MB).
const MAX_RECORD: usize = 8 * 1024 * 1024;
/// Bytes read from a segment at a time when serving a range.
const READ_CHUNK: usize = 1024 * 1024;

/// Where a batch starts: the segment (by its first seq) and the byte offset in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// The segment's first seq.
    pub segment: u64,
    /// Byte offset of the batch's first record.
    pub offset: u64,
}

/// What the log stores of an event: its seq and its frame's bytes.
pub trait Record {
    /// The event's seq.
    fn seq(&self) -> u64;
    /// The frame's bytes.
    fn payload(&self) -> &[u8];
}

impl Record for (u64, Bytes) {
    fn seq(&self) -> u64 {
        self.0
    }
    fn payload(&self) -> &[u8] {
        &self.1
    }
}

impl Record for crate::store::Logged {
    fn seq(&self) -> u64 {
        self.seq
    }
    fn payload(&self) -> &[u8] {
        &self.frame
    }
}

/// The active segment, appended to by the sequencer.
struct Active {
    segment: u64,
    file: File,
    len: u64,
}

/// The segment files under one directory.
pub struct EventLog {
    dir: PathBuf,
    /// Every segment's first seq (kept sorted), and the one being written.
    state: Mutex<(BTreeSet<u64>, Option<Active>)>,
}

fn io(path: &Path, e: std::io::Error) -> StoreError {
    StoreError::Db(format!("event log {}: {e}", path.display()))
}

fn segment_name(first: u64) -> String {
    format!("{first:020}.seg")
}

fn crc(seq: u64, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&seq.to_le_bytes());
    h.update(payload);
    h.finalize()
}

/// A record's header: payload length, CRC-32 of seq and payload, seq.
fn record_header(seq: u64, payload: &[u8]) -> [u8; HEADER] {
    let mut h = [0u8; HEADER];
    h[0..4].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    h[4..8].copy_from_slice(&crc(seq, payload).to_le_bytes());
    h[8..16].copy_from_slice(&seq.to_le_bytes());
    h
}

/// Writes every slice at `at`, in order, however many calls it takes.
fn write_all_vectored_at(
    file: &mut File,
    at: u64,
    mut slices: &mut [IoSlice<'_>],
) -> std::io::Result<()> {
    file.seek(SeekFrom::Start(at))?;
    while !slices.is_empty() {
        match file.write_vectored(slices) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut slices, n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Reads records from `bytes` (which starts at a record boundary): calls `each` with every
/// whole, intact record and returns the length of the prefix they cover.
fn scan(bytes: &[u8], mut each: impl FnMut(u64, &[u8]) -> bool) -> usize {
    let mut at = 0;
    while bytes.len() - at >= HEADER {
        let h = &bytes[at..at + HEADER];
        let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize;
        let sum = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
        let mut s = [0u8; 8];
        s.copy_from_slice(&h[8..16]);
        let seq = u64::from_le_bytes(s);
        if len > MAX_RECORD || bytes.len() - at - HEADER < len {
            break;
        }
        let payload = &bytes[at + HEADER..at + HEADER + len];
        if crc(seq, payload) != sum {
            break;
        }
        if !each(seq, payload) {
            break;
        }
        at += HEADER + len;
    }
    at
}

impl EventLog {
    /// Opens the log under `dir` and cuts it back to what the store committed: records past
    /// `last_seq`, torn or garbled tails, and segments that start after it are removed;
    /// segments wholly before `oldest` (retention that did not finish deleting) too.
    /// `tail` is where the last committed batch starts (everything before it is intact).
    pub fn open(
        dir: &Path,
        last_seq: u64,
        oldest: u64,
        tail: Option<Position>,
    ) -> Result<EventLog, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        let log = EventLog {
            dir: dir.to_path_buf(),
            state: Mutex::new((BTreeSet::new(), None)),
        };
        log.recover(last_seq, oldest, tail)?;
        Ok(log)
    }

    fn path(&self, segment: u64) -> PathBuf {
        self.dir.join(segment_name(segment))
    }

    /// Lists the segments on disk.
    fn list(&self) -> Result<Vec<u64>, StoreError> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.dir).map_err(|e| io(&self.dir, e))? {
            let entry = entry.map_err(|e| io(&self.dir, e))?;
            let name = entry.file_name();
            let Some(first) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".seg"))
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            out.push(first);
        }
        out.sort_unstable();
        Ok(out)
    }

    /// Brings the files in line with the committed `last_seq` (see [`EventLog::open`]);
    /// also run after a failed write, before writing again.
    pub fn recover(
        &self,
        last_seq: u64,
        oldest: u64,
        tail: Option<Position>,
    ) -> Result<(), StoreError> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.1 = None;
        let mut segments = self.list()?;
        // Segments begun for batches that never committed.
        while let Some(&first) = segments.last() {
            if first <= last_seq {
                break;
            }
            let p = self.path(first);
            std::fs::remove_file(&p).map_err(|e| io(&p, e))?;
            segments.pop();
        }
        // Segments retention had cut but not yet deleted.
        while segments.len() > 1 && segments[1] <= oldest {
            let p = self.path(segments[0]);
            std::fs::remove_file(&p).map_err(|e| io(&p, e))?;
            segments.remove(0);
        }
        if let Some(&last) = segments.last() {
            let p = self.path(last);
            let mut file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&p)
                .map_err(|e| io(&p, e))?;
            // Only the last committed batch and what follows it need checking.
            let from = tail
                .filter(|t| t.segment == last)
                .map(|t| t.offset)
                .unwrap_or(0);
            file.seek(SeekFrom::Start(from)).map_err(|e| io(&p, e))?;
            let mut bytes = Vec::new();
            file.read_to_end(&mut bytes).map_err(|e| io(&p, e))?;
            let good = from + scan(&bytes, |seq, _| seq <= last_seq) as u64;
            let end = from + bytes.len() as u64;
            if good < end {
                tracing::warn!(
                    segment = %p.display(),
                    cut = end - good,
                    "event log: cutting bytes past the last committed event"
                );
                file.set_len(good).map_err(|e| io(&p, e))?;
                file.sync_data().map_err(|e| io(&p, e))?;
            }
            file.seek(SeekFrom::Start(good)).map_err(|e| io(&p, e))?;
            state.1 = Some(Active {
                segment: last,
                file,
                len: good,
            });
        }
        state.0 = segments.into_iter().collect();
        Ok(())
    }

    /// Writes `records` (consecutive seqs) durably and returns where they start. On any
    /// failure nothing of the batch stays in the file.
    pub fn append<R: Record>(&self, records: &[R]) -> Result<Position, StoreError> {
        let Some(first) = records.first().map(Record::seq) else {
            return Err(StoreError::Corrupt("empty batch"));
        };
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (segments, active) = &mut *state;
        let roll = match active {
            Some(a) => a.len >= SEGMENT_BYTES,
            None => true,
        };
        if roll {
            let p = self.path(first);
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&p)
                .map_err(|e| io(&p, e))?;
            // The new name must survive a crash as well as the bytes.
            File::open(&self.dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| io(&self.dir, e))?;
            segments.insert(first);
            *active = Some(Active {
                segment: first,
                file,
                len: 0,
            });
        }
        let Some(a) = active.as_mut() else {
            return Err(StoreError::Corrupt("no active segment"));
        };
        // Headers and frames go to the kernel as they are (one vectored write, no copy
        // into a batch buffer).
        let headers: Vec<[u8; HEADER]> = records
            .iter()
            .map(|r| record_header(r.seq(), r.payload()))
            .collect();
        let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(2 * records.len());
        for (h, r) in headers.iter().zip(records) {
            slices.push(IoSlice::new(h));
            slices.push(IoSlice::new(r.payload()));
        }
        let total: u64 = records
            .iter()
            .map(|r| (HEADER + r.payload().len()) as u64)
            .sum();
        let at = a.len;
        let written =
            write_all_vectored_at(&mut a.file, at, &mut slices).and_then(|_| a.file.sync_data());
        if let Err(e) = written {
            // Leave no partial batch behind (the write is retried whole).
            let _ = a.file.set_len(at);
            return Err(io(&self.path(a.segment), e));
        }
        a.len = at + total;
        Ok(Position {
            segment: a.segment,
            offset: at,
        })
    }

    /// Takes back the last append (its transaction failed): the file ends at `at` again.
    pub fn truncate(&self, at: Position) -> Result<(), StoreError> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(a) = state.1.as_mut().filter(|a| a.segment == at.segment) {
            a.file
                .set_len(at.offset)
                .map_err(|e| io(&self.path(at.segment), e))?;
            a.len = at.offset;
        }
        Ok(())
    }

    /// Up to `max` events with `after < seq <= last`, starting the scan at `from` (a batch
    /// at or before the first one wanted).
    pub fn read(
        &self,
        from: Position,
        after: u64,
        last: u64,
        max: usize,
    ) -> Result<Vec<(u64, Bytes)>, StoreError> {
        let segments: Vec<u64> = {
            let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            state.0.range(from.segment..).copied().collect()
        };
        let mut out = Vec::new();
        for segment in segments {
            // The batch's own segment from its offset; later ones from their start.
            let mut offset = if segment == from.segment {
                from.offset
            } else {
                0
            };
            if out.len() >= max || segment > last {
                break;
            }
            let p = self.path(segment);
            let file = match File::open(&p) {
                Ok(f) => f,
                // Deleted by retention since the list was taken: what it held is gone.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io(&p, e)),
            };
            let mut done = false;
            let mut chunk = vec![0u8; READ_CHUNK];
            let mut carry = 0usize;
            loop {
                let n = file
                    .read_at(&mut chunk[carry..], offset)
                    .map_err(|e| io(&p, e))?;
                if n == 0 {
                    break;
                }
                offset += n as u64;
                let filled = carry + n;
                let used = scan(&chunk[..filled], |seq, payload| {
                    if seq > last {
                        done = true;
                        return false;
                    }
                    if seq > after {
                        out.push((seq, Bytes::copy_from_slice(payload)));
                    }
                    if out.len() >= max {
                        done = true;
                        return false;
                    }
                    true
                });
                if done {
                    break;
                }
                carry = filled - used;
                chunk.copy_within(used..filled, 0);
                if carry == chunk.len() {
                    // One record larger than the chunk: grow to hold it.
                    chunk.resize(chunk.len() * 2, 0);
                    if chunk.len() > 2 * MAX_RECORD {
                        return Err(StoreError::Corrupt("event log record"));
                    }
                }
            }
            if done {
                break;
            }
        }
        Ok(out)
    }

    /// Deletes the segments that hold nothing at or after `oldest` (never the active one).
    pub fn remove_before(&self, oldest: u64) -> Result<usize, StoreError> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let active = state.1.as_ref().map(|a| a.segment);
        let firsts: Vec<u64> = state.0.iter().copied().collect();
        let mut removed = 0;
        for pair in firsts.windows(2) {
            let (first, next) = (pair[0], pair[1]);
            if next > oldest || Some(first) == active {
                break;
            }
            let p = self.path(first);
            match std::fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(&p, e)),
            }
            state.0.remove(&first);
            removed += 1;
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(from: u64, n: u64) -> Vec<(u64, Bytes)> {
        (from..from + n)
            .map(|s| {
                (
                    s,
                    Bytes::from(format!("frame {s} ").repeat(1 + s as usize % 7)),
                )
            })
            .collect()
    }

    fn tempdir(name: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("agentnet-eventlog-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn append_read_and_cut_back_to_the_committed_seq() {
        let dir = tempdir("cut");
        let log = EventLog::open(&dir, 0, 1, None).expect("open");
        let a = log.append(&records(1, 10)).expect("append");
        assert_eq!(
            a,
            Position {
                segment: 1,
                offset: 0
            }
        );
        let b = log.append(&records(11, 5)).expect("append");
        let all = log.read(a, 0, 15, 100).expect("read");
        assert_eq!(all, records(1, 15));
        // Reading from a batch's position skips what comes before `after`.
        let some = log.read(b, 12, 15, 2).expect("read");
        assert_eq!(some, records(13, 2));
        // `last` bounds what is served (the uncommitted tail is never read).
        assert_eq!(log.read(a, 0, 9, 100).expect("read"), records(1, 9));
        drop(log);

        // Only seq 12 committed, and the file's tail is torn.
        let p = dir.join(segment_name(1));
        let mut f = OpenOptions::new().append(true).open(&p).expect("open");
        f.write_all(&[1, 2, 3]).expect("garbage");
        drop(f);
        let log = EventLog::open(&dir, 12, 1, Some(b)).expect("reopen");
        assert_eq!(log.read(a, 0, u64::MAX, 100).expect("read"), records(1, 12));
        let c = log.append(&records(13, 3)).expect("append after the cut");
        assert_eq!(log.read(c, 12, 15, 100).expect("read"), records(13, 3));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn garbled_records_end_the_log() {
        let dir = tempdir("garbled");
        let log = EventLog::open(&dir, 0, 1, None).expect("open");
        log.append(&records(1, 4)).expect("append");
        drop(log);
        let p = dir.join(segment_name(1));
        let mut bytes = std::fs::read(&p).expect("read");
        let second = HEADER + records(1, 1)[0].1.len();
        bytes[second + HEADER] ^= 0xff;
        std::fs::write(&p, &bytes).expect("write");
        let log = EventLog::open(&dir, 4, 1, None).expect("reopen");
        let start = Position {
            segment: 1,
            offset: 0,
        };
        assert_eq!(log.read(start, 0, 4, 100).expect("read"), records(1, 1));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn segments_roll_and_old_ones_are_removed() {
        let dir = tempdir("roll");
        let log = EventLog::open(&dir, 0, 1, None).expect("open");
        log.append(&records(1, 3)).expect("append");
        // Force the next batch into a new segment.
        log.state
            .lock()
            .expect("lock")
            .1
            .as_mut()
            .expect("active")
            .len = SEGMENT_BYTES;
        let b = log.append(&records(4, 3)).expect("append");
        assert_eq!(
            b,
            Position {
                segment: 4,
                offset: 0
            }
        );
        let start = Position {
            segment: 1,
            offset: 0,
        };
        assert_eq!(log.read(start, 0, 6, 100).expect("read"), records(1, 6));
        assert_eq!(log.remove_before(3).expect("remove"), 0);
        assert_eq!(log.remove_before(4).expect("remove"), 1);
        assert!(!dir.join(segment_name(1)).exists());
        assert_eq!(log.read(start, 0, 6, 100).expect("read"), records(4, 3));
        // A segment begun for a batch that never committed goes at open.
        log.state
            .lock()
            .expect("lock")
            .1
            .as_mut()
            .expect("active")
            .len = SEGMENT_BYTES;
        log.append(&records(7, 2)).expect("append");
        drop(log);
        let log = EventLog::open(&dir, 6, 4, Some(b)).expect("reopen");
        assert!(!dir.join(segment_name(7)).exists());
        let next = log.append(&records(7, 1)).expect("append");
        assert_eq!(next.segment, 4);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
