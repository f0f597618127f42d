//! Audit records: one per connection and per DNS answer. Never a secret.

use serde::{Deserialize, Serialize};

/// What an audit record is about.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    /// A connection through the proxy.
    Connection,
    /// One HTTP request on a connection the proxy terminated.
    Request,
    /// A DNS question to the policy resolver.
    Dns,
    /// A packet the firewall dropped (not TCP, not DNS).
    Drop,
}

impl EventKind {
    /// The record's `action` as an observability event.
    pub fn action(self) -> &'static str {
        match self {
            EventKind::Connection => "egress.connection",
            EventKind::Request => "egress.request",
            EventKind::Dns => "egress.dns",
            EventKind::Drop => "egress.drop",
        }
    }
}

/// The verdict an audit record states.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Allow,
    Deny,
}

impl Verdict {
    pub fn of(allowed: bool) -> Verdict {
        if allowed {
            Verdict::Allow
        } else {
            Verdict::Deny
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Allow => "allow",
            Verdict::Deny => "deny",
        }
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AuditEvent {
    pub sandbox_id: String,
    /// Unix milliseconds.
    pub time: i64,
    pub kind: EventKind,
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
    /// `http`, `tls`, `ssh`, `dns`, `other`; for a dropped packet, its
    /// IP protocol as the kernel logged it (`udp`, `icmp`, ...).
    pub protocol: String,
    pub decision: Verdict,
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
