//! Restoring a checkpoint: validate the manifest, build the tree in a
//! temporary directory beside the destination, and fill its files with
//! verified chunks: those in this node's cache first, then the rest read
//! out of their packs in byte ranges that merge neighbouring chunks (a
//! pack holds a file's chunks in order, so a cold restore reads packs
//! nearly whole), several ranges at once, each opened, verified and
//! written into its files as it arrives. Then metadata is set, children
//! first, and the whole renamed into place. Until that rename nothing is
//! written at the destination; on any failure the temporary tree is
//! removed.

use crate::fsmeta::{self, Node};
use crate::manifest::{
    CheckpointId, ChunkId, ChunkRef, Entry, FileContent, Kind, Manifest, OsBytes, Timestamp,
};
use crate::pack::{Location, PackId};
use crate::{Checkpoints, Error, Result, StoreError, blocking, io, object};
use futures_util::{StreamExt, TryStreamExt};
use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Two wanted chunks of a pack are read in one request when at most this
/// many bytes lie between them: reading a little unwanted data costs
/// less than another request.
const MAX_GAP: u64 = 1 << 20;
/// One read covers at most this much, so that `concurrency` reads in
/// flight hold tens of megabytes, not the whole checkpoint.
const MAX_RANGE: u64 = 8 << 20;
/// Cached chunks are opened and written this many per blocking task.
const CACHED_BATCH: usize = 64;

/// What a restore did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RestoreStats {
    pub entries: u64,
    pub files: u64,
    /// File data written (holes excluded).
    pub bytes_written: u64,
    /// Chunk references filled from the store (a chunk named twice is
    /// fetched once and counted twice), and the bytes read from the store
    /// (sealed chunks, and any gaps between them read in the same range).
    pub chunks_fetched: u64,
    pub bytes_fetched: u64,
    /// Chunk references filled from this node's cache.
    pub chunks_cached: u64,
}

/// A restored tree.
#[derive(Clone, Debug)]
pub struct Restored {
    /// The manifest with this node's inode numbers and ctimes: pass it as
    /// `previous` to the next checkpoint of this tree on this node, so
    /// that unchanged files are not read.
    pub baseline: Manifest,
    pub stats: RestoreStats,
}

/// The files a restore writes into, and the distinct chunks that go in
/// them.
#[derive(Default)]
pub(crate) struct Plan {
    files: Vec<PathBuf>,
    wanted: Vec<Wanted>,
    seen: HashMap<ChunkId, usize>,
}

impl Plan {
    /// Adds the file at `path` and the chunks to write into it, each at
    /// its offset.
    pub(crate) fn file(
        &mut self,
        path: PathBuf,
        chunks: impl IntoIterator<Item = (u64, ChunkRef)>,
    ) {
        let index = self.files.len();
        for (offset, chunk) in chunks {
            let at = *self.seen.entry(chunk.id).or_insert_with(|| {
                self.wanted.push(Wanted {
                    id: chunk.id,
                    len: chunk.len,
                    targets: Vec::new(),
                });
                self.wanted.len() - 1
            });
            self.wanted[at].targets.push((index, offset));
        }
        self.files.push(path);
    }
}

/// Each chunk of a file with its offset.
pub(crate) fn chunks_at(f: &FileContent) -> impl Iterator<Item = (u64, ChunkRef)> + '_ {
    f.extents.iter().flat_map(|x| {
        x.chunks.iter().scan(x.offset, |offset, c| {
            let at = *offset;
            *offset += u64::from(c.len);
            Some((at, *c))
        })
    })
}

/// A distinct chunk of the manifest and every place it goes: (index into
/// the file list, offset).
struct Wanted {
    id: ChunkId,
    len: u32,
    targets: Vec<(usize, u64)>,
}

/// A byte range of one pack, and the wanted chunks in it.
struct Span {
    pack: PackId,
    start: u64,
    end: u64,
    chunks: Vec<(Wanted, Location)>,
}

/// What part of a restore wrote: bytes written, chunk references filled,
/// bytes read from the store.
#[derive(Default)]
struct Filled {
    written: u64,
    refs: u64,
    fetched: u64,
}

/// The restored files, written chunk by chunk; the last few stay open.
struct Files<'a> {
    paths: &'a [PathBuf],
    open: Vec<(usize, std::fs::File)>,
}

impl Files<'_> {
    fn new(paths: &[PathBuf]) -> Files<'_> {
        Files {
            paths,
            open: Vec::new(),
        }
    }

    /// Writes a chunk's plaintext everywhere it goes; the bytes written.
    fn write(&mut self, wanted: &Wanted, data: &[u8]) -> Result<u64> {
        for &(index, offset) in &wanted.targets {
            let path = &self.paths[index];
            let at = match self.open.iter().position(|(i, _)| *i == index) {
                Some(at) => at,
                None => {
                    if self.open.len() == 8 {
                        self.open.remove(0);
                    }
                    let f = std::fs::OpenOptions::new()
                        .write(true)
                        .open(path)
                        .map_err(io(format!("open {path:?}")))?;
                    self.open.push((index, f));
                    self.open.len() - 1
                }
            };
            self.open[at]
                .1
                .write_all_at(data, offset)
                .map_err(io(format!("write {path:?}")))?;
        }
        Ok(data.len() as u64 * wanted.targets.len() as u64)
    }
}

/// Groups chunks to fetch into ranges of their packs: sorted by pack and
/// offset, neighbours merged while the gap and the range stay small.
fn spans(chunks: Vec<(Wanted, Location)>) -> Vec<Span> {
    let mut chunks = chunks;
    chunks.sort_by_key(|(_, at)| (at.pack, at.offset));
    let mut out: Vec<Span> = Vec::new();
    for (wanted, at) in chunks {
        let start = u64::from(at.offset);
        match out.last_mut() {
            Some(span)
                if span.pack == at.pack
                    && start >= span.end
                    && start - span.end <= MAX_GAP
                    && at.end() - span.start <= MAX_RANGE =>
            {
                span.end = at.end();
                span.chunks.push((wanted, at));
            }
            _ => out.push(Span {
                pack: at.pack,
                start,
                end: at.end(),
                chunks: vec![(wanted, at)],
            }),
        }
    }
    out
}

impl Checkpoints {
    /// Restores checkpoint `id` at `dest`, which must not exist or be an
    /// empty directory, on the same file system as its parent (the
    /// temporary tree is made there and renamed over it). A failed restore
    /// removes its temporary tree; a crash leaves `.<name>.restore-<hex>`
    /// beside the destination, for the caller's recovery to remove.
    pub async fn restore(&self, id: &CheckpointId, dest: &Path) -> Result<Restored> {
        let (manifest, located) = self.load(id).await?;
        let manifest = Arc::new(manifest);
        validate(&manifest).map_err(|reason| Error::InvalidManifest {
            checkpoint: id.clone(),
            reason,
        })?;
        let tmp = blocking({
            let dest = dest.to_path_buf();
            move || temporary_beside(&dest)
        })
        .await?;
        let outcome = self.materialise(id, manifest, located, &tmp, dest).await;
        if outcome.is_err() {
            let tmp = tmp.clone();
            let removed = blocking(move || {
                std::fs::remove_dir_all(&tmp).map_err(io(format!("remove {tmp:?}")))
            })
            .await;
            if let Err(e) = removed {
                tracing::warn!("restore of {id} failed and left a temporary tree: {e}");
            }
        }
        outcome
    }

    async fn materialise(
        &self,
        id: &CheckpointId,
        manifest: Arc<Manifest>,
        located: HashMap<ChunkId, Location>,
        tmp: &Path,
        dest: &Path,
    ) -> Result<Restored> {
        let plan = blocking({
            let (manifest, tmp) = (manifest.clone(), tmp.to_path_buf());
            move || skeleton(&manifest, &tmp)
        })
        .await?;
        let stats = self.fill(id, &located, &manifest, plan).await?;
        let baseline = blocking({
            let (manifest, tmp, dest) = (manifest.clone(), tmp.to_path_buf(), dest.to_path_buf());
            move || {
                for e in manifest.entries.iter().rev() {
                    set_metadata(&tmp, e, &[])?;
                }
                let baseline = baseline(&manifest, &tmp)?;
                std::fs::rename(&tmp, &dest).map_err(io(format!("rename {tmp:?} to {dest:?}")))?;
                Ok(baseline)
            }
        })
        .await?;
        log_restored(id, &stats);
        Ok(Restored { baseline, stats })
    }

    /// Writes every chunk of `plan` into its files: those in this node's
    /// cache first (a cached chunk that fails to open is fetched), then
    /// the rest from the store. What it did, for a restore of `manifest`.
    pub(crate) async fn fill(
        &self,
        id: &CheckpointId,
        located: &HashMap<ChunkId, Location>,
        manifest: &Manifest,
        plan: Plan,
    ) -> Result<RestoreStats> {
        let mut stats = RestoreStats {
            entries: manifest.entries.len() as u64,
            files: plan.files.len() as u64,
            ..RestoreStats::default()
        };
        let Plan { files, wanted, .. } = plan;
        let files = Arc::new(files);
        let concurrency = self.inner.concurrency;

        let (cached, mut missing): (Vec<Wanted>, Vec<Wanted>) = wanted
            .into_iter()
            .partition(|w| self.inner.cache.contains(&w.id));
        let mut batches = Vec::new();
        let mut cached = cached.into_iter().peekable();
        while cached.peek().is_some() {
            batches.push(cached.by_ref().take(CACHED_BATCH).collect::<Vec<_>>());
        }
        let from_cache = futures_util::stream::iter(batches)
            .map(|batch| {
                let (inner, files) = (self.inner.clone(), files.clone());
                blocking(move || {
                    let mut out = Files::new(&files);
                    let (mut filled, mut refetch) = (Filled::default(), Vec::new());
                    for w in batch {
                        let plain = inner.cache.get(&w.id).and_then(|sealed| {
                            object::open_chunk(&inner.keys, &w.id, w.len, &sealed)
                                .inspect_err(|e| {
                                    tracing::warn!(
                                        "cached chunk {} is bad ({e}); fetching it again",
                                        w.id
                                    );
                                    inner.cache.remove(&w.id);
                                })
                                .ok()
                        });
                        match plain {
                            Some(plain) => {
                                filled.written += out.write(&w, &plain)?;
                                filled.refs += w.targets.len() as u64;
                            }
                            None => refetch.push(w),
                        }
                    }
                    Ok((filled, refetch))
                })
            })
            .buffer_unordered(concurrency)
            .try_collect::<Vec<_>>()
            .await?;
        for (filled, refetch) in from_cache {
            stats.bytes_written += filled.written;
            stats.chunks_cached += filled.refs;
            missing.extend(refetch);
        }

        let mut to_fetch = Vec::with_capacity(missing.len());
        for w in missing {
            let at = *located.get(&w.id).ok_or_else(|| Error::InvalidManifest {
                checkpoint: id.clone(),
                reason: format!("chunk {} is not located", w.id),
            })?;
            to_fetch.push((w, at));
        }
        let fetched = futures_util::stream::iter(spans(to_fetch))
            .map(|span| self.fetch(id, span, files.clone()))
            .buffer_unordered(concurrency)
            .try_fold(Filled::default(), |mut total, f| async move {
                total.written += f.written;
                total.refs += f.refs;
                total.fetched += f.fetched;
                Ok(total)
            })
            .await?;
        stats.bytes_written += fetched.written;
        stats.chunks_fetched += fetched.refs;
        stats.bytes_fetched += fetched.fetched;
        Ok(stats)
    }

    /// Reads a span of a pack, then opens and verifies each chunk in it,
    /// caches it and writes it into its files.
    async fn fetch(
        &self,
        checkpoint: &CheckpointId,
        span: Span,
        files: Arc<Vec<PathBuf>>,
    ) -> Result<Filled> {
        let first = span.chunks[0].0.id;
        let data = match self
            .inner
            .blobs
            .get_range(&span.pack.key(), span.start..span.end)
            .await
        {
            Err(StoreError::NotFound { store, .. }) => {
                return Err(Error::MissingChunk {
                    chunk: first,
                    checkpoint: checkpoint.clone(),
                    store,
                });
            }
            r => r?,
        };
        let inner = self.inner.clone();
        let checkpoint = checkpoint.clone();
        blocking(move || {
            let mut out = Files::new(&files);
            let mut filled = Filled {
                fetched: data.len() as u64,
                ..Filled::default()
            };
            for (w, at) in &span.chunks {
                let from = (u64::from(at.offset) - span.start) as usize;
                let corrupt = |reason| Error::CorruptChunk {
                    chunk: w.id,
                    checkpoint: checkpoint.clone(),
                    reason,
                };
                // A pack cut short leaves its last chunks truncated.
                let sealed = data
                    .get(from..from + at.len as usize)
                    .ok_or_else(|| corrupt(object::ObjectError::NotSealed("chunk")))?;
                let plain =
                    object::open_chunk(&inner.keys, &w.id, w.len, sealed).map_err(corrupt)?;
                if let Err(e) = inner.cache.put(&w.id, sealed) {
                    tracing::warn!("could not cache chunk {}: {e}", w.id);
                }
                filled.written += out.write(w, &plain)?;
                filled.refs += w.targets.len() as u64;
            }
            Ok(filled)
        })
        .await
    }
}

/// A manifest path as a path under `root`.
pub(crate) fn under(root: &Path, path: &OsBytes) -> PathBuf {
    if path.0.is_empty() {
        root.to_path_buf()
    } else {
        root.join(OsStr::from_bytes(&path.0))
    }
}

/// Checks that the manifest describes a tree that stays under its root:
/// relative, normal paths, each in a directory listed before it, no path
/// twice, hard links to non-directories listed before, extents inside
/// their file. (A manifest is authenticated, so this guards against bugs
/// more than attackers; a symlink followed while restoring would write
/// outside the tree.)
pub(crate) fn validate(m: &Manifest) -> std::result::Result<(), String> {
    let mut dirs: HashSet<&[u8]> = HashSet::new();
    let mut others: HashSet<&[u8]> = HashSet::new();
    let placed = |path: &OsBytes, dirs: &HashSet<&[u8]>, others: &HashSet<&[u8]>| {
        let p = path.0.as_slice();
        let normal = p
            .split(|b| *b == b'/')
            .all(|c| !c.is_empty() && c != b"." && c != b"..");
        let parent = p
            .iter()
            .rposition(|b| *b == b'/')
            .map_or(&p[..0], |at| &p[..at]);
        if !normal || p.contains(&0) {
            Err(format!("path {path:?} is not a normal relative path"))
        } else if !dirs.contains(parent) {
            Err(format!("{path:?} is not in a directory listed before it"))
        } else if dirs.contains(p) || others.contains(p) {
            Err(format!("{path:?} is listed twice"))
        } else {
            Ok(())
        }
    };
    match m.entries.first() {
        Some(root) if root.path.0.is_empty() && root.kind == Kind::Dir => {
            dirs.insert(&[]);
        }
        _ => return Err("the first entry is not the root directory".into()),
    }
    for e in &m.entries[1..] {
        placed(&e.path, &dirs, &others)?;
        if let Kind::File(f) = &e.kind {
            let mut end = 0;
            for x in &f.extents {
                let len: u64 = x.chunks.iter().map(|c| u64::from(c.len)).sum();
                if x.offset < end || x.offset + len > f.size {
                    return Err(format!("{:?}: extents overlap or pass its size", e.path));
                }
                end = x.offset + len;
            }
        }
        if e.kind == Kind::Dir {
            dirs.insert(&e.path.0);
        } else {
            others.insert(&e.path.0);
        }
    }
    for link in &m.hard_links {
        placed(&link.path, &dirs, &others)?;
        if !others.contains(link.target.0.as_slice()) {
            return Err(format!(
                "hard link {:?} points at {:?}, not a file listed before",
                link.path, link.target
            ));
        }
        others.insert(&link.path.0);
    }
    Ok(())
}

/// Checks the destination and makes an empty private directory beside it.
fn temporary_beside(dest: &Path) -> Result<PathBuf> {
    match std::fs::symlink_metadata(dest) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(format!("stat {dest:?}"))(e)),
        Ok(m) if m.is_dir() => {
            let mut entries = std::fs::read_dir(dest).map_err(io(format!("list {dest:?}")))?;
            if entries.next().is_some() {
                return Err(Error::DestinationInUse(dest.to_path_buf()));
            }
        }
        Ok(_) => return Err(Error::DestinationInUse(dest.to_path_buf())),
    }
    let (Some(parent), Some(name)) = (dest.parent(), dest.file_name()) else {
        return Err(Error::DestinationInUse(dest.to_path_buf()));
    };
    let tmp = parent.join(format!(
        ".{}.restore-{}",
        name.to_string_lossy(),
        hex::encode(crate::key::random::<8>()?)
    ));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&tmp)
        .map_err(io(format!("create {tmp:?}")))?;
    Ok(tmp)
}

/// Creates every entry (files at their full size, all holes) under
/// `root`, which exists; the files to fill.
fn skeleton(m: &Manifest, root: &Path) -> Result<Plan> {
    let mut plan = Plan::default();
    for e in &m.entries[1..] {
        let path = under(root, &e.path);
        create(e, &path).map_err(io(format!("create {path:?}")))?;
        if let Kind::File(f) = &e.kind {
            plan.file(path, chunks_at(f));
        }
    }
    for link in &m.hard_links {
        let (path, target) = (under(root, &link.path), under(root, &link.target));
        std::fs::hard_link(&target, &path).map_err(io(format!("link {path:?} to {target:?}")))?;
    }
    Ok(plan)
}

/// Makes entry `e` at `path`, owner-only until [`set_metadata`]: a file
/// at its full size, all hole.
pub(crate) fn create(e: &Entry, path: &Path) -> std::io::Result<()> {
    match &e.kind {
        Kind::Dir => std::fs::DirBuilder::new().mode(0o700).create(path),
        Kind::File(f) => std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .and_then(|file| file.set_len(f.size)),
        Kind::Symlink { target } => std::os::unix::fs::symlink(OsStr::from_bytes(&target.0), path),
        Kind::CharDevice { rdev } => fsmeta::mknod(path, Node::Char, 0o600, *rdev),
        Kind::BlockDevice { rdev } => fsmeta::mknod(path, Node::Block, 0o600, *rdev),
        Kind::Fifo => fsmeta::mknod(path, Node::Fifo, 0o600, 0),
        Kind::Socket => fsmeta::mknod(path, Node::Socket, 0o600, 0),
    }
}

/// Sets entry `e`'s owner, mode, xattrs (removing those named in
/// `stale`) and times. Called children before their directory, so that a
/// directory's times are set after its last change.
pub(crate) fn set_metadata(root: &Path, e: &Entry, stale: &[&OsBytes]) -> Result<()> {
    let path = under(root, &e.path);
    let what = |op: &str| format!("{op} {path:?}");
    // Owner first: chown clears setuid/setgid and file capabilities.
    std::os::unix::fs::lchown(&path, Some(e.uid), Some(e.gid)).map_err(io(what("chown")))?;
    if !matches!(e.kind, Kind::Symlink { .. }) {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(e.mode))
            .map_err(io(what("chmod")))?;
    }
    for name in stale {
        fsmeta::remove_xattr(&path, name)
            .map_err(io(format!("remove xattr {name:?} from {path:?}")))?;
    }
    for x in &e.xattrs {
        fsmeta::set_xattr(&path, x).map_err(io(format!("set xattr {:?} on {path:?}", x.name)))?;
    }
    fsmeta::set_times(&path, e.atime, e.mtime).map_err(io(what("set times of")))
}

/// `m` with each file's inode number and ctime as restored under `root`:
/// what lets the next checkpoint on this node skip unchanged files.
pub(crate) fn baseline(m: &Manifest, root: &Path) -> Result<Manifest> {
    let mut baseline = m.clone();
    for e in &mut baseline.entries {
        if let Kind::File(f) = &mut e.kind {
            let path = under(root, &e.path);
            let meta = std::fs::symlink_metadata(&path).map_err(io(format!("stat {path:?}")))?;
            f.ino = meta.ino();
            f.ctime = Timestamp::from_stat(meta.ctime(), meta.ctime_nsec());
        }
    }
    Ok(baseline)
}

pub(crate) fn log_restored(id: &CheckpointId, stats: &RestoreStats) {
    tracing::info!(
        checkpoint = %id,
        files = stats.files,
        written = stats.bytes_written,
        fetched = stats.bytes_fetched,
        cached = stats.chunks_cached,
        "checkpoint restored"
    );
}
