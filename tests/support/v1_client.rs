//! The `/v1` client both crates' Managed Agents tests use: the scripted
//! model, calls with the beta headers, and the steps most tests take (an
//! environment, a session, a message, waiting for idle). It is included by
//! `#[path]` from `crates/sandstone/tests/common/agents.rs` (a real daemon)
//! and `crates/sandstone-agents/tests/common/mod.rs` (the control plane
//! in-process); each implements [`Endpoint`] for its server.

#![allow(dead_code)]

use reqwest::Method;
use serde_json::{Value, json};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A server with the `/v1` API: where it listens and the key it accepts.
pub trait Endpoint {
    /// `http://host:port`, without `/v1`.
    fn url(&self) -> &str;
    /// An API key the server accepts.
    fn token(&self) -> &str;
    fn http(&self) -> &reqwest::Client;
}

pub const BETA: &str = "managed-agents-2026-04-01";

/// The scripted Messages API (tests/fake_model/server.py).
pub struct FakeModel {
    child: Child,
    pub url: String,
}

impl FakeModel {
    /// The request bodies the model took (its last 1000), oldest first.
    pub async fn requests(&self) -> Vec<Value> {
        reqwest::get(format!("{}/requests", self.url))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

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
    d: &impl Endpoint,
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
    d: &impl Endpoint,
    bearer: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let (s, v, _) = call(d, bearer, "agent-memory-2026-07-22", method, path, body).await;
    (s, v)
}

async fn call(
    d: &impl Endpoint,
    bearer: &str,
    beta: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value, reqwest::header::HeaderMap) {
    let mut req = d
        .http()
        .request(method, format!("{}/v1{path}", d.url()))
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

pub async fn environment(d: &impl Endpoint) -> (String, String) {
    let (s, env, _) = v1(
        d,
        d.token(),
        Method::POST,
        "/environments",
        Some(json!({"name": "test", "config": {"type": "self_hosted"}})),
    )
    .await;
    assert_eq!(s, 200, "{env}");
    let id = env["id"].as_str().unwrap().to_string();
    let (s, key, _) = v1(
        d,
        d.token(),
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

pub async fn session_on(d: &impl Endpoint, env: &str, script: &str, tools: Value) -> String {
    session_with(d, env, script, tools, json!({})).await
}

/// [`session_on`], with `fields` (`vault_ids`, `resources`) added to the
/// session's body.
pub async fn session_with(
    d: &impl Endpoint,
    env: &str,
    script: &str,
    tools: Value,
    fields: Value,
) -> String {
    let (s, agent, _) = v1(
        d,
        d.token(),
        Method::POST,
        "/agents",
        Some(json!({"name": script, "model": format!("scripted-{script}"), "tools": tools})),
    )
    .await;
    assert_eq!(s, 200, "{agent}");
    let (s, session, _) = v1(
        d,
        d.token(),
        Method::POST,
        "/sessions",
        Some({
            let mut body = json!({"agent": agent["id"], "environment_id": env});
            if let (Some(b), Some(f)) = (body.as_object_mut(), fields.as_object()) {
                b.extend(f.clone());
            }
            body
        }),
    )
    .await;
    assert_eq!(s, 200, "{session}");
    session["id"].as_str().unwrap().to_string()
}

pub async fn say(d: &impl Endpoint, sid: &str, text: &str) {
    let msg =
        json!({"events": [{"type": "user.message", "content": [{"type": "text", "text": text}]}]});
    let (s, v, _) = v1(
        d,
        d.token(),
        Method::POST,
        &format!("/sessions/{sid}/events"),
        Some(msg),
    )
    .await;
    assert_eq!(s, 200, "{v}");
}

pub async fn events(d: &impl Endpoint, sid: &str) -> Vec<Value> {
    let (_, v, _) = v1(
        d,
        d.token(),
        Method::GET,
        &format!("/sessions/{sid}/events?limit=1000"),
        None,
    )
    .await;
    v["data"].as_array().cloned().unwrap_or_default()
}

/// Waits for the session's last status event to be idle with `reason`.
pub async fn idle_with(d: &impl Endpoint, sid: &str, reason: &str) -> Vec<Value> {
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

/// Asserts a 400 whose message names `needle` (a field's path).
pub fn assert_names(status: u16, v: &Value, needle: &str) {
    let msg = v["error"]["message"].as_str().unwrap_or("");
    assert!(
        status == 400 && msg.contains(needle),
        "expected a 400 naming {needle}: {status} {v}"
    );
}

pub fn kinds(events: &[Value]) -> Vec<&str> {
    events.iter().filter_map(|e| e["type"].as_str()).collect()
}
