//! The `self_hosted` work queue (cma-protocol §1.3–1.4): one live work
//! item per session; `poll` long-polls and claims (an un-acked claim goes
//! to another poller after `reclaim_older_than_ms`), hands out a sessions
//! token in `secret` (only on poll); `ack` starts it; heartbeats extend a
//! lease with an exact-echo precondition (412 otherwise); a lease that
//! runs out stops the item and queues the session again; `stop` is
//! graceful (`stopping`, seen on the next heartbeat) or forced.

use crate::error::{ApiError, ApiResult};
use crate::ids::{new_id, new_token, now};
use crate::validate::merge_metadata;
use crate::{StartError, lock, parse_stored};
use base64::Engine;
use sandstone_agents_api::{
    Extra, NO_HEARTBEAT, WorkData, WorkHeartbeat, WorkHeartbeatTag, WorkItem, WorkKind,
    WorkLeaseState, WorkQueueStats, WorkQueueStatsTag, WorkState, WorkTag,
};
use sandstone_db::agents::AgentsStore;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

const WORK: &str = "work";
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

/// The sessions token, as the SDKs decode it: base64url of a JSON object.
fn secret_for(token: &str) -> String {
    let payload = json!({"sessions_token": token}).to_string();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(payload)
}

/// A work item: its public document and what only the server knows.
struct Work {
    item: WorkItem,
    /// Hash of the sessions token handed out with the last claim.
    token_hash: Option<String>,
    claimed_at: Option<Instant>,
    lease_until: Option<Instant>,
}

impl Work {
    fn lease_state(&self, ttl: Duration) -> WorkLeaseState {
        WorkLeaseState {
            state: self.item.state,
            ttl_seconds: ttl.as_secs(),
            last_heartbeat: self.item.latest_heartbeat_at.clone(),
            lease_extended: false,
            extra: Extra::new(),
        }
    }

    /// Applies a stop (see [`WorkState::stop`]); `false` if it was
    /// already stopped.
    fn stop(&mut self, force: bool) -> bool {
        let Some(next) = self.item.state.stop(force) else {
            return false;
        };
        let t = now();
        if next == WorkState::Stopped {
            self.item.stopped_at = Some(t);
            self.lease_until = None;
        } else if self.item.state != WorkState::Stopping {
            self.item.stop_requested_at = Some(t);
        }
        self.item.state = next;
        true
    }
}

/// How a work item is stored.
#[derive(Serialize, Deserialize)]
struct Stored {
    doc: WorkItem,
    token_hash: Option<String>,
}

/// An item whose lease ran out (it has been stopped).
pub(crate) struct Expired {
    pub environment: String,
    pub session: String,
    /// Whether its session should be queued again.
    pub requeue: bool,
}

#[derive(Default)]
struct QueueState {
    work: BTreeMap<String, Work>,
    /// Sessions tokens by hash: (session id, work id).
    tokens: HashMap<String, (String, String)>,
    /// Per environment: worker id → last poll.
    pollers: HashMap<String, HashMap<String, Instant>>,
    wake: HashMap<String, Arc<Notify>>,
}

pub(crate) struct WorkQueue {
    store: Arc<dyn AgentsStore>,
    lease_ttl: Duration,
    state: Mutex<QueueState>,
}

impl WorkQueue {
    pub(crate) async fn load(
        store: Arc<dyn AgentsStore>,
        lease_ttl: Duration,
    ) -> Result<WorkQueue, StartError> {
        let mut st = QueueState::default();
        for w in store.load_docs(WORK).await? {
            let Stored { doc, token_hash } = parse_stored(WORK, w)?;
            if let Some(h) = &token_hash {
                st.tokens
                    .insert(h.clone(), (doc.data.id.clone(), doc.id.clone()));
            }
            // Leases run on this process's clock: a restart grants a
            // fresh one rather than expiring every item at once.
            let lease_until = matches!(doc.state, WorkState::Starting | WorkState::Active)
                .then(|| Instant::now() + lease_ttl);
            let work = Work {
                item: doc,
                token_hash,
                claimed_at: None,
                lease_until,
            };
            st.work.insert(work.item.id.clone(), work);
        }
        Ok(WorkQueue {
            store,
            lease_ttl,
            state: Mutex::new(st),
        })
    }

    fn state(&self) -> MutexGuard<'_, QueueState> {
        lock(&self.state)
    }

    fn wake(&self, env: &str) -> Arc<Notify> {
        self.state()
            .wake
            .entry(env.to_string())
            .or_default()
            .clone()
    }

    async fn save(&self, id: &str) -> ApiResult<()> {
        let saved = {
            let st = self.state();
            let w = st
                .work
                .get(id)
                .ok_or_else(|| ApiError::not_found("work", id))?;
            json!({"doc": w.item, "token_hash": w.token_hash})
        };
        Ok(self.store.put_doc(WORK, id, &saved).await?)
    }

    /// Queues a new work item for `session`, unless it has a live one
    /// (checked and inserted under one lock: a session never gets two).
    pub(crate) async fn enqueue(&self, env: &str, session: &str) -> ApiResult<Option<WorkItem>> {
        let id = new_id("work");
        let item = WorkItem {
            tag: WorkTag,
            id: id.clone(),
            environment_id: env.to_string(),
            data: WorkData {
                kind: WorkKind::Session,
                id: session.to_string(),
                extra: Extra::new(),
            },
            state: WorkState::Queued,
            metadata: Default::default(),
            secret: None,
            created_at: now(),
            acknowledged_at: None,
            started_at: None,
            latest_heartbeat_at: None,
            stop_requested_at: None,
            stopped_at: None,
            extra: Extra::new(),
        };
        {
            let mut st = self.state();
            let live = st
                .work
                .values()
                .any(|w| w.item.data.id == session && w.item.state.is_live());
            if live {
                return Ok(None);
            }
            let work = Work {
                item: item.clone(),
                token_hash: None,
                claimed_at: None,
                lease_until: None,
            };
            st.work.insert(id.clone(), work);
        }
        if let Err(e) = self.save(&id).await {
            self.state().work.remove(&id);
            return Err(e);
        }
        // One item, one poller: waking them all would only have the rest
        // find nothing.
        self.wake(env).notify_one();
        Ok(Some(item))
    }

    /// Long-polls `env`'s queue (the caller checked it exists).
    pub(crate) async fn poll(&self, env: &str, p: &Poll) -> ApiResult<Option<WorkItem>> {
        if let Some(w) = &p.worker {
            let mut st = self.state();
            let pollers = st.pollers.entry(env.to_string()).or_default();
            // Workers that stopped polling are forgotten.
            pollers.retain(|_, t| t.elapsed() < POLLING_WINDOW);
            pollers.insert(w.clone(), Instant::now());
        }
        let deadline = Instant::now() + p.block.unwrap_or_default();
        let wake = self.wake(env);
        loop {
            let notified = wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(item) = self.claim(env, p.reclaim) {
                self.save(&item.id).await?;
                return Ok(Some(item));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            let _ = tokio::time::timeout(left, notified).await;
        }
    }

    /// Claims the oldest claimable item: a fresh sessions token each time.
    fn claim(&self, env: &str, reclaim: Duration) -> Option<WorkItem> {
        let mut st = self.state();
        let id = st
            .work
            .values()
            .filter(|w| w.item.environment_id == env && w.item.state.is_claimable())
            .filter(|w| w.claimed_at.is_none_or(|c| c.elapsed() >= reclaim))
            .min_by(|a, b| a.item.created_at.cmp(&b.item.created_at))
            .map(|w| w.item.id.clone())?;
        let token = new_token(crate::auth::SESSIONS_TOKEN_PREFIX);
        let hash = sandstone_db::token_hash(&token);
        let w = st.work.get_mut(&id)?;
        let old = w.token_hash.replace(hash.clone());
        w.claimed_at = Some(Instant::now());
        let session = w.item.data.id.clone();
        let mut item = w.item.clone();
        item.secret = Some(secret_for(&token));
        if let Some(old) = old {
            st.tokens.remove(&old);
        }
        st.tokens.insert(hash, (session, id));
        Some(item)
    }

    fn with<T>(
        &self,
        env: &str,
        id: &str,
        f: impl FnOnce(&mut Work) -> ApiResult<T>,
    ) -> ApiResult<T> {
        let mut st = self.state();
        let w = st
            .work
            .get_mut(id)
            .filter(|w| w.item.environment_id == env)
            .ok_or_else(|| ApiError::not_found("work", id))?;
        f(w)
    }

    pub(crate) async fn ack(&self, env: &str, id: &str) -> ApiResult<WorkItem> {
        let ttl = self.lease_ttl;
        let item = self.with(env, id, |w| {
            let state = w.item.state;
            let next = state
                .ack()
                .ok_or_else(|| ApiError::conflict(format!("work {id} is {state}")))?;
            if next != state {
                w.item.state = next;
                w.item.acknowledged_at = Some(now());
                w.lease_until = Some(Instant::now() + ttl);
            }
            Ok(w.item.clone())
        })?;
        self.save(id).await?;
        Ok(item)
    }

    pub(crate) async fn heartbeat(
        &self,
        env: &str,
        id: &str,
        expected: Option<&str>,
        desired_ttl: Option<u64>,
    ) -> ApiResult<WorkHeartbeat> {
        let ttl = desired_ttl
            .map(|s| Duration::from_secs(s.clamp(1, 3600)))
            .unwrap_or(self.lease_ttl);
        let out = self.with(env, id, |w| {
            let state = w.item.state;
            // A stopping or stopped item is not compared: the worker must
            // learn it should stop.
            if state.stop_requested() {
                return Ok(WorkHeartbeat {
                    tag: WorkHeartbeatTag,
                    last_heartbeat: w.item.latest_heartbeat_at.clone().unwrap_or_default(),
                    lease_extended: false,
                    state,
                    ttl_seconds: ttl.as_secs(),
                    extra: Extra::new(),
                });
            }
            if !state.can_heartbeat() {
                return Err(ApiError::conflict(format!(
                    "work {id} has not been acknowledged"
                )));
            }
            let stored = w
                .item
                .latest_heartbeat_at
                .as_deref()
                .unwrap_or(NO_HEARTBEAT);
            if expected != Some(stored) {
                return Err(ApiError::HeartbeatPrecondition {
                    work: id.to_string(),
                    current: Box::new(w.lease_state(ttl)),
                });
            }
            let t = now();
            w.item.latest_heartbeat_at = Some(t.clone());
            if w.item.started_at.is_none() {
                w.item.started_at = Some(t.clone());
            }
            w.item.state = WorkState::Active;
            w.lease_until = Some(Instant::now() + ttl);
            Ok(WorkHeartbeat {
                tag: WorkHeartbeatTag,
                last_heartbeat: t,
                lease_extended: true,
                state: WorkState::Active,
                ttl_seconds: ttl.as_secs(),
                extra: Extra::new(),
            })
        })?;
        if out.lease_extended {
            self.save(id).await?;
        }
        Ok(out)
    }

    pub(crate) async fn stop(&self, env: &str, id: &str, force: bool) -> ApiResult<WorkItem> {
        let item = self.with(env, id, |w| {
            if !w.stop(force) {
                return Err(ApiError::AlreadyStopped(id.to_string()));
            }
            Ok(w.item.clone())
        })?;
        self.save(id).await?;
        Ok(item)
    }

    /// Stops an environment's live items (the environment is deleted).
    pub(crate) async fn stop_environment(&self, env: &str) -> ApiResult<()> {
        self.stop_live(|w| w.item.environment_id == env, true).await
    }

    /// Stops a session's live items (archive, delete).
    pub(crate) async fn stop_session(&self, session: &str, force: bool) -> ApiResult<()> {
        self.stop_live(|w| w.item.data.id == session, force).await
    }

    async fn stop_live(&self, which: impl Fn(&Work) -> bool, force: bool) -> ApiResult<()> {
        let ids: Vec<String> = self
            .state()
            .work
            .values_mut()
            .filter(|w| which(w) && w.item.state.is_live())
            .map(|w| {
                w.stop(force);
                w.item.id.clone()
            })
            .collect();
        for id in ids {
            self.save(&id).await?;
        }
        Ok(())
    }

    /// An environment's items, newest first.
    pub(crate) fn list(&self, env: &str) -> Vec<WorkItem> {
        let st = self.state();
        let mut out: Vec<WorkItem> = st
            .work
            .values()
            .filter(|w| w.item.environment_id == env)
            .map(|w| w.item.clone())
            .collect();
        out.sort_by(|a, b| b.created_at.cmp(&a.created_at));
        out
    }

    pub(crate) fn item(&self, env: &str, id: &str) -> ApiResult<WorkItem> {
        self.with(env, id, |w| Ok(w.item.clone()))
    }

    pub(crate) async fn update(&self, env: &str, id: &str, body: &Value) -> ApiResult<WorkItem> {
        let item = self.with(env, id, |w| {
            let current = json!(w.item.metadata);
            let merged = merge_metadata(&current, &body["metadata"], "metadata")?;
            w.item.metadata = serde_json::from_value(merged)
                .map_err(|e| ApiError::invalid(format!("metadata: {e}")))?;
            Ok(w.item.clone())
        })?;
        self.save(id).await?;
        Ok(item)
    }

    pub(crate) fn stats(&self, env: &str) -> WorkQueueStats {
        let st = self.state();
        let queued: Vec<&Work> = st
            .work
            .values()
            .filter(|w| w.item.environment_id == env && w.item.state.is_claimable())
            .collect();
        let pending = queued.iter().filter(|w| w.claimed_at.is_some()).count();
        let oldest = queued.iter().map(|w| &w.item.created_at).min().cloned();
        let polling = st
            .pollers
            .get(env)
            .map(|p| p.values().filter(|t| t.elapsed() < POLLING_WINDOW).count())
            .unwrap_or(0);
        WorkQueueStats {
            tag: WorkQueueStatsTag,
            depth: (queued.len() - pending) as u64,
            pending: pending as u64,
            oldest_queued_at: oldest,
            workers_polling: Some(polling as u64),
            extra: Extra::new(),
        }
    }

    /// The session and work item a sessions token (by hash) was issued
    /// with, while that item is live.
    pub(crate) fn session_of_token(&self, hash: &str) -> ApiResult<(String, String)> {
        let st = self.state();
        let (session, work) = st
            .tokens
            .get(hash)
            .cloned()
            .ok_or_else(|| ApiError::unauthorized("invalid sessions token"))?;
        match st.work.get(&work) {
            Some(w) if w.item.state.is_live() => Ok((session, work)),
            _ => Err(ApiError::unauthorized(
                "this sessions token's work item has stopped",
            )),
        }
    }

    /// Stops the items whose lease ran out.
    pub(crate) async fn expire(&self) -> Vec<Expired> {
        let expired: Vec<(String, Expired)> = {
            let mut st = self.state();
            let now_i = Instant::now();
            st.work
                .values_mut()
                .filter(|w| w.item.state.holds_lease())
                .filter(|w| w.lease_until.is_some_and(|t| t <= now_i))
                .map(|w| {
                    let requeue = w.item.state.requeue_on_expiry();
                    w.stop(true);
                    let e = Expired {
                        environment: w.item.environment_id.clone(),
                        session: w.item.data.id.clone(),
                        requeue,
                    };
                    (w.item.id.clone(), e)
                })
                .collect()
        };
        let mut out = Vec::new();
        for (id, e) in expired {
            tracing::warn!(work = %id, session = %e.session, requeue = e.requeue, "work lease expired");
            let _ = self.save(&id).await;
            out.push(e);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A queue on a scratch database (PostgreSQL when the tests run on
    /// it), kept as long as the queue.
    async fn queue(ttl: Duration) -> (WorkQueue, sandstone_db::testing::Scratch) {
        let scratch = sandstone_db::testing::Scratch::new().await;
        (
            WorkQueue::load(scratch.open().await, ttl).await.unwrap(),
            scratch,
        )
    }

    fn now_poll() -> Poll {
        Poll {
            block: None,
            reclaim: DEFAULT_RECLAIM,
            worker: Some("w1".into()),
        }
    }

    #[tokio::test]
    async fn an_item_goes_from_queued_to_stopped_through_its_transitions() {
        let (q, _db) = queue(Duration::from_secs(30)).await;
        let item = q.enqueue("env", "sesn").await.unwrap().unwrap();
        // One live item per session.
        assert!(q.enqueue("env", "sesn").await.unwrap().is_none());
        assert_eq!(q.stats("env").depth, 1);
        let claimed = q.poll("env", &now_poll()).await.unwrap().unwrap();
        assert_eq!(claimed.id, item.id);
        assert!(claimed.secret.is_some());
        assert!(q.poll("env", &now_poll()).await.unwrap().is_none());
        assert_eq!(
            (q.stats("env").pending, q.stats("env").workers_polling),
            (1, Some(1))
        );
        // A heartbeat before the ack is refused; the ack starts the item.
        assert!(
            q.heartbeat("env", &item.id, Some(NO_HEARTBEAT), None)
                .await
                .is_err()
        );
        assert_eq!(
            q.ack("env", &item.id).await.unwrap().state,
            WorkState::Starting
        );
        // A wrong expectation is the 412; the right one extends the lease.
        let stale = q.heartbeat("env", &item.id, Some("then"), None).await;
        assert!(matches!(stale, Err(ApiError::HeartbeatPrecondition { .. })));
        let hb = q
            .heartbeat("env", &item.id, Some(NO_HEARTBEAT), Some(5))
            .await
            .unwrap();
        assert_eq!(
            (hb.state, hb.lease_extended, hb.ttl_seconds),
            (WorkState::Active, true, 5)
        );
        // A graceful stop is seen on the next heartbeat, whatever it expects.
        let stopping = q.stop("env", &item.id, false).await.unwrap();
        assert_eq!(stopping.state, WorkState::Stopping);
        let hb = q.heartbeat("env", &item.id, Some("x"), None).await.unwrap();
        assert_eq!((hb.state, hb.lease_extended), (WorkState::Stopping, false));
        assert_eq!(
            q.stop("env", &item.id, true).await.unwrap().state,
            WorkState::Stopped
        );
        assert!(matches!(
            q.stop("env", &item.id, true).await,
            Err(ApiError::AlreadyStopped(_))
        ));
        // Stopped, the session may be queued again.
        assert!(q.enqueue("env", "sesn").await.unwrap().is_some());
    }

    #[tokio::test]
    async fn a_lease_that_runs_out_stops_the_item_and_asks_for_a_requeue() {
        let (q, _db) = queue(Duration::from_millis(1)).await;
        let item = q.enqueue("env", "sesn").await.unwrap().unwrap();
        q.poll("env", &now_poll()).await.unwrap();
        q.ack("env", &item.id).await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        let expired = q.expire().await;
        assert_eq!(expired.len(), 1);
        assert!(expired[0].requeue && expired[0].session == "sesn");
        assert_eq!(q.item("env", &item.id).unwrap().state, WorkState::Stopped);
        let token = q.state().tokens.keys().next().cloned().unwrap();
        assert!(
            q.session_of_token(&token).is_err(),
            "a stopped item's token"
        );
    }
}
