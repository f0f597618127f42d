//! Sandbox observability events (`GET .../observability/events`) in the
//! shape of Sandbox0's `SandboxObservabilityEvent`: Sandstone's egress
//! audit records are its `network_audit` events, the record itself in
//! `attributes`.

use serde::{Deserialize, Serialize};

/// The only `schema_version` the spec defines.
pub const SCHEMA_VERSION: u8 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventSource {
    ClusterGateway,
    Manager,
    Procd,
    /// The node's control daemon: Sandstone's egress proxy, firewall log
    /// and policy resolver run in the node's daemon.
    Ctld,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventType {
    Lifecycle,
    NetworkAudit,
    RuntimeStats,
    ApiAccess,
    Process,
    File,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Attempt,
    Result,
    Effect,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Completed,
    Denied,
    Error,
    Succeeded,
    Failed,
    Accepted,
    Unknown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActorKind {
    Human,
    ApiKey,
    Service,
    SandboxWorkload,
    SshUser,
    ExposureCredential,
    Anonymous,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Actor {
    pub kind: ActorKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Resource {
    #[serde(rename = "type")]
    pub kind: String,
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subresource: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Producer {
    pub service: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sequence: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SignatureStatus {
    Verified,
    Invalid,
    Unavailable,
}

/// The spec's signed-record block. Sandstone hashes each record's payload
/// but does not sign it yet: `signature` is empty and the status says so.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Integrity {
    /// Always `ed25519-sha256-v1`, the one algorithm the spec names.
    pub algorithm: String,
    /// SHA-256 (hex) of the record as stored.
    pub payload_hash: String,
    pub signature: String,
    pub signing_key_id: String,
    pub signature_status: SignatureStatus,
}

/// One `SandboxObservabilityEvent`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub event_id: String,
    pub schema_version: u8,
    pub team_id: String,
    pub sandbox_id: String,
    pub region_id: String,
    pub cluster_id: String,
    pub occurred_at: String,
    pub ingested_at: String,
    pub source: EventSource,
    pub event_type: EventType,
    pub phase: Phase,
    pub outcome: Outcome,
    pub actor: Actor,
    pub action: String,
    pub resource: Resource,
    pub operation_id: String,
    pub producer: Producer,
    pub integrity: Integrity,
    /// The egress audit record (destination, protocol, decision, rule,
    /// bytes, `seq`, and for a denial the `allow_hint`).
    pub attributes: serde_json::Value,
}

/// A page of events; `next_cursor` (present when the page is full) asks
/// for the next.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventsPage {
    pub events: Vec<Event>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// One line of a `watch=true` NDJSON stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum WatchLine {
    Event {
        data: Box<Event>,
    },
    /// A line of output (`GET .../observability/logs?watch=true`).
    Log {
        data: Box<crate::logs::LogEntry>,
    },
    /// After a batch of events: where to resume (`cursor=`) after a
    /// reconnect.
    Watermark {
        cursor: String,
        watermark: String,
    },
    Heartbeat {
        time: String,
    },
    Error {
        error: String,
    },
}

/// An event id for an audit record: a UUID (version 8, the custom
/// layout) whose last 48 bits are the record's sequence number, so
/// `event_id=` finds the record again without a lookup table.
pub fn event_id(seq: i64) -> String {
    format!("00000000-0000-8000-8000-{:012x}", seq & 0xffff_ffff_ffff)
}

/// The sequence number an [`event_id`] carries, if it is one.
pub fn event_seq(id: &str) -> Option<i64> {
    let hex = id.to_ascii_lowercase();
    let seq = hex.strip_prefix("00000000-0000-8000-8000-")?;
    (seq.len() == 12)
        .then(|| i64::from_str_radix(seq, 16).ok())
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_id_carries_its_sequence_number() {
        assert_eq!(event_id(42), "00000000-0000-8000-8000-00000000002a");
        assert_eq!(event_seq(&event_id(42)), Some(42));
        assert_eq!(event_seq("00000000-0000-8000-8000-00000000002A"), Some(42));
        assert_eq!(event_seq("6f1c0a52-0000-4000-8000-00000000002a"), None);
        assert_eq!(event_seq("00000000-0000-8000-8000-2a"), None);
    }

    #[test]
    fn watch_lines_are_tagged_by_type() {
        let line = WatchLine::Heartbeat { time: "t".into() };
        assert_eq!(
            serde_json::to_value(&line).unwrap(),
            serde_json::json!({"type": "heartbeat", "time": "t"})
        );
    }
}
