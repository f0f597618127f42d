//! The metadata database behind `serve`: a URL it cannot use stops the
//! start with a reason that names the database and never its password, and
//! on PostgreSQL everything the daemon stores survives a restart with no
//! database file in the data directory.

// Test code: an unexpected failure is the test failing, so unwrap is the point.
#![allow(clippy::unwrap_used)]

mod common;

use common::agents::{FakeModel, environment, events, idle_with, say, session_on, v1};
use common::{Daemon, sandstone_bin, text};
use reqwest::Method;
use sandstone_db::testing::ENV;
use serde_json::json;
use std::time::{Duration, Instant};

const PASSWORD: &str = "hunter2-db-password";

/// Runs `serve` with `url` (as the flag, or as the variable when `env`) on
/// a fresh data dir and returns its stderr once it exits, which it must do
/// on its own and with a failure.
fn serve_fails(url: &str, env: bool) -> String {
    common::require_root();
    let data = tempfile::tempdir_in("/var/tmp").unwrap();
    let mut cmd = std::process::Command::new(sandstone_bin());
    cmd.args(["serve", "--no-network", "--listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(data.path())
        .env("SANDSTONE_INIT", common::init_bin())
        .env_remove("SANDSTONE_DATABASE_URL")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    if env {
        cmd.env("SANDSTONE_DATABASE_URL", url);
    } else {
        cmd.args(["--database-url", url]);
    }
    let mut child = cmd.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("serve with {url:?} did not stop");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = child.wait_with_output().unwrap();
    let said = text(&out.stderr);
    assert!(
        !status.success(),
        "serve with a bad database started: {said}"
    );
    assert!(!said.contains(PASSWORD), "the password was shown: {said}");
    assert!(
        !data.path().join("sandstone.db").exists(),
        "fell back to SQLite"
    );
    said
}

#[test]
fn serve_refuses_a_database_it_cannot_use_without_showing_the_password() {
    // Nothing listens on a port just freed.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let refused = format!("postgres://sandstone:{PASSWORD}@127.0.0.1:{port}/meta");
    for env in [false, true] {
        let said = serve_fails(&refused, env);
        let target = format!("database postgres://sandstone@127.0.0.1:{port}/meta: cannot connect");
        assert!(said.contains(&target), "{said}");
        assert!(said.contains("refused"), "{said}");
    }
    for (bad, says) in [
        (
            format!("mysql://sandstone:{PASSWORD}@127.0.0.1/meta"),
            "must start with postgres://",
        ),
        (
            format!("postgres://sandstone:{PASSWORD}@127.0.0.1:70000/meta"),
            "invalid port",
        ),
    ] {
        let said = serve_fails(&bad, false);
        assert!(said.contains("--database-url"), "{said}");
        assert!(said.contains(says), "{said}");
    }
    let Ok(admin) = std::env::var(ENV) else {
        eprintln!("skipped the wrong password: {ENV} is not set (CI sets it)");
        return;
    };
    let mut wrong = url::Url::parse(&admin).unwrap();
    wrong.set_password(Some(PASSWORD)).unwrap();
    let said = serve_fails(wrong.as_str(), false);
    assert!(said.contains("password authentication failed"), "{said}");
    let user = wrong.username();
    assert!(
        said.contains(&format!("database postgres://{user}@")),
        "{said}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_daemon_on_postgresql_keeps_everything_across_a_restart() {
    if std::env::var(ENV).is_err() {
        eprintln!("skipped: {ENV} is not set (CI sets it)");
        return;
    }
    let model = FakeModel::start();
    let mut d = common::agents::daemon(&model, 30).await;
    assert!(d.on_postgres());
    let id = d.create(json!({"metadata": {"team": "db"}})).await;
    d.sh(&id, "echo kept > /workspace/f").await;
    let cred = json!({"name": "github", "resolverKind": "static_headers",
        "spec": {"staticHeaders": {"values": {"Authorization": "Bearer x"}}}});
    assert_eq!(d.post("/api/v1/credential-sources", cred).await.0, 201);
    let (env, _) = environment(&d).await;
    let sid = session_on(&d, &env, "flaky", json!([])).await;
    say(&d, &sid, "hello").await;
    let before = idle_with(&d, &sid, "end_turn").await;
    // The stored session (its live duration aside).
    let session = async |d: &Daemon| {
        let path = format!("/sessions/{sid}");
        let mut v = v1(d, &d.token, Method::GET, &path, None).await.1;
        v.as_object_mut().unwrap().remove("stats");
        v
    };
    let session_before = session(&d).await;
    // Found through the label index (a trigger on PostgreSQL).
    let labeled = async |d: &Daemon| {
        let (_, v) = d.get("/api/v1/sandboxes?metadata.team=db").await;
        let fields = ["id", "status", "runtime_generation", "metadata"];
        let list = v["data"]["sandboxes"].as_array().unwrap().clone();
        list.iter()
            .map(|s| fields.map(|f| s[f].clone()))
            .collect::<Vec<_>>()
    };
    let sandboxes_before = labeled(&d).await;
    assert_eq!(sandboxes_before.len(), 1);
    assert!(
        !d.data.path().join("sandstone.db").exists(),
        "a database file in the data dir"
    );
    let stored = common::text(&d.database_bytes());
    assert!(stored.contains(&id) && stored.contains(&sid), "{stored}");

    d.stop();
    d.spawn().await;
    assert_eq!(labeled(&d).await, sandboxes_before);
    assert_eq!(d.sh(&id, "cat /workspace/f").await["stdout"], "kept\n");
    let (s, v) = d.get("/api/v1/credential-sources/github").await;
    assert_eq!(
        (s, v["data"]["currentVersion"].as_i64()),
        (200, Some(1)),
        "{v}"
    );
    assert_eq!(session(&d).await, session_before);
    assert_eq!(events(&d, &sid).await, before);
    let agent = session_before["agent"]["id"].as_str().unwrap();
    let (s, v, _) = v1(&d, &d.token, Method::GET, &format!("/agents/{agent}"), None).await;
    assert_eq!((s, v["id"].as_str()), (200, Some(agent)), "{v}");
}
