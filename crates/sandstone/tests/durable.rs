//! Durable sandboxes: pause/resume, auto-resume, ttl, snapshots, fork,
//! restore, disk caps, and crashes in the middle of each operation.

// Test code: an unexpected failure is the test failing, so unwrap is the point.
#![allow(clippy::unwrap_used)]

mod common;

use common::Daemon;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

async fn status(d: &Daemon, id: &str) -> String {
    let (_, v) = d.get(&format!("/api/v1/sandboxes/{id}")).await;
    v["data"]["status"].as_str().unwrap_or("gone").to_string()
}

async fn op(d: &Daemon, id: &str, what: &str, body: Value) -> (u16, Value) {
    d.post(&format!("/api/v1/sandboxes/{id}/{what}"), body)
        .await
}

async fn wait_for(d: &Daemon, id: &str, want: &str, within: Duration) {
    let deadline = Instant::now() + within;
    while status(d, id).await != want {
        assert!(Instant::now() < deadline, "{id} never became {want}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What the pause-with-memory tests start in a sandbox: a python REPL
/// holding `x = 41`, and a process holding 200 MiB only it has (its hash
/// in `held.sha`), ticking a counter in `/workspace/tick`.
struct Workload {
    contexts: String,
    /// The REPL's `exec` path.
    exec: String,
    /// The 200 MiB holder's context.
    holder: String,
    sha: Value,
}

/// Starts `argv` as a context of the sandbox at `contexts`; its id.
async fn start_cmd(d: &Daemon, contexts: &str, argv: &[&str]) -> String {
    let (s, v) = d
        .post(contexts, json!({"type": "cmd", "cmd": {"command": argv}}))
        .await;
    assert_eq!(s, 201, "{v}");
    v["data"]["id"].as_str().unwrap().to_string()
}

/// Waits (`within` at most) until `script` in sandbox `id` prints
/// something; panics with `what` otherwise.
async fn wait_until_printed(d: &Daemon, id: &str, script: &str, within: Duration, what: &str) {
    let deadline = Instant::now() + within;
    while d.sh(id, script).await["stdout"] == "" {
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn start_workload(d: &Daemon, id: &str) -> Workload {
    let contexts = format!("/api/v1/sandboxes/{id}/contexts");
    let (_, v) = d
        .post(
            &contexts,
            json!({"type": "repl", "repl": {"alias": "python"}}),
        )
        .await;
    let py = v["data"]["id"].as_str().unwrap().to_string();
    let exec = format!("{contexts}/{py}/exec");
    let (s, v) = d.post(&exec, json!({"data": "x = 41"})).await;
    assert_eq!(s, 200, "{v}");
    let holder = "import hashlib, os, signal, time\n\
                  b = os.urandom(200 << 20)\n\
                  def report(*_): open('/workspace/held.now', 'w').write(hashlib.sha256(b).hexdigest())\n\
                  signal.signal(signal.SIGUSR1, report)\n\
                  open('/workspace/held.sha', 'w').write(hashlib.sha256(b).hexdigest())\n\
                  n = 0\n\
                  while True:\n    n += 1\n    open('/workspace/tick', 'w').write(str(n))\n    time.sleep(0.05)\n";
    let holder = start_cmd(d, &contexts, &["python3", "-c", holder]).await;
    let tick = "cat /workspace/tick 2>/dev/null";
    wait_until_printed(
        d,
        id,
        tick,
        Duration::from_secs(20),
        "the holder never started",
    )
    .await;
    let sha = d.sh(id, "cat /workspace/held.sha").await["stdout"].clone();
    Workload {
        contexts,
        exec,
        holder,
        sha,
    }
}

/// The hash of the holder's 200 MiB now: it hashes them again on SIGUSR1.
async fn hash_after_usr1(d: &Daemon, id: &str, w: &Workload) -> Value {
    d.sh(id, "rm -f /workspace/held.now").await;
    let (s, v) = d
        .post(
            &format!("{}/{}/signal", w.contexts, w.holder),
            json!({"signal": "USR1"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let now = d.sh(id, "cat /workspace/held.now 2>/dev/null").await["stdout"].clone();
        if now != "" {
            return now;
        }
        assert!(Instant::now() < deadline, "no hash after SIGUSR1");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn pause_keeps_files_releases_compute_and_resume_survives_restart() {
    let mut d = Daemon::start().await;
    let id = d.create(json!({})).await;
    d.sh(
        &id,
        "echo kept > /workspace/w.txt; echo conf > /etc/app.conf; echo scratch > /tmp/t",
    )
    .await;
    let (_, v) = d.get(&format!("/api/v1/sandboxes/{id}")).await;
    let pid = v["data"]["runtime_id"].as_str().unwrap().to_string();
    assert!(pid.ends_with("-g1"));

    let running = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| std::fs::read_to_string(e.path().join("cgroup")).is_ok_and(|c| c.contains(&id)))
        .count();
    assert!(
        running > 0,
        "the running sandbox has processes in its cgroup"
    );
    let (s, v) = op(&d, &id, "pause", json!({})).await;
    assert_eq!((s, v["data"]["paused"].as_bool()), (200, Some(true)), "{v}");
    assert_eq!(status(&d, &id).await, "paused");
    // Compute is released: no process of the sandbox's cgroup remains.
    let members = || {
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter(|e| {
                std::fs::read_to_string(e.path().join("cgroup")).is_ok_and(|c| c.contains(&id))
            })
            .count()
    };
    assert_eq!(members(), 0, "processes remain after pause");
    // Pause is idempotent.
    assert_eq!(op(&d, &id, "pause", json!({})).await.0, 200);

    d.kill();
    d.spawn().await;
    assert_eq!(status(&d, &id).await, "paused");
    let (s, v) = op(&d, &id, "resume", json!({})).await;
    assert_eq!(
        (s, v["data"]["runtime_generation"].as_i64()),
        (200, Some(2)),
        "{v}"
    );
    let r = d
        .sh(
            &id,
            "cat /workspace/w.txt /etc/app.conf; cat /tmp/t 2>&1 || true",
        )
        .await;
    assert_eq!(
        r["stdout"],
        "kept\nconf\ncat: /tmp/t: No such file or directory\n"
    );
    assert_eq!(
        op(&d, &id, "resume", json!({})).await.0,
        200,
        "resume of a running sandbox is a no-op"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn auto_resume_and_concurrent_resumes_yield_one_generation() {
    let d = Daemon::start().await;
    let id = d.create(json!({})).await;
    op(&d, &id, "pause", json!({})).await;
    // A call on a paused sandbox resumes it and then succeeds.
    assert_eq!(d.sh(&id, "echo back").await["stdout"], "back\n");
    assert_eq!(status(&d, &id).await, "running");
    op(&d, &id, "pause", json!({})).await;
    let (a, b) = tokio::join!(
        op(&d, &id, "resume", json!({})),
        op(&d, &id, "resume", json!({}))
    );
    assert_eq!((a.0, b.0), (200, 200));
    let (_, v) = d.get(&format!("/api/v1/sandboxes/{id}")).await;
    assert_eq!(v["data"]["runtime_generation"], 3, "{v}");
    let r = d.sh(&id, "ls /proc | grep -c '^[0-9]'").await;
    assert!(
        r["stdout"].as_str().unwrap().trim().parse::<u32>().unwrap() <= 4,
        "{r}"
    );
    // Without auto_resume a call on a paused sandbox is a 409.
    let id2 = d.create(json!({"auto_resume": false})).await;
    op(&d, &id2, "pause", json!({})).await;
    let (s, v) = d
        .post(
            &format!("/api/v1/sandboxes/{id2}/contexts"),
            json!({"type": "cmd", "cmd": {"command": ["true"]}, "wait_until_done": true}),
        )
        .await;
    assert_eq!((s, v["error"]["code"].as_str()), (409, Some("conflict")));
}

#[tokio::test(flavor = "multi_thread")]
async fn ttl_pauses_idle_sandboxes_and_hard_ttl_deletes() {
    let d = Daemon::start().await;
    let idle = d.create(json!({"ttl": 1})).await;
    let doomed = d.create(json!({"hard_ttl": 2})).await;
    let (_, v) = d.get(&format!("/api/v1/sandboxes/{idle}")).await;
    assert!(v["data"]["expires_at"].is_string(), "{v}");
    wait_for(&d, &idle, "paused", Duration::from_secs(10)).await;
    wait_for(&d, &doomed, "gone", Duration::from_secs(10)).await;
    assert!(!d.volumes().contains(&doomed));
}

#[tokio::test(flavor = "multi_thread")]
async fn snapshots_forks_and_restore() {
    for d in [Daemon::start().await, Daemon::start_dir().await] {
        let id = d.create(json!({})).await;
        d.sh(&id, "echo v1 > /workspace/f; echo tmp > /tmp/x").await;
        let (s, v) = op(&d, &id, "snapshots", json!({"name": "first"})).await;
        assert_eq!(s, 201, "{v}");
        let snap = v["data"]["id"].as_str().unwrap().to_string();
        assert_eq!(
            status(&d, &id).await,
            "running",
            "a snapshot leaves the source running"
        );
        d.sh(&id, "echo v2 > /workspace/f").await;

        // Two forks share v2 and then diverge; they inherit no processes.
        let (s, v) = op(&d, &id, "fork", json!({})).await;
        assert_eq!(s, 201, "{v}");
        let f1 = v["data"]["sandbox"]["id"].as_str().unwrap().to_string();
        assert_eq!(v["data"]["sandbox"]["status"], "paused");
        let f2 = op(&d, &id, "fork", json!({})).await.1["data"]["sandbox"]["id"]
            .as_str()
            .unwrap()
            .to_string();
        d.sh(&f1, "echo fork1 > /workspace/f").await;
        assert_eq!(
            d.sh(&f2, "cat /workspace/f; ls /tmp").await["stdout"],
            "v2\n"
        );
        assert_eq!(d.sh(&f1, "cat /workspace/f").await["stdout"], "fork1\n");
        assert_eq!(d.sh(&id, "cat /workspace/f").await["stdout"], "v2\n");

        // Restore needs a paused target.
        let (s, v) = op(&d, &id, "rootfs/restore", json!({"snapshot_id": snap})).await;
        assert_eq!(s, 409, "{v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains("pause it"),
            "{v}"
        );
        op(&d, &id, "pause", json!({})).await;
        let (s, v) = op(
            &d,
            &id,
            "rootfs/restore",
            json!({"snapshot_id": "snap-nope"}),
        )
        .await;
        assert_eq!((s, v["error"]["code"].as_str()), (404, Some("not_found")));
        let (s, v) = op(&d, &id, "rootfs/restore", json!({"snapshot_id": snap})).await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(d.sh(&id, "cat /workspace/f").await["stdout"], "v1\n");

        // Claim from a snapshot; list, get and delete snapshots.
        let (s, v) = d
            .post(
                "/api/v1/sandboxes",
                json!({"template": "host", "snapshot_id": snap}),
            )
            .await;
        assert_eq!(s, 201, "{v}");
        let from = v["data"]["sandbox_id"].as_str().unwrap().to_string();
        assert_eq!(d.sh(&from, "cat /workspace/f").await["stdout"], "v1\n");
        let (_, v) = d.get(&format!("/api/v1/sandboxes/{id}/snapshots")).await;
        assert_eq!(
            (
                v["data"]["count"].as_u64(),
                v["data"]["snapshots"][0]["name"].as_str()
            ),
            (Some(1), Some("first"))
        );
        assert_eq!(
            d.delete(&format!("/api/v1/sandbox-rootfs-snapshots/{snap}"))
                .await
                .0,
            200
        );
        assert_eq!(
            d.get(&format!("/api/v1/sandbox-rootfs-snapshots/{snap}"))
                .await
                .0,
            404
        );
        assert!(d.snapshot_volumes().is_empty());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn disk_cap_gives_edquot_and_the_sandbox_keeps_working() {
    let d = Daemon::start().await;
    let id = d.create(json!({"resources": {"disk": "64Mi"}})).await;
    let r = d.sh(&id, "dd if=/dev/urandom of=/workspace/big bs=1M count=100 2>&1 | grep -c 'quota exceeded'; rm /workspace/big; sync; echo ok > /workspace/small && cat /workspace/small").await;
    assert_eq!(r["stdout"], "1\nok\n", "{r}");
    // Disk use is reported (from the qgroup on btrfs) once written out.
    d.sh(
        &id,
        "dd if=/dev/zero of=/workspace/twenty bs=1M count=20 2>/dev/null; sync",
    )
    .await;
    let (_, v) = d.get("/api/v1/sandboxes").await;
    let used = v["data"]["sandboxes"][0]["disk_bytes"].as_u64().unwrap();
    assert!((20 << 20..64 << 20).contains(&used), "disk_bytes {used}");
    d.rejects(
        "/api/v1/sandboxes",
        json!({"template": "host", "config": {"resources": {"disk": "1k"}}}),
        "config.resources.disk",
    )
    .await;
    // A template's default cap applies when the claim sets none.
    std::fs::write(
        d.data.path().join("templates/host/template.json"),
        r#"{"disk": "64Mi"}"#,
    )
    .unwrap();
    let capped = d.create(json!({})).await;
    let r = d
        .sh(
            &capped,
            "dd if=/dev/zero of=/workspace/big bs=1M count=100 2>&1 | grep -c 'quota exceeded'",
        )
        .await;
    assert_eq!(r["stdout"], "1\n", "{r}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_host_disk_refuses_new_sandboxes_cleanly() {
    let d = Daemon::start().await;
    // Fill the 4 GiB pool to under the daemon's 256 MiB reserve: no one
    // sandbox's cap may take that much, so two share it.
    let ids = [
        d.create(json!({"resources": {"disk": "2Gi"}})).await,
        d.create(json!({"resources": {"disk": "2Gi"}})).await,
    ];
    let fill = "mkdir -p /workspace/fill; i=0; while [ $(df -m --output=avail /workspace | tail -1) -gt 150 ]; \
                do fallocate -l 50M /workspace/fill/$i || break; i=$((i+1)); done; sync; df -m --output=avail /workspace | tail -1";
    let mut avail = u64::MAX;
    for id in &ids {
        let r = d.sh(id, fill).await;
        avail = r["stdout"].as_str().unwrap().trim().parse().unwrap();
    }
    assert!(avail < 256, "pool still has {avail} MiB free");
    let before = d.volumes();
    let (s, v) = d
        .post("/api/v1/sandboxes", json!({"template": "host"}))
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (507, Some("no_space")),
        "{v}"
    );
    assert_eq!(d.volumes(), before, "nothing half-made");
    for id in &ids {
        d.sh(id, "rm -r /workspace/fill").await;
    }
}

/// Kills the daemon in the middle of an operation (SIGKILL at a named
/// point), restarts it, and checks that the sandbox is consistent and that
/// no file written before the operation is lost.
#[tokio::test(flavor = "multi_thread")]
async fn crashes_mid_operation_leave_consistent_state() {
    for point in [
        "pause.after_kill",
        "resume.after_launch",
        "snapshot.after_copy",
        "fork.after_copy",
        "restore.mid_swap",
    ] {
        let mut d = Daemon::start().await;
        let id = d.create(json!({})).await;
        d.sh(&id, "echo before > /workspace/keep").await;
        let snap = op(&d, &id, "snapshots", json!({})).await.1["data"]["id"]
            .as_str()
            .unwrap()
            .to_string();
        if point.starts_with("resume") || point.starts_with("restore") {
            op(&d, &id, "pause", json!({})).await;
        }
        d.kill();
        d.crash_at = point.into();
        d.spawn().await;
        let (path, body) = match point.split('.').next().unwrap() {
            "pause" => ("pause", json!({})),
            "resume" => ("resume", json!({})),
            "snapshot" => ("snapshots", json!({})),
            "fork" => ("fork", json!({})),
            _ => ("rootfs/restore", json!({"snapshot_id": snap})),
        };
        let sent = d
            .http
            .post(format!("{}/api/v1/sandboxes/{id}/{path}", d.url))
            .bearer_auth(&d.token)
            .json(&body)
            .send()
            .await;
        assert!(sent.is_err(), "{point}: the daemon should have died");
        let _ = d.child.take().map(|mut c| c.wait());
        d.crash_at.clear();
        d.spawn().await;

        let st = status(&d, &id).await;
        assert!(st == "running" || st == "paused", "{point}: status {st}");
        assert_eq!(
            d.sh(&id, "cat /workspace/keep").await["stdout"],
            "before\n",
            "{point}"
        );
        // Every volume and snapshot on disk belongs to a row, and back.
        let (_, v) = d.get("/api/v1/sandboxes").await;
        let mut rows: Vec<String> = v["data"]["sandboxes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["id"].as_str().unwrap().to_string())
            .collect();
        let mut vols = d.volumes();
        rows.sort();
        vols.sort();
        assert_eq!(rows, vols, "{point}");
        let (_, v) = d.get(&format!("/api/v1/sandboxes/{id}/snapshots")).await;
        assert_eq!(
            v["data"]["count"].as_u64().unwrap() as usize,
            d.snapshot_volumes().len(),
            "{point}"
        );
        // And it still works end to end.
        assert_eq!(op(&d, &id, "pause", json!({})).await.0, 200, "{point}");
        assert_eq!(op(&d, &id, "resume", json!({})).await.0, 200, "{point}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn warm_pool_hands_off_with_the_claims_limits_and_refills() {
    let mut d = Daemon::start().await;
    d.kill();
    d.warm_pool = 2;
    d.spawn().await;
    d.wait_warm(2).await;
    let pooled = d.volumes();
    assert_eq!(pooled.len(), 2);
    let id = d
        .create(json!({"resources": {"memory": "256Mi"}, "env_vars": {"FOO": "claimed"}}))
        .await;
    assert!(pooled.contains(&id), "the claim took a pre-made sandbox");
    assert_eq!(common::memory_limit_of(&id).as_deref(), Some("268435456"));
    // The claim's environment, though the sandbox was made before it.
    assert_eq!(
        d.sh(&id, "echo warm $FOO").await["stdout"],
        "warm claimed\n"
    );
    d.wait_warm(2).await;
    // Pool members are not sandboxes of anyone: not listed, and a restart
    // replaces them rather than leaking them.
    let (_, v) = d.get("/api/v1/sandboxes").await;
    assert_eq!(v["data"]["count"], 1);
    d.kill();
    d.warm_pool = 0;
    d.spawn().await;
    assert_eq!(d.volumes(), vec![id.clone()]);
}

/// Waits (at most `within`) until session `sid` satisfies `pred`.
async fn session_until(
    d: &Daemon,
    id: &str,
    sid: &str,
    within: Duration,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let (s, v) = d
            .get(&format!("/api/v1/sandboxes/{id}/sessions/{sid}"))
            .await;
        assert_eq!(s, 200, "{v}");
        if pred(&v["data"]) {
            return v["data"].clone();
        }
        assert!(Instant::now() < deadline, "session stayed {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_supervised_server_restarts_with_backoff_and_outlives_pauses_and_the_daemon() {
    let mut d = Daemon::start().await;
    let id = d.create(json!({})).await;
    let sessions = format!("/api/v1/sandboxes/{id}/sessions");
    // Bad specs are refused, naming the field, and nothing is kept.
    for (body, field) in [
        (json!({"command": []}), "command"),
        (
            json!({"command": ["sleep", "1"], "io": {"mode": "pty", "terminal": {"rows": 0}}}),
            "io.terminal.rows",
        ),
        (
            json!({"command": ["sleep", "1"], "lifecycle": {"restart": {"policy": "sometimes"}}}),
            "lifecycle.restart.policy",
        ),
        (
            json!({"command": ["no-such-program-here"]}),
            "no-such-program-here",
        ),
    ] {
        d.rejects(&sessions, body, field).await;
    }
    assert_eq!(d.get(&sessions).await.1["data"]["sessions"], json!([]));

    // Crashes on its first two attempts, then serves.
    let script = "n=$(cat /workspace/attempts 2>/dev/null || echo 0); n=$((n+1)); \
                  echo $n > /workspace/attempts; echo attempt $n; \
                  [ $n -le 2 ] && exit 3; exec python3 -m http.server 8000 --bind 127.0.0.1";
    let started = Instant::now();
    let (s, v) = d
        .post(
            &sessions,
            json!({"command": ["sh", "-c", script], "lifecycle": {"restart": {
                "policy": "on_failure", "initial_backoff_ms": 300, "max_backoff_ms": 2000}}}),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let sid = v["data"]["id"].as_str().unwrap().to_string();
    let up = session_until(&d, &id, &sid, Duration::from_secs(20), |s| {
        s["phase"] == "running" && s["restart_count"] == 2
    })
    .await;
    // Two waits: 300 ms, then 600 ms.
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(up["attempt"]["number"], 3, "{up}");
    let serving = "python3 -c 'import urllib.request; urllib.request.urlopen(\"http://127.0.0.1:8000/\", timeout=2)'";
    let probe =
        format!("for i in $(seq 50); do {serving} 2>/dev/null && exit 0; sleep 0.1; done; exit 1");
    assert_eq!(d.sh(&id, &probe).await["exit_code"], 0, "not serving");
    // Its output and exits are in the sandbox's log.
    let (_, logs) = d
        .get(&format!(
            "/api/v1/sandboxes/{id}/observability/logs?context_id={sid}&limit=10"
        ))
        .await;
    let text = logs.to_string();
    assert!(
        text.contains("attempt 1") && text.contains("[exited: 3]") && text.contains("attempt 3"),
        "{logs}"
    );

    // The same as events: output as it was read, exits with their codes.
    let (s, v) = d.get(&format!("{sessions}/{sid}/events?limit=100")).await;
    assert_eq!(s, 200, "{v}");
    let events = v["data"]["events"].as_array().unwrap().clone();
    let exits: Vec<&Value> = events.iter().filter(|e| e["type"] == "exit").collect();
    assert_eq!(exits.len(), 2, "{v}");
    assert_eq!(exits[0]["exit_code"], 3);
    let first = events.iter().find(|e| e["type"] == "output").unwrap();
    assert_eq!(first["data_base64"], "YXR0ZW1wdCAxCg==", "attempt 1\n: {v}");
    let last = events.last().unwrap()["seq"].as_i64().unwrap();
    assert!(
        v["data"]["cursor"]["latest"].as_i64().unwrap() > last,
        "{v}"
    );
    let (_, v) = d
        .get(&format!("{sessions}/{sid}/events?after={last}"))
        .await;
    assert_eq!(v["data"]["events"], json!([]), "{v}");
    let (s, _) = d.get(&format!("{sessions}/{sid}/events?after=-1")).await;
    assert_eq!(s, 400);
    // So is a stream's place, and a terminal for a session without one,
    // and a signal meant for an attempt that is not the current one.
    let stream = format!("{}{sessions}/{sid}/events/stream", d.url);
    let r = d
        .http
        .get(&stream)
        .bearer_auth(&d.token)
        .header("last-event-id", "nope")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("Last-Event-ID"));
    let terminal = format!("{sessions}/{sid}/terminal");
    let (s, v) = d
        .req(
            reqwest::Method::PUT,
            &terminal,
            Some(json!({"rows": 0, "cols": 80})),
        )
        .await;
    common::assert_names(s, &v, "rows");
    let (s, v) = d
        .req(
            reqwest::Method::PUT,
            &terminal,
            Some(json!({"rows": 9, "cols": 80})),
        )
        .await;
    assert!(s == 400 && v.to_string().contains("no PTY"), "{s} {v}");
    let (s, v) = d
        .post(
            &format!("{sessions}/{sid}/signals"),
            json!({"signal": "KILL", "expected_attempt_id": format!("{sid}.1.1")}),
        )
        .await;
    assert!(
        s == 409 && v.to_string().contains("current attempt"),
        "{s} {v}"
    );

    // Input goes to the current attempt's stdin, once per input id.
    let echo = "import sys\nfor l in sys.stdin:\n    print('got', l.strip(), flush=True)";
    let (_, v) = d
        .post(&sessions, json!({"command": ["python3", "-c", echo]}))
        .await;
    let reader = v["data"]["id"].as_str().unwrap().to_string();
    // Followed as server-sent events from the start, until it is deleted.
    let mut follow = d
        .http
        .get(format!("{}{sessions}/{reader}/events/stream", d.url))
        .bearer_auth(&d.token)
        .send()
        .await
        .unwrap();
    assert_eq!(follow.status(), 200);
    assert_eq!(follow.headers()["content-type"], "text/event-stream");
    for duplicate in [false, true] {
        let (s, v) = d
            .post(
                &format!("{sessions}/{reader}/inputs"),
                json!({"input_id": "in-1", "data_base64": "aGVsbG8K"}),
            )
            .await;
        assert_eq!(
            (s, &v["data"]["duplicate"]),
            (202, &json!(duplicate)),
            "{v}"
        );
    }
    let (s, _) = d
        .post(
            &format!("{sessions}/{reader}/inputs"),
            json!({"input_id": "in-2", "eof": true}),
        )
        .await;
    assert_eq!(s, 202);
    session_until(&d, &id, &reader, Duration::from_secs(10), |s| {
        s["phase"] == "exited"
    })
    .await;
    let (_, v) = d
        .get(&format!(
            "/api/v1/sandboxes/{id}/observability/logs?context_id={reader}"
        ))
        .await;
    let got: Vec<&str> = v["data"]["logs"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["message"].as_str())
        .collect();
    assert_eq!(got, ["got hello", "[exited: 0]"], "{v}");
    assert_eq!(d.delete(&format!("{sessions}/{reader}")).await.0, 200);
    let mut sse = String::new();
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(chunk) = follow.chunk().await.unwrap() {
            sse.push_str(&String::from_utf8_lossy(&chunk));
        }
    })
    .await;
    assert!(ended.is_ok(), "the stream outlived its session: {sse}");
    // Each event with its seq as its id; the end says why, as a comment.
    assert!(
        sse.contains("\"data_base64\":\"Z290IGhlbGxvCg==\""),
        "got hello\n: {sse}"
    );
    assert!(
        sse.contains("\"type\":\"exit\",") && sse.contains("\nid: "),
        "{sse}"
    );
    assert!(
        sse.ends_with(&format!(": error: session {reader} was deleted\n\n")),
        "{sse}"
    );

    // Stays up: a pause and resume start it again in the new runtime.
    assert_eq!(op(&d, &id, "pause", json!({})).await.0, 200);
    let (_, v) = d.get(&sessions).await;
    assert_eq!(v["data"]["sessions"][0]["phase"], "paused", "{v}");
    assert_eq!(op(&d, &id, "resume", json!({})).await.0, 200);
    session_until(&d, &id, &sid, Duration::from_secs(20), |s| {
        s["phase"] == "running"
    })
    .await;
    assert_eq!(
        d.sh(&id, &probe).await["exit_code"],
        0,
        "not serving after resume"
    );

    // kill -9 of the daemon: PID 1 kept supervising; the new daemon sees it.
    let pid_before =
        session_until(&d, &id, &sid, Duration::from_secs(5), |_| true).await["attempt"]["pid"]
            .clone();
    d.kill();
    d.spawn().await;
    let after = session_until(&d, &id, &sid, Duration::from_secs(20), |s| {
        s["phase"] == "running"
    })
    .await;
    assert_eq!(
        after["attempt"]["pid"], pid_before,
        "the same process: {after}"
    );
    // Killed by hand, it is restarted (a signal is a failure).
    let (s, v) = d
        .post(
            &format!("{sessions}/{sid}/signals"),
            json!({"signal": "KILL"}),
        )
        .await;
    assert_eq!(s, 202, "{v}");
    session_until(&d, &id, &sid, Duration::from_secs(20), |s| {
        s["phase"] == "running" && s["attempt"]["pid"] != pid_before
    })
    .await;
    d.rejects(
        &format!("{sessions}/{sid}/signals"),
        json!({"signal": "SIGNOPE"}),
        "signal",
    )
    .await;

    // Stopped, it stays stopped (and is not started by a resume).
    let (s, v) = d
        .req(
            reqwest::Method::PUT,
            &format!("{sessions}/{sid}/desired-state"),
            Some(json!({"state": "stopped"})),
        )
        .await;
    assert_eq!((s, &v["data"]["phase"]), (200, &json!("stopped")), "{v}");
    assert_ne!(d.sh(&id, &probe).await["exit_code"], 0, "still serving");
    let (s, _) = d
        .post(&format!("{sessions}/{sid}/attempts"), json!({}))
        .await;
    assert_eq!(s, 409);
    // Restarted on failure only: a clean exit ends it.
    let (_, v) = d
        .post(
            &sessions,
            json!({"command": ["true"], "lifecycle": {"restart": {"policy": "on_failure"}}}),
        )
        .await;
    let once = v["data"]["id"].as_str().unwrap().to_string();
    let done = session_until(&d, &id, &once, Duration::from_secs(10), |s| {
        s["phase"] == "exited"
    })
    .await;
    assert_eq!(
        (&done["restart_count"], &done["attempt"]["exit_code"]),
        (&json!(0), &json!(0)),
        "{done}"
    );
    // Deleted: gone.
    assert_eq!(d.delete(&format!("{sessions}/{once}")).await.0, 200);
    assert_eq!(d.get(&format!("{sessions}/{once}")).await.0, 404);
}

/// `pause {"memory": true}`: the processes stop where they are, with their
/// memory, and go on after the resume, through a daemon crash between; a
/// plain pause after one with memory ends them as it always does.
#[tokio::test(flavor = "multi_thread")]
async fn a_pause_with_memory_keeps_a_repl_and_a_big_process() {
    let mut d = Daemon::start().await;
    let id = d.create(json!({})).await;
    let w = start_workload(&d, &id).await;
    let (contexts, exec, holder_id, sha) = (
        w.contexts.clone(),
        w.exec.clone(),
        w.holder.clone(),
        w.sha.clone(),
    );

    // Bad bodies name their field.
    d.rejects(
        &format!("/api/v1/sandboxes/{id}/pause"),
        json!({"memory": "yes"}),
        "memory",
    )
    .await;
    d.rejects(
        &format!("/api/v1/sandboxes/{id}/pause"),
        json!({"keep": true}),
        "keep",
    )
    .await;

    let (s, v) = op(&d, &id, "pause", json!({"memory": true})).await;
    assert_eq!((s, &v["data"]["status"]), (200, &json!("paused")), "{v}");
    // What must reach its processes is refused while they are held; new
    // defaults for what starts later are kept for when they go on.
    let (s, v) = d
        .post(
            &format!("/api/v1/sandboxes/{id}/sessions"),
            json!({"command": ["sleep", "1"]}),
        )
        .await;
    assert!(
        s == 409 && v.to_string().contains("paused with its memory"),
        "{s} {v}"
    );
    let (s, v) = d
        .req(
            reqwest::Method::PUT,
            &format!("/api/v1/sandboxes/{id}"),
            Some(json!({"config": {"env_vars": {"LATER": "kept"}}})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    // Frozen, not ended: the counter stands still while paused.
    let tick_file = d
        .pool_root()
        .join("sandboxes")
        .join(&id)
        .join("workspace/tick");
    let tick = std::fs::read_to_string(&tick_file).unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        std::fs::read_to_string(&tick_file).unwrap(),
        tick,
        "ticking while paused"
    );
    // Held through a daemon crash and restart.
    d.kill();
    d.spawn().await;
    assert_eq!(status(&d, &id).await, "paused");

    // The first request resumes it (auto_resume), with everything in place.
    let (s, v) = d.post(&exec, json!({"data": "x + 1"})).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["data"]["output_raw"], "42\n", "{v}");
    assert_eq!(status(&d, &id).await, "running");
    let (_, v) = d.get(&format!("{contexts}/{holder_id}")).await;
    assert_eq!(v["data"]["running"], true, "the holder ended: {v}");
    let before = d.sh(&id, "cat /workspace/tick").await["stdout"].clone();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_ne!(
        d.sh(&id, "cat /workspace/tick").await["stdout"],
        before,
        "not ticking"
    );
    // Its 200 MiB are what they were: it hashes them again on SIGUSR1.
    assert_eq!(hash_after_usr1(&d, &id, &w).await, sha);
    assert_eq!(d.sh(&id, "echo $LATER").await["stdout"], "kept\n");
    // Watched again once continued after the restart: its init's death is
    // seen (the sandbox fails, its files kept).
    let init = common::init_pid(&id).expect("init");
    sandstone_sys::process::kill(sandstone_sys::Pid::from_raw(init), libc::SIGKILL).unwrap();
    wait_for(&d, &id, "failed", Duration::from_secs(10)).await;
    assert_eq!(op(&d, &id, "resume", json!({})).await.0, 200);

    // A plain pause still ends every process.
    assert_eq!(op(&d, &id, "pause", json!({})).await.0, 200);
    assert_eq!(op(&d, &id, "resume", json!({})).await.0, 200);
    let (s, v) = d.post(&exec, json!({"data": "x"})).await;
    assert!(s == 404 || !v.to_string().contains("41"), "{s} {v}");
}

/// With CRIU (`SANDSTONE_TEST_CRIU`, unpacked by scripts/test.sh), a pause
/// with memory writes the processes to disk: nothing of the sandbox runs
/// or stays resident while paused, and the next resume brings back the
/// REPL's variables, a 200 MiB buffer and a listening server, in the same
/// runtime generation, through a daemon crash and twice in a row.
#[tokio::test(flavor = "multi_thread")]
async fn a_pause_with_memory_writes_it_to_disk_and_brings_it_back() {
    let Ok(criu) = std::env::var("SANDSTONE_TEST_CRIU") else {
        eprintln!("skipped: SANDSTONE_TEST_CRIU is not set (scripts/test.sh unpacks CRIU)");
        return;
    };
    // A sandbox with its own network (a veth, the egress proxy): the
    // restore makes its namespace again.
    let mut d = common::networked("127.0.0.1:9", &["--criu".into(), criu]).await;
    let id = d.create(json!({})).await;
    let w = start_workload(&d, &id).await;
    let (contexts, exec, sha) = (w.contexts.clone(), w.exec.clone(), w.sha.clone());
    // A server listening on an inet socket (which CRIU before 4.2 could
    // not take on this kernel).
    let server = ["python3", "-m", "http.server", "-d", "/workspace", "8000"];
    start_cmd(&d, &contexts, &server).await;
    let up = "python3 -c \"import urllib.request as u; u.urlopen('http://127.0.0.1:8000/')\" 2>/dev/null && echo up";
    wait_until_printed(
        &d,
        &id,
        up,
        Duration::from_secs(20),
        "the server never started",
    )
    .await;
    let generation = |v: &Value| v["data"]["runtime_generation"].clone();
    let (_, before) = d.get(&format!("/api/v1/sandboxes/{id}")).await;

    // A process CRIU cannot take (one being traced): the pause is refused,
    // saying why, and the sandbox runs on as it was.
    let tracer = "import ctypes, os, time\n\
                  if os.fork() == 0:\n    ctypes.CDLL(None).ptrace(0, 0, 0, 0)\n    os.execvp('sleep', ['sleep', '1000'])\n\
                  time.sleep(1000)\n";
    let tracer_id = start_cmd(&d, &contexts, &["python3", "-c", tracer]).await;
    let traced = "grep -l '^TracerPid:[[:space:]]*[1-9]' /proc/[0-9]*/status";
    let within = Duration::from_secs(10);
    wait_until_printed(&d, &id, traced, within, "the traced process never started").await;
    let (s, v) = op(&d, &id, "pause", json!({"memory": true})).await;
    assert!(
        s == 500 && v.to_string().contains("criu dump failed"),
        "{s} {v}"
    );
    assert_eq!(status(&d, &id).await, "running");
    let (s, v) = d.post(&exec, json!({"data": "x"})).await;
    assert_eq!((s, &v["data"]["output_raw"]), (200, &json!("41\n")), "{v}");
    assert!(!d.data.path().join("memory").join(&id).exists());
    let (s, v) = d
        .req(
            reqwest::Method::DELETE,
            &format!("{contexts}/{tracer_id}"),
            None,
        )
        .await;
    assert!(s == 200 || s == 204, "{s} {v}");
    d.sh(&id, "pkill -x sleep; true").await;

    // A process that listens at the path of PID 1's socket (which the
    // namespace's socket table shows), inside its own root: the restore
    // still hands the daemon's new listener to PID 1, not to it.
    let squatter = "import os, socket, time\n\
                    path = next(l.split()[7] for l in open('/proc/net/unix') if l.rstrip().endswith('init.sock'))\n\
                    os.makedirs(os.path.dirname(path), exist_ok=True)\n\
                    s = socket.socket(socket.AF_UNIX)\n\
                    s.bind(path)\n\
                    s.listen()\n\
                    open('/workspace/squatting', 'w').write(path)\n\
                    time.sleep(1000)\n";
    start_cmd(&d, &contexts, &["python3", "-c", squatter]).await;
    let squatting = "cat /workspace/squatting 2>/dev/null";
    wait_until_printed(&d, &id, squatting, within, "the squatter never listened").await;

    for round in 0..2 {
        let (s, v) = op(&d, &id, "pause", json!({"memory": true})).await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["data"]["memory"], "disk", "{v}");
        // Nothing of it runs, and its memory is on disk.
        assert_eq!(common::init_pid(&id), None, "its init still runs");
        let image = d.data.path().join("memory").join(&id);
        let on_disk: u64 = std::fs::read_dir(&image)
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum();
        assert!(on_disk > 200 << 20, "{on_disk} bytes in {image:?}");
        // What must reach its processes is refused meanwhile.
        let (s, v) = d
            .post(
                &format!("/api/v1/sandboxes/{id}/sessions"),
                json!({"command": ["sleep", "1"]}),
            )
            .await;
        assert!(
            s == 409 && v.to_string().contains("paused with its memory"),
            "{s} {v}"
        );
        if round == 0 {
            // It outlives a crash of the daemon.
            d.kill();
            d.spawn().await;
            assert_eq!(status(&d, &id).await, "paused");
        }
        // The first request brings it back (auto_resume), as it was.
        let (s, v) = d.post(&exec, json!({"data": "x + 1"})).await;
        assert_eq!(s, 200, "round {round}: {v}\n{}", d.log());
        assert_eq!(v["data"]["output_raw"], "42\n", "round {round}: {v}");
        let (_, now) = d.get(&format!("/api/v1/sandboxes/{id}")).await;
        assert_eq!(generation(&now), generation(&before), "{now}");
        assert!(!image.exists(), "the checkpoint outlived its restore");
        let (_, v) = d.get(&format!("{contexts}/{}", w.holder)).await;
        assert_eq!(v["data"]["running"], true, "the holder ended: {v}");
        assert_eq!(
            hash_after_usr1(&d, &id, &w).await,
            sha,
            "round {round}: its memory changed"
        );
        let served = d
            .sh(&id, "python3 -c \"import urllib.request as u; print(u.urlopen('http://127.0.0.1:8000/held.sha').read().decode())\"")
            .await;
        assert_eq!(
            served["stdout"],
            format!("{}\n", sha.as_str().unwrap()),
            "{served}"
        );
        // PID 1 is still out of the sandbox's reach.
        let r = d.sh(&id, "cat /proc/1/environ; ls -l /proc/1/exe").await;
        let err = r["stderr"].as_str().unwrap_or_default();
        assert!(
            err.contains("/proc/1/environ: Permission denied")
                && err.contains("'/proc/1/exe': Permission denied"),
            "{r}"
        );
    }

    // A plain pause ends every process, and leaves no memory behind.
    assert_eq!(op(&d, &id, "pause", json!({})).await.0, 200);
    assert!(!d.data.path().join("memory").join(&id).exists());
    assert_eq!(op(&d, &id, "resume", json!({})).await.0, 200);
    let (s, v) = d.post(&exec, json!({"data": "x"})).await;
    assert!(s == 404 || !v.to_string().contains("41"), "{s} {v}");
}
