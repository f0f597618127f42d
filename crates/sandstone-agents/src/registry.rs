//! The registry: agents with every version, environments, and environment
//! keys (by hash). What sessions run and where is looked up here; the
//! operations themselves are in `agents.rs` and `environments.rs`.

use crate::environments::StoredKey;
use crate::error::ApiResult;
use crate::{StartError, lock, parse_stored};
use sandstone_agents_api::{Agent, Environment};
use sandstone_db::agents::AgentsStore;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

/// Persisted kinds of documents.
pub(crate) const AGENT: &str = "agent";
pub(crate) const ENVIRONMENT: &str = "environment";
pub(crate) const KEY: &str = "environment_key";

#[derive(Default)]
pub(crate) struct RegistryState {
    /// Every version of every agent, oldest first.
    pub agents: BTreeMap<String, Vec<Agent>>,
    pub environments: BTreeMap<String, Environment>,
    /// Environment keys by hash.
    pub keys: HashMap<String, StoredKey>,
}

pub(crate) struct Registry {
    pub(crate) store: Arc<dyn AgentsStore>,
    state: Mutex<RegistryState>,
    /// Held (shared) by each change across its store write and cache
    /// update, and alone by a reload across its read and swap: a reload
    /// that read the store before a change committed must not put its
    /// older copy over the change.
    gate: tokio::sync::RwLock<()>,
}

impl Registry {
    pub(crate) async fn load(store: Arc<dyn AgentsStore>) -> Result<Registry, StartError> {
        let st = read(&*store).await?;
        Ok(Registry {
            store,
            state: Mutex::new(st),
            gate: tokio::sync::RwLock::new(()),
        })
    }

    /// Reads everything again (another node changed something).
    pub(crate) async fn reload(&self) -> Result<(), StartError> {
        let _gate = self.gate.write().await;
        let st = read(&*self.store).await?;
        *self.state() = st;
        Ok(())
    }

    /// `f` on the registry; when it fails and the document (`kind`, `id`)
    /// exists — made on another node, whose signal has not arrived yet —
    /// reads everything again and tries once more. A miss for something
    /// that does not exist costs one indexed read.
    pub(crate) async fn fresh<T>(
        &self,
        kind: &'static str,
        id: &str,
        f: impl Fn(&Registry) -> ApiResult<T>,
    ) -> ApiResult<T> {
        match f(self) {
            Ok(v) => Ok(v),
            Err(e) => {
                if self.store.get_doc(kind, id).await?.is_none() {
                    return Err(e);
                }
                self.reload().await?;
                f(self)
            }
        }
    }

    /// An environment, also one made on another node a moment ago.
    pub(crate) async fn fresh_environment(&self, id: &str) -> ApiResult<Environment> {
        self.fresh(ENVIRONMENT, id, |r| r.environment(id)).await
    }

    /// Held by a change across its store write and cache update.
    pub(crate) async fn changing(&self) -> tokio::sync::RwLockReadGuard<'_, ()> {
        self.gate.read().await
    }

    pub(crate) fn state(&self) -> MutexGuard<'_, RegistryState> {
        lock(&self.state)
    }
}

async fn read(store: &dyn AgentsStore) -> Result<RegistryState, StartError> {
    {
        let mut st = RegistryState::default();
        for a in store.load_docs(AGENT).await? {
            let a: Agent = parse_stored(AGENT, a)?;
            st.agents.entry(a.id.clone()).or_default().push(a);
        }
        for versions in st.agents.values_mut() {
            versions.sort_by_key(|v| v.version);
        }
        for e in store.load_docs(ENVIRONMENT).await? {
            let e: Environment = parse_stored(ENVIRONMENT, e)?;
            st.environments.insert(e.id.clone(), e);
        }
        for k in store.load_docs(KEY).await? {
            let k: StoredKey = parse_stored(KEY, k)?;
            st.keys.insert(k.hash.clone(), k);
        }
        Ok(st)
    }
}
