//! Sessions: one conversation of an agent (a snapshot of one version) in an
//! environment, with its status, its ordered events and the channels that
//! wake its readers and its turn driver. Every event is persisted before
//! anyone sees it. Creating, archiving and deleting a session also touch
//! the registry and the work queue, so those are [`Agents`] methods.
//!
//! The database is the source of truth; this component caches the
//! sessions this node has served. Events are immutable and numbered by the
//! store (0, 1, 2… with no gap, whichever node appends), so a cached
//! history is always a prefix of the stored one: a node catches up by
//! reading what follows its last event, in order, when another node says
//! it appended one (see [`crate::notify`]), and before it places one of its
//! own. A session's document is re-read when another node says it changed;
//! one this node has not seen is loaded on first use.

use crate::agents::{check_mcp, mcp_servers, model_config, tools};
use crate::error::{ApiError, ApiResult};
use crate::ids::{new_id, now};
use crate::notify::Signal;
use crate::registry::AGENT;
use crate::validate::typed;
use crate::validate::{list_field, merge_metadata, opt_string, required_string};
use crate::{Agents, StartError, lock, parse_stored};
use sandstone_agents_api::{
    Access, AgentTag, Deleted, Extra, KnownEvent, NoFields, Session as SessionDoc, SessionAgent,
    SessionEvent, SessionStatus,
};
use sandstone_db::agents::AgentsStore;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::{Notify, broadcast};

pub(crate) const SESSION: &str = "session";
/// Events are stored apart from documents; this names them in errors.
const EVENT: &str = "session event";

/// A session with its events and the channels that wake its readers.
pub(crate) struct Session {
    pub doc: SessionDoc,
    pub events: Vec<Arc<SessionEvent>>,
    /// Events already part of a model request: what comes after is new.
    pub consumed: usize,
    pub live: broadcast::Sender<Arc<SessionEvent>>,
    /// Wakes the session's turn driver.
    pub wake: Arc<Notify>,
    /// Cancels its model request (`user.interrupt`).
    pub cancel: Arc<Notify>,
    /// Serialises appends to its history (store, then memory and streams),
    /// and a sender's check with its appends.
    pub appends: Arc<tokio::sync::Mutex<()>>,
    pub driving: bool,
}

impl Session {
    fn new(doc: SessionDoc, events: Vec<Arc<SessionEvent>>, consumed: usize) -> Session {
        Session {
            doc,
            events,
            consumed,
            live: broadcast::channel(1024).0,
            wake: Arc::new(Notify::new()),
            cancel: Arc::new(Notify::new()),
            appends: Arc::default(),
            driving: false,
        }
    }

    pub fn status(&self) -> SessionStatus {
        self.doc.status
    }
}

/// How a session is stored: its document and how far the model has read.
#[derive(serde::Deserialize)]
struct Stored {
    doc: SessionDoc,
    #[serde(default)]
    consumed: usize,
}

#[derive(Default)]
pub struct SessionFilter {
    pub include_archived: bool,
    pub agent_id: Option<String>,
    pub statuses: Vec<String>,
    pub ascending: bool,
}

pub(crate) struct Sessions {
    pub(crate) store: Arc<dyn AgentsStore>,
    notifier: Arc<crate::notify::Notifier>,
    state: Mutex<BTreeMap<String, Session>>,
}

/// A session's document and events as stored.
async fn read(
    store: &dyn AgentsStore,
    id: &str,
) -> Result<Option<(Stored, Vec<Arc<SessionEvent>>)>, StartError> {
    let Some(doc) = store.get_doc(SESSION, id).await? else {
        return Ok(None);
    };
    let s: Stored = parse_stored(SESSION, doc)?;
    let events = store
        .load_events(id, -1)
        .await?
        .into_iter()
        .map(|(_, e)| parse_stored::<SessionEvent>(EVENT, e).map(Arc::new))
        .collect::<Result<_, _>>()?;
    Ok(Some((s, events)))
}

impl Sessions {
    /// Caches every stored session at start (one that does not parse
    /// stops it).
    pub(crate) async fn load(
        store: Arc<dyn AgentsStore>,
        notifier: Arc<crate::notify::Notifier>,
    ) -> Result<Sessions, StartError> {
        let mut all = BTreeMap::new();
        for s in store.load_docs(SESSION).await? {
            let s: Stored = parse_stored(SESSION, s)?;
            let id = s.doc.id.clone();
            if let Some((s, events)) = read(&*store, &id).await? {
                all.insert(id, Session::new(s.doc, events, s.consumed));
            }
        }
        Ok(Sessions {
            store,
            notifier,
            state: Mutex::new(all),
        })
    }

    /// The sessions whose turn was running (to drive again after a start).
    pub(crate) fn running(&self) -> Vec<String> {
        self.state()
            .iter()
            .filter(|(_, s)| s.status() == SessionStatus::Running)
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Caches session `id` if this node has not seen it (another node
    /// made it); not found when it does not exist.
    pub(crate) async fn ensure(&self, id: &str) -> ApiResult<()> {
        if self.state().contains_key(id) {
            return Ok(());
        }
        let (s, events) = read(&*self.store, id)
            .await?
            .ok_or_else(|| ApiError::not_found("session", id))?;
        self.state()
            .entry(id.to_string())
            .or_insert_with(|| Session::new(s.doc, events, s.consumed));
        Ok(())
    }

    /// Session `id`'s document was written (maybe by another node):
    /// re-read it (a deleted session leaves the cache, its streams told
    /// so).
    pub(crate) async fn refresh(&self, id: &str) -> ApiResult<()> {
        if !self.state().contains_key(id) {
            return Ok(());
        }
        match self.store.get_doc(SESSION, id).await? {
            Some(doc) => {
                let s: Stored = parse_stored(SESSION, doc)?;
                let _ = self.with(id, |c| {
                    c.doc = s.doc;
                    // Only ever forward: a read that raced this node's own
                    // `consume` must not offer the model the same input twice.
                    c.consumed = c.consumed.max(s.consumed);
                });
            }
            None => {
                if let Some(s) = self.state().remove(id) {
                    let _ = s.live.send(deleted_event());
                }
            }
        }
        Ok(())
    }

    /// Sessions this node caches.
    pub(crate) fn cached(&self) -> Vec<String> {
        self.state().keys().cloned().collect()
    }

    /// Another node appended to session `id`: read what follows the
    /// cached history, in order, and show it to this node's streams.
    pub(crate) async fn catch_up(&self, id: &str) -> ApiResult<()> {
        let Ok(appends) = self.appends_of(id) else {
            return Ok(());
        };
        let _one = appends.lock().await;
        self.catch_up_locked(id).await
    }

    /// `catch_up` with the session's append lock held.
    async fn catch_up_locked(&self, id: &str) -> ApiResult<()> {
        let have = self.event_count(id) as i64;
        let more = self.store.load_events(id, have - 1).await?;
        let more: Vec<(i64, Arc<SessionEvent>)> = more
            .into_iter()
            .map(|(seq, e)| Ok((seq, Arc::new(parse_stored::<SessionEvent>(EVENT, e)?))))
            .collect::<Result<_, StartError>>()?;
        self.with(id, |s| {
            for (seq, ev) in more {
                // Only the next one fits: a concurrent catch-up may have
                // placed some already.
                if seq == s.events.len() as i64 {
                    s.events.push(ev.clone());
                    let _ = s.live.send(ev);
                }
            }
        })
    }

    pub(crate) fn state(&self) -> MutexGuard<'_, BTreeMap<String, Session>> {
        lock(&self.state)
    }

    /// Applies `f` to session `id` under the lock.
    pub(crate) fn with<T>(&self, id: &str, f: impl FnOnce(&mut Session) -> T) -> ApiResult<T> {
        let mut st = self.state();
        let s = st
            .get_mut(id)
            .ok_or_else(|| ApiError::not_found("session", id))?;
        Ok(f(s))
    }

    async fn insert(&self, id: &str, doc: SessionDoc) -> ApiResult<()> {
        self.store
            .put_doc(SESSION, id, &json!({"doc": doc, "consumed": 0}))
            .await?;
        self.state()
            .insert(id.to_string(), Session::new(doc, Vec::new(), 0));
        Ok(())
    }

    pub(crate) fn session(&self, id: &str) -> ApiResult<SessionDoc> {
        self.with(id, |s| session_view(&s.doc))
    }

    pub(crate) fn status(&self, id: &str) -> Option<SessionStatus> {
        self.state().get(id).map(Session::status)
    }

    /// The sessions of an environment.
    pub(crate) fn of_environment(&self, env: &str) -> Vec<String> {
        self.state()
            .iter()
            .filter(|(_, s)| s.doc.environment_id == env)
            .map(|(id, _)| id.clone())
            .collect()
    }

    pub(crate) fn environment(&self, id: &str) -> Option<String> {
        self.state().get(id).map(|s| s.doc.environment_id.clone())
    }

    /// Sessions from the store (every node's).
    pub(crate) async fn list(&self, q: &SessionFilter) -> ApiResult<Vec<SessionDoc>> {
        let stored = self.store.load_docs(SESSION).await?;
        let docs: Vec<SessionDoc> = stored
            .into_iter()
            .map(|d| parse_stored::<Stored>(SESSION, d).map(|s| s.doc))
            .collect::<Result<_, _>>()?;
        let mut all: Vec<SessionDoc> = docs
            .iter()
            .filter(|d| q.include_archived || d.archived_at.is_none())
            .filter(|d| q.agent_id.as_ref().is_none_or(|a| d.agent.id == *a))
            .filter(|d| q.statuses.is_empty() || q.statuses.iter().any(|s| d.status.as_str() == s))
            .map(session_view)
            .collect();
        all.sort_by(|a, b| a.created_at.cmp(&b.created_at));
        if !q.ascending {
            all.reverse();
        }
        Ok(all)
    }

    /// Applies `f` to a session's document and writes it through.
    pub(crate) async fn update_doc(
        &self,
        id: &str,
        f: impl FnOnce(&mut SessionDoc) -> ApiResult<()>,
    ) -> ApiResult<SessionDoc> {
        let (saved, doc) = self.with(id, |s| {
            f(&mut s.doc)?;
            s.doc.updated_at = now();
            let saved = json!({"doc": s.doc, "consumed": s.consumed});
            Ok::<_, ApiError>((saved, session_view(&s.doc)))
        })??;
        self.store.put_doc(SESSION, id, &saved).await?;
        Ok(doc)
    }

    /// Moves the session to `status`; whether it changed.
    pub(crate) async fn set_status(&self, id: &str, status: SessionStatus) -> ApiResult<bool> {
        if self.status(id) == Some(status) {
            return Ok(false);
        }
        self.update_doc(id, |d| {
            d.status = status;
            Ok(())
        })
        .await?;
        Ok(true)
    }

    /// Marks the first `upto` events as part of a model request.
    pub(crate) async fn consume(&self, id: &str, upto: usize) -> ApiResult<()> {
        self.with(id, |s| s.consumed = upto)?;
        self.update_doc(id, |_| Ok(())).await.map(|_| ())
    }

    fn not_running(&self, id: &str, what: &str) -> ApiResult<()> {
        if self
            .status(id)
            .ok_or_else(|| ApiError::not_found("session", id))?
            .can_archive()
        {
            return Ok(());
        }
        Err(ApiError::invalid(format!(
            "session {id} is running: send user.interrupt and wait for idle before {what}"
        )))
    }

    /// Whether the agent session `id` runs uses `skill`.
    pub(crate) fn uses_skill(&self, id: &str, skill: &str) -> bool {
        self.state()
            .get(id)
            .is_some_and(|s| s.doc.agent.skills.iter().any(|k| k.skill_id == skill))
    }

    /// How `store` is attached to session `id` (`read_write`,
    /// `read_only`), if it is: a sessions token reaches only its session's
    /// stores.
    pub(crate) fn store_access(&self, id: &str, store: &str) -> Option<Access> {
        let st = self.state();
        let r = st
            .get(id)?
            .doc
            .resources
            .iter()
            .find(|r| r.is_memory_store() && r.memory_store_id.as_deref() == Some(store))?;
        Some(r.access.unwrap_or(Access::ReadWrite))
    }

    /// Cancels a running model request of the session.
    pub(crate) fn interrupt(&self, id: &str) {
        if let Some(s) = self.state().get(id) {
            s.cancel.notify_waiters();
        }
    }

    /// Persists `ev` (with a new id and time) at the end of the session's
    /// history and shows it to live streams. The server's own events are
    /// built as JSON and checked against the model here.
    pub(crate) async fn emit(&self, session: &str, ev: Value) -> ApiResult<Arc<SessionEvent>> {
        let ev: SessionEvent = typed(ev)?;
        let appends = self.appends_of(session)?;
        let _one = appends.lock().await;
        self.emit_locked(session, ev, false).await
    }

    /// The lock that puts a session's appends in one order.
    pub(crate) fn appends_of(&self, session: &str) -> ApiResult<Arc<tokio::sync::Mutex<()>>> {
        self.with(session, |s| s.appends.clone())
    }

    /// `emit` with the session's append lock held: the event is stored at
    /// the next position first, and only then listed and streamed, so
    /// readers never see an event the store lacks, nor one out of order.
    /// The store numbers it; events other nodes appended before it are
    /// read and shown first. `input` tells the other nodes it may start a
    /// turn.
    pub(crate) async fn emit_locked(
        &self,
        session: &str,
        mut ev: SessionEvent,
        input: bool,
    ) -> ApiResult<Arc<SessionEvent>> {
        ev.id = Some(new_id("sevt"));
        ev.processed_at = Some(now());
        let ev = Arc::new(ev);
        let seq = self.store.append_event(session, &json!(*ev)).await?;
        if seq != self.event_count(session) as i64 {
            self.catch_up_locked(session).await?;
        } else {
            self.with(session, |s| {
                s.events.push(ev.clone());
                let _ = s.live.send(ev.clone());
            })?;
        }
        self.notifier
            .publish(Signal::Event {
                session: session.to_string(),
                seq,
                input,
            })
            .await;
        Ok(ev)
    }

    /// A session's events, of `types` when given.
    pub(crate) fn list_events(
        &self,
        session: &str,
        types: &[String],
        descending: bool,
    ) -> ApiResult<Vec<SessionEvent>> {
        let mut out: Vec<SessionEvent> = self.with(session, |s| {
            s.events
                .iter()
                .filter(|e| types.is_empty() || types.iter().any(|t| e.type_name() == t))
                .map(|e| (**e).clone())
                .collect()
        })?;
        if descending {
            out.reverse();
        }
        Ok(out)
    }

    pub(crate) fn subscribe(
        &self,
        session: &str,
    ) -> ApiResult<broadcast::Receiver<Arc<SessionEvent>>> {
        self.with(session, |s| s.live.subscribe())
    }

    /// How many events a session has (without copying its history).
    pub(crate) fn event_count(&self, session: &str) -> usize {
        self.state().get(session).map_or(0, |s| s.events.len())
    }

    pub(crate) fn events(&self, session: &str) -> Vec<Arc<SessionEvent>> {
        self.state()
            .get(session)
            .map(|s| s.events.clone())
            .unwrap_or_default()
    }
}

impl Agents {
    pub(crate) async fn create_session(self: &Arc<Self>, body: &Value) -> ApiResult<SessionDoc> {
        let env_id = required_string(body, "environment_id", 128)?;
        let env = self.registry.fresh_environment(&env_id).await?;
        if env.archived_at.is_some() {
            return Err(ApiError::invalid(format!(
                "environment_id: {env_id} is archived"
            )));
        }
        let agent_id = body["agent"]
            .as_str()
            .or(body["agent"]["id"].as_str())
            .unwrap_or_default();
        // An agent made on another node a moment ago is read in first (a
        // missing one is the error `session_agent` gives).
        let _ = self
            .registry
            .fresh(AGENT, &format!("{agent_id}@1"), |r| r.agent(agent_id, None))
            .await;
        let agent = self.session_agent(&body["agent"])?;
        let new = self
            .session_resources(&body["resources"], env.config.cloud().is_some())
            .await?;
        let vault_ids = list_field(body, "vault_ids")?;
        let vault_ids: Vec<String> = serde_json::from_value(vault_ids)
            .map_err(|_| ApiError::invalid("vault_ids: an array of vault ids"))?;
        let mcp_urls: Vec<&str> = agent.mcp_servers.iter().map(|s| s.url.as_str()).collect();
        self.vaults
            .check_session_vaults(&vault_ids, &mcp_urls)
            .await?;
        let t = now();
        let id = new_id("sesn");
        let doc = json!({
            "type": "session", "id": id, "status": SessionStatus::Idle, "agent": agent,
            "environment_id": env_id, "resources": new.resources,
            "vault_ids": vault_ids,
            "metadata": merge_metadata(&json!({}), &body["metadata"], "metadata")?,
            "title": opt_string(body, "title", 512)?,
            "stats": {"active_seconds": 0.0, "duration_seconds": 0.0},
            "usage": {"input_tokens": 0, "output_tokens": 0, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0},
            "outcome_evaluations": [], "budget": null, "deployment_id": null,
            "created_at": t, "updated_at": t, "archived_at": null,
        });
        let doc: SessionDoc = typed(doc)?;
        let initial = crate::events::validate_all(&body["initial_events"], "initial_events", true)?;
        self.sessions.insert(&id, doc).await?;
        let mut queued = Ok(());
        for (resource, token) in &new.tokens {
            queued = queued.and(self.vaults.seal_resource_token(&id, resource, token).await);
        }
        if let Err(e) = match queued {
            Ok(()) => self.queue_work(&env_id, &id).await,
            e => e,
        } {
            // A session nobody would ever serve is not left behind.
            self.sessions.state().remove(&id);
            let _ = self.sessions.store.delete_doc(SESSION, &id).await;
            for (resource, _) in &new.tokens {
                let _ = self.vaults.forget_resource_token(resource).await;
            }
            return Err(e);
        }
        if !initial.is_empty() {
            self.append_user_events(&id, initial).await?;
        }
        self.sessions.session(&id)
    }

    /// The agent a session runs: a snapshot of the named version, with a
    /// session's overrides applied.
    fn session_agent(&self, spec: &Value) -> ApiResult<SessionAgent> {
        let (id, version, overrides) = match spec {
            Value::String(id) => (id.clone(), None, None),
            Value::Object(o) => {
                let id = o
                    .get("id")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                match o.get("type").and_then(Value::as_str) {
                    Some("agent") | None => (id, o.get("version").and_then(Value::as_i64), None),
                    Some("agent_with_overrides") => {
                        (id, o.get("version").and_then(Value::as_i64), Some(spec))
                    }
                    Some(t) => {
                        return Err(ApiError::invalid(format!(
                            "agent.type: {t:?} is not agent or agent_with_overrides"
                        )));
                    }
                }
            }
            _ => {
                return Err(ApiError::invalid(
                    "agent: required, an agent id or {\"type\": \"agent\", \"id\"}",
                ));
            }
        };
        let agent = self
            .registry
            .agent(&id, version)
            .map_err(|_| ApiError::invalid(format!("agent: {id} does not exist")))?;
        if agent.archived_at.is_some() {
            return Err(ApiError::invalid(format!("agent: {id} is archived")));
        }
        let mut snap = SessionAgent {
            tag: AgentTag,
            id: agent.id,
            version: agent.version,
            name: agent.name,
            description: agent.description,
            model: agent.model,
            system: agent.system,
            tools: agent.tools,
            mcp_servers: agent.mcp_servers,
            skills: agent.skills,
            multiagent: agent.multiagent,
            execution_identity: agent.execution_identity,
            extra: Extra::new(),
        };
        if let Some(o) = overrides {
            if o.get("model").is_some() {
                snap.model = model_config(&o["model"])?;
            }
            if o.get("system").is_some() {
                snap.system = typed(opt_string(o, "system", 100_000)?)?;
            }
            if o.get("tools").is_some() {
                snap.tools = tools(&o["tools"])?;
            }
            if o.get("mcp_servers").is_some() {
                snap.mcp_servers = mcp_servers(&o["mcp_servers"])?;
            }
            check_mcp(&snap.tools, &snap.mcp_servers)?;
        }
        Ok(snap)
    }

    pub(crate) async fn update_session(&self, id: &str, body: &Value) -> ApiResult<SessionDoc> {
        if body.get("vault_ids").is_some() {
            return Err(ApiError::invalid(
                "vault_ids: cannot be changed after creation",
            ));
        }
        let mut changed = json!({});
        let title: Option<Option<String>> = body
            .get("title")
            .map(|_| typed(opt_string(body, "title", 512)?))
            .transpose()?;
        let doc = self
            .sessions
            .update_doc(id, |d| {
                if let Some(t) = title {
                    changed["title"] = json!(t);
                    d.title = t;
                }
                if !body["metadata"].is_null() {
                    let merged = merge_metadata(&json!(d.metadata), &body["metadata"], "metadata")?;
                    d.metadata = typed(merged.clone())?;
                    changed["metadata"] = merged;
                }
                let agent = &body["agent"];
                if agent.is_object()
                    && (agent.get("tools").is_some() || agent.get("mcp_servers").is_some())
                {
                    if agent.get("tools").is_some() {
                        d.agent.tools = tools(&agent["tools"])?;
                    }
                    if agent.get("mcp_servers").is_some() {
                        d.agent.mcp_servers = mcp_servers(&agent["mcp_servers"])?;
                    }
                    check_mcp(&d.agent.tools, &d.agent.mcp_servers)?;
                    changed["agent"] = json!(d.agent);
                }
                Ok(())
            })
            .await?;
        if changed.as_object().is_some_and(|m| !m.is_empty()) {
            let mut ev = json!({"type": "session.updated"});
            for (k, v) in changed.as_object().into_iter().flatten() {
                ev[k] = v.clone();
            }
            self.sessions.emit(id, ev).await?;
        }
        Ok(doc)
    }

    pub(crate) async fn archive_session(&self, id: &str) -> ApiResult<SessionDoc> {
        self.sessions.not_running(id, "archiving")?;
        let was = self.sessions.session(id)?;
        if was.archived_at.is_some() {
            return Ok(was);
        }
        let doc = self
            .sessions
            .update_doc(id, |d| {
                d.archived_at = Some(now());
                d.status = SessionStatus::Terminated;
                Ok(())
            })
            .await?;
        self.sessions
            .emit(id, json!({"type": "session.status_terminated"}))
            .await?;
        self.queue.stop_session(id, false).await?;
        Ok(doc)
    }

    pub(crate) async fn delete_session(&self, id: &str) -> ApiResult<Deleted> {
        self.sessions.not_running(id, "deleting")?;
        let gone_resources: Vec<String> = self
            .sessions
            .session(id)?
            .resources
            .into_iter()
            .filter_map(|r| r.id)
            .collect();
        self.queue.stop_session(id, true).await?;
        // Gone from the store first: if that fails the session is still
        // whole, in memory and on disk.
        self.sessions.store.delete_events(id).await?;
        self.sessions.store.delete_doc(SESSION, id).await?;
        let gone = self.sessions.state().remove(id);
        if let Some(s) = gone {
            let _ = s.live.send(deleted_event());
        }
        self.mcp.forget(id);
        // The session is gone already: a token the store could not drop is
        // reported, not turned into a failed delete of a deleted session.
        // It stays sealed; only the session's sandbox, while it exists,
        // names it.
        for r in gone_resources {
            if let Err(e) = self.vaults.forget_resource_token(&r).await {
                tracing::warn!(session = id, resource = %r, error = %e, "forgetting a deleted session's repository token");
            }
        }
        Ok(Deleted {
            id: id.to_string(),
            kind: "session_deleted".into(),
        })
    }
}

/// What a stream is last shown when its session is deleted.
fn deleted_event() -> Arc<SessionEvent> {
    let mut ev = SessionEvent::new(KnownEvent::SessionDeleted(NoFields::default()));
    ev.id = Some(new_id("sevt"));
    ev.processed_at = Some(now());
    Arc::new(ev)
}

/// A session as the API shows it: with its duration brought up to date.
fn session_view(doc: &SessionDoc) -> SessionDoc {
    let mut v = doc.clone();
    if let Some(c) = sandstone_api::timefmt::parse_rfc3339_us(&doc.created_at) {
        let now = sandstone_api::timefmt::now_us();
        v.stats.duration_seconds = ((now - c).max(0) as f64) / 1e6;
    }
    v
}
