//! Agents: versioned configurations. Responses are resolved the way the
//! API resolves them: `model` is always an object, a toolset lists every
//! tool with a concrete `enabled` and `permission_policy`.

use crate::Agents;
use crate::error::{ApiError, ApiResult};
use crate::ids::{new_id, now};
use crate::registry::{AGENT, Registry};
use crate::validate::{list_field, merge_metadata, opt_string, required_string, typed};
use sandstone_agents_api::{Agent, AgentTag};
use serde_json::{Map, Value, json};

/// Resolves an agent's `skills` to concrete versions (the skills
/// component does).
pub(crate) type Resolve<'a> = &'a (dyn Fn(&Value) -> ApiResult<Value> + Sync);

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
pub(crate) fn model_config(v: &Value) -> ApiResult<Value> {
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

pub(crate) fn tools(v: &Value) -> ApiResult<Value> {
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

impl Registry {
    pub(crate) async fn create_agent(&self, body: &Value, skills: Resolve<'_>) -> ApiResult<Agent> {
        let mut doc = agent_config(body, None)?;
        doc.insert("skills".into(), skills(&doc["skills"])?);
        let t = now();
        let id = new_id("agent");
        doc.insert("type".into(), json!(AgentTag));
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
        let doc: Agent = typed(Value::Object(doc))?;
        self.store
            .put_doc(AGENT, &format!("{id}@1"), &json!(doc))
            .await?;
        self.state().agents.insert(id, vec![doc.clone()]);
        Ok(doc)
    }

    /// An agent's `version`, or its latest.
    pub(crate) fn agent(&self, id: &str, version: Option<i64>) -> ApiResult<Agent> {
        let st = self.state();
        let versions = st
            .agents
            .get(id)
            .ok_or_else(|| ApiError::not_found("agent", id))?;
        let found = match version {
            None => versions.last(),
            Some(v) => versions.iter().find(|a| i64::try_from(a.version) == Ok(v)),
        };
        found.cloned().ok_or_else(|| match version {
            Some(v) => ApiError::not_found("agent version", &format!("{id}@{v}")),
            None => ApiError::not_found("agent", id),
        })
    }

    pub(crate) fn agent_versions(&self, id: &str) -> ApiResult<Vec<Agent>> {
        let st = self.state();
        let v = st
            .agents
            .get(id)
            .ok_or_else(|| ApiError::not_found("agent", id))?;
        Ok(v.iter().rev().cloned().collect())
    }

    pub(crate) fn agents(&self, include_archived: bool) -> Vec<Agent> {
        let st = self.state();
        let mut all: Vec<Agent> = st
            .agents
            .values()
            .filter_map(|v| v.last().cloned())
            .filter(|a| include_archived || a.archived_at.is_none())
            .collect();
        all.sort_by(|a, b| b.created_at.cmp(&a.created_at));
        all
    }

    /// A partial update; a change makes a new version. `version`, when
    /// given, must be the current one.
    pub(crate) async fn update_agent(
        &self,
        id: &str,
        body: &Value,
        skills: Resolve<'_>,
    ) -> ApiResult<Agent> {
        let current = self.agent(id, None)?;
        if current.archived_at.is_some() {
            return Err(ApiError::invalid(format!("agent {id} is archived")));
        }
        if let Some(v) = body.get("version").filter(|v| !v.is_null())
            && v.as_u64() != Some(current.version)
        {
            return Err(ApiError::conflict(format!(
                "version: agent {id} is at version {}, not {v}",
                current.version
            )));
        }
        let base = json!(current);
        let mut config = agent_config(body, Some(&base))?;
        if body.get("skills").is_some() {
            config.insert("skills".into(), skills(&config["skills"])?);
        }
        let changed = config.iter().any(|(k, v)| base[k] != *v);
        if !changed {
            return Ok(current);
        }
        let version = current.version + 1;
        config.insert("version".into(), json!(version));
        config.insert("updated_at".into(), json!(now()));
        let doc: Agent = typed(Value::Object(config))?;
        self.store
            .put_doc(AGENT, &format!("{id}@{version}"), &json!(doc))
            .await?;
        self.state()
            .agents
            .get_mut(id)
            .ok_or_else(|| ApiError::not_found("agent", id))?
            .push(doc.clone());
        Ok(doc)
    }

    pub(crate) async fn archive_agent(&self, id: &str) -> ApiResult<Agent> {
        let mut doc = self.agent(id, None)?;
        if doc.archived_at.is_none() {
            let t = now();
            doc.archived_at = Some(t.clone());
            doc.updated_at = t;
            let key = format!("{id}@{}", doc.version);
            self.store.put_doc(AGENT, &key, &json!(doc)).await?;
            if let Some(last) = self.state().agents.get_mut(id).and_then(|v| v.last_mut()) {
                *last = doc.clone();
            }
        }
        Ok(doc)
    }
}

impl Agents {
    pub(crate) async fn create_agent(&self, body: &Value) -> ApiResult<Agent> {
        let skills = |v: &Value| self.skills.resolve(v);
        self.registry.create_agent(body, &skills).await
    }

    pub(crate) async fn update_agent(&self, id: &str, body: &Value) -> ApiResult<Agent> {
        let skills = |v: &Value| self.skills.resolve(v);
        self.registry.update_agent(id, body, &skills).await
    }
}
