//! The `self_hosted` work queue (cma-protocol §1.3–1.4): one live work
//! item per session; `poll` long-polls and claims (an un-acked claim goes
//! to another poller after `reclaim_older_than_ms`), hands out a sessions
//! token in `secret` (only on poll); `ack` starts it; heartbeats extend a
//! lease with an exact-echo precondition (412 otherwise); a lease that
//! runs out stops the item and queues the session again; `stop` is
//! graceful (`stopping`, seen on the next heartbeat) or forced.

use crate::error::{ApiError, ApiResult};
use crate::ids::{new_id, new_token, now};
use crate::{Agents, WORK, Work, str_of};
use base64::Engine;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;

pub const NO_HEARTBEAT: &str = "NO_HEARTBEAT";
/// Workers that polled this recently count in `workers_polling`.
const POLLING_WINDOW: Duration = Duration::from_secs(30);
const DEFAULT_RECLAIM: Duration = Duration::from_millis(5000);

pub struct Poll {
    pub block: Option<Duration>,
    pub reclaim: Duration,
    pub worker: Option<String>,
}

impl Poll {
    pub fn parse(
        block_ms: Option<&str>,
        reclaim_ms: Option<&str>,
        worker: Option<String>,
    ) -> ApiResult<Poll> {
        let block = match block_ms {
            None => None,
            Some(v) => match v.parse::<u64>() {
                Ok(ms @ 1..=999) => Some(Duration::from_millis(ms)),
                _ => return Err(ApiError::invalid("block_ms: an integer from 1 to 999")),
            },
        };
        let reclaim = match reclaim_ms {
            None => DEFAULT_RECLAIM,
            Some(v) => Duration::from_millis(
                v.parse()
                    .map_err(|_| ApiError::invalid("reclaim_older_than_ms: an integer"))?,
            ),
        };
        Ok(Poll {
            block,
            reclaim,
            worker,
        })
    }
}

fn is_live(w: &Work) -> bool {
    w.doc["state"] != "stopped"
}

/// The sessions token, as the SDKs decode it: base64url of a JSON object.
fn secret_for(token: &str) -> String {
    let payload = json!({"sessions_token": token}).to_string();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(payload)
}

fn lease_state(w: &Work, ttl: Duration) -> Value {
    json!({
        "state": w.doc["state"],
        "ttl_seconds": ttl.as_secs(),
        "last_heartbeat": w.doc["latest_heartbeat_at"],
        "lease_extended": false,
    })
}

impl Agents {
    fn queue_wake(&self, env: &str) -> Arc<Notify> {
        self.state
            .lock()
            .unwrap()
            .queue_wake
            .entry(env.to_string())
            .or_default()
            .clone()
    }

    async fn save_work(&self, id: &str) -> ApiResult<()> {
        let saved = {
            let st = self.state.lock().unwrap();
            let w = st
                .work
                .get(id)
                .ok_or_else(|| ApiError::not_found("work", id))?;
            json!({"doc": w.doc, "token_hash": w.token_hash})
        };
        self.persist(WORK, id, &saved).await
    }

    /// Queues a new work item for `session`, unless it has a live one
    /// (checked and inserted under one lock: a session never gets two).
    /// Returns the new item.
    pub(crate) async fn queue_work(&self, env: &str, session: &str) -> ApiResult<Option<Value>> {
        let id = new_id("work");
        let doc = json!({
            "type": "work", "id": id, "environment_id": env,
            "data": {"type": "session", "id": session},
            "state": "queued", "metadata": {}, "secret": null,
            "created_at": now(), "acknowledged_at": null, "started_at": null,
            "latest_heartbeat_at": null, "stop_requested_at": null, "stopped_at": null,
        });
        {
            let mut st = self.state.lock().unwrap();
            let live = st
                .work
                .values()
                .any(|w| w.doc["data"]["id"] == session && is_live(w));
            if live || !st.environments.contains_key(env) {
                return Ok(None);
            }
            let work = Work {
                doc: doc.clone(),
                token_hash: None,
                claimed_at: None,
                lease_until: None,
            };
            st.work.insert(id.clone(), work);
        }
        if let Err(e) = self.save_work(&id).await {
            self.state.lock().unwrap().work.remove(&id);
            return Err(e);
        }
        // One item, one poller: waking them all would only have the rest
        // find nothing.
        self.queue_wake(env).notify_one();
        Ok(Some(doc))
    }

    pub async fn poll(&self, env: &str, p: &Poll) -> ApiResult<Value> {
        self.environment(env)?;
        if let Some(w) = &p.worker {
            let mut st = self.state.lock().unwrap();
            let pollers = st.pollers.entry(env.to_string()).or_default();
            // Workers that stopped polling are forgotten.
            pollers.retain(|_, t| t.elapsed() < POLLING_WINDOW);
            pollers.insert(w.clone(), Instant::now());
        }
        let deadline = Instant::now() + p.block.unwrap_or_default();
        let wake = self.queue_wake(env);
        loop {
            let notified = wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some((id, doc)) = self.claim(env, p.reclaim) {
                self.save_work(&id).await?;
                return Ok(doc);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(Value::Null);
            }
            let _ = tokio::time::timeout(left, notified).await;
        }
    }

    /// Claims the oldest claimable item: a fresh sessions token each time.
    fn claim(&self, env: &str, reclaim: Duration) -> Option<(String, Value)> {
        let mut st = self.state.lock().unwrap();
        let id = st
            .work
            .values()
            .filter(|w| w.doc["environment_id"] == env && w.doc["state"] == "queued")
            .filter(|w| w.claimed_at.is_none_or(|c| c.elapsed() >= reclaim))
            .min_by(|a, b| {
                a.doc["created_at"]
                    .as_str()
                    .cmp(&b.doc["created_at"].as_str())
            })
            .map(|w| str_of(&w.doc, "id"))?;
        let token = new_token(crate::auth::SESSIONS_TOKEN_PREFIX);
        let hash = sandstone_db::token_hash(&token);
        let w = st.work.get_mut(&id)?;
        let old = w.token_hash.replace(hash.clone());
        w.claimed_at = Some(Instant::now());
        let session = str_of(&w.doc["data"], "id");
        let mut doc = w.doc.clone();
        doc["secret"] = json!(secret_for(&token));
        if let Some(old) = old {
            st.tokens.remove(&old);
        }
        st.tokens.insert(hash, (session, id.clone()));
        Some((id, doc))
    }

    fn with_work<T>(
        &self,
        env: &str,
        id: &str,
        f: impl FnOnce(&mut Work) -> ApiResult<T>,
    ) -> ApiResult<T> {
        let mut st = self.state.lock().unwrap();
        let w = st
            .work
            .get_mut(id)
            .filter(|w| w.doc["environment_id"] == env)
            .ok_or_else(|| ApiError::not_found("work", id))?;
        f(w)
    }

    pub async fn ack(&self, env: &str, id: &str) -> ApiResult<Value> {
        let ttl = self.config.lease_ttl;
        let doc = self.with_work(env, id, |w| {
            match w.doc["state"].as_str() {
                Some("queued") => {
                    w.doc["state"] = json!("starting");
                    w.doc["acknowledged_at"] = json!(now());
                    w.lease_until = Some(Instant::now() + ttl);
                }
                Some("starting" | "active") => {}
                _ => {
                    return Err(ApiError::conflict(format!(
                        "work {id} is {}",
                        w.doc["state"].as_str().unwrap_or("?")
                    )));
                }
            }
            Ok(w.doc.clone())
        })?;
        self.save_work(id).await?;
        Ok(doc)
    }

    pub async fn heartbeat(
        &self,
        env: &str,
        id: &str,
        expected: Option<&str>,
        desired_ttl: Option<u64>,
    ) -> ApiResult<Value> {
        let ttl = desired_ttl
            .map(|s| Duration::from_secs(s.clamp(1, 3600)))
            .unwrap_or(self.config.lease_ttl);
        let out = self.with_work(env, id, |w| {
            let state = w.doc["state"].as_str().unwrap_or_default().to_string();
            // A stopping or stopped item is not compared: the worker must
            // learn it should stop.
            if state == "stopping" || state == "stopped" {
                let mut r = lease_state(w, ttl);
                r["type"] = json!("work_heartbeat");
                r["last_heartbeat"] = json!(w.doc["latest_heartbeat_at"].as_str().unwrap_or(""));
                return Ok(r);
            }
            if state == "queued" {
                return Err(ApiError::conflict(format!("work {id} has not been acknowledged")));
            }
            let stored = w.doc["latest_heartbeat_at"].as_str().unwrap_or(NO_HEARTBEAT);
            if expected != Some(stored) {
                return Err(ApiError {
                    status: axum::http::StatusCode::PRECONDITION_FAILED,
                    kind: "invalid_request_error",
                    message: format!(
                        "expected_last_heartbeat does not match the stored heartbeat of work {id}: another worker may hold the lease"
                    ),
                    details: Some(json!({
                        "error_code": "heartbeat_precondition_failed",
                        "current_state": lease_state(w, ttl),
                    })),
                    no_retry: false,
                });
            }
            let t = now();
            w.doc["latest_heartbeat_at"] = json!(t);
            if w.doc["started_at"].is_null() {
                w.doc["started_at"] = json!(t);
            }
            w.doc["state"] = json!("active");
            w.lease_until = Some(Instant::now() + ttl);
            Ok(json!({
                "type": "work_heartbeat", "last_heartbeat": t, "lease_extended": true,
                "state": "active", "ttl_seconds": ttl.as_secs(),
            }))
        })?;
        if out["lease_extended"] == true {
            self.save_work(id).await?;
        }
        Ok(out)
    }

    pub async fn stop(&self, env: &str, id: &str, force: bool) -> ApiResult<Value> {
        let doc = self.with_work(env, id, |w| {
            if w.doc["state"] == "stopped" {
                let mut e = ApiError::conflict(format!("work {id} is already stopped"));
                e.no_retry = true;
                return Err(e);
            }
            stop_item(w, force);
            Ok(w.doc.clone())
        })?;
        self.save_work(id).await?;
        Ok(doc)
    }

    /// Stops an environment's live items (the environment is deleted).
    pub(crate) async fn stop_environment_work(&self, env: &str) -> ApiResult<()> {
        self.stop_live(|w| w.doc["environment_id"] == env, true)
            .await
    }

    /// Stops a session's live items (archive, delete).
    pub(crate) async fn stop_session_work(&self, session: &str, force: bool) -> ApiResult<()> {
        self.stop_live(|w| w.doc["data"]["id"] == session, force)
            .await
    }

    async fn stop_live(&self, which: impl Fn(&Work) -> bool, force: bool) -> ApiResult<()> {
        let ids: Vec<String> = {
            let mut st = self.state.lock().unwrap();
            st.work
                .values_mut()
                .filter(|w| which(w) && is_live(w))
                .map(|w| {
                    stop_item(w, force);
                    str_of(&w.doc, "id")
                })
                .collect()
        };
        for id in ids {
            self.save_work(&id).await?;
        }
        Ok(())
    }

    pub fn work_list(&self, env: &str) -> ApiResult<Vec<Value>> {
        self.environment(env)?;
        let st = self.state.lock().unwrap();
        let mut out: Vec<Value> = st
            .work
            .values()
            .filter(|w| w.doc["environment_id"] == env)
            .map(|w| w.doc.clone())
            .collect();
        out.sort_by(|a, b| b["created_at"].as_str().cmp(&a["created_at"].as_str()));
        Ok(out)
    }

    pub fn work_item(&self, env: &str, id: &str) -> ApiResult<Value> {
        self.with_work(env, id, |w| Ok(w.doc.clone()))
    }

    pub async fn update_work(&self, env: &str, id: &str, body: &Value) -> ApiResult<Value> {
        let doc = self.with_work(env, id, |w| {
            w.doc["metadata"] = crate::resources::merge_metadata(
                &w.doc["metadata"],
                &body["metadata"],
                "metadata",
            )?;
            Ok(w.doc.clone())
        })?;
        self.save_work(id).await?;
        Ok(doc)
    }

    pub fn stats(&self, env: &str) -> ApiResult<Value> {
        self.environment(env)?;
        let st = self.state.lock().unwrap();
        let queued: Vec<&Work> = st
            .work
            .values()
            .filter(|w| w.doc["environment_id"] == env && w.doc["state"] == "queued")
            .collect();
        let pending = queued.iter().filter(|w| w.claimed_at.is_some()).count();
        let oldest = queued
            .iter()
            .filter_map(|w| w.doc["created_at"].as_str())
            .min();
        let polling = st
            .pollers
            .get(env)
            .map(|p| p.values().filter(|t| t.elapsed() < POLLING_WINDOW).count())
            .unwrap_or(0);
        Ok(json!({
            "type": "work_queue_stats", "depth": queued.len() - pending, "pending": pending,
            "oldest_queued_at": oldest, "workers_polling": polling,
        }))
    }

    pub(crate) fn session_of_token(&self, hash: &str) -> ApiResult<(String, String)> {
        let st = self.state.lock().unwrap();
        let (session, work) = st
            .tokens
            .get(hash)
            .cloned()
            .ok_or_else(|| ApiError::unauthorized("invalid sessions token"))?;
        match st.work.get(&work) {
            Some(w) if is_live(w) => Ok((session, work)),
            _ => Err(ApiError::unauthorized(
                "this sessions token's work item has stopped",
            )),
        }
    }

    /// Items whose lease ran out: stopped, and their sessions queued again
    /// (another worker picks them up).
    async fn expire_leases(&self) {
        let expired: Vec<(String, String, String, bool)> = {
            let mut st = self.state.lock().unwrap();
            let now_i = Instant::now();
            st.work
                .values_mut()
                .filter(|w| {
                    matches!(
                        w.doc["state"].as_str(),
                        Some("starting" | "active" | "stopping")
                    )
                })
                .filter(|w| w.lease_until.is_some_and(|t| t <= now_i))
                .map(|w| {
                    let requeue = w.doc["state"] != "stopping";
                    stop_item(w, true);
                    (
                        str_of(&w.doc, "id"),
                        str_of(&w.doc, "environment_id"),
                        str_of(&w.doc["data"], "id"),
                        requeue,
                    )
                })
                .collect()
        };
        for (id, env, session, requeue) in expired {
            tracing::warn!(work = %id, session = %session, requeue, "work lease expired");
            let _ = self.save_work(&id).await;
            let alive = self
                .session_status(&session)
                .is_some_and(|s| s != "terminated");
            if requeue && alive {
                let _ = self.queue_work(&env, &session).await;
            }
        }
    }
}

fn stop_item(w: &mut Work, force: bool) {
    let t = now();
    if force || w.doc["state"] == "queued" {
        w.doc["state"] = json!("stopped");
        w.doc["stopped_at"] = json!(t);
        w.lease_until = None;
    } else if w.doc["state"] != "stopping" {
        w.doc["state"] = json!("stopping");
        w.doc["stop_requested_at"] = json!(t);
    }
}

pub(crate) fn spawn_lease_expiry(agents: Arc<Agents>) {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            agents.expire_leases().await;
        }
    });
}
