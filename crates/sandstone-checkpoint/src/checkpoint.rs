//! Writing a checkpoint: forget the packs the collector marked, walk the
//! tree and chunk what changed on one
//! blocking thread while the fence is checked and other nodes' new packs
//! are learnt, seal new chunks concurrently and append them into packs,
//! upload the packs several at once, then their indexes beside the last
//! fence check, and the manifest last.

use crate::manifest::{
    self, CheckpointId, ChunkId, ChunkRef, Entry, Extent, FileContent, HardLink, Kind, Manifest,
    OsBytes, Timestamp,
};
use crate::pack::{INDEX_FOLDER, PackBuilder, PackId, PackTable};
use crate::{Checkpoints, Error, Inner, Result, StoreError, blocking, fsmeta, io, object};
use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use std::collections::{HashMap, HashSet, hash_map};
use std::fs::Metadata;
use std::io::{Read, Seek};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tokio::sync::mpsc;

/// How far behind the newest pack index it has seen a node lists again:
/// indexes are named by their writer's clock, and nodes' clocks differ.
const CLOCK_MARGIN_MS: u64 = 10 * 60 * 1000;

/// FastCDC's bounds: a 64 KiB average keeps a 1 GiB tree at ~16k chunks
/// (a manifest of about a megabyte) while a small edit re-uploads little.
const MIN_CHUNK: usize = 16 << 10;
const AVG_CHUNK: usize = 64 << 10;
const MAX_CHUNK: usize = 256 << 10;

/// What a checkpoint did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CheckpointStats {
    /// Inodes in the manifest (hard links not counted).
    pub entries: u64,
    pub files: u64,
    /// Regular files whose chunk list was taken from the previous
    /// manifest without reading them.
    pub files_unchanged: u64,
    pub bytes_read: u64,
    /// New chunks, uploaded in packs.
    pub chunks_uploaded: u64,
    /// Bytes sent: packs, their indexes and the manifest.
    pub bytes_uploaded: u64,
    /// Chunk references that needed no upload (already stored, or a repeat
    /// within this checkpoint).
    pub chunks_reused: u64,
}

/// A checkpoint written: its manifest (pass it as `previous` next time)
/// and what it took.
#[derive(Clone, Debug)]
pub struct Checkpointed {
    pub manifest: Manifest,
    pub stats: CheckpointStats,
}

/// A chunk the store may not have yet.
struct NewChunk {
    id: ChunkId,
    data: Vec<u8>,
}

/// What the packer uploaded, and the sealed indexes of its packs (stored
/// after all the packs, beside the manifest's last steps: only other
/// nodes read them).
#[derive(Default)]
struct Uploaded {
    chunks: u64,
    bytes: u64,
    /// Chunks the walker offered that turned out to be stored already.
    known: u64,
    indexes: Vec<(PackId, Vec<u8>)>,
}

impl Checkpoints {
    /// Checkpoints the tree at `tree` as `id`. With `previous` (this
    /// sandbox's last manifest, or the baseline of its restore on this
    /// node) unchanged files are not read again.
    pub async fn checkpoint(
        &self,
        tree: &Path,
        id: &CheckpointId,
        previous: Option<&Manifest>,
    ) -> Result<Checkpointed> {
        // Before the walk, which skips chunks the index knows: forgetting
        // a pack under it would leave a chunk neither stored nor sent.
        self.forget_collected().await?;
        let (tx, rx) = mpsc::channel(self.inner.concurrency * 2);
        let walker = Walker::new(self.inner.clone(), tx, previous);
        let root = tree.to_path_buf();
        // The walk starts at once; its chunks wait in the channel until
        // the checks below pass (a refusal drops the channel, which stops
        // the walk). The packer looks each chunk up again, so those the
        // sync finds stored are not uploaded.
        let walked = tokio::task::spawn_blocking(move || walker.run(&root));
        // Refuse early, before uploading anything, and again before the
        // manifest.
        let (fence, synced) =
            futures_util::future::join(self.check_fence(id), self.sync_index()).await;
        fence?;
        synced?;
        let uploaded = self.pack_and_upload(rx).await;
        // An upload failure stops the walker (its channel closes); report
        // the cause, not the walker's "stopped".
        let walked = walked
            .await
            .map_err(|e| io("the tree walk")(std::io::Error::other(e.to_string())));
        let uploaded = uploaded?;
        let (entries, hard_links, mut stats) = walked??;
        stats.chunks_uploaded += uploaded.chunks;
        stats.bytes_uploaded += uploaded.bytes;
        stats.chunks_reused += uploaded.known;

        let manifest = Manifest {
            format: manifest::FORMAT,
            id: id.clone(),
            created_unix_ms: sandstone_api::timefmt::now_ms() as u64,
            entries,
            hard_links,
        };
        let inner = self.inner.clone();
        let checkpoint = id.clone();
        let sealing = blocking(move || {
            // Every chunk is in the index by now: stored before, or in a
            // pack uploaded above.
            let table = PackTable::build(&manifest, |c| inner.index.get(c)).map_err(|chunk| {
                Error::MissingChunk {
                    chunk,
                    checkpoint,
                    store: inner.blobs.describe().into(),
                }
            })?;
            let sealed =
                object::seal_manifest(&inner.keys, &manifest, &table).map_err(Error::Seal)?;
            Ok((sealed, manifest, table.packs().to_vec()))
        });
        let indexes = futures_util::stream::iter(uploaded.indexes)
            .map(|(pack, index)| async move {
                let key = pack.index_key(sandstone_api::timefmt::now_ms() as u64);
                self.inner.blobs.put(&key, Bytes::from(index)).await
            })
            .buffer_unordered(self.inner.concurrency)
            .try_collect::<()>();
        let (fence, sealed, indexed) =
            futures_util::future::join3(self.check_fence(id), sealing, indexes).await;
        fence?;
        indexed?;
        let (sealed, manifest, packs) = sealed?;
        // A marker the collector wrote since this checkpoint began may
        // list a pack its manifest names.
        self.forget_collected().await?;
        if let Some(pack) = packs.iter().find(|p| self.is_collected(p)) {
            return Err(Error::Collected {
                checkpoint: id.clone(),
                pack: pack.to_string(),
            });
        }
        stats.bytes_uploaded += sealed.len() as u64;
        self.inner.blobs.put(&id.key(), Bytes::from(sealed)).await?;
        tracing::info!(
            checkpoint = %id,
            files = stats.files,
            unchanged = stats.files_unchanged,
            read = stats.bytes_read,
            uploaded = stats.bytes_uploaded,
            chunks_uploaded = stats.chunks_uploaded,
            chunks_reused = stats.chunks_reused,
            "checkpoint written"
        );
        Ok(Checkpointed { manifest, stats })
    }

    /// The entries of the tree at `tree` as they are, storing nothing:
    /// what a checkpoint would record, for a restore to compare with the
    /// checkpoint it brings the tree to. With `hint` (a manifest of this
    /// tree from this node), files whose inode, size, ctime and mtime
    /// match are not read.
    pub(crate) async fn describe(
        &self,
        tree: &Path,
        hint: Option<&Manifest>,
    ) -> Result<(Vec<Entry>, Vec<HardLink>)> {
        let walker = Walker::describing(self.inner.clone(), hint);
        let root = tree.to_path_buf();
        let (entries, hard_links, _) = blocking(move || walker.run(&root)).await?;
        Ok((entries, hard_links))
    }

    /// Refuses `id` when the store holds a checkpoint of a newer epoch
    /// (this node lost the sandbox) or `id` itself.
    async fn check_fence(&self, id: &CheckpointId) -> Result<()> {
        let ids = self.list(&id.sandbox).await?;
        if let Some(newer) = ids.last().filter(|newest| newest.epoch > id.epoch) {
            return Err(Error::Fenced {
                ours: id.clone(),
                newer: newer.clone(),
            });
        }
        if ids.contains(id) {
            return Err(Error::AlreadyExists(id.clone()));
        }
        Ok(())
    }

    /// Reads the indexes of packs this node has not seen (written by
    /// other nodes), so that chunks they stored are not uploaded again:
    /// after its first sync, a process lists only indexes stored since the
    /// newest it saw, less [`CLOCK_MARGIN_MS`]. An index that does not open
    /// is skipped with a warning, and one stored with a clock further
    /// behind is missed: either costs only deduplication.
    async fn sync_index(&self) -> Result<()> {
        let blobs = &self.inner.blobs;
        let seen = self.inner.synced_ms.load(Ordering::Relaxed);
        let keys = match seen {
            0 => blobs.list(INDEX_FOLDER).await?,
            ms => {
                let from = PackId::indexes_from(ms.saturating_sub(CLOCK_MARGIN_MS));
                blobs.list_after(INDEX_FOLDER, &from).await?
            }
        };
        let mut newest = seen;
        let mut unseen = Vec::new();
        for key in keys {
            if let Some((stored, pack)) = PackId::from_index_key(&key) {
                newest = newest.max(stored);
                if !self.inner.index.knows_pack(&pack) && !self.is_collected(&pack) {
                    unseen.push((key, pack));
                }
            }
        }
        futures_util::stream::iter(unseen)
            .map(|(key, pack)| async move {
                let sealed = match self.inner.blobs.get(&key).await {
                    Err(StoreError::NotFound { .. }) => return Ok(()),
                    r => r?,
                };
                let inner = self.inner.clone();
                blocking(move || {
                    match object::open_pack_index(&inner.keys, &pack, &sealed) {
                        Ok(chunks) => inner
                            .index
                            .add(chunks)
                            .map_err(io("record stored chunks in the local index"))?,
                        Err(e) => tracing::warn!("index of pack {pack} is unreadable ({e})"),
                    }
                    Ok(())
                })
                .await
            })
            .buffer_unordered(self.inner.concurrency)
            .try_collect::<()>()
            .await?;
        self.inner.synced_ms.fetch_max(newest, Ordering::Relaxed);
        Ok(())
    }

    /// Seals the walker's new chunks (several at once, kept in order so a
    /// file's chunks sit together in a pack), appends them into packs, and
    /// uploads each full pack, several at once. A chunk enters the local
    /// index only once its pack is stored; a pack's index is stored only
    /// after the pack, so an index in the store names a complete pack.
    async fn pack_and_upload(&self, rx: mpsc::Receiver<NewChunk>) -> Result<Uploaded> {
        let mut rx = rx;
        let sealed = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
            .map(|chunk| {
                let inner = self.inner.clone();
                blocking(move || {
                    if inner.index.contains(&chunk.id) {
                        return Ok(None);
                    }
                    let sealed = object::seal_chunk(&inner.keys, &chunk.id, &chunk.data)
                        .map_err(Error::Seal)?;
                    Ok(Some((chunk.id, sealed)))
                })
            })
            .buffered(self.inner.concurrency);
        let (full, mut packs) = mpsc::channel::<PackBuilder>(1);
        let packing = async move {
            let mut sealed = std::pin::pin!(sealed);
            let mut pack = PackBuilder::new(0)?;
            let mut known = 0;
            while let Some(next) = sealed.next().await {
                let Some((id, bytes)) = next? else {
                    known += 1;
                    continue;
                };
                pack.push(id, &bytes);
                if pack.is_full() {
                    let next = PackBuilder::new(pack.number() + 1)?;
                    let done = std::mem::replace(&mut pack, next);
                    if full.send(done).await.is_err() {
                        return Ok(known); // the uploader failed; its error is reported
                    }
                }
            }
            if !pack.is_empty() {
                let _ = full.send(pack).await;
            }
            Ok::<_, Error>(known)
        };
        let uploading = futures_util::stream::poll_fn(move |cx| packs.poll_recv(cx))
            .map(|pack| self.upload_pack(pack))
            .buffer_unordered(self.inner.concurrency)
            .try_fold(
                Uploaded::default(),
                |mut total, (chunks, bytes, index)| async move {
                    total.chunks += chunks;
                    total.bytes += bytes;
                    total.indexes.push(index);
                    Ok(total)
                },
            );
        let (packed, uploaded) = futures_util::future::join(packing, uploading).await;
        let mut uploaded = uploaded?;
        uploaded.known = packed?;
        Ok(uploaded)
    }

    /// Stores a pack and records its chunks; how many chunks and bytes it
    /// holds (with its index's), and its sealed index.
    async fn upload_pack(&self, pack: PackBuilder) -> Result<(u64, u64, (PackId, Vec<u8>))> {
        let inner = self.inner.clone();
        let sealed = blocking(move || pack.seal(&inner.keys).map_err(Error::Seal)).await?;
        let bytes = (sealed.data.len() + sealed.index.len()) as u64;
        let chunks = sealed.chunks.len() as u64;
        let blobs = &self.inner.blobs;
        blobs
            .put(&sealed.id.key(), Bytes::from(sealed.data))
            .await?;
        let inner = self.inner.clone();
        let located = sealed.chunks;
        blocking(move || {
            inner
                .index
                .add(located)
                .map_err(io("record stored chunks in the local index"))
        })
        .await?;
        Ok((chunks, bytes, (sealed.id, sealed.index)))
    }
}

/// The blocking half of a checkpoint.
struct Walker {
    inner: Arc<Inner>,
    /// Where new chunks go; `None` when only describing the tree.
    tx: Option<mpsc::Sender<NewChunk>>,
    /// The previous manifest's regular files by path: mtime and content.
    previous: HashMap<Vec<u8>, (Timestamp, FileContent)>,
    /// Chunks already handed to the uploader in this checkpoint.
    sent: HashSet<ChunkId>,
    /// The first path of each inode with several links.
    first_paths: HashMap<(u64, u64), OsBytes>,
    entries: Vec<Entry>,
    hard_links: Vec<HardLink>,
    stats: CheckpointStats,
}

fn join(parent: &[u8], name: &[u8]) -> Vec<u8> {
    if parent.is_empty() {
        name.to_vec()
    } else {
        [parent, b"/", name].concat()
    }
}

impl Walker {
    fn new(inner: Arc<Inner>, tx: mpsc::Sender<NewChunk>, previous: Option<&Manifest>) -> Walker {
        Walker {
            tx: Some(tx),
            ..Walker::describing(inner, previous)
        }
    }

    fn describing(inner: Arc<Inner>, previous: Option<&Manifest>) -> Walker {
        let mut files = HashMap::new();
        for e in previous.iter().flat_map(|m| &m.entries) {
            if let Kind::File(f) = &e.kind {
                files.insert(e.path.0.clone(), (e.mtime, f.clone()));
            }
        }
        Walker {
            inner,
            tx: None,
            previous: files,
            sent: HashSet::new(),
            first_paths: HashMap::new(),
            entries: Vec::new(),
            hard_links: Vec::new(),
            stats: CheckpointStats::default(),
        }
    }

    /// Walks depth first, names sorted, each directory before its
    /// contents.
    fn run(mut self, root: &Path) -> Result<(Vec<Entry>, Vec<HardLink>, CheckpointStats)> {
        let mut stack = vec![Vec::new()];
        while let Some(rel) = stack.pop() {
            let abs = if rel.is_empty() {
                root.to_path_buf()
            } else {
                root.join(std::ffi::OsStr::from_bytes(&rel))
            };
            let meta = std::fs::symlink_metadata(&abs).map_err(io(format!("stat {abs:?}")))?;
            if rel.is_empty() && !meta.is_dir() {
                return Err(io(format!("checkpoint {root:?}"))(std::io::Error::from(
                    std::io::ErrorKind::NotADirectory,
                )));
            }
            if meta.is_dir() {
                let mut names = Vec::new();
                for e in std::fs::read_dir(&abs).map_err(io(format!("list {abs:?}")))? {
                    let e = e.map_err(io(format!("list {abs:?}")))?;
                    names.push(e.file_name().into_vec());
                }
                names.sort();
                stack.extend(names.iter().rev().map(|n| join(&rel, n)));
            }
            self.visit(OsBytes(rel), &abs, &meta)?;
        }
        Ok((self.entries, self.hard_links, self.stats))
    }

    fn visit(&mut self, path: OsBytes, abs: &Path, meta: &Metadata) -> Result<()> {
        let ft = meta.file_type();
        if !ft.is_dir() && meta.nlink() > 1 {
            match self.first_paths.entry((meta.dev(), meta.ino())) {
                hash_map::Entry::Occupied(first) => {
                    let target = first.get().clone();
                    self.hard_links.push(HardLink { path, target });
                    return Ok(());
                }
                hash_map::Entry::Vacant(v) => {
                    v.insert(path.clone());
                }
            }
        }
        let kind = if ft.is_dir() {
            Kind::Dir
        } else if ft.is_file() {
            self.stats.files += 1;
            Kind::File(self.file(&path, abs, meta)?)
        } else if ft.is_symlink() {
            let target = std::fs::read_link(abs).map_err(io(format!("readlink {abs:?}")))?;
            Kind::Symlink {
                target: OsBytes(target.into_os_string().into_vec()),
            }
        } else if ft.is_char_device() {
            Kind::CharDevice { rdev: meta.rdev() }
        } else if ft.is_block_device() {
            Kind::BlockDevice { rdev: meta.rdev() }
        } else if ft.is_fifo() {
            Kind::Fifo
        } else {
            Kind::Socket
        };
        let xattrs = fsmeta::xattrs(abs).map_err(io(format!("read xattrs of {abs:?}")))?;
        self.stats.entries += 1;
        self.entries.push(Entry {
            path,
            kind,
            mode: meta.mode() & 0o7777,
            uid: meta.uid(),
            gid: meta.gid(),
            atime: Timestamp::from_stat(meta.atime(), meta.atime_nsec()),
            mtime: Timestamp::from_stat(meta.mtime(), meta.mtime_nsec()),
            xattrs,
        });
        Ok(())
    }

    /// A regular file's content: the previous chunk list if the file is
    /// unchanged and (when storing) this node knows where each of those
    /// chunks is stored, else its data extents chunked.
    fn file(&mut self, path: &OsBytes, abs: &Path, meta: &Metadata) -> Result<FileContent> {
        let ctime = Timestamp::from_stat(meta.ctime(), meta.ctime_nsec());
        let mtime = Timestamp::from_stat(meta.mtime(), meta.mtime_nsec());
        if let Some((prev_mtime, prev)) = self.previous.get(&path.0)
            && prev.ino == meta.ino()
            && prev.size == meta.size()
            && prev.ctime == ctime
            && *prev_mtime == mtime
            && (self.tx.is_none()
                || prev
                    .extents
                    .iter()
                    .flat_map(|x| &x.chunks)
                    .all(|c| self.inner.index.contains(&c.id)))
        {
            self.stats.files_unchanged += 1;
            self.stats.chunks_reused += prev
                .extents
                .iter()
                .map(|x| x.chunks.len() as u64)
                .sum::<u64>();
            return Ok(prev.clone());
        }
        let changed = |what| Error::Changed {
            path: abs.to_path_buf(),
            what,
        };
        // O_NOATIME: a checkpoint does not count as a read.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NOATIME)
            .open(abs)
            .map_err(io(format!("open {abs:?}")))?;
        let size = meta.size();
        let mut extents = Vec::new();
        for (offset, len) in
            fsmeta::data_extents(&file, size).map_err(io(format!("find data in {abs:?}")))?
        {
            (&file)
                .seek(std::io::SeekFrom::Start(offset))
                .map_err(io(format!("seek in {abs:?}")))?;
            let mut chunks = Vec::new();
            let mut read = 0u64;
            let cdc =
                fastcdc::v2020::StreamCDC::new((&file).take(len), MIN_CHUNK, AVG_CHUNK, MAX_CHUNK);
            for chunk in cdc {
                let chunk = chunk.map_err(|e| io(format!("read {abs:?}"))(e.into()))?;
                read += chunk.length as u64;
                let id = self.inner.keys.chunk_id(&chunk.data);
                chunks.push(ChunkRef {
                    id,
                    len: chunk.length as u32,
                });
                self.offer(id, chunk.data)?;
            }
            if read != len {
                return Err(changed("it shrank"));
            }
            self.stats.bytes_read += read;
            extents.push(Extent { offset, chunks });
        }
        let after = file.metadata().map_err(io(format!("stat {abs:?}")))?;
        if after.ino() != meta.ino()
            || after.size() != size
            || Timestamp::from_stat(after.ctime(), after.ctime_nsec()) != ctime
        {
            return Err(changed("it was written to"));
        }
        Ok(FileContent {
            size,
            ino: meta.ino(),
            ctime,
            extents,
        })
    }

    /// Hands a chunk to the packer unless it is known to be stored or
    /// was handed over already.
    fn offer(&mut self, id: ChunkId, data: Vec<u8>) -> Result<()> {
        let Some(tx) = &self.tx else {
            return Ok(());
        };
        if self.inner.index.contains(&id) || !self.sent.insert(id) {
            self.stats.chunks_reused += 1;
            return Ok(());
        }
        tx.blocking_send(NewChunk { id, data })
            .map_err(|_| io("chunk upload")(std::io::Error::other("stopped")))
    }
}
