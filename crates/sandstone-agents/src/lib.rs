//! The Claude Managed Agents control plane, served by `sandstone serve`
//! under `/v1`. Wire shapes follow Anthropic's API so the official SDKs and
//! workers work unchanged (see `reference/cma-protocol.md`); the shared
//! model is `sandstone-agents-api`.
//!
//! [`Agents`] composes components with one job each, every one with its own
//! state behind its own lock (never held across an await):
//! - [`registry`]: agents and their versions, environments and their keys;
//! - [`sessions`]: sessions, their ordered events and live streams;
//! - [`work`]: the work queue `self_hosted` environments' workers poll;
//! - [`cloud`]: `cloud` environments' work, claimed at once and served by
//!   the daemon's [`Executor`];
//! - [`memory`]: memory stores and memories; [`skills`]: skills and versions;
//! - [`vaults`]: vaults and their sealed credentials, and [`files`]: the
//!   Files API's uploads, both read from the store on every use;
//! - [`turn`]: the agent loop that calls an Anthropic-compatible Messages
//!   API ([`model`]), and MCP servers' tools ([`mcp_calls`], over the
//!   streamable HTTP client [`mcp`]).
//!
//! What spans components (a session queues work, an environment's delete
//! stops it) are [`Agents`] methods beside the resource they belong to.
//! HTTP is spoken only by [`http`] (the routes, and the one mapping of
//! [`error::ApiError`] to a status and Anthropic's error body) and [`auth`]
//! (the middleware that identifies the caller).
//! Every change is written through to the store before it is answered, so
//! a restart loses nothing: sessions are reloaded with their events and a
//! turn that was running is driven again from its history. A stored
//! document that does not parse stops the start with an error naming it.
//!
//! # Several nodes on one database
//!
//! The database is the source of truth, so any node answers any `/v1`
//! call: the work queue lives only there ([`work`]); events are numbered
//! by the store and cached histories catch up ([`sessions`]); the
//! registry, memory and skills are caches re-read when a document of
//! theirs is written on any node; [`notify`] carries the wake-ups
//! (PostgreSQL `LISTEN/NOTIFY`) to [`Agents::apply`]; and a session's turn
//! is driven by one node at a time, the one holding its claim in the
//! database ([`turn`]).

mod agents;
mod auth;
mod cloud;
mod environments;
mod error;
mod events;
mod files;
mod http;
mod ids;
mod mcp;
mod mcp_calls;
mod memory;
mod model;
mod notify;
pub mod outbound;
mod registry;
mod resources;
mod sessions;
mod skills;
mod teams;
mod turn;
mod validate;
pub mod vaults;
mod work;

pub use cloud::{Executor, Repository, SessionSetup, Unservable};
pub use http::router;
pub use outbound::Outbound;

use error::{ApiError, ApiResult};
use sandstone_db::agents::AgentsStore;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// What a server API key lets a request do: its role, in its team.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyGrant {
    pub role: sandstone_api::auth::Role,
    pub team: String,
}

/// Checks a server API key (the daemon's own keys): what it grants, or
/// `None` when it lets no request in.
pub type ApiKeyCheck =
    Arc<dyn Fn(String) -> futures_util::future::BoxFuture<'static, Option<KeyGrant>> + Send + Sync>;

#[derive(Clone)]
pub struct Config {
    /// Base URL of the Messages API (`…/v1/messages` is appended).
    pub model_base_url: String,
    /// Its key: a secret, never logged and never sent anywhere else.
    pub model_api_key: Option<String>,
    /// How long a work item's lease lasts without a heartbeat.
    pub lease_ttl: Duration,
    pub max_tokens: u32,
    /// Restricts the control plane's calls to MCP servers and token
    /// endpoints; `None` lets them go anywhere.
    pub outbound: Option<Outbound>,
    /// This node's name among the nodes sharing the database: it owns its
    /// claims on driving session turns under it. The same across restarts
    /// (a restarted node takes its turns back at once), unique among the
    /// nodes running at one time, without spaces.
    pub node: String,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("model_base_url", &self.model_base_url)
            .field(
                "model_api_key",
                &self.model_api_key.as_ref().map(|_| "[redacted]"),
            )
            .field("lease_ttl", &self.lease_ttl)
            .field("node", &self.node)
            .finish()
    }
}

pub struct Agents {
    notifier: Arc<notify::Notifier>,
    registry: registry::Registry,
    sessions: sessions::Sessions,
    queue: work::WorkQueue,
    memory: memory::Memories,
    skills: skills::Skills,
    vaults: vaults::Vaults,
    files: files::Files,
    owners: teams::Owners,
    mcp: mcp_calls::McpPool,
    config: Config,
    api_keys: ApiKeyCheck,
    http: model::Http,
    /// Serves `cloud` environments; unset, their work waits queued.
    executor: std::sync::OnceLock<Arc<dyn Executor>>,
}

/// Why the control plane did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("managed agents store: {0}")]
    Store(#[from] sandstone_db::Error),
    /// A stored document that does not fit the model: refusing to start
    /// is better than forgetting the resource.
    #[error("managed agents store: {kind} {id} is corrupt: {message}")]
    Corrupt {
        kind: &'static str,
        id: String,
        message: String,
    },
}

impl Agents {
    /// Loads every component's state from the store and starts the
    /// background tasks (lease expiry, and the turns that were running at
    /// shutdown).
    pub async fn start(
        store: Arc<dyn AgentsStore>,
        config: Config,
        api_keys: ApiKeyCheck,
        sealer: Arc<sandstone_db::secrets::Sealer>,
    ) -> Result<Arc<Agents>, StartError> {
        let notifier = Arc::new(notify::Notifier::new(store.clone(), &config.node));
        let registry = registry::Registry::load(store.clone()).await?;
        let sessions = sessions::Sessions::load(store.clone(), notifier.clone()).await?;
        let queue = work::WorkQueue::new(store.clone(), notifier.clone(), config.lease_ttl);
        let memory = memory::Memories::load(store.clone()).await?;
        let skills = skills::Skills::load(store.clone()).await?;
        let vaults = vaults::Vaults::new(store.clone(), sealer);
        let owners = teams::Owners::load(store.clone()).await?;
        let files = files::Files::new(store);
        let running = sessions.running();
        let agents = Arc::new(Agents {
            notifier,
            registry,
            sessions,
            queue,
            memory,
            skills,
            vaults,
            files,
            owners,
            mcp: mcp_calls::McpPool::new(config.outbound.clone()),
            config,
            api_keys,
            http: model::Http::default(),
            executor: std::sync::OnceLock::new(),
        });
        agents.notifier.spawn_listener(Arc::downgrade(&agents));
        spawn_lease_expiry(agents.clone());
        for id in running {
            turn::drive(agents.clone(), &id);
        }
        Ok(agents)
    }

    /// The team that made a top-level object (an environment, say).
    pub async fn team_of(&self, id: &str) -> ApiResult<String> {
        self.owners.team_of(id).await
    }

    /// Queues work for `session` in `env` unless it has a live item or the
    /// environment is gone; a `cloud` environment's is served at once.
    pub(crate) async fn queue_work(self: &Arc<Self>, env: &str, session: &str) -> ApiResult<()> {
        if self.registry.has_environment(env) && self.queue.enqueue(env, session).await?.is_some() {
            self.dispatch(env).await;
        }
        Ok(())
    }

    /// Items whose lease ran out are stopped and, unless they were being
    /// stopped anyway, their sessions queued again (another worker picks
    /// them up).
    async fn expire_leases(self: &Arc<Self>) {
        let expired = match self.queue.expire().await {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %e, "work lease expiry");
                return;
            }
        };
        for e in expired {
            // The session may have been made on another node.
            let _ = self.sessions.ensure(&e.session).await;
            let alive = self
                .sessions
                .status(&e.session)
                .is_some_and(|s| s.accepts_events());
            if e.requeue && alive {
                let _ = self.queue_work(&e.environment, &e.session).await;
            }
        }
    }
}

impl Agents {
    /// Acts on what another node changed (see [`notify`]).
    pub(crate) async fn apply(self: &Arc<Self>, signal: notify::Signal) {
        use notify::Signal;
        let done = match signal {
            Signal::Work { environment } => {
                self.queue.queued(&environment);
                Ok(())
            }
            Signal::Event { session, input, .. } => {
                let caught = self.sessions.catch_up(&session).await;
                if input && caught.is_ok() && self.sessions.status(&session).is_some() {
                    turn::drive(self.clone(), &session);
                }
                caught
            }
            Signal::Doc { kind, id } => self.reread(&kind, &id).await,
            Signal::Resync => {
                self.queue.wake_all();
                let mut r = self.reread_all().await;
                for id in self.sessions.cached() {
                    r = r.and(self.sessions.refresh(&id).await);
                    r = r.and(self.sessions.catch_up(&id).await);
                }
                r
            }
        };
        if let Err(e) = done {
            tracing::warn!(error = %e, "applying another node's change");
        }
    }

    /// Re-reads the cache a document of `kind` belongs to.
    async fn reread(&self, kind: &str, id: &str) -> ApiResult<()> {
        match kind {
            sessions::SESSION => self.sessions.refresh(id).await,
            registry::AGENT | registry::ENVIRONMENT | registry::KEY => {
                Ok(self.registry.reload().await?)
            }
            memory::STORE | memory::MEMORY => Ok(self.memory.reload().await?),
            skills::SKILL | skills::VERSION => Ok(self.skills.reload().await?),
            _ => Ok(()),
        }
    }

    async fn reread_all(&self) -> ApiResult<()> {
        self.registry.reload().await?;
        self.memory.reload().await?;
        Ok(self.skills.reload().await?)
    }
}

fn spawn_lease_expiry(agents: Arc<Agents>) {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            agents.expire_leases().await;
        }
    });
}

/// Locks a component's state. A panic while it was held is a bug that
/// has already been reported; the state itself is never left half-changed
/// by one (changes are single inserts and assignments).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().expect("a control-plane lock is never poisoned")
}

/// Parses a stored document as `T`: at start, one that does not fit is an
/// error naming it.
pub(crate) fn parse_stored<T: serde::de::DeserializeOwned>(
    kind: &'static str,
    doc: serde_json::Value,
) -> Result<T, StartError> {
    let id = doc
        .get("id")
        .or_else(|| doc.get("doc").and_then(|d| d.get("id")))
        .and_then(|v| v.as_str())
        .unwrap_or("(no id)")
        .to_string();
    sandstone_agents_api::from_value(doc).map_err(|e| StartError::Corrupt {
        kind,
        id,
        message: e.to_string(),
    })
}

/// A stored document that does not parse, met while serving (a cache
/// reading again): the request fails, naming it.
impl From<StartError> for ApiError {
    fn from(e: StartError) -> Self {
        ApiError::internal(e.to_string())
    }
}

impl From<sandstone_db::Error> for ApiError {
    fn from(e: sandstone_db::Error) -> Self {
        ApiError::internal(format!("store: {e}"))
    }
}
