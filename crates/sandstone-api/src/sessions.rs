//! Sandbox0's execution sessions (`/sandboxes/{id}/sessions…`): a command
//! the sandbox keeps running, started again as its restart policy says,
//! with its attempts recorded. Shapes follow the spec's
//! `ExecutionSession*` schemas; what Sandstone does not do yet is refused
//! by [`ExecutionSessionSpec::check`], naming the field.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecutionSessionSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub command: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub io: Option<IoSpec>,
    #[serde(default)]
    pub lifecycle: LifecycleSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readiness: Option<ReadinessSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_retention: Option<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IoSpec {
    #[serde(default)]
    pub mode: IoMode,
    /// The terminal a `pty` session starts with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub terminal: Option<TerminalSpec>,
}

/// Sandbox0's `ExecutionSessionTerminalSpec`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TerminalSpec {
    #[serde(default = "defaults::rows")]
    pub rows: u32,
    #[serde(default = "defaults::cols")]
    pub cols: u32,
    /// `TERM` in the session's environment.
    #[serde(default = "defaults::term")]
    pub term: String,
}

impl Default for TerminalSpec {
    fn default() -> Self {
        TerminalSpec {
            rows: defaults::rows(),
            cols: defaults::cols(),
            term: defaults::term(),
        }
    }
}

/// Checks a terminal size; the error names `field`'s parts.
fn check_size(field: &str, rows: u32, cols: u32) -> Result<(), String> {
    for (part, n) in [("rows", rows), ("cols", cols)] {
        if !(1..=65535).contains(&n) {
            return Err(format!("invalid field `{field}{part}`: 1 to 65535"));
        }
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IoMode {
    #[default]
    Pipes,
    Pty,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DesiredState {
    #[default]
    Running,
    Stopped,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RestartPolicy {
    #[default]
    Never,
    OnFailure,
    Always,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuntimeRecovery {
    /// Started again in the sandbox's next runtime (after a resume).
    #[default]
    Restart,
    /// Stopped with the runtime: its desired state becomes `stopped`.
    Stop,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestartSpec {
    #[serde(default)]
    pub policy: RestartPolicy,
    #[serde(default = "defaults::max_restarts")]
    pub max_restarts: u32,
    #[serde(default = "defaults::window_seconds")]
    pub window_seconds: u32,
    #[serde(default = "defaults::initial_backoff_ms")]
    pub initial_backoff_ms: u32,
    #[serde(default = "defaults::max_backoff_ms")]
    pub max_backoff_ms: u32,
}

impl Default for RestartSpec {
    fn default() -> Self {
        RestartSpec {
            policy: RestartPolicy::Never,
            max_restarts: defaults::max_restarts(),
            window_seconds: defaults::window_seconds(),
            initial_backoff_ms: defaults::initial_backoff_ms(),
            max_backoff_ms: defaults::max_backoff_ms(),
        }
    }
}

/// The spec's defaults.
mod defaults {
    pub fn max_restarts() -> u32 {
        5
    }
    pub fn window_seconds() -> u32 {
        60
    }
    pub fn initial_backoff_ms() -> u32 {
        250
    }
    pub fn max_backoff_ms() -> u32 {
        5000
    }
    pub fn rows() -> u32 {
        24
    }
    pub fn cols() -> u32 {
        80
    }
    pub fn term() -> String {
        "xterm-256color".into()
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LifecycleSpec {
    #[serde(default)]
    pub desired_state: DesiredState,
    #[serde(default)]
    pub restart: RestartSpec,
    #[serde(default)]
    pub runtime_recovery: RuntimeRecovery,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout_seconds: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_lifetime_seconds: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_grace_period_seconds: Option<i32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadinessSpec {
    #[serde(rename = "type", default)]
    pub kind: ReadinessKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay_ms: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<i32>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReadinessKind {
    /// Ready once the process runs.
    #[default]
    Process,
    Delay,
    Output,
}

impl ExecutionSessionSpec {
    /// The terminal the session runs on, when it runs on one.
    pub fn terminal(&self) -> Option<TerminalSpec> {
        let io = self.io.as_ref().filter(|io| io.mode == IoMode::Pty)?;
        Some(io.terminal.clone().unwrap_or_default())
    }

    /// Refuses what is malformed or not supported yet; the error names
    /// the field.
    pub fn check(&self) -> Result<(), String> {
        let bad = |field: &str, why: &str| Err(format!("invalid field `{field}`: {why}"));
        if self.command.is_empty() || self.command[0].is_empty() {
            return bad("command", "a program and its arguments are required");
        }
        if self.command.iter().any(|a| a.contains('\0')) {
            return bad("command", "arguments cannot contain NUL");
        }
        if let Some(k) = self
            .env
            .keys()
            .find(|k| k.is_empty() || k.contains(['=', '\0']))
        {
            return bad("env", &format!("{k:?} is not a variable name"));
        }
        if self.cwd.as_deref().is_some_and(|c| !c.starts_with('/')) {
            return bad("cwd", "an absolute path is required");
        }
        if let Some(io) = &self.io
            && let Some(t) = &io.terminal
        {
            if io.mode != IoMode::Pty {
                return bad("io.terminal", "only for `io.mode` pty");
            }
            check_size("io.terminal.", t.rows, t.cols)?;
            let term_ok = !t.term.is_empty()
                && t.term.len() <= 64
                && t.term
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._+-".contains(&b));
            if !term_ok {
                return bad(
                    "io.terminal.term",
                    "1 to 64 letters, digits, `.`, `_`, `+` or `-`",
                );
            }
        }
        if self
            .readiness
            .as_ref()
            .is_some_and(|r| r.kind != ReadinessKind::Process)
        {
            return bad(
                "readiness.type",
                "only `process` readiness is supported by Sandstone yet",
            );
        }
        let l = &self.lifecycle;
        for (field, set) in [
            (
                "lifecycle.idle_timeout_seconds",
                l.idle_timeout_seconds.is_some(),
            ),
            (
                "lifecycle.max_lifetime_seconds",
                l.max_lifetime_seconds.is_some(),
            ),
            (
                "lifecycle.stop_grace_period_seconds",
                l.stop_grace_period_seconds.is_some(),
            ),
            ("event_retention", self.event_retention.is_some()),
        ] {
            if set {
                return bad(
                    field,
                    "not supported by Sandstone yet (output is kept in the sandbox's log)",
                );
            }
        }
        let r = &l.restart;
        if r.max_restarts > 10_000 {
            return bad("lifecycle.restart.max_restarts", "at most 10000");
        }
        if r.max_backoff_ms > 600_000 || r.initial_backoff_ms > 600_000 {
            return bad("lifecycle.restart", "backoffs are at most 600000 ms");
        }
        if r.window_seconds > 86_400 {
            return bad("lifecycle.restart.window_seconds", "at most 86400 (a day)");
        }
        Ok(())
    }
}

/// Sandbox0's `ExecutionSessionPhase`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Pending,
    Starting,
    Running,
    Paused,
    Stopping,
    Stopped,
    Exited,
    Backoff,
    Failed,
    Suspended,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    pub id: String,
    pub number: i64,
    pub runtime_generation: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventCursor {
    pub earliest: i64,
    pub latest: i64,
}

/// Sandbox0's `ExecutionSession`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecutionSession {
    pub id: String,
    pub spec: ExecutionSessionSpec,
    pub spec_version: i64,
    pub phase: Phase,
    pub runtime_generation: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<Attempt>,
    pub restart_count: i32,
    pub cursor: EventCursor,
    pub created_at: String,
    pub updated_at: String,
    pub last_activity_at: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecutionSessionList {
    pub sessions: Vec<ExecutionSession>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DesiredStateRequest {
    pub state: DesiredState,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttemptRequest {
    #[serde(default)]
    pub replace_current: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignalRequest {
    pub signal: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_attempt_id: Option<String>,
}

/// `PUT .../terminal`: Sandbox0's `ExecutionSessionTerminalResizeRequest`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResizeRequest {
    pub rows: u32,
    pub cols: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_attempt_id: Option<String>,
}

impl ResizeRequest {
    pub fn check(&self) -> Result<(), String> {
        check_size("", self.rows, self.cols)
    }
}

/// What a client sends on `.../ws` (Sandbox0's
/// `ExecutionSessionWebSocketRequest`): the REST calls' bodies, tagged.
/// (Flattened, they cannot refuse unknown fields: serde does not carry
/// `deny_unknown_fields` through `flatten`.)
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum WsRequest {
    Input {
        #[serde(default)]
        request_id: Option<String>,
        #[serde(flatten)]
        body: InputRequest,
    },
    Signal {
        #[serde(default)]
        request_id: Option<String>,
        #[serde(flatten)]
        body: SignalRequest,
    },
    Resize {
        #[serde(default)]
        request_id: Option<String>,
        #[serde(flatten)]
        body: ResizeRequest,
    },
}

/// What `.../ws` sends (Sandbox0's `ExecutionSessionWebSocketResponse`):
/// events as they are logged, and an answer to each request.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum WsMessage {
    Event {
        event: SessionEvent,
    },
    Ack {
        #[serde(skip_serializing_if = "Option::is_none")]
        request_id: Option<String>,
    },
    Error {
        #[serde(skip_serializing_if = "Option::is_none")]
        request_id: Option<String>,
        error: String,
    },
}

/// Sandbox0's `ExecutionSessionEvent`: output as it was read, or an exit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionEvent {
    pub seq: i64,
    pub session_id: String,
    pub runtime_generation: i64,
    #[serde(rename = "type")]
    pub kind: SessionEventKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<crate::logs::LogStream>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_base64: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    pub occurred_at: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SessionEventKind {
    Output,
    Exit,
}

/// Sandbox0's `ExecutionSessionEventPage`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionEventPage {
    pub events: Vec<SessionEvent>,
    pub cursor: EventCursor,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputRequest {
    pub input_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_attempt_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_base64: Option<String>,
    #[serde(default)]
    pub eof: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InputResponse {
    pub input_id: String,
    pub attempt_id: String,
    pub accepted: bool,
    pub duplicate: bool,
}

/// A signal by name (`TERM`, `SIGTERM`, any case) or number.
pub fn signal_number(s: &str) -> Option<i32> {
    if let Ok(n) = s.parse::<i32>() {
        return (1..=64).contains(&n).then_some(n);
    }
    let upper = s.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    Some(match name {
        "HUP" => 1,
        "INT" => 2,
        "QUIT" => 3,
        "KILL" => 9,
        "USR1" => 10,
        "USR2" => 12,
        "TERM" => 15,
        "CONT" => 18,
        "STOP" => 19,
        "WINCH" => 28,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn specs_take_the_defaults_and_refuse_what_is_not_supported() {
        let s: ExecutionSessionSpec =
            serde_json::from_value(json!({"command": ["sleep", "1"]})).unwrap();
        assert_eq!(s.lifecycle.desired_state, DesiredState::Running);
        assert_eq!(s.lifecycle.restart.max_restarts, 5);
        assert_eq!(s.check(), Ok(()));
        for (v, field) in [
            (json!({"command": []}), "`command`"),
            (json!({"command": ["x"], "cwd": "rel"}), "`cwd`"),
            (
                json!({"command": ["x"], "io": {"terminal": {"rows": 5}}}),
                "`io.terminal`",
            ),
            (
                json!({"command": ["x"], "io": {"mode": "pty", "terminal": {"cols": 0}}}),
                "`io.terminal.cols`",
            ),
            (
                json!({"command": ["x"], "io": {"mode": "pty", "terminal": {"term": "x;rm"}}}),
                "`io.terminal.term`",
            ),
            (
                json!({"command": ["x"], "readiness": {"type": "output", "output": "ok"}}),
                "`readiness.type`",
            ),
            (
                json!({"command": ["x"], "lifecycle": {"max_lifetime_seconds": 5}}),
                "`lifecycle.max_lifetime_seconds`",
            ),
            (json!({"command": ["x"], "env": {"": "1"}}), "`env`"),
        ] {
            let s: ExecutionSessionSpec = serde_json::from_value(v).unwrap();
            assert!(s.check().unwrap_err().contains(field), "{field}");
        }
        assert!(
            serde_json::from_value::<ExecutionSessionSpec>(json!({"command": ["x"], "bogus": 1}))
                .is_err()
        );
        let pty: ExecutionSessionSpec =
            serde_json::from_value(json!({"command": ["sh"], "io": {"mode": "pty"}})).unwrap();
        assert_eq!(pty.check(), Ok(()));
        assert_eq!(pty.terminal(), Some(TerminalSpec::default()));
        assert_eq!(s.terminal(), None);
        assert_eq!(signal_number("sigterm"), Some(15));
        assert_eq!(signal_number("9"), Some(9));
        assert_eq!(signal_number("NOPE"), None);
    }

    #[test]
    fn websocket_requests_are_the_rest_bodies_tagged() {
        let r: WsRequest = serde_json::from_value(json!({
            "type": "input", "request_id": "r1", "input_id": "i1", "data_base64": "aGk="
        }))
        .unwrap();
        assert!(
            matches!(&r, WsRequest::Input { request_id: Some(id), body } if id == "r1" && body.input_id == "i1")
        );
        let r: WsRequest =
            serde_json::from_value(json!({"type": "resize", "rows": 30, "cols": 100})).unwrap();
        assert!(matches!(r, WsRequest::Resize { request_id: None, body } if body.rows == 30));
        for bad in [
            json!({"type": "resize", "rows": 30}),
            json!({"type": "signal"}),
            json!({"type": "nope"}),
        ] {
            assert!(
                serde_json::from_value::<WsRequest>(bad.clone()).is_err(),
                "{bad}"
            );
        }
        let ack = serde_json::to_value(WsMessage::Ack {
            request_id: Some("r1".into()),
        })
        .unwrap();
        assert_eq!(ack, json!({"type": "ack", "request_id": "r1"}));
    }
}
