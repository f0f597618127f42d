//! Per-sandbox runtime metrics end to end: a daemon sampling every second,
//! a sandbox burning CPU and holding memory, its series, the catalog, bad
//! queries, another team's view, the Prometheus gauges, and a pause.

// Test code: an unexpected failure is the test failing, so unwrap is the point.
#![allow(clippy::unwrap_used)]

mod common;

use common::{Daemon, assert_names};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// The values of the series of `metric` in a metrics answer, in order.
fn values(data: &Value, metric: &str) -> Vec<f64> {
    data["series"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["metric"] == metric)
        .flat_map(|s| s["segments"].as_array().unwrap())
        .flat_map(|seg| seg["points"].as_array().unwrap())
        .map(|p| p["value"].as_f64().unwrap())
        .collect()
}

async fn metrics(d: &Daemon, id: &str, query: &str) -> Value {
    let (s, v) = d
        .get(&format!("/api/v1/sandboxes/{id}/metrics?{query}"))
        .await;
    assert_eq!(s, 200, "{v}");
    v["data"].clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_busy_sandbox_shows_in_its_metrics() {
    // Networked, so the egress counters give network bytes too.
    let d = common::networked(
        "127.0.0.1:1",
        &["--metrics-interval".to_string(), "1".to_string()],
    )
    .await;
    let id = d.create(json!({})).await;
    // 5 MB in the workspace, committed (btrfs counts a qgroup's bytes at
    // each commit).
    d.sh(
        &id,
        "head -c 5000000 /dev/urandom > /workspace/blob && sync",
    )
    .await;
    // 120 MiB written (so charged) and held while a loop burns CPU.
    let burner = "import time\nb = b'x' * (120 << 20)\nend = time.time() + 40\nwhile time.time() < end: pass\n";
    let (s, v) = d
        .post(
            &format!("/api/v1/sandboxes/{id}/contexts"),
            json!({"type": "cmd", "cmd": {"command": ["python3", "-c", burner]}}),
        )
        .await;
    assert_eq!(s, 201, "{v}");

    let wanted = "metrics=sandbox.cpu.time,sandbox.memory.usage,sandbox.process.count,sandbox.cpu.usage,sandbox.rootfs.writable.usage,sandbox.network.io&statistic=maximum";
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut first_cpu = None;
    let data = loop {
        let data = metrics(&d, &id, wanted).await;
        let cpu = values(&data, "sandbox.cpu.time");
        let first = *first_cpu.get_or_insert(cpu.last().copied().unwrap_or(0.0));
        let rose = cpu.last().is_some_and(|now| now - first >= 2.0);
        let memory = values(&data, "sandbox.memory.usage");
        if rose && memory.iter().any(|m| *m >= (100 << 20) as f64) {
            break data;
        }
        assert!(
            Instant::now() < deadline,
            "CPU time never rose or memory never reached 100 MiB: {data}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    assert!(data["step_seconds"].as_i64().unwrap() >= 15, "{data}");
    assert_eq!(data["freshness"]["status"], "fresh", "{data}");
    assert!(
        values(&data, "sandbox.process.count")
            .iter()
            .any(|p| *p > 1.0),
        "{data}"
    );
    assert!(
        values(&data, "sandbox.cpu.usage").iter().any(|c| *c > 0.2),
        "a core busy: {data}"
    );
    assert!(
        values(&data, "sandbox.rootfs.writable.usage")
            .iter()
            .any(|b| *b >= 5e6),
        "{data}"
    );
    let net: Vec<&Value> = data["series"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["metric"] == "sandbox.network.io")
        .collect();
    let directions: Vec<&Value> = net.iter().map(|s| &s["dimensions"]["direction"]).collect();
    assert_eq!(
        directions,
        [&json!("transmit"), &json!("receive")],
        "{data}"
    );
    assert_eq!(net[0]["unit"], "bytes", "maximum of a counter: its total");
    // The defaults: CPU and memory utilization and network I/O, the
    // counters as rates.
    let data = metrics(&d, &id, "").await;
    let units: Vec<(&str, &str)> = data["series"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["metric"].as_str().unwrap(), s["unit"].as_str().unwrap()))
        .collect();
    assert_eq!(
        units,
        [
            ("sandbox.cpu.utilization", "ratio"),
            ("sandbox.memory.utilization", "ratio"),
            ("sandbox.network.io", "bytes_per_second"),
            ("sandbox.network.io", "bytes_per_second"),
        ]
    );

    // The catalog.
    let (s, v) = d
        .get(&format!("/api/v1/sandboxes/{id}/metrics/catalog"))
        .await;
    assert_eq!(s, 200, "{v}");
    let catalog: Vec<(&str, &str)> = v["data"]["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["name"].as_str().unwrap(), m["unit"].as_str().unwrap()))
        .collect();
    for entry in [
        ("sandbox.cpu.time", "seconds"),
        ("sandbox.cpu.usage", "cores"),
        ("sandbox.memory.usage", "bytes"),
        ("sandbox.process.count", "count"),
        ("sandbox.rootfs.writable.usage", "bytes"),
        ("sandbox.network.io", "bytes"),
    ] {
        assert!(catalog.contains(&entry), "{entry:?} in {v}");
    }

    // Bad queries name their field.
    for (query, field) in [
        ("step_seconds=0", "step_seconds"),
        ("max_points=5000", "max_points"),
        ("metrics=sandbox.cpu,sandbox.cpu.time", "metrics"),
        ("start_time=yesterday", "start_time"),
        (
            "end_time=2026-01-01T00:00:00Z&start_time=2026-02-01T00:00:00Z",
            "start_time",
        ),
        ("statistic=median", "statistic"),
        ("statistic=rate&metrics=sandbox.memory.usage", "statistic"),
    ] {
        let (s, v) = d
            .get(&format!("/api/v1/sandboxes/{id}/metrics?{query}"))
            .await;
        assert_names(s, &v, field);
    }

    // Another team sees neither the series nor the gauges.
    let (s, team) = d.post("/teams", json!({"name": "other"})).await;
    assert_eq!(s, 201, "{team}");
    let (s, key) = d
        .post(
            "/api-keys",
            json!({"name": "other", "roles": ["developer"], "team_id": team["data"]["id"]}),
        )
        .await;
    assert_eq!(s, 201, "{key}");
    let other = key["data"]["key"].as_str().unwrap();
    for path in ["metrics", "metrics/catalog"] {
        let r = d
            .http
            .get(format!("{}/api/v1/sandboxes/{id}/{path}", d.url))
            .bearer_auth(other)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 404, "{path}");
    }
    assert!(!d.metrics_as(other).await.contains(&id));

    // The Prometheus page shows the sandbox's gauges.
    let page = d.metrics().await;
    let gauge = |page: &str, name: &str| {
        page.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}{{sandbox=\"{id}\"}} ")))
            .map(|v| v.parse::<f64>().unwrap())
    };
    assert!(
        gauge(&page, "sandstone_sandbox_memory_bytes").unwrap() >= (100 << 20) as f64,
        "{page}"
    );
    assert!(
        gauge(&page, "sandstone_sandbox_cpu_seconds_total").unwrap() > 1.0,
        "{page}"
    );
    assert!(
        gauge(&page, "sandstone_sandbox_pids").unwrap() > 1.0,
        "{page}"
    );
    assert!(
        gauge(&page, "sandstone_sandbox_disk_bytes").is_some(),
        "{page}"
    );

    // Paused: the history stays, no new points come, the gauges go.
    let (s, v) = d
        .post(&format!("/api/v1/sandboxes/{id}/pause"), json!({}))
        .await;
    assert_eq!(s, 200, "{v}");
    let newest = |data: &Value| data["freshness"]["newest_observed_at"].clone();
    // A round the sampler began before the pause may land after it (a
    // round is slow on a loaded machine): the claim is that the points then
    // stop, so some window of 3 s sees none (four tries).
    let mut after = Value::Null;
    let mut quiet = false;
    // The maximum: a short run's history may be one step, whose average
    // takes in the samples from before the 120 MiB were written.
    let held = "metrics=sandbox.memory.usage&statistic=maximum";
    for _ in 0..4 {
        let before = metrics(&d, &id, held).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        after = metrics(&d, &id, held).await;
        if newest(&before) == newest(&after) {
            quiet = true;
            break;
        }
    }
    if !quiet {
        let (_, row) = d.get(&format!("/api/v1/sandboxes/{id}")).await;
        panic!(
            "points kept coming while paused: {after}\nthe sandbox: {row}\nthe daemon's log:\n{}",
            d.log()
        );
    }
    assert!(
        values(&after, "sandbox.memory.usage")
            .iter()
            .any(|m| *m >= (100 << 20) as f64),
        "{after}"
    );
    assert!(gauge(&d.metrics().await, "sandstone_sandbox_memory_bytes").is_none());
}

/// The lines of a log answer.
fn messages(v: &Value) -> Vec<String> {
    v["data"]["logs"]
        .as_array()
        .unwrap_or_else(|| panic!("{v}"))
        .iter()
        .map(|e| e["message"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn output_is_logged_bounded_and_outlives_pauses_and_restarts() {
    const BUDGET: u64 = 4 << 20;
    let mut d = Daemon::set_up(&[], "").await;
    d.serve_args = vec!["--log-retention-bytes".into(), BUDGET.to_string()];
    d.spawn().await;
    let id = d.create(json!({})).await;
    let logs = |q: &str| format!("/api/v1/sandboxes/{id}/observability/logs?{q}");

    // 100 MB of output: the log keeps the newest within its budget.
    let print = "import sys\nw = sys.stdout.buffer.write\n\
                 for i in range(1_000_000):\n    w(b'line %07d ' % i + b'x' * 87 + b'\\n')\n\
                 print('the end', flush=True)";
    let run = d.run(&id, &["python3", "-c", print]).await;
    assert_eq!(run["exit_code"], 0, "{run}");
    let ctx = run["id"].as_str().unwrap().to_string();
    let dir = d.pool_root().join("sandboxes").join(&id).join("logs");
    let on_disk: u64 = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert!(
        on_disk <= BUDGET && on_disk > BUDGET / 2,
        "{on_disk} bytes of log"
    );
    // On the btrfs pool the log is written in place (no copy-on-write).
    if d.data.path().join("pool").exists() {
        let attrs = std::process::Command::new("lsattr")
            .arg("-d")
            .arg(&dir)
            .output()
            .unwrap();
        let flags = String::from_utf8_lossy(&attrs.stdout);
        assert!(
            flags
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .contains('C'),
            "{flags}"
        );
    }
    let (s, v) = d.get(&logs("limit=3")).await;
    assert_eq!(s, 200, "{v}");
    let want = [
        format!("line 0999999 {}", "x".repeat(87)),
        "the end".to_string(),
        "[exited: 0]".to_string(),
    ];
    assert_eq!(messages(&v), want);
    let last = &v["data"]["logs"][2];
    assert_eq!(
        (&last["context_id"], &last["attributes"]["exit_code"]),
        (&json!(ctx), &json!(0)),
        "{v}"
    );
    assert_eq!(v["data"]["logs"][1]["stream"], "stdout", "{v}");

    // Nothing in the sandbox reaches the log: PID 1 holds the only handle.
    let probe = d
        .sh(
            &id,
            "for f in /proc/1/fd/* /proc/1/cwd /proc/1/root; do ls -a \"$f\"/ 2>/dev/null; done; echo probed",
        )
        .await;
    let seen = probe["stdout"].as_str().unwrap_or_default();
    assert!(seen.contains("probed") && !seen.contains(".log"), "{probe}");

    // Filters, and bad queries named.
    d.sh(&id, "echo to-stderr >&2").await;
    let (_, v) = d.get(&logs("stream=stderr&limit=5")).await;
    assert_eq!(messages(&v), ["to-stderr"]);
    let (_, v) = d.get(&logs(&format!("context_id={ctx}&limit=1"))).await;
    assert_eq!(messages(&v), ["[exited: 0]"]);
    for (q, field) in [
        ("cursor=zzz", "cursor"),
        ("stream=both", "stream"),
        ("limit=0", "limit"),
        ("start_time=2026-02-30T00:00:00Z", "start_time"),
        ("watch=true&end_time=2026-01-01T00:00:00Z", "end_time"),
    ] {
        let (s, v) = d.get(&logs(q)).await;
        assert_eq!(s, 400, "{q}: {v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains(field),
            "{v}"
        );
    }

    // Paging forward from a cursor reads what came after it, once.
    let (_, v) = d.get(&logs("limit=2")).await;
    let next = v["data"]["next_cursor"].as_str().unwrap().to_string();
    d.sh(&id, "echo after-the-cursor").await;
    let (_, v) = d.get(&logs(&format!("cursor={next}&limit=10"))).await;
    let after = messages(&v);
    assert!(after.contains(&"after-the-cursor".to_string()), "{after:?}");
    assert!(!after.contains(&"to-stderr".to_string()), "{after:?}");

    // Paused, and after the daemon was killed: the same log.
    let tail = |v: &Value| messages(v).last().cloned();
    let (_, before) = d.get(&logs("limit=5")).await;
    assert_eq!(
        d.post(&format!("/api/v1/sandboxes/{id}/pause"), json!({}))
            .await
            .0,
        200
    );
    let (_, paused) = d.get(&logs("limit=5")).await;
    assert_eq!(messages(&paused), messages(&before));
    d.kill();
    d.spawn().await;
    let (_, restarted) = d.get(&logs("limit=5")).await;
    assert_eq!(messages(&restarted), messages(&before));

    // A watch follows what a resumed sandbox prints next.
    let resp = d
        .http
        .get(format!("{}{}", d.url, logs("watch=true")))
        .bearer_auth(&d.token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        d.post(&format!("/api/v1/sandboxes/{id}/resume"), json!({}))
            .await
            .0,
        200
    );
    d.sh(&id, "echo watched-line").await;
    let mut stream = resp.bytes_stream();
    let mut seen = String::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !seen.contains("watched-line") {
        use futures_util::StreamExt;
        let left = deadline.saturating_duration_since(Instant::now());
        let chunk = tokio::time::timeout(left, stream.next())
            .await
            .unwrap_or_else(|_| panic!("no watched line in time: {seen}"));
        seen.push_str(&String::from_utf8_lossy(&chunk.unwrap().unwrap()));
    }
    let line: Value =
        serde_json::from_str(seen.lines().find(|l| l.contains("watched-line")).unwrap()).unwrap();
    assert_eq!(line["type"], "log", "{line}");
    assert!(seen.contains("\"type\":\"watermark\""), "{seen}");
    assert_ne!(tail(&restarted), None);

    // The CLI prints the latest lines.
    let out = common::cli(&d, &["logs", &id, "--tail", "2"], b"");
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("| watched-line"), "{text}");
}
