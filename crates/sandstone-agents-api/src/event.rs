//! Session events: what clients and workers send, what the server emits,
//! in one tagged enum on `type`. An event of a type this model does not
//! know is kept whole ([`EventKind::Other`]), so it still lists, streams
//! and passes through; a known type with a bad field is an error that
//! names the field.

use crate::agent::PermissionPolicy;
use crate::common::{Extra, Metadata, Nested, closed_enum, nullable, open_enum, parse_fields};
use crate::session::SessionAgent;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

/// One event of a session's history. `id` and `processed_at` are set by
/// the server; a sent event has neither.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SessionEvent {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub processed_at: Option<String>,
    #[serde(flatten)]
    pub kind: EventKind,
}

impl SessionEvent {
    /// A new event to send or emit (the server fills in the id and time).
    pub fn new(kind: KnownEvent) -> SessionEvent {
        SessionEvent {
            id: None,
            processed_at: None,
            kind: EventKind::Known(kind),
        }
    }

    /// The wire `type`.
    pub fn type_name(&self) -> &str {
        self.kind.type_name()
    }

    /// The known event, if it is one.
    pub fn known(&self) -> Option<&KnownEvent> {
        match &self.kind {
            EventKind::Known(k) => Some(k),
            EventKind::Other(_) => None,
        }
    }
}

/// A known event, or one of a type this model does not know.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum EventKind {
    Known(KnownEvent),
    /// Every field, `type` included, as sent.
    Other(Map<String, Value>),
}

impl EventKind {
    pub fn type_name(&self) -> &str {
        match self {
            EventKind::Known(k) => k.event_type().as_str(),
            EventKind::Other(m) => m.get("type").and_then(Value::as_str).unwrap_or_default(),
        }
    }
}

impl<'de> Deserialize<'de> for SessionEvent {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut map = Map::<String, Value>::deserialize(d)?;
        let id = take_string::<D>(&mut map, "id")?;
        let processed_at = take_string::<D>(&mut map, "processed_at")?;
        let kind = match type_of::<D>(&map)?.parse::<EventType>() {
            Ok(t) => {
                map.remove("type");
                EventKind::Known(KnownEvent::from_fields(t, map).map_err(Nested::into_de)?)
            }
            Err(_) => EventKind::Other(map),
        };
        Ok(SessionEvent {
            id,
            processed_at,
            kind,
        })
    }
}

fn take_string<'de, D: Deserializer<'de>>(
    map: &mut Map<String, Value>,
    key: &str,
) -> Result<Option<String>, D::Error> {
    match map.remove(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(Nested::at(key, "a string").into_de()),
    }
}

fn type_of<'de, D: Deserializer<'de>>(map: &Map<String, Value>) -> Result<String, D::Error> {
    match map.get("type") {
        Some(Value::String(t)) => Ok(t.clone()),
        _ => Err(Nested::at("type", "required, a string").into_de()),
    }
}

/// A tagged enum whose variants are parsed by their `type` (the variant's
/// own fields, with their paths), serialised with serde's internal tag.
macro_rules! known_events {
    (
        $(#[$tm:meta])* $types:ident,
        $(#[$em:meta])* $name:ident {
            $($(#[$vm:meta])* $variant:ident($ty:ty) = $value:literal),+ $(,)?
        }
    ) => {
        closed_enum!($(#[$tm])* $types { $($variant = $value),+ });

        $(#[$em])*
        #[derive(Debug, Clone, PartialEq, Serialize)]
        #[serde(tag = "type")]
        pub enum $name {
            $($(#[$vm])* #[serde(rename = $value)] $variant($ty),)+
        }

        impl $name {
            pub fn event_type(&self) -> $types {
                match self {
                    $($name::$variant(_) => $types::$variant,)+
                }
            }

            fn from_fields(t: $types, fields: Map<String, Value>) -> Result<Self, Nested> {
                Ok(match t {
                    $($types::$variant => $name::$variant(parse_fields(fields)?),)+
                })
            }
        }
    };
}

known_events!(
    /// Every event type this model knows.
    EventType,
    /// The events this model knows, by `type`.
    KnownEvent {
        UserMessage(Message) = "user.message",
        UserInterrupt(NoFields) = "user.interrupt",
        UserToolConfirmation(ToolConfirmation) = "user.tool_confirmation",
        UserCustomToolResult(CustomToolResult) = "user.custom_tool_result",
        UserToolResult(ToolResult) = "user.tool_result",
        AgentMessage(Message) = "agent.message",
        AgentToolUse(ToolUse) = "agent.tool_use",
        AgentCustomToolUse(ToolUse) = "agent.custom_tool_use",
        AgentMcpToolUse(ToolUse) = "agent.mcp_tool_use",
        /// The answer the server got from an MCP server.
        AgentMcpToolResult(McpToolResult) = "agent.mcp_tool_result",
        /// A result the server gives itself (a call it refused).
        AgentToolResult(ToolResult) = "agent.tool_result",
        SessionStatusRunning(NoFields) = "session.status_running",
        SessionStatusIdle(StatusIdle) = "session.status_idle",
        SessionStatusRescheduled(NoFields) = "session.status_rescheduled",
        SessionStatusTerminated(NoFields) = "session.status_terminated",
        SessionThreadStatusTerminated(ThreadTerminated) = "session.thread_status_terminated",
        SessionUpdated(SessionUpdated) = "session.updated",
        SessionDeleted(NoFields) = "session.deleted",
        SessionError(SessionErrorEvent) = "session.error",
        SpanModelRequestStart(NoFields) = "span.model_request_start",
        SpanModelRequestEnd(ModelRequestEnd) = "span.model_request_end",
    }
);

impl EventType {
    /// The types a client (or worker) may send.
    pub const SENDABLE: [EventType; 5] = [
        EventType::UserMessage,
        EventType::UserInterrupt,
        EventType::UserToolConfirmation,
        EventType::UserCustomToolResult,
        EventType::UserToolResult,
    ];
}

/// An event with no fields of its own (any it has pass through).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NoFields {
    #[serde(flatten)]
    pub extra: Extra,
}

/// What a session update changed (only what it changed is present).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SessionUpdated {
    #[serde(default, skip_serializing_if = "Option::is_none", with = "nullable")]
    pub title: Option<Option<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Metadata>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<Box<SessionAgent>>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `user.message`, `agent.message`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub content: Vec<ContentBlock>,
    #[serde(flatten)]
    pub extra: Extra,
}

open_enum!(
    /// A user's verdict on a call that asked (anything else counts as
    /// deny).
    Verdict {
        Allow = "allow",
        Deny = "deny",
    }
);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolConfirmation {
    pub tool_use_id: String,
    pub result: Verdict,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deny_message: Option<String>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `user.tool_result`, `agent.tool_result`: the answer to a toolset call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolResult {
    pub tool_use_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<Vec<ContentBlock>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_error: Option<bool>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `agent.mcp_tool_result`: what an MCP server answered a call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct McpToolResult {
    pub mcp_tool_use_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<Vec<ContentBlock>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_error: Option<bool>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `user.custom_tool_result`: the answer to a custom tool's call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CustomToolResult {
    pub custom_tool_use_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<Vec<ContentBlock>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_error: Option<bool>,
    #[serde(flatten)]
    pub extra: Extra,
}

open_enum!(
    /// What the server decided about a toolset call: run it, ask the
    /// user first, or refuse it.
    EvaluatedPermission {
        Allow = "allow",
        Ask = "ask",
        Deny = "deny",
    }
);

/// `agent.tool_use`, `agent.custom_tool_use`, `agent.mcp_tool_use`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolUse {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evaluated_permission: Option<EvaluatedPermission>,
    /// The policy that decided it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evaluation: Option<PermissionPolicy>,
    /// The server an `agent.mcp_tool_use` goes to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mcp_server_name: Option<String>,
    /// Set on calls made in a sub-agent's thread.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_thread_id: Option<String>,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ThreadTerminated {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_thread_id: Option<String>,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusIdle {
    pub stop_reason: StopReason,
    #[serde(flatten)]
    pub extra: Extra,
}

open_enum!(
    /// Why a turn stopped.
    StopReasonKind {
        EndTurn = "end_turn",
        /// Calls wait on the client (results, confirmations): `event_ids`.
        RequiresAction = "requires_action",
        RetriesExhausted = "retries_exhausted",
    }
);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StopReason {
    #[serde(rename = "type")]
    pub kind: StopReasonKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_ids: Option<Vec<String>>,
    #[serde(flatten)]
    pub extra: Extra,
}

impl StopReason {
    pub fn new(kind: StopReasonKind) -> StopReason {
        StopReason {
            kind,
            event_ids: None,
            extra: Extra::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionErrorEvent {
    pub error: SessionError,
    #[serde(flatten)]
    pub extra: Extra,
}

/// A failure the session reports (`model_overloaded_error`, …).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionError {
    #[serde(rename = "type")]
    pub kind: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_status: Option<RetryStatus>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `{"type": "retrying" | "exhausted" | …}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RetryStatus {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelRequestEnd {
    pub model_request_start_id: String,
    pub is_error: bool,
    /// The model's `usage` object, as it reported it.
    pub model_usage: Value,
    #[serde(flatten)]
    pub extra: Extra,
}

/// One block of a message or tool result. A block of a type this model
/// does not know is kept whole.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum ContentBlock {
    Known(KnownBlock),
    Other(Map<String, Value>),
}

impl ContentBlock {
    pub fn text(text: impl Into<String>) -> ContentBlock {
        ContentBlock::Known(KnownBlock::Text(TextBlock {
            text: text.into(),
            extra: Extra::new(),
        }))
    }

    /// The wire `type`.
    pub fn type_name(&self) -> &str {
        match self {
            ContentBlock::Known(KnownBlock::Text(_)) => "text",
            ContentBlock::Known(KnownBlock::Image(_)) => "image",
            ContentBlock::Known(KnownBlock::Document(_)) => "document",
            ContentBlock::Known(KnownBlock::SearchResult(_)) => "search_result",
            ContentBlock::Other(m) => m.get("type").and_then(Value::as_str).unwrap_or_default(),
        }
    }
}

impl<'de> Deserialize<'de> for ContentBlock {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut map = Map::<String, Value>::deserialize(d)?;
        let kind = type_of::<D>(&map)?;
        if !matches!(
            kind.as_str(),
            "text" | "image" | "document" | "search_result"
        ) {
            return Ok(ContentBlock::Other(map));
        }
        map.remove("type");
        let block = match kind.as_str() {
            "text" => parse_fields(map).map(KnownBlock::Text),
            "image" => parse_fields(map).map(KnownBlock::Image),
            "document" => parse_fields(map).map(KnownBlock::Document),
            _ => parse_fields(map).map(KnownBlock::SearchResult),
        };
        block.map(ContentBlock::Known).map_err(Nested::into_de)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum KnownBlock {
    Text(TextBlock),
    Image(SourceBlock),
    Document(SourceBlock),
    SearchResult(NoFields),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TextBlock {
    pub text: String,
    #[serde(flatten)]
    pub extra: Extra,
}

/// An image or document: `source` says where its bytes are.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceBlock {
    pub source: Value,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `POST /v1/sessions/{id}/events`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SendEvents {
    pub events: Vec<SessionEvent>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// Its answer: the events as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SentEvents {
    pub data: Vec<SessionEvent>,
    #[serde(flatten)]
    pub extra: Extra,
}
