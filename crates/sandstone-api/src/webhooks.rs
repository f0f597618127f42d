//! What a webhook receiver gets (Sandbox0's event: `event_id`,
//! `event_type`, `timestamp`, `sandbox_id`, `team_id`, `payload`), how it is
//! signed, and the deliveries API's answer (a Sandstone extension).

use serde::{Deserialize, Serialize};

/// The header carrying the body's signature, as Sandbox0's SDKs read it.
pub const SIGNATURE_HEADER: &str = "X-Sandbox0-Signature";

/// The signature Sandbox0's `verify_webhook_signature` accepts: lowercase
/// hex HMAC-SHA256 of the raw body, keyed with the secret's UTF-8 bytes.
pub fn sign(secret: &str, body: &[u8]) -> String {
    crate::hmac::sha256(secret.as_bytes(), body)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Sandbox0's event type names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventType {
    /// The sandbox was made and is running.
    #[serde(rename = "sandbox.ready")]
    Ready,
    #[serde(rename = "sandbox.paused")]
    Paused,
    #[serde(rename = "sandbox.resumed")]
    Resumed,
    /// Its init died, and every process with it; its files are kept.
    #[serde(rename = "sandbox.killed")]
    Killed,
    /// It was deleted with its files.
    #[serde(rename = "sandbox.deleted")]
    Deleted,
    /// A change under the webhook's `watch_dir` (which one: the payload's
    /// `event_type`).
    #[serde(rename = "file.modified")]
    FileModified,
    /// A process (a context or an execution session's attempt) exited
    /// with status 0.
    #[serde(rename = "process.exited")]
    ProcessExited,
    /// A process exited with another status, or was killed by a signal.
    #[serde(rename = "process.crashed")]
    ProcessCrashed,
}

impl EventType {
    pub const fn as_str(self) -> &'static str {
        match self {
            EventType::Ready => "sandbox.ready",
            EventType::Paused => "sandbox.paused",
            EventType::Resumed => "sandbox.resumed",
            EventType::Killed => "sandbox.killed",
            EventType::Deleted => "sandbox.deleted",
            EventType::FileModified => "file.modified",
            EventType::ProcessExited => "process.exited",
            EventType::ProcessCrashed => "process.crashed",
        }
    }
}

/// An event's `payload`, by kind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum EventPayload {
    /// A file change: `create`, `write`, `remove`, `rename` or `chmod`, as
    /// the file watch API names them.
    File { path: String, event_type: String },
    /// Why the sandbox stopped on its own.
    Killed { reason: String },
    /// A process's end: its context (or session) id and exit status
    /// (`null`: killed by a signal), in which runtime generation.
    Process {
        process_id: String,
        exit_code: Option<i32>,
        runtime_generation: i64,
    },
    /// The sandbox's state after a lifecycle change, with its runtime
    /// generation while it runs.
    Lifecycle {
        status: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        runtime_generation: Option<i64>,
    },
}

/// One event as POSTed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookEvent {
    /// Unique per event and the same on every retry of it: receivers
    /// deduplicate by it.
    pub event_id: String,
    pub event_type: EventType,
    /// RFC 3339.
    pub timestamp: String,
    pub sandbox_id: String,
    pub team_id: String,
    pub payload: EventPayload,
}

/// One delivery, as `GET /api/v1/sandboxes/{id}/webhook/deliveries` lists
/// it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookDelivery {
    pub event_id: String,
    pub event_type: String,
    /// `pending`, `delivered`, `failed` (given up) or `dropped` (never
    /// attempted: the daemon's queue was full).
    pub state: String,
    pub attempts: i64,
    /// The receiver's HTTP status at the last attempt, if it answered.
    pub last_status: Option<i64>,
    pub last_error: Option<String>,
    pub created_at: String,
    /// When the next attempt is due, while pending.
    pub next_attempt_at: Option<String>,
    pub delivered_at: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WebhookDeliveries {
    pub deliveries: Vec<WebhookDelivery>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_as_sandbox0_sdks_verify() {
        // hmac.new(b"key", b"The quick brown fox jumps over the lazy dog", sha256).hexdigest()
        assert_eq!(
            sign("key", b"The quick brown fox jumps over the lazy dog"),
            "f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8"
        );
    }

    #[test]
    fn events_serialize_in_sandbox0_shape() {
        let e = WebhookEvent {
            event_id: "evt_1".into(),
            event_type: EventType::FileModified,
            timestamp: "2026-01-01T00:00:00.000Z".into(),
            sandbox_id: "sb-1".into(),
            team_id: "default".into(),
            payload: EventPayload::File {
                path: "/workspace/a".into(),
                event_type: "write".into(),
            },
        };
        assert_eq!(
            serde_json::to_value(&e).unwrap(),
            serde_json::json!({
                "event_id": "evt_1", "event_type": "file.modified",
                "timestamp": "2026-01-01T00:00:00.000Z", "sandbox_id": "sb-1",
                "team_id": "default",
                "payload": {"path": "/workspace/a", "event_type": "write"},
            })
        );
        for t in [
            EventType::Ready,
            EventType::Paused,
            EventType::Resumed,
            EventType::Killed,
            EventType::Deleted,
            EventType::FileModified,
        ] {
            assert_eq!(serde_json::to_value(t).unwrap(), t.as_str());
        }
    }
}
