//! Several nodes on one PostgreSQL database (#13): any node answers any
//! call, placement picks the least-loaded node, a dead owner is a clear
//! error, nodes authenticate each other by the node key. Run in the
//! PostgreSQL pass of `scripts/test.sh`; skipped (with a line saying so)
//! without `SANDSTONE_TEST_DATABASE_URL`.

// Test helpers fail loudly: an unwrap is the assertion.
#![allow(clippy::unwrap_used)]

mod common;

use common::cluster::Cluster;
use serde_json::{Value, json};
use std::time::Duration;

const TTL: Duration = Duration::from_secs(2);

/// Three nodes see each other; a create through node 2 is placed on the
/// least-loaded node; exec, a streamed upload and download, a WebSocket and
/// a delete through the other nodes reach the sandbox where it runs.
#[tokio::test]
async fn any_node_serves_any_sandbox_and_creates_go_to_the_least_loaded() {
    let Some(c) = Cluster::start(3, TTL).await else {
        return;
    };
    let [n1, n2, n3] = [&c.nodes[0], &c.nodes[1], &c.nodes[2]];
    let mut live = c.live_nodes(2).await;
    live.sort();
    assert_eq!(live, ["node-1", "node-2", "node-3"]);

    // All empty: the tie goes to the lowest id, whichever node is asked.
    let a = n2.create(json!({})).await;
    assert_eq!(c.holder(&a), Some(0), "first sandbox on node-1");
    // Once node-1's announcement shows its sandbox, node-2 is least loaded.
    tokio::time::sleep(TTL).await;
    let b = n3.create(json!({})).await;
    assert_eq!(c.holder(&b), Some(1), "second sandbox on node-2");

    // Exec through node 3 on node 1's sandbox.
    let r = n3
        .sh(
            &a,
            "echo $((6*7)) > /workspace/answer; cat /workspace/answer",
        )
        .await;
    assert_eq!(r["stdout"], "42\n", "{r}");
    // A 3 MiB upload through node 3, read back through node 2.
    let body: Vec<u8> = (0..=255u8).cycle().take(3 << 20).collect();
    let path = format!("/api/v1/sandboxes/{a}/files?path=/workspace/big.bin");
    let resp = n3
        .http
        .post(format!("{}{path}", n3.url))
        .bearer_auth(&n3.token)
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let got = n2
        .http
        .get(format!("{}{path}", n2.url))
        .bearer_auth(&n2.token)
        .send()
        .await
        .unwrap();
    assert_eq!(got.status(), 200);
    assert!(got.bytes().await.unwrap() == body, "download differs");
    let on_disk = n1.sh(&a, "sha256sum < /workspace/big.bin").await;
    assert!(
        on_disk["stdout"]
            .as_str()
            .unwrap()
            .starts_with(&common::sha256sum(&body)),
        "{on_disk}"
    );

    // A WebSocket through node 3: file events from node 1's sandbox.
    {
        use futures_util::{SinkExt, StreamExt};
        use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest};
        let url = format!("{}/api/v1/sandboxes/{a}/files/watch", n3.url).replacen("http", "ws", 1);
        let mut req = url.into_client_request().unwrap();
        req.headers_mut().insert(
            "authorization",
            format!("Bearer {}", n3.token).parse().unwrap(),
        );
        let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
        let sub = json!({"action": "subscribe", "path": "/workspace", "recursive": true});
        ws.send(Message::Text(sub.to_string().into()))
            .await
            .unwrap();
        let mut seen = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        let mut wrote = false;
        while !seen.iter().any(|t: &String| t.contains("through-node-3")) {
            let m = tokio::time::timeout_at(deadline, ws.next())
                .await
                .expect("file events through node 3 in time");
            let Some(Ok(Message::Text(t))) = m else {
                panic!("{m:?}")
            };
            if !wrote && t.contains("subscribed") {
                n2.sh(&a, "echo x > /workspace/through-node-3").await;
                wrote = true;
            }
            seen.push(t.to_string());
        }
    }

    // Lists read the shared database: every node lists both sandboxes.
    for n in [n1, n2, n3] {
        let (s, v) = n.get("/api/v1/sandboxes").await;
        assert_eq!(s, 200);
        let ids: Vec<&str> = v["data"]["sandboxes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["id"].as_str().unwrap())
            .collect();
        assert!(
            ids.contains(&a.as_str()) && ids.contains(&b.as_str()),
            "{v}"
        );
    }

    // A snapshot through node 3, a sandbox from it through node 2 (placed
    // where the snapshot's volume is), the snapshot deleted through node 2.
    let (st, v) = n3
        .post(&format!("/api/v1/sandboxes/{a}/snapshots"), json!({}))
        .await;
    assert_eq!(st, 201, "{v}");
    let snap = v["data"]["id"].as_str().unwrap().to_string();
    let (st, v) = n2
        .post("/api/v1/sandboxes", json!({"snapshot_id": snap}))
        .await;
    assert_eq!(st, 201, "{v}");
    let from_snap = v["data"]["sandbox_id"].as_str().unwrap().to_string();
    assert_eq!(c.holder(&from_snap), Some(0), "created beside its snapshot");
    let r = n2.sh(&from_snap, "cat /workspace/answer").await;
    assert_eq!(r["stdout"], "42\n", "{r}");
    let (st, v) = n2
        .delete(&format!("/api/v1/sandbox-rootfs-snapshots/{snap}"))
        .await;
    assert_eq!(st, 200, "{v}");
    assert!(n1.snapshot_volumes().is_empty(), "node 1 kept the snapshot");

    // A delete through node 3 removes node 1's volume.
    let (s, v) = n3.delete(&format!("/api/v1/sandboxes/{a}")).await;
    assert!(s < 300, "{v}");
    assert_eq!(c.holder(&a), None);
    let (s, _) = n2.get(&format!("/api/v1/sandboxes/{a}")).await;
    assert_eq!(s, 404);
}

/// Nodes accept each other's calls by the node key alone; a forged key is
/// refused; a forwarded call that reaches a node that is not the owner is
/// refused, never forwarded again.
#[tokio::test]
async fn node_key_authenticates_and_forwarded_calls_are_not_forwarded_again() {
    let Some(c) = Cluster::start(2, TTL).await else {
        return;
    };
    let [n1, n2] = [&c.nodes[0], &c.nodes[1]];
    let a = n1.create(json!({})).await;
    assert_eq!(c.holder(&a), Some(0));
    let call = |token: &str, forwarded: bool| {
        let mut r = n2
            .http
            .get(format!("{}/api/v1/sandboxes/{a}/status", n2.url))
            .header("x-sandstone-node-token", token);
        if forwarded {
            r = r.header("x-sandstone-forwarded-by", "node-9");
        }
        r.send()
    };
    let token = c.node_token();
    // The node key alone authenticates (and node 2 forwards to node 1).
    let r = call(&token, false).await.unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    // A forged key is not a node.
    let r = call(&"0".repeat(64), false).await.unwrap();
    assert_eq!(r.status(), 401);
    // Already forwarded once: node 2 does not own it, so it refuses.
    let r = call(&token, true).await.unwrap();
    assert_eq!(r.status(), 503);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "not_owner", "{v}");
    // The same header from an ordinary caller is not a node's word: the
    // call is forwarded to the owner as any other.
    let r = n2
        .http
        .get(format!("{}/api/v1/sandboxes/{a}/status", n2.url))
        .bearer_auth(&n2.token)
        .header("x-sandstone-forwarded-by", "node-9")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
}

/// A dead owner is a clear error, at once (its address refuses: 502 naming
/// it) and after its lease runs out (503 naming it); a drained node gets no
/// new sandboxes, and undraining it brings it back.
#[tokio::test]
async fn a_dead_owner_is_a_clear_error_and_a_drained_node_gets_no_creates() {
    let Some(mut c) = Cluster::start(2, TTL).await else {
        return;
    };
    // Drain node 1 through node 2's API and the CLI.
    let out = std::process::Command::new(common::sandstone_bin())
        .args(["node", "drain", "node-1"])
        .env("SANDSTONE_URL", &c.nodes[1].url)
        .env("SANDSTONE_TOKEN", &c.nodes[1].token)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Every node sees a drain at its next announcement round.
    tokio::time::sleep(TTL).await;
    let (_, v) = c.nodes[0].get("/api/v1/nodes").await;
    let node1 = &v["data"]["nodes"][0];
    assert_eq!(
        (node1["id"].as_str(), node1["draining"].as_bool()),
        (Some("node-1"), Some(true))
    );
    for _ in 0..2 {
        let id = c.nodes[0].create(json!({})).await;
        assert_eq!(c.holder(&id), Some(1), "a drained node got a new sandbox");
    }
    let (s, _) = c.nodes[0]
        .post("/api/v1/nodes/node-1/undrain", json!({}))
        .await;
    assert_eq!(s, 200);
    let (s, v) = c.nodes[0]
        .post("/api/v1/nodes/node-7/drain", json!({}))
        .await;
    assert_eq!(s, 404, "{v}");
    tokio::time::sleep(TTL).await;

    let a = c.nodes[0].create(json!({})).await;
    assert_eq!(c.holder(&a), Some(0), "undrained node-1 is least loaded");
    c.nodes[0].kill();
    let path = format!("/api/v1/sandboxes/{a}/files/list?path=/workspace");
    let (s, v) = c.nodes[1].get(&path).await;
    assert_eq!(s, 502, "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("node-1"),
        "{v}"
    );
    tokio::time::sleep(TTL + Duration::from_millis(500)).await;
    let (s, v) = c.nodes[1].get(&path).await;
    assert_eq!(s, 503, "{v}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("node-1") && msg.contains("lease"), "{v}");
    // With node 1 gone, creates go to node 2 without waiting on it.
    let b = c.nodes[1].create(json!({})).await;
    assert_eq!(c.holder(&b), Some(1));
    // Node 1 back: its sandbox is served again (files kept; the runtime
    // it had was stopped with it, so it comes back paused or running).
    c.nodes[0].spawn().await;
    c.wait_live(2).await;
    let (s, v) = c.nodes[1].get(&path).await;
    assert_eq!(s, 200, "{v}");
}

/// With an object store: a sandbox paused on node 1 has a complete
/// checkpoint; node 1 is killed (`kill -9`); a resume through node 2 takes
/// the sandbox over and brings back the same files on node 2; node 1, back,
/// removes its stale copy and forwards calls to the new owner.
#[tokio::test]
async fn a_paused_sandbox_resumes_on_another_node_after_its_node_dies() {
    let Some(mut c) = Cluster::start_with(2, TTL, true).await else {
        return;
    };
    let a = c.nodes[0].create(json!({})).await;
    assert_eq!(c.holder(&a), Some(0));
    let script = "set -e; mkdir -p /workspace/d /srv/app; \
        echo 'the plaintext line of a workspace file' > /workspace/d/notes.txt; \
        ln /workspace/d/notes.txt /workspace/d/hard; ln -s d/notes.txt /workspace/link; \
        head -c 5000000 /dev/urandom > /workspace/blob; chmod 0751 /workspace/d; \
        echo rootfs > /srv/app/conf; sha256sum /workspace/blob";
    let before = c.nodes[0].sh(&a, script).await;
    assert_eq!(before["exit_code"], 0, "{before}");
    // Paused through node 2: forwarded to node 1, which checkpoints it.
    let (s, v) = c.nodes[1]
        .post(&format!("/api/v1/sandboxes/{a}/pause"), json!({}))
        .await;
    assert_eq!(s, 200, "{v}");
    c.nodes[0].kill();
    tokio::time::sleep(TTL + Duration::from_millis(500)).await;

    let (s, v) = c.nodes[1]
        .post(&format!("/api/v1/sandboxes/{a}/resume"), json!({}))
        .await;
    assert_eq!(s, 200, "{v}");
    assert!(
        c.nodes[1].volumes().contains(&a),
        "the sandbox now lives on node 2"
    );
    let check = "sha256sum /workspace/blob; cat /workspace/link; stat -c '%h %a' /workspace/d/hard /workspace/d; cat /srv/app/conf";
    let after = c.nodes[1].sh(&a, check).await;
    let want = format!(
        "{}the plaintext line of a workspace file\n2 644\n2 751\nrootfs\n",
        before["stdout"].as_str().unwrap()
    );
    assert_eq!(after["stdout"], want.as_str(), "{after}");

    // Node 1 comes back: its copy is no longer its own and is set aside;
    // calls through it reach node 2.
    c.nodes[0].spawn().await;
    c.wait_live(2).await;
    assert!(
        !c.nodes[0].volumes().contains(&a),
        "node 1 kept a stale copy in use"
    );
    let kept = c.nodes[0]
        .pool_root()
        .join("sandboxes")
        .join(format!("{a}.retained"));
    let ino =
        |p: std::path::PathBuf| std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(p).unwrap());
    let blob_ino = ino(kept.join("workspace/blob"));
    let r = c.nodes[0].sh(&a, "cat /srv/app/conf").await;
    assert_eq!(r["stdout"], "rootfs\n", "{r}");

    // It changes on node 2, pauses there, and node 2 dies: the resume
    // through node 1 brings node 1's retained copy up to date. The 5 MB
    // blob, unchanged, keeps its inode: it was not written again.
    let r = c.nodes[1]
        .sh(&a, "echo changed on node 2 > /workspace/d/notes.txt; rm /workspace/link; echo new > /workspace/new")
        .await;
    assert_eq!(r["exit_code"], 0, "{r}");
    let (s, v) = c.nodes[1]
        .post(&format!("/api/v1/sandboxes/{a}/pause"), json!({}))
        .await;
    assert_eq!(s, 200, "{v}");
    c.nodes[1].kill();
    tokio::time::sleep(TTL + Duration::from_millis(500)).await;
    let (s, v) = c.nodes[0]
        .post(&format!("/api/v1/sandboxes/{a}/resume"), json!({}))
        .await;
    assert_eq!(s, 200, "{v}");
    assert!(c.nodes[0].volumes().contains(&a) && !kept.exists());
    let volume = c.nodes[0].pool_root().join("sandboxes").join(&a);
    assert_eq!(
        ino(volume.join("workspace/blob")),
        blob_ino,
        "the blob was rewritten"
    );
    let check = "sha256sum /workspace/blob; cat /workspace/d/hard /workspace/new; test ! -e /workspace/link && echo no link";
    let r = c.nodes[0].sh(&a, check).await;
    let want = format!(
        "{}changed on node 2\nnew\nno link\n",
        before["stdout"].as_str().unwrap()
    );
    assert_eq!(r["stdout"], want.as_str(), "{r}");
}

/// The manifests of sandbox `id` in the test bucket, as (epoch,
/// generation), oldest first (moto answers unauthenticated lists).
async fn manifests(c: &Cluster, id: &str) -> Vec<(u64, u64)> {
    let s3 = c.s3.as_ref().unwrap();
    let url = format!(
        "{}/{}?list-type=2&prefix=nodes/manifests/{id}/",
        s3.endpoint,
        common::cluster::Moto::BUCKET
    );
    let xml = reqwest::get(url).await.unwrap().text().await.unwrap();
    let mut out: Vec<(u64, u64)> = xml
        .split("<Key>")
        .skip(1)
        .filter_map(|k| {
            let name = k.split("</Key>").next()?.rsplit('/').next()?;
            let (e, g) = name.split_once('-')?;
            Some((e.parse().ok()?, g.parse().ok()?))
        })
        .collect();
    out.sort();
    out
}

/// The states (`R`, `S`, `T`…) of the host processes that have `marker`
/// in their command line.
fn states_of(marker: &str) -> Vec<char> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| {
            let dir = e.ok()?.path();
            let cmd = std::fs::read(dir.join("cmdline")).ok()?;
            if !String::from_utf8_lossy(&cmd).contains(marker) {
                return None;
            }
            let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
            stat.rsplit(") ").next()?.chars().next()
        })
        .collect()
}

/// How many host processes have `marker` in their command line.
fn processes_with(marker: &str) -> usize {
    states_of(marker).len()
}

/// Waits (`limit` at most) until `f` holds.
async fn eventually(limit: Duration, what: &str, mut f: impl AsyncFnMut() -> bool) {
    let deadline = std::time::Instant::now() + limit;
    while !f().await {
        assert!(std::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A node that dies while its sandbox runs: once its lease has run out the
/// sandbox is marked lost (shown as failed, `lost`, with the time of its
/// last checkpoint); calls that need it running say so and do not move it;
/// an explicit resume through another node starts it there from its last
/// checkpoint (a file written after it is gone, as documented); and the
/// old node, back, stops what still ran of it and sets its copy aside.
#[tokio::test]
async fn a_running_sandbox_of_a_dead_node_is_lost_and_resumes_from_its_checkpoint() {
    let Some(mut c) = Cluster::start_with(2, TTL, true).await else {
        return;
    };
    let a = c.nodes[0].create(json!({})).await;
    assert_eq!(c.holder(&a), Some(0));
    let marker = format!("lost-marker-{a}");
    let r = c.nodes[0]
        .sh(&a, &format!("echo checkpointed > /workspace/v1; sh -c 'sleep 600; true' {marker} >/dev/null 2>&1 &"))
        .await;
    assert_eq!(r["exit_code"], 0, "{r}");
    let (s, v) = c.nodes[1]
        .post(&format!("/api/v1/sandboxes/{a}/checkpoint"), json!({}))
        .await;
    assert_eq!(s, 200, "{v}");
    let r = c.nodes[0].sh(&a, "echo after > /workspace/v2").await;
    assert_eq!(r["exit_code"], 0, "{r}");
    assert_eq!(processes_with(&marker), 1);

    c.nodes[0].kill();
    let view = format!("/api/v1/sandboxes/{a}");
    eventually(TTL * 4, "the sandbox is marked lost", async || {
        let (_, v) = c.nodes[1].get(&view).await;
        v["data"]["lost"] == true
    })
    .await;
    let (s, v) = c.nodes[1].get(&view).await;
    assert_eq!(s, 200, "{v}");
    let d = &v["data"];
    assert_eq!(d["status"], "failed", "{v}");
    assert!(d["last_checkpoint_at"].is_string(), "{v}");
    assert!(
        d["status_reason"].as_str().unwrap().contains("node-1"),
        "{v}"
    );
    // A call that needs it running is told what happened, and moves nothing.
    let (s, v) = c.nodes[1]
        .get(&format!("/api/v1/sandboxes/{a}/files/list?path=/workspace"))
        .await;
    assert_eq!(s, 409, "{v}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("lost") && msg.contains("resume"), "{v}");
    assert!(!c.nodes[1].volumes().contains(&a));

    let (s, v) = c.nodes[1]
        .post(&format!("/api/v1/sandboxes/{a}/resume"), json!({}))
        .await;
    assert_eq!(s, 200, "{v}");
    assert!(c.nodes[1].volumes().contains(&a), "resumed on node 2");
    let r = c.nodes[1]
        .sh(&a, "cat /workspace/v1; ls /workspace/v2 2>&1 || true")
        .await;
    let out = r["stdout"].as_str().unwrap();
    assert!(
        out.starts_with("checkpointed\n") && out.contains("No such file"),
        "{r}"
    );
    let (_, v) = c.nodes[1].get(&view).await;
    assert_eq!(
        (v["data"]["status"].as_str(), v["data"]["lost"].as_bool()),
        (Some("running"), None),
        "{v}"
    );

    // Node 1 back: the runtime that outlived its daemon is stopped and its
    // copy set aside (another node runs the sandbox now).
    c.nodes[0].spawn().await;
    c.wait_live(2).await;
    eventually(TTL * 4, "node 1 stops its stale copy", async || {
        let volumes = c.nodes[0].volumes();
        processes_with(&marker) == 0 && volumes == [format!("{a}.retained")]
    })
    .await;
    let r = c.nodes[0].sh(&a, "cat /workspace/v1").await;
    assert_eq!(r["stdout"], "checkpointed\n", "{r}");
}

/// A running sandbox that was never checkpointed, lost with its node,
/// cannot resume elsewhere (a 409 saying why) but can be deleted through
/// another node; its node, back, removes its files.
#[tokio::test]
async fn a_lost_sandbox_without_a_checkpoint_can_be_deleted() {
    let Some(mut c) = Cluster::start_with(2, TTL, true).await else {
        return;
    };
    let b = c.nodes[0].create(json!({})).await;
    assert_eq!(c.holder(&b), Some(0));
    c.nodes[0].kill();
    let view = format!("/api/v1/sandboxes/{b}");
    eventually(TTL * 4, "the sandbox is marked lost", async || {
        let (_, v) = c.nodes[1].get(&view).await;
        v["data"]["lost"] == true
    })
    .await;
    let (s, v) = c.nodes[1]
        .post(&format!("/api/v1/sandboxes/{b}/resume"), json!({}))
        .await;
    assert_eq!(s, 409, "{v}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("no checkpoint") && msg.contains("node-1"),
        "{v}"
    );
    let (s, v) = c.nodes[1].delete(&format!("/api/v1/sandboxes/{b}")).await;
    assert_eq!(s, 202, "{v}");
    let (s, v) = c.nodes[1].get(&format!("/api/v1/sandboxes/{b}")).await;
    assert_eq!(s, 404, "{v}");

    c.nodes[0].spawn().await;
    c.wait_live(2).await;
    eventually(TTL * 4, "node 1 removes the deleted sandbox", async || {
        c.nodes[0].volumes().is_empty()
    })
    .await;
}

/// Fencing under a frozen node: node 1's daemon is stopped (SIGSTOP) past
/// its lease while its sandbox runs and node 1 checkpoints every second.
/// The sandbox's own init stops its processes once the lease deadline
/// passes; node 2 marks the sandbox lost and a resume takes it over from
/// its checkpoint. Thawed, node 1 serves nothing until it has renewed and
/// checked its sandboxes, then kills its copy and removes its files, and
/// never writes the sandbox's row or a checkpoint of it again.
#[tokio::test]
async fn a_node_frozen_past_its_lease_stops_the_sandbox_another_took() {
    let Some(mut c) = Cluster::start_with(2, TTL, true).await else {
        return;
    };
    // Node 1 checkpoints its running sandboxes every second: after the
    // thaw, only fencing keeps it from writing the old epoch again.
    c.nodes[0].stop();
    c.nodes[0]
        .env
        .push(("SANDSTONE_CHECKPOINT_INTERVAL".into(), "1".into()));
    c.nodes[0].spawn().await;
    c.wait_live(2).await;
    let a = c.nodes[0].create(json!({})).await;
    assert_eq!(c.holder(&a), Some(0));
    let marker = format!("frozen-marker-{a}");
    let r = c.nodes[0]
        .sh(&a, &format!("echo before > /workspace/f; sh -c 'while :; do date +%s%N >> /workspace/ticks; sleep 0.1; done' {marker} >/dev/null 2>&1 &"))
        .await;
    assert_eq!(r["exit_code"], 0, "{r}");
    eventually(
        Duration::from_secs(10),
        "an interval checkpoint",
        async || !manifests(&c, &a).await.is_empty(),
    )
    .await;

    let pid = common::pid_of(c.nodes[0].child.as_ref().unwrap());
    sandstone_sys::process::kill(pid, libc::SIGSTOP).unwrap();
    let thaw = Thaw(pid);
    // Until its lease has run out, node 2 still forwards to node 1, where
    // a call would wait for the thaw.
    tokio::time::sleep(TTL + Duration::from_secs(1)).await;
    let view = format!("/api/v1/sandboxes/{a}");
    eventually(TTL * 4, "node 2 marks the sandbox lost", async || {
        let (_, v) = c.nodes[1].get(&view).await;
        v["data"]["lost"] == true
    })
    .await;
    let (s, v) = c.nodes[1]
        .post(&format!("/api/v1/sandboxes/{a}/resume"), json!({}))
        .await;
    assert_eq!(s, 200, "{v}");
    assert!(c.nodes[1].volumes().contains(&a));
    let taken_at = sandstone_api::timefmt::now_ms() as u64;
    let epoch = manifests(&c, &a).await.last().unwrap().0;
    assert!(epoch >= 1, "the new owner republished under its epoch");
    let r = c.nodes[1].sh(&a, "cat /workspace/f").await;
    assert_eq!(r["stdout"], "before\n", "{r}");
    // Node 1's daemon cannot act, but its copy is stopped: the sandbox's
    // init saw the lease deadline pass (before node 2 could mark it lost).
    // (A process in uninterruptible sleep when the stop came, under a
    // loaded disk, stops once it is out.)
    eventually(
        Duration::from_secs(10),
        "node 1's copy stopped",
        async || states_of(&marker) == ['T'],
    )
    .await;

    drop(thaw);
    // Thawed: its copy is stopped and removed once it has renewed.
    eventually(TTL * 4, "node 1 stops its copy", async || {
        processes_with(&marker) == 0 && !c.nodes[0].volumes().contains(&a)
    })
    .await;
    // Some checkpoint rounds later, nothing it wrote counts: no manifest of
    // an older epoch after the takeover, and the row is node 2's.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let late: Vec<_> = manifests(&c, &a)
        .await
        .into_iter()
        .filter(|(e, g)| *e < epoch && *g > taken_at)
        .collect();
    assert!(
        late.is_empty(),
        "node 1 wrote after losing the sandbox: {late:?}"
    );
    let (s, v) = c.nodes[0].get(&view).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["data"]["status"], "running", "{v}");
    let r = c.nodes[0].sh(&a, "cat /workspace/f").await;
    assert_eq!(r["stdout"], "before\n", "served by node 2: {r}");
    assert_eq!(c.holder(&a), Some(1));
}

/// Sends SIGCONT to `pid` when dropped, so a failed assertion never leaves
/// a daemon stopped.
/// A node frozen (SIGSTOP) just past its hold: the sandbox's init stops
/// its processes; thawed before anyone took the sandbox, the node keeps
/// it, and the init lets its processes go on — but not one its user had
/// stopped before.
#[tokio::test]
async fn a_node_thawed_in_time_runs_its_sandbox_on_and_keeps_what_was_stopped() {
    let Some(c) = Cluster::start_with(2, TTL, true).await else {
        return;
    };
    let a = c.nodes[0].create(json!({})).await;
    assert_eq!(c.holder(&a), Some(0));
    let (run, held) = (format!("run-marker-{a}"), format!("held-marker-{a}"));
    let r = c.nodes[0]
        .sh(&a, &format!("sh -c 'sleep 600; true' {run} >/dev/null 2>&1 & setsid sh -c 'kill -STOP $$; sleep 600; true' {held} >/dev/null 2>&1 &"))
        .await;
    assert_eq!(r["exit_code"], 0, "{r}");
    // (In a session of its own: a stopped process whose group is orphaned
    // when the command's shell exits gets SIGHUP and SIGCONT.)
    eventually(
        Duration::from_secs(5),
        "the held process is stopped",
        async || states_of(&held) == ['T'] && states_of(&run) == ['S'],
    )
    .await;

    let pid = common::pid_of(c.nodes[0].child.as_ref().unwrap());
    sandstone_sys::process::kill(pid, libc::SIGSTOP).unwrap();
    let thaw = Thaw(pid);
    eventually(TTL * 2, "the init stops the sandbox", async || {
        states_of(&run) == ['T']
    })
    .await;
    drop(thaw);
    eventually(TTL * 4, "the sandbox goes on", async || {
        states_of(&run) == ['S']
    })
    .await;
    assert_eq!(
        states_of(&held),
        ['T'],
        "what its user stopped was continued"
    );
    let r = c.nodes[1].sh(&a, "echo on").await;
    assert_eq!(r["stdout"], "on\n", "{r}");
    assert_eq!(c.holder(&a), Some(0));
}

struct Thaw(sandstone_sys::Pid);

impl Drop for Thaw {
    fn drop(&mut self) {
        let _ = sandstone_sys::process::kill(self.0, libc::SIGCONT);
    }
}

/// With an object store, a snapshot and a fork outlive their node: taken
/// on node 1 (a fork of a running sandbox, a snapshot before later
/// writes), node 1 killed (`kill -9`), then through node 2 a sandbox
/// created from the snapshot, the source restored to the snapshot (the
/// snapshot's files, not the later ones), the fork forked again and both
/// resumed (the files it was forked with); deleting the snapshot deletes
/// its checkpoints.
#[tokio::test]
async fn a_snapshot_and_a_fork_are_restored_on_another_node_after_their_node_dies() {
    let Some(mut c) = Cluster::start_with(2, TTL, true).await else {
        return;
    };
    let a = c.nodes[0].create(json!({})).await;
    assert_eq!(c.holder(&a), Some(0));
    let v1 = c.nodes[0]
        .sh(
            &a,
            "set -e; mkdir -p /srv/app; echo v1 > /workspace/f; echo v1 > /srv/app/conf; \
             head -c 3000000 /dev/urandom > /workspace/blob; sha256sum /workspace/blob",
        )
        .await;
    assert_eq!(v1["exit_code"], 0, "{v1}");
    let (s, v) = c.nodes[0]
        .post(&format!("/api/v1/sandboxes/{a}/snapshots"), json!({}))
        .await;
    assert_eq!(s, 201, "{v}");
    let snap = v["data"]["id"].as_str().unwrap().to_string();
    let s3 = c.s3.as_ref().unwrap().blobs();
    assert_eq!(
        s3.list(&format!("manifests/{snap}/")).await.unwrap().len(),
        1,
        "the snapshot was checkpointed before the call returned"
    );
    let (s, v) = c.nodes[0]
        .post(&format!("/api/v1/sandboxes/{a}/fork"), json!({}))
        .await;
    assert_eq!(s, 201, "{v}");
    let fork = v["data"]["sandbox"]["id"].as_str().unwrap().to_string();
    assert_eq!(c.holder(&fork), Some(0));
    let later = c.nodes[0]
        .sh(
            &a,
            "set -e; echo v2 > /workspace/f; echo v2 > /srv/app/conf; echo later > /workspace/new; \
             rm /workspace/blob",
        )
        .await;
    assert_eq!(later["exit_code"], 0, "{later}");
    let (s, v) = c.nodes[0]
        .post(&format!("/api/v1/sandboxes/{a}/pause"), json!({}))
        .await;
    assert_eq!(s, 200, "{v}");
    c.nodes[0].kill();
    tokio::time::sleep(TTL + Duration::from_millis(500)).await;

    let check =
        "cat /workspace/f /srv/app/conf; sha256sum /workspace/blob; ls /workspace/new 2>&1 | wc -l";
    let want = format!("v1\nv1\n{}1\n", v1["stdout"].as_str().unwrap());
    // A create from the snapshot, through node 2: its node is dead, so it
    // is placed on a live one, which fetches the snapshot.
    let (s, v) = c.nodes[1]
        .post("/api/v1/sandboxes", json!({"snapshot_id": snap}))
        .await;
    assert_eq!(s, 201, "{v}");
    let b = v["data"]["sandbox_id"].as_str().unwrap().to_string();
    assert_eq!(c.holder(&b), Some(1));
    let r = c.nodes[1].sh(&b, check).await;
    assert_eq!(r["stdout"], want.as_str(), "{r}");

    // The source (paused, so taken over) restored to the snapshot.
    let (s, v) = c.nodes[1]
        .post(
            &format!("/api/v1/sandboxes/{a}/rootfs/restore"),
            json!({"snapshot_id": snap}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = c.nodes[1]
        .post(&format!("/api/v1/sandboxes/{a}/resume"), json!({}))
        .await;
    assert_eq!(s, 200, "{v}");
    assert!(c.nodes[1].volumes().contains(&a));
    let r = c.nodes[1].sh(&a, check).await;
    assert_eq!(r["stdout"], want.as_str(), "{r}");

    // The fork, forked again through node 2 (taken over, its files
    // fetched first), and both resumed there from their checkpoints.
    let (s, v) = c.nodes[1]
        .post(&format!("/api/v1/sandboxes/{fork}/fork"), json!({}))
        .await;
    assert_eq!(s, 201, "{v}");
    let fork2 = v["data"]["sandbox"]["id"].as_str().unwrap().to_string();
    for f in [&fork, &fork2] {
        let (s, v) = c.nodes[1]
            .post(&format!("/api/v1/sandboxes/{f}/resume"), json!({}))
            .await;
        assert_eq!(s, 200, "{v}");
        assert!(c.nodes[1].volumes().contains(f));
        let r = c.nodes[1].sh(f, check).await;
        assert_eq!(r["stdout"], want.as_str(), "{r}");
    }

    let (s, v) = c.nodes[1]
        .delete(&format!("/api/v1/sandbox-rootfs-snapshots/{snap}"))
        .await;
    assert_eq!(s, 200, "{v}");
    assert!(
        s3.list(&format!("manifests/{snap}/"))
            .await
            .unwrap()
            .is_empty(),
        "the snapshot's checkpoints outlived it"
    );
}

/// A snapshot whose checkpoint is corrupt, then missing, cannot be
/// restored on a node without its copy: a clear 503, then 409, naming the
/// snapshot, and the sandbox keeps the files it had. With the object store
/// down, a snapshot or fork is a 503 and is not made.
#[tokio::test]
async fn a_snapshot_with_a_bad_checkpoint_is_refused_and_changes_nothing() {
    let Some(mut c) = Cluster::start_with(2, TTL, true).await else {
        return;
    };
    let a = c.nodes[0].create(json!({})).await;
    let r = c.nodes[0].sh(&a, "echo v1 > /workspace/f").await;
    assert_eq!(r["exit_code"], 0, "{r}");
    let (s, v) = c.nodes[0]
        .post(&format!("/api/v1/sandboxes/{a}/snapshots"), json!({}))
        .await;
    assert_eq!(s, 201, "{v}");
    let snap = v["data"]["id"].as_str().unwrap().to_string();
    let r = c.nodes[0].sh(&a, "echo v2 > /workspace/f").await;
    assert_eq!(r["exit_code"], 0, "{r}");
    let (s, v) = c.nodes[0]
        .post(&format!("/api/v1/sandboxes/{a}/pause"), json!({}))
        .await;
    assert_eq!(s, 200, "{v}");
    c.nodes[0].kill();
    tokio::time::sleep(TTL + Duration::from_millis(500)).await;

    let s3 = c.s3.as_ref().unwrap().blobs();
    let manifests = s3.list(&format!("manifests/{snap}/")).await.unwrap();
    assert_eq!(manifests.len(), 1, "{manifests:?}");
    let restore = format!("/api/v1/sandboxes/{a}/rootfs/restore");
    s3.put(&manifests[0], "not a sealed manifest".into())
        .await
        .unwrap();
    let (s, v) = c.nodes[1]
        .post(&restore, json!({"snapshot_id": snap}))
        .await;
    assert_eq!(s, 503, "{v}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains(&snap), "{v}");
    s3.delete(&manifests[0]).await.unwrap();
    let (s, v) = c.nodes[1]
        .post(&restore, json!({"snapshot_id": snap}))
        .await;
    assert_eq!(s, 409, "{v}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains(&snap) && msg.contains("no checkpoint"), "{v}");
    // Nothing was left half-done: the sandbox resumes with its own files.
    assert!(
        !c.nodes[1].volumes().iter().any(|v| v.starts_with(&a)),
        "a failed restore left a volume: {:?}",
        c.nodes[1].volumes()
    );
    let (s, v) = c.nodes[1]
        .post(&format!("/api/v1/sandboxes/{a}/resume"), json!({}))
        .await;
    assert_eq!(s, 200, "{v}");
    let r = c.nodes[1].sh(&a, "cat /workspace/f").await;
    assert_eq!(r["stdout"], "v2\n", "{r}");
    let (s, v) = c.nodes[1]
        .post("/api/v1/sandboxes", json!({"snapshot_id": snap}))
        .await;
    assert_eq!(s, 409, "{v}");
    assert!(
        c.nodes[1].volumes().iter().all(|v| v == &a),
        "a failed create left a volume: {:?}",
        c.nodes[1].volumes()
    );

    // The object store gone: a snapshot or fork that cannot be uploaded
    // is a 503 and is not made.
    drop(c.s3.take());
    let snapshots = format!("/api/v1/sandboxes/{a}/snapshots");
    for op in ["snapshots", "fork"] {
        let (s, v) = c.nodes[1]
            .post(&format!("/api/v1/sandboxes/{a}/{op}"), json!({}))
            .await;
        assert_eq!(s, 503, "{op}: {v}");
    }
    let (_, v) = c.nodes[1].get(&snapshots).await;
    assert_eq!(v["data"]["count"], 1, "{v}");
    assert!(c.nodes[1].snapshot_volumes().is_empty());
    assert_eq!(c.nodes[1].volumes(), vec![a.clone()]);
    let (_, v) = c.nodes[1].get("/api/v1/sandboxes").await;
    assert_eq!(v["data"]["sandboxes"].as_array().unwrap().len(), 1, "{v}");
}

/// `sandstone node drain` moves a node's paused sandboxes away (each taken
/// by the node placement picks, materialised there from its checkpoint at
/// its next resume; the drained node drops its copy) and leaves its running
/// ones where they run.
#[tokio::test]
async fn draining_a_node_moves_its_paused_sandboxes_away() {
    let Some(c) = Cluster::start_with(2, TTL, true).await else {
        return;
    };
    let paused = c.nodes[0].create(json!({})).await;
    let r = c.nodes[0]
        .sh(&paused, "echo moved-with-me > /workspace/f")
        .await;
    assert_eq!(r["exit_code"], 0, "{r}");
    let (s, v) = c.nodes[0]
        .post(&format!("/api/v1/sandboxes/{paused}/pause"), json!({}))
        .await;
    assert_eq!(s, 200, "{v}");
    // Both nodes run nothing now: placement's tie goes to node 1.
    let running = c.nodes[0].create(json!({})).await;
    assert_eq!((c.holder(&paused), c.holder(&running)), (Some(0), Some(0)));
    let (s, v) = c.nodes[1]
        .post("/api/v1/nodes/node-1/drain", json!({}))
        .await;
    assert_eq!(s, 200, "{v}");
    eventually(
        TTL * 4,
        "node 1 hands its paused sandbox over",
        async || !c.nodes[0].volumes().contains(&paused),
    )
    .await;
    assert!(
        c.nodes[0].volumes().contains(&running),
        "a running sandbox stays"
    );
    // Resumed through the drained node: forwarded to its new owner, which
    // brings its files from the checkpoint.
    let (s, v) = c.nodes[0]
        .post(&format!("/api/v1/sandboxes/{paused}/resume"), json!({}))
        .await;
    assert_eq!(s, 200, "{v}");
    assert!(c.nodes[1].volumes().contains(&paused));
    let r = c.nodes[0].sh(&paused, "cat /workspace/f").await;
    assert_eq!(r["stdout"], "moved-with-me\n", "{r}");
    let r = c.nodes[1].sh(&running, "echo still-here").await;
    assert_eq!(r["stdout"], "still-here\n", "{r}");
    assert_eq!(c.holder(&running), Some(0));
}

/// Templates travel through the object store: `debian`, built on node 1
/// only, is published there, node 2 fetches it and announces it, and a
/// claim of it placed on node 2 runs Debian. Needs the template
/// `scripts/test.sh` builds (`SANDSTONE_TEST_DEBIAN`).
#[tokio::test]
async fn a_template_built_on_one_node_runs_on_another() {
    let Ok(debian) = std::env::var("SANDSTONE_TEST_DEBIAN") else {
        eprintln!("skipped: SANDSTONE_TEST_DEBIAN is not set (scripts/test.sh builds it)");
        return;
    };
    let Some(c) = Cluster::start_with(2, TTL, true).await else {
        return;
    };
    std::os::unix::fs::symlink(&debian, c.nodes[0].data.path().join("templates/debian")).unwrap();
    let has_debian = async |node: usize| {
        let (_, v) = c.nodes[0].get("/api/v1/nodes").await;
        v["data"]["nodes"][node]["templates"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t == "debian")
    };
    eventually(
        Duration::from_secs(120),
        "node 2 fetches the debian template",
        async || has_debian(1).await,
    )
    .await;
    let fetched = c.nodes[1].data.path().join("templates/debian");
    assert!(fetched.join("rootfs/bin/bash").exists());
    assert!(!fetched.is_symlink(), "a copy of its own");
    let (s, v) = c.nodes[1]
        .post("/api/v1/nodes/node-1/drain", json!({}))
        .await;
    assert_eq!(s, 200, "{v}");
    tokio::time::sleep(TTL).await;
    let (s, v) = c.nodes[0]
        .post("/api/v1/sandboxes", json!({"template": "debian"}))
        .await;
    assert_eq!(s, 201, "{v}");
    let id = v["data"]["sandbox_id"].as_str().unwrap().to_string();
    assert_eq!(c.holder(&id), Some(1), "placed on node 2");
    let r = c.nodes[0].sh(&id, "cat /etc/debian_version").await;
    assert!(r["stdout"].as_str().unwrap().starts_with("12."), "{r}");
}

/// A preview of a server in node 1's sandbox, granted and opened through
/// node 2: the grant's name is routed to the node that runs the sandbox.
#[tokio::test]
async fn a_preview_is_served_through_any_node() {
    let Some(c) = Cluster::start(2, TTL).await else {
        return;
    };
    let a = c.nodes[0].create(json!({})).await;
    let owner = c.holder(&a).unwrap();
    let other = &c.nodes[1 - owner];
    let serve = json!({"type": "cmd", "cmd": {"command": [
        "python3", "-m", "http.server", "8000", "--bind", "127.0.0.1", "--directory", "/workspace"
    ]}});
    other
        .sh(&a, "echo from-the-owner > /workspace/where.txt")
        .await;
    let (s, v) = other
        .post(&format!("/api/v1/sandboxes/{a}/contexts"), serve)
        .await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = other
        .post(
            &format!("/api/v1/sandboxes/{a}/previews"),
            json!({"port": 8000, "path": "/where.txt"}),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let g = &v["data"];
    // Every name of the exposure domain goes to the node that is not the owner.
    let addr: std::net::SocketAddr = other.url.trim_start_matches("http://").parse().unwrap();
    let host = format!("{}.localhost", g["id"].as_str().unwrap());
    let client = reqwest::Client::builder()
        .resolve(&host, addr)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    // The grant names the owner's port; ask the other node's instead.
    let owner_port = c.nodes[owner].url.rsplit_once(':').unwrap().1;
    let via_other =
        |url: &str| url.replace(&format!(":{owner_port}/"), &format!(":{}/", addr.port()));
    let boot = client
        .get(via_other(g["url"].as_str().unwrap()))
        .send()
        .await
        .unwrap();
    assert_eq!(boot.status(), 303);
    let cookie = boot.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let target = via_other(g["target_url"].as_str().unwrap());
    eventually(
        Duration::from_secs(20),
        "the preview through the other node",
        async || {
            let r = client
                .get(&target)
                .header("cookie", &cookie)
                .send()
                .await
                .unwrap();
            r.status() == 200 && r.text().await.unwrap() == "from-the-owner\n"
        },
    )
    .await;

    // A public service's route credential goes with the request to the
    // owner, which checks it; what the nodes tell each other stays
    // between them.
    let (s, v) = other
        .req(
            reqwest::Method::PUT,
            &format!("/api/v1/sandboxes/{a}/services"),
            Some(
                json!({"services": [{"id": "echo", "port": 8003, "ingress": {"public": true,
                "routes": [{"id": "all", "resume": false, "auth": {"mode": "bearer",
                    "bearer_token_sha256": common::sha256sum(b"route-token")}}]}}]}),
            ),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    other
        .start_script(&a, "previews/echo_headers.py", &["8003"])
        .await;
    let service = format!("echo--{a}.localhost");
    let client = reqwest::Client::builder()
        .resolve(&service, addr)
        .build()
        .unwrap();
    let url = format!("http://{service}:{}/x", addr.port());
    eventually(
        Duration::from_secs(20),
        "the service through the other node",
        async || {
            let r = client
                .get(&url)
                .bearer_auth("route-token")
                .header("x-sandstone-node-token", "forged")
                .send()
                .await
                .unwrap();
            if r.status() != 200 {
                return false;
            }
            let seen: Value = r.json().await.unwrap();
            let h = &seen["headers"];
            for name in [
                "x-sandstone-node-token",
                "x-sandstone-forwarded-by",
                "x-sandstone-team",
                "authorization",
            ] {
                assert!(h.get(name).is_none(), "{name} reached the server: {seen}");
            }
            assert_eq!(h["x-forwarded-for"], "127.0.0.1", "{seen}");
            true
        },
    )
    .await;
    let r = client.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 401, "no credential, no entry");
}

/// A sandbox of `host` claimed through `node` with `mounts`.
async fn claim_mounting(node: &common::Daemon, mounts: &serde_json::Value) -> String {
    let body = json!({"template": "host", "mounts": mounts});
    let (s, v) = node.post("/api/v1/sandboxes", body).await;
    assert_eq!(s, 201, "{v}");
    v["data"]["sandbox_id"].as_str().unwrap().to_string()
}

/// A sandbox volume is checkpointed as its sandbox leaves it, is reached
/// through any node, and mounts on another node once its own is dead;
/// the dead node's copy is dropped when it comes back.
#[tokio::test]
async fn a_volume_mounts_on_another_node_after_its_node_dies() {
    let Some(mut c) = Cluster::start_with(2, TTL, true).await else {
        return;
    };
    let (s, v) = c.nodes[0]
        .post("/api/v1/sandboxvolumes", json!({"default_posix_uid": 1000}))
        .await;
    assert_eq!(s, 201, "{v}");
    let vol = v["data"]["id"].as_str().unwrap().to_string();
    // Claimed through node 2: it goes to node 1, where the volume is.
    let mounts = json!([{"sandboxvolume_id": vol, "mount_point": "/data"}]);
    let a = claim_mounting(&c.nodes[1], &mounts).await;
    assert_eq!(c.holder(&a), Some(0));
    let r = c.nodes[0]
        .sh(&a, "echo kept > /data/notes && head -c 3000000 /dev/urandom > /data/blob && sha256sum /data/blob")
        .await;
    assert_eq!(r["exit_code"], 0, "{r}");
    let sum = r["stdout"].as_str().unwrap().to_string();
    // Deleted: its volume is checkpointed as it left it.
    let (s, _) = c.nodes[0].delete(&format!("/api/v1/sandboxes/{a}")).await;
    assert_eq!(s, 202);
    let (_, v) = c.nodes[1]
        .get(&format!("/api/v1/sandboxvolumes/{vol}"))
        .await;
    assert_eq!(v["data"]["mounted_by"], json!([]), "{v}");

    c.nodes[0].kill();
    tokio::time::sleep(TTL + Duration::from_millis(500)).await;
    let b = claim_mounting(&c.nodes[1], &mounts).await;
    assert_eq!(c.holder(&b), Some(1));
    let r = c.nodes[1]
        .sh(
            &b,
            "cat /data/notes; sha256sum /data/blob; stat -c %u /data",
        )
        .await;
    assert_eq!(r["stdout"], format!("kept\n{sum}1000\n"), "{r}");

    // Node 1 comes back: the volume is node 2's, and node 1's stale copy
    // is gone.
    c.nodes[0].spawn().await;
    c.wait_live(2).await;
    let stale = c.nodes[0].pool_root().join("volumes").join(&vol);
    assert!(!stale.exists(), "node 1 kept a stale copy");
    let r = c.nodes[0].sh(&b, "cat /data/notes").await;
    assert_eq!(r["stdout"], "kept\n", "{r}");
}
