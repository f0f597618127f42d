//! Restoring a checkpoint: validate the manifest, build the tree in a
//! temporary directory beside the destination, fill files with verified
//! chunks (cache first, then the store, several at once), set metadata
//! children first, and rename the whole into place. Until that rename
//! nothing is written at the destination; on any failure the temporary
//! tree is removed.

use crate::fsmeta::{self, Node};
use crate::manifest::{CheckpointId, ChunkRef, Kind, Manifest, OsBytes, Timestamp};
use crate::{Checkpoints, Error, Result, StoreError, blocking, io, object};
use futures_util::StreamExt;
use std::collections::HashSet;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::mpsc;

/// What a restore did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RestoreStats {
    pub entries: u64,
    pub files: u64,
    /// File data written (holes excluded).
    pub bytes_written: u64,
    /// Chunks downloaded from the store, and their sealed size.
    pub chunks_fetched: u64,
    pub bytes_fetched: u64,
    /// Chunks found in this node's cache.
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

/// One chunk to write: which file (index into the file list), where.
struct Job {
    file: usize,
    offset: u64,
    chunk: ChunkRef,
}

/// Where a chunk came from.
enum Source {
    Cache,
    /// The store, this many sealed bytes.
    Store(u64),
}

impl Checkpoints {
    /// Restores checkpoint `id` at `dest`, which must not exist or be an
    /// empty directory, on the same file system as its parent (the
    /// temporary tree is made there and renamed over it). A failed restore
    /// removes its temporary tree; a crash leaves `.<name>.restore-<hex>`
    /// beside the destination, for the caller's recovery to remove.
    pub async fn restore(&self, id: &CheckpointId, dest: &Path) -> Result<Restored> {
        let manifest = Arc::new(self.manifest(id).await?);
        validate(&manifest).map_err(|reason| Error::InvalidManifest {
            checkpoint: id.clone(),
            reason,
        })?;
        let tmp = blocking({
            let dest = dest.to_path_buf();
            move || temporary_beside(&dest)
        })
        .await?;
        let outcome = self.materialise(id, manifest, &tmp, dest).await;
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
        tmp: &Path,
        dest: &Path,
    ) -> Result<Restored> {
        let (files, jobs) = blocking({
            let (manifest, tmp) = (manifest.clone(), tmp.to_path_buf());
            move || skeleton(&manifest, &tmp)
        })
        .await?;
        let mut stats = RestoreStats {
            entries: manifest.entries.len() as u64,
            files: files.len() as u64,
            ..RestoreStats::default()
        };

        // Chunks arrive in order (`buffered`), so the writer has one file
        // open at a time.
        let (tx, mut rx) = mpsc::channel::<(usize, u64, Vec<u8>)>(self.inner.concurrency * 2);
        let writer = tokio::task::spawn_blocking(move || {
            let mut open: Option<(usize, std::fs::File)> = None;
            let mut written = 0u64;
            while let Some((index, offset, data)) = rx.blocking_recv() {
                let path = &files[index];
                let file = match &mut open {
                    Some((i, f)) if *i == index => f,
                    slot => {
                        let f = std::fs::OpenOptions::new()
                            .write(true)
                            .open(path)
                            .map_err(io(format!("open {path:?}")))?;
                        &mut slot.insert((index, f)).1
                    }
                };
                file.write_all_at(&data, offset)
                    .map_err(io(format!("write {path:?}")))?;
                written += data.len() as u64;
            }
            Ok::<_, Error>(written)
        });
        let fetched = async {
            let fetches = futures_util::stream::iter(jobs)
                .map(|job| async move {
                    let (data, source) = self.fetch(id, job.chunk).await?;
                    Ok::<_, Error>((job, data, source))
                })
                .buffered(self.inner.concurrency);
            let mut fetches = std::pin::pin!(fetches);
            while let Some(next) = fetches.next().await {
                let (job, data, source) = next?;
                match source {
                    Source::Cache => stats.chunks_cached += 1,
                    Source::Store(bytes) => {
                        stats.chunks_fetched += 1;
                        stats.bytes_fetched += bytes;
                    }
                }
                if tx.send((job.file, job.offset, data)).await.is_err() {
                    break; // the writer failed; its error is reported below
                }
            }
            drop(tx);
            Ok::<_, Error>(())
        }
        .await;
        let written = writer
            .await
            .map_err(|e| io("the file writer")(std::io::Error::other(e.to_string())))?;
        stats.bytes_written = written?;
        fetched?;

        let baseline = blocking({
            let (manifest, tmp, dest) = (manifest.clone(), tmp.to_path_buf(), dest.to_path_buf());
            move || {
                let baseline = finish(&manifest, &tmp)?;
                std::fs::rename(&tmp, &dest).map_err(io(format!("rename {tmp:?} to {dest:?}")))?;
                Ok(baseline)
            }
        })
        .await?;
        tracing::info!(
            checkpoint = %id,
            files = stats.files,
            written = stats.bytes_written,
            fetched = stats.bytes_fetched,
            cached = stats.chunks_cached,
            "checkpoint restored"
        );
        Ok(Restored { baseline, stats })
    }

    /// A chunk's plaintext: from the cache if it is there and sound, else
    /// from the store (then cached).
    async fn fetch(&self, checkpoint: &CheckpointId, chunk: ChunkRef) -> Result<(Vec<u8>, Source)> {
        let inner = self.inner.clone();
        let cached = blocking(move || {
            let sealed = inner.cache.get(&chunk.id);
            Ok(sealed.and_then(|sealed| {
                match object::open_chunk(&inner.keys, &chunk.id, chunk.len, &sealed) {
                    Ok(plain) => Some(plain),
                    Err(e) => {
                        tracing::warn!("cached chunk {} is bad ({e}); fetching it again", chunk.id);
                        inner.cache.remove(&chunk.id);
                        None
                    }
                }
            }))
        })
        .await?;
        if let Some(plain) = cached {
            return Ok((plain, Source::Cache));
        }
        let sealed = match self.inner.blobs.get(&chunk.id.key()).await {
            Err(StoreError::NotFound { store, .. }) => {
                return Err(Error::MissingChunk {
                    chunk: chunk.id,
                    checkpoint: checkpoint.clone(),
                    store,
                });
            }
            r => r?,
        };
        let size = sealed.len() as u64;
        let inner = self.inner.clone();
        let checkpoint = checkpoint.clone();
        let plain = blocking(move || {
            let plain = object::open_chunk(&inner.keys, &chunk.id, chunk.len, &sealed).map_err(
                |reason| Error::CorruptChunk {
                    chunk: chunk.id,
                    checkpoint,
                    reason,
                },
            )?;
            if let Err(e) = inner.cache.put(&chunk.id, &sealed) {
                tracing::warn!("could not cache chunk {}: {e}", chunk.id);
            }
            Ok(plain)
        })
        .await?;
        Ok((plain, Source::Store(size)))
    }
}

/// A manifest path as a path under `root`.
fn under(root: &Path, path: &OsBytes) -> PathBuf {
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
fn validate(m: &Manifest) -> std::result::Result<(), String> {
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
/// `root`, which exists; the files' paths and the chunks to write.
fn skeleton(m: &Manifest, root: &Path) -> Result<(Vec<PathBuf>, Vec<Job>)> {
    let mut files = Vec::new();
    let mut jobs = Vec::new();
    for e in &m.entries[1..] {
        let path = under(root, &e.path);
        let made = match &e.kind {
            Kind::Dir => std::fs::DirBuilder::new().mode(0o700).create(&path),
            Kind::File(f) => std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .and_then(|file| file.set_len(f.size))
                .map(|()| {
                    for x in &f.extents {
                        let mut offset = x.offset;
                        for chunk in &x.chunks {
                            jobs.push(Job {
                                file: files.len(),
                                offset,
                                chunk: *chunk,
                            });
                            offset += u64::from(chunk.len);
                        }
                    }
                    files.push(path.clone());
                }),
            Kind::Symlink { target } => {
                std::os::unix::fs::symlink(OsStr::from_bytes(&target.0), &path)
            }
            Kind::CharDevice { rdev } => fsmeta::mknod(&path, Node::Char, 0o600, *rdev),
            Kind::BlockDevice { rdev } => fsmeta::mknod(&path, Node::Block, 0o600, *rdev),
            Kind::Fifo => fsmeta::mknod(&path, Node::Fifo, 0o600, 0),
            Kind::Socket => fsmeta::mknod(&path, Node::Socket, 0o600, 0),
        };
        made.map_err(io(format!("create {path:?}")))?;
    }
    for link in &m.hard_links {
        let (path, target) = (under(root, &link.path), under(root, &link.target));
        std::fs::hard_link(&target, &path).map_err(io(format!("link {path:?} to {target:?}")))?;
    }
    Ok((files, jobs))
}

/// Sets owners, modes, xattrs and times, children before their directory
/// (so a directory's times are set after its last change), then reads
/// back each file's new inode number and ctime for the baseline.
fn finish(m: &Manifest, root: &Path) -> Result<Manifest> {
    for e in m.entries.iter().rev() {
        let path = under(root, &e.path);
        let what = |op: &str| format!("{op} {path:?}");
        // Owner first: chown clears setuid/setgid and file capabilities.
        std::os::unix::fs::lchown(&path, Some(e.uid), Some(e.gid)).map_err(io(what("chown")))?;
        if !matches!(e.kind, Kind::Symlink { .. }) {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(e.mode))
                .map_err(io(what("chmod")))?;
        }
        for x in &e.xattrs {
            fsmeta::set_xattr(&path, x)
                .map_err(io(format!("set xattr {:?} on {path:?}", x.name)))?;
        }
        fsmeta::set_times(&path, e.atime, e.mtime).map_err(io(what("set times of")))?;
    }
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
