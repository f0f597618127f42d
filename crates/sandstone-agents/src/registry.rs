//! The registry: agents with every version, environments, and environment
//! keys (by hash). What sessions run and where is looked up here; the
//! operations themselves are in `agents.rs` and `environments.rs`.

use crate::environments::StoredKey;
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
}

impl Registry {
    pub(crate) async fn load(store: Arc<dyn AgentsStore>) -> Result<Registry, StartError> {
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
        Ok(Registry {
            store,
            state: Mutex::new(st),
        })
    }

    pub(crate) fn state(&self) -> MutexGuard<'_, RegistryState> {
        lock(&self.state)
    }
}
