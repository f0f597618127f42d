//! One node with an object store (`serve --object-store file://…`): on-demand
//! checkpoints of a running sandbox, a lost volume materialised from the
//! last checkpoint, a corrupted store refused with nothing left behind, and
//! a store that cannot be opened stopping the start with the reason.

// Test helpers fail loudly: an unwrap is the assertion.
#![allow(clippy::unwrap_used)]

mod common;

use common::{Daemon, init_pid};
use serde_json::json;

async fn with_store() -> (Daemon, tempfile::TempDir) {
    with_store_args(&[]).await
}

async fn with_store_args(extra: &[&str]) -> (Daemon, tempfile::TempDir) {
    let store = tempfile::tempdir().unwrap();
    let mut d = Daemon::set_up(&["--no-pool"], "").await;
    d.serve_args = vec![
        "--object-store".into(),
        format!("file://{}", store.path().display()),
    ];
    d.serve_args.extend(extra.iter().map(|a| a.to_string()));
    d.spawn().await;
    (d, store)
}

/// A sandbox whose runtime died with its daemon is paused at the restart.
/// Its files may be newer than its last checkpoint, so that checkpoint
/// stops counting (no other node would take it over from it) until a new
/// one, taken in the background, holds them.
#[tokio::test(flavor = "multi_thread")]
async fn a_sandbox_paused_by_recovery_is_checkpointed_again() {
    let (mut d, _store) = with_store().await;
    let id = d.create(json!({})).await;
    let r = d.sh(&id, "echo one > /workspace/one").await;
    assert_eq!(r["exit_code"], 0, "{r}");
    let (s, v) = d
        .post(&format!("/api/v1/sandboxes/{id}/checkpoint"), json!({}))
        .await;
    assert_eq!(s, 200, "{v}");
    let view = format!("/api/v1/sandboxes/{id}");
    let (_, v) = d.get(&view).await;
    let first = v["data"]["last_checkpoint_at"]
        .as_str()
        .unwrap()
        .to_string();
    let r = d.sh(&id, "echo two > /workspace/two").await;
    assert_eq!(r["exit_code"], 0, "{r}");

    d.kill();
    let init = init_pid(&id).expect("init pid");
    let _ = sandstone_sys::process::kill(sandstone_sys::Pid::from_raw(init), libc::SIGKILL);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while init_pid(&id).is_some() {
        assert!(
            std::time::Instant::now() < deadline,
            "init outlived SIGKILL"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    d.spawn().await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let (_, v) = d.get(&view).await;
        assert_eq!(v["data"]["status"], "paused", "{v}");
        if v["data"]["last_checkpoint_at"]
            .as_str()
            .is_some_and(|at| at > first.as_str())
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not checkpointed again: {v}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // The new checkpoint holds the file written after the old one.
    std::fs::remove_dir_all(d.pool_root().join("sandboxes").join(&id)).unwrap();
    let (s, v) = d.post(&format!("{view}/resume"), json!({})).await;
    assert_eq!(s, 200, "{v}");
    let r = d.sh(&id, "cat /workspace/one /workspace/two").await;
    assert_eq!(r["stdout"], "one\ntwo\n", "{r}");
}

/// The daemon collects the store's garbage: a file overwritten twice
/// leaves packs only the pruned first checkpoint named; a round marks
/// them, a later one deletes them, and the sandbox still comes back from
/// its latest checkpoint.
#[tokio::test(flavor = "multi_thread")]
async fn the_daemon_collects_packs_no_checkpoint_names() {
    let (d, store) = with_store_args(&["--gc-grace", "1"]).await;
    let id = d.create(json!({})).await;
    let packs = || objects(&store.path().join("packs")).len();
    let mut most = 0;
    for round in 0..3 {
        let r = d
            .sh(
                &id,
                &format!(
                    "head -c 3000000 /dev/urandom > /workspace/big; echo {round} > /workspace/round"
                ),
            )
            .await;
        assert_eq!(r["exit_code"], 0, "{r}");
        let (s, v) = d
            .post(&format!("/api/v1/sandboxes/{id}/checkpoint"), json!({}))
            .await;
        assert_eq!(s, 200, "{v}");
        most = most.max(packs());
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while packs() >= most {
        assert!(
            std::time::Instant::now() < deadline,
            "no pack was collected"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let (s, v) = d
        .post(&format!("/api/v1/sandboxes/{id}/pause"), json!({}))
        .await;
    assert_eq!(s, 200, "{v}");
    std::fs::remove_dir_all(d.pool_root().join("sandboxes").join(&id)).unwrap();
    std::fs::remove_dir_all(d.data.path().join("checkpoints")).unwrap();
    let (s, v) = d
        .post(&format!("/api/v1/sandboxes/{id}/resume"), json!({}))
        .await;
    assert_eq!(s, 200, "{v}");
    let r = d.sh(&id, "cat /workspace/round").await;
    assert_eq!(r["stdout"], "2\n", "{r}");
}

/// Every object of a `file://` store.
fn objects(root: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                found.push(e.path());
            }
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread")]
async fn checkpoints_bring_back_a_lost_volume_and_refuse_a_corrupted_one() {
    let (d, store) = with_store().await;
    let id = d.create(json!({})).await;
    let r = d
        .sh(&id, "echo 'secret plaintext line' > /workspace/a.txt; head -c 2000000 /dev/urandom > /workspace/b.bin; sha256sum /workspace/b.bin")
        .await;
    let sum = r["stdout"].as_str().unwrap().to_string();

    // On demand, while it runs.
    let (s, v) = d
        .post(&format!("/api/v1/sandboxes/{id}/checkpoint"), json!({}))
        .await;
    assert_eq!(s, 200, "{v}");
    assert!(
        v["data"]["stats"]["bytes_uploaded"].as_u64().unwrap() > 2_000_000,
        "{v}"
    );
    // Again, unchanged: the chunks are stored already.
    let (s, v) = d
        .post(&format!("/api/v1/sandboxes/{id}/checkpoint"), json!({}))
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["data"]["stats"]["chunks_uploaded"], 0, "{v}");
    // A third: only the two newest are kept (older ones would only keep
    // packs from the collector).
    let (s, v) = d
        .post(&format!("/api/v1/sandboxes/{id}/checkpoint"), json!({}))
        .await;
    assert_eq!(s, 200, "{v}");
    let kept = std::fs::read_dir(store.path().join("manifests").join(&id)).unwrap();
    assert_eq!(kept.count(), 2);
    // Nothing in the store holds the plaintext.
    let all = objects(store.path());
    assert!(!all.is_empty());
    for o in &all {
        let bytes = std::fs::read(o).unwrap();
        assert!(
            !bytes.windows(22).any(|w| w == b"secret plaintext line\n"),
            "{o:?} holds a workspace line in the clear"
        );
    }

    // Paused (checkpointed), then its volume lost: a resume materialises it.
    let (s, v) = d
        .post(&format!("/api/v1/sandboxes/{id}/pause"), json!({}))
        .await;
    assert_eq!(s, 200, "{v}");
    let volume = d.pool_root().join("sandboxes").join(&id);
    std::fs::remove_dir_all(&volume).unwrap();
    let (s, v) = d
        .post(&format!("/api/v1/sandboxes/{id}/resume"), json!({}))
        .await;
    assert_eq!(s, 200, "{v}");
    let r = d
        .sh(&id, "cat /workspace/a.txt; sha256sum /workspace/b.bin")
        .await;
    assert_eq!(
        r["stdout"].as_str().unwrap(),
        format!("secret plaintext line\n{sum}")
    );

    // A restore a crash interrupted (its staging dir still there, the
    // files half moved in) is done again, not taken for the volume.
    let (s, _) = d
        .post(&format!("/api/v1/sandboxes/{id}/pause"), json!({}))
        .await;
    assert_eq!(s, 200);
    std::fs::remove_dir_all(volume.join("workspace")).unwrap();
    std::fs::create_dir(volume.join("workspace")).unwrap();
    std::fs::create_dir(volume.join(".restore")).unwrap();
    let (s, v) = d
        .post(&format!("/api/v1/sandboxes/{id}/resume"), json!({}))
        .await;
    assert_eq!(s, 200, "{v}");
    let r = d.sh(&id, "cat /workspace/a.txt").await;
    assert_eq!(r["stdout"], "secret plaintext line\n", "{r}");
    assert!(!volume.join(".restore").exists());

    // Every stored chunk altered, the volume lost again: the resume is refused,
    // naming a chunk, and leaves no volume behind.
    let (s, _) = d
        .post(&format!("/api/v1/sandboxes/{id}/pause"), json!({}))
        .await;
    assert_eq!(s, 200);
    // (Chunks are packed into `packs/`; `chunks/` held them one per object.)
    let stored: Vec<_> = objects(store.path())
        .into_iter()
        .filter(|p| {
            let p = p.strip_prefix(store.path()).unwrap();
            p.starts_with("packs") || p.starts_with("chunks")
        })
        .collect();
    assert!(!stored.is_empty());
    for pack in stored {
        let mut bytes = std::fs::read(&pack).unwrap();
        let at = bytes.len() / 2;
        bytes[at] ^= 0xff;
        std::fs::write(&pack, bytes).unwrap();
    }
    std::fs::remove_dir_all(&volume).unwrap();
    std::fs::remove_dir_all(d.data.path().join("checkpoints")).unwrap();
    let (s, v) = d
        .post(&format!("/api/v1/sandboxes/{id}/resume"), json!({}))
        .await;
    assert_eq!(s, 503, "{v}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("chunk"), "{v}");
    assert!(!volume.exists(), "a refused restore left a volume");
    let (_, v) = d.get(&format!("/api/v1/sandboxes/{id}")).await;
    assert_eq!(v["data"]["status"], "paused", "{v}");
}

/// With a store, snapshots and forks are checkpointed: a restore from the
/// node's own copy, and one from the store when that copy is gone, leave
/// the snapshot's files, checkpointed (the volume lost after a restore
/// comes back restored); a fork's volume lost comes back from its
/// checkpoint; deleting the snapshot deletes its manifests.
#[tokio::test(flavor = "multi_thread")]
async fn snapshots_and_forks_are_checkpointed_and_restored_from_the_store() {
    let (d, store) = with_store().await;
    let id = d.create(json!({})).await;
    let v1 = d
        .sh(
            &id,
            "set -e; echo v1 > /workspace/f; head -c 2000000 /dev/urandom > /workspace/blob; \
             sha256sum /workspace/blob",
        )
        .await;
    assert_eq!(v1["exit_code"], 0, "{v1}");
    let want = format!("v1\n{}", v1["stdout"].as_str().unwrap());
    let check = "cat /workspace/f; sha256sum /workspace/blob";
    let (s, v) = d
        .post(&format!("/api/v1/sandboxes/{id}/snapshots"), json!({}))
        .await;
    assert_eq!(s, 201, "{v}");
    let snap = v["data"]["id"].as_str().unwrap().to_string();
    let manifests = store.path().join("manifests").join(&snap);
    assert_eq!(std::fs::read_dir(&manifests).unwrap().count(), 1);
    // A fork that would keep memory is refused, naming the field, and
    // makes no sandbox.
    let (_, before) = d.get("/api/v1/sandboxes").await;
    let (s, v) = d
        .post(
            &format!("/api/v1/sandboxes/{id}/fork"),
            json!({"memory": true}),
        )
        .await;
    assert_eq!(s, 400, "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("`memory`"),
        "{v}"
    );
    let (_, after) = d.get("/api/v1/sandboxes").await;
    assert_eq!(before["data"]["count"], after["data"]["count"]);
    let (s, v) = d
        .post(
            &format!("/api/v1/sandboxes/{id}/fork"),
            json!({"memory": false}),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let fork = v["data"]["sandbox"]["id"].as_str().unwrap().to_string();

    let volume = d.pool_root().join("sandboxes").join(&id);
    let restore = format!("/api/v1/sandboxes/{id}/rootfs/restore");
    // From this node's copy, and from the store once the copy is gone.
    for local in [true, false] {
        let r = d
            .sh(&id, "set -e; echo later > /workspace/f; rm /workspace/blob")
            .await;
        assert_eq!(r["exit_code"], 0, "{r}");
        let (s, v) = d
            .post(&format!("/api/v1/sandboxes/{id}/pause"), json!({}))
            .await;
        assert_eq!(s, 200, "{v}");
        if !local {
            std::fs::remove_dir_all(d.pool_root().join("snapshots").join(&snap)).unwrap();
        }
        let (s, v) = d.post(&restore, json!({"snapshot_id": snap})).await;
        assert_eq!(s, 200, "{v}");
        // The restore was checkpointed: its volume lost, it comes back.
        std::fs::remove_dir_all(&volume).unwrap();
        let (s, v) = d
            .post(&format!("/api/v1/sandboxes/{id}/resume"), json!({}))
            .await;
        assert_eq!(s, 200, "{v}");
        let r = d.sh(&id, check).await;
        assert_eq!(r["stdout"], want.as_str(), "local copy: {local}: {r}");
    }

    std::fs::remove_dir_all(d.pool_root().join("sandboxes").join(&fork)).unwrap();
    let (s, v) = d
        .post(&format!("/api/v1/sandboxes/{fork}/resume"), json!({}))
        .await;
    assert_eq!(s, 200, "{v}");
    let r = d.sh(&fork, check).await;
    assert_eq!(r["stdout"], want.as_str(), "{r}");

    let (s, v) = d
        .delete(&format!("/api/v1/sandbox-rootfs-snapshots/{snap}"))
        .await;
    assert_eq!(s, 200, "{v}");
    let left = std::fs::read_dir(&manifests).map_or(0, |r| r.count());
    assert_eq!(left, 0, "the snapshot's manifests outlived it");
}

/// A store that cannot be used stops the start, saying why.
#[tokio::test(flavor = "multi_thread")]
async fn an_unusable_object_store_stops_the_start() {
    let d = Daemon::set_up(&["--no-pool"], "").await;
    for (url, needle) in [
        ("ftp://nowhere/x", "object store URL"),
        ("s3://no-such-bucket/x", "AWS_ACCESS_KEY_ID"),
    ] {
        let out = std::process::Command::new(common::sandstone_bin())
            .args([
                "serve",
                "--no-network",
                "--listen",
                "127.0.0.1:0",
                "--object-store",
                url,
            ])
            .arg("--data-dir")
            .arg(d.data.path())
            .env("SANDSTONE_INIT", common::init_bin())
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .env_remove("SANDSTONE_DATABASE_URL")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{url}: started");
        assert!(
            err.contains("--object-store") && err.contains(needle),
            "{url}: {err}"
        );
    }
}
