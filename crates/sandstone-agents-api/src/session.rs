//! Sessions: one conversation of an agent (a snapshot of one version) in
//! an environment, with its status and resources.

use crate::agent::{AgentTag, AgentTool, McpServer, ModelConfig, ModelSpec, SkillRef};
use crate::common::{Extra, Metadata, MetadataPatch, closed_enum, nullable, tag};
use crate::event::SessionEvent;
use serde::{Deserialize, Serialize};
use serde_json::Value;

tag!(
    /// `"type": "session"`.
    SessionTag = "session"
);

closed_enum!(
    /// Where a session is: `idle` (waiting for the user or a tool),
    /// `running` (a turn is under way), `rescheduling` (a retry is
    /// pending), `terminated` (archived; takes no more events).
    SessionStatus {
        Idle = "idle",
        Running = "running",
        Rescheduling = "rescheduling",
        Terminated = "terminated",
    }
);

impl SessionStatus {
    /// Whether the session takes new events.
    pub fn accepts_events(self) -> bool {
        self != SessionStatus::Terminated
    }

    /// Archiving and deleting wait for a running turn to end (the client
    /// interrupts it first).
    pub fn can_archive(self) -> bool {
        self != SessionStatus::Running
    }

    /// A turn starts: `running`, unless the session has terminated.
    pub fn begin_turn(self) -> Option<SessionStatus> {
        self.accepts_events().then_some(SessionStatus::Running)
    }

    /// A turn ends, waiting for the user or a tool: `idle`, unless the
    /// session terminated meanwhile.
    pub fn end_turn(self) -> SessionStatus {
        match self {
            SessionStatus::Terminated => SessionStatus::Terminated,
            _ => SessionStatus::Idle,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Session {
    #[serde(rename = "type")]
    pub tag: SessionTag,
    pub id: String,
    pub status: SessionStatus,
    pub agent: SessionAgent,
    pub environment_id: String,
    pub resources: Vec<SessionResource>,
    pub vault_ids: Vec<String>,
    pub metadata: Metadata,
    pub title: Option<String>,
    pub stats: SessionStats,
    pub usage: SessionUsage,
    pub outcome_evaluations: Vec<Value>,
    pub budget: Option<Value>,
    pub deployment_id: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    pub archived_at: Option<String>,
    #[serde(flatten)]
    pub extra: Extra,
}

impl Session {
    /// Archived or terminated: no more turns, no more events.
    pub fn is_over(&self) -> bool {
        self.archived_at.is_some() || !self.status.accepts_events()
    }

    /// Whether a memory store is attached.
    pub fn has_memory(&self) -> bool {
        self.resources.iter().any(SessionResource::is_memory_store)
    }
}

/// The agent version a session runs, with the session's overrides applied.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionAgent {
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
    pub multiagent: Option<Value>,
    pub execution_identity: Option<Value>,
    #[serde(flatten)]
    pub extra: Extra,
}

closed_enum!(
    /// How a session may use an attached memory store.
    Access {
        ReadWrite = "read_write",
        ReadOnly = "read_only",
    }
);

/// Something attached to a session: a memory store, or (in a `cloud`
/// environment) a GitHub repository. A request names the store
/// (`memory_store_id`, `access`, `instructions`) or the repository (`url`,
/// `checkout`, `mount_path`, and an `authorization_token` that is never
/// shown again); the session shows it resolved (a store's `name`,
/// `description`, `mount_path`; a repository's `id` and times).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SessionResource {
    /// `sesrsc_…`: repository and file resources have one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_store_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access: Option<Access>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instructions: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mount_path: Option<String>,
    /// A `github_repository`'s clone URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkout: Option<Checkout>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<String>,
    #[serde(flatten)]
    pub extra: Extra,
}

impl SessionResource {
    pub const MEMORY_STORE: &'static str = "memory_store";
    pub const GITHUB_REPOSITORY: &'static str = "github_repository";
    pub const FILE: &'static str = "file";

    pub fn is_memory_store(&self) -> bool {
        self.kind == Self::MEMORY_STORE
    }

    pub fn is_repository(&self) -> bool {
        self.kind == Self::GITHUB_REPOSITORY
    }

    pub fn is_file(&self) -> bool {
        self.kind == Self::FILE
    }
}

/// What a repository resource checks out (its default branch when none).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Checkout {
    Branch { name: String },
    Commit { sha: String },
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SessionStats {
    pub active_seconds: f64,
    pub duration_seconds: f64,
    #[serde(flatten)]
    pub extra: Extra,
}

/// Tokens the session's model requests used, summed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SessionUsage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_creation_input_tokens: u64,
    pub cache_read_input_tokens: u64,
    #[serde(flatten)]
    pub extra: Extra,
}

/// Which agent a new session runs: an id (latest version), or a reference
/// with a version and (`agent_with_overrides`) a session's own model,
/// system prompt or tools.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum AgentSpec {
    Id(String),
    Ref(AgentRef),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentRef {
    /// `agent` or `agent_with_overrides`.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "nullable")]
    pub model: Option<Option<ModelSpec>>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "nullable")]
    pub system: Option<Option<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "nullable")]
    pub tools: Option<Option<Vec<AgentTool>>>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `POST /v1/sessions`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionParams {
    pub agent: AgentSpec,
    pub environment_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "nullable")]
    pub resources: Option<Option<Vec<SessionResource>>>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "nullable")]
    pub vault_ids: Option<Option<Vec<String>>>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "nullable")]
    pub metadata: Option<Option<MetadataPatch>>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "nullable")]
    pub title: Option<Option<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "nullable")]
    pub initial_events: Option<Option<Vec<SessionEvent>>>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `POST /v1/sessions/{id}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SessionUpdate {
    #[serde(default, skip_serializing_if = "Option::is_none", with = "nullable")]
    pub title: Option<Option<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "nullable")]
    pub metadata: Option<Option<MetadataPatch>>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "nullable")]
    pub agent: Option<Option<AgentUpdate>>,
    /// Refused: vaults are fixed at creation.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "nullable")]
    pub vault_ids: Option<Option<Vec<String>>>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// What a session update may change of its agent.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AgentUpdate {
    #[serde(default, skip_serializing_if = "Option::is_none", with = "nullable")]
    pub tools: Option<Option<Vec<AgentTool>>>,
    #[serde(flatten)]
    pub extra: Extra,
}
