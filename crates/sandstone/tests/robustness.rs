//! Robustness under hostile or careless use: descriptors the daemon
//! inherited, output floods and slow readers, memory exhaustion inside a
//! sandbox, and the death of a sandbox's init.

mod common;

use common::Daemon;
use serde_json::json;

/// The host pid of sandbox `id`'s init: the process in its cgroup that is
/// PID 1 of its pid namespace.
fn init_pid(id: &str) -> Option<i32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: i32 = e.file_name().to_str()?.parse().ok()?;
        let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
        if !cgroup.lines().any(|l| l.ends_with(&format!("/{id}"))) {
            return None;
        }
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let nspid = status.lines().find(|l| l.starts_with("NSpid:"))?;
        (nspid.split_whitespace().last() == Some("1")).then_some(pid)
    })
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
            json!({"data": "ls /proc/$$/fd | sort -n | tr '\\n' ' '"}),
        )
        .await;
    assert_eq!(v["data"]["output_raw"], "0 1 2 3 4 ", "{v}");
    // The spawn helper and init hold nothing of the daemon's either.
    let init = init_pid(&id).expect("init pid") as u32;
    assert_eq!(
        held(init),
        Vec::<std::path::PathBuf>::new(),
        "init holds them"
    );
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
