//! Environments (only `self_hosted` ones exist here) and their keys, the
//! credential a worker polls with: stored as a hash, shown once.

use crate::Agents;
use crate::error::{ApiError, ApiResult};
use crate::ids::{new_id, new_token, now};
use crate::registry::{ENVIRONMENT, KEY, Registry};
use crate::validate::{self, optional, required};
use sandstone_agents_api::{
    Deleted, Environment, EnvironmentConfig, EnvironmentKey, EnvironmentKeyTag, EnvironmentParams,
    EnvironmentTag, Extra, Metadata,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// How a key is stored: as listed, with the hash it is found by.
#[derive(Clone, Serialize, Deserialize)]
pub(crate) struct StoredKey {
    #[serde(flatten)]
    pub key: EnvironmentKey,
    pub hash: String,
}

impl Registry {
    pub(crate) async fn create_environment(&self, body: &Value) -> ApiResult<Environment> {
        let p: EnvironmentParams = validate::body(body)?;
        let t = now();
        let doc = Environment {
            tag: EnvironmentTag,
            id: new_id("env"),
            name: required(p.name.flatten(), "name", 256)?,
            description: optional(p.description.flatten(), "description", 2048)?,
            metadata: validate::metadata(&Metadata::new(), p.metadata.flatten().as_ref())?,
            scope: p.scope.flatten().unwrap_or_else(|| "organization".into()),
            config: environment_config(p.config.flatten())?,
            created_at: t.clone(),
            updated_at: t,
            archived_at: None,
            extra: Extra::new(),
        };
        self.save_environment(&doc).await?;
        Ok(doc)
    }

    pub(crate) fn environment(&self, id: &str) -> ApiResult<Environment> {
        self.state()
            .environments
            .get(id)
            .cloned()
            .ok_or_else(|| ApiError::EnvironmentNotFound(id.to_string()))
    }

    pub(crate) fn environments(&self, include_archived: bool) -> Vec<Environment> {
        let st = self.state();
        let mut all: Vec<Environment> = st
            .environments
            .values()
            .filter(|e| include_archived || e.archived_at.is_none())
            .cloned()
            .collect();
        all.sort_by(|a, b| b.created_at.cmp(&a.created_at));
        all
    }

    pub(crate) async fn update_environment(
        &self,
        id: &str,
        body: &Value,
    ) -> ApiResult<Environment> {
        let p: EnvironmentParams = validate::body(body)?;
        let mut doc = self.environment(id)?;
        if let Some(name) = p.name {
            doc.name = required(name, "name", 256)?;
        }
        if let Some(d) = p.description {
            doc.description = optional(d, "description", 2048)?;
        }
        if let Some(Some(c)) = p.config {
            doc.config = environment_config(Some(c))?;
        }
        doc.metadata = validate::metadata(&doc.metadata, p.metadata.flatten().as_ref())?;
        doc.updated_at = now();
        self.save_environment(&doc).await?;
        Ok(doc)
    }

    async fn save_environment(&self, doc: &Environment) -> ApiResult<()> {
        let _gate = self.changing().await;
        self.store
            .put_doc(ENVIRONMENT, &doc.id, &json!(doc))
            .await?;
        self.state()
            .environments
            .insert(doc.id.clone(), doc.clone());
        Ok(())
    }

    pub(crate) async fn archive_environment(&self, id: &str) -> ApiResult<Environment> {
        let mut doc = self.environment(id)?;
        if doc.archived_at.is_none() {
            let t = now();
            doc.archived_at = Some(t.clone());
            doc.updated_at = t;
            self.save_environment(&doc).await?;
        }
        Ok(doc)
    }

    /// Mints an environment key; the only time it is shown.
    pub(crate) async fn create_key(&self, env: &str) -> ApiResult<EnvironmentKey> {
        self.environment(env)?;
        let secret = new_token(crate::auth::ENV_KEY_PREFIX);
        let stored = StoredKey {
            key: EnvironmentKey {
                tag: EnvironmentKeyTag,
                id: new_id("envkey"),
                environment_id: env.to_string(),
                created_at: now(),
                revoked_at: None,
                key: None,
                extra: Extra::new(),
            },
            hash: sandstone_db::token_hash(&secret),
        };
        let _gate = self.changing().await;
        self.store
            .put_doc(KEY, &stored.hash, &json!(stored))
            .await?;
        let mut shown = stored.key.clone();
        self.state().keys.insert(stored.hash.clone(), stored);
        shown.key = Some(secret);
        Ok(shown)
    }

    pub(crate) fn keys(&self, env: &str) -> ApiResult<Vec<EnvironmentKey>> {
        self.environment(env)?;
        let st = self.state();
        let mut out: Vec<EnvironmentKey> = st
            .keys
            .values()
            .filter(|k| k.key.environment_id == env)
            .map(|k| k.key.clone())
            .collect();
        out.sort_by(|a, b| a.created_at.cmp(&b.created_at));
        Ok(out)
    }

    pub(crate) async fn revoke_key(&self, env: &str, key_id: &str) -> ApiResult<EnvironmentKey> {
        let _gate = self.changing().await;
        let stored = {
            let mut st = self.state();
            let k = st
                .keys
                .values_mut()
                .find(|k| k.key.id == key_id && k.key.environment_id == env)
                .ok_or_else(|| ApiError::not_found("environment key", key_id))?;
            if k.key.revoked_at.is_none() {
                k.key.revoked_at = Some(now());
            }
            k.clone()
        };
        self.store
            .put_doc(KEY, &stored.hash, &json!(stored))
            .await?;
        Ok(stored.key)
    }

    pub(crate) fn environment_of_key(&self, hash: &str) -> ApiResult<String> {
        let st = self.state();
        let k = st
            .keys
            .get(hash)
            .ok_or_else(|| ApiError::unauthorized("invalid environment key"))?;
        if k.key.revoked_at.is_some() {
            return Err(ApiError::unauthorized(
                "this environment key has been revoked",
            ));
        }
        Ok(k.key.environment_id.clone())
    }

    pub(crate) fn has_environment(&self, id: &str) -> bool {
        self.state().environments.contains_key(id)
    }
}

impl Agents {
    /// Deletes an environment, revokes its keys and stops its work items
    /// (their sessions are no longer queued anywhere).
    pub(crate) async fn delete_environment(&self, id: &str) -> ApiResult<Deleted> {
        let registry = &self.registry;
        let _gate = registry.changing().await;
        registry.environment(id)?;
        registry.store.delete_doc(ENVIRONMENT, id).await?;
        self.queue.stop_environment(id).await?;
        let revoked: Vec<String> = {
            let mut st = registry.state();
            st.environments.remove(id);
            let keys: Vec<String> = st
                .keys
                .iter()
                .filter(|(_, k)| k.key.environment_id == id)
                .map(|(h, _)| h.clone())
                .collect();
            for h in &keys {
                st.keys.remove(h);
            }
            keys
        };
        for hash in revoked {
            registry.store.delete_doc(KEY, &hash).await?;
        }
        Ok(Deleted {
            id: id.to_string(),
            kind: "environment_deleted".into(),
        })
    }
}

fn environment_config(c: Option<EnvironmentConfig>) -> ApiResult<EnvironmentConfig> {
    match c.as_ref().map(|c| c.kind.as_str()) {
        None | Some("self_hosted") => Ok(EnvironmentConfig {
            kind: "self_hosted".into(),
            extra: Extra::new(),
        }),
        Some("cloud") => Err(ApiError::invalid(
            "config.type: only self_hosted environments exist on this server",
        )),
        _ => Err(ApiError::invalid("config.type: self_hosted")),
    }
}
