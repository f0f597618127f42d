//! Environments (only `self_hosted` ones exist here) and their keys, the
//! credential a worker polls with: stored as a hash, shown once.

use crate::Agents;
use crate::error::{ApiError, ApiResult};
use crate::ids::{new_id, new_token, now};
use crate::registry::{ENVIRONMENT, KEY, Registry};
use crate::validate::{merge_metadata, opt_string, required_string};
use serde_json::{Value, json};

impl Registry {
    pub(crate) async fn create_environment(&self, body: &Value) -> ApiResult<Value> {
        let name = required_string(body, "name", 256)?;
        let config = environment_config(&body["config"])?;
        let t = now();
        let id = new_id("env");
        let doc = json!({
            "type": "environment", "id": id, "name": name,
            "description": opt_string(body, "description", 2048)?,
            "metadata": merge_metadata(&json!({}), &body["metadata"], "metadata")?,
            "scope": body["scope"].as_str().unwrap_or("organization"),
            "config": config, "created_at": t, "updated_at": t, "archived_at": null,
        });
        self.store.put_doc(ENVIRONMENT, &id, &doc).await?;
        self.state().environments.insert(id, doc.clone());
        Ok(doc)
    }

    pub(crate) fn environment(&self, id: &str) -> ApiResult<Value> {
        self.state()
            .environments
            .get(id)
            .cloned()
            .ok_or_else(|| ApiError::EnvironmentNotFound(id.to_string()))
    }

    pub(crate) fn environments(&self, include_archived: bool) -> Vec<Value> {
        let st = self.state();
        let mut all: Vec<Value> = st
            .environments
            .values()
            .filter(|e| include_archived || e["archived_at"].is_null())
            .cloned()
            .collect();
        all.sort_by(|a, b| b["created_at"].as_str().cmp(&a["created_at"].as_str()));
        all
    }

    pub(crate) async fn update_environment(&self, id: &str, body: &Value) -> ApiResult<Value> {
        let mut doc = self.environment(id)?;
        if body.get("name").is_some() {
            doc["name"] = json!(required_string(body, "name", 256)?);
        }
        if body.get("description").is_some() {
            doc["description"] = opt_string(body, "description", 2048)?;
        }
        if !body["config"].is_null() {
            doc["config"] = environment_config(&body["config"])?;
        }
        doc["metadata"] = merge_metadata(&doc["metadata"], &body["metadata"], "metadata")?;
        doc["updated_at"] = json!(now());
        self.save_environment(&doc).await?;
        Ok(doc)
    }

    async fn save_environment(&self, doc: &Value) -> ApiResult<()> {
        let id = doc["id"].as_str().unwrap_or_default().to_string();
        self.store.put_doc(ENVIRONMENT, &id, doc).await?;
        self.state().environments.insert(id, doc.clone());
        Ok(())
    }

    pub(crate) async fn archive_environment(&self, id: &str) -> ApiResult<Value> {
        let mut doc = self.environment(id)?;
        if doc["archived_at"].is_null() {
            doc["archived_at"] = json!(now());
            doc["updated_at"] = doc["archived_at"].clone();
            self.save_environment(&doc).await?;
        }
        Ok(doc)
    }

    /// Mints an environment key; the only time it is shown.
    pub(crate) async fn create_key(&self, env: &str) -> ApiResult<Value> {
        self.environment(env)?;
        let key = new_token(crate::auth::ENV_KEY_PREFIX);
        let hash = sandstone_db::token_hash(&key);
        let doc = json!({
            "type": "environment_key", "id": new_id("envkey"), "environment_id": env,
            "created_at": now(), "revoked_at": null, "hash": hash,
        });
        self.store.put_doc(KEY, &hash, &doc).await?;
        self.state().keys.insert(hash, doc.clone());
        let mut shown = key_view(&doc);
        shown["key"] = json!(key);
        Ok(shown)
    }

    pub(crate) fn keys(&self, env: &str) -> ApiResult<Vec<Value>> {
        self.environment(env)?;
        let st = self.state();
        let mut out: Vec<Value> = st
            .keys
            .values()
            .filter(|k| k["environment_id"] == env)
            .map(key_view)
            .collect();
        out.sort_by(|a, b| a["created_at"].as_str().cmp(&b["created_at"].as_str()));
        Ok(out)
    }

    pub(crate) async fn revoke_key(&self, env: &str, key_id: &str) -> ApiResult<Value> {
        let doc = {
            let mut st = self.state();
            let k = st
                .keys
                .values_mut()
                .find(|k| k["id"] == key_id && k["environment_id"] == env)
                .ok_or_else(|| ApiError::not_found("environment key", key_id))?;
            if k["revoked_at"].is_null() {
                k["revoked_at"] = json!(now());
            }
            k.clone()
        };
        self.store
            .put_doc(KEY, doc["hash"].as_str().unwrap_or_default(), &doc)
            .await?;
        Ok(key_view(&doc))
    }

    pub(crate) fn environment_of_key(&self, hash: &str) -> ApiResult<String> {
        let st = self.state();
        let k = st
            .keys
            .get(hash)
            .ok_or_else(|| ApiError::unauthorized("invalid environment key"))?;
        if !k["revoked_at"].is_null() {
            return Err(ApiError::unauthorized(
                "this environment key has been revoked",
            ));
        }
        Ok(k["environment_id"].as_str().unwrap_or_default().to_string())
    }

    pub(crate) fn has_environment(&self, id: &str) -> bool {
        self.state().environments.contains_key(id)
    }
}

impl Agents {
    /// Deletes an environment, revokes its keys and stops its work items
    /// (their sessions are no longer queued anywhere).
    pub(crate) async fn delete_environment(&self, id: &str) -> ApiResult<Value> {
        let registry = &self.registry;
        registry.environment(id)?;
        registry.store.delete_doc(ENVIRONMENT, id).await?;
        self.queue.stop_environment(id).await?;
        let revoked: Vec<Value> = {
            let mut st = registry.state();
            st.environments.remove(id);
            let keys: Vec<String> = st
                .keys
                .iter()
                .filter(|(_, k)| k["environment_id"] == id)
                .map(|(h, _)| h.clone())
                .collect();
            keys.iter().filter_map(|h| st.keys.remove(h)).collect()
        };
        for k in revoked {
            let hash = k["hash"].as_str().unwrap_or_default();
            registry.store.delete_doc(KEY, hash).await?;
        }
        Ok(json!({"id": id, "type": "environment_deleted"}))
    }
}

fn environment_config(v: &Value) -> ApiResult<Value> {
    match v["type"].as_str() {
        None if v.is_null() => Ok(json!({"type": "self_hosted"})),
        Some("self_hosted") => Ok(json!({"type": "self_hosted"})),
        Some("cloud") => Err(ApiError::invalid(
            "config.type: only self_hosted environments exist on this server",
        )),
        _ => Err(ApiError::invalid("config.type: self_hosted")),
    }
}

fn key_view(k: &Value) -> Value {
    let mut v = k.clone();
    if let Some(o) = v.as_object_mut() {
        o.remove("hash");
    }
    v
}
