//! Robustness under hostile or careless use: descriptors the daemon
//! inherited, output floods and slow readers, memory exhaustion inside a
//! sandbox, and the death of a sandbox's init.

// Test code: an unexpected failure is the test failing, so unwrap is the point.
#![allow(clippy::unwrap_used)]

mod common;

use common::{Daemon, init_pid};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// A `/proc/<pid>/status` field in KiB.
fn status_kib(pid: i32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| {
            l.strip_prefix(field)?
                .trim()
                .strip_suffix("kB")?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn inherited_descriptors_never_reach_a_sandbox() {
    let mut d = Daemon::start().await;
    // A secret only the host's root directory leads to.
    let secret = d.data.path().join("host-secret");
    std::fs::write(&secret, "host secret\n").unwrap();
    // A directory only the inherited descriptor refers to.
    let probe = tempfile::tempdir().unwrap();
    d.kill();
    d.inherited_fds = vec![
        (7, "/".into()),
        (9, "/dev/null".into()),
        (251, probe.path().to_path_buf()),
    ];
    d.spawn().await;
    // Holds none of them (the numbers may be reused for its own files).
    let held = |pid: u32| -> Vec<std::path::PathBuf> {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .flatten()
            .filter_map(|e| std::fs::read_link(e.path()).ok())
            .filter(|t| t == std::path::Path::new("/") || t == probe.path())
            .collect()
    };
    let daemon = d.child.as_ref().unwrap().id();
    assert_eq!(
        held(daemon),
        Vec::<std::path::PathBuf>::new(),
        "the daemon kept them"
    );
    let id = d.create(json!({})).await;
    // `ls` lists its own descriptors: 0-2 and the directory it reads.
    let r = d.sh(&id, "ls /proc/self/fd").await;
    let fds: Vec<&str> = r["stdout"].as_str().unwrap().lines().collect();
    assert_eq!(fds, ["0", "1", "2", "3"], "{r}");
    let via = format!("/proc/self/fd/7{}", secret.display());
    let r = d.run(&id, &["cat", &via]).await;
    assert_ne!(r["stdout"], "host secret\n", "host file read through fd 7");
    assert_ne!(r["exit_code"], 0, "{r}");
    // REPLs have fds 3 and 4 for their protocol, and nothing above.
    let (s, v) = d
        .post(
            &format!("/api/v1/sandboxes/{id}/contexts"),
            json!({"type": "repl", "repl": {"alias": "bash"}}),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let ctx = v["data"]["id"].as_str().unwrap();
    let (_, v) = d
        .post(
            &format!("/api/v1/sandboxes/{id}/contexts/{ctx}/exec"),
            json!({"data": "ls /proc/$$/fd"}),
        )
        .await;
    assert_eq!(v["data"]["output_raw"], "0\n1\n2\n3\n4\n", "{v}");
    // The spawn helper and init hold nothing of the daemon's either.
    let init = init_pid(&id).expect("init pid") as u32;
    assert_eq!(
        held(init),
        Vec::<std::path::PathBuf>::new(),
        "init holds them"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_reader_never_makes_init_buffer() {
    let d = Daemon::start().await;
    let id = d.create(json!({"resources": {"memory": "1Gi"}})).await;
    let init = init_pid(&id).expect("init pid");
    let before = status_kib(init, "VmRSS:");
    let (s, v) = d
        .post(
            &format!("/api/v1/sandboxes/{id}/contexts"),
            json!({"type": "cmd", "cmd": {"command": ["head", "-c", "4000000000", "/dev/zero"]}}),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let ctx = v["data"]["id"].as_str().unwrap().to_string();
    // A reader that attaches and then reads nothing for 4 s.
    let client = sandstone_client::Client::new(&d.url, &d.token);
    let stalled = client.attach(&id, &ctx).await.unwrap();
    let mut peak = 0;
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        peak = peak.max(status_kib(init, "VmRSS:"));
    }
    drop(stalled);
    eprintln!("init RSS: {before} KiB before, {peak} KiB at most behind a stalled reader");
    assert!(
        peak < before + 64 * 1024,
        "init grew from {before} KiB to {peak} KiB behind a stalled reader"
    );
    let (s, _) = d
        .delete(&format!("/api/v1/sandboxes/{id}/contexts/{ctx}"))
        .await;
    assert_eq!(s, 200);
    assert_eq!(d.sh(&id, "echo alive").await["stdout"], "alive\n");
    assert_eq!(init_pid(&id), Some(init));
}

#[tokio::test(flavor = "multi_thread")]
async fn filling_tmp_is_enospc_and_the_sandbox_survives() {
    let d = Daemon::start().await;
    let id = d.create(json!({"resources": {"memory": "256Mi"}})).await;
    let init = init_pid(&id).expect("init pid");
    let r = d
        .sh(&id, "head -c 1000000000 /dev/zero > /tmp/fill; echo $?")
        .await;
    assert!(
        r["stderr"].as_str().unwrap().contains("No space left"),
        "{r}"
    );
    assert_eq!(r["stdout"], "1\n", "{r}");
    assert_eq!(
        d.sh(&id, "rm /tmp/fill; echo alive").await["stdout"],
        "alive\n"
    );
    assert_eq!(init_pid(&id), Some(init), "init was replaced");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_warm_sandbox_gets_the_claims_tmp_size() {
    let mut d = Daemon::start().await;
    d.kill();
    d.warm_pool = 1;
    d.spawn().await;
    d.wait_warm(1).await;
    let pooled = d.volumes();
    let id = d.create(json!({"resources": {"memory": "256Mi"}})).await;
    assert!(pooled.contains(&id), "the claim took a pre-made sandbox");
    let r = d.sh(&id, "grep -E ' /(tmp|dev/shm) ' /proc/mounts").await;
    let mounts = r["stdout"].as_str().unwrap();
    assert!(
        mounts.contains("/tmp tmpfs rw,nosuid,nodev,relatime,size=131072k"),
        "{mounts}"
    );
    assert!(
        mounts.contains("/dev/shm tmpfs rw,nosuid,nodev,relatime,size=65536k"),
        "{mounts}"
    );
    // A claim for more memory than the members were made with: the limit
    // is raised (swap accounting's limit first, as the kernel requires).
    d.wait_warm(1).await;
    let pooled = d.volumes();
    let big = d.create(json!({"resources": {"memory": "2Gi"}})).await;
    assert!(pooled.contains(&big), "the claim took a pre-made sandbox");
    let r = d.sh(&big, "df -k /tmp | tail -1 | awk '{print $2}'").await;
    assert_eq!(r["stdout"], "1048576\n", "{r}");
}

#[tokio::test(flavor = "multi_thread")]
async fn workloads_ignore_no_signal_whatever_started_the_daemon() {
    // As `sandstone serve &` in a script starts it: SIGINT and SIGQUIT
    // ignored, which fork and exec pass on.
    let mut d = Daemon::start().await;
    d.kill();
    d.ignored_signals = vec![libc::SIGINT, libc::SIGQUIT];
    d.spawn().await;
    let id = d.create(json!({})).await;
    let daemon = d.child.as_ref().unwrap().id();
    let status = std::fs::read_to_string(format!("/proc/{daemon}/status")).unwrap();
    let ignored = status
        .lines()
        .find_map(|l| l.strip_prefix("SigIgn:\t"))
        .map(|hex| u64::from_str_radix(hex, 16).unwrap())
        .unwrap();
    // (It handles SIGINT itself, so only SIGQUIT is still ignored in it.)
    assert_ne!(ignored & 1 << (libc::SIGQUIT - 1), 0, "{status}");
    let grep = json!(["grep", "SigIgn", "/proc/self/status"]);
    let contexts = format!("/api/v1/sandboxes/{id}/contexts");
    // A plain command (posix_spawn) and one on a PTY (fork).
    let (_, plain) = d
        .post(
            &contexts,
            json!({"type": "cmd", "cmd": {"command": grep}, "wait_until_done": true}),
        )
        .await;
    assert_eq!(
        plain["data"]["stdout"], "SigIgn:\t0000000000000000\n",
        "{plain}"
    );
    let (_, pty) = d
        .post(
            &contexts,
            json!({"type": "cmd", "cmd": {"command": grep}, "wait_until_done": true,
                   "pty_size": {"rows": 24, "cols": 80}}),
        )
        .await;
    assert_eq!(
        pty["data"]["output_raw"], "SigIgn:\t0000000000000000\r\n",
        "{pty}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn finished_contexts_are_forgotten_past_a_bound_and_keep_no_descriptor() {
    let d = Daemon::start().await;
    let id = d.create(json!({})).await;
    let contexts = format!("/api/v1/sandboxes/{id}/contexts");
    let count_sleeps = async || d.sh(&id, "pgrep -cx sleep").await["stdout"].clone();
    // Running throughout, so never forgotten.
    let (s, v) = d
        .post(
            &contexts,
            json!({"type": "cmd", "cmd": {"command": ["sleep", "600"]}}),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let sleeper = v["data"]["id"].as_str().unwrap().to_string();
    // Its leader exits at once, a member of its group stays: the context
    // still reaches it.
    let leaver = d.sh(&id, "sleep 600 >/dev/null 2>&1 &").await;
    assert_eq!(leaver["exit_code"], 0, "{leaver}");
    assert_eq!(count_sleeps().await, "2\n");
    let (s, v) = d
        .delete(&format!("{contexts}/{}", leaver["id"].as_str().unwrap()))
        .await;
    assert_eq!(s, 200, "{v}");
    // Killed, the member is gone once init has reaped it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while count_sleeps().await != "1\n" {
        assert!(
            std::time::Instant::now() < deadline,
            "the member outlived its context"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    let init = init_pid(&id).expect("init pid");
    let fds = || {
        std::fs::read_dir(format!("/proc/{init}/fd"))
            .unwrap()
            .count()
    };
    let first = d.run(&id, &["echo", "first of many"]).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let before = fds();
    let mut last = String::new();
    for _ in 0..80 {
        let r = d.run(&id, &["true"]).await;
        assert_eq!(r["exit_code"], 0, "{r}");
        last = r["id"].as_str().unwrap().to_string();
    }
    // Each finished context kept a pidfd and an eventfd: 160 more, and
    // each spawn copied and closed them all.
    let after = fds();
    assert!(
        after <= before + 4,
        "init's descriptors grew from {before} to {after}"
    );
    let (s, v) = d.get(&contexts).await;
    assert_eq!(s, 200, "{v}");
    let listed = v["data"]["contexts"].as_array().unwrap();
    let exited = listed.iter().filter(|c| c["running"] == false).count();
    // 64 kept; the last one's exit may not be counted in yet.
    assert!(
        (64..=65).contains(&exited),
        "{exited} exited contexts listed"
    );
    assert!(listed.iter().any(|c| c["id"] == sleeper.as_str()), "{v}");
    let (s, _) = d.get(&format!("{contexts}/{first}")).await;
    assert_eq!(s, 404, "the oldest finished context is forgotten");
    let (s, v) = d.get(&format!("{contexts}/{last}")).await;
    assert_eq!((s, &v["data"]["exit_code"]), (200, &json!(0)), "{v}");
    // The durable log still has a forgotten context's exit.
    let (s, v) = d
        .get(&format!(
            "/api/v1/sandboxes/{id}/observability/logs?context_id={first}"
        ))
        .await;
    let text = v.to_string();
    assert!(
        s == 200 && text.contains("first of many") && text.contains("[exited: 0]"),
        "{v}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_memory_hog_dies_before_init() {
    let d = Daemon::start().await;
    let id = d.create(json!({"resources": {"memory": "128Mi"}})).await;
    let init = init_pid(&id).expect("init pid");
    // Every workload is the OOM killer's first choice; init is not.
    let r = d.sh(&id, "cat /proc/self/oom_score_adj").await;
    assert_eq!(r["stdout"], "1000\n", "{r}");
    let r = d
        .run(
            &id,
            &[
                "python3",
                "-c",
                "b = [bytearray(1 << 20) for _ in range(1024)]",
            ],
        )
        .await;
    assert_eq!(r["state"], "oom_killed", "{r}");
    assert_eq!(init_pid(&id), Some(init), "init was killed");
    assert_eq!(d.sh(&id, "echo alive").await["stdout"], "alive\n");
}

/// Kills sandbox `id`'s init with SIGKILL and waits for the daemon to
/// report it `failed`; returns the sandbox.
async fn kill_init(d: &Daemon, id: &str) -> serde_json::Value {
    let init = init_pid(id).expect("init pid");
    let _ = sandstone_sys::process::kill(sandstone_sys::Pid::from_raw(init), libc::SIGKILL);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, v) = d.get(&format!("/api/v1/sandboxes/{id}")).await;
        if v["data"]["status"] == "failed" {
            return v["data"].clone();
        }
        assert!(
            Instant::now() < deadline,
            "still {} 10 s after init died: {v}",
            v["data"]["status"]
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn when_init_dies_the_sandbox_is_failed_and_comes_back_on_resume() {
    let mut d = Daemon::start().await;
    let id = d.create(json!({"auto_resume": false})).await;
    d.sh(&id, "echo kept > /workspace/f").await;
    let sb = kill_init(&d, &id).await;
    let reason = sb["status_reason"].as_str().unwrap_or_default();
    assert!(reason.contains("init"), "no readable reason: {sb}");
    assert!(
        !d.dir_entries("run").contains(&id),
        "the runtime was not torn down"
    );
    // Without auto_resume a call says why, instead of `init unreachable`.
    let body = json!({"type": "cmd", "cmd": {"command": ["true"]}, "wait_until_done": true});
    let (s, v) = d
        .post(&format!("/api/v1/sandboxes/{id}/contexts"), body)
        .await;
    assert_eq!(s, 409, "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("failed"),
        "{v}"
    );
    let (s, v) = d
        .post(&format!("/api/v1/sandboxes/{id}/resume"), json!({}))
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(d.sh(&id, "cat /workspace/f").await["stdout"], "kept\n");
    let (_, v) = d.get(&format!("/api/v1/sandboxes/{id}")).await;
    assert_eq!(v["data"]["status"], "running");
    assert!(v["data"]["status_reason"].is_null(), "{v}");

    // With auto_resume (the default) the next call brings it back.
    let id = d.create(json!({})).await;
    d.sh(&id, "echo kept > /workspace/f").await;
    kill_init(&d, &id).await;
    assert_eq!(d.sh(&id, "cat /workspace/f").await["stdout"], "kept\n");
    // A sandbox re-adopted by a restarted daemon is watched as well.
    d.kill();
    d.spawn().await;
    kill_init(&d, &id).await;
    assert_eq!(d.sh(&id, "cat /workspace/f").await["stdout"], "kept\n");
}

/// Runs `sandstone exec` for `id` and returns (exit code, stdout, stderr).
async fn cli_exec(d: &Daemon, id: &str, script: &str) -> (i32, Vec<u8>, String) {
    let out = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new(common::sandstone_bin())
            .args(["exec", id, "--", "sh", "-c", script])
            .env("SANDSTONE_URL", &d.url)
            .env("SANDSTONE_TOKEN", &d.token)
            .output(),
    )
    .await
    .expect("sandstone exec finished in time")
    .unwrap();
    (
        out.status.code().unwrap_or(-1),
        out.stdout,
        common::text(&out.stderr),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn sandstone_exec_loses_no_output() {
    let d = Daemon::start().await;
    let id = d.create(json!({})).await;
    let script = "head -c 10000000 /dev/zero | tr '\\0' a; echo END";
    let runs = (0..20).map(|_| cli_exec(&d, &id, script));
    for (code, out, err) in futures_util::future::join_all(runs).await {
        assert_eq!(code, 0, "{err}");
        let a = out.iter().take_while(|b| **b == b'a').count();
        assert_eq!(
            (a, &out[a..]),
            (10_000_000, &b"END\n"[..]),
            "output lost or garbled ({} bytes): {err}",
            out.len()
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_repl_execution_reading_its_output_never_waits_for_the_grace() {
    let d = Daemon::start().await;
    let id = d.create(json!({})).await;
    let (s, v) = d
        .post(
            &format!("/api/v1/sandboxes/{id}/contexts"),
            json!({"type": "repl", "repl": {"alias": "bash"}}),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let ctx = v["data"]["id"].as_str().unwrap();
    // More than init keeps for a first reader, at once: the execution
    // reads it live, so nothing waits.
    let started = Instant::now();
    let (s, v) = d
        .post(
            &format!("/api/v1/sandboxes/{id}/contexts/{ctx}/exec"),
            json!({"data": "head -c 3000000 /dev/zero | tr '\\0' a; echo"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["data"]["output_raw"].as_str().unwrap().len(), 3_000_001);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn output_nobody_read_in_time_is_reported_truncated_unless_held_longer() {
    let d = Daemon::start().await;
    let id = d.create(json!({})).await;
    let start = |extra: Value| {
        let mut body = json!({"type": "cmd", "cmd": {"command": ["sh", "-c", "head -c 3000000 /dev/zero | tr '\\0' a"]}});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let d = &d;
        let id = &id;
        async move {
            let (s, v) = d
                .post(&format!("/api/v1/sandboxes/{id}/contexts"), body)
                .await;
            assert_eq!(s, 201, "{v}");
            v["data"]["id"].as_str().unwrap().to_string()
        }
    };
    let (s, v) = d
        .post(
            &format!("/api/v1/sandboxes/{id}/contexts"),
            json!({"type": "cmd", "cmd": {"command": ["true"]}, "hold_output_sec": 3601}),
        )
        .await;
    assert_eq!(s, 400, "{v}");
    assert!(v.to_string().contains("hold_output_sec"), "{v}");
    let ctx = start(json!({})).await;
    // What `sandstone exec` asks for: the output waits for its reader.
    let held = start(json!({"hold_output_sec": 60})).await;
    // Writers as fast as init's reader, on a busy machine: init stops
    // reading at its cap even while a pipe never runs dry.
    let mut fast = Vec::new();
    for _ in 0..4 {
        fast.push(
            start(json!({
                "cmd": {"command": ["head", "-c", "10000000", "/dev/zero"]},
                "hold_output_sec": 60,
            }))
            .await,
        );
    }
    for _ in 0..2 {
        start(json!({
            "cmd": {"command": ["sh", "-c", "while :; do :; done"]},
            "timeout_sec": 14,
        }))
        .await;
    }
    // Past the grace during which init keeps everything for a first reader.
    tokio::time::sleep(Duration::from_secs(12)).await;
    let client = sandstone_client::Client::new(&d.url, &d.token);
    let replay = |ctx: String| {
        let client = &client;
        let id = &id;
        async move {
            let mut att = client.attach(id, &ctx).await.unwrap();
            let (mut dropped, mut got) = (None, 0);
            loop {
                match att.next().await.expect("stream ends with done") {
                    sandstone_client::StreamEvent::Truncated { dropped_bytes } => {
                        assert_eq!(got, 0, "the note comes before the output");
                        dropped = Some(dropped_bytes);
                    }
                    sandstone_client::StreamEvent::Output { data, .. } => got += data.len() as u64,
                    sandstone_client::StreamEvent::Done { exit_code, .. } => {
                        assert_eq!(exit_code, Some(0));
                        return (dropped, got);
                    }
                    sandstone_client::StreamEvent::Error(e) => panic!("{e}"),
                }
            }
        }
    };
    let (dropped, got) = replay(ctx).await;
    let dropped = dropped.expect("a truncated event");
    assert_eq!(
        dropped + got,
        3_000_000,
        "replayed {got}, dropped {dropped}"
    );
    assert_eq!(replay(held).await, (None, 3_000_000));
    for f in fast {
        assert_eq!(replay(f).await, (None, 10_000_000));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn synchronous_output_is_capped_as_rendered_and_never_duplicated() {
    let d = Daemon::start().await;
    let id = d.create(json!({"resources": {"memory": "1Gi"}})).await;
    let url = format!("{}/api/v1/sandboxes/{id}/contexts", d.url);
    let run = |argv: serde_json::Value, pty: bool| {
        let mut body = json!({"type": "cmd", "cmd": {"command": argv}, "wait_until_done": true, "timeout_sec": 120});
        if pty {
            body["pty_size"] = json!({"rows": 24, "cols": 80});
        }
        d.http.post(&url).bearer_auth(&d.token).json(&body).send()
    };
    // 100 MB of NUL: each renders as 6 bytes of JSON (\u0000).
    let resp = run(json!(["head", "-c", "100000000", "/dev/zero"]), false)
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let body = resp.bytes().await.unwrap();
    assert!(
        body.len() <= (16 << 20) + 4096,
        "response of {} bytes",
        body.len()
    );
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["data"]["output_truncated"], true);
    assert!(v["data"]["output_raw"].is_null(), "output sent twice");
    assert!(v["data"]["stdout"].as_str().unwrap().len() > 1 << 20);
    // Small outputs: pipes give stdout and stderr; a PTY gives output_raw.
    let v: serde_json::Value = run(json!(["sh", "-c", "echo out; echo err >&2"]), false)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (
            &v["data"]["stdout"],
            &v["data"]["stderr"],
            &v["data"]["output_raw"]
        ),
        (&json!("out\n"), &json!("err\n"), &serde_json::Value::Null),
        "{v}"
    );
    assert_eq!(v["data"]["output_truncated"], false);
    let v: serde_json::Value = run(json!(["echo", "tty"]), true)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["data"]["output_raw"], "tty\r\n", "{v}");
    assert!(v["data"]["stdout"].is_null(), "{v}");
}

/// A file larger than the sandbox's memory limit, left by the workload and
/// read through the files API, or uploaded through it: init passes it a
/// piece at a time, so neither kills init (and the sandbox with it).
#[tokio::test(flavor = "multi_thread")]
async fn files_larger_than_the_memory_limit_pass_through_init() {
    let d = Daemon::start().await;
    let id = d.create(json!({"resources": {"memory": "128Mi"}})).await;
    let r = d
        .sh(
            &id,
            "head -c 300000000 /dev/urandom > /workspace/big.bin && sha256sum /workspace/big.bin",
        )
        .await;
    assert_eq!(r["exit_code"], 0, "{r}");
    let inside = r["stdout"]
        .as_str()
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .to_string();
    // Two readers at once: each gets all of it.
    let read = || async {
        let resp = d
            .http
            .get(format!(
                "{}/api/v1/sandboxes/{id}/files?path=/workspace/big.bin",
                d.url
            ))
            .bearer_auth(&d.token)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        resp.bytes().await.unwrap()
    };
    let (a, b) = tokio::join!(read(), read());
    for got in [a, b] {
        assert_eq!(got.len(), 300_000_000);
        assert_eq!(common::sha256sum(&got), inside);
    }
    // An upload of the same size lands whole.
    let body = vec![b'z'; 200_000_000];
    let resp = d
        .http
        .post(format!(
            "{}/api/v1/sandboxes/{id}/files?path=/workspace/up.bin",
            d.url
        ))
        .bearer_auth(&d.token)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    let r = d
        .sh(
            &id,
            "stat -c %s /workspace/up.bin; tr -d z < /workspace/up.bin | wc -c",
        )
        .await;
    assert_eq!(r["stdout"], "200000000\n0\n", "{r}");
    // An upload the client abandons half-way leaves the old file as it was
    // and no temporary file behind.
    {
        use tokio::io::AsyncWriteExt;
        let addr = d.url.trim_start_matches("http://").to_string();
        let mut c = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let head = format!(
            "POST /api/v1/sandboxes/{id}/files?path=/workspace/up.bin HTTP/1.1\r\nHost: {addr}\r\n\
             Authorization: Bearer {}\r\nContent-Length: 50000000\r\n\r\n",
            d.token
        );
        c.write_all(head.as_bytes()).await.unwrap();
        c.write_all(&vec![b'y'; 12_000_000]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = d
            .sh(
                &id,
                "tr -d z < /workspace/up.bin | wc -c; ls -a /workspace | grep -c sandstone-upload",
            )
            .await;
        if r["stdout"] == "0\n0\n" {
            break;
        }
        assert!(Instant::now() < deadline, "a half upload is left: {r}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Init lived through all of it: still running, never failed.
    let (_, v) = d.get(&format!("/api/v1/sandboxes/{id}")).await;
    assert_eq!(v["data"]["status"], "running", "{v}");
    let r = d.sh(&id, "echo alive").await;
    assert_eq!(r["stdout"], "alive\n", "{r}");
}
