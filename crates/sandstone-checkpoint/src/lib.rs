//! Checkpoints of sandbox volumes in object storage: a paused sandbox's
//! durable layer (an overlayfs upper dir) is written to S3-compatible
//! storage (or a directory) as encrypted, deduplicated chunks plus one
//! manifest, and materialised again on any node.
//!
//! # Use
//!
//! ```no_run
//! # async fn demo() -> Result<(), sandstone_checkpoint::Error> {
//! use sandstone_checkpoint::*;
//! let blobs = store::open("s3://bucket/sandstone", store::S3Options::default())?;
//! let key = MasterKey::load_or_create("/var/lib/sandstone/checkpoint.key".as_ref())?;
//! let ckpt = Checkpoints::open(blobs, &key, Options::new("/var/lib/sandstone/ckpt".into())).await?;
//! let id = CheckpointId::new(SandboxId::new("sb-1")?, /* epoch */ 4, /* generation */ 1);
//! let first = ckpt.checkpoint("/pool/sandboxes/sb-1/upper".as_ref(), &id, None).await?;
//! // Later, after a small change: only changed files are read again.
//! let next = CheckpointId::new(id.sandbox.clone(), 4, 2);
//! ckpt.checkpoint("/pool/sandboxes/sb-1/upper".as_ref(), &next, Some(&first.manifest)).await?;
//! // On any node:
//! if let Some(latest) = ckpt.latest(&id.sandbox).await? {
//!     ckpt.restore(&latest, "/pool/sandboxes/sb-1/upper".as_ref()).await?;
//! }
//! # Ok(()) }
//! ```
//!
//! # Design
//!
//! - **Tree.** Every inode of the tree is an [`Entry`] with its type,
//!   mode (setuid/setgid/sticky kept), owner as stored on disk (volumes
//!   are stored unshifted), atime and mtime, symlink target, device
//!   number (an overlay whiteout is the character device 0/0) and the
//!   extended attributes that matter to an upper dir (`trusted.*` with
//!   `trusted.overlay.*`, `user.*`, file capabilities, ACLs). A second
//!   path to an inode already listed is a [`HardLink`]. A regular file
//!   lists only its data extents (`SEEK_DATA`/`SEEK_HOLE`): holes are not
//!   stored, and are holes again after a restore.
//! - **Chunks.** Each extent is cut by FastCDC (16/64/256 KiB min/average/
//!   max), so an insertion moves only the chunks around it. A chunk's id
//!   is BLAKE3 keyed with a key derived from the master key: ids reveal
//!   nothing outside the installation, and identical chunks (across
//!   files, sandboxes, forks and generations) are stored once. Each chunk
//!   is zstd-compressed, then sealed with XChaCha20-Poly1305 under a random
//!   nonce, bound to its id ([`object`] has the layout).
//! - **Packs.** A checkpoint's new chunks are appended, each sealed on
//!   its own, into pack objects (`packs/<made-ms>-<random>`; the first of
//!   a checkpoint 1 MiB, then 2, 4 and 8 MiB each), uploaded several at
//!   once: S3 charges a few milliseconds per request, so one object per
//!   64 KiB chunk cost ~16k requests per GiB. After each pack, its sealed
//!   index (`pack-index/<pack>`: chunk id, offset, length) is stored; an
//!   index names a complete pack. The manifest object carries a table of
//!   where each of its chunks lies (pack, offset, length), so a restore
//!   needs nothing but the manifest to find them.
//! - **Manifest last.** The manifest (`manifests/<sandbox>/<epoch>-
//!   <generation>`, zero-padded so keys sort as [`CheckpointId`]s do) is
//!   sealed the same way and uploaded only after every pack it names is
//!   stored, so a manifest in the store names a complete checkpoint; a
//!   restore still verifies every chunk it reads and refuses a checkpoint
//!   with one missing, altered or cut short (naming the chunk) before
//!   anything reaches the destination.
//! - **Fencing.** A checkpoint is written under the owner's lease epoch.
//!   Before uploading its manifest, a checkpoint looks for one with a
//!   higher epoch and refuses ([`Error::Fenced`]): an owner that lost its
//!   lease cannot write a checkpoint newer than its successor's. (The
//!   lease itself is the caller's; this is the last check before the
//!   store.)
//! - **Incremental.** Given the previous manifest, a file whose inode,
//!   size, mtime and ctime are unchanged keeps its chunk list unread; only
//!   changed files are read and chunked, and only chunks the store lacks
//!   are uploaded. Whether the store has a chunk, and where, is this
//!   node's local index (no request per chunk): it learns a chunk once
//!   the pack holding it is uploaded, from every manifest it opens (a
//!   restore's or [`Checkpoints::manifest`]'s), and, at the start of each
//!   checkpoint, from the indexes of packs other nodes wrote (a listing of
//!   `pack-index/` from the newest index seen, less ten minutes for
//!   clocks, and a read of each index not seen before), so
//!   identical chunks across nodes are stored once too. A file whose
//!   chunks this node cannot locate is read again, so a `previous` from
//!   anywhere is safe. A restore returns a *baseline* manifest with the
//!   new inodes' numbers and ctimes, so the next checkpoint on that node is
//!   incremental too.
//! - **Restore** fetches the manifest, takes what chunks it can from a
//!   size-capped LRU cache of sealed chunks, and reads the rest out of
//!   their packs in byte ranges (`Range` GETs on S3) that merge
//!   neighbouring chunks (up to 1 MiB apart, 8 MiB a range; a pack holds
//!   a file's chunks in order, so a cold restore reads packs nearly
//!   whole), several ranges at once, each verified chunk by chunk (AEAD
//!   tag and keyed hash), cached, and written into its files as it
//!   arrives. It materialises into a temporary directory beside the
//!   destination, renamed over it only when everything, metadata
//!   included, is in place. A warm cache means no network after the
//!   manifest.
//! - **Speed.** Reading and chunking run on one blocking thread while the
//!   fence check and the pack-index sync run; sealing, uploads (and, on
//!   restore, ranged reads and opening) run with bounded concurrency
//!   ([`Options::concurrency`], 8 by default); files are read and written
//!   chunk by chunk, never whole; memory in flight is about
//!   `concurrency` × 8 MiB. Measured with `examples/bench.rs` (1 GiB of
//!   incompressible data in 4 MiB files, moto on loopback, 2 cores shared
//!   with other builds, so figures vary run to run): a checkpoint after
//!   10 MiB changed uploads 10.7–11.1 MiB in 106–157 ms, beside plain
//!   10 MiB PUTs of 61–167 ms in the same runs (one object per chunk took
//!   750–880 ms); a cold restore takes 3.2 s (6.8 s at load 9) beside
//!   1.0–1.3 s for a plain download of the same bytes into memory and
//!   1.5–4.3 s for one written into files (one object per chunk: 35–48 s);
//!   a warm one 1.5–3.3 s. A restore is bound by local work (decrypting
//!   with XChaCha20, hashing and writing a gigabyte on two cores shared
//!   with the S3 server), not by requests. A full restore writes every
//!   byte of the tree, so a warm one of a gigabyte cannot take 50 ms;
//!   [`Checkpoints::restore_over`] can: over a copy the node kept (an old
//!   volume), it writes only what differs (30 MiB changed in a 1 GiB tree:
//!   41–50 ms, of which the manifest's fetch is about 20).
//! - **Garbage** (`gc`). [`Checkpoints::prune`] drops a sandbox's older
//!   manifests; [`Checkpoints::collect_garbage`] then deletes the packs no
//!   manifest names, in two rounds a grace period apart (mark, then sweep
//!   what is still unnamed), while every node forgets marked packs before
//!   it decides which chunks are stored; the `gc` module says why that is
//!   safe. A pack's dead part stays while some of its chunks are named.
//! - **Key.** A 32-byte master key in a 0600 file ([`MasterKey`]); the
//!   chunk-id key and the encryption key are derived from it with BLAKE3's
//!   `derive_key`. It is never in a manifest, the store, an error or a log.
//! - **The tree must hold still**: a paused sandbox's upper dir, or a
//!   btrfs snapshot of a running one (a snapshot keeps inode numbers and
//!   ctimes, so incremental checkpoints still work). A file that changes
//!   while it is read fails the checkpoint ([`Error::Changed`]).
//!
//! # Dependencies
//!
//! The S3 client is the workspace's `reqwest` with a hand-written SigV4
//! signer ([`store`]'s S3 backend says why not `object_store`); enabling
//! reqwest's `rustls` for HTTPS adds hyper-rustls, rustls-platform-verifier,
//! rustls-native-certs and openssl-probe. The file-system calls std lacks
//! (xattrs, mknod, SEEK_DATA, times of symlinks) go through `rustix`, already
//! in the tree, rather than `sandstone-sys`. New crates: `blake3`, `fastcdc`
//! (pure Rust) and `zstd` (the C library, built from the crate's vendored
//! source by `cc`; nothing is downloaded at build time).

mod checkpoint;
mod fsmeta;
mod gc;
pub mod key;
mod local;
pub mod manifest;
pub mod object;
mod pack;
mod restore;
pub mod store;
mod update;

pub use checkpoint::{CheckpointStats, Checkpointed};
pub use gc::GcStats;
pub use key::{KeyError, MasterKey};
pub use manifest::{
    CheckpointId, ChunkId, ChunkRef, Entry, Extent, FileContent, HardLink, Kind, Manifest, OsBytes,
    SandboxId, Timestamp, Xattr,
};
pub use restore::{RestoreStats, Restored};
pub use store::{Blobs, StoreError};

use key::Keys;
use local::{ChunkCache, ChunkIndex};
use object::ObjectError;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid sandbox id {0:?}: expected 1 to 128 of A-Z, a-z, 0-9, '-' and '_'")]
    InvalidSandboxId(String),
    #[error("{checkpoint} not found in {store}")]
    NoSuchCheckpoint {
        checkpoint: CheckpointId,
        store: String,
    },
    #[error("{0} already exists; a generation is written once")]
    AlreadyExists(CheckpointId),
    #[error(
        "{ours} refused: the store already holds {newer}, written under a newer lease; \
         this node no longer owns the sandbox"
    )]
    Fenced {
        ours: CheckpointId,
        newer: CheckpointId,
    },
    #[error("sealing an object: {0}")]
    Seal(ObjectError),
    #[error("manifest of {checkpoint} is unreadable: {reason}")]
    CorruptManifest {
        checkpoint: CheckpointId,
        reason: ObjectError,
    },
    #[error("manifest of {checkpoint} is invalid: {reason}")]
    InvalidManifest {
        checkpoint: CheckpointId,
        reason: String,
    },
    #[error(
        "chunk {chunk} of {checkpoint} is missing from {store}: the checkpoint is incomplete \
         and is not used"
    )]
    MissingChunk {
        chunk: ChunkId,
        checkpoint: CheckpointId,
        store: String,
    },
    #[error("chunk {chunk} of {checkpoint} is corrupt or was tampered with: {reason}")]
    CorruptChunk {
        chunk: ChunkId,
        checkpoint: CheckpointId,
        reason: ObjectError,
    },
    #[error(
        "{path:?} changed while it was being checkpointed ({what}); checkpoint a paused \
         sandbox or a snapshot"
    )]
    Changed { path: PathBuf, what: &'static str },
    #[error(
        "{checkpoint} refused: it would name pack {pack}, which the collector is deleting; \
         checkpoint again (its chunks are uploaded anew)"
    )]
    Collected {
        checkpoint: CheckpointId,
        pack: String,
    },
    #[error("restore destination {0:?} exists and is not an empty directory")]
    DestinationInUse(PathBuf),
}

pub type Result<T> = std::result::Result<T, Error>;

pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}

/// Runs blocking work (file-system walks, chunking, sealing) on tokio's
/// blocking threads.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| io("a blocking task")(std::io::Error::other(e.to_string())))?
}

/// Local settings of a [`Checkpoints`].
#[derive(Clone, Debug)]
pub struct Options {
    /// This node's directory for the chunk cache and the index of stored
    /// chunks.
    pub state_dir: PathBuf,
    /// The chunk cache's cap, in bytes of sealed chunks.
    pub cache_bytes: u64,
    /// Chunks sealed, packs uploaded, or pack ranges fetched and opened,
    /// at once.
    pub concurrency: usize,
    /// The collector's grace period (see [`Checkpoints::collect_garbage`]):
    /// longer than any checkpoint takes, and the same on every node.
    pub gc_grace: std::time::Duration,
}

impl Options {
    /// A 4 GiB cache, 8 transfers at once, and an hour's grace.
    pub fn new(state_dir: PathBuf) -> Options {
        Options {
            state_dir,
            cache_bytes: 4 << 30,
            concurrency: 8,
            gc_grace: std::time::Duration::from_secs(3600),
        }
    }
}

/// Checkpoints and restores against one store with one key. Cheap to
/// clone; share one per node (the cache and index are per node).
#[derive(Clone)]
pub struct Checkpoints {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    blobs: Arc<dyn Blobs>,
    keys: Keys,
    cache: ChunkCache,
    index: ChunkIndex,
    /// When the newest pack index this process has read was stored (by
    /// its writer's clock); 0 before the first sync.
    synced_ms: std::sync::atomic::AtomicU64,
    concurrency: usize,
    gc_grace_ms: u64,
    /// When this process last synced (its clock); 0 before the first.
    last_sync_ms: std::sync::atomic::AtomicU64,
    /// The collector's markers read, and the packs they listed.
    markers_read: std::sync::Mutex<std::collections::HashSet<String>>,
    forgotten: std::sync::Mutex<std::collections::HashSet<pack::PackId>>,
}

impl Checkpoints {
    /// Checks the store ([`Blobs::probe`]: a wrong bucket or credentials
    /// fail here) and opens this node's cache and index.
    pub async fn open(
        blobs: Arc<dyn Blobs>,
        key: &MasterKey,
        options: Options,
    ) -> Result<Checkpoints> {
        blobs.probe().await?;
        let keys = Keys::derive(key);
        // One index per store and key: chunks known in one are not in
        // another.
        let index = format!(
            "packed-{}-{}",
            &blake3::hash(blobs.describe().as_bytes()).to_hex()[..16],
            keys.tag()
        );
        let dir = options.state_dir;
        let (cache, index) = blocking(move || {
            std::fs::create_dir_all(&dir).map_err(io(format!("create {dir:?}")))?;
            let cache_dir = dir.join("chunk-cache");
            let cache = ChunkCache::open(cache_dir.clone(), options.cache_bytes)
                .map_err(io(format!("open the chunk cache {cache_dir:?}")))?;
            let path = dir.join(index);
            let index =
                ChunkIndex::open(&path).map_err(io(format!("open the chunk index {path:?}")))?;
            Ok((cache, index))
        })
        .await?;
        Ok(Checkpoints {
            inner: Arc::new(Inner {
                blobs,
                keys,
                cache,
                index,
                synced_ms: Default::default(),
                concurrency: options.concurrency.max(1),
                gc_grace_ms: options.gc_grace.as_millis() as u64,
                last_sync_ms: Default::default(),
                markers_read: Default::default(),
                forgotten: Default::default(),
            }),
        })
    }

    /// A sandbox's checkpoints in the store, oldest first.
    pub async fn list(&self, sandbox: &SandboxId) -> Result<Vec<CheckpointId>> {
        let keys = self
            .inner
            .blobs
            .list(&CheckpointId::folder(sandbox))
            .await?;
        let mut ids: Vec<_> = keys
            .iter()
            .filter_map(|k| CheckpointId::from_key(sandbox, k))
            .collect();
        ids.sort();
        Ok(ids)
    }

    /// Deletes all but the newest `keep` checkpoints of a sandbox (at
    /// least one stays); how many went.
    pub async fn prune(&self, sandbox: &SandboxId, keep: usize) -> Result<usize> {
        let ids = self.list(sandbox).await?;
        let old = ids.len().saturating_sub(keep.max(1));
        for id in &ids[..old] {
            self.delete(id).await?;
        }
        Ok(old)
    }

    /// The newest checkpoint: highest epoch, then highest generation.
    pub async fn latest(&self, sandbox: &SandboxId) -> Result<Option<CheckpointId>> {
        Ok(self.list(sandbox).await?.pop())
    }

    /// Deletes a checkpoint's manifest (its packs stay until the collector
    /// finds no other manifest names them). Deleting one that is not there
    /// is not an error.
    pub async fn delete(&self, id: &CheckpointId) -> Result<()> {
        Ok(self.inner.blobs.delete(&id.key()).await?)
    }

    /// A checkpoint's manifest, fetched and opened. Where its chunks lie
    /// is recorded in this node's index, so that a checkpoint given it as
    /// `previous` need not read unchanged files.
    pub async fn manifest(&self, id: &CheckpointId) -> Result<Manifest> {
        Ok(self.load(id).await?.0)
    }

    /// A manifest and where each of its chunks lies (also recorded in the
    /// index: a manifest in the store names complete packs only).
    pub(crate) async fn load(
        &self,
        id: &CheckpointId,
    ) -> Result<(Manifest, HashMap<ChunkId, pack::Location>)> {
        let key = id.key();
        let sealed = match self.inner.blobs.get(&key).await {
            Err(StoreError::NotFound { store, .. }) => {
                return Err(Error::NoSuchCheckpoint {
                    checkpoint: id.clone(),
                    store,
                });
            }
            r => r?,
        };
        let inner = self.inner.clone();
        let checkpoint = id.clone();
        blocking(move || {
            let (manifest, table) =
                object::open_manifest(&inner.keys, &key, &sealed).map_err(|reason| {
                    Error::CorruptManifest {
                        checkpoint: checkpoint.clone(),
                        reason,
                    }
                })?;
            let invalid = |reason| Error::InvalidManifest {
                checkpoint: checkpoint.clone(),
                reason,
            };
            if manifest.format != manifest::FORMAT || manifest.id != checkpoint {
                return Err(invalid(format!(
                    "it says it is format {} of {}",
                    manifest.format, manifest.id
                )));
            }
            let located = table.resolve(&manifest).map_err(invalid)?;
            inner
                .index
                .add(located.iter().map(|(id, at)| (*id, *at)))
                .map_err(io("record located chunks in the local index"))?;
            Ok((manifest, located))
        })
        .await
    }
}
