//! One node with an object store (`serve --object-store file://…`): on-demand
//! checkpoints of a running sandbox, a lost volume materialised from the
//! last checkpoint, a corrupted store refused with nothing left behind, and
//! a store that cannot be opened stopping the start with the reason.

// Test helpers fail loudly: an unwrap is the assertion.
#![allow(clippy::unwrap_used)]

mod common;

use common::Daemon;
use serde_json::json;

async fn with_store() -> (Daemon, tempfile::TempDir) {
    let store = tempfile::tempdir().unwrap();
    let mut d = Daemon::set_up(&["--no-pool"], "").await;
    d.serve_args = vec![
        "--object-store".into(),
        format!("file://{}", store.path().display()),
    ];
    d.spawn().await;
    (d, store)
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
