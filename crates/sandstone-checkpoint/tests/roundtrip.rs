//! Checkpoint and restore through a directory store, on real files (as
//! root: owners, device nodes and trusted.* xattrs need it).

// Test code: an unexpected failure is the test failing, so unwrap is the point.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use futures_util::future::BoxFuture;
use sandstone_checkpoint::StoreError;
use sandstone_checkpoint::store::{Blobs, FileBlobs, StoreResult};
use sandstone_checkpoint::{CheckpointId, Error, MasterKey, SandboxId};
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;

struct World {
    dir: tempfile::TempDir,
    blobs: Arc<dyn Blobs>,
    key: MasterKey,
}

impl World {
    fn new() -> World {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("store")).unwrap();
        let blobs: Arc<dyn Blobs> = Arc::new(FileBlobs::new(dir.path().join("store")));
        World {
            dir,
            blobs,
            key: MasterKey::generate().unwrap(),
        }
    }

    fn path(&self, rel: &str) -> std::path::PathBuf {
        self.dir.path().join(rel)
    }

    /// A node with its own cache and index.
    async fn node(&self, name: &str) -> sandstone_checkpoint::Checkpoints {
        node(self.blobs.clone(), &self.key, &self.path(name)).await
    }

    /// The pack objects in the store, oldest first.
    fn packs(&self) -> Vec<std::path::PathBuf> {
        let mut packs = objects(&self.path("store/packs"));
        packs.sort();
        packs
    }
}

fn id(epoch: u64, generation: u64) -> CheckpointId {
    CheckpointId::new(SandboxId::new("sb-test").unwrap(), epoch, generation)
}

fn assert_same_tree(a: &Path, b: &Path) {
    let (da, db) = (describe(a), describe(b));
    assert_eq!(da.len(), db.len());
    for (path, d) in &da {
        assert_eq!(Some(d), db.get(path), "{}", String::from_utf8_lossy(path));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_keeps_every_entry_and_its_metadata() {
    let w = World::new();
    let tree = w.path("tree");
    build_tree(&tree, 50);
    let a = w.node("node-a").await;
    let written = a.checkpoint(&tree, &id(1, 1), None).await.unwrap();
    let s = &written.stats;
    assert_eq!(s.files, 7, "{s:?}"); // big, text (3 names), empty, inside, small, café, sparse
    assert_eq!(
        s.bytes_read,
        50 * MIB + 2000 * 55 + 21 + 1 + 13 + 8192,
        "{s:?}"
    );
    assert!(s.chunks_uploaded > 50 * MIB / (256 << 10), "{s:?}");
    assert_eq!(written.manifest.hard_links.len(), 2);

    // Another node, cold cache: everything comes from the store.
    let b = w.node("node-b").await;
    let dest = w.path("restored");
    let restored = b.restore(&id(1, 1), &dest).await.unwrap();
    // Every distinct chunk comes from the store; a repeat of one (identical
    // small files) may find it cached already, depending on how the
    // concurrent fetches land.
    let distinct: std::collections::HashSet<_> = written
        .manifest
        .chunks()
        .map(|c| c.id.to_string())
        .collect();
    let st = &restored.stats;
    assert!(st.chunks_fetched >= distinct.len() as u64, "{st:?}");
    assert_eq!(
        st.chunks_fetched + st.chunks_cached,
        written.manifest.chunks().count() as u64,
        "{st:?}"
    );
    // atime as the source had it before it was read (checked first: the
    // comparison below reads the files).
    let big = std::fs::metadata(dest.join("a/big")).unwrap();
    assert_eq!(big.atime(), 1_600_000_000 - 1000);
    assert_same_tree(&tree, &dest);
    // Holes stay holes: 8 KiB of data in a 100 MiB file.
    let sparse = std::fs::metadata(dest.join("sparse")).unwrap();
    assert_eq!(sparse.len(), 100 * MIB);
    assert!(
        sparse.blocks() * 512 <= 64 * 1024,
        "{} blocks",
        sparse.blocks()
    );
    let whiteout = std::fs::symlink_metadata(dest.join("a/whiteout")).unwrap();
    assert_eq!((whiteout.mode() & 0o170000, whiteout.rdev()), (0o020000, 0));

    // The same node again, warm cache: no chunk from the store.
    let again = b.restore(&id(1, 1), &w.path("restored-2")).await.unwrap();
    assert_eq!(again.stats.chunks_fetched, 0, "{:?}", again.stats);
    assert_same_tree(&tree, &w.path("restored-2"));

    // The restore's baseline makes the next checkpoint on that node read
    // nothing and upload only the manifest.
    let next = b
        .checkpoint(&dest, &id(1, 2), Some(&restored.baseline))
        .await
        .unwrap();
    assert_eq!(next.stats.files_unchanged, next.stats.files);
    assert_eq!((next.stats.bytes_read, next.stats.chunks_uploaded), (0, 0));
}

/// Every kind of change between two checkpoints, made to `root`.
fn change_everything(root: &Path) {
    let p = |rel: &str| root.join(rel);
    // 1 MiB rewritten in the middle of the big file, which also grows.
    let big = std::fs::OpenOptions::new()
        .write(true)
        .open(p("a/big"))
        .unwrap();
    big.write_all_at(&noise(9, 1 << 20), 2 << 20).unwrap();
    big.write_all_at(b"tail", 5 << 20).unwrap();
    drop(big);
    // The sparse file loses one island and gains another.
    let sparse = std::fs::OpenOptions::new()
        .write(true)
        .open(p("sparse"))
        .unwrap();
    rustix::fs::fallocate(
        &sparse,
        rustix::fs::FallocateFlags::PUNCH_HOLE | rustix::fs::FallocateFlags::KEEP_SIZE,
        10 * MIB,
        4096,
    )
    .unwrap();
    sparse.write_all_at(&noise(4, 4096), 30 * MIB).unwrap();
    drop(sparse);
    // A hard-linked file changes through one name and loses another.
    std::fs::write(p("hard-link"), b"new contents of three names\n").unwrap();
    std::fs::remove_file(p("a/deep/another")).unwrap();
    // Removed, added, replaced by another kind, retargeted.
    std::fs::remove_file(p("empty-setuid")).unwrap();
    std::fs::write(p("a/new"), noise(5, 300_000)).unwrap();
    std::fs::remove_dir_all(p("opaque")).unwrap();
    std::fs::write(p("opaque"), b"a file where a directory was\n").unwrap();
    std::fs::remove_file(p("link")).unwrap();
    std::os::unix::fs::symlink("a/new", p("link")).unwrap();
    std::fs::create_dir(p("a/deep/more")).unwrap();
    std::fs::hard_link(p("a/new"), p("a/deep/more/same-as-new")).unwrap();
    // Metadata only.
    std::fs::set_permissions(p("a/deep/small"), std::fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::lchown(p("fifo"), Some(100_007), Some(100_007)).unwrap();
    rustix::fs::lremovexattr(p("a/big"), "trusted.overlay.origin").unwrap();
    rustix::fs::lsetxattr(
        p("a/big"),
        "user.changed",
        b"1",
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_over_an_old_copy_changes_only_what_differs() {
    let w = World::new();
    let tree = w.path("tree");
    build_tree(&tree, 8);
    let a = w.node("node-a").await;
    let first = a.checkpoint(&tree, &id(1, 1), None).await.unwrap();
    change_everything(&tree);
    let second = a
        .checkpoint(&tree, &id(1, 2), Some(&first.manifest))
        .await
        .unwrap();

    // Node b had the sandbox at the first checkpoint, and its copy changed
    // after that checkpoint (as a running sandbox's does before it is lost).
    let b = w.node("node-b").await;
    let old = w.path("old");
    let was = b.restore(&id(1, 1), &old).await.unwrap();
    std::fs::write(old.join("stray"), b"written after the checkpoint").unwrap();
    std::fs::write(old.join("a/text.txt"), b"changed after the checkpoint").unwrap();
    std::fs::create_dir(old.join("a/deep/more")).unwrap(); // the checkpoint makes it too

    let over = b
        .restore_over(&id(1, 2), &old, Some(&was.baseline))
        .await
        .unwrap();
    assert_same_tree(&tree, &old);
    // Only the changed files were written: far less than the tree.
    let s = &over.stats;
    assert!(s.bytes_written < 3 * MIB, "{s:?}");
    assert!(s.files <= 5, "{s:?}"); // big, sparse, text (3 names), a/new, opaque
    // Its baseline lets the next checkpoint read nothing.
    let next = b
        .checkpoint(&old, &id(1, 3), Some(&over.baseline))
        .await
        .unwrap();
    assert_eq!(next.stats.bytes_read, 0, "{:?}", next.stats);
    assert_eq!(next.stats.chunks_uploaded, 0, "{:?}", next.stats);

    // Without a hint every file is read, and the result is the same; and
    // back to the first checkpoint over the second.
    let c = w.node("node-c").await;
    let other = w.path("other");
    c.restore(&id(1, 1), &other).await.unwrap();
    c.restore_over(&id(1, 2), &other, None).await.unwrap();
    assert_same_tree(&tree, &other);
    c.restore_over(&id(1, 1), &other, None).await.unwrap();
    let fresh = w.path("fresh");
    c.restore(&id(1, 1), &fresh).await.unwrap();
    assert_same_tree(&fresh, &other);
    let sparse = std::fs::metadata(other.join("sparse")).unwrap();
    assert!(
        sparse.blocks() * 512 <= 64 * 1024,
        "{} blocks",
        sparse.blocks()
    );
    drop(second);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_collector_deletes_only_packs_no_manifest_names() {
    let w = World::new();
    let grace = std::time::Duration::from_millis(1500);
    let node = async |name: &str| {
        let options = sandstone_checkpoint::Options {
            gc_grace: grace,
            ..sandstone_checkpoint::Options::new(w.path(name))
        };
        sandstone_checkpoint::Checkpoints::open(w.blobs.clone(), &w.key, options)
            .await
            .unwrap()
    };
    let (a, b) = (node("node-a").await, node("node-b").await);
    let tree = w.path("tree");
    build_tree(&tree, 4);
    let first = a.checkpoint(&tree, &id(1, 1), None).await.unwrap();
    // The big file's old chunks are named by the first checkpoint only.
    std::fs::write(tree.join("a/big"), noise(7, 4 << 20)).unwrap();
    a.checkpoint(&tree, &id(1, 2), Some(&first.manifest))
        .await
        .unwrap();
    // Node b learns every pack (a checkpoint syncs its index first).
    let other = w.path("other");
    std::fs::create_dir(&other).unwrap();
    std::fs::write(other.join("f"), b"another sandbox").unwrap();
    let other_id = |g| CheckpointId::new(SandboxId::new("sb-other").unwrap(), 1, g);
    b.checkpoint(&other, &other_id(1), None).await.unwrap();

    assert_eq!(
        a.prune(&SandboxId::new("sb-test").unwrap(), 1)
            .await
            .unwrap(),
        1
    );
    let before = w.packs().len();
    tokio::time::sleep(grace).await;
    let marked = a.collect_garbage().await.unwrap();
    assert!(marked.marked >= 1 && marked.deleted == 0, "{marked:?}");
    assert_eq!(w.packs().len(), before, "marking deletes nothing");
    // A second round within the grace period marks nothing more.
    let again = a.collect_garbage().await.unwrap();
    assert_eq!((again.marked, again.deleted), (0, 0), "{again:?}");

    // Node b forgets the marked packs at its next sync: the old big file's
    // contents, checkpointed there, are uploaded anew rather than named
    // in a pack about to go.
    std::fs::write(other.join("old-big"), noise(1, 4 << 20)).unwrap();
    let reused = b.checkpoint(&other, &other_id(2), None).await.unwrap();
    assert!(
        reused.stats.chunks_uploaded >= (4 << 20) / (256 << 10),
        "{:?}",
        reused.stats
    );

    let before = w.packs().len() as u64;
    tokio::time::sleep(grace).await;
    let swept = a.collect_garbage().await.unwrap();
    assert_eq!(swept.deleted, marked.marked, "{swept:?}");
    assert_eq!(w.packs().len() as u64, before - swept.deleted);
    assert!(
        objects(&w.path("store/gc")).is_empty(),
        "the marker is gone"
    );

    // Everything still named restores on a fresh node.
    let c = node("node-c").await;
    c.restore(&id(1, 2), &w.path("restored")).await.unwrap();
    assert_same_tree(&tree, &w.path("restored"));
    c.restore(&other_id(2), &w.path("restored-other"))
        .await
        .unwrap();
    assert_same_tree(&other, &w.path("restored-other"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unchanged_trees_upload_nothing_and_small_changes_little() {
    let w = World::new();
    let tree = w.path("tree");
    build_tree(&tree, 50);
    let a = w.node("node-a").await;
    let first = a.checkpoint(&tree, &id(1, 1), None).await.unwrap();

    // Same node, previous manifest: nothing read, nothing uploaded.
    let second = a
        .checkpoint(&tree, &id(1, 2), Some(&first.manifest))
        .await
        .unwrap();
    assert_eq!(
        (second.stats.bytes_read, second.stats.chunks_uploaded),
        (0, 0)
    );
    assert_eq!(second.stats.files_unchanged, second.stats.files);

    // A node that knows nothing reads everything but finds every chunk
    // stored already.
    let c = w.node("node-c").await;
    let third = c.checkpoint(&tree, &id(1, 3), None).await.unwrap();
    assert_eq!(third.stats.chunks_uploaded, 0, "{:?}", third.stats);
    assert!(third.stats.bytes_read >= 50 * MIB);

    // 1 MiB rewritten in the middle of the 50 MiB file.
    let big = std::fs::OpenOptions::new()
        .write(true)
        .open(tree.join("a/big"))
        .unwrap();
    std::os::unix::fs::FileExt::write_all_at(&big, &noise(99, MIB as usize), 25 * MIB).unwrap();
    drop(big);
    let fourth = a
        .checkpoint(&tree, &id(1, 4), Some(&second.manifest))
        .await
        .unwrap();
    let s = &fourth.stats;
    assert_eq!(s.files_unchanged, s.files - 1, "{s:?}");
    assert_eq!(s.bytes_read, 50 * MIB, "{s:?}");
    assert!(s.chunks_uploaded > 0 && s.bytes_uploaded < 2 * MIB, "{s:?}");

    // Node c, which synced before, learns of a's new pack from the indexes
    // stored since: its own checkpoint of the change uploads no chunk.
    let c_again = c
        .checkpoint(&tree, &id(1, 5), Some(&third.manifest))
        .await
        .unwrap();
    let s = &c_again.stats;
    assert_eq!((s.bytes_read, s.chunks_uploaded), (50 * MIB, 0), "{s:?}");

    let restored = w.node("node-d").await;
    restored.restore(&id(1, 4), &w.path("r")).await.unwrap();
    assert_same_tree(&tree, &w.path("r"));

    // A manifest fetched on a node that never saw its packs tells it where
    // its chunks lie: given as `previous`, nothing is read again.
    let e = w.node("node-e").await;
    let fourth = e.manifest(&id(1, 4)).await.unwrap();
    let fifth = e.checkpoint(&tree, &id(1, 6), Some(&fourth)).await.unwrap();
    assert_eq!(
        (fifth.stats.bytes_read, fifth.stats.chunks_uploaded),
        (0, 0),
        "{:?}",
        fifth.stats
    );
}

/// A store whose pack uploads fail from the `fail_from`-th on.
struct FailingPacks {
    inner: Arc<dyn Blobs>,
    packs: std::sync::atomic::AtomicUsize,
    fail_from: usize,
}

impl Blobs for FailingPacks {
    fn describe(&self) -> &str {
        self.inner.describe()
    }
    fn put<'a>(&'a self, key: &'a str, data: bytes::Bytes) -> BoxFuture<'a, StoreResult<()>> {
        use std::sync::atomic::Ordering;
        if key.starts_with("packs/") && self.packs.fetch_add(1, Ordering::SeqCst) >= self.fail_from
        {
            return Box::pin(async move {
                Err(StoreError::Other {
                    store: "failing".into(),
                    what: format!("put {key}"),
                    detail: "injected failure".into(),
                })
            });
        }
        self.inner.put(key, data)
    }
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, StoreResult<bytes::Bytes>> {
        self.inner.get(key)
    }
    fn exists<'a>(&'a self, key: &'a str) -> BoxFuture<'a, StoreResult<bool>> {
        self.inner.exists(key)
    }
    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, StoreResult<Vec<String>>> {
        self.inner.list(prefix)
    }
    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, StoreResult<()>> {
        self.inner.delete(key)
    }
    fn probe(&self) -> BoxFuture<'_, StoreResult<()>> {
        self.inner.probe()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_counts_as_stored_only_once_its_pack_is() {
    let w = World::new();
    let tree = w.path("tree");
    build_tree(&tree, 30);
    // Packs of 1, 2, 4, 8 MiB, ...: the fourth and later uploads fail.
    let failing: Arc<dyn Blobs> = Arc::new(FailingPacks {
        inner: w.blobs.clone(),
        packs: Default::default(),
        fail_from: 3,
    });
    let state = w.path("node-a");
    let a = node(failing, &w.key, &state).await;
    let e = a.checkpoint(&tree, &id(1, 1), None).await.unwrap_err();
    assert!(e.to_string().contains("injected failure"), "{e}");
    assert!(w.blobs.list("manifests/").await.unwrap().is_empty());
    drop(a);

    // The same node (its index kept) against the working store: the packs
    // that were stored are reused, the chunks of those that were not are
    // uploaded, and the checkpoint restores whole elsewhere.
    let a = node(w.blobs.clone(), &w.key, &state).await;
    let retry = a.checkpoint(&tree, &id(1, 1), None).await.unwrap();
    let s = &retry.stats;
    assert!(s.chunks_reused > 0 && s.chunks_uploaded > 0, "{s:?}");
    assert!(s.bytes_uploaded < 30 * MIB, "{s:?}");
    w.node("node-b")
        .await
        .restore(&id(1, 1), &w.path("r"))
        .await
        .unwrap();
    assert_same_tree(&tree, &w.path("r"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_cached_chunk_is_fetched_again() {
    let w = World::new();
    let tree = w.path("tree");
    build_tree(&tree, 2);
    w.node("a")
        .await
        .checkpoint(&tree, &id(1, 1), None)
        .await
        .unwrap();
    let b = w.node("b").await;
    b.restore(&id(1, 1), &w.path("r1")).await.unwrap();
    let cached = objects(&w.path("b/chunk-cache"));
    assert!(cached.len() > 5, "{cached:?}");
    for victim in &cached[..3] {
        let mut data = std::fs::read(victim).unwrap();
        let mid = data.len() / 2;
        data[mid] ^= 1;
        std::fs::write(victim, data).unwrap();
    }
    let again = b.restore(&id(1, 1), &w.path("r2")).await.unwrap();
    let s = &again.stats;
    assert!(s.chunks_fetched >= 3 && s.chunks_cached > 0, "{s:?}");
    assert_same_tree(&tree, &w.path("r2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_holds_no_plaintext() {
    let w = World::new();
    let tree = w.path("tree");
    build_tree(&tree, 1);
    w.node("a")
        .await
        .checkpoint(&tree, &id(1, 1), None)
        .await
        .unwrap();
    // A pack, its index and the manifest.
    let objects = objects(&w.path("store"));
    let kinds: std::collections::BTreeSet<_> = objects
        .iter()
        .map(|o| {
            o.strip_prefix(w.path("store"))
                .unwrap()
                .iter()
                .next()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(kinds.len(), 3, "{objects:?}");
    for o in objects {
        let data = std::fs::read(&o).unwrap();
        for needle in [
            KNOWN_LINE.as_bytes(),
            b"inside an opaque dir",
            b"text.txt",
            b"overlay",
        ] {
            assert!(
                !data.windows(needle.len()).any(|w| w == needle),
                "{o:?} holds {:?}",
                String::from_utf8_lossy(needle)
            );
        }
    }
}

/// Restoring into `dest` (an existing empty directory) fails with an error
/// naming `chunk`, and leaves `dest` as it was, with nothing beside it.
async fn refused_untouched(w: &World, chunk: &sandstone_checkpoint::ChunkId, want_missing: bool) {
    let dest = w.path("dest");
    std::fs::create_dir_all(&dest).unwrap();
    let before = std::fs::metadata(&dest).unwrap();
    let node = w.node(&format!("fresh-{}", rand_suffix())).await;
    let err = node.restore(&id(1, 1), &dest).await.unwrap_err();
    assert!(err.to_string().contains(&chunk.to_string()), "{err}");
    match (&err, want_missing) {
        (Error::MissingChunk { chunk: c, .. }, true)
        | (Error::CorruptChunk { chunk: c, .. }, false) => {
            assert_eq!(c, chunk)
        }
        _ => panic!("unexpected error {err:?}"),
    }
    assert_eq!(std::fs::read_dir(&dest).unwrap().count(), 0);
    let after = std::fs::metadata(&dest).unwrap();
    assert_eq!(
        (before.ino(), before.mtime_nsec()),
        (after.ino(), after.mtime_nsec())
    );
    let beside: Vec<_> = std::fs::read_dir(w.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().contains("restore"))
        .collect();
    assert!(beside.is_empty(), "left behind: {beside:?}");
}

fn rand_suffix() -> String {
    format!("{:?}", std::time::Instant::now()).replace(|c: char| !c.is_ascii_alphanumeric(), "")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_or_swapped_chunk_is_refused_and_nothing_is_written() {
    let w = World::new();
    let tree = w.path("tree");
    build_tree(&tree, 1);
    let written = w
        .node("a")
        .await
        .checkpoint(&tree, &id(1, 1), None)
        .await
        .unwrap();
    // Packs hold the new chunks in the order the walk met them; the first
    // pack (1 MiB, the largest here) begins with the first chunk the
    // manifest names, that of a/big, and ends with a/big's last.
    let packs = w.packs();
    let pack = &packs
        .iter()
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap()
        .clone();
    let victim = written.manifest.chunks().next().unwrap().id;
    let big = written
        .manifest
        .entries
        .iter()
        .find(|e| e.path.0 == b"a/big");
    let Some(sandstone_checkpoint::Kind::File(big)) = big.map(|e| &e.kind) else {
        panic!("no a/big in the manifest")
    };
    let last = big.extents.last().unwrap().chunks.last().unwrap().id;
    let good = std::fs::read(pack).unwrap();

    // A bit flipped inside the first chunk's ciphertext.
    let mut bad = good.clone();
    bad[40] ^= 0x40;
    std::fs::write(pack, &bad).unwrap();
    refused_untouched(&w, &victim, false).await;

    // Another (valid) pack of the same installation under this name.
    let other_tree = w.path("other");
    std::fs::create_dir(&other_tree).unwrap();
    std::fs::write(other_tree.join("f"), noise(77, 300 << 10)).unwrap();
    w.node("b")
        .await
        .checkpoint(&other_tree, &id(7, 1), None)
        .await
        .unwrap();
    let other = w.packs().into_iter().find(|p| !packs.contains(p)).unwrap();
    std::fs::copy(&other, pack).unwrap();
    refused_untouched(&w, &victim, false).await;

    // Cut short: the chunk past its end is refused, not read as a hole.
    std::fs::write(pack, &good[..good.len() - 10]).unwrap();
    refused_untouched(&w, &last, false).await;

    // Missing: the checkpoint is incomplete and is not used.
    std::fs::remove_file(pack).unwrap();
    refused_untouched(&w, &victim, true).await;

    // Put back, it restores.
    std::fs::write(pack, &good).unwrap();
    let node = w.node("ok").await;
    node.restore(&id(1, 1), &w.path("dest")).await.unwrap();
    assert_same_tree(&tree, &w.path("dest"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fencing_generations_and_destinations() {
    let w = World::new();
    let tree = w.path("tree");
    build_tree(&tree, 1);
    let a = w.node("a").await;
    a.checkpoint(&tree, &id(2, 1), None).await.unwrap();
    // An owner with an older lease may not write any more.
    let e = a.checkpoint(&tree, &id(1, 9), None).await.unwrap_err();
    assert!(matches!(e, Error::Fenced { .. }), "{e}");
    let e = a.checkpoint(&tree, &id(2, 1), None).await.unwrap_err();
    assert!(matches!(e, Error::AlreadyExists(_)), "{e}");
    a.checkpoint(&tree, &id(3, 1), None).await.unwrap();
    let sandbox = SandboxId::new("sb-test").unwrap();
    assert_eq!(a.list(&sandbox).await.unwrap(), [id(2, 1), id(3, 1)]);
    assert_eq!(a.latest(&sandbox).await.unwrap(), Some(id(3, 1)));
    a.delete(&id(2, 1)).await.unwrap();
    a.delete(&id(2, 1)).await.unwrap();
    assert_eq!(a.list(&sandbox).await.unwrap(), [id(3, 1)]);
    let none = SandboxId::new("nobody").unwrap();
    assert_eq!(a.latest(&none).await.unwrap(), None);
    let e = a.restore(&id(9, 9), &w.path("x")).await.unwrap_err();
    assert!(matches!(e, Error::NoSuchCheckpoint { .. }), "{e}");

    // A destination in use is refused and left alone.
    std::fs::create_dir(w.path("busy")).unwrap();
    std::fs::write(w.path("busy/keep"), b"mine").unwrap();
    let e = a.restore(&id(3, 1), &w.path("busy")).await.unwrap_err();
    assert!(matches!(e, Error::DestinationInUse(_)), "{e}");
    assert_eq!(std::fs::read(w.path("busy/keep")).unwrap(), b"mine");

    // Another installation's key opens nothing.
    let stranger = node(
        w.blobs.clone(),
        &MasterKey::generate().unwrap(),
        &w.path("s"),
    )
    .await;
    let e = stranger.restore(&id(3, 1), &w.path("y")).await.unwrap_err();
    assert!(matches!(e, Error::CorruptManifest { .. }), "{e}");
    assert!(!w.path("y").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_changing_under_the_checkpoint_fails_it() {
    let w = World::new();
    let tree = w.path("tree");
    std::fs::create_dir(&tree).unwrap();
    std::fs::write(tree.join("f"), noise(5, 8 << 20)).unwrap();
    let a = w.node("a").await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (f, stop) = (tree.join("f"), stop.clone());
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                i += 1;
                std::fs::write(&f, noise(i, (8 << 20) - (i as usize % 7) * 4096)).unwrap();
            }
        })
    };
    let mut failed = false;
    for g in 1..50 {
        match a.checkpoint(&tree, &id(1, g), None).await {
            Err(Error::Changed { .. }) => {
                failed = true;
                break;
            }
            Err(e) => panic!("{e}"),
            Ok(_) => {}
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().unwrap();
    assert!(
        failed,
        "a file rewritten throughout was never caught changing"
    );
}
