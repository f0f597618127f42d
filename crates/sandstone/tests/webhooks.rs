//! Per-sandbox webhooks (`config.webhook`) against a real receiver: a
//! stdlib Python server on loopback (tests/webhooks/receiver.py) that
//! records what it gets and answers with the status the test sets. The
//! events are checked with the Sandbox0 SDK's own signature helper
//! (tests/webhooks/verify.py, run with `SANDSTONE_SDK_PYTHON`).

// Test code: an unexpected failure is the test failing, so unwrap is the point.
#![allow(clippy::unwrap_used)]

mod common;

use base64::Engine as _;
use common::{Daemon, run_python, sdk_python};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The receiver process and what it recorded.
struct Receiver {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
}

impl Receiver {
    async fn start() -> Receiver {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut r = Receiver {
            child: None,
            port,
            dir: tempfile::tempdir().unwrap(),
        };
        r.up().await;
        r
    }

    /// (Re)starts the server on its port.
    async fn up(&mut self) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/webhooks/receiver.py");
        let python = std::env::var("SANDSTONE_SDK_PYTHON").unwrap_or_else(|_| "python3".into());
        let mut child = Command::new(python)
            .arg(script)
            .arg(self.port.to_string())
            .arg(self.dir.path())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        // It prints once listening.
        let mut line = String::new();
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        std::io::BufRead::read_line(&mut out, &mut line).unwrap();
        assert_eq!(line.trim(), "listening");
        self.child = Some(child);
    }

    fn down(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hook", self.port)
    }

    /// What it answers from now on: a status, or `hang`.
    fn answer(&self, mode: &str) {
        std::fs::write(self.dir.path().join("status"), mode).unwrap();
    }

    fn requests_file(&self) -> PathBuf {
        self.dir.path().join("requests.jsonl")
    }

    /// Every request so far: (the record, the body parsed).
    fn requests(&self) -> Vec<(Value, Value)> {
        let text = std::fs::read_to_string(self.requests_file()).unwrap_or_default();
        text.lines()
            .map(|l| {
                let r: Value = serde_json::from_str(l).unwrap();
                let body = base64::engine::general_purpose::STANDARD
                    .decode(r["body"].as_str().unwrap())
                    .unwrap();
                (r, serde_json::from_slice(&body).unwrap())
            })
            .collect()
    }

    /// Waits (at most 20 s) for an event that `pred` accepts, which the
    /// receiver answered with `answered`.
    async fn wait_for(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some((_, e)) = self
                .requests()
                .into_iter()
                .find(|(r, e)| r["answered"] == "204" && pred(e))
            {
                return e;
            }
            assert!(
                Instant::now() < deadline,
                "no {what} delivered; got {:?}",
                self.requests()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.down();
    }
}

/// A daemon on the plain-directory pool whose deliveries retry every 200 ms
/// (doubling) and give up on an attempt after a second. Its operator
/// allows webhooks to the receiver's loopback address when `loopback`.
async fn daemon_with(loopback: bool) -> Daemon {
    let mut d = Daemon::set_up(&["--no-pool"], "").await;
    d.serve_args = [
        "--webhook-retry-base-ms",
        "200",
        "--webhook-timeout-ms",
        "1000",
    ]
    .map(String::from)
    .to_vec();
    if loopback {
        let rules = d.data.path().join("operator.json");
        std::fs::write(&rules, r#"{"allow": ["127.0.0.1/32"]}"#).unwrap();
        d.serve_args
            .extend(["--egress-config".into(), rules.display().to_string()]);
    }
    // Debug logging: the secret must not show up even there.
    d.log_level = "debug".into();
    d.spawn().await;
    d
}

async fn daemon() -> Daemon {
    daemon_with(true).await
}

fn of_type<'a>(t: &'a str, id: &'a str) -> impl Fn(&Value) -> bool + 'a {
    move |e| e["event_type"] == t && e["sandbox_id"] == id
}

/// The delivery of the `event_type` event of `id`, as the API lists it.
async fn delivery(d: &Daemon, id: &str, event_type: &str) -> Option<Value> {
    let (s, v) = d
        .get(&format!("/api/v1/sandboxes/{id}/webhook/deliveries"))
        .await;
    assert_eq!(s, 200, "{v}");
    v["data"]["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["event_type"] == event_type)
        .cloned()
}

/// Waits (at most 20 s) until the delivery of `event_type` satisfies `pred`.
async fn wait_delivery(
    d: &Daemon,
    id: &str,
    event_type: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got = delivery(d, id, event_type).await;
        if let Some(x) = got.as_ref().filter(|x| pred(x)) {
            return x.clone();
        }
        assert!(
            Instant::now() < deadline,
            "{event_type} delivery stayed {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn signed_events_reach_the_receiver_and_the_sdk_verifies_them() {
    tokio::time::timeout(Duration::from_secs(240), async {
        let receiver = Receiver::start().await;
        let d = daemon().await;
        let secret = format!("whsec-{}", sandstone_api::random_hex(12));

        // Refused by name.
        for (hook, field) in [
            (json!({"url": "ftp://127.0.0.1/x"}), "config.webhook.url"),
            (
                json!({"url": "http://u:p@127.0.0.1/x"}),
                "config.webhook.url",
            ),
            (
                json!({"url": receiver.url(), "watch_dir": "rel/dir"}),
                "config.webhook.watch_dir",
            ),
            (json!({"url": receiver.url(), "bogus": 1}), "bogus"),
        ] {
            d.rejects(
                "/api/v1/sandboxes",
                json!({"template": "host", "config": {"webhook": hook}}),
                field,
            )
            .await;
        }

        let id = d
            .create(json!({"webhook": {
                "url": receiver.url(), "secret": secret, "watch_dir": "/workspace/watched",
            }}))
            .await;
        let ready = receiver
            .wait_for("sandbox.ready", of_type("sandbox.ready", &id))
            .await;
        assert_eq!(ready["payload"]["status"], "running");
        assert!(ready["event_id"].as_str().unwrap().starts_with("evt_"));
        let (s, shown) = d.get(&format!("/api/v1/sandboxes/{id}")).await;
        assert_eq!(s, 200);
        assert_eq!(shown["data"]["config"]["webhook"]["url"], receiver.url());
        assert_eq!(
            shown["data"]["config"]["webhook"]["watch_dir"],
            "/workspace/watched"
        );

        // A file written under watch_dir (the watch starts with the runtime,
        // a moment after the claim answered: write until it is seen).
        let path = format!("/api/v1/sandboxes/{id}/files?path=/workspace/watched/a.txt");
        let changed = |e: &Value| {
            e["event_type"] == "file.modified" && e["payload"]["path"] == "/workspace/watched/a.txt"
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !receiver.requests().iter().any(|(_, e)| changed(e)) {
            assert!(
                Instant::now() < deadline,
                "no file.modified: {:?}",
                receiver.requests()
            );
            let resp = d
                .http
                .post(format!("{}{path}", d.url))
                .bearer_auth(&d.token)
                .body("hello")
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200);
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let file = receiver.wait_for("file.modified", changed).await;
        assert!(
            ["create", "write"].contains(&file["payload"]["event_type"].as_str().unwrap()),
            "{file}"
        );

        // Processes' ends: status 0 is `process.exited`, any other
        // `process.crashed`, each naming the context.
        let ok = d.run(&id, &["true"]).await;
        let failed = d.run(&id, &["sh", "-c", "exit 3"]).await;
        for (process, event_type, code) in
            [(&ok, "process.exited", 0), (&failed, "process.crashed", 3)]
        {
            let ended = receiver
                .wait_for(event_type, |e| {
                    e["event_type"] == event_type && e["payload"]["process_id"] == process["id"]
                })
                .await;
            assert_eq!(ended["payload"]["exit_code"], code, "{ended}");
            assert_eq!(ended["payload"]["runtime_generation"], 1, "{ended}");
            assert_eq!(ended["sandbox_id"], id.as_str());
        }

        let (s, v) = d
            .post(&format!("/api/v1/sandboxes/{id}/pause"), json!({}))
            .await;
        assert_eq!(s, 200, "{v}");
        let paused = receiver
            .wait_for("sandbox.paused", of_type("sandbox.paused", &id))
            .await;
        assert_eq!(paused["payload"]["status"], "paused");
        assert_eq!(paused["team_id"], "default");
        let (s, v) = d
            .post(&format!("/api/v1/sandboxes/{id}/resume"), json!({}))
            .await;
        assert_eq!(s, 200, "{v}");
        receiver
            .wait_for("sandbox.resumed", of_type("sandbox.resumed", &id))
            .await;

        // Every request: JSON, signed, a unique event id.
        let requests = receiver.requests();
        let mut ids: Vec<&str> = requests
            .iter()
            .map(|(_, e)| e["event_id"].as_str().unwrap())
            .collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), requests.len(), "event ids repeat: {requests:?}");
        for (r, _) in &requests {
            assert_eq!(r["content_type"], "application/json");
            assert_eq!(r["path"], "/hook");
        }

        // The deliveries API shows them delivered, on the first attempt.
        let listed = wait_delivery(&d, &id, "sandbox.paused", |x| x["state"] == "delivered").await;
        assert_eq!(listed["attempts"], 1);
        assert_eq!(listed["last_status"], 204);
        assert_eq!(listed["event_id"], paused["event_id"]);
        assert!(listed["delivered_at"].is_string());

        if let Some(python) = sdk_python() {
            let requests = receiver.requests_file();
            let (stdout, _) = run_python(
                &python,
                "webhooks/verify.py",
                &[
                    ("SECRET", &secret),
                    ("REQUESTS", requests.to_str().unwrap()),
                ],
            )
            .await;
            assert!(stdout.contains("verified"), "{stdout}");
        }

        // A fork has its parent's receiver and secret.
        let (s, v) = d
            .post(&format!("/api/v1/sandboxes/{id}/fork"), json!({}))
            .await;
        assert_eq!(s, 201, "{v}");
        let fork = v["data"]["sandbox"]["id"].as_str().unwrap().to_string();
        let (s, v) = d
            .post(&format!("/api/v1/sandboxes/{fork}/resume"), json!({}))
            .await;
        assert_eq!(s, 200, "{v}");
        receiver
            .wait_for(
                "the fork's sandbox.resumed",
                of_type("sandbox.resumed", &fork),
            )
            .await;

        let (s, _) = d.delete(&format!("/api/v1/sandboxes/{id}")).await;
        assert!(s == 200 || s == 202);
        receiver
            .wait_for("sandbox.deleted", of_type("sandbox.deleted", &id))
            .await;

        if let Some(python) = sdk_python() {
            let requests = receiver.requests_file();
            run_python(
                &python,
                "webhooks/verify.py",
                &[
                    ("SECRET", &secret),
                    ("REQUESTS", requests.to_str().unwrap()),
                ],
            )
            .await;
        }

        // The secret is nowhere a caller or an operator reads.
        let mut answers = String::new();
        for path in [
            format!("/api/v1/sandboxes/{fork}"),
            "/api/v1/sandboxes".to_string(),
            format!("/api/v1/sandboxes/{fork}/webhook/deliveries"),
        ] {
            let (s, v) = d.get(&path).await;
            assert_eq!(s, 200, "{path}: {v}");
            answers.push_str(&v.to_string());
        }
        assert!(!answers.contains(&secret), "{answers}");
        assert!(answers.contains(&receiver.url()));
        let log = d.log();
        assert!(!log.contains(&secret), "the secret is in the daemon's log");
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread")]
async fn failing_and_down_receivers_are_retried_across_a_restart() {
    tokio::time::timeout(Duration::from_secs(240), async {
        let mut receiver = Receiver::start().await;
        let mut d = daemon().await;
        receiver.answer("500");
        let id = d
            .create(json!({"webhook": {"url": receiver.url(), "secret": "s3cret-for-retries"}}))
            .await;

        // 500: retried with backoff, then delivered once it answers 204.
        let failing = wait_delivery(&d, &id, "sandbox.ready", |x| {
            x["attempts"].as_i64().unwrap() >= 2
        })
        .await;
        assert_eq!(failing["state"], "pending");
        assert_eq!(failing["last_status"], 500);
        assert!(failing["next_attempt_at"].is_string());
        assert!(
            failing["last_error"].as_str().unwrap().contains("HTTP 500"),
            "{failing}"
        );
        receiver.answer("204");
        let done = wait_delivery(&d, &id, "sandbox.ready", |x| x["state"] == "delivered").await;
        assert!(done["attempts"].as_i64().unwrap() >= 3, "{done}");
        assert_eq!(done["last_status"], 204);
        assert!(done["last_error"].is_null());
        let ready = receiver
            .wait_for("sandbox.ready", of_type("sandbox.ready", &id))
            .await;
        // Every retry carried the same event.
        let same: Vec<_> = receiver
            .requests()
            .into_iter()
            .filter(|(_, e)| e["event_id"] == ready["event_id"])
            .collect();
        assert!(same.len() >= 3, "{same:?}");
        assert!(same.iter().all(|(r, _)| r["body"] == same[0].0["body"]));

        // A receiver that hangs: the attempt times out, the lifecycle does
        // not wait for it.
        receiver.answer("hang");
        let started = Instant::now();
        let (s, v) = d
            .post(&format!("/api/v1/sandboxes/{id}/pause"), json!({}))
            .await;
        assert_eq!(s, 200, "{v}");
        let (s, v) = d
            .post(&format!("/api/v1/sandboxes/{id}/resume"), json!({}))
            .await;
        assert_eq!(s, 200, "{v}");
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "{:?}",
            started.elapsed()
        );
        let slow = wait_delivery(&d, &id, "sandbox.paused", |x| {
            x["attempts"].as_i64().unwrap() >= 1 && x["last_error"].is_string()
        })
        .await;
        assert_eq!(slow["state"], "pending", "{slow}");

        // Down, and the daemon restarted while the events are pending: the
        // new daemon delivers them once the receiver is back.
        receiver.down();
        let (s, v) = d
            .post(&format!("/api/v1/sandboxes/{id}/pause"), json!({}))
            .await;
        assert_eq!(s, 200, "{v}");
        let down = wait_delivery(&d, &id, "sandbox.paused", |x| {
            x["state"] == "pending"
                && x["last_status"].is_null()
                && x["attempts"].as_i64().unwrap() >= 1
        })
        .await;
        assert!(down["last_error"].is_string(), "{down}");
        d.stop();
        receiver.answer("204");
        receiver.up().await;
        d.spawn().await;
        for t in ["sandbox.paused", "sandbox.resumed"] {
            let x = wait_delivery(&d, &id, t, |x| x["state"] == "delivered").await;
            assert!(x["attempts"].as_i64().unwrap() >= 2, "{x}");
        }
        let paused: Vec<_> = receiver
            .requests()
            .into_iter()
            .filter(|(r, e)| r["answered"] == "204" && of_type("sandbox.paused", &id)(e))
            .collect();
        assert!(!paused.is_empty());
        assert!(!d.log().contains("s3cret-for-retries"));
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread")]
async fn webhooks_never_reach_the_hosts_own_or_internal_addresses() {
    tokio::time::timeout(Duration::from_secs(120), async {
        let receiver = Receiver::start().await;
        // No operator rule lets webhooks reach loopback here.
        let d = daemon_with(false).await;
        let port = receiver.url().split(':').nth(2).unwrap().to_string();
        for url in [
            receiver.url(),
            format!("http://localhost:{port}"),
            "http://169.254.169.254/latest/meta-data".to_string(),
        ] {
            let id = d
                .create(json!({"webhook": {"url": url, "secret": "s3cret-denied"}}))
                .await;
            let x = wait_delivery(&d, &id, "sandbox.ready", |x| x["state"] == "failed").await;
            let error = x["last_error"].as_str().unwrap();
            assert!(error.contains("egress rules deny"), "{x}");
            // The listing says what kind of failure, not what the network
            // looks like from the daemon.
            assert!(
                !error.contains("127.0.0.1") && !error.contains("169.254"),
                "{x}"
            );
            assert_eq!(x["attempts"], 1, "a denial is not retried: {x}");
        }
        assert!(receiver.requests().is_empty(), "{:?}", receiver.requests());
        let log = d.log();
        assert!(
            log.contains("webhook to a denied address not sent"),
            "{log}"
        );
        assert!(!log.contains("s3cret-denied"));
    })
    .await
    .expect("bounded");
}
