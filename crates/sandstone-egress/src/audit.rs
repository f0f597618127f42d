//! Audit records: one per connection and per DNS answer. Never a secret.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AuditEvent {
    pub sandbox_id: String,
    /// Unix milliseconds.
    pub time: i64,
    /// `connection` or `dns`.
    pub kind: String,
    /// The name the sandbox gave (SNI, Host, DNS question), or for a
    /// connection that gave none, the name its DNS answers had for the
    /// address.
    pub dest_name: Option<String>,
    /// The address and port the sandbox connected to.
    pub dest_ip: Option<String>,
    pub dest_port: u16,
    /// Where the proxy connected on its behalf (`ip:port`): for a name a
    /// rule allowed, where the name resolves, whatever address the sandbox
    /// chose.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dialed: Option<String>,
    /// `http`, `tls`, `ssh`, `dns`, `other`.
    pub protocol: String,
    /// `allow` or `deny`.
    pub decision: String,
    pub rule: Option<String>,
    pub reason: String,
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub duration_ms: u64,
}

/// Where records go (the daemon stores them).
pub trait AuditSink: Send + Sync {
    fn record(&self, event: AuditEvent);
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
