//! The `self_hosted` work queue (cma-protocol §1.3–1.4): one live work
//! item per session; `poll` long-polls and claims (an un-acked claim goes
//! to another poller after `reclaim_older_than_ms`), hands out a sessions
//! token in `secret` (only on poll); `ack` starts it; heartbeats extend a
//! lease with an exact-echo precondition (412 otherwise); a lease that
//! runs out stops the item and queues the session again; `stop` is
//! graceful (`stopping`, seen on the next heartbeat) or forced.
//!
//! The items live in the database only (`ma_work`), so a worker may talk
//! to any node: a claim is one conditional statement (PostgreSQL skips
//! rows another poll holds), every other change a compare-and-set on the
//! row's version, retried on the newer row — so of two nodes expiring one
//! lease, one stops the item and queues its session again, the other finds
//! it stopped. Leases are wall-clock deadlines (Unix ms) every node can
//! compare. What stays in memory is per node: who polled lately (for
//! `workers_polling`) and the long-pollers' wake-ups.

use crate::error::{ApiError, ApiResult};
use crate::ids::{new_id, new_token, now};
use crate::lock;
use crate::notify::{Notifier, Signal};
use crate::validate::merge_metadata;
use base64::Engine;
use sandstone_agents_api::{
    Extra, NO_HEARTBEAT, WorkData, WorkHeartbeat, WorkHeartbeatTag, WorkItem, WorkKind,
    WorkLeaseState, WorkQueueStats, WorkQueueStatsTag, WorkState, WorkTag,
};
use sandstone_db::agents::{AgentsStore, WorkOf, WorkRow};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// Workers that polled this recently count in `workers_polling`.
const POLLING_WINDOW: Duration = Duration::from_secs(30);
pub(crate) const DEFAULT_RECLAIM: Duration = Duration::from_millis(5000);
/// A change that keeps losing its compare-and-set is a bug, not load.
const CAS_TRIES: usize = 100;

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

fn now_ms() -> i64 {
    sandstone_api::timefmt::now_us() / 1000
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn lease_state(w: &WorkRow, ttl: Duration) -> WorkLeaseState {
    WorkLeaseState {
        state: w.item.state,
        ttl_seconds: ttl.as_secs(),
        last_heartbeat: w.item.latest_heartbeat_at.clone(),
        lease_extended: false,
        extra: Extra::new(),
    }
}

/// Applies a stop (see [`WorkState::stop`]); `false` if it was already
/// stopped.
fn stop_row(w: &mut WorkRow, force: bool) -> bool {
    let Some(next) = w.item.state.stop(force) else {
        return false;
    };
    let t = now();
    if next == WorkState::Stopped {
        w.item.stopped_at = Some(t);
        w.lease_expires_ms = None;
    } else if w.item.state != WorkState::Stopping {
        w.item.stop_requested_at = Some(t);
    }
    w.item.state = next;
    true
}

/// An item whose lease ran out (this node stopped it).
pub(crate) struct Expired {
    pub environment: String,
    pub session: String,
    /// Whether its session should be queued again.
    pub requeue: bool,
}

#[derive(Default)]
struct QueueState {
    /// Per environment: worker id → last poll (on this node).
    pollers: HashMap<String, HashMap<String, Instant>>,
    wake: HashMap<String, Arc<Notify>>,
    /// Wakes so far (work queued anywhere, or everyone told to look).
    wakes: u64,
    /// Per environment: when a claim last found nothing, and `wakes` then.
    found_empty: HashMap<String, (u64, Instant)>,
}

/// How long a queue that a claim found empty, with no wake since, is taken
/// to be empty still: a thousand idle pollers re-polling each second then
/// cost the database a few reads a second, not a thousand. What only time
/// makes claimable (a claim older than `reclaim_older_than_ms`) waits at
/// most this much longer.
const EMPTY_FOR: Duration = Duration::from_millis(200);

pub(crate) struct WorkQueue {
    store: Arc<dyn AgentsStore>,
    notifier: Arc<Notifier>,
    lease_ttl: Duration,
    state: Mutex<QueueState>,
}

impl WorkQueue {
    pub(crate) fn new(
        store: Arc<dyn AgentsStore>,
        notifier: Arc<Notifier>,
        lease_ttl: Duration,
    ) -> WorkQueue {
        WorkQueue {
            store,
            notifier,
            lease_ttl,
            state: Mutex::default(),
        }
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

    /// Work was queued in `env` (here or on another node): one poller
    /// here looks. One item, one poller: waking them all would only have
    /// the rest find nothing.
    pub(crate) fn queued(&self, env: &str) {
        let wake = {
            let mut st = self.state();
            st.wakes += 1;
            st.wake.entry(env.to_string()).or_default().clone()
        };
        wake.notify_one();
    }

    /// Every poller here looks again (signals may have been missed).
    pub(crate) fn wake_all(&self) {
        let mut st = self.state();
        st.wakes += 1;
        for w in st.wake.values() {
            w.notify_waiters();
        }
    }

    /// Whether a claim in `env` would find nothing: one did just now, and
    /// nothing was queued since.
    fn known_empty(&self, env: &str) -> bool {
        let st = self.state();
        st.found_empty
            .get(env)
            .is_some_and(|(wakes, at)| *wakes == st.wakes && at.elapsed() < EMPTY_FOR)
    }

    fn found_empty(&self, env: &str, wakes: u64) {
        self.state()
            .found_empty
            .insert(env.to_string(), (wakes, Instant::now()));
    }

    /// Queues a new work item for `session`, unless it has a live one
    /// (the database's unique index on live items decides, across nodes).
    pub(crate) async fn enqueue(&self, env: &str, session: &str) -> ApiResult<Option<WorkItem>> {
        let item = WorkItem {
            tag: WorkTag,
            id: new_id("work"),
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
        let row = WorkRow {
            item: item.clone(),
            token_hash: None,
            claimed_ms: None,
            lease_expires_ms: None,
            version: 0,
        };
        if !self.store.insert_work(&row).await? {
            return Ok(None);
        }
        self.queued(env);
        self.notifier
            .publish(Signal::Work {
                environment: env.to_string(),
            })
            .await;
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
            if !self.known_empty(env) {
                let wakes = self.state().wakes;
                match self.claim(env, p.reclaim).await? {
                    Some(item) => return Ok(Some(item)),
                    None => self.found_empty(env, wakes),
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            // Work queued anywhere wakes a poller here (see `queued`): one
            // that waited out its time without a wake has nothing to
            // claim, and looking again would only load the database.
            if left.is_zero() || tokio::time::timeout(left, notified).await.is_err() {
                return Ok(None);
            }
        }
    }

    /// Claims the oldest claimable item: a fresh sessions token each time.
    async fn claim(&self, env: &str, reclaim: Duration) -> ApiResult<Option<WorkItem>> {
        let token = new_token(crate::auth::SESSIONS_TOKEN_PREFIX);
        let hash = sandstone_db::token_hash(&token);
        let t = now_ms();
        let row = self
            .store
            .claim_work(env, t, t.saturating_sub(ms(reclaim)), &hash)
            .await?;
        Ok(row.map(|r| {
            let mut item = r.item;
            item.secret = Some(secret_for(&token));
            item
        }))
    }

    async fn row(&self, env: &str, id: &str) -> ApiResult<WorkRow> {
        self.store
            .get_work(id)
            .await?
            .filter(|w| w.item.environment_id == env)
            .ok_or_else(|| ApiError::not_found("work", id))
    }

    /// Applies `f` to the item and writes it if it changed, retrying on
    /// the newer row when another node changed it first. `f` answers what
    /// to return and whether to write.
    async fn change<T>(
        &self,
        env: &str,
        id: &str,
        f: impl Fn(&mut WorkRow) -> ApiResult<(T, bool)>,
    ) -> ApiResult<T> {
        for _ in 0..CAS_TRIES {
            let mut w = self.row(env, id).await?;
            let (out, write) = f(&mut w)?;
            if !write || self.store.replace_work(&w).await? {
                return Ok(out);
            }
        }
        Err(ApiError::internal(format!("work {id} keeps changing")))
    }

    pub(crate) async fn ack(&self, env: &str, id: &str) -> ApiResult<WorkItem> {
        let ttl = ms(self.lease_ttl);
        self.change(env, id, |w| {
            let state = w.item.state;
            let next = state
                .ack()
                .ok_or_else(|| ApiError::conflict(format!("work {id} is {state}")))?;
            let changed = next != state;
            if changed {
                w.item.state = next;
                w.item.acknowledged_at = Some(now());
                w.lease_expires_ms = Some(now_ms() + ttl);
            }
            Ok((w.item.clone(), changed))
        })
        .await
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
        self.change(env, id, |w| {
            let state = w.item.state;
            // A stopping or stopped item is not compared: the worker must
            // learn it should stop.
            if state.stop_requested() {
                let hb = WorkHeartbeat {
                    tag: WorkHeartbeatTag,
                    last_heartbeat: w.item.latest_heartbeat_at.clone().unwrap_or_default(),
                    lease_extended: false,
                    state,
                    ttl_seconds: ttl.as_secs(),
                    extra: Extra::new(),
                };
                return Ok((hb, false));
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
                    current: Box::new(lease_state(w, ttl)),
                });
            }
            let t = now();
            w.item.latest_heartbeat_at = Some(t.clone());
            if w.item.started_at.is_none() {
                w.item.started_at = Some(t.clone());
            }
            w.item.state = WorkState::Active;
            w.lease_expires_ms = Some(now_ms() + ms(ttl));
            let hb = WorkHeartbeat {
                tag: WorkHeartbeatTag,
                last_heartbeat: t,
                lease_extended: true,
                state: WorkState::Active,
                ttl_seconds: ttl.as_secs(),
                extra: Extra::new(),
            };
            Ok((hb, true))
        })
        .await
    }

    pub(crate) async fn stop(&self, env: &str, id: &str, force: bool) -> ApiResult<WorkItem> {
        self.change(env, id, |w| {
            if !stop_row(w, force) {
                return Err(ApiError::AlreadyStopped(id.to_string()));
            }
            Ok((w.item.clone(), true))
        })
        .await
    }

    /// Stops an environment's live items (the environment is deleted).
    pub(crate) async fn stop_environment(&self, env: &str) -> ApiResult<()> {
        self.stop_live(WorkOf::Environment(env), true).await
    }

    /// Stops a session's live items (archive, delete).
    pub(crate) async fn stop_session(&self, session: &str, force: bool) -> ApiResult<()> {
        self.stop_live(WorkOf::LiveOfSession(session), force).await
    }

    async fn stop_live(&self, of: WorkOf<'_>, force: bool) -> ApiResult<()> {
        for w in self.store.list_work(of).await? {
            if w.item.state.is_live() {
                let env = w.item.environment_id.clone();
                // Stopped meanwhile (by another node) is as good.
                self.change(&env, &w.item.id, |w| Ok(((), stop_row(w, force))))
                    .await?;
            }
        }
        Ok(())
    }

    /// An environment's items, newest first.
    pub(crate) async fn list(&self, env: &str) -> ApiResult<Vec<WorkItem>> {
        let rows = self.store.list_work(WorkOf::Environment(env)).await?;
        Ok(rows.into_iter().map(|w| w.item).collect())
    }

    pub(crate) async fn item(&self, env: &str, id: &str) -> ApiResult<WorkItem> {
        Ok(self.row(env, id).await?.item)
    }

    pub(crate) async fn update(&self, env: &str, id: &str, body: &Value) -> ApiResult<WorkItem> {
        self.change(env, id, |w| {
            let current = json!(w.item.metadata);
            let merged = merge_metadata(&current, &body["metadata"], "metadata")?;
            w.item.metadata = serde_json::from_value(merged)
                .map_err(|e| ApiError::invalid(format!("metadata: {e}")))?;
            Ok((w.item.clone(), true))
        })
        .await
    }

    /// The queue's statistics; `workers_polling` counts the workers that
    /// polled this node.
    pub(crate) async fn stats(&self, env: &str) -> ApiResult<WorkQueueStats> {
        let rows = self.store.list_work(WorkOf::Environment(env)).await?;
        let queued: Vec<&WorkRow> = rows
            .iter()
            .filter(|w| w.item.state.is_claimable())
            .collect();
        let pending = queued.iter().filter(|w| w.claimed_ms.is_some()).count();
        let oldest = queued.iter().map(|w| &w.item.created_at).min().cloned();
        let polling = self
            .state()
            .pollers
            .get(env)
            .map(|p| p.values().filter(|t| t.elapsed() < POLLING_WINDOW).count())
            .unwrap_or(0);
        Ok(WorkQueueStats {
            tag: WorkQueueStatsTag,
            depth: (queued.len() - pending) as u64,
            pending: pending as u64,
            oldest_queued_at: oldest,
            workers_polling: Some(polling as u64),
            extra: Extra::new(),
        })
    }

    /// The session and work item a sessions token (by hash) was issued
    /// with, while that item is live.
    pub(crate) async fn session_of_token(&self, hash: &str) -> ApiResult<(String, String)> {
        let w = self
            .store
            .work_by_token(hash)
            .await?
            .ok_or_else(|| ApiError::unauthorized("invalid sessions token"))?;
        if !w.item.state.is_live() {
            return Err(ApiError::unauthorized(
                "this sessions token's work item has stopped",
            ));
        }
        Ok((w.item.data.id, w.item.id))
    }

    /// Stops the items whose lease ran out. Several nodes may look at
    /// once: each item is stopped (and reported) by the one whose
    /// compare-and-set wins.
    pub(crate) async fn expire(&self) -> ApiResult<Vec<Expired>> {
        let mut out = Vec::new();
        for mut w in self.store.expired_work(now_ms()).await? {
            let requeue = w.item.state.requeue_on_expiry();
            stop_row(&mut w, true);
            if !self.store.replace_work(&w).await? {
                continue;
            }
            tracing::warn!(work = %w.item.id, session = %w.item.data.id, requeue, "work lease expired");
            out.push(Expired {
                environment: w.item.environment_id,
                session: w.item.data.id,
                requeue,
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A queue on a scratch database (PostgreSQL when the tests run on
    /// it), kept as long as the queue.
    async fn queue(ttl: Duration) -> (WorkQueue, sandstone_db::testing::Scratch) {
        let scratch = sandstone_db::testing::Scratch::new().await;
        let store = scratch.open().await;
        let notifier = Arc::new(Notifier::new(store.clone(), "node-test"));
        (WorkQueue::new(store, notifier, ttl), scratch)
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
        assert_eq!(q.stats("env").await.unwrap().depth, 1);
        let claimed = q.poll("env", &now_poll()).await.unwrap().unwrap();
        assert_eq!(claimed.id, item.id);
        assert!(claimed.secret.is_some());
        assert!(q.poll("env", &now_poll()).await.unwrap().is_none());
        assert_eq!(
            {
                let s = q.stats("env").await.unwrap();
                (s.pending, s.workers_polling)
            },
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
        let expired = q.expire().await.unwrap();
        assert!(q.expire().await.unwrap().is_empty(), "expired once");
        assert_eq!(expired.len(), 1);
        assert!(expired[0].requeue && expired[0].session == "sesn");
        assert_eq!(
            q.item("env", &item.id).await.unwrap().state,
            WorkState::Stopped
        );
        let token = q
            .store
            .get_work(&item.id)
            .await
            .unwrap()
            .unwrap()
            .token_hash;
        assert!(
            q.session_of_token(&token.unwrap()).await.is_err(),
            "a stopped item's token"
        );
    }
}
