//! The Claude Managed Agents control plane, served by `sandstone serve`
//! under `/v1`: agents, environments with their keys, sessions and their
//! events, the `self_hosted` work queue that environment workers poll, and
//! the agent loop that calls an Anthropic-compatible Messages API. Wire
//! shapes follow Anthropic's API so the official SDKs and workers work
//! unchanged (see `reference/cma-protocol.md`).
//!
//! State lives in memory behind one lock (never held across an await) and
//! every change is written through to the store before it is answered, so
//! a restart loses nothing: sessions are reloaded with their events and a
//! turn that was running is driven again from its history.

mod auth;
mod error;
mod events;
mod http;
mod ids;
mod memory;
mod model;
mod resources;
mod skills;
mod turn;
mod work;

pub use http::router;

use sandstone_db::agents::AgentsStore;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, broadcast};

/// Checks a server API key (the daemon's own keys).
pub type ApiKeyCheck =
    Arc<dyn Fn(String) -> futures_util::future::BoxFuture<'static, bool> + Send + Sync>;

#[derive(Clone)]
pub struct Config {
    /// Base URL of the Messages API (`…/v1/messages` is appended).
    pub model_base_url: String,
    /// Its key: a secret, never logged and never sent anywhere else.
    pub model_api_key: Option<String>,
    /// How long a work item's lease lasts without a heartbeat.
    pub lease_ttl: Duration,
    pub max_tokens: u32,
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
            .finish()
    }
}

/// A session with its events and the channels that wake its readers.
struct Session {
    doc: Value,
    events: Vec<Arc<Value>>,
    /// Events already part of a model request: what comes after is new.
    consumed: usize,
    live: broadcast::Sender<Arc<Value>>,
    /// Wakes the session's turn driver.
    wake: Arc<Notify>,
    /// Cancels its model request (`user.interrupt`).
    cancel: Arc<Notify>,
    /// Serialises appends to its history (store, then memory and streams),
    /// and a sender's check with its appends.
    appends: Arc<tokio::sync::Mutex<()>>,
    driving: bool,
}

/// A work item: its public document and what only the server knows.
struct Work {
    doc: Value,
    /// Hash of the sessions token handed out with the last claim.
    token_hash: Option<String>,
    claimed_at: Option<std::time::Instant>,
    lease_until: Option<std::time::Instant>,
}

#[derive(Default)]
struct State {
    /// Every version of every agent, oldest first.
    agents: BTreeMap<String, Vec<Value>>,
    environments: BTreeMap<String, Value>,
    /// Environment keys by hash.
    keys: HashMap<String, Value>,
    sessions: BTreeMap<String, Session>,
    work: BTreeMap<String, Work>,
    stores: BTreeMap<String, Value>,
    memories: BTreeMap<String, Value>,
    skills: BTreeMap<String, Value>,
    /// Skill versions by id, with their archives.
    skill_versions: BTreeMap<String, (Value, Vec<u8>)>,
    /// Sessions tokens by hash: (session id, work id).
    tokens: HashMap<String, (String, String)>,
    /// Per environment: worker id → last poll.
    pollers: HashMap<String, HashMap<String, std::time::Instant>>,
    queue_wake: HashMap<String, Arc<Notify>>,
}

pub struct Agents {
    store: Arc<dyn AgentsStore>,
    state: Mutex<State>,
    config: Config,
    api_keys: ApiKeyCheck,
    http: reqwest::Client,
    /// Memory writes one at a time: a `content_sha256` precondition is
    /// checked and the write made with nothing in between.
    memory_writes: tokio::sync::Mutex<()>,
}

/// Persisted kinds of documents.
const AGENT: &str = "agent";
const ENVIRONMENT: &str = "environment";
const KEY: &str = "environment_key";
const SESSION: &str = "session";
const WORK: &str = "work";

impl Agents {
    /// Loads the state from the store and starts the background tasks
    /// (lease expiry, and the turns that were running at shutdown).
    pub async fn start(
        store: Arc<dyn AgentsStore>,
        config: Config,
        api_keys: ApiKeyCheck,
    ) -> anyhow::Result<Arc<Agents>> {
        let mut st = State::default();
        for a in store.load_docs(AGENT).await? {
            let id = a["id"].as_str().unwrap_or_default().to_string();
            st.agents.entry(id).or_default().push(a);
        }
        for versions in st.agents.values_mut() {
            versions.sort_by_key(|v| v["version"].as_i64());
        }
        for e in store.load_docs(ENVIRONMENT).await? {
            st.environments.insert(str_of(&e, "id"), e);
        }
        for s in store.load_docs(memory::STORE).await? {
            st.stores.insert(str_of(&s, "id"), s);
        }
        for m in store.load_docs(memory::MEMORY).await? {
            st.memories.insert(str_of(&m, "id"), m);
        }
        for s in store.load_docs(skills::SKILL).await? {
            st.skills.insert(str_of(&s, "id"), s);
        }
        for v in store.load_docs(skills::VERSION).await? {
            if let Some((id, version)) = skills::load_version(&v) {
                st.skill_versions.insert(id, version);
            }
        }
        for k in store.load_docs(KEY).await? {
            st.keys.insert(str_of(&k, "hash"), k);
        }
        for s in store.load_docs(SESSION).await? {
            let id = str_of(&s["doc"], "id");
            let events = store.load_events(&id).await?;
            let consumed = s["consumed"].as_u64().unwrap_or(0) as usize;
            st.sessions.insert(
                id,
                Session::new(
                    s["doc"].clone(),
                    events.into_iter().map(Arc::new).collect(),
                    consumed,
                ),
            );
        }
        for w in store.load_docs(WORK).await? {
            let token_hash = w["token_hash"].as_str().map(str::to_string);
            let doc = w["doc"].clone();
            if let Some(h) = &token_hash {
                st.tokens
                    .insert(h.clone(), (str_of(&doc["data"], "id"), str_of(&doc, "id")));
            }
            // Leases run on this process's clock: a restart grants a
            // fresh one rather than expiring every item at once.
            let lease_until = matches!(doc["state"].as_str(), Some("starting" | "active"))
                .then(|| std::time::Instant::now() + config.lease_ttl);
            st.work.insert(
                str_of(&doc, "id"),
                Work {
                    doc,
                    token_hash,
                    claimed_at: None,
                    lease_until,
                },
            );
        }
        let running: Vec<String> = st
            .sessions
            .iter()
            .filter(|(_, s)| s.doc["status"] == "running")
            .map(|(id, _)| id.clone())
            .collect();
        let agents = Arc::new(Agents {
            store,
            state: Mutex::new(st),
            config,
            api_keys,
            // No redirects: the model key must not follow one to another
            // host (reqwest keeps custom headers across hosts).
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .connect_timeout(std::time::Duration::from_secs(10))
                .read_timeout(std::time::Duration::from_secs(300))
                .build()?,
            memory_writes: tokio::sync::Mutex::new(()),
        });
        work::spawn_lease_expiry(agents.clone());
        for id in running {
            turn::drive(agents.clone(), &id);
        }
        Ok(agents)
    }
}

impl Session {
    fn new(doc: Value, events: Vec<Arc<Value>>, consumed: usize) -> Session {
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
}

/// A string field of a JSON document ("" when absent).
fn str_of(v: &Value, field: &str) -> String {
    v[field].as_str().unwrap_or_default().to_string()
}

impl From<sandstone_db::Error> for error::ApiError {
    fn from(e: sandstone_db::Error) -> Self {
        error::ApiError::internal(format!("store: {e}"))
    }
}
