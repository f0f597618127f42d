//! Agents (versioned), environments and their keys, sessions. Responses
//! are resolved the way the API resolves them: `model` is always an
//! object, a toolset lists every tool with a concrete `enabled` and
//! `permission_policy`, a session carries a snapshot of its agent.

use crate::error::{ApiError, ApiResult};
use crate::ids::{new_id, new_token, now};
use crate::{AGENT, Agents, ENVIRONMENT, KEY, SESSION, Session, str_of};
use serde_json::{Map, Value, json};

pub const TOOLSET: &str = "agent_toolset_20260401";
/// The toolset's tools, in the order the API lists them.
pub const TOOLSET_TOOLS: [&str; 8] = [
    "bash",
    "edit",
    "read",
    "write",
    "glob",
    "grep",
    "web_fetch",
    "web_search",
];
const MAX_METADATA: usize = 16;

/// `{"data", "next_page"}` of `items` from the cursor `page`.
pub fn paginate(
    items: Vec<Value>,
    limit: Option<usize>,
    page: Option<&str>,
    max: usize,
) -> ApiResult<Value> {
    let limit = limit.unwrap_or(20.min(max));
    if limit == 0 || limit > max {
        return Err(ApiError::invalid(format!("limit: between 1 and {max}")));
    }
    let start = match page {
        None | Some("") => 0,
        Some(p) => p
            .strip_prefix("page_")
            .and_then(|n| n.parse::<usize>().ok())
            .ok_or_else(|| {
                ApiError::invalid(format!("page: {p:?} is not a cursor from this server"))
            })?,
    };
    let end = start.saturating_add(limit).min(items.len());
    let data: Vec<Value> = items.into_iter().skip(start).take(limit).collect();
    let next = (end > start && data.len() == limit).then(|| format!("page_{end}"));
    let prev = (start > 0).then(|| format!("page_{}", start.saturating_sub(limit)));
    Ok(json!({"data": data, "next_page": next, "prev_page": prev}))
}

fn field<'a>(body: &'a Value, name: &str) -> &'a Value {
    &body[name]
}

fn opt_string(body: &Value, name: &str, max: usize) -> ApiResult<Value> {
    match field(body, name) {
        Value::Null => Ok(Value::Null),
        Value::String(s) if s.chars().count() <= max => Ok(Value::String(s.clone())),
        _ => Err(ApiError::invalid(format!(
            "{name}: a string of at most {max} characters"
        ))),
    }
}

fn required_string(body: &Value, name: &str, max: usize) -> ApiResult<String> {
    match field(body, name) {
        Value::String(s) if !s.is_empty() && s.chars().count() <= max => Ok(s.clone()),
        _ => Err(ApiError::invalid(format!(
            "{name}: required, a string of 1 to {max} characters"
        ))),
    }
}

/// Validates metadata and applies it as a merge patch over `base`.
pub fn merge_metadata(base: &Value, patch: &Value, field: &str) -> ApiResult<Value> {
    let mut out = base.as_object().cloned().unwrap_or_default();
    match patch {
        Value::Null => return Ok(Value::Object(out)),
        Value::Object(m) => {
            for (k, v) in m {
                if k.is_empty() || k.chars().count() > 64 {
                    return Err(ApiError::invalid(format!(
                        "{field}: keys are 1 to 64 characters"
                    )));
                }
                match v {
                    Value::Null => {
                        out.remove(k);
                    }
                    Value::String(s) if s.chars().count() <= 512 => {
                        out.insert(k.clone(), v.clone());
                    }
                    _ => {
                        return Err(ApiError::invalid(format!(
                            "{field}.{k}: a string of at most 512 characters, or null to delete"
                        )));
                    }
                }
            }
        }
        _ => return Err(ApiError::invalid(format!("{field}: an object of strings"))),
    }
    if out.len() > MAX_METADATA {
        return Err(ApiError::invalid(format!(
            "{field}: at most {MAX_METADATA} pairs"
        )));
    }
    Ok(Value::Object(out))
}

fn model_config(v: &Value) -> ApiResult<Value> {
    match v {
        Value::String(s) if !s.is_empty() => Ok(json!({"id": s, "speed": "standard"})),
        Value::Object(m)
            if m.get("id")
                .and_then(Value::as_str)
                .is_some_and(|s| !s.is_empty()) =>
        {
            let mut out = m.clone();
            out.entry("speed").or_insert(json!("standard"));
            Ok(Value::Object(out))
        }
        _ => Err(ApiError::invalid(
            "model: required, a model id or {\"id\": ...}",
        )),
    }
}

fn permission_policy(v: &Value, at: &str) -> ApiResult<Value> {
    match v["type"].as_str() {
        None if v.is_null() => Ok(json!({"type": "always_allow"})),
        Some("always_allow" | "always_ask" | "auto") => Ok(json!({"type": v["type"]})),
        _ => Err(ApiError::invalid(format!(
            "{at}.permission_policy.type: always_allow, always_ask or auto"
        ))),
    }
}

fn toolset(t: &Value, at: &str) -> ApiResult<Value> {
    let default_enabled = t["default_config"]["enabled"].as_bool().unwrap_or(true);
    let default_policy = permission_policy(
        &t["default_config"]["permission_policy"],
        &format!("{at}.default_config"),
    )?;
    let given = t["configs"].as_array().cloned().unwrap_or_default();
    for (i, c) in given.iter().enumerate() {
        let name = c["name"].as_str().unwrap_or_default();
        if !TOOLSET_TOOLS.contains(&name) {
            return Err(ApiError::invalid(format!(
                "{at}.configs[{i}].name: one of {}",
                TOOLSET_TOOLS.join(", ")
            )));
        }
    }
    let configs = TOOLSET_TOOLS
        .iter()
        .map(|name| {
            let c = given.iter().find(|c| c["name"] == *name);
            let enabled = c
                .and_then(|c| c["enabled"].as_bool())
                .unwrap_or(default_enabled);
            let policy = match c.map(|c| &c["permission_policy"]) {
                Some(p) if !p.is_null() => permission_policy(p, &format!("{at}.configs.{name}"))?,
                _ => default_policy.clone(),
            };
            Ok(json!({"type": name, "name": name, "enabled": enabled, "permission_policy": policy}))
        })
        .collect::<ApiResult<Vec<_>>>()?;
    Ok(json!({
        "type": TOOLSET,
        "configs": configs,
        "default_config": {"enabled": default_enabled, "permission_policy": default_policy},
    }))
}

fn custom_tool(t: &Value, at: &str) -> ApiResult<Value> {
    let name = t["name"].as_str().unwrap_or_default();
    let ok = (1..=128).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !ok {
        return Err(ApiError::invalid(format!(
            "{at}.name: 1-128 of [A-Za-z0-9_-]"
        )));
    }
    if !t["input_schema"].is_object() {
        return Err(ApiError::invalid(format!(
            "{at}.input_schema: a JSON schema object"
        )));
    }
    Ok(json!({
        "type": "custom",
        "name": name,
        "description": t["description"].as_str().unwrap_or_default(),
        "input_schema": t["input_schema"],
    }))
}

fn tools(v: &Value) -> ApiResult<Value> {
    let list = match v {
        Value::Null => return Ok(json!([])),
        Value::Array(a) if a.len() <= 256 => a,
        _ => return Err(ApiError::invalid("tools: an array of at most 256 tools")),
    };
    let mut names = std::collections::HashSet::new();
    list.iter()
        .enumerate()
        .map(|(i, t)| {
            let at = format!("tools[{i}]");
            let out = match t["type"].as_str() {
                Some(TOOLSET) => toolset(t, &at)?,
                Some("custom") => custom_tool(t, &at)?,
                _ => {
                    return Err(ApiError::invalid(format!("{at}.type: {TOOLSET} or custom")));
                }
            };
            let key = out["name"].as_str().unwrap_or(TOOLSET).to_string();
            if !names.insert(key.clone()) {
                return Err(ApiError::invalid(format!("{at}: {key} is declared twice")));
            }
            Ok(out)
        })
        .collect::<ApiResult<Vec<_>>>()
        .map(Value::Array)
}

fn list_field(body: &Value, name: &str) -> ApiResult<Value> {
    match &body[name] {
        Value::Null => Ok(json!([])),
        Value::Array(_) => Ok(body[name].clone()),
        _ => Err(ApiError::invalid(format!("{name}: an array"))),
    }
}

/// The agent's configuration fields, resolved from a create or update body
/// (an update starts from the current version).
fn agent_config(body: &Value, base: Option<&Value>) -> ApiResult<Map<String, Value>> {
    let mut out = base.and_then(Value::as_object).cloned().unwrap_or_default();
    let has = |k: &str| body.get(k).is_some();
    if base.is_none() || has("name") {
        out.insert("name".into(), json!(required_string(body, "name", 256)?));
    }
    if base.is_none() || has("model") {
        out.insert("model".into(), model_config(&body["model"])?);
    }
    for (k, max) in [("system", 100_000), ("description", 2048)] {
        if base.is_none() || has(k) {
            out.insert(k.into(), opt_string(body, k, max)?);
        }
    }
    if base.is_none() || has("tools") {
        out.insert("tools".into(), tools(&body["tools"])?);
    }
    for k in ["mcp_servers", "skills"] {
        if base.is_none() || has(k) {
            out.insert(k.into(), list_field(body, k)?);
        }
    }
    let current = out.get("metadata").cloned().unwrap_or(json!({}));
    out.insert(
        "metadata".into(),
        merge_metadata(&current, &body["metadata"], "metadata")?,
    );
    Ok(out)
}

impl Agents {
    pub(crate) async fn persist(&self, kind: &str, id: &str, doc: &Value) -> ApiResult<()> {
        Ok(self.store.put_doc(kind, id, doc).await?)
    }

    pub async fn create_agent(&self, body: &Value) -> ApiResult<Value> {
        let mut doc = agent_config(body, None)?;
        doc.insert("skills".into(), self.resolve_skills(&doc["skills"])?);
        let t = now();
        let id = new_id("agent");
        doc.insert("type".into(), json!("agent"));
        doc.insert("id".into(), json!(id));
        doc.insert("version".into(), json!(1));
        doc.insert("multiagent".into(), Value::Null);
        doc.insert(
            "execution_identity".into(),
            json!({"type": "service_account"}),
        );
        doc.insert("created_at".into(), json!(t));
        doc.insert("updated_at".into(), json!(t));
        doc.insert("archived_at".into(), Value::Null);
        let doc = Value::Object(doc);
        self.persist(AGENT, &format!("{id}@1"), &doc).await?;
        self.state
            .lock()
            .unwrap()
            .agents
            .insert(id, vec![doc.clone()]);
        Ok(doc)
    }

    pub fn agent(&self, id: &str, version: Option<i64>) -> ApiResult<Value> {
        let st = self.state.lock().unwrap();
        let versions = st
            .agents
            .get(id)
            .ok_or_else(|| ApiError::not_found("agent", id))?;
        match version {
            None => Ok(versions.last().cloned().unwrap_or_default()),
            Some(v) => versions
                .iter()
                .find(|a| a["version"] == v)
                .cloned()
                .ok_or_else(|| ApiError::not_found("agent version", &format!("{id}@{v}"))),
        }
    }

    pub fn agent_versions(&self, id: &str) -> ApiResult<Vec<Value>> {
        let st = self.state.lock().unwrap();
        let v = st
            .agents
            .get(id)
            .ok_or_else(|| ApiError::not_found("agent", id))?;
        Ok(v.iter().rev().cloned().collect())
    }

    pub fn agents(&self, include_archived: bool) -> Vec<Value> {
        let st = self.state.lock().unwrap();
        let mut all: Vec<Value> = st
            .agents
            .values()
            .filter_map(|v| v.last().cloned())
            .filter(|a| include_archived || a["archived_at"].is_null())
            .collect();
        all.sort_by(|a, b| b["created_at"].as_str().cmp(&a["created_at"].as_str()));
        all
    }

    /// A partial update; a change makes a new version. `version`, when
    /// given, must be the current one.
    pub async fn update_agent(&self, id: &str, body: &Value) -> ApiResult<Value> {
        let current = self.agent(id, None)?;
        if !current["archived_at"].is_null() {
            return Err(ApiError::invalid(format!("agent {id} is archived")));
        }
        if let Some(v) = body.get("version").filter(|v| !v.is_null())
            && *v != current["version"]
        {
            return Err(ApiError::conflict(format!(
                "version: agent {id} is at version {}, not {v}",
                current["version"]
            )));
        }
        let mut config = agent_config(body, Some(&current))?;
        if body.get("skills").is_some() {
            config.insert("skills".into(), self.resolve_skills(&config["skills"])?);
        }
        let changed = config.iter().any(|(k, v)| current[k] != *v);
        if !changed {
            return Ok(current);
        }
        let mut doc = config;
        let version = current["version"].as_i64().unwrap_or(1) + 1;
        doc.insert("version".into(), json!(version));
        doc.insert("updated_at".into(), json!(now()));
        let doc = Value::Object(doc);
        self.persist(AGENT, &format!("{id}@{version}"), &doc)
            .await?;
        self.state
            .lock()
            .unwrap()
            .agents
            .get_mut(id)
            .ok_or_else(|| ApiError::not_found("agent", id))?
            .push(doc.clone());
        Ok(doc)
    }

    pub async fn archive_agent(&self, id: &str) -> ApiResult<Value> {
        let mut doc = self.agent(id, None)?;
        if doc["archived_at"].is_null() {
            doc["archived_at"] = json!(now());
            doc["updated_at"] = doc["archived_at"].clone();
            let key = format!("{id}@{}", doc["version"]);
            self.persist(AGENT, &key, &doc).await?;
            if let Some(v) = self.state.lock().unwrap().agents.get_mut(id)
                && let Some(last) = v.last_mut()
            {
                *last = doc.clone();
            }
        }
        Ok(doc)
    }

    pub async fn create_environment(&self, body: &Value) -> ApiResult<Value> {
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
        self.persist(ENVIRONMENT, &id, &doc).await?;
        self.state
            .lock()
            .unwrap()
            .environments
            .insert(id, doc.clone());
        Ok(doc)
    }

    pub fn environment(&self, id: &str) -> ApiResult<Value> {
        self.state
            .lock()
            .unwrap()
            .environments
            .get(id)
            .cloned()
            .ok_or_else(|| {
                ApiError::not_found("environment", id)
                    .with_details(json!({"error_code": "environment_not_found"}))
            })
    }

    pub fn environments(&self, include_archived: bool) -> Vec<Value> {
        let st = self.state.lock().unwrap();
        let mut all: Vec<Value> = st
            .environments
            .values()
            .filter(|e| include_archived || e["archived_at"].is_null())
            .cloned()
            .collect();
        all.sort_by(|a, b| b["created_at"].as_str().cmp(&a["created_at"].as_str()));
        all
    }

    pub async fn update_environment(&self, id: &str, body: &Value) -> ApiResult<Value> {
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
        let id = str_of(doc, "id");
        self.persist(ENVIRONMENT, &id, doc).await?;
        self.state
            .lock()
            .unwrap()
            .environments
            .insert(id, doc.clone());
        Ok(())
    }

    pub async fn archive_environment(&self, id: &str) -> ApiResult<Value> {
        let mut doc = self.environment(id)?;
        if doc["archived_at"].is_null() {
            doc["archived_at"] = json!(now());
            doc["updated_at"] = doc["archived_at"].clone();
            self.save_environment(&doc).await?;
        }
        Ok(doc)
    }

    /// Deletes an environment, revokes its keys and stops its work items
    /// (their sessions are no longer queued anywhere).
    pub async fn delete_environment(&self, id: &str) -> ApiResult<Value> {
        self.environment(id)?;
        self.store.delete_doc(ENVIRONMENT, id).await?;
        self.stop_environment_work(id).await?;
        let revoked: Vec<Value> = {
            let mut st = self.state.lock().unwrap();
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
            self.store.delete_doc(KEY, &str_of(&k, "hash")).await?;
        }
        Ok(json!({"id": id, "type": "environment_deleted"}))
    }

    /// Mints an environment key; the only time it is shown.
    pub async fn create_key(&self, env: &str) -> ApiResult<Value> {
        self.environment(env)?;
        let key = new_token(crate::auth::ENV_KEY_PREFIX);
        let hash = sandstone_db::token_hash(&key);
        let doc = json!({
            "type": "environment_key", "id": new_id("envkey"), "environment_id": env,
            "created_at": now(), "revoked_at": null, "hash": hash,
        });
        self.store.put_doc(KEY, &hash, &doc).await?;
        self.state.lock().unwrap().keys.insert(hash, doc.clone());
        let mut shown = key_view(&doc);
        shown["key"] = json!(key);
        Ok(shown)
    }

    pub fn keys(&self, env: &str) -> ApiResult<Vec<Value>> {
        self.environment(env)?;
        let st = self.state.lock().unwrap();
        let mut out: Vec<Value> = st
            .keys
            .values()
            .filter(|k| k["environment_id"] == env)
            .map(key_view)
            .collect();
        out.sort_by(|a, b| a["created_at"].as_str().cmp(&b["created_at"].as_str()));
        Ok(out)
    }

    pub async fn revoke_key(&self, env: &str, key_id: &str) -> ApiResult<Value> {
        let doc = {
            let mut st = self.state.lock().unwrap();
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
        self.store.put_doc(KEY, &str_of(&doc, "hash"), &doc).await?;
        Ok(key_view(&doc))
    }

    pub(crate) fn environment_of_key(&self, hash: &str) -> ApiResult<String> {
        let st = self.state.lock().unwrap();
        let k = st
            .keys
            .get(hash)
            .ok_or_else(|| ApiError::unauthorized("invalid environment key"))?;
        if !k["revoked_at"].is_null() {
            return Err(ApiError::unauthorized(
                "this environment key has been revoked",
            ));
        }
        Ok(str_of(k, "environment_id"))
    }

    pub async fn create_session(self: &std::sync::Arc<Self>, body: &Value) -> ApiResult<Value> {
        let env_id = required_string(body, "environment_id", 128)?;
        let env = self.environment(&env_id)?;
        if !env["archived_at"].is_null() {
            return Err(ApiError::invalid(format!(
                "environment_id: {env_id} is archived"
            )));
        }
        let agent = self.session_agent(&body["agent"])?;
        let resources = self.session_resources(&body["resources"])?;
        let t = now();
        let id = new_id("sesn");
        let doc = json!({
            "type": "session", "id": id, "status": "idle", "agent": agent,
            "environment_id": env_id, "resources": resources,
            "vault_ids": list_field(body, "vault_ids")?,
            "metadata": merge_metadata(&json!({}), &body["metadata"], "metadata")?,
            "title": opt_string(body, "title", 512)?,
            "stats": {"active_seconds": 0.0, "duration_seconds": 0.0},
            "usage": {"input_tokens": 0, "output_tokens": 0, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0},
            "outcome_evaluations": [], "budget": null, "deployment_id": null,
            "created_at": t, "updated_at": t, "archived_at": null,
        });
        let initial = crate::events::validate_all(&body["initial_events"], "initial_events", true)?;
        self.persist(SESSION, &id, &json!({"doc": doc, "consumed": 0}))
            .await?;
        self.state
            .lock()
            .unwrap()
            .sessions
            .insert(id.clone(), Session::new(doc, Vec::new(), 0));
        if let Err(e) = self.queue_work(&env_id, &id).await {
            // A session nobody would ever serve is not left behind.
            self.state.lock().unwrap().sessions.remove(&id);
            let _ = self.store.delete_doc(SESSION, &id).await;
            return Err(e);
        }
        if !initial.is_empty() {
            self.append_user_events(&id, initial).await?;
        }
        self.session(&id)
    }

    /// The agent a session runs: a snapshot of the named version, with a
    /// session's overrides applied.
    fn session_agent(&self, spec: &Value) -> ApiResult<Value> {
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
            .agent(&id, version)
            .map_err(|_| ApiError::invalid(format!("agent: {id} does not exist")))?;
        if !agent["archived_at"].is_null() {
            return Err(ApiError::invalid(format!("agent: {id} is archived")));
        }
        let mut snap = json!({"type": "agent"});
        for k in [
            "id",
            "version",
            "name",
            "description",
            "model",
            "system",
            "tools",
            "mcp_servers",
            "skills",
            "multiagent",
            "execution_identity",
        ] {
            snap[k] = agent[k].clone();
        }
        if let Some(o) = overrides {
            if o.get("model").is_some() {
                snap["model"] = model_config(&o["model"])?;
            }
            if o.get("system").is_some() {
                snap["system"] = opt_string(o, "system", 100_000)?;
            }
            if o.get("tools").is_some() {
                snap["tools"] = tools(&o["tools"])?;
            }
        }
        Ok(snap)
    }

    pub fn session(&self, id: &str) -> ApiResult<Value> {
        let st = self.state.lock().unwrap();
        let s = st
            .sessions
            .get(id)
            .ok_or_else(|| ApiError::not_found("session", id))?;
        Ok(session_view(&s.doc))
    }

    /// The sessions of an environment.
    pub(crate) fn environment_sessions(&self, env: &str) -> Vec<String> {
        let st = self.state.lock().unwrap();
        st.sessions
            .iter()
            .filter(|(_, s)| s.doc["environment_id"] == env)
            .map(|(id, _)| id.clone())
            .collect()
    }

    pub(crate) fn session_environment(&self, id: &str) -> Option<String> {
        let st = self.state.lock().unwrap();
        st.sessions
            .get(id)
            .map(|s| str_of(&s.doc, "environment_id"))
    }

    pub fn sessions(&self, q: &SessionFilter) -> Vec<Value> {
        let st = self.state.lock().unwrap();
        let mut all: Vec<Value> = st
            .sessions
            .values()
            .map(|s| &s.doc)
            .filter(|d| q.include_archived || d["archived_at"].is_null())
            .filter(|d| q.agent_id.as_ref().is_none_or(|a| d["agent"]["id"] == *a))
            .filter(|d| q.statuses.is_empty() || q.statuses.iter().any(|s| d["status"] == *s))
            .map(session_view)
            .collect();
        all.sort_by(|a, b| a["created_at"].as_str().cmp(&b["created_at"].as_str()));
        if !q.ascending {
            all.reverse();
        }
        all
    }

    /// Applies `f` to a session's document and writes it through.
    pub(crate) async fn update_session_doc(
        &self,
        id: &str,
        f: impl FnOnce(&mut Value) -> ApiResult<()>,
    ) -> ApiResult<Value> {
        let saved = {
            let mut st = self.state.lock().unwrap();
            let s = st
                .sessions
                .get_mut(id)
                .ok_or_else(|| ApiError::not_found("session", id))?;
            f(&mut s.doc)?;
            s.doc["updated_at"] = json!(now());
            json!({"doc": s.doc, "consumed": s.consumed})
        };
        self.persist(SESSION, id, &saved).await?;
        Ok(session_view(&saved["doc"]))
    }

    pub async fn update_session(&self, id: &str, body: &Value) -> ApiResult<Value> {
        if body.get("vault_ids").is_some() {
            return Err(ApiError::invalid(
                "vault_ids: cannot be changed after creation",
            ));
        }
        let mut changed = json!({});
        let title = body
            .get("title")
            .map(|_| opt_string(body, "title", 512))
            .transpose()?;
        let doc = self
            .update_session_doc(id, |d| {
                if let Some(t) = title {
                    d["title"] = t.clone();
                    changed["title"] = t;
                }
                if !body["metadata"].is_null() {
                    d["metadata"] = merge_metadata(&d["metadata"], &body["metadata"], "metadata")?;
                    changed["metadata"] = d["metadata"].clone();
                }
                if body["agent"].is_object() && body["agent"].get("tools").is_some() {
                    d["agent"]["tools"] = tools(&body["agent"]["tools"])?;
                    changed["agent"] = d["agent"].clone();
                }
                Ok(())
            })
            .await?;
        if changed.as_object().is_some_and(|m| !m.is_empty()) {
            let mut ev = json!({"type": "session.updated"});
            for (k, v) in changed.as_object().unwrap() {
                ev[k] = v.clone();
            }
            self.emit(id, ev).await?;
        }
        Ok(doc)
    }

    fn not_running(&self, id: &str, what: &str) -> ApiResult<()> {
        if self.session(id)?["status"] == "running" {
            return Err(ApiError::invalid(format!(
                "session {id} is running: send user.interrupt and wait for idle before {what}"
            )));
        }
        Ok(())
    }

    pub async fn archive_session(&self, id: &str) -> ApiResult<Value> {
        self.not_running(id, "archiving")?;
        let was = self.session(id)?;
        if !was["archived_at"].is_null() {
            return Ok(was);
        }
        let doc = self
            .update_session_doc(id, |d| {
                d["archived_at"] = json!(now());
                d["status"] = json!("terminated");
                Ok(())
            })
            .await?;
        self.emit(id, json!({"type": "session.status_terminated"}))
            .await?;
        self.stop_session_work(id, false).await?;
        Ok(doc)
    }

    pub async fn delete_session(&self, id: &str) -> ApiResult<Value> {
        self.not_running(id, "deleting")?;
        self.stop_session_work(id, true).await?;
        // Gone from the store first: if that fails the session is still
        // whole, in memory and on disk.
        self.store.delete_events(id).await?;
        self.store.delete_doc(SESSION, id).await?;
        let gone = self.state.lock().unwrap().sessions.remove(id);
        if let Some(s) = gone {
            let _ = s.live.send(std::sync::Arc::new(
                json!({"type": "session.deleted", "id": new_id("sevt"), "processed_at": now()}),
            ));
        }
        Ok(json!({"id": id, "type": "session_deleted"}))
    }
}

#[derive(Default)]
pub struct SessionFilter {
    pub include_archived: bool,
    pub agent_id: Option<String>,
    pub statuses: Vec<String>,
    pub ascending: bool,
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

/// A session as the API shows it: with its duration brought up to date.
fn session_view(doc: &Value) -> Value {
    let mut v = doc.clone();
    let created =
        sandstone_api::timefmt::parse_rfc3339_us(doc["created_at"].as_str().unwrap_or_default());
    let now = sandstone_api::timefmt::now_us();
    if let Some(c) = created {
        v["stats"]["duration_seconds"] = json!(((now - c).max(0) as f64) / 1e6);
    }
    v
}

#[cfg(test)]
mod tests {
    #[test]
    fn cursors_are_checked_and_cannot_overflow() {
        let items: Vec<serde_json::Value> = (0..5).map(|i| serde_json::json!(i)).collect();
        let p = super::paginate(items.clone(), Some(2), None, 100).unwrap();
        assert_eq!(
            (p["data"].as_array().unwrap().len(), p["next_page"].as_str()),
            (2, Some("page_2"))
        );
        let last = super::paginate(items.clone(), Some(2), Some("page_4"), 100).unwrap();
        assert_eq!(last["next_page"], serde_json::Value::Null);
        let far = super::paginate(
            items.clone(),
            Some(2),
            Some(&format!("page_{}", usize::MAX)),
            100,
        )
        .unwrap();
        assert!(far["data"].as_array().unwrap().is_empty());
        assert!(super::paginate(items.clone(), Some(0), None, 100).is_err());
        assert!(super::paginate(items, None, Some("nope"), 100).is_err());
    }
}
