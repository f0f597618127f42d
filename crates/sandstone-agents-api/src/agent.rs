//! Agents: versioned configurations (model, system prompt, tools, skills)
//! that sessions run a snapshot of.

use crate::common::{Extra, Metadata, MetadataPatch, closed_enum, nullable, tag};
use serde::{Deserialize, Serialize};
use serde_json::Value;

tag!(
    /// `"type": "agent"`.
    AgentTag = "agent"
);
tag!(
    /// `"type": "url"`: an MCP server reached over streamable HTTP.
    UrlTag = "url"
);
tag!(
    /// `"type": "custom"` (an operator's tool, or an uploaded skill).
    CustomTag = "custom"
);

/// The toolset every agent may enable: `agent_toolset_20260401`.
pub const TOOLSET: &str = "agent_toolset_20260401";

/// One version of an agent, as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Agent {
    #[serde(rename = "type")]
    pub tag: AgentTag,
    pub id: String,
    pub version: u64,
    pub name: String,
    pub description: Option<String>,
    pub model: ModelConfig,
    pub system: Option<String>,
    pub tools: Vec<AgentTool>,
    pub mcp_servers: Vec<McpServer>,
    pub skills: Vec<SkillRef>,
    pub metadata: Metadata,
    pub multiagent: Option<Value>,
    pub execution_identity: Option<Value>,
    pub created_at: String,
    pub updated_at: String,
    pub archived_at: Option<String>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// The model an agent calls: `{"id", "speed"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speed: Option<String>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// A model as a request names it: an id, or the whole config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ModelSpec {
    Id(String),
    Config(ModelConfig),
}

/// One entry of an agent's `tools`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum AgentTool {
    /// The built-in toolset; in a response every tool is listed with a
    /// concrete `enabled` and `permission_policy`.
    #[serde(rename = "agent_toolset_20260401")]
    Toolset(Toolset),
    /// A tool the client (or the worker's operator) answers.
    #[serde(rename = "custom")]
    Custom(CustomTool),
    /// The tools of one of the agent's MCP servers, called by the server.
    #[serde(rename = "mcp_toolset")]
    McpToolset(McpToolset),
}

/// An MCP server an agent uses: `{"type": "url", "name", "url"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct McpServer {
    #[serde(rename = "type")]
    pub tag: UrlTag,
    pub name: String,
    pub url: String,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `{"type": "mcp_toolset", "mcp_server_name", "configs", "default_config"}`:
/// configs name the server's tools (which only the server knows).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct McpToolset {
    pub mcp_server_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub configs: Option<Vec<ToolConfig>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_config: Option<ToolDefaults>,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Toolset {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub configs: Option<Vec<ToolConfig>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_config: Option<ToolDefaults>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// One toolset tool's settings (`type` repeats the name in responses).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolConfig {
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permission_policy: Option<PermissionPolicy>,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ToolDefaults {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permission_policy: Option<PermissionPolicy>,
    #[serde(flatten)]
    pub extra: Extra,
}

closed_enum!(
    /// Whether a toolset call runs at once or waits for the user.
    PermissionKind {
        AlwaysAllow = "always_allow",
        AlwaysAsk = "always_ask",
        Auto = "auto",
    }
);

/// `{"type": "always_allow" | "always_ask" | "auto"}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PermissionPolicy {
    #[serde(rename = "type")]
    pub kind: PermissionKind,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CustomTool {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// A JSON schema, passed to the model as given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_schema: Option<Value>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// A skill an agent uses: `{"type": "custom", "skill_id", "version"}`
/// (`version` is `latest` or absent in a request, concrete in a response).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SkillRef {
    #[serde(rename = "type")]
    pub kind: String,
    pub skill_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `POST /v1/agents` and `POST /v1/agents/{id}`: a field left out keeps
/// its value on update, `null` clears it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AgentParams {
    #[serde(default, skip_serializing_if = "Option::is_none", with = "nullable")]
    pub name: Option<Option<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "nullable")]
    pub model: Option<Option<ModelSpec>>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "nullable")]
    pub system: Option<Option<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "nullable")]
    pub description: Option<Option<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "nullable")]
    pub tools: Option<Option<Vec<AgentTool>>>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "nullable")]
    pub mcp_servers: Option<Option<Vec<McpServer>>>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "nullable")]
    pub skills: Option<Option<Vec<SkillRef>>>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "nullable")]
    pub metadata: Option<Option<MetadataPatch>>,
    /// On update: the version the change is based on (409 otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none", with = "nullable")]
    pub version: Option<Option<u64>>,
    #[serde(flatten)]
    pub extra: Extra,
}
