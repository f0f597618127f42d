//! A sandbox's durable log (`sandstone_api::logs`): the volume's `logs`
//! directory, which PID 1 appends to and this module reads, as lines.
//! Reading needs no runtime: a paused sandbox's log, or one whose daemon
//! restarted, reads the same.

use sandstone_api::logs::{Cursor, Kind, LogStream, decode, segment_name, segment_seq};
use sandstone_runtime::LogSpec;
use sandstone_volumes::SandboxPaths;
use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};

pub fn dir(paths: &SandboxPaths) -> PathBuf {
    paths.data.join("logs")
}

/// The log directory for a runtime whose root is host uid `id_base`:
/// made if missing and handed to that uid (a resumed sandbox may have
/// another), closed to everyone else.
pub(super) fn spec(paths: &SandboxPaths, id_base: u32, max_bytes: u64) -> std::io::Result<LogSpec> {
    use std::os::unix::fs::PermissionsExt;
    let dir = dir(paths);
    if !dir.exists() {
        std::fs::create_dir_all(&dir)?;
        // Appended once and read back: btrfs's copy-on-write and data
        // checksums would only cost the writer (best effort elsewhere).
        if let Err(e) = std::fs::File::open(&dir)
            .and_then(|d| sandstone_sys::fs::set_nocow(std::os::fd::AsFd::as_fd(&d)))
        {
            tracing::debug!(error = %e, "log directory keeps copy-on-write");
        }
    }
    std::os::unix::fs::chown(&dir, Some(id_base), Some(id_base))?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
    Ok(LogSpec { dir, max_bytes })
}

/// What a query asks for.
#[derive(Debug, Clone, Default)]
pub struct LogQuery {
    pub start_ms: Option<i64>,
    pub end_ms: Option<i64>,
    pub context: Option<String>,
    pub stream: Option<LogStream>,
    /// Lines after this place; without it (and without `start_ms`), the
    /// latest `limit` lines.
    pub after: Option<Cursor>,
    pub limit: usize,
}

/// One line of output, or a context's exit.
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    pub at_ms: i64,
    pub context: String,
    /// `None`: the context's exit, with its code in `text`.
    pub stream: Option<LogStream>,
    pub text: String,
    pub cursor: Cursor,
}

impl LogQuery {
    fn admits(&self, at_ms: i64, context: &str, stream: Option<LogStream>) -> bool {
        self.start_ms.is_none_or(|s| at_ms >= s)
            && self.context.as_deref().is_none_or(|c| c == context)
            && self.stream.is_none_or(|s| stream == Some(s))
    }
}

/// The segments, oldest first.
fn segments(dir: &Path) -> std::io::Result<Vec<u64>> {
    let mut seqs: Vec<u64> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok())
            .filter_map(|e| segment_seq(e.file_name().to_str()?))
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e),
    };
    seqs.sort_unstable();
    Ok(seqs)
}

/// The place after everything written so far: where a watch that starts
/// now begins.
pub fn end(dir: &Path) -> std::io::Result<Cursor> {
    let Some(&seq) = segments(dir)?.last() else {
        return Ok(Cursor::default());
    };
    let offset = match std::fs::metadata(dir.join(segment_name(seq))) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => return Err(e),
    };
    Ok(Cursor {
        seq,
        offset,
        line: 0,
    })
}

/// The lines `q` asks for, in order, and the place after the last line
/// looked at (to go on from; unchanged when there was nothing new).
pub fn read(dir: &Path, q: &LogQuery) -> std::io::Result<(Vec<Line>, Cursor)> {
    let seqs = segments(dir)?;
    let tail = q.after.is_none() && q.start_ms.is_none();
    if tail {
        // Newest segments first, until enough lines are found; no more
        // than `limit` lines are held at once, however many there are.
        let mut found: VecDeque<Line> = VecDeque::new();
        let mut last = None;
        for &seq in seqs.iter().rev() {
            let mut newest = VecDeque::new();
            let end = scan(dir, seq, 0, 0, q, Sink::Last(&mut newest, q.limit))?;
            last.get_or_insert(end);
            while found.len() < q.limit
                && let Some(l) = newest.pop_back()
            {
                found.push_front(l);
            }
            if found.len() >= q.limit {
                break;
            }
        }
        let next = last.unwrap_or_default();
        return Ok((found.into(), next));
    }
    let from = q.after.unwrap_or_default();
    let mut out = Vec::new();
    let mut next = from;
    for &seq in seqs.iter().filter(|s| **s >= from.seq) {
        let (offset, line) = if seq == from.seq {
            (from.offset, from.line)
        } else {
            (0, 0)
        };
        let room = q.limit - out.len();
        next = scan(dir, seq, offset, line, q, Sink::First(&mut out, room))?;
        if out.len() >= q.limit || next.offset == u64::MAX {
            break;
        }
    }
    if next.offset == u64::MAX {
        // Stopped at `end_ms`: go on from there next time.
        next = out.last().map_or(from, |l: &Line| Cursor {
            line: l.cursor.line + 1,
            ..l.cursor
        });
    }
    Ok((out, next))
}

/// Where scanned lines go.
enum Sink<'a> {
    /// The first lines, up to a page: the scan stops when it is full.
    First(&'a mut Vec<Line>, usize),
    /// The last lines: older ones make way.
    Last(&'a mut VecDeque<Line>, usize),
}

/// Reads segment `seq` from `offset` (skipping `skip` lines of the record
/// there) into `sink`. Returns where it stopped; `offset: u64::MAX` when a
/// record past `end_ms` ended it.
fn scan(
    dir: &Path,
    seq: u64,
    offset: u64,
    skip: u32,
    q: &LogQuery,
    mut sink: Sink<'_>,
) -> std::io::Result<Cursor> {
    // From `offset` on: a page, or a watch's poll, reads only what is new.
    let buf = segment(dir, seq, offset)?;
    let base = offset as usize;
    let mut at = 0;
    let mut skip = skip;
    while let Some(r) = decode(&buf, at) {
        let at_ms = r.at_ms as i64;
        if q.end_ms.is_some_and(|e| at_ms > e) {
            return Ok(Cursor {
                seq,
                offset: u64::MAX,
                line: 0,
            });
        }
        let stream = match r.kind {
            Kind::Stdout => Some(LogStream::Stdout),
            Kind::Stderr => Some(LogStream::Stderr),
            Kind::Pty => Some(LogStream::Pty),
            Kind::Exit => None,
        };
        let admitted =
            q.admits(at_ms, r.context, stream) && (stream.is_some() || q.stream.is_none());
        let texts: Vec<String> = if stream.is_some() {
            lines(r.data)
        } else {
            vec![String::from_utf8_lossy(r.data).into_owned()]
        };
        for (i, text) in texts.into_iter().enumerate().skip(skip as usize) {
            let cursor = Cursor {
                seq,
                offset: (base + at) as u64,
                line: i as u32,
            };
            if !admitted {
                continue;
            }
            let line = Line {
                at_ms,
                context: r.context.to_string(),
                stream,
                text,
                cursor,
            };
            match &mut sink {
                Sink::First(out, room) if out.len() == *room => return Ok(cursor),
                Sink::First(out, _) => out.push(line),
                Sink::Last(out, room) => {
                    out.push_back(line);
                    if out.len() > *room {
                        out.pop_front();
                    }
                }
            }
        }
        skip = 0;
        at = r.next;
    }
    Ok(Cursor {
        seq,
        offset: (base + at) as u64,
        line: 0,
    })
}

/// A segment's bytes from `offset` on; one the budget removed meanwhile
/// is empty. The directory is the sandbox root's: a link there is not
/// followed.
fn segment(dir: &Path, seq: u64, offset: u64) -> std::io::Result<Vec<u8>> {
    use std::io::{Read, Seek};
    use std::os::unix::fs::OpenOptionsExt;
    let opened = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(dir.join(segment_name(seq)));
    let mut f = match opened {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    if !f.metadata()?.is_file() {
        return Ok(Vec::new());
    }
    f.seek(std::io::SeekFrom::Start(offset))?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf)?;
    Ok(buf)
}

/// Whether a cursor a client sent names a record's start: one inside a
/// record would read the sandbox's own output as records.
pub fn is_record_start(dir: &Path, seq: u64, offset: u64) -> std::io::Result<bool> {
    if offset == 0 {
        return Ok(true);
    }
    let buf = segment(dir, seq, 0)?;
    if buf.is_empty() {
        // Gone: reading starts at the next segment's first record.
        return Ok(true);
    }
    let mut at = 0;
    while (at as u64) < offset {
        match decode(&buf, at) {
            Some(r) => at = r.next,
            // The end of what is written is a place too.
            None => break,
        }
    }
    Ok(at as u64 == offset)
}

/// Log reads at once: each may read a segment, and a flood of queries
/// must not take the daemon's memory.
static READS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(4);

/// Runs a log read off the async threads, a few at a time.
pub async fn run<T: Send + 'static>(
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    let _permit = READS
        .acquire()
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    tokio::task::spawn_blocking(f)
        .await
        .map_err(std::io::Error::other)?
}

/// Wakes a follower of a sandbox's log when PID 1 writes to it, so a
/// stream shows output as it is written rather than at its next poll.
/// Every follower of a directory shares one inotify watch, and the daemon
/// one inotify instance (a scarce per-user resource: 128 by default).
/// Without a watch (no inotify, no directory yet) it is a plain wait.
pub struct Waker {
    watch: Option<(
        std::sync::Arc<Watcher>,
        i32,
        tokio::sync::watch::Receiver<u64>,
    )>,
}

impl Waker {
    pub fn new(dir: &Path) -> Waker {
        let watch = Watcher::get().and_then(|w| {
            let (wd, changes) = w.follow(dir).ok()?;
            Some((w, wd, changes))
        });
        Waker { watch }
    }

    /// Returns once the log changed (a burst of writes is one change), or
    /// after `at_most`: a change the watch cannot see (a directory made
    /// later) is found by the next look anyway.
    pub async fn wait(&mut self, at_most: std::time::Duration) {
        let Some((_, _, changes)) = &mut self.watch else {
            return tokio::time::sleep(at_most).await;
        };
        if let Ok(Ok(())) = tokio::time::timeout(at_most, changes.changed()).await {
            // Let the writer's burst finish: one read for many writes.
            tokio::time::sleep(COALESCE).await;
        }
    }
}

impl Drop for Waker {
    fn drop(&mut self) {
        if let Some((w, wd, _)) = self.watch.take() {
            w.unfollow(wd);
        }
    }
}

/// How long a woken follower waits for the rest of a burst of writes.
const COALESCE: std::time::Duration = std::time::Duration::from_millis(10);

/// The daemon's inotify instance: a watch per followed log directory,
/// each with a counter of the changes seen, and how many follow it.
pub struct Watcher {
    fd: std::os::fd::OwnedFd,
    dirs: std::sync::Mutex<HashMap<i32, (tokio::sync::watch::Sender<u64>, usize)>>,
}

impl Watcher {
    /// The instance, started with its reader task on first use; `None`
    /// where inotify is not to be had.
    fn get() -> Option<std::sync::Arc<Watcher>> {
        static WATCHER: std::sync::OnceLock<Option<std::sync::Arc<Watcher>>> =
            std::sync::OnceLock::new();
        WATCHER.get_or_init(Watcher::start).clone()
    }

    fn start() -> Option<std::sync::Arc<Watcher>> {
        use std::os::fd::AsFd;
        let fd = sandstone_sys::fs::inotify_init().ok()?;
        sandstone_sys::fd::set_nonblocking(fd.as_fd()).ok()?;
        let reader = std::fs::File::from(fd.try_clone().ok()?);
        // SAFETY: the AsyncFd owns `reader`, a duplicate, so it stays open
        // (and the same descriptor) for as long as it is registered.
        let reader = unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(reader, tokio::io::Interest::READABLE)
        }
        .ok()?;
        let w = std::sync::Arc::new(Watcher {
            fd,
            dirs: Default::default(),
        });
        let me = w.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 64 << 10];
            loop {
                let Ok(mut ready) = reader.readable().await else {
                    return;
                };
                match ready.try_io(|f| std::io::Read::read(&mut f.get_ref(), &mut buf)) {
                    Ok(Ok(n)) if n > 0 => me.changed(&buf[..n]),
                    Ok(_) => return,
                    Err(_would_block) => {}
                }
            }
        });
        Some(w)
    }

    /// Bumps the counter of every directory an event is about.
    fn changed(&self, events: &[u8]) {
        let dirs = crate::lock(&self.dirs);
        for e in sandstone_sys::fs::inotify_events(events) {
            if let Some((changes, _)) = dirs.get(&e.wd) {
                changes.send_modify(|n| *n += 1);
            }
        }
    }

    fn follow(&self, dir: &Path) -> std::io::Result<(i32, tokio::sync::watch::Receiver<u64>)> {
        use std::os::fd::AsFd;
        let path = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())
            .map_err(std::io::Error::other)?;
        let mask = libc::IN_MODIFY | libc::IN_CREATE | libc::IN_MOVED_TO;
        // One directory is one watch descriptor, however often added.
        let wd = sandstone_sys::fs::inotify_add_watch(self.fd.as_fd(), &path, mask)?;
        let mut dirs = crate::lock(&self.dirs);
        let (changes, followers) = dirs
            .entry(wd)
            .or_insert_with(|| (tokio::sync::watch::channel(0).0, 0));
        *followers += 1;
        Ok((wd, changes.subscribe()))
    }

    fn unfollow(&self, wd: i32) {
        use std::os::fd::AsFd;
        let mut dirs = crate::lock(&self.dirs);
        if let Some((_, followers)) = dirs.get_mut(&wd) {
            *followers -= 1;
            if *followers == 0 {
                dirs.remove(&wd);
                // Gone with its directory already is as good.
                let _ = sandstone_sys::fs::inotify_rm_watch(self.fd.as_fd(), wd);
            }
        }
    }
}

/// A place in the log as one number (segment sequence above, offset
/// below 32 bits: PID 1 keeps segments under 4 GiB), for APIs whose
/// cursors are integers.
pub fn position(seq: u64, offset: u64) -> i64 {
    ((seq << 32) | (offset & 0xffff_ffff)) as i64
}

fn unposition(p: i64) -> (u64, u64) {
    let p = p.max(0) as u64;
    (p >> 32, p & 0xffff_ffff)
}

/// [`is_record_start`] of a [`position`] a client sent.
pub fn is_record_position(dir: &Path, p: i64) -> std::io::Result<bool> {
    let (seq, offset) = unposition(p);
    is_record_start(dir, seq, offset)
}

/// One record as written: output bytes as they were read, or an exit.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub context: String,
    /// [`position`] of the record.
    pub position: i64,
    pub at_ms: i64,
    pub kind: Kind,
    pub data: Vec<u8>,
}

/// The oldest place the log still holds and the place after its end.
pub fn retained(dir: &Path) -> std::io::Result<(i64, i64)> {
    let oldest = segments(dir)?.first().map_or(0, |s| position(*s, 0));
    let end = end(dir)?;
    Ok((oldest, position(end.seq, end.offset)))
}

/// The [`position`] of the log's last record (0 when it has none): a
/// reader that starts after it reads what is written from now on.
pub fn last_position(dir: &Path) -> std::io::Result<i64> {
    // The newest segments may be empty yet (a runtime that just started).
    for seq in segments(dir)?.into_iter().rev() {
        let buf = segment(dir, seq, 0)?;
        let (mut at, mut last) = (0, None);
        while let Some(r) = decode(&buf, at) {
            last = Some(at);
            at = r.next;
        }
        if let Some(at) = last {
            return Ok(position(seq, at as u64));
        }
    }
    Ok(0)
}

/// Which records [`records`] reads.
#[derive(Debug, Clone, Copy)]
pub enum Select<'a> {
    /// One context's output and exits.
    Context(&'a str),
    /// Every context's exits.
    Exits,
}

impl Select<'_> {
    fn admits(self, context: &str, kind: Kind) -> bool {
        match self {
            Select::Context(c) => c == context,
            Select::Exits => kind == Kind::Exit,
        }
    }
}

/// The `select`ed records after `after` (a [`position`]; 0: from the
/// start), at most `limit`, and the position to go on from.
pub fn records(
    dir: &Path,
    select: Select<'_>,
    after: i64,
    limit: usize,
) -> std::io::Result<(Vec<Record>, i64)> {
    let (from_seq, from_offset) = unposition(after);
    let mut out = Vec::new();
    let mut next = after;
    for seq in segments(dir)?.into_iter().filter(|s| *s >= from_seq) {
        // Read from the place reached, not the segment's start: a follower
        // reads what was appended since, whatever the segment's size.
        let base = if seq == from_seq { from_offset } else { 0 };
        let buf = segment(dir, seq, base)?;
        let mut at = 0;
        // `after` names a record already seen: start past it.
        if seq == from_seq && after > 0 {
            match decode(&buf, at) {
                Some(r) => at = r.next,
                None => continue,
            }
        }
        while let Some(r) = decode(&buf, at) {
            if out.len() == limit {
                return Ok((out, next));
            }
            next = position(seq, base + at as u64);
            if select.admits(r.context, r.kind) {
                out.push(Record {
                    context: r.context.to_string(),
                    position: next,
                    at_ms: r.at_ms as i64,
                    kind: r.kind,
                    data: r.data.to_vec(),
                });
            }
            at = r.next;
        }
    }
    Ok((out, next))
}

/// A chunk of output as lines: split at newlines (a carriage return
/// before one is dropped, as a terminal prints it); the piece after the
/// last newline is a line of its own.
fn lines(data: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(data);
    let text = text.strip_suffix('\n').unwrap_or(&text);
    text.split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l).to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use sandstone_api::logs::encode;

    fn write(dir: &Path, seq: u64, records: &[(u64, Kind, &str, &str)]) {
        let mut buf = Vec::new();
        for (at, kind, ctx, data) in records {
            buf.extend(encode(*at, *kind, ctx, data.as_bytes()));
        }
        std::fs::write(dir.join(segment_name(seq)), buf).unwrap();
    }

    fn texts(lines: &[Line]) -> Vec<&str> {
        lines.iter().map(|l| l.text.as_str()).collect()
    }

    #[test]
    fn exits_are_read_across_contexts_from_the_last_record_on() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(last_position(d.path()).unwrap(), 0);
        write(
            d.path(),
            1,
            &[
                (10, Kind::Stdout, "a", "one\n"),
                (11, Kind::Exit, "a", "0"),
                (12, Kind::Exit, "b", "3"),
            ],
        );
        // The newest segment is empty yet: the last record is in the one
        // before.
        write(d.path(), 2, &[]);
        let last = last_position(d.path()).unwrap();
        let (all, _) = records(d.path(), Select::Exits, 0, 10).unwrap();
        let seen: Vec<(&str, &[u8])> = all
            .iter()
            .map(|r| (r.context.as_str(), r.data.as_slice()))
            .collect();
        assert_eq!(seen, [("a", &b"0"[..]), ("b", &b"3"[..])]);
        assert_eq!(all[1].position, last);
        assert!(
            records(d.path(), Select::Exits, last, 10)
                .unwrap()
                .0
                .is_empty()
        );
        write(d.path(), 2, &[(20, Kind::Exit, "c", "")]);
        let (after, _) = records(d.path(), Select::Exits, last, 10).unwrap();
        assert_eq!(after.len(), 1);
        assert_eq!((after[0].context.as_str(), after[0].data.len()), ("c", 0));
    }

    #[test]
    fn lines_are_paged_filtered_and_tailed_across_segments() {
        let d = tempfile::tempdir().unwrap();
        write(
            d.path(),
            3,
            &[
                (10, Kind::Stdout, "a", "one\ntwo\n"),
                (11, Kind::Stderr, "b", "oops\r\n"),
            ],
        );
        write(
            d.path(),
            4,
            &[(20, Kind::Stdout, "a", "three"), (21, Kind::Exit, "a", "0")],
        );
        let q = |f: fn(&mut LogQuery)| {
            let mut q = LogQuery {
                limit: 100,
                ..Default::default()
            };
            f(&mut q);
            q
        };
        // The latest lines, oldest first.
        let (tail, end_at) = read(d.path(), &q(|q| q.limit = 2)).unwrap();
        assert_eq!(texts(&tail), ["three", "0"]);
        assert_eq!(tail[1].stream, None);
        assert_eq!(end_at, end(d.path()).unwrap());
        // Paging from the start, two at a time, picks up mid-record.
        let mut seen = Vec::new();
        let mut after = Some(Cursor::default());
        loop {
            let (page, next) = read(
                d.path(),
                &LogQuery {
                    after,
                    limit: 2,
                    ..Default::default()
                },
            )
            .unwrap();
            if page.is_empty() {
                break;
            }
            seen.extend(page.into_iter().map(|l| l.text));
            after = Some(next);
        }
        assert_eq!(seen, ["one", "two", "oops", "three", "0"]);
        // Filters: a context, a stream (exits have none), a time range.
        let only = |f: fn(&mut LogQuery)| {
            let mut query = q(f);
            query.after = Some(Cursor::default());
            texts(&read(d.path(), &query).unwrap().0)
                .into_iter()
                .map(String::from)
                .collect::<Vec<_>>()
        };
        assert_eq!(only(|q| q.context = Some("b".into())), ["oops"]);
        assert_eq!(
            only(|q| q.stream = Some(LogStream::Stdout)),
            ["one", "two", "three"]
        );
        assert_eq!(
            only(|q| {
                q.start_ms = Some(11);
                q.end_ms = Some(20)
            }),
            ["oops", "three"]
        );
        // A torn last record is not read yet.
        let seg = d.path().join(segment_name(4));
        let mut bytes = std::fs::read(&seg).unwrap();
        bytes.extend(&encode(30, Kind::Stdout, "a", b"half")[..10]);
        std::fs::write(&seg, bytes).unwrap();
        assert_eq!(
            texts(&read(d.path(), &q(|q| q.limit = 1)).unwrap().0),
            ["0"]
        );
    }
}
