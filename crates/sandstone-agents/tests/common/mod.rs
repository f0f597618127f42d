//! The control plane in-process for tests that need no root: the `/v1`
//! router over a scratch store (SQLite in a temporary directory, or a fresh
//! PostgreSQL database when `SANDSTONE_TEST_DATABASE_URL` is set), on a
//! loopback port,
//! with the scripted model (tests/fake_model/server.py). `kill` drops the
//! plane's runtime with every task on it, as a killed daemon would stop;
//! `spawn` starts it again from the same store.

#![allow(dead_code)]

use reqwest::Method;
use sandstone_agents::{Agents, ApiKeyCheck, Config};
use sandstone_db::Location;
use sandstone_db::testing::Scratch;
use serde_json::{Value, json};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const BETA: &str = "managed-agents-2026-04-01";

/// The control plane as the e2e tests' daemon shows it: `url`, `token`,
/// `http`, `kill` and `spawn`.
pub struct Plane {
    pub url: String,
    pub token: String,
    pub http: reqwest::Client,
    /// Where the plane keeps its state, across `kill` and `spawn`.
    pub db: Scratch,
    config: Config,
    port: u16,
    running: Option<(
        std::thread::JoinHandle<()>,
        tokio::sync::oneshot::Sender<()>,
    )>,
}

impl Plane {
    /// The plane whose agent loop calls `model`, with `lease_ttl`-second
    /// leases.
    pub async fn start(model: &FakeModel, lease_ttl: u64) -> Plane {
        let mut p = Plane {
            url: String::new(),
            token: "sk-sst-test-api-key".into(),
            http: reqwest::Client::new(),
            db: Scratch::new().await,
            config: Config {
                model_base_url: model.url.clone(),
                model_api_key: Some(MODEL_KEY.into()),
                lease_ttl: Duration::from_secs(lease_ttl),
                max_tokens: 8192,
            },
            port: 0,
            running: None,
        };
        p.spawn().await;
        p
    }

    /// Serves the plane on its own runtime and thread, on the same port
    /// as before (a new one the first time).
    pub async fn spawn(&mut self) {
        assert!(self.running.is_none(), "already running");
        let location: Location = self.db.location();
        let (config, token, port) = (self.config.clone(), self.token.clone(), self.port);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (ready, bound) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let store = location.open().await.unwrap();
                let api_keys: ApiKeyCheck = Arc::new(move |t: String| {
                    let ok = t == token;
                    Box::pin(async move { ok })
                });
                let agents = Agents::start(store, config, api_keys).await.unwrap();
                let app = axum::Router::new().nest("/v1", sandstone_agents::router(agents));
                let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
                    .await
                    .unwrap();
                ready.send(listener.local_addr().unwrap().port()).unwrap();
                tokio::select! {
                    r = axum::serve(listener, app) => r.unwrap(),
                    _ = stopped => {}
                }
            });
            // Dropping the runtime cancels every task on it: turn drivers,
            // lease expiry, open streams.
            drop(rt);
        });
        let port = tokio::task::spawn_blocking(move || bound.recv().unwrap())
            .await
            .unwrap();
        self.port = port;
        self.url = format!("http://127.0.0.1:{port}");
        self.running = Some((thread, stop));
    }

    /// Stops the plane at once, whatever it was doing.
    pub fn kill(&mut self) {
        if let Some((thread, stop)) = self.running.take() {
            let _ = stop.send(());
            thread.join().unwrap();
        }
    }
}

impl Drop for Plane {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A plane whose agent loop calls the fake model.
pub async fn daemon(model: &FakeModel, lease_ttl: u64) -> Plane {
    Plane::start(model, lease_ttl).await
}

/// The scripted Messages API (tests/fake_model/server.py).
pub struct FakeModel {
    child: Child,
    pub url: String,
}

impl FakeModel {
    pub fn start() -> FakeModel {
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fake_model");
        let mut child = Command::new("python3")
            .args([
                &format!("{root}/server.py"),
                "127.0.0.1",
                "0",
                &format!("{root}/scripts"),
            ])
            .env("FAKE_MODEL_KEY", MODEL_KEY)
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the fake model");
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        let port = line
            .trim()
            .strip_prefix("ready ")
            .expect("ready line")
            .to_string();
        FakeModel {
            child,
            url: format!("http://127.0.0.1:{port}"),
        }
    }
}

impl Drop for FakeModel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The key the fake model requires: the daemon must send it there and
/// nowhere else.
pub const MODEL_KEY: &str = "sk-fake-model-key-3c9e1d";

/// A `/v1` call with `bearer` and the managed-agents beta header.
pub async fn v1(
    d: &Plane,
    bearer: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value, reqwest::header::HeaderMap) {
    call(
        d,
        bearer,
        &format!("other-beta-2025-01-01,{BETA}"),
        method,
        path,
        body,
    )
    .await
}

/// A memory-store call: those take the agent-memory beta instead.
pub async fn mem(
    d: &Plane,
    bearer: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let (s, v, _) = call(d, bearer, "agent-memory-2026-07-22", method, path, body).await;
    (s, v)
}

async fn call(
    d: &Plane,
    bearer: &str,
    beta: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value, reqwest::header::HeaderMap) {
    let mut req = d
        .http
        .request(method, format!("{}/v1{path}", d.url))
        .bearer_auth(bearer)
        .header("anthropic-beta", beta);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.unwrap();
    let (status, headers) = (r.status().as_u16(), r.headers().clone());
    let text = r.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
        headers,
    )
}

pub async fn environment(d: &Plane) -> (String, String) {
    let (s, env, _) = v1(
        d,
        &d.token,
        Method::POST,
        "/environments",
        Some(json!({"name": "test", "config": {"type": "self_hosted"}})),
    )
    .await;
    assert_eq!(s, 200, "{env}");
    let id = env["id"].as_str().unwrap().to_string();
    let (s, key, _) = v1(
        d,
        &d.token,
        Method::POST,
        &format!("/environments/{id}/keys"),
        None,
    )
    .await;
    assert_eq!(s, 200, "{key}");
    (id, key["key"].as_str().unwrap().to_string())
}

/// Polls until `f` holds (bounded at 10 s).
pub async fn eventually(f: impl AsyncFnMut() -> bool) {
    within(Duration::from_secs(10), f).await
}

/// Polls until `f` holds, failing after `limit`.
pub async fn within(limit: Duration, mut f: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f().await {
        assert!(
            Instant::now() < deadline,
            "condition not reached in {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn session_on(d: &Plane, env: &str, script: &str, tools: Value) -> String {
    let (s, agent, _) = v1(
        d,
        &d.token,
        Method::POST,
        "/agents",
        Some(json!({"name": script, "model": format!("scripted-{script}"), "tools": tools})),
    )
    .await;
    assert_eq!(s, 200, "{agent}");
    let (s, session, _) = v1(
        d,
        &d.token,
        Method::POST,
        "/sessions",
        Some(json!({"agent": agent["id"], "environment_id": env})),
    )
    .await;
    assert_eq!(s, 200, "{session}");
    session["id"].as_str().unwrap().to_string()
}

pub async fn say(d: &Plane, sid: &str, text: &str) {
    let msg =
        json!({"events": [{"type": "user.message", "content": [{"type": "text", "text": text}]}]});
    let (s, v, _) = v1(
        d,
        &d.token,
        Method::POST,
        &format!("/sessions/{sid}/events"),
        Some(msg),
    )
    .await;
    assert_eq!(s, 200, "{v}");
}

pub async fn events(d: &Plane, sid: &str) -> Vec<Value> {
    let (_, v, _) = v1(
        d,
        &d.token,
        Method::GET,
        &format!("/sessions/{sid}/events?limit=1000"),
        None,
    )
    .await;
    v["data"].as_array().cloned().unwrap_or_default()
}

/// Waits for the session's last status event to be idle with `reason`.
pub async fn idle_with(d: &Plane, sid: &str, reason: &str) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = events(d, sid).await;
        let last_status = out.iter().rev().find(|e| {
            e["type"]
                .as_str()
                .is_some_and(|t| t.starts_with("session.status_"))
        });
        if last_status.is_some_and(|e| {
            e["type"] == "session.status_idle" && e["stop_reason"]["type"] == reason
        }) {
            return out;
        }
        assert!(
            Instant::now() < deadline,
            "{sid} never went idle with {reason}: {:?}",
            kinds(&out)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn kinds(events: &[Value]) -> Vec<&str> {
    events.iter().filter_map(|e| e["type"].as_str()).collect()
}
