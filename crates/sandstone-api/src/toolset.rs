//! The agent toolset (`agent_toolset_20260401`), defined once: its tools'
//! names, where they run, the input schemas the model is offered and the
//! permission a tool gets when the agent names none. The daemon's tools
//! route, init's file tools, the worker and the control plane's turn driver
//! all take the list from here.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// The `type` of the toolset in an agent's `tools`.
pub const TOOLSET_TYPE: &str = "agent_toolset_20260401";

/// The `permission_policy.type` of a tool whose agent gives none.
pub const DEFAULT_PERMISSION_POLICY: &str = "always_allow";

/// One tool of the toolset; on the wire, its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Tool {
    Bash,
    Edit,
    Read,
    Write,
    Glob,
    Grep,
    WebFetch,
    WebSearch,
}

impl Tool {
    /// Every tool, in the order the API lists them.
    pub const ALL: [Tool; 8] = [
        Tool::Bash,
        Tool::Edit,
        Tool::Read,
        Tool::Write,
        Tool::Glob,
        Tool::Grep,
        Tool::WebFetch,
        Tool::WebSearch,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Tool::Bash => "bash",
            Tool::Edit => "edit",
            Tool::Read => "read",
            Tool::Write => "write",
            Tool::Glob => "glob",
            Tool::Grep => "grep",
            Tool::WebFetch => "web_fetch",
            Tool::WebSearch => "web_search",
        }
    }

    pub fn from_name(name: &str) -> Option<Tool> {
        Tool::ALL.into_iter().find(|t| t.name() == name)
    }

    /// Whether the call runs in the session's sandbox (through the daemon's
    /// tools route); the web tools run on the API's side.
    pub const fn runs_in_sandbox(self) -> bool {
        !matches!(self, Tool::WebFetch | Tool::WebSearch)
    }

    /// The tools that run in the sandbox, in the API's order.
    pub fn sandbox_tools() -> impl Iterator<Item = Tool> {
        Tool::ALL.into_iter().filter(|t| t.runs_in_sandbox())
    }

    /// The description the model is offered.
    pub const fn description(self) -> &'static str {
        match self {
            Tool::Bash => "The bash tool of the agent toolset.",
            Tool::Edit => "The edit tool of the agent toolset.",
            Tool::Read => "The read tool of the agent toolset.",
            Tool::Write => "The write tool of the agent toolset.",
            Tool::Glob => "The glob tool of the agent toolset.",
            Tool::Grep => "The grep tool of the agent toolset.",
            Tool::WebFetch => "The web_fetch tool of the agent toolset.",
            Tool::WebSearch => "The web_search tool of the agent toolset.",
        }
    }

    /// The JSON schema of the tool's input, as the model is offered it.
    /// The web tools are never offered by this control plane (they run on
    /// the API's side), so theirs is the empty object.
    pub fn input_schema(self) -> Value {
        let s = |props: Value, required: &[&str]| json!({"type": "object", "properties": props, "required": required});
        match self {
            Tool::Bash => s(
                json!({"command": {"type": "string"}, "restart": {"type": "boolean"}, "timeout_ms": {"type": "integer"}}),
                &[],
            ),
            Tool::Read => s(
                json!({"file_path": {"type": "string"}, "view_range": {"type": "array", "items": {"type": "integer"}}}),
                &["file_path"],
            ),
            Tool::Write => s(
                json!({"file_path": {"type": "string"}, "content": {"type": "string"}}),
                &["file_path", "content"],
            ),
            Tool::Edit => s(
                json!({"file_path": {"type": "string"}, "old_string": {"type": "string"}, "new_string": {"type": "string"}, "replace_all": {"type": "boolean"}}),
                &["file_path", "old_string", "new_string"],
            ),
            Tool::Glob | Tool::Grep => s(
                json!({"pattern": {"type": "string"}, "path": {"type": "string"}}),
                &["pattern"],
            ),
            Tool::WebFetch | Tool::WebSearch => s(json!({}), &[]),
        }
    }
}

impl std::fmt::Display for Tool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_match_serde() {
        for t in Tool::ALL {
            assert_eq!(Tool::from_name(t.name()), Some(t));
            assert_eq!(serde_json::to_value(t).unwrap(), json!(t.name()));
            assert!(t.description().contains(t.name()));
        }
        assert_eq!(Tool::from_name("Bash"), None);
        assert_eq!(Tool::from_name("ls"), None);
    }

    #[test]
    fn the_sandbox_runs_six_tools() {
        let names: Vec<_> = Tool::sandbox_tools().map(Tool::name).collect();
        assert_eq!(names, ["bash", "edit", "read", "write", "glob", "grep"]);
    }

    #[test]
    fn schemas_name_their_required_fields() {
        assert_eq!(Tool::Read.input_schema()["required"], json!(["file_path"]));
        assert_eq!(Tool::Bash.input_schema()["required"], json!([]));
        assert_eq!(
            Tool::Edit.input_schema()["required"],
            json!(["file_path", "old_string", "new_string"])
        );
    }
}
