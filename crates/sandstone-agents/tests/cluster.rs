//! Two (or three) control planes on one PostgreSQL database, as nodes of a
//! cluster: work polled on either is claimed once, acks, heartbeats and
//! lease expiry work whichever node the worker talks to, and a stream on
//! one node sees events appended through another, in order. Needs
//! PostgreSQL (`SANDSTONE_TEST_DATABASE_URL`): skipped, saying so, without.

// Test code: an unexpected failure is the test failing, so unwrap is the point.
#![allow(clippy::unwrap_used)]

mod common;

use common::{BETA, FakeModel, Plane, environment, session_on, v1};
use reqwest::Method;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// Two planes on one fresh PostgreSQL database, or `None` (with the
/// reason printed) when there is no test server.
async fn two_planes(model: &FakeModel, lease_ttl: u64) -> Option<(Plane, Plane)> {
    if std::env::var(sandstone_db::testing::ENV).is_err() {
        eprintln!(
            "skipped: several nodes need PostgreSQL; set {} (scripts/postgres.sh prints one)",
            sandstone_db::testing::ENV
        );
        return None;
    }
    let a = Plane::start(model, lease_ttl).await;
    let b = a.beside().await;
    Some((a, b))
}

/// One poll (blocking up to `block_ms`) with the environment key.
async fn poll(p: &Plane, env: &str, key: &str, block_ms: u64) -> Value {
    let (s, v, _) = v1(
        p,
        key,
        Method::GET,
        &format!("/environments/{env}/work/poll?block_ms={block_ms}"),
        None,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    v
}

/// The sessions token in a polled item's `secret`.
fn sessions_token(item: &Value) -> String {
    use base64::Engine;
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(item["secret"].as_str().unwrap())
        .unwrap();
    let secret: Value = serde_json::from_slice(&raw).unwrap();
    secret["sessions_token"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn two_pollers_on_two_nodes_claim_each_of_20_items_once() {
    let model = FakeModel::start();
    let Some((a, b)) = two_planes(&model, 30).await else {
        return;
    };
    let (env, key) = environment(&a).await;
    // Sessions made on either node; each queues one item.
    let mut sessions = BTreeSet::new();
    for i in 0..20 {
        let on = if i % 2 == 0 { &a } else { &b };
        sessions.insert(session_on(on, &env, "e2e", json!([])).await);
    }
    // Two workers, one per node, poll until the queue is empty.
    let (a, b) = (std::sync::Arc::new(a), std::sync::Arc::new(b));
    let worker = |p: std::sync::Arc<Plane>| {
        let (env, key) = (env.clone(), key.clone());
        async move {
            let mut got = Vec::new();
            let mut empty = 0;
            while empty < 3 {
                let v = poll(&p, &env, &key, 100).await;
                if v.is_null() {
                    empty += 1;
                } else {
                    got.push(v);
                }
            }
            got
        }
    };
    let (on_a, on_b) = tokio::join!(
        tokio::spawn(worker(a.clone())),
        tokio::spawn(worker(b.clone()))
    );
    let (on_a, on_b) = (on_a.unwrap(), on_b.unwrap());
    let claimed: Vec<&Value> = on_a.iter().chain(&on_b).collect();
    let ids: BTreeSet<&str> = claimed.iter().map(|v| v["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), claimed.len(), "an item was claimed twice");
    let served: BTreeSet<String> = claimed
        .iter()
        .map(|v| v["data"]["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(served, sessions, "every session's item, once");
    eprintln!("claimed {} on node A, {} on node B", on_a.len(), on_b.len());
    // A sessions token handed out on one node works on the other, and an
    // item polled on one is acked on the other.
    let item = on_a.first().or(on_b.first()).unwrap();
    let (wid, sid) = (
        item["id"].as_str().unwrap(),
        item["data"]["id"].as_str().unwrap(),
    );
    for p in [&*a, &*b] {
        let (s, v, _) = v1(
            p,
            &sessions_token(item),
            Method::GET,
            &format!("/sessions/{sid}"),
            None,
        )
        .await;
        assert_eq!(s, 200, "{v}");
    }
    let (s, acked, _) = v1(
        &*b,
        &key,
        Method::POST,
        &format!("/environments/{env}/work/{wid}/ack"),
        None,
    )
    .await;
    assert_eq!((s, acked["state"].as_str()), (200, Some("starting")));
    let (s, got, _) = v1(
        &*a,
        &a.token,
        Method::GET,
        &format!("/environments/{env}/work/{wid}"),
        None,
    )
    .await;
    assert_eq!((s, got["state"].as_str()), (200, Some("starting")));
}

#[tokio::test(flavor = "multi_thread")]
async fn heartbeats_and_lease_expiry_hold_across_nodes() {
    let model = FakeModel::start();
    let Some((a, b)) = two_planes(&model, 2).await else {
        return;
    };
    let (env, key) = environment(&a).await;
    let work = format!("/environments/{env}/work");
    let sid = session_on(&b, &env, "e2e", json!([])).await;
    let item = poll(&a, &env, &key, 500).await;
    let (wid, token) = (
        item["id"].as_str().unwrap().to_string(),
        sessions_token(&item),
    );
    let (s, _, _) = v1(&b, &key, Method::POST, &format!("{work}/{wid}/ack"), None).await;
    assert_eq!(s, 200);
    let hb = async |p: &Plane, expected: &str| {
        let path = format!("{work}/{wid}/heartbeat?expected_last_heartbeat={expected}");
        v1(p, &token, Method::POST, &path, None).await
    };
    // The first heartbeat on A; the same expectation again on B is stale.
    let (s, beat, _) = hb(&a, "NO_HEARTBEAT").await;
    assert_eq!(
        (s, beat["lease_extended"].as_bool()),
        (200, Some(true)),
        "{beat}"
    );
    let last = beat["last_heartbeat"].as_str().unwrap().to_string();
    let (s, stale, _) = hb(&b, "NO_HEARTBEAT").await;
    assert_eq!(s, 412, "{stale}");
    assert_eq!(
        stale["error"]["details"]["current_state"]["last_heartbeat"].as_str(),
        Some(last.as_str())
    );
    let (s, beat, _) = hb(&b, &last).await;
    assert_eq!(s, 200, "{beat}");

    // No more heartbeats: the 2 s lease runs out. Both nodes look for
    // expired leases; the item is stopped and its session queued again
    // exactly once.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (s, list, _) = v1(&a, &key, Method::GET, &work, None).await;
    assert_eq!(s, 200, "{list}");
    let of_session: Vec<&Value> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|w| w["data"]["id"] == sid.as_str())
        .collect();
    let states: BTreeMap<&str, usize> = of_session.iter().fold(BTreeMap::new(), |mut m, w| {
        *m.entry(w["state"].as_str().unwrap()).or_default() += 1;
        m
    });
    assert_eq!(
        states,
        BTreeMap::from([("queued", 1), ("stopped", 1)]),
        "{of_session:?}"
    );
    // The stopped item's token is void on both nodes.
    for p in [&a, &b] {
        let (s, _, _) = v1(p, &token, Method::GET, &format!("/sessions/{sid}"), None).await;
        assert_eq!(s, 401);
    }
}

/// The SSE frames' event ids on `stream` until `n` arrived (bounded).
async fn frames(stream: reqwest::Response, n: usize) -> Vec<Value> {
    let mut chunks = futures_util::StreamExt::boxed(stream.bytes_stream());
    let mut raw = Vec::new();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while out.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(Some(Ok(c))) =
            tokio::time::timeout(left, futures_util::StreamExt::next(&mut chunks)).await
        else {
            break;
        };
        raw.extend_from_slice(&c);
        out = String::from_utf8_lossy(&raw)
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|e| e["type"] != "ping")
            .collect();
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_on_one_node_sees_events_appended_on_another_in_order() {
    let model = FakeModel::start();
    let Some((a, b)) = two_planes(&model, 30).await else {
        return;
    };
    let (env, _) = environment(&a).await;
    let sid = session_on(&a, &env, "e2e", json!([])).await;
    let stream = a
        .http
        .get(format!("{}/v1/sessions/{sid}/events/stream", a.url))
        .bearer_auth(&a.token)
        .header("anthropic-beta", BETA)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    // Events sent through B, one by one (interrupts: no turn to drive).
    let reader = tokio::spawn(frames(stream, 5));
    let sent = Instant::now();
    for _ in 0..5 {
        let msg = json!({"events": [{"type": "user.interrupt"}]});
        let (s, v, _) = v1(
            &b,
            &b.token,
            Method::POST,
            &format!("/sessions/{sid}/events"),
            Some(msg),
        )
        .await;
        assert_eq!(s, 200, "{v}");
    }
    let streamed = reader.await.unwrap();
    eprintln!("5 events sent on B, streamed on A in {:?}", sent.elapsed());
    // Every event the store holds (listed on B), in the same order.
    let (_, listed, _) = v1(
        &b,
        &b.token,
        Method::GET,
        &format!("/sessions/{sid}/events?limit=1000"),
        None,
    )
    .await;
    let ids = |evs: &[Value]| -> Vec<String> {
        evs.iter()
            .filter_map(|e| e["id"].as_str().map(str::to_string))
            .collect()
    };
    let listed = ids(listed["data"].as_array().unwrap());
    let streamed = ids(&streamed);
    assert_eq!(streamed.len(), 5, "{streamed:?}");
    assert_eq!(streamed, listed[listed.len() - 5..], "stream vs list");
}

#[tokio::test(flavor = "multi_thread")]
async fn one_event_from_one_node_reaches_a_stream_on_another_within_milliseconds() {
    let model = FakeModel::start();
    let Some((a, b)) = two_planes(&model, 30).await else {
        return;
    };
    let (env, _) = environment(&a).await;
    let sid = session_on(&b, &env, "e2e", json!([])).await;
    let mut lat = Vec::new();
    for _ in 0..20 {
        let stream = a
            .http
            .get(format!("{}/v1/sessions/{sid}/events/stream", a.url))
            .bearer_auth(&a.token)
            .header("anthropic-beta", BETA)
            .send()
            .await
            .unwrap();
        let reader = tokio::spawn(frames(stream, 1));
        let t = Instant::now();
        let msg = json!({"events": [{"type": "user.interrupt"}]});
        let (s, _, _) = v1(
            &b,
            &b.token,
            Method::POST,
            &format!("/sessions/{sid}/events"),
            Some(msg),
        )
        .await;
        assert_eq!(s, 200);
        let got = reader.await.unwrap();
        assert_eq!(got.len(), 1);
        lat.push(t.elapsed());
    }
    lat.sort();
    eprintln!(
        "send on B -> frame on A: p50 {:?}, max {:?}",
        lat[lat.len() / 2],
        lat[lat.len() - 1]
    );
    assert!(lat[lat.len() / 2] < Duration::from_millis(100), "{lat:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_turn_is_driven_once_whichever_node_its_input_arrives_on() {
    let model = FakeModel::start();
    let Some((a, b)) = two_planes(&model, 30).await else {
        return;
    };
    let (env, _) = environment(&a).await;
    // An always_ask tool: the turn stops twice for the client, whose
    // answers go to the other node than the one driving.
    let ask = json!([{"type": "agent_toolset_20260401", "default_config": {"permission_policy": {"type": "always_ask"}}}]);
    let sid = session_on(&a, &env, "ask", ask).await;
    common::say(&b, &sid, "go").await;
    let evs = common::idle_with(&a, &sid, "requires_action").await;
    let call = evs.iter().find(|e| e["type"] == "agent.tool_use").unwrap();
    let post = async |p: &Plane, ev: Value| {
        let path = format!("/sessions/{sid}/events");
        v1(
            p,
            &p.token,
            Method::POST,
            &path,
            Some(json!({"events": [ev]})),
        )
        .await
    };
    let (s, v, _) = post(
        &a,
        json!({"type": "user.tool_confirmation", "tool_use_id": call["id"], "result": "allow"}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let (s, v, _) = post(
        &a,
        json!({"type": "user.tool_result", "tool_use_id": call["id"], "content": [{"type": "text", "text": "asked\n"}]}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let evs = common::idle_with(&b, &sid, "end_turn").await;
    // One model call per step: one tool call, one answer, one run of
    // status events per turn, no event twice.
    let count = |t: &str| evs.iter().filter(|e| e["type"] == t).count();
    assert_eq!(
        (count("agent.tool_use"), count("agent.message")),
        (1, 1),
        "{:?}",
        common::kinds(&evs)
    );
    let last = evs
        .iter()
        .rev()
        .find(|e| e["type"] == "agent.message")
        .unwrap();
    assert_eq!(last["content"][0]["text"], "after asked\n");
    let ids: BTreeSet<&str> = evs.iter().filter_map(|e| e["id"].as_str()).collect();
    assert_eq!(ids.len(), evs.len(), "no event twice");
    // Both nodes list the same history.
    assert_eq!(common::events(&a, &sid).await, evs);
}

/// This process's resident memory, MiB.
fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb / 1024.0
}

fn p50(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// The figures for the notes (run by hand: `cargo test -p sandstone-agents
/// --test cluster -- --ignored --nocapture`): poll, ack and heartbeat
/// round trips through three nodes on PostgreSQL, each step of an item on
/// another node than the last; then 1,000 idle long-pollers spread over
/// the three, with this process's memory before, during and after.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "a measurement, run by hand"]
async fn measure_work_queue_round_trips_and_idle_pollers() {
    let model = FakeModel::start();
    let Some((a, b)) = two_planes(&model, 30).await else {
        return;
    };
    let c = a.beside().await;
    let planes = [&a, &b, &c];
    let (env, key) = environment(&a).await;
    let work = format!("/environments/{env}/work");
    let n = 200;
    for i in 0..n {
        session_on(planes[i % 3], &env, "e2e", json!([])).await;
    }
    let (mut polls, mut acks, mut beats) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..n {
        let t = Instant::now();
        let item = poll(planes[i % 3], &env, &key, 1).await;
        polls.push(t.elapsed());
        let wid = item["id"].as_str().unwrap();
        let t = Instant::now();
        let (s, _, _) = v1(
            planes[(i + 1) % 3],
            &key,
            Method::POST,
            &format!("{work}/{wid}/ack"),
            None,
        )
        .await;
        acks.push(t.elapsed());
        assert_eq!(s, 200);
        let path = format!("{work}/{wid}/heartbeat?expected_last_heartbeat=NO_HEARTBEAT");
        let t = Instant::now();
        let (s, _, _) = v1(
            planes[(i + 2) % 3],
            &sessions_token(&item),
            Method::POST,
            &path,
            None,
        )
        .await;
        beats.push(t.elapsed());
        assert_eq!(s, 200);
    }
    // The same client's cheapest authenticated call, as the baseline.
    let mut base = Vec::new();
    for i in 0..n {
        let t = Instant::now();
        let (s, _, _) = v1(
            planes[i % 3],
            &key,
            Method::GET,
            &format!("/environments/{env}/work/stats"),
            None,
        )
        .await;
        base.push(t.elapsed());
        assert_eq!(s, 200);
    }
    eprintln!(
        "PostgreSQL, 3 nodes, {n} items: poll p50 {:?}, ack p50 {:?}, heartbeat p50 {:?} (work/stats p50 {:?})",
        p50(polls),
        p50(acks),
        p50(beats),
        p50(base)
    );

    // Where the time goes: the same steps on the store alone, and one
    // write the database must make durable before it answers.
    let store = a.db.open().await;
    for _ in 0..n {
        session_on(&a, &env, "e2e", json!([])).await;
    }
    let (mut claims, mut cas, mut reads) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..n {
        let t = Instant::now();
        let row = store
            .claim_work(&env, 0, i64::MAX, &sandstone_api::random_hex(16))
            .await;
        claims.push(t.elapsed());
        let id = row.unwrap().unwrap().item.id;
        let t = Instant::now();
        let mut w = store.get_work(&id).await.unwrap().unwrap();
        reads.push(t.elapsed());
        // Stopped, so that the idle pollers below find nothing.
        w.item.state = sandstone_agents_api::WorkState::Stopped;
        let t = Instant::now();
        assert!(store.replace_work(&w).await.unwrap());
        cas.push(t.elapsed());
    }
    eprintln!(
        "the store alone: claim p50 {:?}, read p50 {:?}, compare-and-set p50 {:?}",
        p50(claims),
        p50(reads),
        p50(cas)
    );

    let before = rss_mib();
    let stop = Instant::now() + Duration::from_secs(10);
    let mut pollers = Vec::new();
    for i in 0..1000 {
        let (p, env, key) = (planes[i % 3], env.clone(), key.clone());
        let url = p.url.clone();
        pollers.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut answers = 0;
            while Instant::now() < stop {
                let r = http
                    .get(format!(
                        "{url}/v1/environments/{env}/work/poll?block_ms=999"
                    ))
                    .bearer_auth(&key)
                    .header("anthropic-beta", BETA)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
                assert_eq!(r.text().await.unwrap(), "null");
                answers += 1;
            }
            answers
        }));
    }
    let mut during = Vec::new();
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_secs(2)).await;
        during.push(rss_mib());
    }
    let mut answered = 0;
    for p in pollers {
        answered += p.await.unwrap();
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    eprintln!(
        "1,000 idle pollers over 3 nodes for 10 s: {answered} polls answered null; RSS (3 nodes + 1,000 clients, one process) before {before:.1} MiB, during {during:.1?} MiB, after {:.1} MiB",
        rss_mib()
    );
}
