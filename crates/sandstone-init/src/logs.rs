//! The sandbox's durable log: every context's output (and each exit),
//! appended by PID 1 to segment files in a host directory of the volume
//! that nothing in the sandbox can reach (PID 1 holds the only handle).
//! The daemon reads the same files, while the sandbox runs or not; the
//! record layout is [`sandstone_api::logs`]'s.
//!
//! Bounded: a segment is closed at an eighth of the budget, and the oldest
//! segments are removed while the directory holds more than the budget.
//! A record is written with one `write` as it is read from the process,
//! so a daemon or init crash loses nothing already printed.

use crate::proto::Stream;
use sandstone_api::logs::{Kind, encode, segment_name, segment_seq};
use std::collections::VecDeque;
use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::sync::{Mutex, OnceLock};

/// The smallest segment: a tiny budget still gets whole records.
const MIN_SEGMENT: u64 = 64 << 10;

struct Writer {
    /// `/proc/self/fd/<n>`: the directory through PID 1's handle on it.
    dir: String,
    /// Held so the path above stays valid.
    _handle: File,
    max_bytes: u64,
    segment_max: u64,
    /// Closed segments, oldest first: (sequence, size).
    closed: VecDeque<(u64, u64)>,
    /// The open segment: (sequence, file, size).
    current: Option<(u64, File, u64)>,
    /// Sequences only grow, even once every older segment is gone.
    next_seq: u64,
}

static LOG: OnceLock<Mutex<Writer>> = OnceLock::new();

/// Starts logging into `dir` (PID 1's handle on the host directory).
/// Segments a previous runtime left are kept, and counted in the budget.
pub fn start(dir: File, max_bytes: u64) -> std::io::Result<()> {
    let path = format!("/proc/self/fd/{}", dir.as_raw_fd());
    let mut found: Vec<(u64, u64)> = std::fs::read_dir(&path)?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let seq = segment_seq(e.file_name().to_str()?)?;
            Some((seq, e.metadata().ok()?.len()))
        })
        .collect();
    found.sort_unstable();
    let next_seq = found.last().map_or(1, |(s, _)| s + 1);
    let mut w = Writer {
        dir: path,
        _handle: dir,
        max_bytes,
        // Under 4 GiB: a record's place is (segment, 32-bit offset).
        segment_max: (max_bytes / 8).clamp(MIN_SEGMENT, 1 << 30),
        closed: found.into(),
        current: None,
        next_seq,
    };
    w.trim();
    // A second start (there is none) keeps the first writer.
    let _ = LOG.set(Mutex::new(w));
    Ok(())
}

/// Appends output of context `id`. Failures are PID 1's diagnostics only:
/// the process and its live readers go on either way.
pub fn output(id: &str, stream: Stream, data: &[u8]) {
    let kind = match stream {
        Stream::Stdout => Kind::Stdout,
        Stream::Stderr => Kind::Stderr,
        Stream::Pty => Kind::Pty,
    };
    append(id, kind, data);
}

/// Records that context `id` ended, with its exit code.
pub fn exit(id: &str, code: Option<i32>) {
    let text = code.map_or_else(String::new, |c| c.to_string());
    append(id, Kind::Exit, text.as_bytes());
}

fn append(id: &str, kind: Kind, data: &[u8]) {
    let Some(log) = LOG.get() else { return };
    let record = encode(crate::procs::now_ms(), kind, id, data);
    let mut w = log.lock().expect("lock poisoned");
    if let Err(e) = w.write(&record) {
        eprintln!("sandstone-init: log write failed: {e}");
        // Start a fresh segment next time rather than append after a
        // partial record.
        w.close_current();
    }
}

impl Writer {
    fn write(&mut self, record: &[u8]) -> std::io::Result<()> {
        let full = self
            .current
            .as_ref()
            .is_some_and(|(_, _, size)| *size + record.len() as u64 > self.segment_max);
        if full {
            self.close_current();
        }
        if self.current.is_none() {
            let seq = self.next_seq;
            self.next_seq += 1;
            let file = std::fs::OpenOptions::new()
                .create_new(true)
                .append(true)
                .open(format!("{}/{}", self.dir, segment_name(seq)))?;
            self.current = Some((seq, file, 0));
        }
        let (_, file, size) = self.current.as_mut().expect("opened above");
        file.write_all(record)?;
        *size += record.len() as u64;
        self.trim();
        Ok(())
    }

    fn close_current(&mut self) {
        if let Some((seq, _, size)) = self.current.take() {
            self.closed.push_back((seq, size));
        }
    }

    /// Removes the oldest closed segments while over the budget.
    fn trim(&mut self) {
        let open = self.current.as_ref().map_or(0, |(_, _, s)| *s);
        let mut total: u64 = self.closed.iter().map(|(_, s)| s).sum::<u64>() + open;
        while total > self.max_bytes
            && let Some((seq, size)) = self.closed.pop_front()
        {
            let _ = std::fs::remove_file(format!("{}/{}", self.dir, segment_name(seq)));
            total -= size;
        }
    }
}
