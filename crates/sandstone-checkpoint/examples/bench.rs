//! Checkpoint and restore timings against a store, beside the plain
//! transfers they are judged by (issue #13), measured in the same run:
//!
//! ```text
//! cargo run --release -p sandstone-checkpoint --example bench -- file:///tmp/store [MiB]
//! AWS_ACCESS_KEY_ID=x AWS_SECRET_ACCESS_KEY=x AWS_ENDPOINT_URL=http://127.0.0.1:PORT \
//!   cargo run --release -p sandstone-checkpoint --example bench -- s3://bench/run1 [MiB]
//! ```
//!
//! The tree is `MiB` (default 1024) of incompressible data in 4 MiB files.
//! Then 10 MiB of it is rewritten (two whole files and half of a third)
//! and checkpointed again; restored on a node with a cold cache, and again
//! with a warm one; and restored over the copy of the first checkpoint
//! another node kept (as a node keeps a sandbox's volume when the sandbox
//! moves away), with that node's cache warm and with no cache. The baselines: one PUT of 10 MiB, and a download of as
//! many bytes as the tree holds in 16 MiB objects, as many at once as a
//! restore uses (and again writing each to a file, which any restore must
//! do too). A last restore runs with no chunk cache, to show its cost.

// A benchmark: a failure ends it with its message.
#![allow(clippy::unwrap_used)]

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use sandstone_checkpoint::store::{self, Blobs, S3Blobs, S3Options};
use sandstone_checkpoint::{CheckpointId, Checkpoints, MasterKey, Options, SandboxId};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

const MIB: usize = 1 << 20;
const FILE: usize = 4 * MIB;

/// Deterministic incompressible bytes (xorshift).
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2).wrapping_add(1);
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Waits for the writes so far to reach the disk, so that their
/// write-back does not slow the next timed step.
fn settle() {
    std::process::Command::new("sync").status().unwrap();
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / MIB as f64
}

async fn node(blobs: &Arc<dyn Blobs>, key: &MasterKey, state: &Path) -> Checkpoints {
    Checkpoints::open(blobs.clone(), key, Options::new(state.to_path_buf()))
        .await
        .unwrap()
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let url = args.next().expect("usage: bench STORE-URL [MiB]");
    let size: usize = args.next().map_or(1024, |s| s.parse().unwrap());
    let blobs = store::open(&url, S3Options::default()).unwrap();
    if let Some(rest) = url.strip_prefix("s3://") {
        let bucket = rest.split('/').next().unwrap();
        S3Blobs::new(bucket, "", S3Options::default())
            .unwrap()
            .create_bucket()
            .await
            .unwrap();
    } else if let Some(dir) = url.strip_prefix("file://") {
        std::fs::create_dir_all(dir).unwrap();
    }
    let work = tempfile::tempdir().unwrap();
    let tree = work.path().join("tree");
    let files = size * MIB / FILE;
    for i in 0..files {
        let dir = tree.join(format!("d{:02}", i % 16));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("f{i:04}")), noise(i as u64 + 1, FILE)).unwrap();
    }
    println!("store {url}, tree {size} MiB in {files} files");

    // Baselines.
    let ten = Bytes::from(noise(7, 10 * MIB));
    let mut puts = Vec::new();
    for i in 0..3 {
        let t = Instant::now();
        blobs
            .put(&format!("plain/ten-{i}"), ten.clone())
            .await
            .unwrap();
        puts.push(ms(t));
    }
    println!("plain PUT of 10 MiB: {puts:.0?} ms");
    let parts = size * MIB / (16 * MIB);
    let part = Bytes::from(noise(8, 16 * MIB));
    futures_util::stream::iter(0..parts)
        .map(|i| {
            let (blobs, part) = (blobs.clone(), part.clone());
            async move { blobs.put(&format!("plain/part-{i:04}"), part).await }
        })
        .buffer_unordered(8)
        .try_collect::<Vec<()>>()
        .await
        .unwrap();
    let t = Instant::now();
    let got: usize = futures_util::stream::iter(0..parts)
        .map(|i| {
            let blobs = blobs.clone();
            async move { blobs.get(&format!("plain/part-{i:04}")).await }
        })
        .buffer_unordered(8)
        .map_ok(|b| b.len())
        .try_fold(0, |a, b| async move { Ok(a + b) })
        .await
        .unwrap();
    println!(
        "plain GET of {:.0} MiB (16 MiB objects, 8 at once): {:.0} ms",
        mib(got as u64),
        ms(t)
    );

    // The same, each object written to a file as it arrives: what any
    // restore must at least do.
    let plain_dir = work.path().join("plain");
    std::fs::create_dir(&plain_dir).unwrap();
    settle();
    let t = Instant::now();
    futures_util::stream::iter(0..parts)
        .map(|i| {
            let (blobs, path) = (blobs.clone(), plain_dir.join(format!("{i}")));
            async move {
                let data = blobs.get(&format!("plain/part-{i:04}")).await.unwrap();
                tokio::task::spawn_blocking(move || std::fs::write(path, data).unwrap())
                    .await
                    .unwrap();
            }
        })
        .buffer_unordered(8)
        .collect::<Vec<()>>()
        .await;
    println!("plain GET into files: {:.0} ms", ms(t));
    std::fs::remove_dir_all(&plain_dir).unwrap();

    let key = MasterKey::generate().unwrap();
    let sandbox = SandboxId::new(format!("bench-{}", std::process::id())).unwrap();
    let a = node(&blobs, &key, &work.path().join("node-a")).await;
    let t = Instant::now();
    let first = a
        .checkpoint(&tree, &CheckpointId::new(sandbox.clone(), 1, 1), None)
        .await
        .unwrap();
    println!(
        "first checkpoint: {:.0} ms, {:.1} MiB uploaded",
        ms(t),
        mib(first.stats.bytes_uploaded)
    );
    let t = Instant::now();
    let same = a
        .checkpoint(
            &tree,
            &CheckpointId::new(sandbox.clone(), 1, 2),
            Some(&first.manifest),
        )
        .await
        .unwrap();
    println!(
        "unchanged checkpoint: {:.0} ms, {:.2} MiB uploaded",
        ms(t),
        mib(same.stats.bytes_uploaded)
    );

    // Nodes b and c had the sandbox at its first checkpoint and kept a
    // copy each (made through c, which caches nothing: b's cache stays
    // cold for the cold restore below).
    let b = node(&blobs, &key, &work.path().join("node-b")).await;
    let mut uncached = Options::new(work.path().join("node-c"));
    uncached.cache_bytes = 0;
    let c = Checkpoints::open(blobs.clone(), &key, uncached)
        .await
        .unwrap();
    let first_id = CheckpointId::new(sandbox.clone(), 1, 1);
    let b_copy = work.path().join("b-copy");
    let b_had = c.restore(&first_id, &b_copy).await.unwrap().baseline;
    let c_copy = work.path().join("c-copy");
    let c_had = c.restore(&first_id, &c_copy).await.unwrap().baseline;

    // Three rounds of: 10 MiB rewritten (two files whole, the first half
    // of a third), a checkpoint, and a plain PUT of 10 MiB beside it.
    let mut previous = same.manifest;
    let mut id = CheckpointId::new(sandbox.clone(), 1, 2);
    for round in 0..3u64 {
        let base = round as usize * 3;
        for (i, len) in [(base, FILE), (base + 1, FILE), (base + 2, 2 * MIB)] {
            let path = tree.join(format!("d{:02}/f{i:04}", i % 16));
            let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
            let data = noise(1000 + i as u64, len);
            std::os::unix::fs::FileExt::write_all_at(&f, &data, 0).unwrap();
        }
        id = CheckpointId::new(sandbox.clone(), 1, 3 + round);
        let t = Instant::now();
        let next = a.checkpoint(&tree, &id, Some(&previous)).await.unwrap();
        let took = ms(t);
        let t = Instant::now();
        blobs
            .put(&format!("plain/again-{round}"), ten.clone())
            .await
            .unwrap();
        println!(
            "checkpoint after 10 MiB changed: {took:.0} ms (plain PUT of 10 MiB just after: \
             {:.0} ms), {:.2} MiB uploaded ({} chunks), {:.1} MiB read",
            ms(t),
            mib(next.stats.bytes_uploaded),
            next.stats.chunks_uploaded,
            mib(next.stats.bytes_read)
        );
        previous = next.manifest;
    }

    settle();
    let t = Instant::now();
    let cold = b.restore(&id, &work.path().join("cold")).await.unwrap();
    println!(
        "cold restore: {:.0} ms, {:.1} MiB fetched, {:.1} MiB written",
        ms(t),
        mib(cold.stats.bytes_fetched),
        mib(cold.stats.bytes_written)
    );
    settle();
    let t = Instant::now();
    let warm = b.restore(&id, &work.path().join("warm")).await.unwrap();
    println!(
        "warm restore: {:.0} ms, {} chunks fetched, {:.1} MiB written",
        ms(t),
        warm.stats.chunks_fetched,
        mib(warm.stats.bytes_written)
    );
    settle();
    let t = Instant::now();
    let over = b.restore_over(&id, &b_copy, Some(&b_had)).await.unwrap();
    println!(
        "warm restore over an old copy (30 MiB changed since): {:.0} ms, {} chunks fetched, \
         {:.1} MiB written",
        ms(t),
        over.stats.chunks_fetched,
        mib(over.stats.bytes_written)
    );
    settle();
    let t = Instant::now();
    let over = c.restore_over(&id, &c_copy, Some(&c_had)).await.unwrap();
    println!(
        "restore over an old copy, no chunk cache: {:.0} ms, {:.1} MiB fetched",
        ms(t),
        mib(over.stats.bytes_fetched)
    );
    settle();
    let t = Instant::now();
    c.restore(&id, &work.path().join("uncached")).await.unwrap();
    println!("cold restore, no chunk cache: {:.0} ms", ms(t));
    let t = Instant::now();
    b.manifest(&id).await.unwrap();
    println!("manifest fetch and open alone: {:.0} ms", ms(t));
}
