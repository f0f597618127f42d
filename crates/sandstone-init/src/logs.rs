//! The sandbox's durable log: every context's output (and each exit),
//! appended by PID 1 to segment files in a host directory of the volume
//! that nothing in the sandbox can reach (PID 1 holds the only handle).
//! The daemon reads the same files, while the sandbox runs or not; the
//! record layout is [`sandstone_api::logs`]'s.
//!
//! A process's output is handed to a writer thread and the pump goes on
//! reading: the writer appends what has queued up in one write, so a
//! process printing fast waits neither for the disk nor for a syscall per
//! chunk. The queue is bounded: a writer that falls behind holds the pump
//! (and so the process) back rather than lose output.
//!
//! Bounded on disk too: a segment is closed at an eighth of the budget, and
//! the oldest segments are removed while the directory holds more than the
//! budget.

use crate::proto::Stream;
use sandstone_api::logs::{Kind, header, segment_name, segment_seq};
use std::collections::VecDeque;
use std::fs::File;
use std::io::{IoSlice, Write};
use std::os::fd::AsRawFd;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, OnceLock};

/// The smallest segment: a tiny budget still gets whole records.
const MIN_SEGMENT: u64 = 64 << 10;
/// The largest: a query reads a segment whole, and a record's place is
/// (segment, 32-bit offset).
const MAX_SEGMENT: u64 = 64 << 20;
/// Chunks queued for the writer (each at most 64 KiB).
const QUEUED: usize = 64;
/// The most one write appends.
const BATCH: usize = 1 << 20;

/// One record, before it is encoded.
struct Entry {
    at_ms: u64,
    kind: Kind,
    context: String,
    /// The chunk the pump read, shared with its readers: not copied here.
    data: Arc<[u8]>,
    /// Told once this record (and so all before it) is written.
    written: Option<SyncSender<()>>,
}

static QUEUE: OnceLock<SyncSender<Entry>> = OnceLock::new();

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
        segment_max: (max_bytes / 8).clamp(MIN_SEGMENT, MAX_SEGMENT),
        closed: found.into(),
        current: None,
        next_seq,
    };
    w.trim();
    let (tx, rx) = sync_channel(QUEUED);
    std::thread::Builder::new()
        .name("log-writer".into())
        .spawn(move || w.run(rx))?;
    // A second start (there is none) keeps the first writer.
    let _ = QUEUE.set(tx);
    Ok(())
}

/// Appends output of context `id`. Failures are PID 1's diagnostics only:
/// the process and its live readers go on either way.
pub fn output(id: &str, stream: Stream, data: Arc<[u8]>) {
    let kind = match stream {
        Stream::Stdout => Kind::Stdout,
        Stream::Stderr => Kind::Stderr,
        Stream::Pty => Kind::Pty,
    };
    append(id, kind, data, None);
}

/// Records that context `id` ended, with its exit code, and returns once
/// its output is written: whoever learns of the exit finds it all in the
/// log (bounded: a stuck disk delays the exit's report by 5 s at most).
pub fn exit(id: &str, code: Option<i32>) {
    let text = code.map_or_else(String::new, |c| c.to_string());
    let (tx, rx) = sync_channel(1);
    if append(id, Kind::Exit, Arc::from(text.as_bytes()), Some(tx)) {
        let _ = rx.recv_timeout(std::time::Duration::from_secs(5));
    }
}

/// Queues a record; false when there is no log.
fn append(id: &str, kind: Kind, data: Arc<[u8]>, written: Option<SyncSender<()>>) -> bool {
    let Some(queue) = QUEUE.get() else {
        return false;
    };
    // Fails only once the writer is gone, and then nothing is logged.
    queue
        .send(Entry {
            at_ms: crate::procs::now_ms(),
            kind,
            context: id.to_string(),
            data,
            written,
        })
        .is_ok()
}

impl Writer {
    /// Appends what the queue holds, a batch per write (each record's
    /// header, then its data from where the pump left it), until PID 1
    /// ends.
    fn run(mut self, queue: Receiver<Entry>) {
        let mut batch: Vec<(Vec<u8>, Arc<[u8]>)> = Vec::new();
        let mut waiting = Vec::new();
        while let Ok(first) = queue.recv() {
            let mut next = Some(first);
            let mut bytes = 0;
            while let Some(e) = next.take() {
                let head = header(e.at_ms, e.kind, &e.context, e.data.len());
                bytes += head.len() + e.data.len();
                batch.push((head, e.data));
                waiting.extend(e.written);
                // Two slices a record, within one `writev`'s (IOV_MAX) 1024.
                if bytes < BATCH && batch.len() < 512 {
                    next = queue.try_recv().ok();
                }
            }
            if let Err(e) = self.write(&batch, bytes as u64) {
                eprintln!("sandstone-init: log write failed: {e}");
            }
            for w in waiting.drain(..) {
                let _ = w.send(());
            }
            batch.clear();
        }
    }

    fn write(&mut self, records: &[(Vec<u8>, Arc<[u8]>)], len: u64) -> std::io::Result<()> {
        let full = self
            .current
            .as_ref()
            .is_some_and(|(_, _, size)| *size > 0 && *size + len > self.segment_max);
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
        let mut slices: Vec<IoSlice<'_>> = records
            .iter()
            .flat_map(|(head, data)| [IoSlice::new(head), IoSlice::new(data)])
            .collect();
        if let Err(e) = write_all_vectored(file, &mut slices) {
            // Whatever part was written is cut off, so the segment ends at a
            // whole record (the sandbox may have filled its disk).
            let _ = file.set_len(*size);
            return Err(e);
        }
        *size += len;
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

/// Writes every slice, however the kernel splits the writes.
fn write_all_vectored(file: &mut File, mut slices: &mut [IoSlice<'_>]) -> std::io::Result<()> {
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
