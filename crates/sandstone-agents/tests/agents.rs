//! The control plane in-process, without root: the work queue's protocol
//! edge cases, the agent loop against the scripted model (with a restart),
//! and memory stores, over HTTP against the `/v1` router on a temporary
//! SQLite store.

// Test code: an unexpected failure is the test failing, so unwrap is the point.
#![allow(clippy::unwrap_used)]

mod common;

use common::{
    BETA, FakeModel, assert_names, daemon, environment, events, eventually, idle_with, kinds, mem,
    say, session_on, v1,
};
use reqwest::Method;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// SHA-256 hex of `data`.
fn sha256sum(data: &[u8]) -> String {
    sandstone_db::sha256_hex(data)
}

/// The sessions token in a polled work item's `secret` (base64url JSON).
fn sessions_token(item: &Value) -> String {
    use base64::Engine;
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(item["secret"].as_str().expect("a secret"))
        .unwrap();
    let secret: Value = serde_json::from_slice(&raw).unwrap();
    secret["sessions_token"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn work_queue_protocol_edge_cases() {
    let model = FakeModel::start();
    let d = daemon(&model, 2).await;
    let (env, key) = environment(&d).await;
    let work = format!("/environments/{env}/work");

    // Conventions: the beta header is required; bad keys are 401s in the
    // Anthropic error shape, with a request id.
    let r = d
        .http
        .get(format!("{}/v1/agents", d.url))
        .bearer_auth(&d.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let (s, v, h) = v1(
        &d,
        "sk-sst-env-nope",
        Method::GET,
        &format!("{work}/poll"),
        None,
    )
    .await;
    assert_eq!(
        (s, v["type"].as_str(), v["error"]["type"].as_str()),
        (401, Some("error"), Some("authentication_error")),
        "{v}"
    );
    assert!(h.get("request-id").is_some() && v["request_id"].as_str().unwrap().starts_with("req_"));

    // Empty poll: 200 with JSON null, after blocking about block_ms.
    let t = Instant::now();
    let (s, v, _) = v1(
        &d,
        &key,
        Method::GET,
        &format!("{work}/poll?block_ms=300&beta=true"),
        None,
    )
    .await;
    assert_eq!((s, &v), (200, &Value::Null));
    assert!(
        t.elapsed() >= Duration::from_millis(280),
        "{:?}",
        t.elapsed()
    );
    let (s, v, _) = v1(
        &d,
        &key,
        Method::GET,
        &format!("{work}/poll?block_ms=0"),
        None,
    )
    .await;
    assert_names(s, &v, "block_ms");

    // A session queues a work item; a poll claims it with a secret.
    let (_, agent, _) = v1(
        &d,
        &d.token,
        Method::POST,
        "/agents",
        Some(json!({"name": "a", "model": "scripted-e2e"})),
    )
    .await;
    let (s, session, _) = v1(
        &d,
        &d.token,
        Method::POST,
        "/sessions",
        Some(json!({"agent": agent["id"], "environment_id": env})),
    )
    .await;
    assert_eq!(
        (s, session["status"].as_str()),
        (200, Some("idle")),
        "{session}"
    );
    let sid = session["id"].as_str().unwrap();
    let (_, stats, _) = v1(&d, &key, Method::GET, &format!("{work}/stats"), None).await;
    assert_eq!(
        (stats["depth"].as_i64(), stats["pending"].as_i64()),
        (Some(1), Some(0)),
        "{stats}"
    );
    let poll = |reclaim: u64| {
        let (d, key, work) = (&d, key.clone(), work.clone());
        async move {
            let r = d
                .http
                .get(format!(
                    "{}/v1{work}/poll?block_ms=500&reclaim_older_than_ms={reclaim}",
                    d.url
                ))
                .bearer_auth(&key)
                .header("anthropic-beta", BETA)
                .header("anthropic-worker-id", "w1")
                .send()
                .await
                .unwrap();
            r.json::<Value>().await.unwrap()
        }
    };
    let item = poll(5000).await;
    assert_eq!(
        (item["data"]["id"].as_str(), item["state"].as_str()),
        (Some(sid), Some("queued")),
        "{item}"
    );
    let wid = item["id"].as_str().unwrap().to_string();
    // Un-acked, it is not handed out again before the reclaim age...
    assert_eq!(poll(5000).await, Value::Null);
    let (_, stats, _) = v1(&d, &key, Method::GET, &format!("{work}/stats"), None).await;
    assert_eq!(
        (stats["pending"].as_i64(), stats["workers_polling"].as_i64()),
        (Some(1), Some(1)),
        "{stats}"
    );
    // ...and is after it, with a new sessions token (the old one is void).
    let again = poll(0).await;
    assert_eq!(again["id"].as_str(), Some(wid.as_str()));
    let (old, token) = (sessions_token(&item), sessions_token(&again));
    let (s, _, _) = v1(&d, &old, Method::GET, &format!("/sessions/{sid}"), None).await;
    assert_eq!(s, 401);
    let (s, _, _) = v1(&d, &token, Method::GET, &format!("/sessions/{sid}"), None).await;
    assert_eq!(s, 200);
    // The secret appears only on poll.
    let (_, got, _) = v1(&d, &d.token, Method::GET, &format!("{work}/{wid}"), None).await;
    assert_eq!(got["secret"], Value::Null);

    // ack, then heartbeats with the exact echo; a stale echo is a 412
    // with the lease as the server holds it.
    let (s, acked, _) = v1(&d, &key, Method::POST, &format!("{work}/{wid}/ack"), None).await;
    assert_eq!((s, acked["state"].as_str()), (200, Some("starting")));
    let hb = |expected: String| {
        let (d, token, work, wid) = (&d, token.clone(), work.clone(), wid.clone());
        async move {
            v1(
                d,
                &token,
                Method::POST,
                &format!("{work}/{wid}/heartbeat?expected_last_heartbeat={expected}"),
                None,
            )
            .await
        }
    };
    let (s, beat, _) = hb("NO_HEARTBEAT".into()).await;
    assert_eq!(
        (s, beat["lease_extended"].as_bool(), beat["state"].as_str()),
        (200, Some(true), Some("active")),
        "{beat}"
    );
    let last = beat["last_heartbeat"].as_str().unwrap().to_string();
    let (s, stale, _) = hb("NO_HEARTBEAT".into()).await;
    assert_eq!(s, 412, "{stale}");
    assert_eq!(
        stale["error"]["details"]["error_code"],
        "heartbeat_precondition_failed"
    );
    assert_eq!(
        stale["error"]["details"]["current_state"]["last_heartbeat"].as_str(),
        Some(last.as_str())
    );
    let (s, beat, _) = hb(last.clone()).await;
    assert_eq!((s, beat["lease_extended"].as_bool()), (200, Some(true)));
    let last = beat["last_heartbeat"].as_str().unwrap().to_string();

    // A sessions token is good for its own session only.
    let (_, other, _) = v1(
        &d,
        &d.token,
        Method::POST,
        "/sessions",
        Some(json!({"agent": agent["id"], "environment_id": env})),
    )
    .await;
    let (s, v, _) = v1(
        &d,
        &token,
        Method::GET,
        &format!("/sessions/{}/events", other["id"].as_str().unwrap()),
        None,
    )
    .await;
    assert_eq!(
        (s, v["error"]["type"].as_str()),
        (403, Some("permission_error")),
        "{v}"
    );
    // Nor for another session's work item.
    let (_, items, _) = v1(&d, &key, Method::GET, &work, None).await;
    let others = items["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["data"]["id"] == other["id"])
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (s, _, _) = v1(
        &d,
        &token,
        Method::POST,
        &format!("{work}/{others}/stop"),
        Some(json!({"force": true})),
    )
    .await;
    assert_eq!(s, 403);
    let (s, _, _) = v1(
        &d,
        &token,
        Method::POST,
        &format!("{work}/{others}/heartbeat?expected_last_heartbeat=NO_HEARTBEAT"),
        None,
    )
    .await;
    assert_eq!(s, 403);
    // Archived, it is terminated and its work item stops.
    let (s, v, _) = v1(
        &d,
        &d.token,
        Method::POST,
        &format!("/sessions/{}/archive", other["id"].as_str().unwrap()),
        None,
    )
    .await;
    assert_eq!((s, v["status"].as_str()), (200, Some("terminated")), "{v}");

    // Graceful stop is seen on the next heartbeat; a second stop is a 409
    // the SDK must not retry.
    let (s, v, _) = v1(
        &d,
        &d.token,
        Method::POST,
        &format!("{work}/{wid}/stop"),
        Some(json!({})),
    )
    .await;
    assert_eq!((s, v["state"].as_str()), (200, Some("stopping")), "{v}");
    let (s, beat, _) = hb(last).await;
    assert_eq!(
        (s, beat["state"].as_str(), beat["lease_extended"].as_bool()),
        (200, Some("stopping"), Some(false)),
        "{beat}"
    );
    let (s, _, _) = v1(
        &d,
        &token,
        Method::POST,
        &format!("{work}/{wid}/stop"),
        Some(json!({"force": true})),
    )
    .await;
    assert_eq!(s, 200);
    let (s, _, h) = v1(
        &d,
        &key,
        Method::POST,
        &format!("{work}/{wid}/stop"),
        Some(json!({"force": true})),
    )
    .await;
    assert_eq!(
        (s, h.get("x-should-retry").map(|v| v.to_str().unwrap())),
        (409, Some("false"))
    );

    // A message to a session whose item ended queues a new one; an acked
    // item whose lease runs out (2 s here) is stopped and queued again.
    let msg =
        json!({"events": [{"type": "user.message", "content": [{"type": "text", "text": "hi"}]}]});
    let (s, sent, _) = v1(
        &d,
        &d.token,
        Method::POST,
        &format!("/sessions/{sid}/events"),
        Some(msg),
    )
    .await;
    assert_eq!(
        (s, sent["data"][0]["type"].as_str()),
        (200, Some("user.message")),
        "{sent}"
    );
    let next = poll(5000).await;
    let next_id = next["id"].as_str().unwrap().to_string();
    assert!(next_id != wid && next["data"]["id"] == sid, "{next}");
    v1(
        &d,
        &key,
        Method::POST,
        &format!("{work}/{next_id}/ack"),
        None,
    )
    .await;
    eventually(async || {
        let (_, w, _) = v1(
            &d,
            &d.token,
            Method::GET,
            &format!("{work}/{next_id}"),
            None,
        )
        .await;
        w["state"] == "stopped"
    })
    .await;
    let requeued = poll(5000).await;
    assert!(
        requeued["data"]["id"] == sid && requeued["id"] != next_id.as_str(),
        "{requeued}"
    );

    // Bad input names the field; unknown ids are 404s; a result for a
    // call that is not open is refused.
    let bad = json!({"events": [{"type": "user.message", "content": "not blocks"}]});
    let (s, v, _) = v1(
        &d,
        &d.token,
        Method::POST,
        &format!("/sessions/{sid}/events"),
        Some(bad),
    )
    .await;
    assert_names(s, &v, "events[0].content");
    let (s, _, _) = v1(&d, &d.token, Method::GET, "/sessions/sesn_nope", None).await;
    assert_eq!(s, 404);
    let stray = json!({"events": [{"type": "user.tool_result", "tool_use_id": "sevt_nope", "content": []}]});
    let (s, v, _) = v1(
        &d,
        &d.token,
        Method::POST,
        &format!("/sessions/{sid}/events"),
        Some(stray),
    )
    .await;
    assert_names(s, &v, "tool_use_id");

    // A revoked environment key stops working at once.
    let (_, keys, _) = v1(
        &d,
        &d.token,
        Method::GET,
        &format!("/environments/{env}/keys"),
        None,
    )
    .await;
    let kid = keys["data"][0]["id"].as_str().unwrap();
    assert!(keys["data"][0].get("key").is_none() && keys["data"][0].get("hash").is_none());
    v1(
        &d,
        &d.token,
        Method::POST,
        &format!("/environments/{env}/keys/{kid}/revoke"),
        None,
    )
    .await;
    let (s, v, _) = v1(&d, &key, Method::GET, &format!("{work}/stats"), None).await;
    assert!(
        s == 401 && v["error"]["message"].as_str().unwrap().contains("revoked"),
        "{v}"
    );
}

/// Creates an agent on `script` (with `tools`) and a session; returns the
/// session id.
#[tokio::test(flavor = "multi_thread")]
async fn the_agent_loop_asks_retries_stops_and_survives_a_restart() {
    let model = FakeModel::start();
    let mut d = daemon(&model, 30).await;
    let (env, _) = environment(&d).await;

    // An always_ask tool waits for a confirmation, then for its result.
    let ask = json!([{"type": "agent_toolset_20260401", "default_config": {"permission_policy": {"type": "always_ask"}}}]);
    let sid = session_on(&d, &env, "ask", ask).await;
    // A live stream sees every event exactly once, in list order.
    let stream = d
        .http
        .get(format!("{}/v1/sessions/{sid}/events/stream", d.url))
        .bearer_auth(&d.token)
        .header("anthropic-beta", BETA)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.headers()["content-type"], "text/event-stream");
    say(&d, &sid, "go").await;
    let evs = idle_with(&d, &sid, "requires_action").await;
    let call = evs
        .iter()
        .find(|e| e["type"] == "agent.tool_use")
        .unwrap()
        .clone();
    assert_eq!(
        (
            call["evaluated_permission"].as_str(),
            call["evaluation"]["type"].as_str()
        ),
        (Some("ask"), Some("always_ask")),
        "{call}"
    );
    let idle = evs.last().unwrap();
    assert_eq!(idle["stop_reason"]["event_ids"], json!([call["id"]]));
    let confirm = json!({"events": [{"type": "user.tool_confirmation", "tool_use_id": call["id"], "result": "allow"}]});
    let (s, _, _) = v1(
        &d,
        &d.token,
        Method::POST,
        &format!("/sessions/{sid}/events"),
        Some(confirm.clone()),
    )
    .await;
    assert_eq!(s, 200);
    let (s, v, _) = v1(
        &d,
        &d.token,
        Method::POST,
        &format!("/sessions/{sid}/events"),
        Some(confirm),
    )
    .await;
    assert_eq!(s, 409, "a second confirmation: {v}");

    // The daemon dies while the call is open; the turn resumes after.
    d.kill();
    d.spawn().await;
    let before = events(&d, &sid).await;
    assert_eq!(
        before.len(),
        evs.len() + 1,
        "every event survived the restart"
    );
    let result = json!({"events": [{"type": "user.tool_result", "tool_use_id": call["id"], "content": [{"type": "text", "text": "asked\n"}]}]});
    // The same result sent twice at once: one is taken, one refused.
    let path = format!("/sessions/{sid}/events");
    let (a, b) = tokio::join!(
        v1(&d, &d.token, Method::POST, &path, Some(result.clone())),
        v1(&d, &d.token, Method::POST, &path, Some(result.clone()))
    );
    let mut statuses = [a.0, b.0];
    statuses.sort();
    assert_eq!(statuses, [200, 409]);
    let evs = idle_with(&d, &sid, "end_turn").await;
    let last_text = evs
        .iter()
        .rev()
        .find(|e| e["type"] == "agent.message")
        .unwrap();
    assert_eq!(last_text["content"][0]["text"], "after asked\n");
    let (s, _, _) = v1(
        &d,
        &d.token,
        Method::POST,
        &format!("/sessions/{sid}/events"),
        Some(result),
    )
    .await;
    assert_eq!(s, 409, "a result for an answered call");
    let ids: Vec<&str> = evs.iter().filter_map(|e| e["id"].as_str()).collect();
    let unique: std::collections::HashSet<_> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "no duplicated events");
    // The stream opened before the restart saw the events up to it, in order.
    // (The kill ended that stream; read what it delivered.)
    let mut raw = Vec::new();
    let mut chunks = futures_util::StreamExt::boxed(stream.bytes_stream());
    while let Ok(Some(Ok(c))) = tokio::time::timeout(
        Duration::from_secs(5),
        futures_util::StreamExt::next(&mut chunks),
    )
    .await
    {
        raw.extend_from_slice(&c);
    }
    let streamed: Vec<String> = String::from_utf8_lossy(&raw)
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|e| e["id"].as_str().map(str::to_string))
        .collect();
    assert!(
        !streamed.is_empty() && streamed.iter().zip(&ids).all(|(a, b)| a == b),
        "{streamed:?} vs {ids:?}"
    );

    // A model that fails twice with 529 is retried, then answers.
    let sid = session_on(&d, &env, "flaky", json!([])).await;
    say(&d, &sid, "hello").await;
    let evs = idle_with(&d, &sid, "end_turn").await;
    let errors: Vec<&Value> = evs
        .iter()
        .filter(|e| e["type"] == "session.error")
        .collect();
    assert_eq!(errors.len(), 2, "{:?}", kinds(&evs));
    assert!(
        errors
            .iter()
            .all(|e| e["error"]["type"] == "model_overloaded_error"
                && e["error"]["retry_status"]["type"] == "retrying")
    );
    assert!(kinds(&evs).contains(&"session.status_rescheduled"));
    // Bracketed query arrays (encoded or not) filter the list.
    let (_, only, _) = v1(
        &d,
        &d.token,
        Method::GET,
        &format!("/sessions/{sid}/events?types[]=session.error&types%5B%5D=agent.message"),
        None,
    )
    .await;
    let only: Vec<&str> = only["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["type"].as_str())
        .collect();
    assert_eq!(only, ["session.error", "session.error", "agent.message"]);
    assert_eq!(
        evs.iter()
            .rev()
            .find(|e| e["type"] == "agent.message")
            .unwrap()["content"][0]["text"],
        "recovered"
    );
    let (_, session, _) = v1(&d, &d.token, Method::GET, &format!("/sessions/{sid}"), None).await;
    assert!(
        session["usage"]["output_tokens"].as_u64() > Some(0),
        "{session}"
    );

    // An interrupt during the backoff between retries ends the turn too.
    let sid = session_on(&d, &env, "overloaded", json!([])).await;
    say(&d, &sid, "try").await;
    eventually(async || kinds(&events(&d, &sid).await).contains(&"session.status_rescheduled"))
        .await;
    let stop = json!({"events": [{"type": "user.interrupt"}]});
    v1(
        &d,
        &d.token,
        Method::POST,
        &format!("/sessions/{sid}/events"),
        Some(stop),
    )
    .await;
    let evs = idle_with(&d, &sid, "end_turn").await;
    assert!(!kinds(&evs).contains(&"agent.message"), "{:?}", kinds(&evs));

    // A call to a tool the agent cannot use is refused by the server (no
    // worker runs it) and the model is told why.
    let sid = session_on(
        &d,
        &env,
        "refused",
        json!([{"type": "agent_toolset_20260401"}]),
    )
    .await;
    say(&d, &sid, "fetch").await;
    let evs = idle_with(&d, &sid, "end_turn").await;
    let call = evs.iter().find(|e| e["type"] == "agent.tool_use").unwrap();
    assert_eq!(call["evaluated_permission"], "deny", "{call}");
    assert!(evs.iter().any(|e| e["type"] == "agent.tool_result"
        && e["tool_use_id"] == call["id"]
        && e["is_error"] == true));
    let last = evs
        .iter()
        .rev()
        .find(|e| e["type"] == "agent.message")
        .unwrap();
    assert_eq!(
        last["content"][0]["text"],
        "after tool web_fetch is not available to this agent"
    );

    // An interrupt ends a turn whose model request is still running.
    let sid = session_on(&d, &env, "slow", json!([])).await;
    say(&d, &sid, "take your time").await;
    eventually(async || kinds(&events(&d, &sid).await).contains(&"span.model_request_start")).await;
    let t = Instant::now();
    let stop = json!({"events": [{"type": "user.interrupt"}]});
    v1(
        &d,
        &d.token,
        Method::POST,
        &format!("/sessions/{sid}/events"),
        Some(stop),
    )
    .await;
    let evs = idle_with(&d, &sid, "end_turn").await;
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    assert!(!kinds(&evs).contains(&"agent.message"), "{:?}", kinds(&evs));
}

#[tokio::test(flavor = "multi_thread")]
async fn memory_stores_keep_content_hashes_and_preconditions() {
    let model = FakeModel::start();
    let mut d = daemon(&model, 30).await;
    let (env, key) = environment(&d).await;
    let (s, store) = mem(
        &d,
        &d.token,
        Method::POST,
        "/memory_stores",
        Some(json!({"name": "User Preferences", "description": "what the user likes"})),
    )
    .await;
    assert_eq!(s, 200, "{store}");
    let sid_store = store["id"].as_str().unwrap().to_string();
    // The managed-agents beta is not the memory beta.
    let (s, _, _) = v1(&d, &d.token, Method::GET, "/memory_stores", None).await;
    assert_eq!(s, 400);

    // Attached to a session, with its mount path derived from the name.
    let (_, agent, _) = v1(
        &d,
        &d.token,
        Method::POST,
        "/agents",
        Some(json!({"name": "m", "model": "scripted-e2e"})),
    )
    .await;
    let (s, session, _) = v1(&d, &d.token, Method::POST, "/sessions", Some(json!({"agent": agent["id"], "environment_id": env,
        "resources": [{"type": "memory_store", "memory_store_id": sid_store, "access": "read_write"}]}))).await;
    assert_eq!(s, 200, "{session}");
    assert_eq!(
        session["resources"][0]["mount_path"],
        "/mnt/memory/user-preferences"
    );
    let (s, v, _) = v1(
        &d,
        &d.token,
        Method::POST,
        "/sessions",
        Some(json!({"agent": agent["id"], "environment_id": env,
        "resources": [{"type": "file", "file_id": "file_x"}]})),
    )
    .await;
    assert_names(s, &v, "resources[0].type");

    // The session's worker reaches the store with its sessions token; the
    // environment key does not.
    let (_, item, _) = v1(
        &d,
        &key,
        Method::GET,
        &format!("/environments/{env}/work/poll?block_ms=500"),
        None,
    )
    .await;
    let token = sessions_token(&item);
    let memories = format!("/memory_stores/{sid_store}/memories");
    let (s, _) = mem(&d, &key, Method::GET, &memories, None).await;
    assert_eq!(s, 403);
    let (s, created) = mem(
        &d,
        &token,
        Method::POST,
        &memories,
        Some(json!({"path": "/prefs/editor.md", "content": "vim"})),
    )
    .await;
    assert_eq!(s, 200, "{created}");
    assert_eq!(
        created["content"],
        Value::Null,
        "create answers with view=basic"
    );
    // sha256("vim"), as clients compute it locally.
    assert_eq!(created["content_sha256"], sha256sum(b"vim"));
    let mid = created["id"].as_str().unwrap().to_string();
    let sha = created["content_sha256"].as_str().unwrap().to_string();
    assert_eq!(
        (sha.len(), created["content_size_bytes"].as_u64()),
        (64, Some(3))
    );
    let (s, v) = mem(
        &d,
        &token,
        Method::POST,
        &memories,
        Some(json!({"path": "/prefs/editor.md", "content": "emacs"})),
    )
    .await;
    assert_eq!(
        (s, v["error"]["type"].as_str()),
        (409, Some("memory_path_conflict_error")),
        "{v}"
    );
    mem(
        &d,
        &token,
        Method::POST,
        &memories,
        Some(json!({"path": "/prefs/deep/theme.md", "content": "dark"})),
    )
    .await;
    let (s, v) = mem(
        &d,
        &token,
        Method::POST,
        &memories,
        Some(json!({"path": "/../etc", "content": ""})),
    )
    .await;
    assert_names(s, &v, "path");

    // Retrieve defaults to full; a stale precondition is a 409; a fresh one works.
    let (_, got) = mem(&d, &token, Method::GET, &format!("{memories}/{mid}"), None).await;
    assert_eq!(got["content"], "vim");
    let stale = json!({"content": "nano", "precondition": {"type": "content_sha256", "content_sha256": "0".repeat(64)}});
    let (s, v) = mem(
        &d,
        &token,
        Method::POST,
        &format!("{memories}/{mid}"),
        Some(stale),
    )
    .await;
    assert_eq!(
        (s, v["error"]["type"].as_str()),
        (409, Some("memory_precondition_failed_error")),
        "{v}"
    );
    let fresh = json!({"content": "nano", "precondition": {"type": "content_sha256", "content_sha256": sha}});
    let (s, v) = mem(
        &d,
        &token,
        Method::POST,
        &format!("{memories}/{mid}?view=full"),
        Some(fresh),
    )
    .await;
    assert!(
        s == 200 && v["content"] == "nano" && v["content_sha256"] != sha.as_str(),
        "{v}"
    );

    // A store attached read_only can be read but not written by the token.
    let (_, ro_store) = mem(
        &d,
        &d.token,
        Method::POST,
        "/memory_stores",
        Some(json!({"name": "shared"})),
    )
    .await;
    let ro = ro_store["id"].as_str().unwrap().to_string();
    mem(
        &d,
        &d.token,
        Method::POST,
        &format!("/memory_stores/{ro}/memories"),
        Some(json!({"path": "/a.md", "content": "x"})),
    )
    .await;
    let (s, ro_session, _) = v1(
        &d,
        &d.token,
        Method::POST,
        "/sessions",
        Some(json!({"agent": agent["id"], "environment_id": env,
        "resources": [{"type": "memory_store", "memory_store_id": ro, "access": "read_only"}]})),
    )
    .await;
    assert_eq!(s, 200, "{ro_session}");
    let (_, ro_item, _) = v1(
        &d,
        &key,
        Method::GET,
        &format!("/environments/{env}/work/poll?block_ms=500"),
        None,
    )
    .await;
    let ro_token = sessions_token(&ro_item);
    let (s, _) = mem(
        &d,
        &ro_token,
        Method::GET,
        &format!("/memory_stores/{ro}/memories"),
        None,
    )
    .await;
    assert_eq!(s, 200);
    let (s, _) = mem(
        &d,
        &ro_token,
        Method::POST,
        &format!("/memory_stores/{ro}/memories"),
        Some(json!({"path": "/b.md", "content": "y"})),
    )
    .await;
    assert_eq!(s, 403);
    let (s, _) = mem(&d, &ro_token, Method::GET, &memories, None).await;
    assert_eq!(s, 403, "another session's store");

    // Listing rolls deeper paths up into prefixes.
    let (_, list) = mem(
        &d,
        &token,
        Method::GET,
        &format!("{memories}?path_prefix=/prefs/&depth=1"),
        None,
    )
    .await;
    let shown: Vec<(&str, &str)> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["type"].as_str().unwrap(), m["path"].as_str().unwrap()))
        .collect();
    assert_eq!(
        shown,
        vec![
            ("memory_prefix", "/prefs/deep/"),
            ("memory", "/prefs/editor.md")
        ]
    );

    // Delete with a stale expected hash is refused; the restart keeps it all.
    let (s, _) = mem(
        &d,
        &token,
        Method::DELETE,
        &format!("{memories}/{mid}?expected_content_sha256={sha}"),
        None,
    )
    .await;
    assert_eq!(s, 409);
    d.kill();
    d.spawn().await;
    let (s, got) = mem(
        &d,
        &d.token,
        Method::GET,
        &format!("{memories}/{mid}"),
        None,
    )
    .await;
    assert_eq!((s, got["content"].as_str()), (200, Some("nano")));
    let (s, v) = mem(
        &d,
        &d.token,
        Method::DELETE,
        &format!("{memories}/{mid}"),
        None,
    )
    .await;
    assert_eq!((s, v["type"].as_str()), (200, Some("memory_deleted")));
}

#[tokio::test]
async fn a_stored_document_that_does_not_fit_stops_the_start() {
    use sandstone_agents::{Agents, ApiKeyCheck, Config};
    use std::sync::Arc;
    let scratch = sandstone_db::testing::Scratch::new().await;
    let db = scratch.open().await;
    db.put_doc(
        "environment",
        "env_bad",
        &json!({"id": "env_bad", "name": 5}),
    )
    .await
    .unwrap();
    let config = Config {
        model_base_url: "http://127.0.0.1:9".into(),
        model_api_key: None,
        lease_ttl: Duration::from_secs(30),
        max_tokens: 16,
        outbound: None,
        node: "node-corrupt".into(),
    };
    let keys: ApiKeyCheck = Arc::new(|_| Box::pin(async { None }));
    let sealer = Arc::new(sandstone_db::secrets::Sealer::from_key([7; 32]));
    let err = Agents::start(db, config, keys, sealer)
        .await
        .err()
        .expect("the start is refused")
        .to_string();
    assert!(err.contains("environment env_bad is corrupt"), "{err}");
}

/// A 400 whose message starts with the field's path (`tools[0].name: …`).
fn assert_field_first(status: u16, v: &Value, field: &str) {
    let msg = v["error"]["message"].as_str().unwrap_or("");
    assert!(
        status == 400 && msg.starts_with(&format!("{field}: ")),
        "expected a 400 naming {field} first: {status} {v}"
    );
}

/// Every request body the `/v1` API takes: a wrong-typed field, at the
/// top or deep inside a tagged union, is a 400 naming its path.
#[tokio::test(flavor = "multi_thread")]
async fn every_request_body_error_names_its_field() {
    let model = FakeModel::start();
    let d = daemon(&model, 30).await;
    let (env, key) = environment(&d).await;
    let sid = session_on(&d, &env, "e2e", json!([])).await;
    let (_, session, _) = v1(&d, &d.token, Method::GET, &format!("/sessions/{sid}"), None).await;
    let agent = session["agent"]["id"].as_str().unwrap().to_string();
    let (s, store) = mem(
        &d,
        &d.token,
        Method::POST,
        "/memory_stores",
        Some(json!({"name": "notes"})),
    )
    .await;
    assert_eq!(s, 200, "{store}");
    let store = store["id"].as_str().unwrap().to_string();
    let (s, memory) = mem(
        &d,
        &d.token,
        Method::POST,
        &format!("/memory_stores/{store}/memories"),
        Some(json!({"path": "/a.md", "content": "x"})),
    )
    .await;
    assert_eq!(s, 200, "{memory}");
    let memory = memory["id"].as_str().unwrap().to_string();
    let (_, item, _) = v1(
        &d,
        &key,
        Method::GET,
        &format!("/environments/{env}/work/poll?block_ms=999"),
        None,
    )
    .await;
    let work = format!(
        "/environments/{env}/work/{}",
        item["id"]
            .as_str()
            .unwrap_or_else(|| panic!("a work item: {item}"))
    );

    let toolset = json!([{"type": "agent_toolset_20260401", "configs": [{"name": 7}]}]);
    let text_5 = json!([{"type": "user.message", "content": [{"type": "text", "text": 5}]}]);
    let cases: Vec<(String, Value, &str)> = vec![
        ("/agents".into(), json!({"name": 5, "model": "m"}), "name"),
        (
            "/agents".into(),
            json!({"name": "a", "model": "m", "tools": toolset}),
            "tools[0].configs[0].name",
        ),
        (format!("/agents/{agent}"), json!({"system": 5}), "system"),
        (
            "/environments".into(),
            json!({"name": "e", "config": {"type": "self_hosted"}, "metadata": 5}),
            "metadata",
        ),
        (
            format!("/environments/{env}"),
            json!({"description": 5}),
            "description",
        ),
        (
            "/sessions".into(),
            json!({"agent": agent, "environment_id": 5}),
            "environment_id",
        ),
        (format!("/sessions/{sid}"), json!({"title": 5}), "title"),
        (
            format!("/sessions/{sid}/events"),
            json!({"events": text_5}),
            "events[0].content[0].text",
        ),
        (format!("{work}/stop"), json!({"force": "yes"}), "force"),
    ];
    for (path, body, field) in cases {
        let (s, v, _) = v1(&d, &d.token, Method::POST, &path, Some(body)).await;
        assert_field_first(s, &v, field);
    }
    let memory_cases: Vec<(String, Value, &str)> = vec![
        ("/memory_stores".into(), json!({"name": 5}), "name"),
        (
            format!("/memory_stores/{store}"),
            json!({"description": 5}),
            "description",
        ),
        (
            format!("/memory_stores/{store}/memories"),
            json!({"path": 5, "content": "x"}),
            "path",
        ),
        (
            format!("/memory_stores/{store}/memories/{memory}"),
            json!({"content": 5}),
            "content",
        ),
    ];
    for (path, body, field) in memory_cases {
        let (s, v) = mem(&d, &d.token, Method::POST, &path, Some(body)).await;
        assert_field_first(s, &v, field);
    }
}

/// Vaults and credentials: every kind stored, no secret in any answer or
/// in the store in plaintext, updates keep what they do not change and
/// refuse what cannot change, and archived or deleted ones are gone from
/// lists and sessions.
#[tokio::test(flavor = "multi_thread")]
async fn vault_credentials_are_sealed_and_never_returned() {
    let model = FakeModel::start();
    let d = daemon(&model, 30).await;
    const SECRETS: [&str; 5] = [
        "bearer-s3cret-1",
        "oauth-access-s3cret-2",
        "oauth-refresh-s3cret-3",
        "client-s3cret-4",
        "variable-s3cret-5",
    ];
    let call = async |method: Method, path: &str, body: Option<Value>| {
        let (s, v, _) = v1(&d, &d.token, method, path, body).await;
        for secret in SECRETS {
            assert!(!v.to_string().contains(secret), "{path} answered {v}");
        }
        (s, v)
    };
    let (s, v) = call(Method::POST, "/vaults", Some(json!({"display_name": ""}))).await;
    assert!(s == 400 && v.to_string().contains("display_name"), "{v}");
    let (s, vault) = call(
        Method::POST,
        "/vaults",
        Some(json!({"display_name": "alice", "metadata": {"user": "alice"}})),
    )
    .await;
    assert_eq!((s, vault["type"].as_str()), (200, Some("vault")), "{vault}");
    let vid = vault["id"].as_str().unwrap().to_string();
    assert!(vid.starts_with("vlt_"), "{vid}");
    let creds = format!("/vaults/{vid}/credentials");
    let bearer = json!({"display_name": "linear", "auth": {"type": "static_bearer",
        "mcp_server_url": "https://mcp.example.com/mcp", "token": SECRETS[0]}});
    let (s, b) = call(Method::POST, &creds, Some(bearer.clone())).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(
        b["auth"],
        json!({"type": "static_bearer", "mcp_server_url": "https://mcp.example.com/mcp"})
    );
    // One credential per server in a vault.
    let (s, v) = call(Method::POST, &creds, Some(bearer)).await;
    assert!(
        s == 400 && v.to_string().contains("auth.mcp_server_url"),
        "{v}"
    );
    let (s, o) = call(
        Method::POST,
        &creds,
        Some(json!({"auth": {"type": "mcp_oauth", "mcp_server_url": "https://other.example.com/mcp",
            "access_token": SECRETS[1], "expires_at": "2099-01-01T00:00:00Z",
            "refresh": {"client_id": "cid", "refresh_token": SECRETS[2],
                "token_endpoint": "https://auth.example.com/token",
                "token_endpoint_auth": {"type": "client_secret_post", "client_secret": SECRETS[3]}}}})),
    )
    .await;
    assert_eq!(s, 200, "{o}");
    assert_eq!(
        o["auth"]["refresh"]["token_endpoint_auth"],
        json!({"type": "client_secret_post"})
    );
    let (s, e) = call(
        Method::POST,
        &creds,
        Some(
            json!({"auth": {"type": "environment_variable", "secret_name": "API_KEY",
            "secret_value": SECRETS[4], "injection_location": {"body": false},
            "networking": {"type": "unrestricted"}}}),
        ),
    )
    .await;
    assert_eq!(s, 200, "{e}");
    assert_eq!(
        e["auth"]["injection_location"],
        json!({"body": false, "header": true})
    );
    // Bad input, by field.
    for (body, field) in [
        (
            json!({"auth": {"type": "static_bearer", "mcp_server_url": "ftp://x", "token": "t"}}),
            "auth.mcp_server_url",
        ),
        (
            json!({"auth": {"type": "static_bearer", "mcp_server_url": "https://x.example"}}),
            "auth.token",
        ),
        (
            json!({"auth": {"type": "mcp_oauth", "mcp_server_url": "https://y.example", "access_token": "a",
            "expires_at": "2001-01-01T00:00:00Z"}}),
            "auth.expires_at",
        ),
        (
            json!({"auth": {"type": "environment_variable", "secret_name": "B", "secret_value": "v",
            "networking": {"type": "limited", "allowed_hosts": ["bad host"]}}}),
            "auth.networking.allowed_hosts[0]",
        ),
        (
            json!({"auth": {"type": "environment_variable", "secret_name": "C", "secret_value": "v",
            "injection_location": {"body": false, "header": false}, "networking": {"type": "unrestricted"}}}),
            "auth.injection_location",
        ),
        (json!({"auth": {"type": "magic"}}), "auth"),
    ] {
        let (s, v) = call(Method::POST, &creds, Some(body)).await;
        assert!(
            s == 400 && v.to_string().contains(field),
            "{field}: {s} {v}"
        );
    }
    // Updates: the kind and the server are fixed; a secret is replaced.
    let cid = b["id"].as_str().unwrap();
    let (s, v) = call(
        Method::POST,
        &format!("{creds}/{cid}"),
        Some(json!({"auth": {"type": "environment_variable", "secret_value": "x"}})),
    )
    .await;
    assert!(s == 400 && v.to_string().contains("auth.type"), "{v}");
    let (s, v) = call(
        Method::POST,
        &format!("{creds}/{cid}"),
        Some(json!({"auth": {"type": "static_bearer", "mcp_server_url": "https://z.example"}})),
    )
    .await;
    assert!(
        s == 400 && v.to_string().contains("auth.mcp_server_url"),
        "{v}"
    );
    let (s, v) = call(
        Method::POST,
        &format!("{creds}/{cid}"),
        Some(json!({"auth": {"type": "static_bearer", "token": "rotated-token"}, "metadata": {"k": "v"}})),
    )
    .await;
    assert_eq!((s, &v["metadata"]["k"]), (200, &json!("v")), "{v}");
    assert!(!v.to_string().contains("rotated-token"), "{v}");
    // Nothing sealed is readable in the store.
    let stored = json!(
        d.db.open()
            .await
            .load_docs("vault_credential")
            .await
            .unwrap()
    )
    .to_string();
    assert!(
        stored.contains("rotated") || stored.contains("sealed"),
        "{stored}"
    );
    for secret in SECRETS.iter().chain(&["rotated-token"]) {
        assert!(
            !stored.contains(secret),
            "{secret} is in the store in plaintext"
        );
    }
    // Lists, archive and delete.
    let (_, list) = call(Method::GET, &creds, None).await;
    assert_eq!(list["data"].as_array().unwrap().len(), 3, "{list}");
    let eid = e["id"].as_str().unwrap();
    let (s, a) = call(Method::POST, &format!("{creds}/{eid}/archive"), None).await;
    assert!(s == 200 && a["archived_at"].is_string(), "{a}");
    let (_, list) = call(Method::GET, &creds, None).await;
    assert_eq!(list["data"].as_array().unwrap().len(), 2, "{list}");
    let (_, list) = call(Method::GET, &format!("{creds}?include_archived=true"), None).await;
    assert_eq!(list["data"].as_array().unwrap().len(), 3, "{list}");
    let (s, v) = call(Method::DELETE, &format!("{creds}/{cid}"), None).await;
    assert_eq!(
        (s, v["type"].as_str()),
        (200, Some("vault_credential_deleted")),
        "{v}"
    );
    let (s, _) = call(Method::GET, &format!("{creds}/{cid}"), None).await;
    assert_eq!(s, 404);
    let (s, v) = call(
        Method::POST,
        &format!("/vaults/{vid}"),
        Some(json!({"display_name": "alice2", "metadata": {"user": null}})),
    )
    .await;
    assert_eq!(
        (s, &v["display_name"], &v["metadata"]),
        (200, &json!("alice2"), &json!({})),
        "{v}"
    );
    let (s, v) = call(Method::POST, &format!("/vaults/{vid}/archive"), None).await;
    assert!(s == 200 && v["archived_at"].is_string(), "{v}");
    let (_, list) = call(Method::GET, "/vaults", None).await;
    assert!(list["data"].as_array().unwrap().is_empty(), "{list}");
    let (s, v) = call(
        Method::POST,
        &creds,
        Some(json!({"auth": {"type": "static_bearer",
        "mcp_server_url": "https://n.example", "token": "t"}})),
    )
    .await;
    assert!(s == 400 && v.to_string().contains("archived"), "{v}");
    let (s, v) = call(Method::DELETE, &format!("/vaults/{vid}"), None).await;
    assert_eq!((s, v["type"].as_str()), (200, Some("vault_deleted")), "{v}");
    let (s, _) = call(Method::GET, &format!("{creds}/{eid}"), None).await;
    assert_eq!(s, 404, "a deleted vault's credentials go with it");
}
