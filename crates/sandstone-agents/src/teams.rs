//! Which team each top-level Managed Agents object (agent, environment,
//! session, skill, memory store, file, vault) belongs to: the team of the
//! API key that made it. A key of another team finds no such object: every
//! route naming one answers 404, lists leave it out, and a session or agent
//! cannot refer to it. What lives under an object (a vault's credentials,
//! a store's memories, a session's events) is reached through it.
//!
//! Ownership is kept as documents of their own (kind [`OWNER`]), so the
//! resources' stored shapes are the API's and nothing else. An owner never
//! changes: each node keeps what it has read. Objects from before teams
//! have no owner document and belong to the default team.

use crate::error::{ApiError, ApiResult};
use sandstone_db::DEFAULT_TEAM;
use sandstone_db::agents::AgentsStore;
use serde_json::json;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

pub const OWNER: &str = "owner";

/// The collections whose objects have an owner, with what their errors
/// call one.
const COLLECTIONS: &[(&str, &str)] = &[
    ("agents", "agent"),
    ("environments", "environment"),
    ("sessions", "session"),
    ("skills", "skill"),
    ("memory_stores", "memory store"),
    ("files", "file"),
    ("vaults", "vault"),
];

pub struct Owners {
    store: Arc<dyn AgentsStore>,
    /// By object id. Only owners read or written are kept: an id not here
    /// may have been made on another node since.
    known: RwLock<HashMap<String, String>>,
}

impl Owners {
    pub async fn load(store: Arc<dyn AgentsStore>) -> sandstone_db::Result<Owners> {
        let mut known = HashMap::new();
        for doc in store.load_docs(OWNER).await? {
            if let (Some(id), Some(team)) = (doc["id"].as_str(), doc["team"].as_str()) {
                known.insert(id.to_string(), team.to_string());
            }
        }
        Ok(Owners {
            store,
            known: RwLock::new(known),
        })
    }

    /// Records that `team` made `id`.
    pub async fn set(&self, id: &str, team: &str) -> ApiResult<()> {
        self.store
            .put_doc(OWNER, id, &json!({"id": id, "team": team}))
            .await?;
        self.known
            .write()
            .expect("lock poisoned: a holder panicked")
            .insert(id.to_string(), team.to_string());
        Ok(())
    }

    /// The team `id` belongs to.
    pub async fn team_of(&self, id: &str) -> ApiResult<String> {
        let known = self
            .known
            .read()
            .expect("lock poisoned: a holder panicked")
            .get(id)
            .cloned();
        if let Some(team) = known {
            return Ok(team);
        }
        let Some(doc) = self.store.get_doc(OWNER, id).await? else {
            return Ok(DEFAULT_TEAM.to_string());
        };
        let team = doc["team"].as_str().unwrap_or(DEFAULT_TEAM).to_string();
        self.known
            .write()
            .expect("lock poisoned: a holder panicked")
            .insert(id.to_string(), team.clone());
        Ok(team)
    }

    /// Whether `id` is `team`'s.
    pub async fn owns(&self, team: &str, id: &str) -> ApiResult<bool> {
        Ok(self.team_of(id).await? == team)
    }

    /// Refuses `id` (a `what`, as errors name it) to another team exactly
    /// as if it did not exist, with an audit record.
    pub async fn check(&self, team: &str, what: &str, id: &str) -> ApiResult<()> {
        if self.owns(team, id).await? {
            return Ok(());
        }
        tracing::warn!(target: "sandstone::audit", team, object = id,
            "refused: {what} of another team");
        Err(ApiError::not_found(what, id))
    }

    /// The object a `/v1` path names (`/<collection>/<id>…`), if any, with
    /// what errors call it. The id is percent-decoded, as axum decodes it
    /// for the handler (`%73esn_…` is `sesn_…`).
    pub fn named_in(path: &str) -> Option<(&'static str, String)> {
        let mut parts = path.trim_start_matches('/').split('/');
        let collection = parts.next()?;
        let id = parts.next().filter(|id| !id.is_empty())?;
        let (_, what) = COLLECTIONS.iter().find(|(c, _)| *c == collection)?;
        let id = percent_encoding::percent_decode_str(id)
            .decode_utf8()
            .ok()?;
        Some((what, id.into_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::Owners;

    #[test]
    fn a_path_names_the_object_of_its_collection() {
        assert_eq!(
            Owners::named_in("/sessions/sesn_1/events/stream"),
            Some(("session", "sesn_1".into()))
        );
        assert_eq!(
            Owners::named_in("/vaults/vlt_1"),
            Some(("vault", "vlt_1".into()))
        );
        // Decoded as the handler will see it.
        assert_eq!(
            Owners::named_in("/files/%66ile_1/content"),
            Some(("file", "file_1".into()))
        );
        assert_eq!(Owners::named_in("/agents"), None);
        assert_eq!(Owners::named_in("/agents/"), None);
        assert_eq!(Owners::named_in("/nothing/x"), None);
    }
}
