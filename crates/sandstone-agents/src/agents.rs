//! Agents: versioned configurations. Responses are resolved the way the
//! API resolves them: `model` is always an object, a toolset lists every
//! tool with a concrete `enabled` and `permission_policy`.

use crate::Agents;
use crate::error::{ApiError, ApiResult};
use crate::ids::{new_id, now};
use crate::registry::{AGENT, Registry};
use crate::validate::{list_field, merge_metadata, opt_string, required_string, typed};
use sandstone_agents_api::{
    Agent, AgentTag, AgentTool, CustomTool, Extra, McpServer, McpToolset, ModelConfig, ModelSpec,
    PermissionKind, PermissionPolicy, ToolConfig, ToolDefaults, Toolset,
};
use serde_json::{Map, Value, json};

/// Resolves an agent's `skills` to concrete versions (the skills
/// component does).
pub(crate) type Resolve<'a> = &'a (dyn Fn(&Value) -> ApiResult<Value> + Sync);

use sandstone_agents_api::TOOLSET;
use sandstone_api::toolset::Tool;
/// A request's `model` (an id, or `{"id", ...}`) as the API shows it.
pub(crate) fn model_config(v: &Value) -> ApiResult<ModelConfig> {
    let bad = || ApiError::invalid("model: required, a model id or {\"id\": ...}");
    let mut m = match sandstone_agents_api::from_value(v.clone()).map_err(|_| bad())? {
        ModelSpec::Id(id) => ModelConfig {
            id,
            speed: None,
            extra: Extra::new(),
        },
        ModelSpec::Config(c) => c,
    };
    if m.id.is_empty() {
        return Err(bad());
    }
    m.speed.get_or_insert_with(|| "standard".into());
    Ok(m)
}

/// The toolset with every tool listed, each with a concrete `enabled` and
/// `permission_policy` (a tool's own, or the defaults).
fn toolset(t: Toolset, at: &str) -> ApiResult<Toolset> {
    let defaults = t.default_config.unwrap_or_default();
    let default_enabled = defaults.enabled.unwrap_or(true);
    let default_policy = defaults.permission_policy.unwrap_or(PermissionPolicy {
        kind: PermissionKind::AlwaysAllow,
    });
    let given = t.configs.unwrap_or_default();
    if let Some(i) = given
        .iter()
        .position(|c| Tool::from_name(&c.name).is_none())
    {
        return Err(ApiError::invalid(format!(
            "{at}.configs[{i}].name: one of {}",
            Tool::ALL.map(Tool::name).join(", ")
        )));
    }
    let configs = Tool::ALL
        .iter()
        .map(|tool| {
            let name = tool.name();
            let c = given.iter().find(|c| c.name == name);
            ToolConfig {
                kind: Some(name.to_string()),
                name: name.to_string(),
                enabled: Some(c.and_then(|c| c.enabled).unwrap_or(default_enabled)),
                permission_policy: Some(
                    c.and_then(|c| c.permission_policy)
                        .unwrap_or(default_policy),
                ),
                extra: Extra::new(),
            }
        })
        .collect();
    Ok(Toolset {
        configs: Some(configs),
        default_config: Some(ToolDefaults {
            enabled: Some(default_enabled),
            permission_policy: Some(default_policy),
            extra: Extra::new(),
        }),
        extra: Extra::new(),
    })
}

fn custom_tool(t: CustomTool, at: &str) -> ApiResult<CustomTool> {
    let ok = (1..=128).contains(&t.name.len())
        && t.name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !ok {
        return Err(ApiError::invalid(format!(
            "{at}.name: 1-128 of [A-Za-z0-9_-]"
        )));
    }
    if !t.input_schema.as_ref().is_some_and(Value::is_object) {
        return Err(ApiError::invalid(format!(
            "{at}.input_schema: a JSON schema object"
        )));
    }
    Ok(CustomTool {
        name: t.name,
        description: Some(t.description.unwrap_or_default()),
        input_schema: t.input_schema,
        extra: Extra::new(),
    })
}

/// An MCP toolset with concrete defaults: enabled, and asking before
/// each call unless told otherwise (the API's default for MCP tools).
fn mcp_toolset(t: McpToolset, at: &str) -> ApiResult<McpToolset> {
    let defaults = t.default_config.unwrap_or_default();
    if let Some((i, _)) = t
        .configs
        .iter()
        .flatten()
        .enumerate()
        .find(|(_, c)| c.name.is_empty() || c.name.len() > 128)
    {
        return Err(ApiError::invalid(format!(
            "{at}.configs[{i}].name: the name of one of the server's tools"
        )));
    }
    Ok(McpToolset {
        mcp_server_name: t.mcp_server_name,
        configs: Some(t.configs.unwrap_or_default()),
        default_config: Some(ToolDefaults {
            enabled: Some(defaults.enabled.unwrap_or(true)),
            permission_policy: Some(defaults.permission_policy.unwrap_or(PermissionPolicy {
                kind: PermissionKind::AlwaysAsk,
            })),
            extra: Extra::new(),
        }),
        extra: Extra::new(),
    })
}

/// A request's `mcp_servers`, checked.
pub(crate) fn mcp_servers(v: &Value) -> ApiResult<Vec<McpServer>> {
    let list: Vec<McpServer> = match v {
        Value::Null => return Ok(Vec::new()),
        Value::Array(a) if a.len() <= 20 => a
            .iter()
            .enumerate()
            .map(|(i, s)| {
                sandstone_agents_api::from_value(s.clone())
                    .map_err(|e| ApiError::invalid(format!("mcp_servers[{i}].{e}")))
            })
            .collect::<ApiResult<_>>()?,
        _ => {
            return Err(ApiError::invalid(
                "mcp_servers: an array of at most 20 servers",
            ));
        }
    };
    for (i, s) in list.iter().enumerate() {
        if s.name.is_empty() || s.name.chars().count() > 255 {
            return Err(ApiError::invalid(format!(
                "mcp_servers[{i}].name: 1 to 255 characters"
            )));
        }
        if list[..i].iter().any(|o| o.name == s.name) {
            return Err(ApiError::invalid(format!(
                "mcp_servers[{i}].name: {} is declared twice",
                s.name
            )));
        }
        let ok = reqwest::Url::parse(&s.url)
            .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some());
        if !ok {
            return Err(ApiError::invalid(format!(
                "mcp_servers[{i}].url: an http or https URL"
            )));
        }
        s.extra.keys().next().map_or(Ok(()), |k| {
            Err(ApiError::invalid(format!(
                "mcp_servers[{i}].{k}: unknown field"
            )))
        })?;
    }
    Ok(list)
}

/// Every `mcp_toolset` names one of the servers, and every server has
/// its toolset.
pub(crate) fn check_mcp(tools: &[AgentTool], servers: &[McpServer]) -> ApiResult<()> {
    let toolsets: Vec<&str> = tools
        .iter()
        .filter_map(|t| match t {
            AgentTool::McpToolset(m) => Some(m.mcp_server_name.as_str()),
            _ => None,
        })
        .collect();
    if let Some(name) = toolsets
        .iter()
        .find(|n| !servers.iter().any(|s| s.name == **n))
    {
        let i = tools
            .iter()
            .position(|t| matches!(t, AgentTool::McpToolset(m) if m.mcp_server_name == *name))
            .unwrap_or_default();
        return Err(ApiError::invalid(format!(
            "tools[{i}].mcp_server_name: no MCP server is named {name}"
        )));
    }
    if let Some(i) = servers
        .iter()
        .position(|s| !toolsets.contains(&s.name.as_str()))
    {
        return Err(ApiError::invalid(format!(
            "mcp_servers[{i}]: no mcp_toolset uses {}",
            servers[i].name
        )));
    }
    Ok(())
}

/// A request's `tools`, checked and resolved.
pub(crate) fn tools(v: &Value) -> ApiResult<Vec<AgentTool>> {
    let list = match v {
        Value::Null => return Ok(Vec::new()),
        Value::Array(a) if a.len() <= 256 => a,
        _ => return Err(ApiError::invalid("tools: an array of at most 256 tools")),
    };
    let mut names = std::collections::HashSet::new();
    list.iter()
        .enumerate()
        .map(|(i, t)| {
            let at = format!("tools[{i}]");
            // Parsed by its tag, so that an error names the field inside.
            let field =
                |e: sandstone_agents_api::FieldError| ApiError::invalid(format!("{at}.{e}"));
            let (out, key) = match t.get("type").and_then(Value::as_str) {
                Some(TOOLSET) => {
                    let t = sandstone_agents_api::from_value(t.clone()).map_err(field)?;
                    (AgentTool::Toolset(toolset(t, &at)?), TOOLSET.to_string())
                }
                Some("custom") => {
                    let c = sandstone_agents_api::from_value(t.clone()).map_err(field)?;
                    let c = custom_tool(c, &at)?;
                    let key = c.name.clone();
                    (AgentTool::Custom(c), key)
                }
                Some("mcp_toolset") => {
                    let m = sandstone_agents_api::from_value(t.clone()).map_err(field)?;
                    let m = mcp_toolset(m, &at)?;
                    let key = format!("the toolset of MCP server {}", m.mcp_server_name);
                    (AgentTool::McpToolset(m), key)
                }
                _ => {
                    return Err(ApiError::invalid(format!(
                        "{at}.type: {TOOLSET}, custom or mcp_toolset"
                    )));
                }
            };
            if !names.insert(key.clone()) {
                return Err(ApiError::invalid(format!("{at}: {key} is declared twice")));
            }
            Ok(out)
        })
        .collect()
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
        out.insert("model".into(), json!(model_config(&body["model"])?));
    }
    for (k, max) in [("system", 100_000), ("description", 2048)] {
        if base.is_none() || has(k) {
            out.insert(k.into(), opt_string(body, k, max)?);
        }
    }
    if base.is_none() || has("tools") {
        out.insert("tools".into(), json!(tools(&body["tools"])?));
    }
    if base.is_none() || has("mcp_servers") {
        out.insert(
            "mcp_servers".into(),
            json!(mcp_servers(&body["mcp_servers"])?),
        );
    }
    if base.is_none() || has("skills") {
        out.insert("skills".into(), list_field(body, "skills")?);
    }
    let resolved: Vec<AgentTool> = typed(out["tools"].clone())?;
    let servers: Vec<McpServer> = typed(out["mcp_servers"].clone())?;
    check_mcp(&resolved, &servers)?;
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
        let _gate = self.changing().await;
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
        let _gate = self.changing().await;
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
        let _gate = self.changing().await;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn message(r: ApiResult<impl std::fmt::Debug>) -> String {
        r.expect_err("refused").to_string()
    }

    #[test]
    fn tools_are_resolved_and_bad_ones_named() {
        let t = tools(&json!([
            {"type": TOOLSET, "default_config": {"permission_policy": {"type": "always_ask"}},
             "configs": [{"name": "bash", "enabled": false}]},
            {"type": "custom", "name": "lookup", "input_schema": {"type": "object"}},
        ]))
        .unwrap();
        let shown = json!(t);
        assert_eq!(shown[0]["configs"].as_array().unwrap().len(), 8);
        assert_eq!(
            shown[0]["configs"][0],
            json!({"type": "bash", "name": "bash", "enabled": false, "permission_policy": {"type": "always_ask"}})
        );
        assert_eq!(shown[1]["description"], "");
        assert!(message(tools(&json!([{"type": "mcp"}]))).starts_with("tools[0].type: "));
        assert!(
            message(tools(
                &json!([{"type": TOOLSET, "configs": [{"name": "rm"}]}])
            ))
            .starts_with("tools[0].configs[0].name: one of bash")
        );
        let policy =
            json!([{"type": TOOLSET, "default_config": {"permission_policy": {"type": "never"}}}]);
        let m = message(tools(&policy));
        assert!(
            m.starts_with("tools[0].default_config.permission_policy.type: "),
            "{m}"
        );
        assert!(
            message(tools(&json!([{"type": TOOLSET}, {"type": TOOLSET}])))
                .contains("declared twice")
        );
        assert!(
            message(tools(&json!([{"type": "custom", "name": "a b"}])))
                .starts_with("tools[0].name")
        );
        assert_eq!(
            model_config(&json!("m")).unwrap().speed.as_deref(),
            Some("standard")
        );
        assert!(model_config(&json!({"id": ""})).is_err());
    }
}
