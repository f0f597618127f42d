//! End-to-end: the REST API against a real daemon and real sandboxes.

// Test code: an unexpected failure is the test failing, so unwrap is the point.
#![allow(clippy::unwrap_used)]

mod common;

use common::Daemon;
use reqwest::Method;
use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn commands_files_and_delete() {
    let d = Daemon::start().await;
    let id = d.create(json!({})).await;

    let r = d.sh(&id, "echo out; echo err >&2; exit 3").await;
    assert_eq!(r["stdout"], "out\n");
    assert_eq!(r["stderr"], "err\n");
    assert_eq!(r["exit_code"], 3);
    assert_eq!(r["state"], "exited");
    assert_eq!(r["running"], false);

    let path = format!("/api/v1/sandboxes/{id}/files?path=/workspace/dir/a.bin");
    let body: Vec<u8> = (0..=255u8).cycle().take(300_000).collect();
    let resp = d
        .http
        .post(format!("{}{path}", d.url))
        .bearer_auth(&d.token)
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let got = d
        .http
        .get(format!("{}{path}", d.url))
        .bearer_auth(&d.token)
        .send()
        .await
        .unwrap();
    assert_eq!(got.headers()["content-type"], "application/octet-stream");
    assert_eq!(got.bytes().await.unwrap().to_vec(), body);
    // The file is really inside the sandbox, owned by its root.
    let r = d.sh(&id, "stat -c '%s %U' /workspace/dir/a.bin").await;
    assert_eq!(r["stdout"], "300000 root\n");

    let (s, v) = d
        .get(&format!(
            "/api/v1/sandboxes/{id}/files/stat?path=/workspace/dir/a.bin"
        ))
        .await;
    assert_eq!(
        (s, v["data"]["size"].as_u64(), v["data"]["type"].as_str()),
        (200, Some(300_000), Some("file"))
    );
    let (s, v) = d
        .post(
            &format!("/api/v1/sandboxes/{id}/files/move"),
            json!({"source": "/workspace/dir/a.bin", "destination": "b.bin"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let (_, v) = d
        .get(&format!(
            "/api/v1/sandboxes/{id}/files/list?path=/workspace"
        ))
        .await;
    let names: Vec<_> = v["data"]["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, vec!["b.bin", "dir"]);
    let (s, _) = d
        .req(
            Method::POST,
            &format!("/api/v1/sandboxes/{id}/files?path=/workspace/x/y&mkdir=true&recursive=true"),
            None,
        )
        .await;
    assert_eq!(s, 201);
    let (s, _) = d
        .delete(&format!("/api/v1/sandboxes/{id}/files?path=/workspace/x"))
        .await;
    assert_eq!(s, 200);
    let (s, v) = d
        .get(&format!(
            "/api/v1/sandboxes/{id}/files/stat?path=/workspace/x"
        ))
        .await;
    assert_eq!((s, v["error"]["code"].as_str()), (404, Some("not_found")));

    let (s, v) = d.get(&format!("/api/v1/sandboxes/{id}")).await;
    assert_eq!((s, v["data"]["status"].as_str()), (200, Some("running")));
    let (s, _) = d.delete(&format!("/api/v1/sandboxes/{id}")).await;
    assert_eq!(s, 202);
    let (s, v) = d.get(&format!("/api/v1/sandboxes/{id}")).await;
    assert_eq!((s, v["error"]["code"].as_str()), (404, Some("not_found")));
    assert!(d.volumes().is_empty() && d.dir_entries("run").is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn repl_contexts_keep_state() {
    let d = Daemon::start().await;
    let id = d
        .create(json!({"env_vars": {"GREETING": "hi", "OVERRIDE": "sandbox"}}))
        .await;
    // The claim's env_vars reach every process; a context's own win.
    let body = json!({"type": "cmd", "cmd": {"command": ["sh", "-c", "echo $GREETING $OVERRIDE"]}, "env_vars": {"OVERRIDE": "context"}, "wait_until_done": true});
    let (_, v) = d
        .post(&format!("/api/v1/sandboxes/{id}/contexts"), body)
        .await;
    assert_eq!(v["data"]["stdout"], "hi context\n", "{v}");
    let ctx = |lang: &str| json!({"type": "repl", "repl": {"alias": lang}});
    let (s, v) = d
        .post(&format!("/api/v1/sandboxes/{id}/contexts"), ctx("python"))
        .await;
    assert_eq!(s, 201, "{v}");
    let py = v["data"]["id"].as_str().unwrap().to_string();
    let exec = |c: &str, code: &str| {
        (
            format!("/api/v1/sandboxes/{id}/contexts/{c}/exec"),
            json!({"data": code}),
        )
    };
    let (p, b) = exec(&py, "x = 41\nimport os");
    assert_eq!(d.post(&p, b).await.1["data"]["output_raw"], "");
    let (p, b) = exec(&py, "x + 1");
    assert_eq!(d.post(&p, b).await.1["data"]["output_raw"], "42\n");
    let (p, b) = exec(&py, "print(os.getcwd()); 1/0");
    // A REPL's output is its streams as they came, once (output_raw).
    let v = d.post(&p, b).await.1;
    let out = v["data"]["output_raw"].as_str().unwrap();
    assert!(
        out.starts_with("/workspace\nTraceback") && out.contains("ZeroDivisionError"),
        "{v}"
    );
    assert!(v["data"]["stdout"].is_null() && v["data"]["stderr"].is_null());

    let (_, v) = d
        .post(&format!("/api/v1/sandboxes/{id}/contexts"), ctx("bash"))
        .await;
    let sh = v["data"]["id"].as_str().unwrap().to_string();
    let (p, b) = exec(&sh, "cd /tmp && export FOO=bar && f() { echo fn-$1; }");
    assert_eq!(d.post(&p, b).await.0, 200);
    let (p, b) = exec(&sh, "pwd; echo $FOO; f 7");
    assert_eq!(
        d.post(&p, b).await.1["data"]["output_raw"],
        "/tmp\nbar\nfn-7\n"
    );
    let (p, b) = exec(&sh, "no-such-command");
    let v = d.post(&p, b).await.1;
    assert_eq!(v["data"]["exit_code"], 127);
    assert!(
        v["data"]["output_raw"]
            .as_str()
            .unwrap()
            .contains("command not found")
    );

    let (s, v) = d.get(&format!("/api/v1/sandboxes/{id}/contexts")).await;
    assert_eq!(
        (s, v["data"]["contexts"].as_array().unwrap().len()),
        (200, 3)
    );
    // A command that does not exist is a clear error, not a hung context.
    let (s, v) = d
        .post(
            &format!("/api/v1/sandboxes/{id}/contexts"),
            json!({"type": "cmd", "cmd": {"command": ["no-such-binary"]}, "wait_until_done": true}),
        )
        .await;
    assert_eq!((s, v["error"]["code"].as_str()), (404, Some("not_found")));
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("command not found: no-such-binary")
    );
    // Programs are found as execvp finds them: in the command's own PATH,
    // by a path relative to its cwd, and a script without `#!` runs in
    // /bin/sh. The workload starts with no signal blocked or ignored and
    // no descriptor of init's but its stdio.
    d.sh(
        &id,
        "mkdir -p /tmp/mybin && printf 'echo no-shebang $1\\n' > /tmp/mybin/mytool \
         && chmod +x /tmp/mybin/mytool",
    )
    .await;
    let contexts = format!("/api/v1/sandboxes/{id}/contexts");
    let run = |command: serde_json::Value, extra: serde_json::Value| {
        let mut body = json!({"type": "cmd", "cmd": {"command": command}, "wait_until_done": true});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        d.post(&contexts, body)
    };
    let (_, v) = run(
        json!(["mytool", "a"]),
        json!({"env_vars": {"PATH": "/tmp/mybin:/usr/bin:/bin"}}),
    )
    .await;
    assert_eq!(v["data"]["stdout"], "no-shebang a\n", "{v}");
    let (_, v) = run(json!(["./mytool", "b"]), json!({"cwd": "/tmp/mybin"})).await;
    assert_eq!(v["data"]["stdout"], "no-shebang b\n", "{v}");
    let (s, v) = run(json!(["mytool"]), json!({})).await;
    assert_eq!(s, 404, "not in the default PATH: {v}");
    let (_, v) = run(
        json!([
            "sh",
            "-c",
            "grep -E '^Sig(Blk|Ign)' /proc/self/status; ls /proc/self/fd"
        ]),
        json!({}),
    )
    .await;
    assert_eq!(
        v["data"]["stdout"], "SigBlk:\t0000000000000000\nSigIgn:\t0000000000000000\n0\n1\n2\n3\n",
        "{v}"
    );
    // Timeouts kill the command and say so.
    let (s, v) = d.post(&format!("/api/v1/sandboxes/{id}/contexts"), json!({"type": "cmd", "cmd": {"command": ["sleep", "30"]}, "wait_until_done": true, "timeout_sec": 1})).await;
    assert_eq!((s, v["data"]["state"].as_str()), (201, Some("timed_out")));
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_gets_4xx_naming_the_field() {
    let d = Daemon::start().await;
    let raw = |body: &'static str| {
        d.http
            .post(format!("{}/api/v1/sandboxes", d.url))
            .bearer_auth(&d.token)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let r = raw("{not json").await.unwrap();
    assert_eq!(r.status(), 400);
    d.rejects("/api/v1/sandboxes", json!({"template": 7}), "`template`")
        .await;
    d.rejects(
        "/api/v1/sandboxes",
        json!({"template": "host", "config": {"resources": {"memory": "lots"}}}),
        "config.resources.memory",
    )
    .await;
    let (s, v) = d
        .post("/api/v1/sandboxes", json!({"template": "nope"}))
        .await;
    assert_eq!((s, v["error"]["code"].as_str()), (404, Some("not_found")));
    let (s, _) = d.get("/api/v1/sandboxes/sb-missing").await;
    assert_eq!(s, 404);
    let r = d
        .http
        .get(format!("{}/api/v1/sandboxes", d.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = d
        .http
        .get(format!("{}/api/v1/sandboxes", d.url))
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    let id = d.create(json!({})).await;
    for (q, want) in [
        ("path=", "empty path"),
        ("path=a%00b", "NUL"),
        ("", "missing `path`"),
    ] {
        let (s, v) = d.get(&format!("/api/v1/sandboxes/{id}/files?{q}")).await;
        assert_eq!(s, 400, "{q}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains(want),
            "{q}: {v}"
        );
    }
    let long = "a".repeat(5000);
    let (s, _) = d
        .get(&format!("/api/v1/sandboxes/{id}/files?path={long}"))
        .await;
    assert_eq!(s, 400);
    d.rejects(
        &format!("/api/v1/sandboxes/{id}/contexts"),
        json!({"type": "vm"}),
        "`type`",
    )
    .await;
    d.rejects(
        &format!("/api/v1/sandboxes/{id}/contexts"),
        json!({"type": "cmd", "cmd": {"command": []}}),
        "cmd.command",
    )
    .await;
    let (s, _) = d
        .post(
            &format!("/api/v1/sandboxes/{id}/contexts/ctx-nope/exec"),
            json!({"data": "1"}),
        )
        .await;
    assert_eq!(s, 404);
    d.rejects(
        &format!("/api/v1/sandboxes/{id}/contexts/ctx-nope/signal"),
        json!({"signal": "BOGUS"}),
        "`signal`",
    )
    .await;
    // JSON bodies are capped; files have their own larger cap.
    let big = "x".repeat(5 << 20);
    // Its own client: the daemon closes this connection, which must not be
    // reused for the requests after it.
    let sent = reqwest::Client::new()
        .post(format!("{}/api/v1/sandboxes/{id}/contexts", d.url))
        .bearer_auth(&d.token)
        .json(&json!({"type": "cmd", "cmd": {"command": [big]}}))
        .send()
        .await;
    // The daemon answers 413 as soon as it sees the length; the client may
    // still be writing and see the connection close instead.
    match sent {
        Ok(r) => assert_eq!(r.status(), 413),
        Err(e) => assert!(e.is_request(), "{e}"),
    }
    d.rejects(
        "/api/v1/sandboxes",
        json!({"template": "host", "config": {"ttl": 99_999_999_999u64}}),
        "config.ttl",
    )
    .await;
    // A FIFO would hang a read; a directory is not a file.
    d.sh(&id, "mkfifo /tmp/fifo").await;
    for (path, want) in [
        ("/tmp/fifo", "not a regular file"),
        ("/tmp", "is a directory"),
    ] {
        let (s, v) = d
            .get(&format!("/api/v1/sandboxes/{id}/files?path={path}"))
            .await;
        assert!(
            s == 400 && v["error"]["message"].as_str().unwrap().contains(want),
            "{path}: {v}"
        );
    }
    // The daemon is still healthy after all of it.
    assert_eq!(d.sh(&id, "echo alive").await["stdout"], "alive\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn failed_creates_leave_nothing_behind() {
    // One data directory, the daemon restarted at each fault point: each
    // failure must leave nothing the next run could trip over either.
    let mut d = Daemon::start().await;
    for point in [
        "create.after_storage",
        "create.after_cgroup",
        "rootfs.after_overlay",
        "spawn.before_clone",
        "spawn.after_maps",
        "rootfs.before_pivot",
        "create.after_launch",
    ] {
        d.stop();
        d.faults = point.into();
        d.spawn().await;
        let (s, v) = d
            .post("/api/v1/sandboxes", json!({"template": "host"}))
            .await;
        assert_eq!(s, 500, "{point}: {v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("injected fault"),
            "{point}: {v}"
        );
        assert!(d.volumes().is_empty(), "{point}: sandbox dir left");
        assert!(d.dir_entries("run").is_empty(), "{point}: run dir left");
        let (_, v) = d.get("/api/v1/sandboxes").await;
        assert_eq!(v["data"]["count"], 0, "{point}");
        // No cgroup below the daemon's group and no process of a sandbox.
        let leftovers = cgroup_children(&d);
        assert!(leftovers.is_empty(), "{point}: cgroups left: {leftovers:?}");
        assert!(!d.data.path().join("run").read_dir().unwrap().any(|_| true));
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(
            !mounts.contains(d.data.path().join("run").to_str().unwrap()),
            "{point}: mount left"
        );
    }
}

/// Sandbox cgroups under this daemon's group, in every hierarchy.
fn cgroup_children(d: &Daemon) -> Vec<String> {
    let group = format!(
        "sandstone-{}",
        sha_prefix(&d.data.path().display().to_string())
    );
    let mut found = Vec::new();
    for entry in walk("/sys/fs/cgroup", 5) {
        if entry.ends_with(&group) {
            for c in std::fs::read_dir(&entry).unwrap().flatten() {
                if c.file_type().unwrap().is_dir() {
                    found.push(c.path().display().to_string());
                }
            }
        }
    }
    found
}

fn sha_prefix(s: &str) -> String {
    // Same naming as the daemon: first 8 hex chars of SHA-256(data dir).
    use std::io::Write;
    let mut out = std::process::Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    out.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
    let o = out.wait_with_output().unwrap();
    String::from_utf8_lossy(&o.stdout)[..8].to_string()
}

fn walk(root: &str, depth: usize) -> Vec<std::path::PathBuf> {
    let mut out = vec![];
    if depth == 0 {
        return out;
    }
    for e in std::fs::read_dir(root).into_iter().flatten().flatten() {
        if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            out.push(e.path());
            out.extend(walk(e.path().to_str().unwrap(), depth - 1));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn running_sandboxes_survive_a_daemon_stop_and_crash() {
    let mut d = Daemon::start().await;
    let id = d.create(json!({})).await;
    let (_, v) = d
        .post(
            &format!("/api/v1/sandboxes/{id}/contexts"),
            json!({"type": "repl", "repl": {"alias": "python"}}),
        )
        .await;
    let py = v["data"]["id"].as_str().unwrap().to_string();
    let exec = format!("/api/v1/sandboxes/{id}/contexts/{py}/exec");
    d.post(&exec, json!({"data": "state = ['kept']"})).await;
    // A command started before the restarts keeps running through them.
    let body = json!({"type": "cmd", "cmd": {"command": ["sh", "-c", "sleep 2; echo done > /workspace/bg"]}});
    let (s, _) = d
        .post(&format!("/api/v1/sandboxes/{id}/contexts"), body)
        .await;
    assert_eq!(s, 201);
    for graceful in [true, false] {
        if graceful {
            d.stop()
        } else {
            d.kill()
        }
        d.spawn().await;
        let (s, v) = d
            .post(&exec, json!({"data": "state.append(1); len(state)"}))
            .await;
        assert_eq!(s, 200, "{v}");
    }
    let (_, v) = d.post(&exec, json!({"data": "state"})).await;
    assert_eq!(v["data"]["output_raw"], "['kept', 1, 1]\n");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while d.sh(&id, "cat /workspace/bg 2>/dev/null || true").await["stdout"] != "done\n" {
        assert!(
            std::time::Instant::now() < deadline,
            "the background command did not finish"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn openapi_lists_only_routes_that_exist_and_metrics_count() {
    let d = Daemon::start().await;
    let doc: serde_json::Value = d
        .http
        .get(format!("{}/openapi.json", d.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() >= 15, "{}", paths.len());
    for (path, ops) in paths {
        for method in ops.as_object().unwrap().keys() {
            let url = path
                .replace("{id}", "sb-nope")
                .replace("{ctx}", "ctx-nope")
                .replace("{snap}", "snap-nope")
                .replace("{name}", "cred-nope");
            let m = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let (s, v) = d.req(m, &format!("{url}?path=/x"), None).await;
            assert!(
                s != 405 && v["error"]["message"] != "no such route",
                "{method} {path}: {s} {v}"
            );
        }
    }
    let id = d.create(json!({})).await;
    let r = d.sh(&id, "kill -SEGV $$").await;
    assert_eq!(
        (
            r["signal"].as_i64(),
            r["exit_code"].as_i64(),
            r["state"].as_str()
        ),
        (Some(11), Some(139), Some("killed"))
    );
    let metrics = d.metrics().await;
    // Two sandboxes: the claim above and the bodiless POST of the route walk.
    assert!(
        metrics.contains("sandstone_sandboxes{state=\"running\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("sandstone_operation_duration_seconds_count{op=\"create\"} 2"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn file_watch_streams_events_over_websocket() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest};
    let d = Daemon::start().await;
    let id = d.create(json!({})).await;
    let url = format!("{}/api/v1/sandboxes/{id}/files/watch", d.url).replacen("http", "ws", 1);
    let mut req = url.into_client_request().unwrap();
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {}", d.token).parse().unwrap(),
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    let sub = json!({"action": "subscribe", "path": "/workspace", "recursive": true});
    ws.send(Message::Text(sub.to_string().into()))
        .await
        .unwrap();
    macro_rules! next {
        () => {{
            let m = tokio::time::timeout(std::time::Duration::from_secs(10), ws.next())
                .await
                .expect("event in time");
            let Some(Ok(Message::Text(t))) = m else {
                panic!("{m:?}")
            };
            serde_json::from_str::<serde_json::Value>(&t).unwrap()
        }};
    }
    let v = next!();
    assert_eq!(v["type"], "subscribed", "{v}");
    d.sh(
        &id,
        "mkdir /workspace/sub && echo x > /workspace/sub/new.txt",
    )
    .await;
    let mut seen = Vec::new();
    while !seen
        .iter()
        .any(|p: &String| p.ends_with("/workspace/sub/new.txt"))
    {
        let v = next!();
        assert_eq!(v["type"], "event", "{v}");
        seen.push(v["path"].as_str().unwrap().to_string());
    }
    assert_eq!(seen[0], "/workspace/sub");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_attached_context_streams_output_while_it_runs() {
    use sandstone_client::StreamEvent;
    let d = Daemon::start().await;
    let id = d.create(json!({})).await;
    let client = sandstone_client::Client::new(&d.url, &d.token);
    let argv = ["sh", "-c", "echo start; read x; echo got $x"].map(String::from);
    let ctx = client.start(&id, &argv, None, None, None).await.unwrap();
    let mut att = client.attach(&id, &ctx).await.unwrap();
    let next = async |att: &mut sandstone_client::Attached| {
        tokio::time::timeout(std::time::Duration::from_secs(10), att.next())
            .await
            .expect("output while the process still runs")
            .expect("an event")
    };
    // The process is blocked on its stdin: what it printed so far must
    // arrive now, not when it exits.
    let StreamEvent::Output { data, .. } = next(&mut att).await else {
        panic!("output first")
    };
    assert_eq!(data, "start\n");
    att.input("abc\n").await.unwrap();
    let StreamEvent::Output { data, .. } = next(&mut att).await else {
        panic!("the echo of the input")
    };
    assert_eq!(data, "got abc\n");
    assert!(matches!(
        next(&mut att).await,
        StreamEvent::Done {
            exit_code: Some(0),
            ..
        }
    ));
}

#[tokio::test(flavor = "multi_thread")]
async fn sandboxes_carry_metadata_that_lists_filter_on() {
    let d = Daemon::start().await;
    let id = d
        .create(json!({"metadata": {"session": "sesn_1", "owner": "ci"}}))
        .await;
    let other = d.create(json!({"metadata": {"session": "sesn_2"}})).await;
    let listed = |q: &'static str| {
        let d = &d;
        async move {
            let (_, v) = d.get(&format!("/api/v1/sandboxes{q}")).await;
            v["data"]["sandboxes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s["id"].as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(listed("?metadata.session=sesn_1").await, vec![id.clone()]);
    assert_eq!(
        listed("?metadata.session=sesn_1&metadata.owner=nobody").await,
        Vec::<String>::new()
    );
    assert!(listed("").await.contains(&other));
    let (_, v) = d.get(&format!("/api/v1/sandboxes/{id}")).await;
    assert_eq!(v["data"]["config"]["metadata"]["owner"], "ci", "{v}");
    // Updates merge; an empty value removes a key.
    let (s, v) = d
        .req(
            reqwest::Method::PUT,
            &format!("/api/v1/sandboxes/{id}"),
            Some(json!({"config": {"metadata": {"owner": "", "stage": "2"}}})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let (_, v) = d.get(&format!("/api/v1/sandboxes/{id}")).await;
    assert_eq!(
        v["data"]["config"]["metadata"],
        json!({"session": "sesn_1", "stage": "2"}),
        "{v}"
    );
    // The label index follows the update.
    assert_eq!(listed("?metadata.stage=2").await, vec![id.clone()]);
    assert!(listed("?metadata.owner=ci").await.is_empty());
    d.rejects(
        "/api/v1/sandboxes",
        json!({"template": "host", "config": {"metadata": {"bad key": "x"}}}),
        "config.metadata",
    )
    .await;
}

/// Sandbox0's fields are honoured or, when they ask for what Sandstone does
/// not do, refused by name: never dropped with a 2xx (#18).
#[tokio::test(flavor = "multi_thread")]
async fn spec_fields_are_honoured_or_refused_by_name() {
    let d = Daemon::start().await;
    // Claim: webhook and services are refused when set, an empty list is
    // not; a field the spec does not have is refused by name.
    d.rejects(
        "/api/v1/sandboxes",
        json!({"config": {"ttl_seconds": 5}}),
        "ttl_seconds",
    )
    .await;
    d.rejects(
        "/api/v1/sandboxes",
        json!({"config": {"webhook": {"url": "ftp://x.test"}}}),
        "config.webhook.url",
    )
    .await;
    d.rejects(
        "/api/v1/sandboxes",
        json!({"config": {"services": [{"id": "web", "port": 8080}]}}),
        "config.services",
    )
    .await;
    let id = d
        .create(json!({"services": [], "ttl": 600, "env_vars": {"A": "one"}}))
        .await;
    let path = format!("/api/v1/sandboxes/{id}");
    let update = |body| d.req(Method::PUT, &path, Some(body));

    // PUT: env_vars are the next processes' defaults; network is applied.
    let (s, v) =
        update(json!({"config": {"env_vars": {"B": "two"}, "network": {"mode": "block-all"}}}))
            .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        d.sh(&id, "echo ${A:-unset} $B").await["stdout"],
        "unset two\n"
    );
    let (_, v) = d.get(&format!("/api/v1/sandboxes/{id}/network")).await;
    assert_eq!(v["data"]["mode"], "block-all", "{v}");
    let (s, v) = update(json!({"config": {"network": {"mode": "sideways"}}})).await;
    assert!(
        s == 400 && v.to_string().contains("config.network"),
        "{s} {v}"
    );
    let (s, v) = update(json!({"config": {"services": [{"id": "web"}]}})).await;
    assert!(
        s == 400 && v.to_string().contains("config.services"),
        "{s} {v}"
    );
    let (s, v) = update(json!({"config": {"env_vars": {}}})).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(d.sh(&id, "echo ${B:-cleared}").await["stdout"], "cleared\n");

    // Refresh for a duration: the idle deadline is that far, not the ttl.
    let (s, v) = d
        .post(
            &format!("/api/v1/sandboxes/{id}/refresh"),
            json!({"duration": 60}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let expires = v["data"]["expires_at"].as_str().unwrap();
    let left = sandstone_api::timefmt::parse_rfc3339_us(expires).unwrap() / 1000
        - sandstone_api::timefmt::now_ms();
    assert!((50_000..=61_000).contains(&left), "{left} ms left, {v}");

    // Contexts: ttl_sec ends one; idle timeouts and custom REPLs are refused.
    let (s, v) = d
        .post(
            &format!("/api/v1/sandboxes/{id}/contexts"),
            json!({"type": "cmd", "cmd": {"command": ["sleep", "60"]}, "ttl_sec": 1}),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let ctx = v["data"]["id"].as_str().unwrap().to_string();
    let mut running = true;
    for _ in 0..50 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let (_, v) = d
            .get(&format!("/api/v1/sandboxes/{id}/contexts/{ctx}"))
            .await;
        running = v["data"]["running"].as_bool().unwrap();
        if !running {
            break;
        }
    }
    assert!(!running, "ttl_sec did not end the context");
    for (body, field) in [
        (
            json!({"type": "cmd", "cmd": {"command": ["true"]}, "idle_timeout_sec": 5}),
            "idle_timeout_sec",
        ),
        (
            json!({"type": "repl", "repl": {"alias": "python", "input": "1+1"}}),
            "repl.input",
        ),
        (
            json!({"type": "repl", "repl": {"alias": "python", "repl_config": {"name": "x", "candidates": []}}}),
            "repl.repl_config",
        ),
        (
            json!({"type": "repl", "wait_until_done": true}),
            "wait_until_done",
        ),
    ] {
        d.rejects(&format!("/api/v1/sandboxes/{id}/contexts"), body, field)
            .await;
    }

    // A file read as JSON is base64; a snapshot with an unset expiry is made.
    d.sh(&id, "printf 'hi\\0there' > /workspace/f").await;
    let v: serde_json::Value = d
        .http
        .get(format!(
            "{}/api/v1/sandboxes/{id}/files?path=/workspace/f",
            d.url
        ))
        .bearer_auth(&d.token)
        .header("accept", "application/json")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        v["data"],
        json!({"content": "aGkAdGhlcmU=", "encoding": "base64"})
    );
    let (s, v) = d
        .post(
            &format!("/api/v1/sandboxes/{id}/snapshots"),
            json!({"expires_at": ""}),
        )
        .await;
    assert_eq!(s, 201, "{v}");

    // The paused filter.
    let other = d.create(json!({})).await;
    let (s, _) = d
        .post(&format!("/api/v1/sandboxes/{other}/pause"), json!({}))
        .await;
    assert_eq!(s, 200);
    let ids = |v: serde_json::Value| -> Vec<String> {
        v["data"]["sandboxes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["id"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        ids(d.get("/api/v1/sandboxes?paused=true").await.1),
        std::slice::from_ref(&other)
    );
    assert_eq!(
        ids(d.get("/api/v1/sandboxes?paused=false").await.1),
        std::slice::from_ref(&id)
    );
    let (s, v) = d.get("/api/v1/sandboxes?paused=maybe").await;
    assert!(s == 400 && v.to_string().contains("paused"), "{s} {v}");
}

/// `config.uploads_dir`: files the API puts there are readable in the
/// sandbox and nothing in it, root included, can change them; they
/// survive a pause, and a paused sandbox can be given the directory.
#[tokio::test(flavor = "multi_thread")]
async fn uploads_are_read_only_inside_the_sandbox() {
    let d = Daemon::start().await;
    let put = async |id: &str, name: &str, body: &'static str| {
        let r = d
            .http
            .put(format!("{}/api/v1/sandboxes/{id}/uploads/{name}", d.url))
            .bearer_auth(&d.token)
            .body(body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json::<serde_json::Value>().await.unwrap())
    };
    d.rejects(
        "/api/v1/sandboxes",
        json!({"template": "host", "config": {"uploads_dir": "/proc/x"}}),
        "config.uploads_dir",
    )
    .await;
    let id = d
        .create(json!({"uploads_dir": "/mnt/session/uploads"}))
        .await;
    let (s, v) = put(&id, "notes.txt", "read me\n").await;
    assert_eq!((s, &v["data"]["size"]), (200, &json!(8)), "{v}");
    let (s, v) = put(&id, "a%2Fb", "x").await;
    assert!(s == 400 && v.to_string().contains("name"), "{s} {v}");
    let r = d
        .sh(
            &id,
            "f=/mnt/session/uploads/notes.txt; cat $f; \
             echo x >> $f 2>/dev/null && echo appended; \
             rm -f $f 2>/dev/null; chmod 666 $f 2>/dev/null; \
             touch /mnt/session/uploads/new 2>/dev/null && echo created; \
             mount -o remount,rw /mnt/session/uploads 2>/dev/null && echo remounted; \
             umount /mnt/session/uploads 2>/dev/null && echo unmounted; \
             stat -c '%a %U' $f; cat $f",
        )
        .await;
    assert_eq!(r["stdout"], "read me\n444 root\nread me\n", "{r}");
    // Kept across a pause; listed and removed through the API only.
    for step in ["pause", "resume"] {
        let (s, v) = d
            .post(&format!("/api/v1/sandboxes/{id}/{step}"), json!({}))
            .await;
        assert_eq!(s, 200, "{step}: {v}");
    }
    let (s, v) = d.get(&format!("/api/v1/sandboxes/{id}/uploads")).await;
    assert_eq!(
        (s, &v["data"]),
        (200, &json!([{"name": "notes.txt", "size": 8}])),
        "{v}"
    );
    let r = d.sh(&id, "cat /mnt/session/uploads/notes.txt").await;
    assert_eq!(r["stdout"], "read me\n", "{r}");
    let (s, _) = d
        .delete(&format!("/api/v1/sandboxes/{id}/uploads/notes.txt"))
        .await;
    assert_eq!(s, 200);
    let r = d.sh(&id, "ls -A /mnt/session/uploads | wc -l").await;
    assert_eq!(r["stdout"], "0\n", "{r}");
    let (s, _) = d
        .delete(&format!("/api/v1/sandboxes/{id}/uploads/notes.txt"))
        .await;
    assert_eq!(s, 404);

    // A sandbox made without the directory refuses uploads until it is
    // given one: bound at once while it runs, kept across a pause.
    let plain = d.create(json!({})).await;
    let (s, v) = put(&plain, "a", "x").await;
    assert!(s == 409 && v.to_string().contains("uploads_dir"), "{s} {v}");
    let r = d.sh(&plain, "sleep 600 & echo $! > /tmp/bg").await;
    assert_eq!(r["exit_code"], 0, "{r}");
    let path = format!("/api/v1/sandboxes/{plain}");
    let set = async |dir: &str| {
        let body = json!({"config": {"uploads_dir": dir}});
        d.req(Method::PUT, &path, Some(body)).await
    };
    // A file where the directory would go: refused by field, nothing set.
    d.sh(&plain, "touch /taken").await;
    let (s, v) = set("/taken").await;
    assert!(
        s == 409 && v.to_string().contains("config.uploads_dir"),
        "{s} {v}"
    );
    let (s, v) = set("/data/in").await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = put(&plain, "a", "late\n").await;
    assert_eq!(s, 200, "{v}");
    let r = d
        .sh(
            &plain,
            "cat /data/in/a; echo y > /data/in/a || echo refused; \
             umount /data/in 2>/dev/null || echo kept; kill -0 $(cat /tmp/bg) && echo alive",
        )
        .await;
    assert_eq!(r["stdout"], "late\nrefused\nkept\nalive\n", "{r}");
    let (s, v) = set("/elsewhere").await;
    assert!(s == 409 && v.to_string().contains("uploads_dir"), "{s} {v}");
    for step in ["pause", "resume"] {
        let (s, v) = d
            .post(&format!("/api/v1/sandboxes/{plain}/{step}"), json!({}))
            .await;
        assert_eq!(s, 200, "{step}: {v}");
    }
    let r = d
        .sh(&plain, "cat /data/in/a; touch /data/in/b || echo refused")
        .await;
    assert_eq!(r["stdout"], "late\nrefused\n", "{r}");
}

/// A list answers with each sandbox's claimed resources and networking, and
/// a JSON answer of any size is gzipped for a client that takes gzip (the
/// console, the Python SDKs) and plain for one that does not.
#[tokio::test(flavor = "multi_thread")]
async fn lists_carry_resources_and_big_answers_are_gzipped() {
    let d = Daemon::start().await;
    for i in 0..6 {
        d.create(json!({
            "network_enabled": i % 2 == 0,
            "resources": {"memory": "256Mi"},
            "metadata": {"purpose": "a label long enough to make the list big"},
        }))
        .await;
    }
    let get = async |encoding: Option<&str>| {
        let mut r = d
            .http
            .get(format!("{}/api/v1/sandboxes", d.url))
            .bearer_auth(&d.token);
        if let Some(e) = encoding {
            r = r.header("accept-encoding", e);
        }
        let r = r.send().await.unwrap();
        let enc = r
            .headers()
            .get("content-encoding")
            .map(|v| v.to_str().unwrap().to_string());
        (enc, r.bytes().await.unwrap())
    };
    let (enc, plain) = get(None).await;
    assert_eq!(enc, None);
    let list: serde_json::Value = serde_json::from_slice(&plain).unwrap();
    let items = list["data"]["sandboxes"].as_array().unwrap();
    assert_eq!(items.len(), 6, "{list}");
    assert!(
        items
            .iter()
            .all(|s| s["resources"]["memory"] == "256Mi" && s["network_enabled"].is_boolean()),
        "{list}"
    );
    let (enc, gz) = get(Some("gzip, deflate")).await;
    assert_eq!(enc.as_deref(), Some("gzip"));
    assert!(
        gz.len() < plain.len() / 2,
        "{} vs {}",
        gz.len(),
        plain.len()
    );
    let mut unzipped = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&gz[..]), &mut unzipped).unwrap();
    let again: serde_json::Value = serde_json::from_slice(&unzipped).unwrap();
    assert_eq!(again["data"]["sandboxes"], list["data"]["sandboxes"]);
    // Small answers go plain: compressing them saves nothing.
    let r = d
        .http
        .get(format!("{}/healthz", d.url))
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert!(r.headers().get("content-encoding").is_none());
}
