//! Every request and response body the official SDK exchanged with the
//! server in its tests (recorded with `SANDSTONE_RECORD_DIR`, curated into
//! `tests/fixtures/`) parses into the model and writes back equal, and no
//! field of it lands in an `extra` map: a field renamed or dropped from
//! the model fails here.

use crate::*;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::cell::RefCell;

thread_local! {
    static EXTRA: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
}

/// Called for every `extra` map parsed.
pub(crate) fn saw_extra(m: &serde_json::Map<String, Value>) {
    EXTRA.with(|e| e.borrow_mut().extend(m.keys().cloned()));
}

fn roundtrip<T: DeserializeOwned + Serialize>(v: &Value) -> Result<(), String> {
    EXTRA.with(|e| e.borrow_mut().clear());
    let typed: T = from_value(v.clone()).map_err(|e| format!("does not parse: {e}"))?;
    let unnamed = EXTRA.with(|e| std::mem::take(&mut *e.borrow_mut()));
    if !unnamed.is_empty() {
        return Err(format!("fields the model does not name: {unnamed:?}"));
    }
    let back = serde_json::to_value(&typed).map_err(|e| e.to_string())?;
    if back != *v {
        return Err(format!("writes back different:\n  was {v}\n  now {back}"));
    }
    Ok(())
}

/// A route's path with its ids replaced by `*`.
fn shape(path: &str) -> String {
    const WORDS: &[&str] = &[
        "v1",
        "agents",
        "archive",
        "versions",
        "environments",
        "keys",
        "revoke",
        "work",
        "poll",
        "stats",
        "ack",
        "heartbeat",
        "stop",
        "sessions",
        "events",
        "skills",
        "memory_stores",
        "memories",
    ];
    path.split('/')
        .map(|s| {
            if s.is_empty() || WORDS.contains(&s) {
                s
            } else {
                "*"
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

type Check = fn(&Value) -> Result<(), String>;

/// The request and response types of a route.
fn types(method: &str, path: &str) -> Option<(Option<Check>, Check)> {
    let r: (Option<Check>, Check) = match (method, shape(path).as_str()) {
        ("POST", "/v1/agents") | ("POST", "/v1/agents/*") => {
            (Some(roundtrip::<AgentParams>), roundtrip::<Agent>)
        }
        ("GET", "/v1/agents/*") | ("POST", "/v1/agents/*/archive") => (None, roundtrip::<Agent>),
        ("GET", "/v1/agents") | ("GET", "/v1/agents/*/versions") => {
            (None, roundtrip::<Page<Agent>>)
        }
        ("POST", "/v1/environments") | ("POST", "/v1/environments/*") => (
            Some(roundtrip::<EnvironmentParams>),
            roundtrip::<Environment>,
        ),
        ("GET", "/v1/environments/*") | ("POST", "/v1/environments/*/archive") => {
            (None, roundtrip::<Environment>)
        }
        ("GET", "/v1/environments") => (None, roundtrip::<Page<Environment>>),
        ("POST", "/v1/environments/*/keys") | ("POST", "/v1/environments/*/keys/*/revoke") => {
            (None, roundtrip::<EnvironmentKey>)
        }
        ("GET", "/v1/environments/*/keys") => (None, roundtrip::<Page<EnvironmentKey>>),
        ("GET", "/v1/environments/*/work/poll") => (None, roundtrip::<Option<WorkItem>>),
        ("GET", "/v1/environments/*/work") => (None, roundtrip::<Page<WorkItem>>),
        ("GET", "/v1/environments/*/work/stats") => (None, roundtrip::<WorkQueueStats>),
        ("GET", "/v1/environments/*/work/*") | ("POST", "/v1/environments/*/work/*/ack") => {
            (None, roundtrip::<WorkItem>)
        }
        ("POST", "/v1/environments/*/work/*") => {
            (Some(roundtrip::<WorkUpdate>), roundtrip::<WorkItem>)
        }
        ("POST", "/v1/environments/*/work/*/heartbeat") => (None, roundtrip::<WorkHeartbeat>),
        ("POST", "/v1/environments/*/work/*/stop") => {
            (Some(roundtrip::<WorkStop>), roundtrip::<WorkItem>)
        }
        ("POST", "/v1/sessions") => (Some(roundtrip::<SessionParams>), roundtrip::<Session>),
        ("POST", "/v1/sessions/*") => (Some(roundtrip::<SessionUpdate>), roundtrip::<Session>),
        ("GET", "/v1/sessions/*") | ("POST", "/v1/sessions/*/archive") => {
            (None, roundtrip::<Session>)
        }
        ("GET", "/v1/sessions") => (None, roundtrip::<Page<Session>>),
        ("POST", "/v1/sessions/*/events") => {
            (Some(roundtrip::<SendEvents>), roundtrip::<SentEvents>)
        }
        ("GET", "/v1/sessions/*/events") => (None, roundtrip::<Page<SessionEvent>>),
        ("POST", "/v1/skills") | ("GET", "/v1/skills/*") => (None, roundtrip::<Skill>),
        ("GET", "/v1/skills") => (None, roundtrip::<Page<Skill>>),
        ("POST", "/v1/skills/*/versions") | ("GET", "/v1/skills/*/versions/*") => {
            (None, roundtrip::<SkillVersion>)
        }
        ("GET", "/v1/skills/*/versions") => (None, roundtrip::<Page<SkillVersion>>),
        ("POST", "/v1/memory_stores") | ("POST", "/v1/memory_stores/*") => (
            Some(roundtrip::<MemoryStoreParams>),
            roundtrip::<MemoryStore>,
        ),
        ("GET", "/v1/memory_stores/*") | ("POST", "/v1/memory_stores/*/archive") => {
            (None, roundtrip::<MemoryStore>)
        }
        ("GET", "/v1/memory_stores") => (None, roundtrip::<Page<MemoryStore>>),
        ("POST", "/v1/memory_stores/*/memories") | ("POST", "/v1/memory_stores/*/memories/*") => {
            (Some(roundtrip::<MemoryParams>), roundtrip::<Memory>)
        }
        ("GET", "/v1/memory_stores/*/memories/*") => (None, roundtrip::<Memory>),
        ("GET", "/v1/memory_stores/*/memories") => (None, roundtrip::<Page<MemoryEntry>>),
        ("DELETE", _) => (None, roundtrip::<Deleted>),
        _ => return None,
    };
    Some(r)
}

#[test]
fn every_recorded_body_parses_and_writes_back_equal() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .expect("the fixtures directory")
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    let mut failures = Vec::new();
    let mut checked = 0;
    for path in &files {
        let text = std::fs::read_to_string(path).expect("a fixture");
        let exchanges: Vec<Value> = serde_json::from_str(&text).expect("a fixture is a JSON array");
        for (i, x) in exchanges.iter().enumerate() {
            let method = x["method"].as_str().unwrap_or_default();
            let route = x["path"].as_str().unwrap_or_default();
            let at = format!("{}[{i}] {method} {route}", path.display());
            let Some((request, response)) = types(method, route) else {
                failures.push(format!("{at}: no types for this route"));
                continue;
            };
            let response = if x["status"].as_u64().is_some_and(|s| s >= 400) {
                roundtrip::<ErrorBody>
            } else {
                response
            };
            if let (Some(check), body @ Value::Object(_)) = (request, &x["request"])
                && let Err(e) = check(body)
            {
                failures.push(format!("{at} request: {e}"));
            }
            if let Err(e) = response(&x["response"]) {
                failures.push(format!("{at} response: {e}"));
            }
            checked += 1;
        }
    }
    assert!(checked > 50, "only {checked} exchanges recorded");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn a_renamed_or_missing_field_is_caught() {
    let item = serde_json::json!({
        "type": "work", "id": "work_1", "environment_id": "env_1",
        "data": {"type": "session", "id": "sesn_1"}, "state": "queued", "metadata": {},
        "secret": null, "created_at": "t", "acknowledged_at": null, "started_at": null,
        "latest_heartbeat_at": null, "stop_requested_at": null, "stopped_at": null,
    });
    assert_eq!(roundtrip::<WorkItem>(&item), Ok(()));
    let mut renamed = item.clone();
    let state = renamed["state"].take();
    renamed["status"] = state;
    assert!(roundtrip::<WorkItem>(&renamed).is_err());
    let mut dropped = item;
    dropped.as_object_mut().map(|o| o.remove("stopped_at"));
    assert!(roundtrip::<WorkItem>(&dropped).is_err());
}

#[test]
fn errors_name_the_field() {
    let e = parse::<SendEvents>(
        br#"{"events": [{"type": "user.message", "content": [{"type": "text", "text": 5}]}]}"#,
    )
    .expect_err("refused");
    let shown = e.to_string();
    assert!(
        shown.contains("events[0]") && shown.contains("content[0].text"),
        "{shown}"
    );
    let e = parse::<WorkItem>(br#"{"type": "work", "state": "paused"}"#).expect_err("refused");
    assert_eq!(e.path, "state", "{e}");
    let unknown: SessionEvent =
        serde_json::from_str(r#"{"type": "agent.thinking", "id": "sevt_1", "x": 1}"#)
            .expect("an unknown type parses");
    assert_eq!(unknown.type_name(), "agent.thinking");
    assert_eq!(
        serde_json::to_value(&unknown).expect("writes"),
        serde_json::json!({"type": "agent.thinking", "id": "sevt_1", "x": 1})
    );
}

#[test]
fn work_states_allow_what_the_protocol_allows() {
    use WorkState::*;
    assert_eq!(Queued.ack(), Some(Starting));
    assert_eq!(Active.ack(), Some(Active));
    assert_eq!(Stopping.ack(), None);
    assert_eq!(Queued.stop(false), Some(Stopped));
    assert_eq!(Active.stop(false), Some(Stopping));
    assert_eq!(Active.stop(true), Some(Stopped));
    assert_eq!(Stopped.stop(true), None);
    assert!(Stopping.stop_requested() && !Active.stop_requested());
    assert!(!Queued.can_heartbeat() && Starting.can_heartbeat());
    assert!(Stopping.holds_lease() && !Stopping.requeue_on_expiry());
    for s in WorkState::ALL {
        assert_eq!(s.as_str().parse::<WorkState>(), Ok(*s));
    }
}
