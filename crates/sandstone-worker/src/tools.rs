//! Where each tool call runs: the agent toolset inside the session's
//! sandbox (through the daemon's tools endpoint, which runs file tools in
//! the sandbox's init and `bash` in a persistent shell there), custom tools
//! through a command the operator configured on the worker host.

use sandstone_api::toolset::Tool;
use sandstone_api::{ToolCallRequest, ToolCallResult};
use sandstone_client::Client;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// The official runner's outer timeout; bash's own default (120 s) is
/// inside it, so a bash timeout is reported by bash.
const OUTER_TIMEOUT: Duration = Duration::from_secs(150);
/// The longest any one tool call may run.
pub const MAX_TOOL_TIME: Duration = Duration::from_secs(600);

/// The environment a custom tool command gets from the worker's.
const PASSED_ENV: [&str; 6] = ["PATH", "HOME", "LANG", "LC_ALL", "TZ", "USER"];

/// A tool call as the session announced it.
#[derive(Debug, Clone)]
pub struct ToolUse {
    /// The `agent.tool_use` / `agent.custom_tool_use` event id.
    pub id: String,
    pub name: String,
    pub input: Value,
    pub custom: bool,
    pub thread: Option<String>,
    /// When this worker saw the call (stream or history).
    pub received: std::time::Instant,
}

/// Custom tool name → argv of the command that serves it.
pub type CustomTools = Arc<BTreeMap<String, Vec<String>>>;

/// Roots the file tools may reach besides the workdir.
#[derive(Debug, Clone, Default)]
pub struct Roots {
    pub allowed: Vec<String>,
    pub read_only: Vec<String>,
}

pub struct ToolHost {
    pub client: Client,
    pub sandbox: String,
    pub roots: Roots,
    pub custom: CustomTools,
    pub session: String,
}

impl ToolHost {
    /// Whether this worker serves the call; calls it does not serve belong
    /// to another client and stay pending.
    pub fn serves(&self, call: &ToolUse) -> bool {
        if call.custom {
            self.custom.contains_key(&call.name)
        } else {
            Tool::from_name(&call.name).is_some_and(Tool::runs_in_sandbox)
        }
    }

    pub async fn run(&self, call: &ToolUse) -> ToolCallResult {
        let limit = outer_timeout(call);
        let work = async {
            if call.custom {
                self.run_custom(call).await
            } else {
                self.run_toolset(call).await
            }
        };
        match tokio::time::timeout(limit, work).await {
            Ok(r) => r,
            Err(_) => {
                self.reset_shell_if(call).await;
                error(format!("tool '{}' timed out", call.name))
            }
        }
    }

    async fn run_toolset(&self, call: &ToolUse) -> ToolCallResult {
        let req = ToolCallRequest {
            input: call.input.clone(),
            workdir: Some(crate::sandbox::WORKDIR.into()),
            allowed_roots: self.roots.allowed.clone(),
            read_only_roots: self.roots.read_only.clone(),
        };
        match self.client.tool(&self.sandbox, &call.name, &req).await {
            Ok(r) => r,
            Err(e) => error(format!("{}: sandbox error: {e}", call.name)),
        }
    }

    /// After a bash call was abandoned (cancelled, lease lost): ends what
    /// it still runs.
    pub async fn reset_shell_if(&self, call: &ToolUse) {
        if call.name == "bash" && !call.custom {
            self.reset_shell().await;
        }
    }

    /// Ends whatever the shell is running (a cancelled or timed-out call,
    /// background jobs at teardown): the next call gets a fresh shell.
    pub async fn reset_shell(&self) {
        let req = ToolCallRequest {
            input: json!({"restart": true}),
            ..Default::default()
        };
        if let Err(e) = self.client.tool(&self.sandbox, "bash", &req).await {
            tracing::warn!(sandbox = %self.sandbox, error = %e, "could not restart the shell");
        }
    }

    /// stdin: `{"name", "input", "session_id", "tool_use_id"}`; stdout is the
    /// result text; a non-zero exit marks it an error. The model chooses the
    /// input, so the command gets only a plain environment (`PASSED_ENV`),
    /// never the worker's credentials.
    async fn run_custom(&self, call: &ToolUse) -> ToolCallResult {
        let Some(argv) = self.custom.get(&call.name) else {
            return error(format!("tool '{}' is not served here", call.name));
        };
        let mut cmd = tokio::process::Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .env_clear()
            .envs(std::env::vars_os().filter(|(k, _)| PASSED_ENV.iter().any(|p| k == p)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => return error(format!("{}: cannot start {}: {e}", call.name, argv[0])),
        };
        let stdin = json!({"name": call.name, "input": call.input,
                           "session_id": self.session, "tool_use_id": call.id});
        // Written beside the reads: a command that answers before reading
        // all its input must not deadlock against a full pipe.
        if let Some(mut w) = child.stdin.take() {
            tokio::spawn(async move {
                let _ = w.write_all(stdin.to_string().as_bytes()).await;
            });
        }
        match child.wait_with_output().await {
            Ok(out) if out.status.success() => {
                text(String::from_utf8_lossy(&out.stdout).into_owned(), false)
            }
            Ok(out) => {
                let mut s = String::from_utf8_lossy(&out.stdout).into_owned();
                s.push_str(&String::from_utf8_lossy(&out.stderr));
                text(s, true)
            }
            Err(e) => error(format!("{}: {e}", call.name)),
        }
    }
}

/// bash calls with a longer timeout of their own get room for it, up to
/// `MAX_TOOL_TIME`: the model chooses that number.
fn outer_timeout(call: &ToolUse) -> Duration {
    let own = call.input["timeout_ms"].as_u64().unwrap_or(0);
    let own = Duration::from_millis(own.min(MAX_TOOL_TIME.as_millis() as u64));
    OUTER_TIMEOUT.max(own + Duration::from_secs(30))
}

fn text(s: String, is_error: bool) -> ToolCallResult {
    let s = s.trim_end_matches('\n');
    let s = if s.is_empty() { "(no output)" } else { s };
    ToolCallResult {
        content: vec![json!({"type": "text", "text": s})],
        is_error,
    }
}

pub fn error(msg: String) -> ToolCallResult {
    text(msg, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_output_reads_no_output_and_long_bash_timeouts_get_room() {
        assert_eq!(text(String::new(), false).content[0]["text"], "(no output)");
        let call = |input: Value| ToolUse {
            id: "e".into(),
            name: "bash".into(),
            input,
            custom: false,
            thread: None,
            received: std::time::Instant::now(),
        };
        assert_eq!(outer_timeout(&call(json!({}))), OUTER_TIMEOUT);
        assert_eq!(
            outer_timeout(&call(json!({"timeout_ms": 600_000}))),
            Duration::from_secs(630)
        );
        assert_eq!(
            outer_timeout(&call(json!({"timeout_ms": u64::MAX}))),
            Duration::from_secs(630)
        );
    }
}
